"""A session as a Zarr store: the protocol storage and the zarr-python face.

``session.store`` is a ``SessionStore``: the same zarrstore protocol and
zarr-python behaviour as every other store, so ``zarr.open_group``,
``xarray.open_zarr`` and the zarrstore adapters take it unchanged. It accepts
any key the protocol accepts — not only keys of a valid Zarr hierarchy — so
zarr's own store tests and state machines run on it unmodified.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, override

from versionstore.errors import ReadOnlySessionError
from versionstore.records import ChunkRef
from zarrstore.errors import InvalidKeyError
from zarrstore.keys import validate_key
from zarrstore.protocol import DirListing, ReadRequest, Storage
from zarrstore.ranges import ByteRange, slice_value
from zarrstore.zarr_bridge import ZarrStore

if TYPE_CHECKING:
    from versionstore.session import Session

__all__ = ["MAX_KEY_BYTES", "SessionStorage", "SessionStore", "validate_session_key"]

#: Longest key a session stores, in UTF-8 bytes (LMDB keys are at most 511 bytes, and
#: staging adds a prefix).
MAX_KEY_BYTES = 400


def validate_session_key(key: str) -> str:
    """Return ``key`` if a session can store it: a valid store key of at most ``MAX_KEY_BYTES``.

    This is the one check every session write path goes through (the store,
    ``Session.set_values`` and ``Session.erase_keys``). The last few thousand
    keys that passed are remembered (a ``set`` through zarr checks its key on
    the way in and again when staged).

    Raises:
        InvalidKeyError: naming the key and the rule it breaks.
    """
    if type(key) is str:
        return _checked(key)  # only valid keys are cached: an error is raised every time
    return _check(key)


@functools.lru_cache(maxsize=4096)
def _checked(key: str) -> str:
    return _check(key)


def _check(key: str) -> str:
    validate_key(key)
    try:
        size = len(key.encode())
    except UnicodeEncodeError as exc:
        raise InvalidKeyError(key, "keys must be valid Unicode (no lone surrogates)") from exc
    if size > MAX_KEY_BYTES:
        raise InvalidKeyError(key, f"session keys are at most {MAX_KEY_BYTES} bytes, not {size}")
    return key


class SessionStorage(Storage):
    """The zarrstore protocol over a ``Session``."""

    blocking_io = False

    def __init__(self, session: Session, *, read_only: bool = False) -> None:
        super().__init__(read_only=read_only or session.read_only)
        self.session = session

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SessionStorage)
            and self.session == other.session
            and self.read_only == other.read_only
        )

    def __hash__(self) -> int:
        return hash(self.session)

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "writable"
        branch = f"branch={self.session.branch!r}, " if self.session.branch else ""
        return f"SessionStorage({branch}snapshot={self.session.snapshot_id}, {mode})"

    @override
    def _get(self, key: str, byte_range: ByteRange | None) -> bytes | None:
        value = self.session.value(key)
        return None if value is None else slice_value(value, byte_range)

    @override
    def _get_many(self, requests: Sequence[ReadRequest]) -> list[bytes | None]:
        entries = {key: self.session.entry(key) for key, _ in requests}
        unique = list(entries)
        values = dict(zip(unique, self.session.read_entries([entries[k] for k in unique]),
                          strict=True))
        return [
            None if values[key] is None else slice_value(values[key], byte_range)  # type: ignore[arg-type]
            for key, byte_range in requests
        ]

    @override
    def _size(self, key: str) -> int | None:
        entry = self.session.entry(key)
        if entry is None:
            return None
        return entry.size if isinstance(entry, ChunkRef) else len(entry)

    @override
    def _set(self, key: str, value: bytes) -> None:
        self.session.set_values([(key, value)])

    @override
    def _set_if_absent(self, key: str, value: bytes) -> bool:
        # Refuse the key before looking it up, whatever the default would do.
        validate_session_key(key)
        return super()._set_if_absent(key, value)

    @override
    def _erase(self, key: str) -> None:
        self.session.erase_keys([key])

    @override
    def _erase_many(self, keys: Sequence[str]) -> None:
        self.session.erase_keys(list(keys))

    @override
    def _erase_prefix(self, prefix: str) -> None:
        self.session.erase_keys([key for key, _ in self.session.iter_entries(prefix, prefix)])

    @override
    def _list_prefix(self, prefix: str) -> Iterator[str]:
        return (key for key, _ in self.session.iter_entries(prefix, prefix))

    @override
    def _list_dir(self, prefix: str) -> DirListing:
        keys: list[str] = []
        prefixes: list[str] = []
        start = prefix
        while True:
            for key, _ in self.session.iter_entries(start, prefix):
                rest = key[len(prefix):]
                cut = rest.find("/")
                if cut < 0:
                    keys.append(key)
                    continue
                sub = prefix + rest[: cut + 1]
                prefixes.append(sub)
                start = sub[:-1] + "0"  # "0" follows "/": skip every key under sub
                break
            else:
                return DirListing(keys=tuple(keys), prefixes=tuple(prefixes))

    @override
    def _with_read_only(self, read_only: bool) -> SessionStorage:
        if not read_only and self.session.read_only:
            raise ReadOnlySessionError(
                "a read-only session cannot become writable; use repo.writable_session(branch)"
            )
        return SessionStorage(self.session, read_only=read_only)


class SessionStore(ZarrStore):
    """A versioned session as a zarr store (``session.store``).

    Concurrent ``set`` calls from zarr's async pipeline are staged together
    (``versionstore.group_stage``): one backend write for the chunks one
    event-loop turn produces, each ``set`` returning once its value is staged.
    """

    storage: SessionStorage

    def __init__(self, session: Session, *, read_only: bool = False) -> None:
        super().__init__(SessionStorage(session, read_only=read_only))

    @override
    async def _store(self, key: str, value: bytes) -> None:
        validate_session_key(key)  # each caller's own key error, never its batch's
        await self.session.group_stager.stage(key, value)

    @property
    def session(self) -> Session:
        """The session this store reads and writes."""
        return self.storage.session

"""A session as a Zarr store: the protocol storage and the zarr-python face.

``session.store`` is a ``SessionStore``: the same zarrstore protocol and
zarr-python behaviour as every other store, so ``zarr.open_group``,
``xarray.open_zarr`` and the zarrstore adapters take it unchanged. It accepts
any key the protocol accepts — not only keys of a valid Zarr hierarchy — so
zarr's own store tests and state machines run on it unmodified.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, override

import attrs

from versionstore.codec import PreparedChunk, prepare_chunk
from versionstore.errors import ReadOnlySessionError
from versionstore.records import Entry, VirtualRef
from versionstore.virtual import VirtualChunkSpec, chunk_key, virtual_ref
from zarrstore.errors import InvalidKeyError, ReadOnlyError
from zarrstore.keys import is_plain_key, validate_key
from zarrstore.protocol import DirListing, ReadRequest, Storage
from zarrstore.ranges import ByteRange, resolve, slice_value
from zarrstore.zarr_bridge import ZarrStore

if TYPE_CHECKING:
    from versionstore.session import Session

__all__ = ["MAX_KEY_BYTES", "SessionStorage", "SessionStore", "validate_session_key"]

#: Zarr metadata documents (v3 and v2): never virtual.
_METADATA_NAMES = frozenset({"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"})

#: Held by a session store's ``set_if_absent`` from its look to its write (rare: zarr
#: uses it for implicit groups' metadata), so racing threads cannot both stage.
_CREATING = threading.Lock()

#: Values of at least this many bytes (zarr chunks, mostly) are staged the moment zarr
#: hands them over, each in a transaction of its own on the event loop's thread
#: (``GroupStager.stage_now``), hashed there: a chunk's pages and their flush are most of
#: its transaction, so a batch saves little, and its wait for others delays zarr, which
#: starts a chunk only once another's ``set`` returned. 256 MiB in 1 MiB chunks through
#: zarr wrote in 0.585-0.651 s (median 0.611) instead of 0.585-0.850 s (0.657) hashed in
#: a worker thread and batched; the minimal ordered LMDB store, 0.457-0.539 s (0.504),
#: twelve runs each, alternating (``docs/benchmarks.md``, "Issue 13, tenth round").
#: When the backend is busy (``Backend.writer_busy``) they are hashed and written in a
#: worker thread instead, as batches then are. Below this size a value joins a batch.
PREPARE_AT_BYTES = 256 << 10

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
        if len(key) <= MAX_KEY_BYTES and is_plain_key(key):  # ASCII: one byte a character
            return key
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
    """The zarrstore protocol over a ``Session``.

    Reads are served from the embedded backend without blocking, unless the
    repository has virtual chunk stores: a read may then wait on a file or a
    network, so zarr runs it in a worker thread (``blocking_io``).
    """

    def __init__(self, session: Session, *, read_only: bool = False) -> None:
        super().__init__(read_only=read_only or session.read_only)
        self.session = session

    @property
    def blocking_io(self) -> bool:  # type: ignore[override]  # per instance: virtual sources
        """Whether reads may block: only when virtual chunks are served from other stores."""
        return bool(self.session.repository.virtual_chunks)

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
        if byte_range is None:
            value = self.session.value(key)
        else:
            entry = self.session.entry(key)
            if isinstance(entry, VirtualRef):
                return self._get_many([(key, byte_range)])[0]
            value = self.session.read_entries([entry])[0]
        return None if value is None else slice_value(value, byte_range)

    @override
    def _get_many(self, requests: Sequence[ReadRequest]) -> list[bytes | None]:
        entries = {key: self.session.entry(key) for key, _ in requests}
        if any(isinstance(e, VirtualRef) for e in entries.values()):
            return self._get_many_virtual(requests, entries)
        unique = list(entries)
        values = dict(zip(unique, self.session.read_entries([entries[k] for k in unique]),
                          strict=True))
        return [
            None if values[key] is None else slice_value(values[key], byte_range)  # type: ignore[arg-type]
            for key, byte_range in requests
        ]

    def _get_many_virtual(self, requests: Sequence[ReadRequest],
                          entries: dict[str, Entry | None]) -> list[bytes | None]:
        """Reads among which some keys are virtual: of those, only the bytes asked for.

        A range of a virtual chunk becomes a range of its source (a shard
        index, a partial read), so the rest of the chunk is never fetched.
        """
        wanted: list[Entry | None] = []
        for key, byte_range in requests:
            entry = entries[key]
            if isinstance(entry, VirtualRef) and byte_range is not None:
                start, stop = resolve(byte_range, entry.length)
                entry = attrs.evolve(entry, offset=entry.offset + start, length=stop - start)
            wanted.append(entry)
        values = self.session.read_entries(wanted)
        return [
            None if value is None
            else value if isinstance(entry, VirtualRef) else slice_value(value, byte_range)
            for (_, byte_range), entry, value in zip(requests, wanted, values, strict=True)
        ]

    @override
    def _size(self, key: str) -> int | None:
        entry = self.session.entry(key)
        if entry is None:
            return None
        return len(entry) if isinstance(entry, bytes) else entry.size

    @override
    def _set(self, key: str, value: bytes) -> None:
        self.session.set_value(key, value)

    @override
    def _set_if_absent(self, key: str, value: bytes) -> bool:
        """Stage ``value`` only if ``key`` holds nothing; whether it was staged.

        Racing calls in this process take turns (``_CREATING``), so exactly
        one of them stages, as zarr's ``set_if_not_exists`` is exclusive in its
        own stores; the look-then-stage let two threads both report success.
        Copies of the session in other processes are not seen.
        """
        # Refuse the key before looking it up, whatever the default would do.
        validate_session_key(key)
        with _CREATING:
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

    def read_only_error(self) -> ReadOnlyError:
        """The error a write through this read-only view raises: what it is, and what to do.

        A ``ReadOnlyError`` (a ``ValueError``, as zarr-python's own) whose
        message names the session's version and the writable alternative,
        rather than only "read-only mode" (a new user's first mistake).
        """
        if not self.session.read_only:
            return ReadOnlyError("a read-only view of a writable session, from "
                                 "store.with_read_only(); write through session.store")
        return ReadOnlyError(
            f"a read-only session shows snapshot {self.session.snapshot_id}, which never changes;"
            " to change data, write through repo.writable_session(branch).store and commit"
        )

    @override
    def _check_writable(self) -> None:
        if self.read_only:
            raise self.read_only_error()
        super()._check_writable()

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
    event-loop turn produces (on object storage, one staging window), each
    ``set`` returning once its value is staged.
    """

    storage: SessionStorage

    def __init__(self, session: Session, *, read_only: bool = False) -> None:
        super().__init__(SessionStorage(session, read_only=read_only))

    @override
    def _writable(self) -> None:
        if self.read_only:
            raise self.storage.read_only_error()

    #: Large values are offered to ``_store_view`` (``ZarrStore.set``).
    _view_at_bytes = PREPARE_AT_BYTES

    @override
    def _store_view(self, key: str, value: memoryview) -> bool:
        # A large value staged at once is hashed and framed from a view of zarr's buffer,
        # not from a copy of it: one copy of the chunk fewer per ``set``, and a third
        # fewer page faults in a bulk write (``docs/benchmarks.md``, "Issue 13, twelfth
        # round"). Nothing keeps the view: the backend has copied the frame on return.
        stager = self.storage.session.group_stager
        if not (self._prepares and stager.stages_now()):
            return False
        return stager.stage_now(key, prepare_chunk(value))  # type: ignore[arg-type]

    @override
    def _store_now(self, key: str, value: bytes) -> bool:
        # A large value is staged here and now, alone (``GroupStager.stage_now``); so is a
        # lone set (``stage_alone``: nothing else runnable on the loop). Both go through
        # ``Session.set_value``, which checks the key. Others join a batch (``_store``).
        stager = self.storage.session.group_stager
        if len(value) >= PREPARE_AT_BYTES and self._prepares:
            return stager.stage_now(key, value)
        return stager.stage_alone(key, value)

    @override
    async def _store(self, key: str, value: bytes) -> None:
        validate_session_key(key)  # each caller's own key error, never its batch's
        staged: bytes | PreparedChunk = value
        if len(value) >= PREPARE_AT_BYTES and self._prepares:
            # Not staged at once: writes of this loop go to a worker thread (the backend
            # is busy). Hashed and framed in one too, so the loop goes on serving.
            staged = await asyncio.to_thread(prepare_chunk, value)
        await self.storage.session.group_stager.stage(key, staged)  # type: ignore[arg-type]

    @override
    async def delete(self, key: str) -> None:
        """Erase ``key``, after any set of it still being staged in a worker thread.

        Raises:
            ReadOnlyError: the store is read-only.
        """
        self._writable()
        await self.storage.session.group_stager.threaded_written()
        await super().delete(key)

    @override
    async def delete_dir(self, prefix: str) -> None:
        """Erase everything under ``prefix``, after sets still being staged in a worker thread.

        Raises:
            ReadOnlyError: the store is read-only.
        """
        self._writable()
        await self.storage.session.group_stager.threaded_written()
        await super().delete_dir(prefix)

    @property
    def _prepares(self) -> bool:
        """Whether large values are staged alone: a writable session staging chunk objects.

        Not on object storage, whose sessions stage chunks by located writes.
        """
        session = self.storage.session
        return not session.read_only and not session.stages_located

    @property
    def session(self) -> Session:
        """The session this store reads and writes."""
        return self.storage.session

    # -- virtual chunks (icechunk's names) ----------------------------------------------

    def set_virtual_ref(self, key: str, location: str, offset: int, length: int, *,
                        checksum: str | datetime | None = None,
                        validate_container: bool = True) -> None:
        """Stage ``key`` as a virtual chunk: ``length`` bytes at ``offset`` of ``location``.

        Nothing is read from the source now; reads go to it through the
        store given for its URL prefix at open (``virtual_chunk_stores``),
        and are checked against ``checksum`` — an ETag (``str``) or a
        last-modified time (timezone-aware ``datetime``) — unless the
        repository was opened with ``check_virtual_checksums=False``.

        Args:
            key: the chunk's store key (``"temperature/c/0/0"``); metadata
                documents (``zarr.json``, ...) cannot be virtual.
            location: the source's URL (``file:///data/a.nc``, ``s3://b/a.nc``).
            offset: where the chunk starts in the source, in bytes.
            length: the chunk's length in bytes.
            checksum: what pins the source (see above); ``None``: unchecked.
            validate_container: refuse a location that no configured store
                serves (the default), so a typo fails here and not at read time.

        Raises:
            NoVirtualChunkStoreError: no configured store serves ``location``.
            InvalidKeyError: the key is not a valid session key.
            ValueError: a negative offset, a zero or negative length, a
                location without a scheme, a naive datetime, or a metadata key;
                with ``validate_container``, a location whose rest after its
                store's prefix is no store key (``//``, ``.``, ``..``, a
                trailing ``/``).
            ReadOnlySessionError: the session is read-only.
        """
        self._stage_virtual([(key, virtual_ref(location, offset, length, checksum))],
                            validate_container)

    def set_virtual_refs(self, array_path: str, chunks: Iterable[VirtualChunkSpec], *,
                         validate_containers: bool = True) -> None:
        """Stage many virtual chunks of the array at ``array_path`` in one atomic step.

        Each ``VirtualChunkSpec`` names a chunk by its grid index; its key
        follows the array's chunk key encoding (read from the array's
        metadata, which must already be written in this session or its base).

        Raises:
            KeyError: no array metadata at ``array_path``.
            NoVirtualChunkStoreError, InvalidKeyError, ValueError,
                ReadOnlySessionError: as for ``set_virtual_ref``; nothing is staged.
        """
        directory = array_path.strip("/")
        prefix = directory + "/" if directory else ""
        metadata = self.storage.get(prefix + "zarr.json")
        if metadata is None:
            metadata = self.storage.get(prefix + ".zarray")
        if metadata is None:
            raise KeyError(f"no array metadata at {array_path!r}: write the array first")
        items = [
            (prefix + chunk_key(metadata, spec.index),
             virtual_ref(spec.location, spec.offset, spec.length, spec.checksum))
            for spec in chunks
        ]
        self._stage_virtual(items, validate_containers)

    def _stage_virtual(self, items: list[tuple[str, VirtualRef]], validate: bool) -> None:
        for key, ref in items:
            validate_key(key)
            if key.rpartition("/")[2] in _METADATA_NAMES:
                raise ValueError(f"{key!r} is a metadata document; only chunks can be virtual")
            if validate:
                self.session.repository.virtual_chunks.check(ref.location)
        self.session.set_virtual_entries(items)

"""Importing: put an existing Zarr dataset under version control.

``import_zarr(source, session, path)`` copies every key of a Zarr hierarchy —
a directory, any ``zarr.abc.store.Store``, or a zarrstore storage — into a
writable session, byte for byte; ``session.commit`` then makes it the first
version. Nothing is decoded, so any Zarr format (v2 or v3), codec or
consolidated metadata comes across unchanged, and chunks are stored once by
content. Importing again with ``replace=True`` makes the destination match the
source's new state (erasing what the source no longer has), so the next commit
records only what changed.

Porcelain beside ``repository`` and ``session``: it writes through the session's
store protocol like any other writer and needs nothing of the engine's inside.
One of the few modules that imports zarr (to read zarr stores).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import zarr
from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from versionstore.errors import ReadOnlySessionError
from versionstore.session import Session
from zarrstore.protocol import AsyncStorage, Storage
from zarrstore.zarr_bridge import ZarrStore

__all__ = ["ImportSummary", "import_zarr"]

#: How many keys are read from the source at once.
BATCH_KEYS = 256

_METADATA_NAMES = frozenset({"zarr.json", ".zgroup", ".zarray"})

Reader = Callable[[Sequence[str]], list[bytes | None]]


@attrs.frozen(kw_only=True)
class ImportSummary:
    """What ``import_zarr`` wrote into the session."""

    #: Where in the session the dataset now lives ("" is the root).
    path: str
    #: Keys copied from the source.
    keys: int
    #: Bytes copied (the sum of the values' lengths).
    bytes: int
    #: Keys erased because the source no longer has them (``replace=True`` only).
    erased: int = 0
    #: Group documents written for missing parents of ``path``.
    parents: tuple[str, ...] = ()


def _zarr_store_reader(store: Store) -> tuple[list[str], Reader]:
    async def listing() -> list[str]:
        return sorted([key async for key in store.list()])

    async def read(keys: Sequence[str]) -> list[bytes | None]:
        prototype = default_buffer_prototype()
        values = await asyncio.gather(*(store.get(key, prototype=prototype) for key in keys))
        return [None if value is None else value.to_bytes() for value in values]

    return sync(listing()), lambda keys: sync(read(keys))


def _reader(source: object) -> tuple[list[str], Reader]:
    if isinstance(source, str | os.PathLike):
        directory = Path(source)
        if not directory.is_dir():
            raise FileNotFoundError(f"no Zarr dataset directory at {directory}")
        return _zarr_store_reader(zarr.storage.LocalStore(directory, read_only=True))
    if isinstance(source, Storage):
        return sorted(source.list()), lambda keys: source.get_many([(k, None) for k in keys])
    if isinstance(source, AsyncStorage):
        source = ZarrStore(source)
    if isinstance(source, Store):
        return _zarr_store_reader(source)
    raise TypeError(
        "source must be a Zarr dataset: a directory path (str or os.PathLike), a zarr store "
        f"(zarr.storage.LocalStore, MemoryStore, FsspecStore …) or a zarrstore storage; "
        f"got {type(source).__name__}"
    )


def _normal_path(path: object) -> str:
    if not isinstance(path, str):
        raise TypeError(f"path must be a str (where in the session to put the dataset); "
                        f"got {type(path).__name__}")
    parts = [part for part in path.strip("/").split("/") if part]
    if any(part in {".", ".."} for part in parts):
        raise ValueError(f"path must not contain '.' or '..': {path!r}")
    return "/".join(parts)


def _parent_documents(path: str, keys: Sequence[str]) -> dict[str, bytes]:
    """Group documents for each parent of ``path`` (zarr finds a nested node from the root)."""
    if not path:
        return {}
    v2 = ".zgroup" in keys or ".zarray" in keys
    name = ".zgroup" if v2 else "zarr.json"
    body = {"zarr_format": 2} if v2 else {"zarr_format": 3, "node_type": "group",
                                          "attributes": {}}
    parts = path.split("/")
    parents = ["/".join(parts[:depth]) for depth in range(len(parts))]
    return {(f"{p}/{name}" if p else name): json.dumps(body).encode() for p in parents}


def import_zarr(source: object, session: Session, path: str = "", *,
                replace: bool = False) -> ImportSummary:
    """Copy the Zarr dataset in ``source`` into ``session`` under ``path``; commit afterwards.

    Args:
        source: a directory holding a Zarr dataset (``str`` or ``os.PathLike``),
            any ``zarr.abc.store.Store``, or a zarrstore ``Storage`` / ``AsyncStorage``.
            It is only read.
        session: a writable session (``repo.writable_session(branch)``).
        path: where in the session the dataset's root goes ("" is the root).
            Missing parent groups are created, so ``zarr.open_group(session.store)``
            reaches it.
        replace: allow a destination that already holds keys, and make it match
            ``source`` (keys the source lacks are erased). Without it, a
            non-empty destination is refused, so one import never mixes with
            another dataset.

    Returns:
        What was copied. Values are staged durably as they are written (see
        ``Session``); nothing is committed.

    Raises:
        TypeError: if ``source``, ``session`` or ``path`` is of the wrong kind.
        FileNotFoundError: if ``source`` is a path that is not a directory.
        ValueError: if ``source`` holds no Zarr metadata document, or the
            destination is not empty and ``replace`` is false.
        ReadOnlySessionError: if ``session`` is read-only.
    """
    if not isinstance(session, Session):
        raise TypeError(f"session must be a versionstore Session "
                        f"(repo.writable_session(branch)); got {type(session).__name__}")
    if session.read_only:
        raise ReadOnlySessionError(
            "import_zarr writes: pass repo.writable_session(branch), not a read-only session"
        )
    path = _normal_path(path)
    keys, read = _reader(source)
    if not any(key.rsplit("/", 1)[-1] in _METADATA_NAMES for key in keys):
        raise ValueError("source holds no Zarr dataset: no zarr.json, .zgroup or .zarray found")
    prefix = f"{path}/" if path else ""
    target = session.store.storage
    existing = set(target.list_prefix(prefix))
    parents = _parent_documents(path, keys)
    if existing and not replace:
        raise ValueError(
            f"the session already holds {len(existing)} key(s) under {path or 'the root'!r}; "
            "import into an empty path, or pass replace=True to make it match the source"
        )
    stale = sorted(existing - {prefix + key for key in keys})
    if stale:
        target.erase_many(stale)
    written = copied = 0
    for start in range(0, len(keys), BATCH_KEYS):
        batch = keys[start:start + BATCH_KEYS]
        for key, value in zip(batch, read(batch), strict=True):
            if value is None:  # deleted from the source since it was listed
                continue
            target.set(prefix + key, value)
            written += 1
            copied += len(value)
    made = tuple(sorted(key for key in parents if not target.exists(key)))
    for key in made:
        target.set(key, parents[key])
    return ImportSummary(path=path, keys=written, bytes=copied, erased=len(stale), parents=made)

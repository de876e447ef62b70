"""The least a store pays for one LMDB transaction per call through zarr's store API.

``LMDBFloorStore`` is a zarr ``Store`` with nothing but that: ``set`` is one
py-lmdb write transaction with one ``put``, ``get`` one read transaction with
one ``get``. No key checks, no checksums, no history. Two systems run it in
the ``percall`` and ``bulk`` workloads, beside ``raw-lmdb`` (the same
transactions without zarr) and ``zarr-mem`` (zarr's API over a dict):

- ``lmdb-zarr``: committed without any flush (``MDB_NOSYNC``). A ``set``
  survives a killed process, but a power cut while the page cache is written
  back can leave LMDB's header naming pages that never reached the disk: the
  whole file is lost (``python -m benchmarks.writeback_order``).
- ``lmdb-zarr-ordered``: opened as versionstore opens a repository
  (``MDB_NOMETASYNC``): each transaction flushes its pages (``fdatasync``)
  before its header page is written, so a power cut loses at most the last
  transactions, never the file. The floor of any LMDB store through zarr
  whose ``set`` keeps what was committed through a power cut.

Issue 13's ``set``/``get`` targets are reported against both, and its bulk
targets against ``lmdb-zarr-ordered`` (``docs/benchmarks.md``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import lmdb
from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype

__all__ = ["LMDBFloorStore"]


class LMDBFloorStore(Store):
    """One py-lmdb transaction per ``set``/``get`` in an environment at ``path``.

    ``ordered=True`` opens it as versionstore opens a repository (``sync=True``,
    ``metasync=False``: LMDB's ``MDB_NOMETASYNC``); ``False`` without any flush
    (``sync=False``).
    Byte ranges, listing and deletion are not what it measures: they raise
    ``NotImplementedError``.
    """

    supports_writes = True
    supports_deletes = False
    supports_listing = False
    supports_partial_writes = False

    def __init__(self, path: Path, *, ordered: bool = False, map_size: int = 1 << 40) -> None:
        super().__init__(read_only=False)
        path.mkdir(parents=True, exist_ok=True)
        self._env = lmdb.open(str(path), map_size=map_size, max_dbs=4, sync=ordered,
                              metasync=False, readahead=True)
        self._db = self._env.open_db(b"chunks")

    def with_read_only(self, read_only: bool = False) -> LMDBFloorStore:
        """A view of the same environment (zarr opens arrays for reading through one)."""
        view = object.__new__(type(self))
        Store.__init__(view, read_only=read_only)
        view._env, view._db = self._env, self._db
        return view

    def close(self) -> None:
        self._env.close()

    def __eq__(self, other: object) -> bool:
        return other is self

    __hash__ = object.__hash__

    async def set(self, key: str, value: Buffer) -> None:
        with self._env.begin(write=True, db=self._db) as txn:
            txn.put(key.encode(), value.to_bytes())

    async def get(self, key: str, prototype: BufferPrototype,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        if byte_range is not None:
            raise NotImplementedError("byte ranges are not measured here")
        with self._env.begin(db=self._db) as txn:
            value = txn.get(key.encode())
        return None if value is None else prototype.buffer.from_bytes(value)

    async def exists(self, key: str) -> bool:
        with self._env.begin(db=self._db) as txn:
            return txn.get(key.encode()) is not None

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]
                                 ) -> list[Buffer | None]:
        raise NotImplementedError("byte ranges are not measured here")

    async def delete(self, key: str) -> None:
        raise NotImplementedError("deletion is not measured here")

    def list(self) -> AsyncIterator[str]:
        raise NotImplementedError("listing is not measured here")

    def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        raise NotImplementedError("listing is not measured here")

    def list_dir(self, prefix: str) -> AsyncIterator[str]:
        raise NotImplementedError("listing is not measured here")


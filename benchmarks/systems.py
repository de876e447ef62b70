"""The systems under comparison, each behind the same small interface.

A ``System`` lives in one worker process and owns one directory (``root``).
Zarr-capable systems hand out zarr stores (``write_store``/``read_store``) so
every workload writes and reads the same data through the same zarr code with
the same codecs (zarr's defaults); ``commit`` is a no-op for plain zarr stores.
Key-level operations (``set_keys``/``get_key``/``get_keys``) go through the
``zarr.abc.store.Store`` async API for every zarr system — the same interface
zarr itself calls — and through py-lmdb directly for ``raw-lmdb``, which is
the physical ceiling: the same bytes under the same keys in one LMDB
environment, with no versioning, no checksums and no zarr.

Settings are the defaults of each system (icechunk's default repository
config, versionstore's default non-``durable`` LMDB storage, which fsyncs on
every commit; raw LMDB opened the way versionstore opens it and synced on
``commit``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import zarr
from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype

__all__ = ["SYSTEMS", "System", "available_systems", "dir_usage", "lmdb_usage", "run_async"]

_PROTO = default_buffer_prototype()
_LOOP: asyncio.AbstractEventLoop | None = None


def run_async(coro: Any) -> Any:
    """Run a coroutine on this process's one benchmark event loop (no per-call loop setup)."""
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
    return _LOOP.run_until_complete(coro)

#: Concurrency of key-level batch operations: zarr's own default (``async.concurrency``).
KEY_CONCURRENCY = 10


class System:
    """One system under test; subclasses fill in the storage-specific parts."""

    name: ClassVar[str]
    description: ClassVar[str]
    persistent: ClassVar[bool] = True
    versioned: ClassVar[bool] = True
    zarr_capable: ClassVar[bool] = True
    #: Whether ``commit`` does anything (a version, or raw LMDB's fsync); else it is not timed.
    has_commit: ClassVar[bool] = True
    #: The only workloads this system takes part in (``None``: every one it can run).
    only_workloads: ClassVar[tuple[str, ...] | None] = None
    #: Whether the system needs an S3 server (``endpoint``): it runs only in workloads that
    #: start one (``OBJECT_STORAGE = True``, the ``s3`` workload).
    object_storage: ClassVar[bool] = False
    #: The S3 endpoint and key prefix of an object-storage system (set by the workload).
    endpoint: str = ""
    prefix: str = ""

    def __init__(self, root: Path) -> None:
        self.root = root

    # -- lifecycle ----------------------------------------------------------------
    def create(self) -> None:
        """Create an empty repository / store."""
        raise NotImplementedError

    def open(self) -> None:
        """Open an existing one, with nothing cached in this process."""
        raise NotImplementedError

    def open_repository(self) -> None:
        """Open an existing one as a user does first: the repository alone, no session.

        ``open`` may also start the session writes go to (versionstore's reads
        the branch); this reads only what opening the repository reads.
        """
        self.open()

    def close(self) -> None:
        """Release everything (files, environments, sessions)."""

    # -- zarr level ---------------------------------------------------------------
    def write_store(self) -> Store:
        """The store of the current writable session."""
        raise NotImplementedError

    def commit(self, message: str) -> str | None:
        """Commit staged writes; ``None`` where there is nothing like a commit."""
        return None

    def read_store(self, snapshot: str | None = None) -> Store:
        """A read-only store at the tip, or at ``snapshot``."""
        raise NotImplementedError

    def snapshots(self) -> list[str]:
        """Ancestry of the main branch, newest first (empty if unversioned)."""
        return []

    # -- key level ----------------------------------------------------------------
    async def set_keys(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Write each value under its key (zarr's concurrency: 10 in flight).

        Metadata documents go first (icechunk refuses chunks of an array it
        has not seen), as zarr itself writes them.
        """
        store = self.write_store()
        metadata = [item for item in items if item[0].endswith("zarr.json")]
        if metadata:
            for key, value in metadata:
                await store.set(key, _PROTO.buffer.from_bytes(value))
            items = [item for item in items if not item[0].endswith("zarr.json")]

        async def one(key: str, value: bytes) -> None:
            await store.set(key, _PROTO.buffer.from_bytes(value))

        for start in range(0, len(items), KEY_CONCURRENCY):
            await asyncio.gather(*(one(k, v) for k, v in items[start:start + KEY_CONCURRENCY]))

    async def get_key(self, store: Store, key: str) -> bytes:
        """Read one value (``store`` from ``key_reader``)."""
        buf = await store.get(key, _PROTO)
        assert buf is not None, key
        return buf.to_bytes()

    async def get_keys(self, store: Store, keys: Sequence[str]) -> int:
        """Read every key (10 in flight); return the number of bytes read."""
        total = 0
        for start in range(0, len(keys), KEY_CONCURRENCY):
            values = await asyncio.gather(
                *(store.get(k, _PROTO) for k in keys[start:start + KEY_CONCURRENCY])
            )
            for value in values:
                assert value is not None
                total += len(value)
        return total

    def key_reader(self, snapshot: str | None = None) -> Any:
        """What ``get_key``/``get_keys`` read from (a read-only store here)."""
        return self.read_store(snapshot)

    def load_keys(self, items: Iterable[tuple[str, bytes]], batch: int = 10_000) -> None:
        """Untimed setup: write many values by the fastest path the system offers."""
        chunk: list[tuple[str, bytes]] = []
        for item in items:
            chunk.append(item)
            if len(chunk) >= batch:
                run_async(self.set_keys(chunk))
                chunk = []
        if chunk:
            run_async(self.set_keys(chunk))

    # -- footprint ----------------------------------------------------------------
    def garbage_collect(self, full: bool = False) -> int:
        """Collect garbage; return how many objects were deleted."""
        raise NotImplementedError(f"{self.name} has no garbage collection")

    def objects_since_gc(self) -> int | None:
        """Objects stored since the last garbage collection, where the system can say."""
        return None

    def disk_usage(self) -> dict[str, int]:
        """Bytes on disk (call after ``close``); empty for in-memory systems."""
        return dir_usage(self.root) if self.persistent else {}


# -- versionstore ---------------------------------------------------------------------


class _VersionStore(System):
    def _storage(self) -> Any:
        raise NotImplementedError

    def create(self) -> None:
        import versionstore as vs

        self._vs = vs
        self._st = self._storage()
        self._repo = vs.Repository.create(self._st)
        self._session = self._repo.writable_session("main")
        self._store = self._session.store

    def open(self) -> None:
        import versionstore as vs

        self._vs = vs
        if not hasattr(self, "_st"):
            self._st = self._storage()
        self._repo = vs.Repository.open(self._st)
        self._session = self._repo.writable_session("main")
        self._store = self._session.store

    def open_repository(self) -> None:
        import versionstore as vs

        self._vs = vs
        if not hasattr(self, "_st"):
            self._st = self._storage()
        self._repo = vs.Repository.open(self._st)
        self._session = self._store = None

    def close(self) -> None:
        if getattr(self, "_repo", None) is not None:
            self._repo.close()
            self._repo = None

    def write_store(self) -> Store:
        return self._store  # type: ignore[no-any-return]

    @property
    def repository(self) -> Any:
        """The open ``versionstore.Repository`` (for what only versionstore has: merge)."""
        return self._repo

    def commit(self, message: str) -> str | None:
        return str(self._session.commit(message))

    def read_store(self, snapshot: str | None = None) -> Store:
        if snapshot is None:
            return self._repo.readonly_session("main").store  # type: ignore[no-any-return]
        return self._repo.readonly_session(snapshot_id=snapshot).store  # type: ignore[no-any-return]

    def snapshots(self) -> list[str]:
        return [str(info.id) for info in self._repo.ancestry(branch="main")]

    def garbage_collect(self, full: bool = False) -> int:
        return int(self._repo.garbage_collect(full=full).deleted)

    def objects_since_gc(self) -> int | None:
        """Objects stored since the last garbage collection (its ledger's journal), if known.

        What an incremental collection has to look at: a commit's new chunks,
        tree nodes, snapshot and history page.
        """
        from versionstore.codec import decode_gc_ledger

        backend = self._repo.backend
        if not hasattr(backend, "read_ledger"):
            return None
        raw, end = backend.read_ledger()
        if raw is None:
            return None
        return len(backend.journal(decode_gc_ledger(raw).journal, end))

    def load_keys(self, items: Iterable[tuple[str, bytes]], batch: int = 10_000) -> None:
        # Session.set_values stages a whole batch in one backend transaction.
        chunk: list[tuple[str, bytes]] = []
        for item in items:
            chunk.append(item)
            if len(chunk) >= batch:
                self._session.set_values(chunk)
                chunk = []
        if chunk:
            self._session.set_values(chunk)


class VersionStoreLMDB(_VersionStore):
    name = "vs-lmdb"
    description = "versionstore on LMDB (vs.lmdb_storage, default settings)"

    def _storage(self) -> Any:
        return self._vs.lmdb_storage(self.root / "repo")

    def disk_usage(self) -> dict[str, int]:
        usage = dir_usage(self.root)
        usage.update(lmdb_usage(self.root / "repo"))
        return usage


class VersionStoreS3(_VersionStore):
    name = "vs-s3"
    description = "versionstore on S3 (vs.s3_storage, moto on 127.0.0.1 behind a counting proxy)"
    persistent = False
    object_storage = True

    def _storage(self) -> Any:
        from benchmarks.s3_server import ACCESS_KEY, BUCKET, REGION, SECRET_KEY

        return self._vs.s3_storage(bucket=BUCKET, prefix=self.prefix, endpoint_url=self.endpoint,
                                   allow_http=True, region=REGION, access_key_id=ACCESS_KEY,
                                   secret_access_key=SECRET_KEY, from_env=False)


class VersionStoreMemory(_VersionStore):
    name = "vs-mem"
    description = "versionstore in memory (vs.in_memory_storage)"
    persistent = False

    def _storage(self) -> Any:
        return self._vs.in_memory_storage()


# -- icechunk -------------------------------------------------------------------------


class _Icechunk(System):
    def _storage(self) -> Any:
        raise NotImplementedError

    def _import(self) -> Any:
        import icechunk

        icechunk.set_logs_filter("error")
        return icechunk

    def create(self) -> None:
        ic = self._import()
        self._st = self._storage()
        self._repo = ic.Repository.create(self._st)
        self._session: Any = None

    def open(self) -> None:
        ic = self._import()
        if not hasattr(self, "_st"):
            self._st = self._storage()
        self._repo = ic.Repository.open(self._st)
        self._session = None

    def close(self) -> None:
        self._session = None
        self._repo = None

    def write_store(self) -> Store:
        # An icechunk session is read-only once committed: open the next one lazily.
        if self._session is None:
            self._session = self._repo.writable_session("main")
        return self._session.store  # type: ignore[no-any-return]

    def commit(self, message: str) -> str | None:
        session, self._session = self._session, None
        if session is None:
            session = self._repo.writable_session("main")
        return str(session.commit(message))

    def read_store(self, snapshot: str | None = None) -> Store:
        if snapshot is None:
            return self._repo.readonly_session(branch="main").store  # type: ignore[no-any-return]
        return self._repo.readonly_session(snapshot_id=snapshot).store  # type: ignore[no-any-return]

    def snapshots(self) -> list[str]:
        return [info.id for info in self._repo.ancestry(branch="main")]

    def garbage_collect(self, full: bool = False) -> int:
        from datetime import UTC, datetime

        summary = self._repo.garbage_collect(datetime.now(UTC))
        return int(summary.chunks_deleted + summary.manifests_deleted
                   + summary.snapshots_deleted)

    def load_keys(self, items: Iterable[tuple[str, bytes]], batch: int = 10_000) -> None:
        # Untimed setup only: 100 concurrent sets on icechunk's own (Rust) store object,
        # without zarr's Buffer wrapping, overlap its per-call round trips (~3x faster).
        store = self.write_store()
        native = getattr(store, "_store", None)

        async def one(key: str, value: bytes) -> None:
            if native is not None:
                await native.set(key, value)
            else:
                await store.set(key, _PROTO.buffer.from_bytes(value))

        async def run(chunk: list[tuple[str, bytes]]) -> None:
            await asyncio.gather(*(one(k, v) for k, v in chunk))

        chunk: list[tuple[str, bytes]] = []
        for item in items:
            chunk.append(item)
            if len(chunk) >= 100:
                run_async(run(chunk))
                chunk = []
        if chunk:
            run_async(run(chunk))


class IcechunkFS(_Icechunk):
    name = "icechunk-fs"
    description = "icechunk local_filesystem_storage (default config)"

    def _storage(self) -> Any:
        return self._import().local_filesystem_storage(str(self.root / "repo"))


class IcechunkS3(_Icechunk):
    name = "icechunk-s3"
    description = "icechunk s3_storage (default config; moto on 127.0.0.1 behind a counting proxy)"
    persistent = False
    object_storage = True

    def _storage(self) -> Any:
        from benchmarks.s3_server import ACCESS_KEY, BUCKET, REGION, SECRET_KEY

        return self._import().s3_storage(bucket=BUCKET, prefix=self.prefix,
                                         endpoint_url=self.endpoint, allow_http=True,
                                         region=REGION, access_key_id=ACCESS_KEY,
                                         secret_access_key=SECRET_KEY, from_env=False,
                                         force_path_style=True)


class IcechunkMemory(_Icechunk):
    name = "icechunk-mem"
    description = "icechunk in_memory_storage (default config)"
    persistent = False

    def _storage(self) -> Any:
        return self._import().in_memory_storage()


# -- zarr's own stores ----------------------------------------------------------------


class ZarrLocal(System):
    name = "zarr-local"
    description = "zarr.storage.LocalStore (no history; commit is a no-op)"
    versioned = False
    has_commit = False

    def create(self) -> None:
        self.open()

    def open(self) -> None:
        self._store = zarr.storage.LocalStore(str(self.root / "store"))

    def write_store(self) -> Store:
        return self._store

    def read_store(self, snapshot: str | None = None) -> Store:
        return zarr.storage.LocalStore(str(self.root / "store"), read_only=True)


class ZarrMemory(System):
    name = "zarr-mem"
    description = "zarr.storage.MemoryStore (no history; commit is a no-op)"
    versioned = False
    has_commit = False
    persistent = False

    def create(self) -> None:
        self._store = zarr.storage.MemoryStore()

    def open(self) -> None:
        if not hasattr(self, "_store"):
            self.create()

    def write_store(self) -> Store:
        return self._store

    def read_store(self, snapshot: str | None = None) -> Store:
        return self._store


class _UnversionedLMDB(System):
    """An unversioned zarr store in an LMDB environment: one store object, opened by ``_open``."""

    versioned = False
    has_commit = False

    def _open(self) -> Any:
        raise NotImplementedError

    def create(self) -> None:
        self.open()

    def open(self) -> None:
        self._store = self._open()

    def close(self) -> None:
        if getattr(self, "_store", None) is not None:
            self._store.close()
            self._store = None

    def write_store(self) -> Store:
        return self._store  # type: ignore[no-any-return]


class ZarrstoreLMDB(_UnversionedLMDB):
    """zarrstore's unversioned LMDBStore: the same environment as raw LMDB, through zarr."""

    name = "zs-lmdb"
    description = "zarrstore.LMDBStore (no history; commit is a no-op)"

    def _open(self) -> Any:
        from zarrstore import LMDBStore

        return LMDBStore(self.root / "lmdb")

    def read_store(self, snapshot: str | None = None) -> Store:
        from zarrstore import LMDBStore

        return LMDBStore(self.root / "lmdb", read_only=True)

    def load_keys(self, items: Iterable[tuple[str, bytes]], batch: int = 10_000) -> None:
        # One transaction per batch (LMDBStorage.set_many).
        chunk: list[tuple[str, bytes]] = []
        for item in items:
            chunk.append(item)
            if len(chunk) >= batch:
                self._store.storage.set_many(chunk)
                chunk = []
        if chunk:
            self._store.storage.set_many(chunk)

    def disk_usage(self) -> dict[str, int]:
        usage = dir_usage(self.root)
        usage.update(lmdb_usage(self.root / "lmdb", named_databases=False))
        return usage


# -- raw LMDB: the ceiling ------------------------------------------------------------


class RawLMDB(System):
    """py-lmdb put/get of the same bytes under the same keys; no zarr, no history."""

    name = "raw-lmdb"
    description = "py-lmdb put/get in one environment (no zarr, no history)"
    versioned = False
    zarr_capable = False

    def create(self) -> None:
        self.open()

    def open(self) -> None:
        import lmdb

        (self.root / "raw").mkdir(parents=True, exist_ok=True)
        # Opened as versionstore opens a repository (each transaction flushes its pages
        # before its header: MDB_NOMETASYNC); ``commit`` syncs the header like a vs commit.
        self._env = lmdb.open(str(self.root / "raw"), map_size=1 << 40, max_dbs=4, sync=True,
                              metasync=False, readahead=True)
        self._db = self._env.open_db(b"chunks")

    def close(self) -> None:
        if getattr(self, "_env", None) is not None:
            self._env.close()
            self._env = None

    def commit(self, message: str) -> str | None:
        self._env.sync(True)
        return None

    def put(self, items: Iterable[tuple[str, bytes]]) -> None:
        """Write every item in one transaction."""
        with self._env.begin(write=True, db=self._db) as txn:
            for key, value in items:
                txn.put(key.encode(), value)

    async def set_keys(self, items: Sequence[tuple[str, bytes]]) -> None:
        self.put(items)

    def load_keys(self, items: Iterable[tuple[str, bytes]], batch: int = 10_000) -> None:
        self.put(items)

    def key_reader(self, snapshot: str | None = None) -> Any:
        return self._env

    async def get_key(self, store: Any, key: str) -> bytes:
        with self._env.begin(db=self._db) as txn:
            value = txn.get(key.encode())
        assert value is not None, key
        return value  # type: ignore[no-any-return]

    async def get_keys(self, store: Any, keys: Sequence[str]) -> int:
        total = 0
        with self._env.begin(db=self._db) as txn:
            for key in keys:
                value = txn.get(key.encode())
                assert value is not None, key
                total += len(value)
        return total

    def disk_usage(self) -> dict[str, int]:
        usage = dir_usage(self.root)
        usage.update(lmdb_usage(self.root / "raw"))
        return usage


class LMDBFloor(_UnversionedLMDB):
    """One py-lmdb transaction per call behind a minimal zarr store (``benchmarks.lmdb_floor``)."""

    name = "lmdb-zarr"
    description = ("one py-lmdb transaction per set/get behind a minimal zarr Store "
                   "(no history, no checks): the floor of an LMDB store through zarr")
    only_workloads = ("percall", "bulk")  # no listing, deletion or byte ranges: its module

    ordered = False

    def _open(self) -> Any:
        from benchmarks.lmdb_floor import LMDBFloorStore

        return LMDBFloorStore(self.root / "floor", ordered=self.ordered)

    def read_store(self, snapshot: str | None = None) -> Store:
        return self._store.with_read_only(True)  # type: ignore[no-any-return]


class LMDBOrderedFloor(LMDBFloor):
    """``lmdb-zarr`` opened as versionstore opens a repository: each write flushes first."""

    name = "lmdb-zarr-ordered"
    description = ("lmdb-zarr with each transaction flushing its pages before its header "
                   "(MDB_NOMETASYNC, as versionstore): the floor of an LMDB store through "
                   "zarr that keeps its committed data through a power cut")
    ordered = True


SYSTEMS: dict[str, type[System]] = {
    cls.name: cls
    for cls in (VersionStoreLMDB, VersionStoreMemory, VersionStoreS3, IcechunkFS, IcechunkMemory,
                IcechunkS3, ZarrLocal, ZarrMemory, ZarrstoreLMDB, RawLMDB, LMDBFloor,
                LMDBOrderedFloor)
}


def available_systems() -> dict[str, str | None]:
    """Every system name → ``None`` if usable here, else the reason it is not."""
    reasons: dict[str, str | None] = {name: None for name in SYSTEMS}
    try:
        import icechunk  # noqa: F401
    except ImportError:
        for name in ("icechunk-fs", "icechunk-mem", "icechunk-s3"):
            reasons[name] = "icechunk is not installed (pip install 'versionstore[bench]')"
    try:
        import aiohttp  # noqa: F401
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
        import obstore  # noqa: F401
    except ImportError:
        for name in ("vs-s3", "icechunk-s3"):
            reasons[name] = ("the S3 server needs moto[server], boto3 and aiohttp, and vs-s3 "
                             "obstore (pip install 'versionstore[test,bench]')")
    return reasons


# -- footprint helpers ----------------------------------------------------------------


def dir_usage(path: Path) -> dict[str, int]:
    """Apparent size (sum of file sizes) and allocated size (blocks) under ``path``."""
    apparent = allocated = files = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            apparent += st.st_size
            allocated += st.st_blocks * 512
            files += 1
    return {"apparent_bytes": apparent, "allocated_bytes": allocated, "files": files}


def lmdb_usage(path: Path, named_databases: bool = True) -> dict[str, int]:
    """Pages LMDB really uses, next to the file size (LMDB files never shrink).

    ``used_bytes`` counts the branch, leaf and overflow pages of every database
    (the main one and each named one) plus the two meta pages; the rest of the
    file up to ``high_water_bytes`` is free pages that LMDB will reuse.
    """
    import lmdb

    env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=16)
    try:
        page = env.stat()["psize"]
        pages = 2
        main = env.stat()
        pages += main["branch_pages"] + main["leaf_pages"] + main["overflow_pages"]
        names: list[bytes] = []
        if named_databases:  # else the main database holds data, not database names
            with env.begin() as txn:
                names = [bytes(k) for k in txn.cursor().iternext(values=False)]
        for name in names:
            try:
                db = env.open_db(name, create=False)
            except lmdb.IncompatibleError:  # a plain key beside the names (the repository id)
                continue
            with env.begin() as txn:
                st = txn.stat(db)
            pages += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        info = env.info()
        return {
            "lmdb_used_bytes": pages * page,
            "lmdb_high_water_bytes": (info["last_pgno"] + 1) * page,
            "lmdb_file_bytes": os.path.getsize(path / "data.mdb"),
        }
    finally:
        env.close()


def remove(path: Path) -> None:
    """Delete a system's directory (ignoring what is already gone)."""
    shutil.rmtree(path, ignore_errors=True)

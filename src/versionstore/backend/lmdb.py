"""``LMDBBackend``: the embedded default, one directory on local disk.

LMDB gives us what the engine needs without a server: readers never block,
one write transaction at a time across every thread *and process* on the
machine, and crash-safe copy-on-write pages. A compare-and-swap of a ref is
one write transaction, so two processes racing to commit get exactly one
winner.

Durability: by default transactions are not fsynced one by one (that would
cost a disk flush per staged chunk); everything written is in the page cache
at once, so a killed process loses nothing, and ``sync()`` — called by every
commit after its ref moves — flushes to disk so a *commit* also survives power
loss. Pass ``durable=True`` to fsync every transaction instead.

Readahead stays on (LMDB's default): a chunk object is one run of contiguous
overflow pages, and with readahead off (``MADV_RANDOM``) the kernel faults it
in one 4 KiB page at a time, which made a cold read of 1 MiB chunks about ten
times slower than with it on (docs/benchmarks.md). The price is some wasted
I/O on cold random reads of small values.

LMDB forbids opening one environment twice in a process, so environments are
shared through a per-process registry and reopened after ``fork``.
This is the only module that imports ``lmdb``; its errors become
``BackendError`` here.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar, override

import attrs
import lmdb

from versionstore.backend.protocol import Backend, Rescue, WriteBatch, changed_refs
from versionstore.errors import BackendError, MissingObjectsError, RepositoryBusyError
from versionstore.ids import ObjectId, object_id_text

__all__ = ["LMDBBackend", "SpaceReport", "has_lmdb_environment"]

_MAP_SIZE = 1 << 40
T = TypeVar("T")

_registry_lock = threading.Lock()
#: (pid, path) -> (environment, its objects and refs databases, number of users)
_environments: dict[
    tuple[int, str], tuple[lmdb.Environment, tuple[lmdb._Database, lmdb._Database], int]
] = {}


def has_lmdb_environment(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` already holds an LMDB environment (without creating one)."""
    return os.path.isfile(os.path.join(path, "data.mdb"))


def _acquire(path: str, durable: bool
             ) -> tuple[lmdb.Environment, tuple[lmdb._Database, lmdb._Database]]:
    """The process's environment at ``path`` and its two databases, opened once.

    The databases are opened here, under the registry lock, and never again:
    ``open_db`` runs a write transaction and (in py-lmdb 3) waits for LMDB's
    writer lock while holding the GIL, so two threads opening repositories at
    once could each hold what the other waits for, and hang.
    """
    key = (os.getpid(), path)
    with _registry_lock:
        env, databases, users = _environments.get(key, (None, None, 0))
        if env is None or databases is None:
            os.makedirs(path, exist_ok=True)
            env = lmdb.open(
                path,
                map_size=_MAP_SIZE,
                max_dbs=4,
                max_readers=1024,
                sync=durable,
                metasync=durable,
                readahead=True,
                lock=True,
            )
            databases = (env.open_db(b"objects"), env.open_db(b"refs"))
        # A process killed inside a read transaction leaves its reader slot behind;
        # while anyone keeps the environment open, that slot pins every page freed
        # since (the file grows with each write) and, a thousand deaths later, fills
        # the reader table. Each open clears the slots of dead processes.
        env.reader_check()
        _environments[key] = (env, databases, users + 1)
        return env, databases


def _release(path: str) -> None:
    key = (os.getpid(), path)
    with _registry_lock:
        env, databases, users = _environments.get(key, (None, None, 0))
        if env is None or databases is None:
            return
        if users <= 1:
            del _environments[key]
            env.close()
        else:
            _environments[key] = (env, databases, users - 1)


def _bytes(value: bytes | memoryview | None) -> bytes | None:
    return value if value is None or isinstance(value, bytes) else bytes(value)


@contextmanager
def _translated(action: str) -> Iterator[None]:
    try:
        yield
    except lmdb.MapFullError as exc:
        raise BackendError(f"LMDB repository is full while {action}: {exc}") from exc
    except lmdb.Error as exc:
        raise BackendError(f"LMDB failed while {action}: {exc}") from exc


class LMDBBackend(Backend):
    """A backend in an LMDB environment at ``path``."""

    def __init__(self, path: str | os.PathLike[str], *, durable: bool = False) -> None:
        self.path = os.path.realpath(path)
        self.durable = durable
        self._pid = os.getpid()
        self._closed = False
        with _translated("opening the repository"):
            self._env, (self._objects, self._refs) = _acquire(self.path, durable)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return LMDBBackend, (self.path,)

    def __repr__(self) -> str:
        return f"LMDBBackend({self.path!r})"

    def _environment(self) -> lmdb.Environment:
        if self._closed:
            raise BackendError(f"LMDB repository at {self.path!r} is closed")
        if self._pid != os.getpid():  # after fork the parent's environment is unusable
            self._pid = os.getpid()
            self._env, (self._objects, self._refs) = _acquire(self.path, self.durable)
        return self._env

    def _read(self, action: str, work: Callable[[lmdb.Transaction], T]) -> T:
        with _translated(action), self._environment().begin(buffers=False) as txn:
            return work(txn)

    def _write(self, action: str, work: Callable[[lmdb.Transaction], T]) -> T:
        with _translated(action), self._environment().begin(write=True) as txn:
            return work(txn)

    @override
    def get_objects(self, ids: Sequence[ObjectId]) -> list[bytes | None]:
        db = self._objects
        return self._read("reading objects", lambda txn: [_bytes(txn.get(i, db=db)) for i in ids])

    @override
    def write(self, batch: WriteBatch) -> bool:
        objects_db, refs_db = self._objects, self._refs

        def work(txn: lmdb.Transaction) -> bool:
            for name, value in batch.expect.items():
                if txn.get(name.encode(), db=refs_db) != value:
                    return False
            rule = batch.session
            required = list(batch.requires)
            if rule is not None and txn.get(rule.record.encode(), db=refs_db) is None:
                required.extend(rule.requires)
            written = {object_id for object_id, _ in batch.objects} if required else set()
            missing = [object_id_text(i) for i in required
                       if i not in written and txn.get(i, db=objects_db) is None]
            if missing:
                raise MissingObjectsError(missing)
            for object_id, data in batch.objects:
                txn.put(object_id, data, overwrite=False, db=objects_db)
            for name, value in batch.refs.items():
                if value is None:
                    txn.delete(name.encode(), db=refs_db)
                else:
                    txn.put(name.encode(), value, db=refs_db)
            for name, value in batch.delete_if_equal.items():
                if txn.get(name.encode(), db=refs_db) == value:
                    txn.delete(name.encode(), db=refs_db)
            if rule is not None:
                record = rule.record.encode()
                cursor = txn.cursor(db=refs_db)
                prefix = rule.prefix.encode()
                if not (cursor.set_range(prefix) and bytes(cursor.key()).startswith(prefix)):
                    txn.delete(record, db=refs_db)
                else:
                    txn.put(record, rule.value, overwrite=rule.replace, db=refs_db)
            return True

        return self._write("writing", work)

    @override
    def get_refs(self, names: Sequence[str]) -> list[bytes | None]:
        refs_db = self._refs
        return self._read(
            "reading refs",
            lambda txn: [_bytes(txn.get(name.encode(), db=refs_db)) for name in names],
        )

    @override
    def list_refs(self, prefix: str, limit: int | None = None) -> dict[str, bytes]:
        start = prefix.encode()

        def work(txn: lmdb.Transaction) -> dict[str, bytes]:
            found: dict[str, bytes] = {}
            cursor = txn.cursor(db=self._refs)
            if not cursor.set_range(start):
                return found
            for raw_name, value in cursor:
                name = bytes(raw_name)
                if not name.startswith(start) or (limit is not None and len(found) >= limit):
                    break
                found[name.decode()] = bytes(value)
            return found

        return self._read("listing refs", work)

    @override
    def delete_objects(
        self,
        ids: Iterable[ObjectId],
        *,
        if_refs_are: Mapping[str, bytes] | None = None,
        rescue: Rescue | None = None,
    ) -> bool:
        objects_db = self._objects

        def work(txn: lmdb.Transaction) -> bool:
            spared: set[ObjectId] = set()
            if if_refs_are is not None:
                current = {bytes(k).decode(): bytes(v) for k, v in txn.cursor(db=self._refs)}
                if current != if_refs_are:
                    if rescue is None:
                        return False
                    spared = rescue(
                        changed_refs(if_refs_are, current),
                        lambda wanted: [_bytes(txn.get(i, db=objects_db)) for i in wanted],
                    )
            for object_id in ids:
                if object_id not in spared:
                    txn.delete(object_id, db=objects_db)
            return True

        return self._write("deleting objects", work)

    @override
    def iter_object_ids(self) -> Iterator[ObjectId]:
        def work(txn: lmdb.Transaction) -> list[ObjectId]:
            return [ObjectId(bytes(k)) for k in txn.cursor(db=self._objects).iternext(values=False)]

        return iter(self._read("listing objects", work))

    @override
    def sync(self) -> None:
        with _translated("flushing to disk"):
            self._environment().sync(True)

    def space(self) -> SpaceReport:
        """The file's size and the bytes of its pages in use (see ``SpaceReport``)."""
        env = self._environment()

        def work(txn: lmdb.Transaction) -> int:
            pages = 2  # the two meta pages
            for stat in (env.stat(), txn.stat(self._objects), txn.stat(self._refs)):
                pages += stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
            return int(pages * env.stat()["psize"])

        used = self._read("measuring space", work)
        return SpaceReport(file_bytes=os.path.getsize(os.path.join(self.path, "data.mdb")),
                           used_bytes=used)

    def compact(self) -> tuple[int, int]:
        """Give free pages back to the file system; return (file bytes before, after).

        Closes this process's environment, runs ``compact_environment`` and
        reopens it.

        Raises:
            RepositoryBusyError: another process — or another open repository
                object in this one — has the environment open; nothing changed.
        """
        self._environment()
        key = (os.getpid(), self.path)
        with _registry_lock:
            users = _environments[key][2] if key in _environments else 0
        if users > 1:
            raise RepositoryBusyError(self.path, [os.getpid()], in_this_process=users - 1)
        _release(self.path)
        try:
            return compact_environment(self.path)
        finally:
            with _translated("reopening after compaction"):
                self._env, (self._objects, self._refs) = _acquire(self.path, self.durable)

    @override
    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._pid == os.getpid():
                _release(self.path)


# -- space and compaction (a separate concern from opening: see ``compact``) -----------

#: ``struct flock`` on 64-bit Linux: type, whence, start, len, pid (and padding).
_FLOCK = "hhqqi4x"


@attrs.frozen(kw_only=True)
class SpaceReport:
    """Disk space of an LMDB environment, in bytes.

    ``file_bytes`` is the size of ``data.mdb``; ``used_bytes`` the pages in
    use (everything else is free pages LMDB will reuse but never gives back
    to the file system); ``reclaimable_bytes`` the difference.
    """

    file_bytes: int
    used_bytes: int

    @property
    def reclaimable_bytes(self) -> int:
        """Bytes ``compact`` would return to the file system (about)."""
        return max(0, self.file_bytes - self.used_bytes)


def _holders(path: str) -> list[int]:
    """Processes holding LMDB's lock on ``path`` (a shared lock on byte 0 of lock.mdb)."""
    lock_path = os.path.join(path, "lock.mdb")
    if not os.path.exists(lock_path):
        return []
    fd = os.open(lock_path, os.O_RDWR)
    try:
        probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 1, 0)
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, probe)
        kind, _, _, _, pid = struct.unpack(_FLOCK, answer)
        return [] if kind == fcntl.F_UNLCK else [pid]
    finally:
        os.close(fd)


def compact_environment(path: str) -> tuple[int, int]:
    """Rewrite the environment at ``path`` compactly; return (bytes before, bytes after).

    Nobody may have it open, in this process or any other: the caller closes
    its own handles first. An exclusive open-file-description lock on byte 0
    of ``lock.mdb`` — the byte every LMDB opener holds a shared lock on —
    proves no other process has it open *and* makes any process that opens
    it meanwhile wait. Under that lock the environment is copied with LMDB's
    compacting copy (only pages in use, free list dropped) into a new
    directory inside ``path``, flushed, and renamed over ``data.mdb`` in one
    atomic ``rename``; a crash at any point leaves either the old or the new
    file whole.

    Raises:
        RepositoryBusyError: another process has the environment open (its
            process id is named); nothing was changed.
        BackendError: the platform lacks open-file-description locks (not
            Linux), or LMDB failed.
    """
    if not hasattr(fcntl, "F_OFD_SETLK"):
        raise BackendError("compact needs open-file-description locks (Linux)")
    data_path = os.path.join(path, "data.mdb")
    before = os.path.getsize(data_path)
    fd = os.open(os.path.join(path, "lock.mdb"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        lock = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 1, 0)
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, lock)
        except OSError as exc:
            holders = _holders(path)
            raise RepositoryBusyError(path, holders) from exc
        scratch = tempfile.mkdtemp(prefix=".compact-", dir=path)
        try:
            with _translated("compacting"):
                # No LMDB lock: the lock we hold excludes every other opener.
                env = lmdb.open(path, readonly=True, lock=False, max_dbs=4,
                                map_size=_MAP_SIZE)
                try:
                    env.copy(scratch, compact=True)
                finally:
                    env.close()
            copied = os.path.join(scratch, "data.mdb")
            copy_fd = os.open(copied, os.O_RDONLY)
            try:
                os.fsync(copy_fd)
            finally:
                os.close(copy_fd)
            os.replace(copied, data_path)
            dir_fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    finally:
        os.close(fd)  # releases the lock
    return before, os.path.getsize(data_path)

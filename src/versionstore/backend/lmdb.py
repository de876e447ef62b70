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

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar, override

import lmdb

from versionstore.backend.protocol import Backend, Rescue, WriteBatch, changed_refs
from versionstore.errors import BackendError, MissingObjectsError
from versionstore.ids import ObjectId, object_id_text

__all__ = ["LMDBBackend", "has_lmdb_environment"]

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
    def iter_object_ids(self, prefix: bytes = b"") -> Iterator[ObjectId]:
        def work(txn: lmdb.Transaction) -> list[ObjectId]:
            cursor = txn.cursor(db=self._objects)
            if not cursor.set_range(prefix):
                return []
            found = []
            for key in cursor.iternext(values=False):
                if not bytes(key[: len(prefix)]) == prefix:
                    break
                found.append(ObjectId(bytes(key)))
            return found

        return iter(self._read("listing objects", work))

    @override
    def sync(self) -> None:
        with _translated("flushing to disk"):
            self._environment().sync(True)

    @override
    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._pid == os.getpid():
                _release(self.path)

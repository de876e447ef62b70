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

from versionstore.backend.protocol import Backend
from versionstore.errors import BackendError
from versionstore.ids import ObjectId

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
    def put_objects(
        self,
        objects: Iterable[tuple[ObjectId, bytes]],
        refs: Mapping[str, bytes | None] | None = None,
    ) -> None:
        def work(txn: lmdb.Transaction) -> None:
            for object_id, data in objects:
                txn.put(object_id, data, overwrite=False, db=self._objects)
            self._write_refs(txn, refs or {})

        self._write("writing objects", work)

    def _write_refs(self, txn: lmdb.Transaction, refs: Mapping[str, bytes | None]) -> None:
        for name, value in refs.items():
            if value is None:
                txn.delete(name.encode(), db=self._refs)
            else:
                txn.put(name.encode(), value, db=self._refs)

    @override
    def get_ref(self, name: str) -> bytes | None:
        return self._read(
            "reading a ref", lambda txn: _bytes(txn.get(name.encode(), db=self._refs))
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
    def compare_and_swap_ref(
        self,
        name: str,
        expected: bytes | None,
        new: bytes | None,
        also: Mapping[str, bytes | None] | None = None,
        objects: Sequence[tuple[ObjectId, bytes]] = (),
    ) -> bool:
        def work(txn: lmdb.Transaction) -> bool:
            if txn.get(name.encode(), db=self._refs) != expected:
                return False
            for object_id, data in objects:
                txn.put(object_id, data, overwrite=False, db=self._objects)
            self._write_refs(txn, {**(also or {}), name: new})
            return True

        return self._write(f"moving ref {name!r}", work)

    @override
    def delete_objects(
        self, ids: Iterable[ObjectId], *, if_refs_are: Mapping[str, bytes] | None = None
    ) -> bool:
        def work(txn: lmdb.Transaction) -> bool:
            if if_refs_are is not None:
                current = {bytes(k).decode(): bytes(v) for k, v in txn.cursor(db=self._refs)}
                if current != dict(if_refs_are):
                    return False
            for object_id in ids:
                txn.delete(object_id, db=self._objects)
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

    @override
    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._pid == os.getpid():
                _release(self.path)

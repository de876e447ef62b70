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

The environment rules LMDB imposes on a whole process — one environment per
directory, a map that grows on demand, reopening after ``fork``, refusing a
truncated file, read-only filesystems, a full disk — live in
``zarrstore.lmdb_environment``, shared with ``zarrstore.LMDBStore``. This
module imports ``lmdb`` for its transaction types; every error from below
becomes a versionstore error in ``_translated``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar, override

import lmdb

from versionstore.backend.protocol import Backend
from versionstore.errors import (
    BackendError,
    CorruptRepositoryError,
    DiskFullError,
    ReadOnlyRepositoryError,
)
from versionstore.ids import ObjectId
from zarrstore.errors import CorruptStorageError, ReadOnlyError, StorageFullError, StorageIOError
from zarrstore.lmdb_environment import EnvironmentHandle, holds_environment

__all__ = ["LMDBBackend", "has_lmdb_environment"]

T = TypeVar("T")
_DATABASES = (b"objects", b"refs")


def has_lmdb_environment(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` already holds an LMDB environment (without creating one)."""
    return holds_environment(path)


def _bytes(value: bytes | memoryview | None) -> bytes | None:
    return value if value is None or isinstance(value, bytes) else bytes(value)


@contextmanager
def _translated(action: str) -> Iterator[None]:
    try:
        yield
    except (StorageIOError, ReadOnlyError, lmdb.Error) as exc:
        raise _translate(exc, action) from exc


def _translate(exc: Exception, action: str) -> BackendError:
    if isinstance(exc, ReadOnlyError):
        return ReadOnlyRepositoryError(f"cannot write while {action}: {exc}")
    if isinstance(exc, StorageFullError):
        return DiskFullError(str(exc))
    if isinstance(exc, CorruptStorageError):
        return CorruptRepositoryError(str(exc))
    if isinstance(exc, StorageIOError):
        return BackendError(str(exc))
    return BackendError(f"LMDB failed while {action}: {exc}")


class LMDBBackend(Backend):
    """A backend in an LMDB environment at ``path``.

    Args:
        path: the directory (created if missing, unless ``read_only``).
        durable: fsync every write transaction, not only ``sync()``.
        read_only: refuse writes with ``ReadOnlyRepositoryError``; also what a
            read-only filesystem gives without asking.

    The environment is released on ``close()`` or when the backend is garbage
    collected, whichever comes first.
    """

    def __init__(self, path: str | os.PathLike[str], *, durable: bool = False,
                 read_only: bool = False) -> None:
        self.path = os.path.realpath(path)
        self.durable = durable
        with _translated("opening the repository"):
            self._handle = EnvironmentHandle(self.path, databases=_DATABASES,
                                             read_only=read_only, durable=durable,
                                             create=not read_only)
        self.read_only = self._handle.read_only

    def __reduce__(self) -> tuple[Any, tuple[str, bool, bool]]:
        return _reopen, (self.path, self.durable, self.read_only)

    def __repr__(self) -> str:
        return f"LMDBBackend({self.path!r})"

    # Take these inside ``work`` (in the transaction), never before ``_read``/``_write``:
    # a fork in another thread reopens the environment in between, and a handle of
    # the closed environment fails with "Database handle belongs to another environment".
    @property
    def _objects(self) -> lmdb._Database:
        return self._handle.databases[0]

    @property
    def _refs(self) -> lmdb._Database:
        return self._handle.databases[1]

    @property
    def _env(self) -> lmdb.Environment:
        """The current environment (tests reach the raw files through it)."""
        return self._environment()

    def _environment(self) -> lmdb.Environment:
        if self._handle.closed:
            raise BackendError(f"LMDB repository at {self.path!r} is closed")
        with _translated("opening the repository"):
            return self._handle.env

    def _read(self, action: str, work: Callable[[lmdb.Transaction], T]) -> T:
        if self._handle.closed:
            raise BackendError(f"LMDB repository at {self.path!r} is closed")
        try:
            return self._handle.read(action, work)
        except (StorageIOError, ReadOnlyError, lmdb.Error) as exc:
            raise _translate(exc, action) from exc

    def _write(self, action: str, work: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``work`` in one write transaction; replayed whole if the map had to grow."""
        if self._handle.closed:
            raise BackendError(f"LMDB repository at {self.path!r} is closed")
        try:
            return self._handle.write(action, work)
        except (StorageIOError, ReadOnlyError, lmdb.Error) as exc:
            raise _translate(exc, action) from exc

    @override
    def get_objects(self, ids: Sequence[ObjectId]) -> list[bytes | None]:
        # The database handle is taken inside the transaction: a fork in another
        # thread reopens the environment, and handles taken before belong to the old one.
        def work(txn: lmdb.Transaction) -> list[bytes | None]:
            db = self._objects
            return [_bytes(txn.get(i, db=db)) for i in ids]

        return self._read("reading objects", work)

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
        if self._handle.closed:
            raise BackendError(f"LMDB repository at {self.path!r} is closed")
        with _translated("flushing to disk"):
            self._handle.sync()

    @override
    def close(self) -> None:
        self._handle.close()


def _reopen(path: str, durable: bool, read_only: bool) -> LMDBBackend:
    """Unpickle: open the environment at ``path`` again (in this process)."""
    return LMDBBackend(path, durable=durable, read_only=read_only)

"""``LMDBStore``: a plain, unversioned Zarr store in one LMDB environment.

zarr v2 had an ``LMDBStore``; zarr v3 dropped it. This one keeps every key
(UTF-8, as given, at most 511 bytes) in the main database of one LMDB
environment in a directory: ``data.mdb`` holds the values, ``lock.mdb``
coordinates processes.

Guarantees (LMDB's own):

* **Atomic batches.** Each call is one transaction; ``set_many``,
  ``erase_many`` and ``erase_prefix`` write all their keys in one, so a
  process killed mid-batch (even ``SIGKILL``) leaves the old values or the new
  ones, never a mixture.
* **Many readers, one writer.** Any number of threads and processes read at
  once without blocking each other or the writer; writers are serialised by
  LMDB's lock across threads and processes (a second writer waits).
* **A map that grows.** The memory map starts at ``map_size`` and grows when
  full (``zarrstore.lmdb_environment``), so ``MapFullError`` never reaches
  the caller; only a full disk does, as ``StorageFullError``.
* **Durability.** By default a commit is in the page cache at once (a killed
  process loses nothing) and reaches the disk with the next ``sync()``; pass
  ``durable=True`` to fsync every transaction (survives power loss).
* **Reads on the event loop.** Through zarr's async API, a read runs on the
  loop's thread, as ``MemoryStore``'s do: an LMDB reader waits for no writer
  and no fsync, only to fault in pages not yet cached, and a hop to a worker
  thread would cost 5–10 times the read itself (``get`` of 4 KiB: 18 µs
  inline, 150–180 µs in a thread; ``docs/benchmarks.md``). A write runs in a
  worker thread: it may wait for another process's write transaction (LMDB
  has one writer), and the loop it would block serves every store of the
  process, this one's reads included.

A store is picklable (it reopens by path in the receiving process) and is
safe to use in a child made by ``fork``; either way it opens only its own
environment: another one moved into its directory meanwhile raises
``StorageReplacedError`` (the store keeps no id of its own, so a directory
removed and made again that reuses the inode numbers, as ext4 does, is not
told apart: ``EnvironmentIdentity``). ``lock=False`` skips LMDB's lock file:
only for a single process, or a read-only medium.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NoReturn, TypeVar, override

import lmdb

from zarrstore import lmdb_files
from zarrstore.errors import ClosedStorageError, InvalidKeyError
from zarrstore.keys import validate_key
from zarrstore.lmdb_environment import (
    INITIAL_MAP_SIZE,
    EnvironmentHandle,
    EnvironmentIdentity,
    holds_environment,
)
from zarrstore.protocol import DirListing, ReadRequest, Storage
from zarrstore.ranges import ByteRange, slice_value
from zarrstore.values import value_bytes
from zarrstore.zarr_bridge import ZarrStore

__all__ = ["LMDBStorage", "LMDBStore"]

T = TypeVar("T")
#: Calls made again, each on the reopened environment, when ``close()`` in another thread
#: closed the handle just as the call began (``LMDBStorage._with_handle``).
_REOPEN_ATTEMPTS = 100


def _always_open() -> NoReturn:
    raise AssertionError("a writable store always has its environment")

#: LMDB's longest key, in bytes (its default ``MDB_MAXKEYSIZE``).
MAX_KEY_BYTES = 511


def _key(key: str) -> bytes:
    raw = key.encode()
    if len(raw) > MAX_KEY_BYTES:
        raise InvalidKeyError(key, f"LMDB keys are at most {MAX_KEY_BYTES} bytes in UTF-8")
    return raw


class LMDBStorage(Storage):
    """The storage behind ``LMDBStore``: keys in the main database of an environment.

    Args:
        path: the environment's directory (created when missing, unless read-only).
        map_size: the initial size of the memory map in bytes; it grows on demand.
        read_only: refuse writes with ``ReadOnlyError`` (also what a read-only
            filesystem gives without asking).
        durable: fsync every write transaction.
        lock: use LMDB's lock file; ``False`` only for one process or read-only media.
        identity: open only this environment (``EnvironmentIdentity``; what a
            pickled copy carries): anything else at ``path`` raises
            ``StorageReplacedError``, and nothing is created.

    ``self.path`` is the directory LMDB opens: where ``data.mdb`` in ``path``
    is a symlink, its target's directory (``zarrstore.lmdb_files``), so
    stores reaching one data file by different paths are equal.

    Raises:
        CorruptStorageError: ``data.mdb`` is shorter than the pages it records.
        StorageReplacedError: ``identity`` was given and ``path`` holds no
            environment, or another one; so does a store reopened after
            ``close()`` or ``fork`` that finds another environment there.
        StorageIOError: LMDB could not open the environment, or its files are
            linked in a way LMDB cannot coordinate (a hard-linked ``data.mdb``,
            a symlinked ``lock.mdb``, a dangling link: ``zarrstore.lmdb_files``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size: int = INITIAL_MAP_SIZE,
        read_only: bool = False,
        durable: bool = False,
        lock: bool = True,
        identity: EnvironmentIdentity | None = None,
    ) -> None:
        self.path = lmdb_files.environment_directory(path)
        #: The directory as given: opened through it, the environment also looks for a
        #: process using the lock file beside a link there (``EnvironmentHandle``).
        self._given = os.path.realpath(path)
        self._wanted_read_only = read_only
        self.map_size = map_size
        self.durable = durable
        self.lock = lock
        self._handle: EnvironmentHandle | None = None
        self._closed = False
        self._reopening = threading.Lock()
        #: The environment this store opened (a pickled copy's: its original's).
        self._identity: EnvironmentIdentity | None = identity
        # A read-only store creates nothing: over a missing environment it reads as
        # empty until one appears.
        if not read_only or identity is not None or holds_environment(self.path):
            self._handle = self._open()
        super().__init__(read_only=read_only or bool(self._handle and self._handle.read_only))

    @property
    @override
    def blocking_reads(self) -> bool:
        """``False``: LMDB readers wait for no writer (the module docstring says why)."""
        return False

    def _open(self) -> EnvironmentHandle:
        handle = EnvironmentHandle(self._given, read_only=self._wanted_read_only,
                                   durable=self.durable, create=not self._wanted_read_only,
                                   map_size=self.map_size, lock=self.lock,
                                   expect_identity=self._identity)
        # Opened again (after ``close()``), or in a copy, it must be this environment.
        self._identity = handle.identity
        return handle

    def _environment(self) -> EnvironmentHandle | None:
        """The handle, opened now if a read-only store's environment has appeared.

        A store used after ``close()`` opens its environment again, as zarr's
        own stores do (``zarr.abc.store.Store._ensure_open``: ``LocalStore``
        and ``MemoryStore`` reopen on their next use), so an array created in a
        ``with store:`` block stays readable after it.
        """
        if self._closed:
            with self._reopening:
                if self._closed:
                    self._handle = None
                    if not self._wanted_read_only or holds_environment(self.path):
                        self._handle = self._open()
                    self._closed = False
        if self._handle is None and holds_environment(self.path):
            self._handle = self._open()
        return self._handle

    def _with_handle(self, use: Callable[[EnvironmentHandle], T],
                     absent: Callable[[], T]) -> T:
        """``use(handle)``, or ``absent()`` while a read-only store has no environment.

        ``close()`` in another thread may close the handle between taking it
        and its transaction beginning (``ClosedStorageError``: nothing was
        done); the store stays usable after ``close()``, so the call takes the
        reopened handle and is made again, as if it had begun after the close.
        """
        for _ in range(_REOPEN_ATTEMPTS):
            handle = self._environment()
            if handle is None:
                return absent()
            try:
                return use(handle)
            except ClosedStorageError:
                if not handle.closed:
                    raise
        raise ClosedStorageError(
            f"{self.path!r} was closed by another thread {_REOPEN_ATTEMPTS} times as a call began")

    def _read(self, action: str, work: Callable[[lmdb.Transaction], T], empty: T) -> T:
        # Views of the map (``buffers``): a value is only measured, never touched.
        return self._with_handle(lambda handle: handle.read(action, work, buffers=True),
                                 lambda: empty)

    def _read_values(self, action: str,
                     work: Callable[[lmdb.Transaction, EnvironmentHandle], T], empty: T) -> T:
        """``_read``, giving ``work`` the handle: values are read through its ``get``/``value``.

        A damaged page's value may claim to run past the end of the file, where
        touching it raises ``SIGBUS``; those refuse it with
        ``CorruptStorageError`` (``zarrstore.lmdb_environment``).
        """
        return self._with_handle(
            lambda handle: handle.read(action, lambda txn: work(txn, handle), buffers=True),
            lambda: empty)

    def _write(self, action: str, work: Callable[[lmdb.Transaction], T]) -> T:
        return self._with_handle(lambda handle: handle.write(action, work), _always_open)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, LMDBStorage)
            and self.path == other.path
            and self.read_only == other.read_only
        )

    def __hash__(self) -> int:
        return hash(self.path)

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "writable"
        return f"LMDBStorage({self.path!r}, {mode})"

    def __getstate__(self) -> dict[str, Any]:
        # The identity travels: the copy opens this environment, or refuses.
        return {"path": self.path, "map_size": self.map_size, "read_only": self._wanted_read_only,
                "durable": self.durable, "lock": self.lock, "identity": self._identity}

    def __setstate__(self, state: dict[str, Any]) -> None:
        path = state.pop("path")
        self.__init__(path, **state)  # type: ignore[misc]

    # -- reads ----------------------------------------------------------------------

    @override
    def _get(self, key: str, byte_range: ByteRange | None) -> bytes | None:
        raw = _key(key)

        def work(txn: lmdb.Transaction, handle: EnvironmentHandle) -> bytes | None:
            value = handle.get(txn, raw)
            return None if value is None else slice_value(bytes(value), byte_range)

        return self._read_values("reading", work, None)

    @override
    def _get_many(self, requests: Sequence[ReadRequest]) -> list[bytes | None]:
        keys = [(_key(key), byte_range) for key, byte_range in requests]

        def work(txn: lmdb.Transaction, handle: EnvironmentHandle) -> list[bytes | None]:
            get = handle.get
            values = [(get(txn, raw), byte_range) for raw, byte_range in keys]
            return [None if v is None else slice_value(bytes(v), r) for v, r in values]

        return self._read_values("reading", work, [None] * len(keys))

    @override
    def _size(self, key: str) -> int | None:
        raw = _key(key)

        def work(txn: lmdb.Transaction, handle: EnvironmentHandle) -> int | None:
            value = handle.get(txn, raw)
            return None if value is None else len(value)

        return self._read_values("reading a size", work, None)

    @override
    def _size_prefix(self, prefix: str) -> int:
        def work(txn: lmdb.Transaction, handle: EnvironmentHandle) -> int:
            return sum(size for _, size in _under(txn, prefix.encode(), handle))

        return self._read_values("summing sizes", work, 0)

    @override
    def _list_prefix(self, prefix: str) -> Iterator[str]:
        def work(txn: lmdb.Transaction) -> list[str]:
            cursor = txn.cursor()
            start = prefix.encode()
            if not cursor.set_range(start):
                return []
            keys = []
            for raw in cursor.iternext(values=False):
                key = bytes(raw)
                if not key.startswith(start):
                    break
                keys.append(key.decode())
            return keys

        nothing: list[str] = []
        return iter(self._read("listing", work, nothing))

    @override
    def _list_dir(self, prefix: str) -> DirListing:
        """The direct children, found by seeking past each sub-directory's keys.

        Cursor steps grow with the number of children, not of keys: on finding
        ``name/`` the cursor jumps to the first key at or after ``name0``
        (``"0"`` is the byte after ``"/"``), past every key under ``name/``,
        so ``list_dir("")`` of one array of a million chunks reads a handful of
        keys. Keys sort as UTF-8 bytes, which is code point order, so the
        listing is sorted as ``children_of`` sorts it (``a-x/`` and ``a.y``
        before ``a/``).
        """
        start = prefix.encode()
        after = len(start)

        def work(txn: lmdb.Transaction) -> DirListing:
            keys: list[str] = []
            prefixes: list[str] = []
            cursor = txn.cursor()
            more = cursor.set_range(start)
            while more:
                key = bytes(cursor.key())
                if not key.startswith(start):
                    break
                cut = key.find(b"/", after)
                if cut < 0:
                    keys.append(key.decode())
                    more = cursor.next()
                else:
                    prefixes.append(key[: cut + 1].decode())
                    more = cursor.set_range(key[:cut] + b"0")
            return DirListing(keys=tuple(keys), prefixes=tuple(prefixes))

        return self._read("listing a directory", work, DirListing())

    @override
    def _is_empty(self, prefix: str) -> bool:
        """Whether no key lies under ``prefix``: one cursor seek, one key read at most."""
        start = prefix.encode()

        def work(txn: lmdb.Transaction) -> bool:
            cursor = txn.cursor()
            return not (cursor.set_range(start) and bytes(cursor.key()).startswith(start))

        return self._read("checking for keys", work, True)

    # -- writes -----------------------------------------------------------------------

    @override
    def _set(self, key: str, value: bytes) -> None:
        raw = _key(key)
        self._write("writing", lambda txn: txn.put(raw, value))

    def set_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        """Store every ``(key, value)`` in one transaction: all of them, or none.

        Raises:
            ReadOnlyError: the store is read-only.
            InvalidKeyError: a key is invalid (nothing is written).
        """
        batch = [(_key(validate_key(key)), value_bytes(value)) for key, value in items]
        self._check_writable()
        if batch:
            self._write("writing a batch",
                               lambda txn: [txn.put(raw, value) for raw, value in batch])

    @override
    def _set_if_absent(self, key: str, value: bytes) -> bool:
        raw = _key(key)
        return self._write("writing if absent",
                                  lambda txn: bool(txn.put(raw, value, overwrite=False)))

    @override
    def _erase(self, key: str) -> None:
        raw = _key(key)
        self._write("erasing", lambda txn: txn.delete(raw))

    @override
    def _erase_many(self, keys: Sequence[str]) -> None:
        raws = [_key(key) for key in keys]
        self._write("erasing a batch", lambda txn: [txn.delete(raw) for raw in raws])

    @override
    def _erase_prefix(self, prefix: str) -> None:
        start = prefix.encode()

        def work(txn: lmdb.Transaction) -> None:
            # Keys only: a write transaction copies every value it reads (no views).
            cursor = txn.cursor()
            doomed: list[bytes] = []
            if cursor.set_range(start):
                for key in cursor.iternext(values=False):
                    raw = bytes(key)
                    if not raw.startswith(start):
                        break
                    doomed.append(raw)
            for raw in doomed:
                txn.delete(raw)

        self._write("erasing a prefix", work)

    @override
    def _with_read_only(self, read_only: bool) -> LMDBStorage:
        return LMDBStorage(self.path, map_size=self.map_size, read_only=read_only,
                           durable=self.durable, lock=self.lock)

    def sync(self) -> None:
        """Flush every committed write to disk (``fsync``)."""
        self._with_handle(lambda handle: handle.sync(), lambda: None)

    @override
    def close(self) -> None:
        """Release this store's claim on the environment (it closes with the last one).

        The store stays usable: its next call opens the environment again.
        """
        with self._reopening:
            self._closed = True
            if self._handle is not None:
                self._handle.close()


def _under(txn: lmdb.Transaction, start: bytes,
           handle: EnvironmentHandle) -> list[tuple[bytes, int]]:
    """Every key starting with ``start``, with the length of its value (read with ``buffers``)."""
    cursor = txn.cursor()
    found: list[tuple[bytes, int]] = []
    if not cursor.set_range(start):
        return found
    value = handle.value
    for raw in cursor.iternext(values=False):
        key = bytes(raw)
        if not key.startswith(start):
            break
        found.append((key, len(value(cursor))))
    return found


class LMDBStore(ZarrStore):
    """A Zarr store in one LMDB environment; pass it as ``store=`` anywhere zarr takes one.

    Args:
        path: the environment's directory (created when missing, unless read-only).
        map_size: the initial memory map in bytes; it grows by itself when full.
        read_only: refuse every write with ``ReadOnlyError`` (``readonly`` is
            accepted too, as zarr v2's ``LMDBStore`` spelled it).
        durable: fsync every write transaction (survives power loss).
        lock: use LMDB's lock file (``False``: one process only, or read-only media).

    Use it as a context manager, or call ``close()``; a dropped store releases
    its environment when garbage collected.
    """

    storage: LMDBStorage

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size: int = INITIAL_MAP_SIZE,
        read_only: bool = False,
        readonly: bool = False,
        durable: bool = False,
        lock: bool = True,
    ) -> None:
        super().__init__(LMDBStorage(path, map_size=map_size, read_only=read_only or readonly,
                                     durable=durable, lock=lock))

    @property
    def path(self) -> str:
        """The environment's directory (a symlinked ``data.mdb``'s target's: ``LMDBStorage``)."""
        return self.storage.path

    def sync(self) -> None:
        """Flush every committed write to disk."""
        self.storage.sync()

    async def _set_many(self, values: Iterable[Any]) -> None:
        # zarr hands a batch (e.g. a group's and its arrays' metadata): one transaction.
        self._writable()
        items = [(key, value.to_bytes()) for key, value in values]
        await self._call("set_many", items)

"""Shared LMDB environments: one per directory per process, grown on demand, safe across fork.

LMDB has rules that every user of it in one process must follow together, so
they live here once, for ``zarrstore.lmdb.LMDBStore`` and versionstore's
``LMDBBackend`` alike:

* **One environment per file per process.** LMDB's locks are POSIX ``fcntl``
  locks, which belong to the (process, file) pair: a second open of the same
  files in one process shares the first one's locks and closing it drops them.
  Handles on one directory therefore share a process-wide registry entry,
  counted; the environment closes when the last handle is closed *or garbage
  collected* (``weakref.finalize``), so dropping a store without ``close()``
  releases its address space too. Closing never waits: if another thread is
  inside a transaction then, the environment stays open (and registered)
  until that transaction ends.
* **A map that grows.** LMDB maps the data file into memory at a fixed size.
  We start small (``INITIAL_MAP_SIZE``, or the file's size) and, when a write
  transaction fails with ``MDB_MAP_FULL``, grow the map (``mdb_env_set_mapsize``)
  and replay the transaction. Growing is only legal while no transaction of
  this process is open on the environment, so every transaction holds a shared
  gate and growth takes it exclusively. When *another* process grew the file
  beyond our map, LMDB answers ``MDB_MAP_RESIZED``; we adopt its size
  (``set_mapsize(0)``) and retry. The only limit is the disk (and the address
  space, which a failed growth reports instead of crashing).
* **Fork.** An environment must not be used, nor closed, in a child created
  by ``fork``. Before a fork (``os.register_at_fork``) every environment of
  this process is closed, once no transaction is open; parent and child then
  reopen lazily on next use, so inherited stores, sessions and repositories
  keep working in both.
* **Truncation.** A data file shorter than the pages its meta page claims
  would kill the process with ``SIGBUS`` on first touch; it is refused at open
  with ``CorruptStorageError`` (LMDB reads its meta pages with ``pread``, and we
  compare ``(last_pgno + 1) * page_size`` with the file's size before any page
  is mapped in).
* **Damaged pages never crash the process.** LMDB trusts what a page says:
  a garbled page's node offsets (16 bits) reach up to 128 KiB past the page,
  and a garbled size makes a value in overflow pages run up to 4 GiB past its
  first one (py-lmdb touches every page of a value before returning it, even
  as a view). Within the file that reads garbage, which LMDB's checks or the
  reader's report; past its end, in the map, it raises ``SIGBUS``. So a
  writable file is kept ``_SLACK`` bytes of zeros longer than its last page
  (padded at open by ``fallocate``, which never shortens a file another
  process is growing, and under LMDB's writer lock after a write that grew it),
  which no node offset crosses; and a read takes each value through
  ``EnvironmentHandle.get`` / ``value``, which read the value's node first
  and refuse one running past the end of the file with
  ``CorruptStorageError`` (LMDB itself refuses a value too large for its leaf
  page). Read-only media cannot be padded: there a garbled page among the
  last 32 can still crash the process.
* **Opening never waits for a writer.** LMDB's readers never wait for its
  writer lock, but py-lmdb opens the named databases of a writable
  environment in a write transaction, which does — for as long as the
  process holding the lock is stopped (Ctrl-Z, a debugger) — with the GIL
  held. An environment that already holds its databases is therefore opened
  ``readonly`` first (``_Shared.reading``; its databases open in a read
  transaction) and reopened writable, with the gate held exclusively, by the
  first write through it (and again after a fork or a failed remap reopened
  it to read); one that lacks a database, or an identity key it should be
  given, is opened writable at once. A writable open waits for the lock in a
  write transaction begun here, with the GIL released: the process's other
  threads run on, its other transactions wait.
* **Read-only filesystems.** When the directory cannot be written (``EROFS``,
  ``EACCES``), the environment is opened ``readonly``; if even the lock file
  cannot be opened it is opened without locking (``lock=False``), which is
  safe only while no other process writes the files (true on a read-only
  mount). Writes then raise ``ReadOnlyError``. An environment opened without
  its lock file on purpose (``lock=False``: one process) has neither LMDB's
  writer lock nor its reader table, so each write holds the gate
  exclusively: no other transaction of the process runs beside it.
* **Readahead by kind of read.** A page fault reads the device's readahead
  window around it, good for large values and wasteful for small scattered
  ones; a read may ask for either (``read(..., readahead=...)``), and the
  map's advice is switched only when the kind changes
  (``zarrstore.lmdb_readahead``). The switch is found again whenever the
  map is made anew (open, growth, adopting another process's size, fork).
  An environment of mostly small reads (``small_reads``: versionstore's) is
  opened with ``MDB_NORDAHEAD``, so its map starts with readahead off and
  only a read of large values changes the advice.
* **A full disk** (LMDB reports a short write as ``EIO``) raises
  ``StorageFullError`` saying so.
* **One lock file per data file.** A ``data.mdb`` reached from two
  directories (a symlink, a hard link) would be coordinated through two lock
  files, which LMDB never notices: two writers at once, pages reused under
  readers. A symlinked ``data.mdb`` opens its target's directory (the
  registry is keyed by that directory, so handles through either path share
  one environment); hard links, symlinked lock files, dangling links,
  files that are not regular files, and a process still using the lock
  file beside the link (an older release, another LMDB program) are refused
  with ``StorageIOError`` (``zarrstore.lmdb_files``).
* **The same environment, or none.** A handle reopens its environment by
  path: after ``fork``, after a failed growth, and in another process that
  unpickled a store. Each environment has an ``EnvironmentIdentity`` — its
  directory's ``st_dev``/``st_ino`` and a token of its contents (a random id
  kept in the main database under the handle's ``identity_key``, written at
  the first writable open; without a key, the data file's own identity) —
  taken at the first open and compared at every reopen, and a handle given
  ``expect_identity`` compares it at once: a directory removed and made
  again, or another environment moved into its place, raises
  ``StorageReplacedError`` instead of being written into.
* **``lock.mdb`` deleted or replaced** while the environment is open destroys
  LMDB's coordination with other processes; a later open in this process
  notices the changed lock file and refuses with ``StorageIOError``.

This module knows nothing of zarr or versionstore; it is the only place in
zarrstore, besides ``zarrstore.lmdb``, that imports ``lmdb``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, TypeVar

import lmdb

from zarrstore import lmdb_files, lmdb_readahead
from zarrstore.errors import (
    ClosedStorageError,
    CorruptStorageError,
    ForeignEnvironmentError,
    ReadOnlyError,
    StorageFullError,
    StorageIOError,
    StorageReplacedError,
)

__all__ = [
    "INITIAL_MAP_SIZE",
    "EnvironmentHandle",
    "EnvironmentIdentity",
    "holds_environment",
    "translate",
    "translated",
]

#: The map a new environment starts with, in bytes; it doubles whenever it fills.
INITIAL_MAP_SIZE = 64 << 20
_ALIGN = 1 << 20  # map sizes are whole MiB (a multiple of every page size)
#: Below this many free bytes on the filesystem, an I/O error in a write means "disk full".
_LOW_SPACE = 64 << 20
_MAX_READERS = 1024
#: Bound on replays of one transaction after growing or adopting the map (each at
#: least doubles it, so 64 replays exceed any address space).
_RETRIES = 64
#: Bytes of zeros kept past the last page of a writable data file: more than the
#: 2 x 64 KiB (a node's 16-bit offset, then its 16-bit key size) plus a short value
#: by which a garbled page can point past itself.
_SLACK = 256 << 10
#: An LMDB node (``mdb.c``) starts with an 8-byte header: the value's size (32 bits,
#: in two 16-bit halves), flags (16 bits) and the key's size (16 bits), read here as
#: one native word; a value in overflow pages (flag ``_BIGDATA``) then holds their
#: first page's number after the key. Pages start with a 16-byte header.
_word_at = ctypes.c_uint64.from_address
#: Where a ``memoryview`` object holds its data's address (``None``: unknown, or not a
#: little-endian 64-bit host, where the words read otherwise): then values go unchecked.
_VIEW_OFFSET = (lmdb_readahead.view_address_offset()
                if sys.byteorder == "little" and ctypes.sizeof(ctypes.c_void_p) == 8 else None)
_BIGDATA = 0x01
_PAGE_HEADER = 16

T = TypeVar("T")


class EnvironmentIdentity(NamedTuple):
    """Which environment a handle opened: the same only while the directory holds it.

    ``device`` and ``inode`` are the directory's; ``token`` names the
    contents: the random id kept under the handle's ``identity_key`` (``None``
    in an environment opened read-only before it had one), or, without a key,
    ``b"file:<st_dev>:<st_ino>"`` of the data file. Small and picklable: a
    pickled store carries it, and the copy refuses another environment.

    Only the random id tells a directory removed and made again at once from
    the original: file systems such as ext4 give the new directory and data
    file the inode numbers just freed. Without a key (``LMDBStore``, whose
    main database holds the user's keys) such a remake can go unnoticed;
    another environment moved into the place is always noticed.
    """

    device: int
    inode: int
    token: bytes | None


#: Bytes of the random id an environment keeps under its ``identity_key``.
_IDENTITY_BYTES = 16


def _learned(known: EnvironmentIdentity, found: EnvironmentIdentity) -> bool:
    """Whether ``found`` is ``known`` with the id it lacked: the same directory, id given since.

    An environment of an older release has no id until its first writable
    open (in any process) gives it one; a handle or copy that opened it
    before then, read-only, still opened this repository.
    """
    return known.token is None and known[:2] == found[:2]


def holds_environment(path: str | os.PathLike[str]) -> bool:
    """Whether the directory ``path`` already holds an LMDB environment (creates nothing).

    A ``data.mdb`` that is a dangling symlink, or not a file, counts: opening
    it then says what is wrong with it (``zarrstore.lmdb_files``), where
    reading it as empty would hide it.
    """
    return os.path.lexists(os.path.join(path, lmdb_files.DATA))


def _libc_fallocate() -> Callable[[int, int, int, int], int] | None:
    """The C library's ``fallocate`` (Linux), which never emulates; ``None`` where there is none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.fallocate64
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    function.restype = ctypes.c_int
    return function


_fallocate = _libc_fallocate()


def _extend_without_lock(path: str, start: int, length: int) -> bool:
    """Make the file at ``path`` at least ``start + length`` bytes long, never shorter.

    Linux's ``fallocate`` (mode 0) allocates the range and grows the file's
    size to its end if that is larger, in one step, so a writer of another
    process extending the file at the same moment keeps every page it wrote
    — which ``truncate`` (a size set from a size read a moment before) cannot
    promise without LMDB's writer lock. Nothing written is touched. Where
    the filesystem has no ``fallocate`` (glibc's ``posix_fallocate`` would then
    write zeros over blocks a writer may be filling), nothing is done and the
    answer is ``False``.
    """
    if _fallocate is None:
        return False
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return _fallocate(fd, 0, start, length) == 0
    finally:
        os.close(fd)


def _round_up(n: int) -> int:
    return max(_ALIGN, (n + _ALIGN - 1) // _ALIGN * _ALIGN)


# -- errors ------------------------------------------------------------------------------


class _MissingDatabase(Exception):
    """An environment opened to read lacks a named database: open it writable instead."""


class _OpenedToRead(Exception):
    """A write found the environment opened to read (``_Shared.reading``): reopen, retry."""


def _free_bytes(path: str) -> int | None:
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def _read_only_filesystem(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


@contextmanager
def translated(action: str, path: str) -> Iterator[None]:
    """Turn ``lmdb`` errors raised while ``action`` into zarrstore errors (see ``translate``)."""
    try:
        yield
    except lmdb.Error as exc:
        raise translate(exc, action, path) from exc


def translate(exc: lmdb.Error, action: str, path: str) -> Exception:
    """The zarrstore error for an ``lmdb`` error raised while ``action`` at ``path``.

    A write that fails with ``ENOSPC`` — or with an I/O error while the
    filesystem has (almost) no free space left — is reported as
    ``StorageFullError``: LMDB turns a short write into ``EIO``, which alone
    would not say the disk is full.
    """
    if isinstance(exc, lmdb.ReadonlyError):
        return ReadOnlyError(f"the LMDB environment at {path!r} is read-only")
    if isinstance(exc, lmdb.MapFullError):  # only when growing the map was impossible
        return StorageFullError(f"LMDB map is full while {action} at {path!r}: {exc}")
    if isinstance(exc, lmdb.CorruptedError | lmdb.PageNotFoundError | lmdb.InvalidError
                  | lmdb.BadTxnError | lmdb.CursorFullError):
        # BAD_TXN: a transaction LMDB gave up on after finding a damaged page in it;
        # CURSOR_FULL: a tree deeper than LMDB allows, which only garbled pages make.
        data = os.path.join(path, lmdb_files.DATA)
        return CorruptStorageError(
            f"{data} is damaged (truncated or altered) while {action}: {exc}; "
            "restore it from a copy")
    message = str(exc)
    free = _free_bytes(path)
    if "No space" in message or "Disk quota" in message or (
        "Input/output" in message and free is not None and free < _LOW_SPACE
    ):
        return StorageFullError(
            f"the disk holding {path!r} is full ({free} bytes free) while {action}: "
            f"free some space and retry (LMDB said: {message})"
        )
    if "Read-only file system" in message:
        return ReadOnlyError(f"{path!r} is on a read-only filesystem")
    return StorageIOError(f"LMDB failed while {action} at {path!r}: {message}")


# -- the gate: transactions share it; growth and fork take it alone -------------------------


class _Gate:
    """A reader-writer lock over every transaction of this process.

    Transactions hold it shared (re-entrantly per thread); growing a map and
    closing environments before a fork hold it exclusively. A waiting
    exclusive holder stops new shared holders, so growth cannot starve.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._active = 0
        self._exclusive = False
        self._local = threading.local()

    def depth(self) -> int:
        depth: int = getattr(self._local, "depth", 0)
        return depth

    def enter(self) -> None:
        """Hold the gate shared (re-entrant in one thread)."""
        local = self._local
        depth = getattr(local, "depth", 0)
        if depth == 0:
            cond = self._cond
            cond.acquire()
            try:
                while self._exclusive:
                    cond.wait()
                self._active += 1
            finally:
                cond.release()
        local.depth = depth + 1

    def leave(self) -> None:
        """Release one shared hold."""
        local = self._local
        depth = local.depth - 1
        local.depth = depth
        if depth == 0:
            cond = self._cond
            cond.acquire()
            try:
                self._active -= 1
                # Only an exclusive holder waits for the count to drop (it sets
                # ``_exclusive`` before waiting, under this lock).
                if self._active == 0 and self._exclusive:
                    cond.notify_all()
            finally:
                cond.release()

    @contextmanager
    def shared(self) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave()

    def acquire_exclusive(self) -> None:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True
            while self._active:
                self._cond.wait()

    def release_exclusive(self) -> None:
        with self._cond:
            self._exclusive = False
            self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        self.acquire_exclusive()
        try:
            yield
        finally:
            self.release_exclusive()


_gate = _Gate()
_registry_lock = threading.Lock()
#: Handles finalised by the garbage collector, which may run while this thread already
#: holds the registry lock: their release waits here for the lock's next holder.
_pending_releases: list[_Shared] = []


@contextmanager
def _registry_held() -> Iterator[None]:
    with _registry_lock:
        try:
            yield
        finally:
            _drain_releases()
    if _pending_releases and _registry_lock.acquire(blocking=False):
        try:
            _drain_releases()
        finally:
            _registry_lock.release()


def _drain_releases() -> None:
    while _pending_releases:
        shared = _pending_releases.pop()
        shared.users -= 1
        if shared.users <= 0:
            shared.close_if_unused()


# -- one environment, shared by every handle on its directory -------------------------------


def _lock_identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(os.path.join(path, "lock.mdb"))
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


class _Shared:
    """The registry entry of one directory: its environment, databases and users."""

    def __init__(self, path: str, names: tuple[bytes, ...], map_size: int, lock: bool,
                 small_reads: bool = False, ordered_writes: bool = False,
                 identity_key: bytes | None = None, writes_at_open: bool = True) -> None:
        self.path = path
        self.identity_key = identity_key
        #: Whether the first open may write: give the id, create the named databases, pad
        #: the file with its slack. Not for a first handle asked to be read-only (a probe
        #: such as ``Repository.exists``, or a read-only repository): it writes nothing.
        self.writes_at_open = writes_at_open
        #: Taken at the first open; every reopen must find it again (``check_identity``).
        self.identity: EnvironmentIdentity | None = None
        self.small_reads = small_reads
        self.ordered_writes = ordered_writes
        supported = lmdb_readahead.supported()
        # Readahead starts off only where the switch can turn it on for large reads.
        self.readahead_first = not (small_reads and supported)
        self.readahead = (lmdb_readahead.ReadaheadSwitch(os.path.join(path, "data.mdb"),
                                                         self.map_address,
                                                         starts_off=not self.readahead_first)
                          if supported else None)
        self.names = names
        self.initial_map_size = map_size
        self.lock = lock
        self.users = 0
        self.env: lmdb.Environment | None = None
        self.databases: tuple[lmdb._Database, ...] = ()
        self.read_only = False  # forced by the filesystem, not chosen by a handle
        #: Opened with LMDB's MDB_RDONLY although it may be written (``open``): until the
        #: first write reopens it (``writable``), nothing here waits for LMDB's writer lock.
        self.reading = False
        self.locked = lock
        self.lock_identity: tuple[int, int] | None = None
        #: A descriptor of the data file the map was opened on (``unlinked``).
        self.data_fd: int | None = None
        self.pid = os.getpid()
        self.inherited = False  # open in a parent that forked inside a transaction
        # Transactions open on the environment, in every thread of this process (under
        # ``busy``), and whether its last handle was released while some were open.
        self.busy = threading.Lock()
        self.active = 0
        self.closing = False
        # The file's size as last seen, as far as the map shows it (``check_overflow``),
        # and whether it has ``_SLACK`` past its last page (``measure``).
        self.data_path = os.path.join(path, lmdb_files.DATA)
        self.page_size = 4096
        self.padded = False
        self.known_size = 0
        # Values up to this size need no look at their pages: in a padded file, a value
        # starting on a page LMDB checked ends inside the slack (-1: check every one).
        self.unchecked = -1

    # Called with _registry_lock held (or the gate held exclusively).
    def open(self, create: bool, *, reading: bool = True) -> None:
        """Open the environment; first to read only, where it exists with all its databases.

        py-lmdb opens a named database of a writable environment in a write
        transaction, which waits for LMDB's writer lock — held by any process
        writing, and for as long as that process is stopped (Ctrl-Z, a
        debugger) — with the GIL held. Opened with ``MDB_RDONLY``, it opens
        them in a read transaction, and readers never wait for the writer
        (LMDB's documentation): so an environment that holds everything is
        opened that way (``reading``), and a write through it reopens it
        writable first (``writable``) — also after a fork or a failed remap
        reopened it to read again.
        """
        if reading and holds_environment(self.path):
            try:
                self._open(create, reading=True)
                return
            except (_MissingDatabase, lmdb.Error):
                pass  # a database to make, or a file to set up: the writable open does it
        self._open(create, reading=False)

    def writable(self) -> None:
        """Reopen an environment opened to read, writable (gate held exclusively).

        Waits for LMDB's writer lock (opening the databases), as any write does,
        with the GIL released; this process's other transactions wait meanwhile.
        """
        with _registry_held():
            if self.reading:
                self.close()
                self.open(create=False, reading=False)

    def _open(self, create: bool, *, reading: bool) -> None:
        if self.inherited:
            raise StorageIOError(
                f"the LMDB environment at {self.path!r} was inherited through fork() while the "
                "forking thread had a transaction open; it cannot be used in this process"
            )
        if create and not os.path.isdir(self.path):
            try:
                os.makedirs(self.path, exist_ok=True)
            except OSError as exc:
                if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                    raise ReadOnlyError(f"cannot create {self.path!r}: {exc.strerror}") from exc
                raise StorageIOError(f"cannot create {self.path!r}: {exc.strerror}") from exc
        data = os.path.join(self.path, lmdb_files.DATA)
        env = self._open_checked(data, create, reading)
        try:
            self._check_length(env, data)
            self.page_size = int(env.stat()["psize"])
            # Only a first open may give an older environment its id: a reopen, or a
            # copy's open, compares what is there and writes nothing into another one.
            # The databases come first: another program's environment is refused
            # (``ForeignEnvironmentError``) before anything is written into it.
            self.databases, token = self._open_databases_adopting(
                env, give_id=self.writes_at_open and self.identity is None)
            if not self.read_only and self.writes_at_open:
                self.pad_without_lock(env)
            identity = self._identity(token)
            if self.identity is None or _learned(self.identity, identity):
                self.identity = identity
            elif identity != self.identity:
                raise StorageReplacedError(self.path, self.identity, identity)
            env.reader_check()  # clear reader slots left by processes killed mid-read
        except BaseException:
            env.close()
            raise
        self.env = env
        self.pid = os.getpid()
        self.lock_identity = _lock_identity(self.path)
        self._hold_data_file(data)
        self.remapped()
        self.measure(env)

    def _open_checked(self, data: str, create: bool, reading: bool) -> lmdb.Environment:
        """``_open_env`` between two looks at the files (``zarrstore.lmdb_files``).

        The look after the open, at the files LMDB has open, also refuses a
        link made just before it. A data file replaced in between (another
        process's compaction renames a new one in, and LMDB's open waits for
        it to finish) is opened again, with its own size.
        """
        for _ in range(_RETRIES):
            files = lmdb_files.check_files(self.path, locked=self.lock)
            size = os.path.getsize(data) if files.data is not None else 0
            # Room for the slack the file is padded with (``keep_slack``).
            env = self._open_env(max(self.initial_map_size, _round_up(size + 2 * _SLACK)),
                                 create, reading)
            try:
                opened = lmdb_files.check_files(self.path, locked=self.lock)
            except BaseException:
                env.close()
                raise
            if files.data is None or opened.data == files.data:
                return env
            env.close()
        raise StorageIOError(f"{data} kept being replaced while being opened")

    def _open_env(self, map_size: int, create: bool, reading: bool) -> lmdb.Environment:
        options: dict[str, Any] = {
            "map_size": map_size, "max_dbs": max(len(self.names), 1) + 2,
            "max_readers": _MAX_READERS, "sync": self.ordered_writes, "metasync": False,
            "readahead": self.readahead_first, "max_spare_txns": 0,
        }
        attempts: list[dict[str, bool]] = [{"readonly": False, "lock": self.lock}]
        if not os.access(self.path, os.W_OK) or _read_only_filesystem(self.path):
            attempts = []
        elif reading:  # writable, opened to read first (``open``); if that fails, writable
            attempts = [{"readonly": True, "lock": self.lock, "reading": True}]
        if not reading or not attempts:
            attempts += [{"readonly": True, "lock": self.lock},
                         {"readonly": True, "lock": False}]
        failure: lmdb.Error | None = None
        for attempt in attempts:
            if attempt["readonly"] and not holds_environment(self.path):
                break  # nothing to read, and a read-only open cannot create one
            chosen = attempt.pop("reading", False)
            try:
                env = lmdb.open(self.path, create=create, **options, **attempt)
            except lmdb.Error as exc:
                failure = failure or exc
                message = str(exc)
                if not ("Read-only file system" in message or "Permission denied" in message
                        or "ermission" in message):
                    raise
                continue
            self.read_only = attempt["readonly"] and not chosen
            self.reading = chosen
            self.locked = attempt["lock"]
            return env
        if failure is not None:
            raise failure
        raise StorageIOError(f"no LMDB environment at {self.path!r}")

    def _check_length(self, env: lmdb.Environment, data: str) -> None:
        # LMDB read both meta pages with pread; nothing past them is mapped in yet.
        # A page past the end of the file raises SIGBUS on first access, instead of
        # an error. A healthy file may legitimately end before the newest meta's
        # last_pgno: LMDB never writes the pages a transaction allocated and freed
        # again ("loose" pages, kept on the free list). So a short file is padded
        # with zeros up to last_pgno: free pages stay free, and in a truly truncated
        # file the lost pages read as zeros, which LMDB reports as corruption
        # (CorruptStorageError) — never a crash. Where the file cannot be written
        # (read-only), a short file is refused.
        info, page = env.info(), env.stat()["psize"]
        needed = (info["last_pgno"] + 1) * page
        have = os.path.getsize(data)
        if have >= needed:
            return
        if not self.read_only:
            try:
                os.truncate(data, needed)
                return
            except OSError:
                pass
        raise CorruptStorageError(
            f"{data} is truncated: {have} bytes, but its meta page says pages up to "
            f"{info['last_pgno']} ({needed} bytes) hold data; restore it from a copy"
        )

    def _open_databases_adopting(self, env: lmdb.Environment, *, give_id: bool
                                 ) -> tuple[tuple[lmdb._Database, ...], bytes | None]:
        """``_open_databases`` and ``_identity_token``, taking the map size another process grew.

        The map is sized from the file as it was a moment ago; another process
        may have committed past that since, and then LMDB refuses every
        transaction (``MDB_MAP_RESIZED``) until the new size is adopted (LMDB's
        documentation of ``mdb_env_set_mapsize``: a size of zero adopts it).
        """
        for _ in range(_RETRIES):
            try:
                return self._open_databases(env), self._identity_token(env, give_id)
            except lmdb.MapResizedError:
                env.set_mapsize(0)
        raise StorageIOError(f"the LMDB map at {self.path!r} kept changing size while opening")

    def _identity_token(self, env: lmdb.Environment, give_id: bool) -> bytes | None:
        """The random id under ``identity_key``, written now if missing, ``give_id`` and writable.

        Without a key, the data file's identity. Two processes giving an older
        environment its id at once agree: the write transaction looks again.
        """
        key = self.identity_key
        if key is None:
            stat = os.stat(self.data_path)
            return f"file:{stat.st_dev}:{stat.st_ino}".encode()
        with env.begin() as txn:
            token = txn.get(key)
        if token is None and give_id and self.reading:
            raise _MissingDatabase(key)  # an older environment: the writable open gives it
        if token is None and give_id and not self.read_only:
            with env.begin(write=True) as txn:
                token = txn.get(key)
                if token is None:
                    token = os.urandom(_IDENTITY_BYTES)
                    txn.put(key, token)
        return None if token is None else bytes(token)

    def _identity(self, token: bytes | None) -> EnvironmentIdentity:
        stat = os.stat(self.path)
        return EnvironmentIdentity(stat.st_dev, stat.st_ino, token)

    def holds(self, expected: EnvironmentIdentity) -> bool:
        """Whether this open environment is the one a copy ``expected`` (registry lock held).

        A token of ``None`` on either side is one not known yet (an environment
        of an older release, opened read-only before any writable open gave it
        its id): the directory decides, and an id given since is learned.
        """
        if self.identity == expected:
            return True
        if self.identity is None or self.identity[:2] != expected[:2]:
            return False
        if expected.token is None:
            return True
        if self.identity.token is None and self.identity_key is not None:
            try:
                if self.env is None or self.pid != os.getpid():
                    self.env = None
                    self.open(create=False)  # learns the id (``_learned``)
                elif token := self._identity_token(self.env, give_id=False):
                    self.identity = self.identity._replace(token=token)
            except lmdb.Error:
                return False
        return self.identity == expected

    def _open_databases(self, env: lmdb.Environment) -> tuple[lmdb._Database, ...]:
        if not self.names:
            return ()
        if self.read_only or self.reading:
            # py-lmdb opens them in a read transaction of its own: nothing waits.
            return tuple(self._open_database(env, name, None) for name in self.names)
        # py-lmdb would open each in a write transaction of its own, waiting for LMDB's
        # writer lock with the GIL held (every thread of the process stopped). Begun
        # here, the wait releases the GIL, and one transaction opens them all (its
        # commit keeps the handles). This runs under the registry lock, never inside
        # another transaction.
        txn = env.begin(write=True)
        try:
            found = tuple(self._open_database(env, name, txn) for name in self.names)
        except BaseException:
            txn.abort()
            raise
        txn.commit()
        return found

    def _open_database(self, env: lmdb.Environment, name: bytes,
                       txn: lmdb.Transaction | None) -> lmdb._Database:
        """Open database ``name`` (in ``txn``, a write transaction, if given), made if missing."""
        try:
            return env.open_db(name, txn=txn, create=False)
        except lmdb.NotFoundError:
            if self.reading:
                raise _MissingDatabase(name) from None
            if self.read_only or not self.writes_at_open or txn is None:
                raise StorageIOError(
                    f"{self.path!r} lacks the database {name!r}, and is read-only (or "
                    "opened only to read): it is not created"
                ) from None
            self._refuse_foreign(txn)
            return env.open_db(name, txn=txn)

    def _refuse_foreign(self, txn: lmdb.Transaction) -> None:
        """Refuse to add named databases to an environment holding other keys.

        Raises:
            ForeignEnvironmentError: its main database holds a key that is none
                of the handle's databases nor its identity key.
        """
        ours = {*self.names, self.identity_key}
        for key in txn.cursor().iternext(values=False):
            if bytes(key) not in ours:
                raise ForeignEnvironmentError(self.path, bytes(key))

    def remapped(self) -> None:
        """The map was made anew (with its first advice): the switch finds it again.

        The file's place in the map is measured again on the next check. Called
        while no read is running.
        """
        self.padded, self.unchecked = False, -1
        if self.readahead is not None:
            self.readahead.forget()

    def measure(self, env: lmdb.Environment) -> None:
        """Find where the file lies in the map, and whether it has its slack."""
        info = env.info()
        size = os.path.getsize(self.data_path)
        self.known_size = min(size, int(info["map_size"]))
        self.padded = (info["last_pgno"] + 1) * self.page_size + _SLACK <= self.known_size
        self.unchecked = _SLACK - _PAGE_HEADER if self.padded else -1

    def keep_slack(self, env: lmdb.Environment) -> bool:
        """After a write grew the file: pad it with zeros to twice ``_SLACK`` past its last page.

        Twice, so that the next writes need not pad again (at open,
        ``pad_without_lock`` adds the slack alone, so that a compacted file
        stays smaller than before). The file is extended under LMDB's writer
        lock (an empty write transaction), so no writer of any process extends
        it meanwhile (a shorter size set then would cut its pages off). Does
        nothing where the file cannot be written (read-only media). Returns
        whether the map is now too small for the file.
        """
        last = (env.info()["last_pgno"] + 1) * self.page_size
        if last + _SLACK <= self.known_size:
            return False
        try:
            if last + _SLACK > os.path.getsize(self.data_path):
                txn = env.begin(write=True)
                try:
                    last = (env.info()["last_pgno"] + 1) * self.page_size
                    if last + _SLACK > os.path.getsize(self.data_path):
                        os.truncate(self.data_path, last + 2 * _SLACK)
                finally:
                    txn.abort()
        except (OSError, lmdb.Error):
            pass  # unpadded: reads check every value
        self.measure(env)
        return not self.padded and os.path.getsize(self.data_path) >= last + _SLACK

    def pad_without_lock(self, env: lmdb.Environment) -> None:
        """``keep_slack`` at open, without LMDB's writer lock (``_extend_without_lock``).

        The writer lock is held by any process writing, for as long as it is
        stopped (Ctrl-Z, a debugger), and an open must not wait for it. Where
        the file cannot be extended so, it stays unpadded: its values are read
        checked, and the next write that finds it short pads it.
        """
        last = (env.info()["last_pgno"] + 1) * self.page_size
        if last + _SLACK > os.path.getsize(self.data_path):
            _extend_without_lock(self.data_path, last, _SLACK)

    def check_overflow(self, offset: int) -> None:
        """Refuse a large value running past the end of the file (a damaged page).

        ``offset`` is where in the file the value would end.

        Raises:
            CorruptStorageError: naming the file, where the value ends and the file's size.
        """
        if offset <= self.known_size:
            return
        env = self.env
        if env is not None:
            self.measure(env)  # the file may have grown (another process wrote)
            if offset <= self.known_size:
                return
        raise CorruptStorageError(
            f"{self.data_path} is damaged: a page says a value ends at byte {offset}, past "
            f"the end of the file ({self.known_size} bytes); restore it from a copy")

    def map_address(self) -> int | None:
        """An address inside the memory map (``None`` if unknown), for the readahead switch.

        A value viewed in place (``buffers=True``) lies in the map: the main
        database's first entry (a named database's record, or a value).
        """
        env = self.env
        if env is None or self.pid != os.getpid():
            return None
        with env.begin(buffers=True) as txn:
            cursor = txn.cursor()
            if not cursor.first():
                return None
            return lmdb_readahead.buffer_address(cursor.value())

    def _hold_data_file(self, data: str) -> None:
        """Keep a descriptor of the data file the map was opened on (``unlinked``)."""
        if self.data_fd is not None:  # a fork's reopen: the parent's descriptor, inherited
            os.close(self.data_fd)
            self.data_fd = None
        with contextlib.suppress(OSError):  # no check then, as before there was one
            self.data_fd = os.open(data, os.O_RDONLY | os.O_CLOEXEC)

    def unlinked(self) -> bool:
        """Whether the data file open here has been deleted (its directory removed or replaced).

        LMDB keeps writing into a deleted file without a word: a process still
        holding a repository whose directory another process removed (and
        perhaps made again) would commit into files no one can open any more.
        A write transaction checks this before it commits (``write``).
        """
        return self.data_fd is not None and os.fstat(self.data_fd).st_nlink == 0

    def close(self) -> None:
        env, self.env, self.databases = self.env, None, ()
        if self.data_fd is not None:
            os.close(self.data_fd)
            self.data_fd = None
        self.remapped()
        if env is not None and self.pid == os.getpid():
            env.close()

    def close_if_unused(self) -> None:
        """Close and unregister the environment, unless a handle or transaction still uses it.

        Called with ``_registry_lock`` held, when the last handle is released.
        While another thread has a transaction open, closing would wait for it
        (py-lmdb's ``Environment.close`` aborts the thread's transaction, which
        waits for that thread) with the registry lock held, so every open and
        close of any environment in the process would wait too; and the write
        in progress would be lost. The environment stays registered instead
        (a new handle on the directory takes it up again) and the last
        transaction to end closes it (``ended``).
        """
        with self.busy:
            if self.users > 0 or self.active > 0:
                self.closing = self.users <= 0
                return
            self.closing = False
        if _registry.get(self.path) is self:
            del _registry[self.path]
        self.close()

    def began(self) -> bool:
        """A transaction of this process opens on the environment; ``False``: it is closed.

        Refused once the last handle was released and no transaction held the
        environment (``close_if_unused`` closed it, or is about to): a handle
        closed by another thread while this one was starting a transaction
        through it would otherwise reopen the environment outside the
        registry, a second one on the directory that could never be opened again
        in this process.
        """
        with self.busy:
            if self.users <= 0 and self.active <= 0:
                return False
            self.active += 1
            return True

    def ended(self) -> None:
        """A transaction ended: the last one closes an environment no handle holds any more."""
        with self.busy:
            self.active -= 1
            last = self.active == 0 and self.closing
        if last:
            with _registry_held():
                self.close_if_unused()

    def current(self) -> lmdb.Environment:
        """The open environment, reopened first if a fork or a growth closed it."""
        env = self.env
        if env is not None and self.pid == os.getpid():
            return env
        with _registry_held():
            if self.env is None or self.pid != os.getpid():
                self.env = None
                self.open(create=False)
            assert self.env is not None
            return self.env

    def grow(self, seen: int) -> None:
        """Enlarge the map past ``seen`` bytes (gate held exclusively)."""
        env = self.current()
        current = env.info()["map_size"]
        if current > seen:
            return  # another thread grew it while we waited
        for target in (current * 2, current + current // 2, current + current // 4,
                       current + _ALIGN * 64):
            target = _round_up(target)
            if not _address_space_for(target):
                continue
            try:
                env.set_mapsize(target)
                self.remapped()
                self.measure(env)
                return
            except lmdb.Error:
                # A failed remap leaves the environment without a map: reopen it.
                with _registry_held():
                    self.close()
                    self.open(create=False)
                env = self.current()
        raise StorageFullError(
            f"the LMDB map at {self.path!r} ({current} bytes) cannot grow: the process is out "
            "of address space (see ulimit -v)"
        )

    def adopt_size(self) -> None:
        """Take the map size another process grew the file to (gate held exclusively)."""
        env = self.current()
        env.set_mapsize(0)
        self.remapped()
        self.measure(env)


def _address_space_for(size: int) -> bool:
    try:
        probe = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                          prot=mmap.PROT_READ)
    except OSError:
        return False
    probe.close()
    return True


_registry: dict[str, _Shared] = {}


def _refuse_a_second_lock_file(path: str | os.PathLike[str], directory: str) -> None:
    """Refuse to open ``directory`` while a process uses the lock file beside the link in ``path``.

    ``path``'s ``data.mdb`` links to ``directory``'s (``zarrstore.lmdb_files``);
    called with the registry lock held, never for a directory this process
    has open itself.

    Raises:
        StorageIOError: naming the process.
    """
    linked = os.path.realpath(path)
    if linked == directory or linked in _registry:
        return
    holder = lmdb_files.link_lock_holder(linked)
    if holder is not None:
        lock = os.path.join(linked, lmdb_files.LOCK)
        raise StorageIOError(
            f"process {holder} has {os.path.join(linked, lmdb_files.DATA)} open under {lock} "
            f"(an older release, or another LMDB program), while this process would use "
            f"{os.path.join(directory, lmdb_files.LOCK)} beside the file it links to: the two "
            "could write at once. Close it there, then open again")


def _release(shared: _Shared) -> None:
    _pending_releases.append(shared)
    if _registry_lock.acquire(blocking=False):
        try:
            _drain_releases()
        finally:
            _registry_lock.release()


# -- fork ------------------------------------------------------------------------------------

_forking_inside_transaction = False
#: This process's id, set again in a child after ``fork`` (``_after_fork_in_child``): a
#: comparison without a system call where one check per transaction (``current``) suffices.
_this_pid = os.getpid()


def _before_fork() -> None:
    global _forking_inside_transaction
    _forking_inside_transaction = _gate.depth() > 0
    if not _forking_inside_transaction:
        _gate.acquire_exclusive()
    _registry_lock.acquire()
    if not _forking_inside_transaction:
        for shared in _registry.values():
            shared.close()  # both sides reopen on next use


def _after_fork_in_parent() -> None:
    _drain_releases()
    _registry_lock.release()
    if not _forking_inside_transaction:
        _gate.release_exclusive()


def _after_fork_in_child() -> None:
    global _gate, _registry_lock, _this_pid
    _this_pid = os.getpid()
    _gate = _Gate()
    _registry_lock = threading.Lock()
    for shared in [*_registry.values(), *_pending_releases]:
        # Its lock may have been held by another thread; the parent's other threads'
        # transactions do not exist here.
        shared.busy, shared.active, shared.closing = threading.Lock(), 0, False
    _drain_releases()
    for path, shared in list(_registry.items()):
        if shared.users <= 0:  # released in the parent while a transaction was open
            del _registry[path]
            shared.env = None  # the parent's: never used, never closed here
            continue
        if shared.readahead is not None:  # its lock may have been held by another thread
            shared.readahead = lmdb_readahead.ReadaheadSwitch(
                shared.readahead.data_path, shared.map_address,
                starts_off=shared.readahead.starts_off)
        if shared.env is not None:
            shared.inherited = True  # the parent's handle: never used, never closed here
            shared.env = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)


# -- handles ---------------------------------------------------------------------------------


class EnvironmentHandle:
    """One user's claim on the shared environment at ``path``.

    Args:
        path: the environment's directory (created when ``create`` and writable);
            if its ``data.mdb`` is a symlink, the link target's directory is
            opened instead, and is ``self.path`` (``zarrstore.lmdb_files``).
        databases: names of the named databases to open (``()`` for the main one).
        read_only: refuse writes through this handle with ``ReadOnlyError``.
        durable: fsync after every write transaction of this handle.
        create: create the directory and environment when missing.
        map_size: the initial map size in bytes; it grows on demand.
        lock: use LMDB's lock file; ``False`` only when one process uses the files.
        small_reads: most reads are of small values at scattered places, so the
            map starts with readahead off (``MDB_NORDAHEAD``) and reads of large
            values ask for it (``read(..., readahead=True)``); a store of large
            values keeps LMDB's default. Decided by the first handle on the
            directory. Where the readahead switch is unsupported, readahead stays on.
        ordered_writes: every write transaction flushes its pages before LMDB
            writes the header page that points at them (``MDB_NOMETASYNC``: one
            ``fdatasync`` per transaction), so an operating-system crash or power
            loss can lose the last transactions but never leaves the file
            unreadable. Without it (``MDB_NOSYNC``) the kernel may write the
            header page back before those pages, and a machine that stops then
            leaves a file LMDB cannot open, everything flushed before included
            (``python -m benchmarks.writeback_order`` replays it). Decided by the
            first handle on the directory.
        identity_key: a key of the main database that keeps the environment's
            random id (``EnvironmentIdentity``), written at the first writable
            open; ``None`` where the main database holds the user's keys (the
            data file's identity stands in). Decided by the first handle.
        expect_identity: the identity a handle of the original had (a pickled
            store's): anything else at ``path`` is refused, and nothing is created.

    Raises:
        CorruptStorageError: the data file is shorter than its pages.
        StorageReplacedError: ``path`` holds no environment, or another one,
            than ``expect_identity``; or, on a reopen (after ``fork``), another
            one than this handle opened first.
        StorageIOError: LMDB refused to open, or ``lock.mdb`` was replaced while open,
            or ``data.mdb`` / ``lock.mdb`` are linked in a way LMDB cannot coordinate
            (a hard-linked ``data.mdb``, a symlinked ``lock.mdb``, a dangling or
            looping link, a symlink to a file not named ``data.mdb``, a file that
            is not a regular file, another process using the lock file beside a
            link: ``zarrstore.lmdb_files``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        databases: tuple[bytes, ...] = (),
        read_only: bool = False,
        durable: bool = False,
        create: bool = True,
        map_size: int = INITIAL_MAP_SIZE,
        lock: bool = True,
        small_reads: bool = False,
        ordered_writes: bool = False,
        identity_key: bytes | None = None,
        expect_identity: EnvironmentIdentity | None = None,
    ) -> None:
        self.path = lmdb_files.environment_directory(path)
        self.durable = durable
        if expect_identity is not None:
            create = False  # a copy reopens its environment; it never makes one
            if not holds_environment(self.path):
                raise StorageReplacedError(self.path, expect_identity, None)
        with translated("opening", self.path), _registry_held():
            shared = _registry.get(self.path)
            if lock and shared is None:
                _refuse_a_second_lock_file(path, self.path)
            if shared is not None and shared.users > 0 and shared.env is not None:
                if _lock_identity(self.path) != shared.lock_identity:
                    raise StorageIOError(
                        f"{os.path.join(self.path, 'lock.mdb')} was deleted or replaced while "
                        "this process had the environment open; LMDB forbids this (other "
                        "processes can no longer see this one's readers and writers). Close "
                        "every store and repository on it in this process, then reopen"
                    )
            if shared is None:
                shared = _Shared(self.path, databases, _round_up(map_size), lock, small_reads,
                                 ordered_writes, identity_key,
                                 writes_at_open=not read_only)
                shared.identity = expect_identity  # opened as a reopen: compared, never given
                shared.open(create)
                _registry[self.path] = shared
            elif expect_identity is not None and not shared.holds(expect_identity):
                raise StorageReplacedError(self.path, expect_identity, shared.identity)
            elif shared.names != databases:
                raise StorageIOError(
                    f"{self.path!r} is already open in this process with other databases"
                )
            elif shared.env is not None and shared.pid == os.getpid():
                # A process killed inside a read transaction leaves its reader slot
                # behind; while anyone keeps the environment open, that slot pins every
                # page freed since (the file grows with each write). Each open clears
                # the slots of dead processes.
                shared.env.reader_check()
            shared.users += 1
        self._shared = shared
        self.read_only = read_only or shared.read_only
        self._asked_read_only = read_only
        self._finalizer = weakref.finalize(self, _release, shared)

    def __repr__(self) -> str:
        return f"EnvironmentHandle({self.path!r})"

    @property
    def identity(self) -> EnvironmentIdentity:
        """Which environment this handle opened (pass it as ``expect_identity`` to a copy)."""
        identity = self._shared.identity
        assert identity is not None  # taken when the environment was first opened
        return identity

    @property
    def users(self) -> int:
        """How many open handles in this process share this environment (this one included)."""
        return 0 if self.closed else self._shared.users

    @property
    def transactions(self) -> int:
        """Transactions open on the environment in this process, in every thread (0 if closed)."""
        return 0 if self.closed else self._shared.active

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called (or the handle was finalised)."""
        return not self._finalizer.alive

    @property
    def locked(self) -> bool:
        """Whether the environment uses LMDB's lock file (``False`` on a read-only mount)."""
        return self._shared.locked

    def _shared_open(self) -> _Shared:
        if self.closed:
            raise ClosedStorageError(f"the LMDB environment at {self.path!r} is closed")
        return self._shared

    @property
    def env(self) -> lmdb.Environment:
        """The current ``lmdb.Environment`` (reopened after a fork)."""
        with translated("opening", self.path):
            return self._shared_open().current()

    @property
    def databases(self) -> tuple[lmdb._Database, ...]:
        """The named databases, in the order given, valid for the current environment.

        Take them inside the transaction's ``work``: a fork in another thread
        reopens the environment, and handles of the closed one are refused.
        """
        shared = self._shared
        # The process id as of the last fork: ``current()``, which every transaction
        # calls first, compares the real one (a fork that bypassed Python's hooks).
        if shared.env is None or shared.pid != _this_pid or not self._finalizer.alive:
            with translated("opening", self.path):
                self._shared_open().current()
        return shared.databases

    def read(self, action: str, work: Callable[[lmdb.Transaction], T], *,
             buffers: bool = False, readahead: bool | None = None) -> T:
        """Run ``work`` in one read transaction (a consistent snapshot); its result.

        With ``buffers``, values are views of the memory map, valid only
        until ``work`` returns (``work`` copies what it keeps). A ``work``
        that reads values reads them through ``get`` and ``value`` (with
        ``buffers``), never ``txn.get`` or a cursor's values: those touch a
        value before it can be checked, and a damaged page's value can run
        past the end of the file (``SIGBUS``).
        ``readahead=False`` (for a few small values at scattered places) makes
        page faults read one page each, not the device's readahead window;
        ``True`` (for large values) turns readahead back on; ``None`` leaves it
        as the last read that asked set it (``zarrstore.lmdb_readahead``).

        Raises:
            ClosedStorageError: the handle is closed (nothing was read).
        """
        shared = self._shared_open()

        def attempt(env: lmdb.Environment) -> T:
            switch = shared.readahead  # a forked child gets its own
            if switch is not None and readahead is not None:
                if readahead:
                    switch.on()
                else:
                    switch.off()
            with env.begin(buffers=True) if buffers else env.begin() as txn:
                return work(txn)

        return self._replayed(shared, action, attempt)

    def write(self, action: str, work: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``work`` in one write transaction and commit it; its result.

        The transaction is replayed from the start after the map grows, so
        ``work`` must only act through ``txn``. Durable handles fsync after
        the commit.

        Raises:
            ClosedStorageError: the handle is closed (nothing was written).
            ReadOnlyError: the handle or the filesystem is read-only.
            StorageFullError: the disk (or the address space) is full.
        """
        shared = self._shared_open()
        if self.read_only:
            if shared.read_only and not self._asked_read_only:
                raise ReadOnlyError(f"the LMDB environment at {self.path!r} is on a read-only "
                                    "filesystem, or its files cannot be written")
            raise ReadOnlyError(f"the LMDB environment at {self.path!r} is open read-only")

        def attempt(env: lmdb.Environment) -> T:
            if shared.reading:
                raise _OpenedToRead  # (re)opened to read: reopened writable, then again
            # Committed explicitly: py-lmdb's ``with`` exit returns silently when the
            # environment was closed meanwhile (another thread released its last
            # handle), so the write would be lost without a word; ``commit`` raises.
            txn = env.begin(write=True)
            try:
                result = work(txn)
            except BaseException:
                txn.abort()
                raise
            if shared.unlinked():
                # Under the writer lock, before anything is committed into a deleted file.
                txn.abort()
                raise StorageReplacedError(self.path, shared.identity, None)
            txn.commit()
            if self.durable:
                env.sync(True)
            if shared.known_size < (env.info()["last_pgno"] + 1) * shared.page_size + _SLACK:
                # The write grew the file into its slack.
                grown[0] = shared.keep_slack(env)
            return result

        grown = [False]
        for _ in range(_RETRIES):
            try:
                # Without LMDB's lock file (``lock=False``) LMDB keeps neither its writer
                # lock nor its reader table: a write runs alone in the process, or two
                # writers, or a writer reusing pages a reader still reads, crash it.
                result = self._replayed(shared, action, attempt, alone=not shared.locked)
                break
            except _OpenedToRead:
                self._writable(shared, action)
        else:
            raise StorageIOError(f"the LMDB environment at {self.path!r} kept being reopened "
                                 f"to read while {action}")
        if grown[0] and _gate.depth() == 0:
            # The padded file outgrew the map: grow it now, not on the next write.
            self._resize(shared, self.map_size(), action)
        return result

    def get(self, txn: lmdb.Transaction, key: bytes,
            db: lmdb._Database | None = None) -> memoryview | None:
        """The value of ``key`` in a read transaction with ``buffers`` (``None`` if absent).

        What ``txn.get`` returns, once checked as ``value`` checks it (inlined
        here: this is every read's path).

        Raises:
            CorruptStorageError: a damaged page says it runs past the end of the file.
        """
        cursor = txn.cursor(db=db)
        if not cursor.set_key(key):
            return None
        if _VIEW_OFFSET is not None:
            # Held while its address is read: py-lmdb makes a new view each call, and
            # one freed at once may take its memory with it (a crash, not a wrong value).
            key_view = cursor.key()
            address = _word_at(id(key_view) + _VIEW_OFFSET).value
            del key_view
            header = _word_at(address - 8).value  # the node's: size, flags, key size
            if header & 0xFFFFFFFF > self._shared.unchecked and header >> 32 & _BIGDATA:
                self._check_overflow(address, header)
        view: memoryview = cursor.value()  # type: ignore[assignment]  # ``buffers``
        return view

    def value(self, cursor: lmdb.Cursor) -> memoryview:
        """The value ``cursor`` stands on (a read transaction with ``buffers``), checked first.

        py-lmdb touches every page of a value before returning it (faulting
        them in with the GIL released), even as a view, and LMDB never
        compares a large value's size with the overflow pages it was given: a
        garbled size makes the value run past the end of the file, where that
        touch kills the process with ``SIGBUS``. So the node is read first (its
        header and overflow page number, in the leaf page, which the slack
        keeps inside the file) and a value ending past the file is refused. A
        value stored in its leaf page needs no check: LMDB refuses one whose
        size does not fit (``MDB_CORRUPTED``); nor does one shorter than the
        slack, in a padded file: it starts in a page LMDB checked, so it ends
        in the slack at worst (most chunks: only the node's header is read).

        Raises:
            CorruptStorageError: it runs past the end of the file.
        """
        if _VIEW_OFFSET is not None:
            key_view = cursor.key()  # held while its address is read (``get``)
            address = _word_at(id(key_view) + _VIEW_OFFSET).value
            del key_view
            header = _word_at(address - 8).value
            if header & 0xFFFFFFFF > self._shared.unchecked and header >> 32 & _BIGDATA:
                self._check_overflow(address, header)
        view: memoryview = cursor.value()  # type: ignore[assignment]  # ``buffers``
        return view

    def _check_overflow(self, key_address: int, header: int) -> None:
        shared = self._shared
        page = _word_at(key_address + (header >> 48)).value  # after the key
        end = page * shared.page_size + _PAGE_HEADER + (header & 0xFFFFFFFF)
        if end > shared.known_size:
            shared.check_overflow(end)

    def _replayed(self, shared: _Shared, action: str,
                  attempt: Callable[[lmdb.Environment], T], *, alone: bool = False) -> T:
        """``attempt(env)`` under the gate, replayed from the start after the map grows.

        Counted as one transaction across the replays and the resizes between
        them: a close meanwhile must not close (and a resize then reopen,
        unregistered) the environment. ``alone``: with the gate held
        exclusively, so no other transaction of the process runs meanwhile.
        """
        self._began(shared)
        try:
            for _ in range(_RETRIES):
                full_at: int | None = None
                gate = _gate  # rebound in a forked child: leave the one entered
                enter, leave = ((gate.acquire_exclusive, gate.release_exclusive) if alone
                                else (gate.enter, gate.leave))
                enter()
                try:
                    env = shared.current()
                    try:
                        return attempt(env)
                    except lmdb.MapFullError:
                        full_at = env.info()["map_size"]
                    except lmdb.MapResizedError:
                        pass
                except lmdb.Error as exc:
                    raise translate(exc, action, self.path) from exc
                finally:
                    leave()
                self._resize(shared, full_at, action)
        finally:
            shared.ended()
        raise StorageIOError(f"the LMDB map at {self.path!r} kept changing size while {action}")

    def _began(self, shared: _Shared) -> None:
        if not shared.began():
            raise ClosedStorageError(f"the LMDB environment at {self.path!r} is closed")

    def _writable(self, shared: _Shared, action: str) -> None:
        """Reopen ``shared``, opened to read (``_Shared.reading``), writable for a first write."""
        if _gate.depth() > 0:
            raise StorageIOError(
                f"the LMDB environment at {self.path!r} was opened to read and must be reopened "
                f"to write while {action}, which is impossible inside another transaction of "
                "this thread")
        with translated(action, self.path), _gate.exclusive():
            shared.writable()

    def _resize(self, shared: _Shared, full_at: int | None, action: str) -> None:
        if _gate.depth() > 0:
            raise StorageFullError(
                f"the LMDB map at {self.path!r} must grow while {action}, which is impossible "
                "inside another transaction of this thread"
            )
        with translated(action, self.path), _gate.exclusive():
            if full_at is None:
                shared.adopt_size()
            else:
                shared.grow(full_at)

    def map_size(self) -> int:
        """The current size of this process's map of the environment, in bytes."""
        return int(self.env.info()["map_size"])

    def sync(self) -> None:
        """Flush everything committed so far to disk (``fsync``)."""
        if self.read_only:
            return
        shared = self._shared_open()
        with translated("flushing to disk", self.path), _gate.shared():
            self._began(shared)
            try:
                env = shared.current()
                if not shared.reading:
                    env.sync(True)
                elif shared.data_fd is not None:
                    # Opened to read (LMDB refuses to flush such an environment), perhaps
                    # again after a fork that came between a write and this flush: the
                    # data file's own flush is LMDB's (``mdb_env_sync``: fdatasync).
                    os.fdatasync(shared.data_fd)
            finally:
                shared.ended()

    def close(self) -> None:
        """Release this handle; the environment closes with its last handle.

        Never waits: if another thread still has a transaction open on the
        environment, that transaction finishes (a write commits) and the
        environment closes when it ends.
        """
        self._finalizer()

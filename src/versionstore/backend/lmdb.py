"""``LMDBBackend``: the embedded default, one directory on local disk.

LMDB gives us what the engine needs without a server: readers never block,
one write transaction at a time across every thread *and process* on the
machine, and crash-safe copy-on-write pages. A compare-and-swap of a ref is
one write transaction, so two processes racing to commit get exactly one
winner.

Durability: each write transaction flushes its pages (``fdatasync``) before
LMDB writes the header page that points at them (``MDB_NOMETASYNC``,
``EnvironmentHandle(ordered_writes=True)``), and ``sync()`` — called by every
commit after its ref moves — flushes that header too, so a *commit* survives
power loss, and a power cut during later writes loses at most those writes,
never the file (``docs/format.md``, D1). A killed process loses nothing
either way: everything written is in the page cache at once. Pass
``durable=True`` to flush every transaction's header as well.

Readahead is set by the kind of read (``zarrstore.lmdb_readahead``). The map
starts with it off (``MDB_NORDAHEAD``, ``small_reads``): refs, tree nodes,
snapshots, history pages and metadata documents — what opening a repository,
listing its history and walking a snapshot read — are a few scattered pages,
and each page fault should read one page, not the device's readahead window
(8 MiB on some virtual disks, where opening an old snapshot, eight scattered
pages, read 16–31 MiB). Reads of chunks turn it on first: a chunk object is one
run of contiguous overflow pages, and with readahead off (``MADV_RANDOM``) the
kernel faults it in one 4 KiB page at a time, which made a cold read of 1 MiB
chunks about ten times slower (docs/benchmarks.md). Only a change costs a
system call, so a process that only reads history never makes one.

The environment rules LMDB imposes on a whole process — one environment per
directory, a map that grows on demand, reopening after ``fork``, refusing a
truncated file, read-only filesystems, a full disk — live in
``zarrstore.lmdb_environment``, shared with ``zarrstore.LMDBStore``. This
module imports ``lmdb`` for its transaction types; every error from below
becomes a versionstore error in ``_translated``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar, override

import attrs
import lmdb

from versionstore.backend.ledger import Ledger, LedgerRescue, LedgerUpdate
from versionstore.backend.long_writes import LongWrites
from versionstore.backend.protocol import (
    Backend,
    EmptyRecord,
    Joined,
    Rescue,
    SessionRule,
    WriteBatch,
    changed_refs,
    prefix_end,
    prunable,
)
from versionstore.errors import (
    BackendError,
    CorruptRepositoryError,
    DiskFullError,
    MissingObjectsError,
    ReadOnlyRepositoryError,
    RepositoryBusyError,
    RepositoryNotFoundError,
    RepositoryReplacedError,
)
from versionstore.ids import ID_LENGTH, ObjectId, object_id_text
from zarrstore import lmdb_files
from zarrstore.errors import (
    CorruptStorageError,
    ForeignEnvironmentError,
    ReadOnlyError,
    StorageFullError,
    StorageIOError,
    StorageReplacedError,
)
from zarrstore.lmdb_environment import EnvironmentHandle, EnvironmentIdentity, holds_environment

__all__ = ["LMDBBackend", "SpaceReport", "has_lmdb_environment"]

T = TypeVar("T")
_DATABASES = (b"objects", b"refs", b"gc")
#: Without the ledger: an older repository on a read-only filesystem (nothing to journal).
_READ_ONLY_DATABASES = (b"objects", b"refs")
# Keys of the ``gc`` database (garbage collection's ledger, versionstore.backend.ledger):
# counts, the header, the journal (8-byte big-endian positions), its end, pending ids,
# links (leaf -> predecessor) and successors (predecessor + leaf -> empty).
_COUNT, _HEADER, _JOURNAL, _JOURNAL_END, _PENDING = b"c", b"h", b"j", b"n", b"p"
_LINK, _SUCCESSOR = b"l", b"s"
#: The key of the main database (beside the named databases' records) that keeps the
#: repository's random id: a copy reopening the directory finds it again or refuses
#: (``EnvironmentIdentity``, ``RepositoryReplacedError``).
_IDENTITY_KEY = b"repository-id"


def _position(number: int) -> bytes:
    return _JOURNAL + number.to_bytes(8, "big")


def _count_value(count: int) -> bytes:
    return count.to_bytes((count.bit_length() + 7) // 8, "big")


def _delete_prefix(txn: lmdb.Transaction, db: lmdb._Database, prefix: bytes,
                   below: bytes | None = None) -> None:
    """Delete every key starting with ``prefix`` (and, if given, sorting before ``below``)."""
    cursor = txn.cursor(db=db)
    if not cursor.set_range(prefix):
        return
    while True:
        key = bytes(cursor.key())
        if not key.startswith(prefix) or (below is not None and key >= below):
            return
        if not cursor.delete():  # moves to the next entry; False when none is left
            return


#: A ``write`` of more items than this (objects, refs, staged refs deleted, objects
#: required) is announced as long (``versionstore.backend.long_writes``): zarr's
#: staging batches hold tens of chunks; commits and absorbs of many hold more.
LONG_BATCH = 512


def has_lmdb_environment(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` already holds an LMDB environment (without creating one)."""
    return holds_environment(path)


def _key(name: str) -> bytes:
    # surrogateescape: a ref name damaged into invalid UTF-8 round-trips to the same key
    return name.encode("utf-8", "surrogateescape")


def _name(key: bytes) -> str:
    return key.decode("utf-8", "surrogateescape")


def _any_under(txn: lmdb.Transaction, db: lmdb._Database, prefix: str) -> bool:
    cursor = txn.cursor(db=db)
    start = _key(prefix)
    return bool(cursor.set_range(start)) and bytes(cursor.key()).startswith(start)


def _delete_and_prune(txn: lmdb.Transaction, objects_db: lmdb._Database,
                      refs_db: lmdb._Database, ids: Iterable[ObjectId], spared: set[ObjectId],
                      prune_refs: Mapping[str, EmptyRecord]) -> None:
    """Delete ``ids`` but ``spared``, then the empty session records ``prunable`` allows."""
    bases = {record.base for record in prune_refs.values() if record.base is not None}
    deleted: set[ObjectId] = set()
    for object_id in ids:
        if object_id not in spared:
            txn.delete(object_id, db=objects_db)
            if object_id in bases:
                deleted.add(object_id)

    def still(name: str, record: EmptyRecord) -> bool:
        return (txn.get(_key(name), db=refs_db) == record.value
                and not _any_under(txn, refs_db, record.staging_prefix))

    for name in prunable(prune_refs, deleted, still):
        txn.delete(_key(name), db=refs_db)


def _bytes(value: bytes | memoryview | None) -> bytes | None:
    return value if value is None or isinstance(value, bytes) else bytes(value)


def _plain(cursor: lmdb.Cursor) -> bytes:
    return bytes(cursor.value())


def _plain_get(txn: lmdb.Transaction, key: bytes, db: lmdb._Database) -> bytes | None:
    return _bytes(txn.get(key, db=db))


#: Copies the value a cursor stands on out of a transaction: ``_plain`` in a write
#: transaction, ``LMDBBackend._copy`` in a read (``_read``).
_Copy = Callable[[lmdb.Cursor], bytes]
#: Reads and copies one value: ``_plain_get`` in a write, ``LMDBBackend._get`` in a read.
_Get = Callable[[lmdb.Transaction, bytes, lmdb._Database], bytes | None]


@contextmanager
def _translated(action: str) -> Iterator[None]:
    try:
        yield
    except (StorageIOError, ReadOnlyError, lmdb.Error, OSError) as exc:
        raise _translate(exc, action) from exc


def _translate(exc: Exception, action: str) -> BackendError | RepositoryNotFoundError:
    if isinstance(exc, ForeignEnvironmentError):
        return RepositoryNotFoundError(f"no repository: {exc}; give a new or empty "
                                       "directory for a repository")
    if isinstance(exc, ReadOnlyError):
        # The reason alone: zarr's wording ("opened in read-only mode") is wrong for a
        # repository opened writable on a read-only filesystem.
        doing = "cannot write" if action == "writing" else f"cannot write while {action}"
        return ReadOnlyRepositoryError(f"{doing}: {getattr(exc, 'detail', '') or exc}")
    if isinstance(exc, StorageReplacedError):
        return RepositoryReplacedError(exc.path)
    if isinstance(exc, StorageFullError):
        return DiskFullError(str(exc))
    if isinstance(exc, CorruptStorageError):
        return CorruptRepositoryError(str(exc))
    if isinstance(exc, StorageIOError):
        return BackendError(str(exc))
    if isinstance(exc, lmdb.DiskError) or (
            isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)):
        return DiskFullError(f"no space left on the device while {action}: {exc}")
    if isinstance(exc, OSError):
        return BackendError(f"cannot go on {action}: {exc}")
    return BackendError(f"LMDB failed while {action}: {exc}")


class LMDBBackend(Backend, Ledger):
    """A backend in an LMDB environment at ``path``.

    Args:
        path: the directory (created if missing, unless ``read_only``).
        durable: fsync every write transaction, not only ``sync()``.
        read_only: refuse writes with ``ReadOnlyRepositoryError``; also what a
            read-only filesystem gives without asking.

    ``self.path`` is the directory LMDB opened: where ``data.mdb`` in
    ``path`` is a symlink, its target's directory (``zarrstore.lmdb_files``),
    so compaction, space reports and long-write announcements act on the
    data file and lock file every process uses.

    The environment is released on ``close()`` or when the backend is garbage
    collected, whichever comes first.

    ``identity`` (``EnvironmentIdentity``) is which repository the backend
    opened: its directory and the random id the repository keeps. A pickled
    backend carries it, and so does a pickled repository or session
    (``LMDBStorage.identity``); opened with it, and reopened after ``fork``,
    the backend refuses any other repository at its path.

    Raises:
        BackendError: the environment cannot be opened, or its files are
            linked in a way LMDB cannot coordinate (a hard-linked ``data.mdb``,
            a symlinked ``lock.mdb``, a dangling link: ``zarrstore.lmdb_files``).
        RepositoryReplacedError: ``identity`` was given and the directory
            holds no repository, or another one.
    """

    def __init__(self, path: str | os.PathLike[str], *, durable: bool = False,
                 read_only: bool = False, identity: EnvironmentIdentity | None = None) -> None:
        self.path = os.path.realpath(path)
        self.durable = durable

        def opened(databases: tuple[bytes, ...], read_only: bool) -> EnvironmentHandle:
            return EnvironmentHandle(self.path, databases=databases, read_only=read_only,
                                     durable=durable, create=not read_only, small_reads=True,
                                     ordered_writes=True, identity_key=_IDENTITY_KEY,
                                     expect_identity=identity)

        with _translated("opening the repository"):
            try:
                self._handle = opened(_DATABASES, read_only)
            except StorageIOError as exc:
                if "lacks the database" not in str(exc):
                    raise
                # A repository from before the ledger, on a read-only filesystem (or
                # opened read-only): it does not get the database, and needs none.
                try:
                    self._handle = opened(_READ_ONLY_DATABASES, True)
                except StorageIOError as again:
                    if "lacks the database" not in str(again):
                        raise
                    raise RepositoryNotFoundError(
                        f"no repository in {self.path!r}: its LMDB environment has no "
                        "versionstore databases (and was opened only to read)") from None
        self.path = self._handle.path
        self.read_only = self._handle.read_only
        self._long_writes = LongWrites(self.path)

    def __reduce__(self) -> tuple[Any, tuple[str, bool, bool, EnvironmentIdentity]]:
        return _reopen, (self.path, self.durable, self.read_only, self.identity)

    @property
    def identity(self) -> EnvironmentIdentity:
        """Which repository this backend opened (``EnvironmentIdentity``)."""
        return self._handle.identity

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
    def _gc(self) -> lmdb._Database | None:
        databases = self._handle.databases
        return databases[2] if len(databases) > 2 else None

    def _get(self, txn: lmdb.Transaction, key: bytes, db: lmdb._Database) -> bytes | None:
        """A copy of the value of ``key`` in ``db``, read in ``_read`` (see there)."""
        view = self._handle.get(txn, key, db)
        return None if view is None else bytes(view)

    def _copy(self, cursor: lmdb.Cursor) -> bytes:
        """A copy of the value ``cursor`` stands on, in ``_read`` (see there)."""
        return bytes(self._handle.value(cursor))

    @property
    def _env(self) -> lmdb.Environment:
        """The current environment (tests reach the raw files through it)."""
        return self._environment()

    def _closed_error(self) -> BackendError:
        """What using a closed repository raises: the cause, and the way back.

        Sessions keep their repository's backend, so a session used after
        ``repo.close()`` lands here; its staged writes are still in the file.
        """
        return BackendError(
            f"LMDB repository at {self.path!r} is closed (repo.close() was called); reopen it "
            f"with vs.Repository.open({self.path!r}) and take a new session from it (a writable"
            " session's staged writes resume: writable_session(branch, resume=session_id))"
        )

    def _environment(self) -> lmdb.Environment:
        if self._handle.closed:
            raise self._closed_error()
        with _translated("opening the repository"):
            return self._handle.env

    def _read(self, action: str, work: Callable[[lmdb.Transaction], T], *,
              readahead: bool | None = None) -> T:
        """Run ``work`` in one read transaction whose values are views of the map.

        ``work`` reads each value with ``self._get`` or ``self._copy`` (or
        ``self._handle.get`` for a view it decodes in place), never
        ``txn.get`` or a cursor's values: a damaged page can claim a value
        running past the end of the file, where touching it would kill the
        process with ``SIGBUS``; those raise ``CorruptRepositoryError`` instead
        (``zarrstore.lmdb_environment``). Keys may be read as they are: no
        page can point a key out of the file.
        """
        if self._handle.closed:
            raise self._closed_error()
        try:
            return self._handle.read(action, work, buffers=True, readahead=readahead)
        except (StorageIOError, ReadOnlyError, lmdb.Error) as exc:
            raise _translate(exc, action) from exc

    def _write(self, action: str, work: Callable[[lmdb.Transaction], T], *,
               long: bool = False) -> T:
        """Run ``work`` in one write transaction; replayed whole if the map had to grow.

        ``long``: the transaction may hold LMDB's one writer lock for long (a
        commit of many objects, garbage collection), and is announced to
        other writers' event loops meanwhile (``versionstore.backend.long_writes``).
        """
        if self._handle.closed:
            raise self._closed_error()
        try:
            if long:
                with self._long_writes.announced():
                    return self._handle.write(action, work)
            return self._handle.write(action, work)
        except (StorageIOError, ReadOnlyError, lmdb.Error) as exc:
            raise _translate(exc, action) from exc

    @override
    def writer_busy(self) -> bool:
        return self._long_writes.busy()

    @override
    def get_objects(self, ids: Sequence[ObjectId]) -> list[bytes | None]:
        # The database handle is taken inside the transaction: a fork in another
        # thread reopens the environment, and handles taken before belong to the old one.
        wanted = list(ids)  # callers may hand over any iterable, read once

        def work(txn: lmdb.Transaction) -> list[bytes | None]:
            db, get = self._objects, self._get
            return [get(txn, i, db) for i in wanted]

        # One object is a node, snapshot, history page or metadata document of a walk
        # (``ObjectReader`` reads chunks through ``get_objects_decoded``): a page or
        # two, read without readahead. A batch is a copy or a check of many objects.
        return self._read("reading objects", work, readahead=len(wanted) != 1)

    @override
    def has_objects(self, ids: Sequence[ObjectId]) -> list[bool]:
        def work(txn: lmdb.Transaction) -> list[bool]:
            cursor = txn.cursor(db=self._objects)
            return [cursor.set_key(i) for i in ids]  # positions only: no value is copied

        return self._read("looking up objects", work)

    @override
    def write(self, batch: WriteBatch) -> bool:
        # The common staging write (a few objects and refs, the session's record kept)
        # skips the sections it does not use; the database handles are taken once.
        expect, delete_if_equal, objects = batch.expect, batch.delete_if_equal, batch.objects

        def work(txn: lmdb.Transaction) -> bool:
            databases = self._handle.databases
            objects_db, refs_db = databases[0], databases[1]
            get = txn.get
            if expect:
                for name, value in expect.items():
                    if get(_key(name), db=refs_db) != value:
                        return False
            if delete_if_equal:
                # Positioned, not read: a commit names thousands of staged refs.
                seek = txn.cursor(db=refs_db).set_key
                for name in delete_if_equal:
                    if not seek(_key(name)):
                        return False
            rule = batch.session
            has_record = rule is not None and get(_key(rule.record), db=refs_db) is not None
            required = batch.requires
            if rule is not None and rule.requires_now(has_record):
                required = Joined(required, rule.requires)
            if len(required):
                # Looked up by position only: reading a chunk to see that it exists would
                # copy it (and fault its pages in), for every chunk a commit references.
                written = {object_id for object_id, _ in objects}
                present = txn.cursor(db=objects_db).set_key
                missing = [object_id_text(i) for i in required
                           if i not in written and not present(i)]
                if missing:
                    raise MissingObjectsError(missing)
            if objects:
                put = txn.put
                inserted = []
                for object_id, data in objects:
                    if put(object_id, data, overwrite=False, db=objects_db):
                        inserted.append(object_id)
                if inserted:
                    self._journal_inserted(txn, inserted, databases)
            for name, ref in batch.refs.items():
                if ref is None:
                    txn.delete(_key(name), db=refs_db)
                else:
                    txn.put(_key(name), ref, db=refs_db)
            if delete_if_equal:
                cursor = txn.cursor(db=refs_db)
                for name, value in delete_if_equal.items():
                    if cursor.set_key(_key(name)) and cursor.value() == value:
                        cursor.delete()
            if rule is not None and (
                rule.replace or (not has_record and _any_under(txn, refs_db, rule.prefix))
            ):
                txn.put(_key(rule.record), rule.value, db=refs_db)
            return True

        long = (len(objects) + len(batch.refs) + len(delete_if_equal) + len(batch.requires)
                > LONG_BATCH)
        return self._write("writing", work, long=long)

    @override
    def stage(self, name: str, value: bytes, rule: SessionRule) -> None:
        # The transaction of a lone ``set``: while the session's record exists (nearly
        # always), one look at it, one at each required object (positioned, not read)
        # and one put; otherwise, or with a required object missing, the general write
        # creates the record or raises.
        key, record = _key(name), _key(rule.record)
        required = rule.requires if rule.always_requires else ()

        def work(txn: lmdb.Transaction) -> bool:
            databases = self._handle.databases
            refs_db = databases[1]
            if rule.replace or txn.get(record, db=refs_db) is None:
                return False
            if required:
                present = txn.cursor(db=databases[0]).set_key
                for object_id in required:
                    if not present(object_id):
                        return False
            txn.put(key, value, db=refs_db)
            return True

        if not self._write("writing", work):
            self.write(WriteBatch(refs={name: value}, session=rule))

    def _journal_inserted(self, txn: lmdb.Transaction, inserted: list[ObjectId],
                          databases: tuple[lmdb._Database, ...]) -> None:
        gc_db = databases[2] if len(databases) > 2 else None
        if gc_db is None:  # read-only: no write gets here
            raise ReadOnlyRepositoryError("cannot journal objects without the gc database")
        end = txn.get(_JOURNAL_END, db=gc_db)
        position = 0 if end is None else int.from_bytes(end, "big")
        txn.put(_position(position), b"".join(inserted), db=gc_db)
        txn.put(_JOURNAL_END, (position + 1).to_bytes(8, "big"), db=gc_db)

    @override
    def get_refs(self, names: Sequence[str]) -> list[bytes | None]:
        def work(txn: lmdb.Transaction) -> list[bytes | None]:
            refs_db, get = self._refs, self._get
            return [get(txn, _key(name), refs_db) for name in names]

        return self._read("reading refs", work)

    @override
    def get_objects_decoded(
        self, ids: Sequence[ObjectId], decode: Callable[[ObjectId, bytes | memoryview], T]
    ) -> list[T | None]:
        # Decoded inside the transaction, straight from the memory map.
        def work(txn: lmdb.Transaction) -> list[T | None]:
            db, get = self._objects, self._handle.get
            found: list[T | None] = []
            for i in ids:
                data = get(txn, i, db)
                found.append(None if data is None else decode(i, data))
            return found

        return self._read("reading objects", work, readahead=True)

    @override
    def get_refs_and_objects(
        self, names: Sequence[str], follow: Callable[[list[bytes | None]], Sequence[ObjectId]]
    ) -> tuple[list[bytes | None], list[bytes | None]]:
        def work(txn: lmdb.Transaction) -> tuple[list[bytes | None], list[bytes | None]]:
            databases = self._handle.databases
            objects_db, refs_db = databases[0], databases[1]
            get = self._get
            refs = [get(txn, _key(name), refs_db) for name in names]
            return refs, [get(txn, i, objects_db) for i in follow(refs)]

        return self._read("reading refs and objects", work)

    @override
    def get_refs_objects_and_listing(
        self, names: Sequence[str], follow: Callable[[list[bytes | None]], Sequence[ObjectId]],
        prefix: str,
    ) -> tuple[list[bytes | None], list[bytes | None], dict[str, bytes]]:
        def work(txn: lmdb.Transaction
                 ) -> tuple[list[bytes | None], list[bytes | None], dict[str, bytes]]:
            refs_db, objects_db, get = self._refs, self._objects, self._get
            refs = [get(txn, _key(name), refs_db) for name in names]
            objects = [get(txn, i, objects_db) for i in follow(refs)]
            return refs, objects, self._listed(txn, refs_db, _key(prefix), None, self._copy)

        return self._read("reading refs and objects", work)

    @override
    def list_refs(self, prefix: str, limit: int | None = None) -> dict[str, bytes]:
        start = _key(prefix)
        return self._read("listing refs",
                          lambda txn: self._listed(txn, self._refs, start, limit, self._copy))

    @staticmethod
    def _listed(txn: lmdb.Transaction, refs_db: lmdb._Database, start: bytes,
                limit: int | None, copied: _Copy) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        if limit is not None and limit <= 0:
            return found
        cursor = txn.cursor(db=refs_db)
        if not cursor.set_range(start):
            return found
        for raw_name in cursor.iternext(values=False):
            name = bytes(raw_name)
            if not name.startswith(start):
                break
            found[_name(name)] = copied(cursor)
            if len(found) == limit:  # not one step further
                break
        return found

    @override
    def list_refs_except(self, prefixes: Sequence[str]) -> dict[str, bytes]:
        return self._read("listing refs",
                          lambda txn: self._listed_except(txn, self._refs, prefixes,
                                                          self._copy))

    @staticmethod
    def _listed_except(txn: lmdb.Transaction, refs_db: lmdb._Database,
                       prefixes: Sequence[str], copied: _Copy) -> dict[str, bytes]:
        """Refs outside ``prefixes``: each skipped range is passed by one seek, not read."""
        found: dict[str, bytes] = {}
        if "" in prefixes:
            return found
        skips = sorted((_key(prefix), _key(prefix_end(prefix))) for prefix in prefixes)
        cursor = txn.cursor(db=refs_db)
        more = cursor.first()
        while more:
            key = bytes(cursor.key())
            skip = next((end for start, end in skips if key.startswith(start)), None)
            if skip is not None:
                more = cursor.set_range(skip)
                continue
            found[_name(key)] = copied(cursor)
            more = cursor.next()
        return found

    @override
    def scan_refs(self, prefix: str, visit: Callable[[str, bytes], None]) -> None:
        start = _key(prefix)

        def work(txn: lmdb.Transaction) -> None:
            cursor = txn.cursor(db=self._refs)
            if not cursor.set_range(start):
                return
            for raw_name in cursor.iternext(values=False):
                name = bytes(raw_name)
                if not name.startswith(start):
                    return
                visit(_name(name), self._copy(cursor))

        self._read("reading refs", work)

    @override
    def delete_objects(
        self,
        ids: Iterable[ObjectId],
        *,
        if_refs_are: Mapping[str, bytes] | None = None,
        rescue: Rescue | None = None,
        prune_refs: Mapping[str, EmptyRecord] | None = None,
    ) -> bool:
        def work(txn: lmdb.Transaction) -> bool:
            objects_db = self._objects
            spared: set[ObjectId] = set()
            if if_refs_are is not None:
                current = {_name(bytes(k)): bytes(v) for k, v in txn.cursor(db=self._refs)}
                if current != if_refs_are:
                    if rescue is None:
                        return False
                    spared = rescue(
                        changed_refs(if_refs_are, current), current,
                        lambda wanted: [_bytes(txn.get(i, db=objects_db)) for i in wanted],
                    )
            _delete_and_prune(txn, objects_db, self._refs, ids, spared, prune_refs or {})
            return True

        return self._write("deleting objects", work, long=True)

    @override
    def read_ledger(self) -> tuple[bytes | None, int]:
        def work(txn: lmdb.Transaction) -> tuple[bytes | None, int]:
            gc_db = self._gc
            if gc_db is None:
                return None, 0
            end = self._get(txn, _JOURNAL_END, gc_db)
            return (self._get(txn, _HEADER, gc_db),
                    0 if end is None else int.from_bytes(end, "big"))

        return self._read("reading the gc ledger", work)

    @override
    def journal(self, start: int, stop: int) -> list[ObjectId]:
        def work(txn: lmdb.Transaction) -> list[ObjectId]:
            gc_db, found = self._gc, list[ObjectId]()
            if gc_db is None:
                return found
            cursor = txn.cursor(db=gc_db)
            if not cursor.set_range(_position(start)):
                return found
            last = _position(stop)
            for key in cursor.iternext(values=False):
                if bytes(key) >= last or not bytes(key).startswith(_JOURNAL):
                    break
                ids = self._copy(cursor)
                found.extend(ObjectId(ids[i : i + ID_LENGTH])
                             for i in range(0, len(ids), ID_LENGTH))
            return found

        return self._read("reading the gc journal", work)

    @override
    def counts(self, ids: Sequence[ObjectId]) -> list[int]:
        def work(txn: lmdb.Transaction) -> list[int]:
            return self._counts_in(txn, ids, self._get)

        return self._read("reading gc counts", work)

    def _counts_in(self, txn: lmdb.Transaction, ids: Sequence[ObjectId],
                   get: _Get) -> list[int]:
        gc_db = self._gc
        if gc_db is None:
            return [0] * len(ids)
        found = []
        for object_id in ids:
            value = get(txn, _COUNT + object_id, gc_db)
            found.append(0 if value is None else int.from_bytes(value, "big"))
        return found

    @override
    def pending(self) -> list[ObjectId]:
        def work(txn: lmdb.Transaction) -> list[ObjectId]:
            gc_db, found = self._gc, list[ObjectId]()
            if gc_db is None:
                return found
            cursor = txn.cursor(db=gc_db)
            if not cursor.set_range(_PENDING):
                return found
            for key in cursor.iternext(values=False):
                if not bytes(key).startswith(_PENDING):
                    break
                found.append(ObjectId(bytes(key[1:])))
            return found

        return self._read("reading gc pending objects", work)

    @override
    def links(self, ids: Sequence[ObjectId]) -> list[ObjectId | None]:
        def work(txn: lmdb.Transaction) -> list[ObjectId | None]:
            gc_db = self._gc
            if gc_db is None:
                return [None] * len(ids)
            found: list[ObjectId | None] = []
            for object_id in ids:
                value = self._get(txn, _LINK + object_id, gc_db)
                found.append(None if value is None else ObjectId(value))
            return found

        return self._read("reading gc links", work)

    @override
    def ledger_contents(self) -> tuple[bytes | None, dict[ObjectId, int], dict[ObjectId, ObjectId]]:
        def work(txn: lmdb.Transaction
                 ) -> tuple[bytes | None, dict[ObjectId, int], dict[ObjectId, ObjectId]]:
            counts: dict[ObjectId, int] = {}
            links: dict[ObjectId, ObjectId] = {}
            gc_db = self._gc
            if gc_db is None:
                return None, counts, links
            copy, cursor = self._copy, txn.cursor(db=gc_db)
            for key in cursor.iternext(values=False):
                prefix = bytes(key[:1])
                if prefix == _COUNT:
                    counts[ObjectId(bytes(key[1:]))] = int.from_bytes(copy(cursor), "big")
                elif prefix == _LINK:
                    links[ObjectId(bytes(key[1:]))] = ObjectId(copy(cursor))
            return self._get(txn, _HEADER, gc_db), counts, links

        return self._read("reading the gc ledger", work)

    @override
    def successors(self, object_id: ObjectId) -> list[ObjectId]:
        def work(txn: lmdb.Transaction) -> list[ObjectId]:
            gc_db, found = self._gc, list[ObjectId]()
            if gc_db is None:
                return found
            prefix = _SUCCESSOR + object_id
            cursor = txn.cursor(db=gc_db)
            if not cursor.set_range(prefix):
                return found
            for key in cursor.iternext(values=False):
                if not bytes(key).startswith(prefix):
                    break
                found.append(ObjectId(bytes(key[len(prefix):])))
            return found

        return self._read("reading gc successors", work)

    @override
    def sweep(
        self,
        ids: Iterable[ObjectId],
        *,
        if_refs_are: Mapping[str, bytes],
        rescue: LedgerRescue,
        prune_refs: Mapping[str, EmptyRecord],
        ledger: LedgerUpdate,
        ignoring: Sequence[str] = (),
    ) -> bool:
        doomed = list(ids)

        def work(txn: lmdb.Transaction) -> bool:
            objects_db, refs_db, gc_db = self._objects, self._refs, self._gc
            if gc_db is None:
                raise ReadOnlyRepositoryError("cannot collect garbage without the gc database")
            if _bytes(txn.get(_HEADER, db=gc_db)) != ledger.expect:
                return False
            spared: set[ObjectId] = set()
            current = self._listed_except(txn, refs_db, ignoring, _plain)
            if current != if_refs_are:
                spared = rescue(
                    changed_refs(if_refs_are, current), current,
                    lambda wanted: [_bytes(txn.get(i, db=objects_db)) for i in wanted],
                    lambda wanted: self._counts_in(txn, wanted, _plain_get),
                )
            _delete_and_prune(txn, objects_db, refs_db, doomed, spared, prune_refs)
            if ledger.reset:
                _delete_prefix(txn, gc_db, _COUNT)
                _delete_prefix(txn, gc_db, _LINK)
                _delete_prefix(txn, gc_db, _SUCCESSOR)
            for object_id, count in ledger.counts.items():
                if count:
                    txn.put(_COUNT + object_id, _count_value(count), db=gc_db)
                else:
                    txn.delete(_COUNT + object_id, db=gc_db)
            for leaf, (old, new) in ledger.links.items():
                if old is not None and not ledger.reset:
                    txn.delete(_SUCCESSOR + old + leaf, db=gc_db)
                if new is None:
                    txn.delete(_LINK + leaf, db=gc_db)
                else:
                    txn.put(_LINK + leaf, new, db=gc_db)
                    txn.put(_SUCCESSOR + new + leaf, b"", db=gc_db)
            _delete_prefix(txn, gc_db, _PENDING)
            for object_id in {*ledger.pending, *(i for i in doomed if i in spared)}:
                txn.put(_PENDING + object_id, b"", db=gc_db)
            _delete_prefix(txn, gc_db, _JOURNAL, below=_position(ledger.journal_end))
            txn.put(_HEADER, ledger.header, db=gc_db)
            return True

        return self._write("collecting garbage", work, long=True)

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
        if self._handle.closed:
            raise self._closed_error()
        with _translated("flushing to disk"):
            self._handle.sync()

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
                object in this one — has the environment open, or another thread
                of this process has a transaction open on it (checked, not waited
                for); nothing changed.
            ReadOnlyRepositoryError: the repository is open read-only (as
                asked, or because its directory cannot be written).
        """
        if self.read_only:
            raise ReadOnlyRepositoryError(
                f"cannot compact {self.path!r}: the repository is open read-only")
        self._environment()
        users = self._handle.users
        if users > 1:
            raise RepositoryBusyError(self.path, [os.getpid()], in_this_process=users - 1)
        if self._handle.transactions:
            # Another thread is reading or committing through this repository: the
            # environment would stay open until it ends (``zarrstore.lmdb_environment``),
            # and its lock would refuse the compaction as if another process held it.
            raise RepositoryBusyError(self.path, [os.getpid()],
                                      transactions=self._handle.transactions)
        self._handle.close()
        self._long_writes.close()  # its look would see the data file compaction replaces
        try:
            before, _ = compact_environment(self.path)
        finally:
            with _translated("reopening after compaction"):
                self._handle = EnvironmentHandle(self.path, databases=_DATABASES,
                                                 read_only=self.read_only, durable=self.durable,
                                                 create=False, small_reads=True,
                                                 ordered_writes=True)
        # Measured after reopening, which pads the file (``zarrstore.lmdb_environment``).
        return before, os.path.getsize(os.path.join(self.path, lmdb_files.DATA))

    @override
    def close(self) -> None:
        self._handle.close()
        self._long_writes.close()


def _reopen(path: str, durable: bool, read_only: bool,
            identity: EnvironmentIdentity | None = None) -> LMDBBackend:
    """Unpickle: open the environment at ``path`` again (in this process), if still the same."""
    return LMDBBackend(path, durable=durable, read_only=read_only, identity=identity)


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


#: The prefix of the directory a compaction copies into, inside the environment's.
_SCRATCH = ".compact-"
#: LMDB's meta page (``MDB_meta`` after the 16-byte page header, 64-bit builds): its magic
#: and version, and the transaction id at the end of the part a copy may rewrite.
_META_MAGIC, _META_VERSION = 0xBEEFC0DE, 1
_META_START, _META_TXNID = 16, 144


def _continue_numbering(path: str, page_size: int, last_txnid: int) -> None:
    """Make both meta pages of the compacted copy at ``path`` hold its tree, as the last two.

    LMDB's compacting copy numbers the page with the tree transaction 1 and
    leaves the other empty (transaction 0). Here the tree's meta goes into
    both pages, numbered ``last_txnid - 1`` and ``last_txnid`` (the old file's
    last transaction), each in the page of its parity (``compact_environment``
    says why). Nothing is changed if the copy is empty (no transaction 1).

    Raises:
        BackendError: the copy's meta pages are not laid out as expected (a
            build of LMDB this was not written for); the old file stays.
    """
    with open(path, "r+b") as copy:
        pages = copy.read(2 * page_size)
        metas = [pages[:page_size], pages[page_size:]]
        for meta in metas:
            if len(meta) != page_size or struct.unpack_from("<II", meta, _META_START) != (
                    _META_MAGIC, _META_VERSION):
                raise BackendError(f"{path}: the compacted copy's meta pages are not LMDB's "
                                   "64-bit layout; the repository was not compacted")
        if struct.unpack_from("<Q", metas[1], _META_TXNID)[0] != 1 or last_txnid < 1:
            return  # an empty copy: its meta pages describe no tree
        body = metas[1][_META_START:_META_TXNID]
        for txnid in (last_txnid - 1, last_txnid):
            copy.seek((txnid & 1) * page_size + _META_START)
            copy.write(body + struct.pack("<Q", txnid))


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
    file whole. The next compaction removes the scratch directory a killed one
    left behind.

    A process that began opening the environment meanwhile waits on that lock
    holding ``lock.mdb`` open, and joins it shared once the lock is released:
    it does not reset the lock file, whose transaction counter still numbers
    the old file's transactions, and LMDB picks the meta page a reader reads
    and a writer starts from by that counter's parity. LMDB's compacting copy
    numbers its meta pages 0 (empty) and 1: such a process read an empty
    repository, and its first write replaced the compacted tree (data loss,
    found by two compactions started at once). So the copy's two meta pages
    both get the compacted tree, numbered as the old file's last two
    transactions (``_continue_numbering``): whatever the lock file says, a
    reader finds the data and a writer's transaction is numbered after it.

    Where ``data.mdb`` in ``path`` is a symlink, the target's directory is
    compacted, under its lock file (``zarrstore.lmdb_files``): the lock beside
    the link excludes nobody, and a new file renamed over the link would split
    the repository in two.

    Raises:
        RepositoryBusyError: another process has the environment open (its
            process id is named); nothing was changed.
        DiskFullError: no room for the compacted copy (about the size of the data in
            use); nothing was changed.
        BackendError: the platform lacks open-file-description locks (not
            Linux), LMDB failed, or the files are linked in a way LMDB cannot
            coordinate.
    """
    if not hasattr(fcntl, "F_OFD_SETLK"):
        raise BackendError("compact needs open-file-description locks (Linux)")
    with _translated("compacting"):
        path = lmdb_files.environment_directory(path)
        lmdb_files.check_files(path)
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
        # Under the lock no other compaction runs: a scratch directory left here is a
        # killed one's partial copy (as large as the data), never removed otherwise.
        for entry in os.scandir(path):
            if entry.name.startswith(_SCRATCH) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
        with _translated("compacting"):
            scratch = tempfile.mkdtemp(prefix=_SCRATCH, dir=path)
        try:
            with _translated("compacting"):
                # No LMDB lock: the lock we hold excludes every other opener.
                env = lmdb.open(path, readonly=True, lock=False, max_dbs=4,
                                map_size=max(before, 1 << 20))
                try:
                    last_txnid = int(env.info()["last_txnid"])  # without a lock: the file's
                    page_size = int(env.stat()["psize"])
                    env.copy(scratch, compact=True)
                finally:
                    env.close()
                copied = os.path.join(scratch, "data.mdb")
                _continue_numbering(copied, page_size, last_txnid)
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

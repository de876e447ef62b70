"""The backend interface: immutable objects plus compare-and-swap refs, written in batches.

Everything versionstore writes is either an *object* (immutable, named by
its content hash, written once and never changed) or a *ref* (a small named
value that moves only under a condition). That split is what makes the
engine safe with many writers: objects can be written by anyone at any time
without coordination, and every contended step — moving a branch, clearing
what a commit recorded, keeping a session's record — is one atomic
``WriteBatch`` whose conditions are checked in the same step as its writes.

A backend implements five primitives — ``write`` (one atomic batch),
``get_objects``, ``get_refs``, ``list_refs``, ``delete_objects`` — plus
``iter_object_ids``, ``sync`` and ``close``; ``put_objects``,
``compare_and_swap_ref``, ``get_ref``, ``has_objects`` and
``list_refs_except`` are derived from them.
``MemoryBackend`` and ``LMDBBackend`` implement it;
``versionstore.testing.BackendConformance`` checks any backend. The protocol's
invariants, and which batch keeps each, are in ``docs/format.md``.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Protocol, TypeVar, runtime_checkable

import attrs

from versionstore.ids import ObjectId
from versionstore.records import LOCATION_LIMIT

__all__ = ["Backend", "EmptyRecord", "Joined", "ObjectGetter", "Rescue", "SessionRule",
           "StagingWindow", "WriteBatch", "changed_refs", "outside_prefixes", "prefix_end",
           "prunable"]

T = TypeVar("T")

#: Reads objects inside the atomic step of ``delete_objects`` (``None`` for missing ids).
ObjectGetter = Callable[[Sequence[ObjectId]], list[bytes | None]]
#: Given the refs that changed since the caller looked (name -> new value, ``None`` if
#: deleted), every ref as it is now, and an object reader of the same atomic view, the
#: ids that must survive.
Rescue = Callable[[Mapping[str, bytes | None], Mapping[str, bytes], ObjectGetter],
                  set[ObjectId]]


@attrs.frozen(kw_only=True)
class SessionRule:
    """Keeps "every staged ref has its session's record" (``docs/format.md``, S2).

    Applied after the rest of a batch. With ``replace`` the record is set to
    ``value`` (a commit or rebase moving the session's base). Otherwise, if
    any ref under ``prefix`` (the session's staging area) exists and the
    record does not, the record is created with ``value``. The rule never
    deletes a record: a record outlives its staged refs (so copies of the
    session can still follow its base) until garbage collection prunes it
    (``EmptyRecord``).

    ``requires`` are objects that must exist when the record is written (the
    base snapshot it names): a batch that would point a record at a missing
    snapshot fails instead. With ``always_requires`` they must exist for
    every batch carrying the rule, record written or not: a staging write
    then never lands in a session whose base snapshot garbage collection
    took (the record may name an older base another copy staged on, or a
    base collected after the record was written), so the write fails with
    ``MissingObjectsError`` instead of staging changes no commit could
    build on.
    """

    prefix: str
    record: str
    value: bytes
    replace: bool = False
    requires: Sequence[ObjectId] = ()
    always_requires: bool = False

    def requires_now(self, has_record: bool) -> bool:
        """Whether a batch carrying this rule must find ``requires`` stored."""
        return self.replace or self.always_requires or not has_record


#: The empty mapping a ``WriteBatch`` field defaults to (shared: a batch is never changed).
_NOTHING: Mapping[str, Any] = MappingProxyType({})


@attrs.frozen
class EmptyRecord:
    """A session record with nothing staged, which garbage collection deletes if still so.

    The sweep deletes the record in its atomic step if the ref still holds
    ``value`` and no ref under ``staging_prefix`` exists; given a ``base``,
    only if that object is one the same step deletes (not spared). A session
    that has committed (or rebased) keeps its record while the snapshot it
    names is stored, so a copy idle across those commits still finds the
    record and follows it, instead of recreating it with the older base it
    knew and building read-modify-writes on that (``docs/format.md``, S3).
    """

    value: bytes
    staging_prefix: str
    base: ObjectId | None = None


def prunable(records: Mapping[str, EmptyRecord], deleted: Collection[ObjectId],
             still: Callable[[str, EmptyRecord], bool]) -> list[str]:
    """The names of ``records`` a sweep deletes: ``still`` empty, base (if any) in ``deleted``.

    ``still(name, record)`` says whether the ref holds ``record.value`` with
    nothing staged under its prefix, as the backend reads it in the step.
    """
    return [name for name, record in records.items()
            if (record.base is None or record.base in deleted) and still(name, record)]


@attrs.frozen(kw_only=True)
class WriteBatch:
    """One atomic write: conditions, then objects and ref changes, all or nothing.

    Applied in this order, in one step that no other writer interleaves with:

    1. ``expect``: each named ref must hold exactly this value (``None``: be
       absent), or nothing is written and ``write`` returns ``False``;
    2. ``requires``: each object must be stored already or be among
       ``objects``, or nothing is written and ``MissingObjectsError`` is raised;
    3. ``objects`` are stored (idempotently: an existing id is left as is);
    4. ``refs`` are set (``None`` deletes);
    5. ``delete_if_equal``: each ref still holding exactly this value is
       deleted (a newer value written since the caller read it stays); each
       must still exist, with any value, or nothing is written and ``write``
       returns ``False`` (something the caller read was removed since: it
       must read again — an erase or a discard raced it);
    6. ``session``: the ``SessionRule``.

    ``objects``, ``requires`` and ``delete_if_equal`` may be views of data
    kept outside memory (a huge commit passes ``versionstore.spill`` views):
    a backend iterates them, possibly more than once (a replayed write), and
    never needs more than iteration and ``len``.
    """

    objects: Collection[tuple[ObjectId, bytes]] = ()
    expect: Mapping[str, bytes | None] = _NOTHING
    requires: Collection[ObjectId] = ()
    refs: Mapping[str, bytes | None] = _NOTHING
    delete_if_equal: Mapping[str, bytes] = _NOTHING
    session: SessionRule | None = None


@attrs.frozen(kw_only=True)
class StagingWindow:
    """How long a group-staging batch stays open for more writers (``versionstore.group_stage``).

    A backend whose every write is a round trip that costs a request
    (object storage: one log record per batch) asks concurrent ``set`` calls
    to wait for each other a little longer than one event-loop turn, so
    that chunks which an encoder hands over a few milliseconds apart still
    share one write. A batch closes when ``seconds`` have passed since it
    opened, or once it holds ``max_keys`` keys or ``max_bytes`` bytes of
    values, whichever comes first; every ``set`` in it still returns only
    once the batch is durably written.
    """

    seconds: float
    max_keys: int = 1000
    max_bytes: int = 64 << 20


@runtime_checkable
class Backend(Protocol):
    """Storage for immutable objects and conditionally written refs."""

    def write(self, batch: WriteBatch) -> bool:
        """Apply ``batch`` atomically; ``False`` if an ``expect`` condition failed.

        Objects are durable no later than the refs written with them.

        Raises:
            MissingObjectsError: a ``requires`` object (or the ``SessionRule``'s,
                when it would create the record) is not stored; nothing was written.
        """
        ...

    def stage(self, name: str, value: bytes, rule: SessionRule) -> None:
        """Set ref ``name`` to ``value`` under ``rule``: the one write of a lone staged ``set``.

        The same as ``write(WriteBatch(refs={name: value}, session=rule))``;
        a backend may take a shorter path when the session's record exists.

        Raises:
            MissingObjectsError: as ``write`` (the rule would create the record,
                or has ``always_requires``, and its base snapshot is gone);
                nothing was written.
        """
        self.write(WriteBatch(refs={name: value}, session=rule))

    def get_objects(self, ids: Sequence[ObjectId]) -> list[bytes | None]:
        """The stored bytes of each id, in order; ``None`` for ids not stored."""
        ...

    def get_refs(self, names: Sequence[str]) -> list[bytes | None]:
        """The value of each ref (``None`` if absent), read in one consistent view."""
        ...

    def list_refs(self, prefix: str, limit: int | None = None) -> dict[str, bytes]:
        """Refs whose names start with ``prefix``, sorted by name (at most ``limit``)."""
        ...

    def delete_objects(
        self,
        ids: Iterable[ObjectId],
        *,
        if_refs_are: Mapping[str, bytes] | None = None,
        rescue: Rescue | None = None,
        prune_refs: Mapping[str, EmptyRecord] | None = None,
    ) -> bool:
        """Remove objects (garbage collection), atomically checking the refs first.

        ``if_refs_are`` is every ref as the caller saw it when it decided what
        to delete. If the refs differ now, then without ``rescue`` nothing is
        deleted and the result is ``False``; with ``rescue``, it is called in
        the same atomic step with the refs that changed and the refs now, and
        the ids it returns are spared (so a collection is never starved by
        writers). ``prune_refs`` names empty session records (``EmptyRecord``):
        each is deleted in the same step if it still holds its value, nothing
        is staged under its prefix, and its ``base``, if given, is among the
        objects the step deleted (``prunable``).
        """
        ...

    def iter_object_ids(self, prefix: bytes = b"") -> Iterator[ObjectId]:
        """Every stored object id starting with ``prefix``, in byte order (gc, verify, lookups)."""
        ...

    def sync(self) -> None:
        """Make everything written so far durable against power loss."""
        ...

    def close(self) -> None:
        """Release the backend's resources."""
        ...

    # -- derived ------------------------------------------------------------------------

    def iter_object_ids_written_before(self, when: datetime) -> Iterator[ObjectId]:
        """Every stored object id last written before ``when`` (garbage-collection candidates).

        Backends that keep no write times list every object (their sweep is
        one atomic step with every writer, so they need no grace period);
        object storage lists only objects older than ``when``, which is how
        the grace period protects objects a writer stored but has not yet
        referenced (``docs/format.md``).
        """
        del when
        return self.iter_object_ids()

    def default_gc_grace(self) -> timedelta | None:
        """The grace period garbage collection uses when the caller names none.

        ``None`` (LMDB, memory): none is needed, the sweep is atomic.
        """
        return None

    def safe_gc_grace(self) -> timedelta | None:
        """The shortest grace period that protects writers running during a collection.

        ``None`` (LMDB, memory): any, the sweep is atomic.
        """
        return None

    def consistent_reads(self) -> contextlib.AbstractContextManager[None]:
        """A block whose ref reads on this thread may share one view of the refs.

        Every read still sees each write that returned before the block
        began (and this thread's own writes), but reads inside the block need
        not each look again for writes that other processes made meanwhile:
        a commit reads its session's record, its staged refs and its branch
        tip from one view, then moves the branch by a compare-and-swap that
        fails if the view was stale. The default does nothing (LMDB and
        memory reads cost no round trip); object storage saves one request
        per read after the first.
        """
        return contextlib.nullcontext()

    def staging_window(self) -> StagingWindow | None:
        """How long a session's concurrent writes wait for each other to share one batch.

        ``None`` (LMDB, memory): one event-loop turn, as a write costs no
        request and a lone ``set`` should not wait.
        """
        return None

    def writer_busy(self) -> bool:
        """Whether a write now would likely wait long for another writer (a hint only).

        A session asks before it stages a write on zarr's event loop; ``True``
        sends the write to a worker thread, so the loop keeps serving every
        other store of the process meanwhile. The LMDB backend answers from
        the long transactions other writers announce
        (``versionstore.backend.long_writes``); the default, for backends
        whose writes never wait for one another that long, is ``False``.
        """
        return False

    def located_staging(self) -> bool:
        """Whether sessions stage chunks by located writes (``versionstore.located``).

        ``True`` on object storage, where a chunk's own ``PUT`` under a name
        that records its key is the durable staged record; ``False`` (LMDB,
        memory): a staged chunk is a ref, which costs no request.
        """
        return False

    def list_located(self, folder: str) -> list[str]:
        """The names of the located writes under ``folder`` (relative, no trailing ``/``).

        Only called where ``located_staging()``; the default holds none.
        """
        return []

    def scan_located(self, folder: str, visit: Callable[[list[str]], None]) -> None:
        """Call ``visit`` with the names under ``folder`` (as ``list_located``), page by page.

        For listings too long to hold (an absorb of 10^7 writes): override to
        stream; the default hands over ``list_located`` whole.
        """
        names = self.list_located(folder)
        if names:
            visit(names)

    def located_name_limit(self) -> int:
        """Bytes a located write's name may have (relative to the repository's prefix).

        The default is the longest location hint (``records.is_location``).
        """
        return LOCATION_LIMIT

    def located_folders(self, folder: str) -> list[str]:
        """The names of the folders directly in ``folder`` (relative, no trailing ``/``).

        One delimiter listing: what a session's epochs are (``located_staging``).
        Only called where ``located_staging()``; the default holds none.
        """
        return []

    def any_located(self, folder: str) -> bool:
        """Whether ``folder`` holds any located write (``list_located``, one short page)."""
        return bool(self.list_located(folder))

    def list_located_written(self) -> list[tuple[str, datetime]]:
        """Every name under ``stage/`` with its last-modified time on this machine's clock (gc).

        The default has none.
        """
        return []

    def delete_located(self, names: Sequence[str]) -> None:
        """Delete located writes by name (``versionstore.gc_located``); the default has none."""
        return

    def get_ref(self, name: str) -> bytes | None:
        """The value of ref ``name``, or ``None``."""
        return self.get_refs([name])[0]

    def has_objects(self, ids: Sequence[ObjectId]) -> list[bool]:
        """Whether each id is stored, in order (what push and fetch ask of the target).

        Override when the backend can answer without reading the bytes (a key
        lookup, an object-store HEAD): the default reads them.
        """
        return [data is not None for data in self.get_objects(ids)]

    def get_objects_decoded(
        self, ids: Sequence[ObjectId], decode: Callable[[ObjectId, bytes | memoryview], T]
    ) -> list[T | None]:
        """``decode(id, stored)`` of each id, in order; ``None`` for ids not stored.

        ``stored`` may be a view of the backend's own memory (``LMDBBackend``:
        the memory map, inside the read transaction), valid only during the
        call: ``decode`` must copy what it keeps. Reading a chunk this way
        copies its bytes once, not twice. The default decodes ``get_objects``.
        """
        return [None if data is None else decode(i, data)
                for i, data in zip(ids, self.get_objects(ids), strict=True)]

    def get_located(
        self, chunks: Sequence[tuple[ObjectId, str | None]],
        decode: Callable[[ObjectId, bytes | memoryview], T],
    ) -> list[T | None]:
        """``get_objects_decoded`` of chunks given with their location hints.

        A location (``LocatedChunkRef.location``: a path under ``stage/``) is
        where object storage keeps a chunk staged by its own ``PUT``
        (``docs/format.md``, "Located staging"). The default ignores it: LMDB
        and memory store every chunk under its id.
        """
        return self.get_objects_decoded([object_id for object_id, _ in chunks], decode)

    def has_located(self, chunks: Sequence[tuple[ObjectId, str | None]]) -> list[bool]:
        """``has_objects`` of chunks given with their location hints (see ``get_located``)."""
        return self.has_objects([object_id for object_id, _ in chunks])

    def put_located(self, objects: Sequence[tuple[ObjectId, str | None, bytes]]) -> None:
        """Store chunk frames, each at its location hint where the backend uses hints.

        What a transfer calls to copy located chunks: object storage stores
        one at its hint, so the tree nodes naming it (copied unchanged) find
        it; the default stores each under its id (one ``write``), as any object.
        """
        if objects:
            self.write(WriteBatch(objects=[(object_id, data) for object_id, _, data in objects]))

    def get_refs_and_objects(
        self, names: Sequence[str], follow: Callable[[list[bytes | None]], Sequence[ObjectId]]
    ) -> tuple[list[bytes | None], list[bytes | None]]:
        """Read refs, then the objects ``follow`` names from their values.

        Returns the ref values (``None`` if absent) and the stored bytes of each
        id ``follow`` returned (``None`` if not stored). A session's read of a
        staged chunk is one call: its staged ref, its record, the chunk.
        Backends that can do it in one consistent view (``LMDBBackend``: one
        read transaction) override this; the default reads twice, and any
        object a ref names exists anyway (refs never dangle, R1 in
        ``docs/format.md``), so the two views differ only if a writer moved
        the ref in between, as after any read.
        """
        refs = self.get_refs(names)
        return refs, self.get_objects(follow(refs))

    def get_refs_objects_and_listing(
        self, names: Sequence[str], follow: Callable[[list[bytes | None]], Sequence[ObjectId]],
        prefix: str,
    ) -> tuple[list[bytes | None], list[bytes | None], dict[str, bytes]]:
        """``get_refs_and_objects``, and every ref under ``prefix`` (as ``list_refs``).

        ``Repository.ancestry`` reads a branch, its tip and the grafts this
        way: one read transaction on LMDB (which overrides this, as does the
        memory backend); the default makes the two calls.
        """
        listed = self.list_refs(prefix)
        refs, objects = self.get_refs_and_objects(names, follow)
        return refs, objects, listed

    def list_refs_except(self, prefixes: Sequence[str]) -> dict[str, bytes]:
        """Every ref whose name starts with none of ``prefixes``, sorted by name, in one view.

        Garbage collection reads the refs that can root something this way,
        leaving out the ops log (``ops/``), which grows with every commit and
        roots nothing, so a collection's cost does not grow with history.
        Backends that can skip a range of names without reading it
        (``LMDBBackend``: a cursor seek; the memory and object backends: a
        bisection of their sorted names) override the default, which lists
        every ref and filters.
        """
        return outside_prefixes(self.list_refs(""), prefixes)

    def scan_refs(self, prefix: str, visit: Callable[[str, bytes], None]) -> None:
        """Call ``visit(name, value)`` for each ref under ``prefix``, in name order, in one view.

        For reading many refs without holding all their values at once (a
        commit of a million staged keys keeps only what ``visit`` keeps);
        override when the backend can stream.
        """
        for name, value in self.list_refs(prefix).items():
            visit(name, value)

    def put_objects(
        self,
        objects: Iterable[tuple[ObjectId, bytes]],
        refs: Mapping[str, bytes | None] | None = None,
    ) -> None:
        """Store objects (idempotently) and set or delete ``refs``, in one atomic step."""
        self.write(WriteBatch(objects=list(objects), refs=dict(refs or {})))

    def compare_and_swap_ref(
        self,
        name: str,
        expected: bytes | None,
        new: bytes | None,
        also: Mapping[str, bytes | None] | None = None,
        objects: Sequence[tuple[ObjectId, bytes]] = (),
    ) -> bool:
        """Set ref ``name`` to ``new`` (``None`` deletes) only if it now holds ``expected``.

        ``objects`` are stored and ``also`` (further ref writes) applied in the
        same atomic step, only when the swap succeeds. Returns whether it did.
        """
        return self.write(WriteBatch(
            objects=objects, expect={name: expected}, refs={**(also or {}), name: new}
        ))


class Joined(Collection[T]):
    """Two collections as one, without copying them (a batch's ``requires`` plus a few)."""

    def __init__(self, first: Collection[T], second: Collection[T]) -> None:
        self._first = first
        self._second = second

    def __len__(self) -> int:
        return len(self._first) + len(self._second)

    def __iter__(self) -> Iterator[T]:
        return itertools.chain(self._first, self._second)

    def __contains__(self, item: object) -> bool:
        return item in self._first or item in self._second


def prefix_end(prefix: str) -> str:
    """The least name above every name that starts with ``prefix`` (non-empty).

    Names under ``prefix`` sort in ``[prefix, prefix_end(prefix))``, as code
    points and as their UTF-8 bytes alike.
    """
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def outside_prefixes(refs: Mapping[str, bytes], prefixes: Sequence[str]) -> dict[str, bytes]:
    """The refs of ``refs`` whose names start with none of ``prefixes`` (order kept)."""
    skipped = tuple(prefixes)
    return {name: value for name, value in refs.items() if not name.startswith(skipped)}


def changed_refs(seen: Mapping[str, bytes], now: Mapping[str, bytes]) -> dict[str, bytes | None]:
    """The refs that differ between two views: name -> value in ``now`` (``None``: deleted)."""
    changed: dict[str, bytes | None] = {
        name: value for name, value in now.items() if seen.get(name) != value
    }
    changed.update({name: None for name in seen if name not in now})
    return changed

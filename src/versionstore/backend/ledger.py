"""The ledger: an optional backend capability that makes garbage collection incremental.

A plain backend can only answer "which objects exist?" by listing all of
them, so a collection costs in proportion to the repository. A backend that
also keeps a *ledger* lets the collection cost in proportion to what changed
since the previous one (``versionstore.gc_incremental``). The ledger holds:

* a **journal** of newly stored objects: every ``write`` that inserts
  objects (an id not stored before) appends their ids under the next
  position, *in the same atomic step* — so no object is ever stored without
  the collection being able to find it, even if the writer dies right after;
* a **count** per live object (how many refs and live objects point at it),
  maintained by the collection only — except that a leaf born with a
  *predecessor* (a live leaf it was rewritten from) counts only the chunks
  its predecessor does not hold (``versionstore.gc_incremental``);
* the **links** from such leaves to their predecessors (and, for each
  predecessor, its successors), so that a dying predecessor hands its
  shared chunks' counts over to its live successors;
* a set of **pending** objects: stored, not live, but kept by the last run
  (its ``older_than`` grace period, or its sweep's rescue) — looked at again
  by the next run;
* a **header** (``GCLedger``, encoded by ``versionstore.codec``) summarising
  the refs the last run saw.

Only garbage collection reads or changes the counts, pending set and header,
and only inside ``sweep``, which deletes objects exactly as
``Backend.delete_objects`` does and, in the same atomic step, checks that the
header is still the one the collection started from and writes the new
ledger. ``MemoryBackend`` and ``LMDBBackend`` implement it; a backend that
does not gets the full collection (``versionstore.gc``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

import attrs

from versionstore.backend.protocol import EmptyRecord, ObjectGetter
from versionstore.ids import ObjectId

__all__ = ["CountGetter", "Ledger", "LedgerRescue", "LedgerUpdate"]

#: Reads ledger counts inside ``sweep``'s atomic step (``0`` for ids without one).
CountGetter = Callable[[Sequence[ObjectId]], list[int]]
#: ``Rescue`` (``versionstore.backend.protocol``) that can also read the ledger's counts.
LedgerRescue = Callable[
    [Mapping[str, bytes | None], Mapping[str, bytes], ObjectGetter, CountGetter], set[ObjectId]
]


@attrs.frozen(kw_only=True)
class LedgerUpdate:
    """The ledger a collection leaves behind, written atomically with its sweep.

    ``expect`` is the header as the collection read it (``None``: there was
    none); if the header differs when the sweep runs, nothing at all is done.
    ``counts`` are new values for the ids whose count changed (``0``
    removes one); with ``reset`` every count is removed first (a rebuild).
    ``pending`` replaces the pending set; the ids the rescue spared among
    those being deleted are added to it. Journal entries before
    ``journal_end`` are removed: the collection accounted for them.
    ``links`` maps a leaf to ``(old predecessor, new predecessor)``
    (``None``: no link); with ``reset`` every link is removed first.
    """

    expect: bytes | None
    header: bytes
    counts: Mapping[ObjectId, int]
    pending: Collection[ObjectId]
    journal_end: int
    reset: bool = False
    links: Mapping[ObjectId, tuple[ObjectId | None, ObjectId | None]] = attrs.field(factory=dict)


@runtime_checkable
class Ledger(Protocol):
    """A backend that keeps garbage collection's ledger (see the module docstring)."""

    def read_ledger(self) -> tuple[bytes | None, int]:
        """The header (``None`` if there is none yet) and the journal's end, in one view.

        The end is the position the next inserting ``write`` will use.
        """
        ...

    def journal(self, start: int, stop: int) -> list[ObjectId]:
        """Ids inserted at journal positions ``start <= position < stop`` (repeats possible)."""
        ...

    def counts(self, ids: Sequence[ObjectId]) -> list[int]:
        """The ledger's count of each id (``0`` for ids without one)."""
        ...

    def pending(self) -> list[ObjectId]:
        """The pending ids (stored, not live, kept by the last collection)."""
        ...

    def links(self, ids: Sequence[ObjectId]) -> list[ObjectId | None]:
        """Each leaf's predecessor (``None``: it has none)."""
        ...

    def successors(self, object_id: ObjectId) -> list[ObjectId]:
        """The leaves whose predecessor is ``object_id``."""
        ...

    def ledger_contents(self) -> tuple[bytes | None, dict[ObjectId, int], dict[ObjectId, ObjectId]]:
        """The header, every count and every link, in one view (for ``verify``)."""
        ...

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
        """``delete_objects`` plus the ledger update, in one atomic step.

        Returns ``False``, having changed nothing, when the header is no
        longer ``ledger.expect`` (another collection ran meanwhile).
        Otherwise deletes ``ids`` except those the rescue returns (called,
        as in ``delete_objects``, only when the refs differ from
        ``if_refs_are``), prunes ``prune_refs``, writes ``ledger`` and
        returns ``True``. Refs under ``ignoring`` (prefixes) are left out on
        both sides: ``if_refs_are`` is then ``list_refs_except(ignoring)`` as
        the collection read it, and the rescue sees only the other refs —
        a collection passes the ops log, which roots nothing, so the step
        does not read it.
        """
        ...

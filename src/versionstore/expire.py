"""Expiring snapshots: old snapshots leave every ancestry; their data goes at the next gc.

icechunk's semantics, made explicit. Given a cut-off time, a snapshot
*expires* when it was written before the cut-off and is neither a branch tip,
nor tagged, nor the repository's first snapshot. Expired snapshots disappear
from every ancestry: each kept snapshot whose parent expired gets a graft
(``versionstore.grafts``) to its nearest kept ancestor, so ``ancestry()``
steps over the expired run. No snapshot id changes and no branch or tag
moves. Nothing is deleted here: ``garbage_collect`` then removes what only
expired snapshots referenced (data still used by a kept snapshot stays)::

    before:  A(1st) ← B(old) ← C(old) ← D(old, tag v1) ← E(old) ← F(new, main)
    after:   A ← D(v1) ← F(main)        (grafts: D → A, F → D; B, C, E expired)

With ``delete_expired_branches`` / ``delete_expired_tags``, branches (never
``main``) and tags whose snapshot is older than the cut-off are deleted first,
so their snapshots can expire too — unless that snapshot stays anyway (the
tip of a ref that is not deleted, or the first snapshot): then the ref stays
with it, as in icechunk 2; what only they reached is counted as
expired as well (as icechunk counts it), and goes at the next gc.

The ops log records the run (an ``expire`` entry for the repository) and
each branch or tag it deleted, in the same atomic step.

Concurrency: safe alongside commits, and not starved by them. The plan is
computed from one read of the branch, tag and graft refs, and written in one
atomic ``WriteBatch`` that expects only what the plan depends on:

* every graft ref as read: each graft written replaces a snapshot's parents
  with some of its ancestors *as the grafts read say*, so history only ever
  gets shorter (``versionstore.grafts``), and another run of expiry (or gc
  dropping a collected snapshot's graft) makes this one plan again;
* every ref the plan writes, as read: a graft it adds must still be absent,
  and a branch or tag it deletes must still hold the snapshot it judged old
  (a commit to it meanwhile makes it young: it is kept).

Branches and tags the plan does not write are *not* expected. A commit
moving a branch forward cannot invalidate the plan: the new snapshot is
not in the planned history, and its parent is a tip the plan kept. Nor can
another move of a ref the plan does not write — a reset, a new branch or
tag, even one on a snapshot this run expires: the batch writes and expects
no ref such a move writes or expects, and stores or deletes no object, so
the two commute, and the result is the one of this run landing first and
the move just after (what ``reset_branch`` onto an expired snapshot does
anyway: the snapshot keeps its graft, and gc keeps it while a ref reaches
it); a move that read history before this write (a merge's base) read it
as it could have just before this run, as before. Such a move only means
this run expired less than a later one will. (A purge landing meanwhile
moves every branch holding its node to rewritten snapshots: this run's
grafts then hang on snapshots no ref reaches, and gc drops them with
those snapshots.)

Garbage collection decides what to keep from the refs and grafts as they
are when it runs, never from this plan, and the ops log roots nothing, so
no concurrent commit is ever lost or stepped over. The batch ``requires``
each grafted snapshot and its new parents, so a plan whose snapshots a
collection removed meanwhile (after a reset elsewhere) is made again rather
than leave a graft of a collected snapshot. ``ConflictError`` is left for
endless contention on the refs the plan depends on.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import attrs

from versionstore.backend.protocol import WriteBatch
from versionstore.codec import decode_ref_target, encode_graft, encode_ref_target
from versionstore.errors import MaintenanceConflictError, MissingObjectsError
from versionstore.grafts import GRAFT_PREFIX, graft_ref, grafts_from_refs, parents_of
from versionstore.ids import ObjectId
from versionstore.objects import ObjectReader
from versionstore.opslog import REPOSITORY_OPERATION, with_operation
from versionstore.records import Graft, Operation, RefTarget
from versionstore.refs import MAIN, branch_ref

__all__ = ["expire_snapshots"]

#: Plans made before giving up, when the refs the plan depends on keep changing.
_ATTEMPTS = 100
#: Refs the plan never reads: the ops log (it grows with every ref change) and sessions.
_UNREAD = ("ops/", "session/", "stage/")


@attrs.frozen
class _Plan:
    """What one read of the refs expires, and the batch's parts that do it."""

    expired: set[ObjectId]
    #: Ref writes: grafts added, branches and tags deleted.
    writes: dict[str, bytes | None]
    #: What the plan depends on: every graft, and every ref it writes, as read.
    expect: dict[str, bytes | None]
    #: Each grafted snapshot and its new parents.
    requires: list[ObjectId]


def _plan(reader: ObjectReader, refs: Mapping[str, bytes], older_than: datetime,
          delete_branches: bool, delete_tags: bool) -> _Plan:
    """What to expire, given the branch, tag and graft refs read (``refs``)."""
    grafts = grafts_from_refs(refs)
    writes: dict[str, bytes | None] = {}
    tips: list[ObjectId] = []
    candidates: list[tuple[str, ObjectId]] = []  # old refs the flags allow to delete
    for name, raw in refs.items():
        if not name.startswith(("branch/", "tag/")):
            continue
        target = decode_ref_target(name, raw)
        if target.deleted or target.snapshot is None:
            continue
        old = reader.snapshot(target.snapshot).written_at < older_than
        if old and ((delete_branches and name.startswith("branch/")
                     and name != branch_ref(MAIN))
                    or (delete_tags and name.startswith("tag/"))):
            candidates.append((name, target.snapshot))
        else:
            tips.append(target.snapshot)
    # A ref is deleted only with its snapshot: one on a snapshot that stays (the tip
    # of a ref that stays, or the first snapshot) stays too, as in icechunk 2
    # (icechunk#1534, #1520).
    staying = set(tips)
    released: list[ObjectId] = []  # the snapshots of the branches and tags deleted here
    for name, snapshot_id in candidates:
        if snapshot_id in staying or not parents_of(
                snapshot_id, reader.snapshot(snapshot_id), grafts):
            tips.append(snapshot_id)
        elif name.startswith("branch/"):
            writes[name] = None
            released.append(snapshot_id)
        else:
            writes[name] = encode_ref_target(name, RefTarget(snapshot=None, deleted=True))
            released.append(snapshot_id)
    protected = set(tips)
    # Every snapshot the remaining refs reach, with the parents history follows today.
    parents: dict[ObjectId, tuple[ObjectId, ...]] = {}
    pending = list(tips)
    kept: set[ObjectId] = set()
    while pending:
        snapshot_id = pending.pop()
        if snapshot_id in parents:
            continue
        snapshot = reader.snapshot(snapshot_id)
        parents[snapshot_id] = parents_of(snapshot_id, snapshot, grafts)
        if (snapshot_id in protected or snapshot.written_at >= older_than
                or not parents[snapshot_id]):
            kept.add(snapshot_id)
        pending.extend(parents[snapshot_id])
    expired = set(parents) - kept
    # What only the deleted branches and tags reached leaves history with them: it
    # is expired too (icechunk counts it; gc collects it), back to where a kept
    # ref's history takes over.
    pending = list(released)
    while pending:
        snapshot_id = pending.pop()
        if snapshot_id in parents or snapshot_id in expired:
            continue
        snapshot = reader.snapshot(snapshot_id)
        older = parents_of(snapshot_id, snapshot, grafts)
        if snapshot.written_at < older_than and older:
            expired.add(snapshot_id)
        pending.extend(older)

    def nearest_kept(snapshot_id: ObjectId) -> ObjectId:
        # Single-parent history: follow the first parent. With merges, collect the
        # nearest kept ancestor along *each* parent and graft to all of them.
        while snapshot_id not in kept:
            snapshot_id = parents[snapshot_id][0]
        return snapshot_id

    # Expired snapshots get grafts too: one may still be walked from elsewhere (a
    # writable session's base), and must then step over expired ancestors that gc
    # will delete. Grafts of collected snapshots are dropped by gc.
    requires: list[ObjectId] = []
    for snapshot_id, old_parents in parents.items():
        new_parents = tuple(dict.fromkeys(nearest_kept(p) for p in old_parents))
        if new_parents != old_parents:
            name = graft_ref(snapshot_id)
            writes[name] = encode_graft(name, Graft(parents=new_parents))
            requires.extend((snapshot_id, *new_parents))
    return _Plan(expired=expired, writes=writes, expect=_depends_on(refs, writes),
                 requires=requires)


def _depends_on(refs: Mapping[str, bytes], writes: Mapping[str, bytes | None]
                ) -> dict[str, bytes | None]:
    """The refs a plan made from ``refs`` depends on: every graft, and those it writes.

    Not the branches and tags it leaves alone: see the module docstring.
    """
    expect: dict[str, bytes | None] = {
        name: raw for name, raw in refs.items() if name.startswith(GRAFT_PREFIX)}
    for name in writes:
        expect[name] = refs.get(name)
    return expect


def _batch(plan: _Plan, refs: Mapping[str, bytes], older_than: datetime) -> WriteBatch:
    """The plan's atomic step, with its ops-log entries."""
    batch = WriteBatch(expect=plan.expect, requires=plan.requires, refs=plan.writes)
    now = datetime.now(UTC)
    note = f"older than {older_than.isoformat()}"
    for name in sorted(plan.writes):  # deleted branches and tags, in the same atomic step
        if name.startswith(("branch/", "tag/")):
            old = decode_ref_target(name, refs[name]).snapshot
            batch = with_operation(batch, Operation(
                kind="expire", ref=name, old=old, new=None, written_at=now,
                message=f"deleted: its snapshot is {note}"))
    if plan.expired:
        batch = with_operation(batch, Operation(
            kind="expire", ref=REPOSITORY_OPERATION, old=None, new=None, written_at=now,
            message=f"expired {len(plan.expired)} snapshot(s) {note}"))
    return batch


def expire_snapshots(reader: ObjectReader, older_than: datetime, *,
                     delete_expired_branches: bool = False,
                     delete_expired_tags: bool = False) -> set[ObjectId]:
    """Expire snapshots written before ``older_than``; return the expired ids.

    Raises:
        ValueError: if ``older_than`` has no timezone.
        MaintenanceConflictError: if the refs the plan depends on — the grafts, and the
            branches and tags it would delete — kept changing through every
            one of many attempts (nothing was changed). Commits, resets and
            new branches or tags elsewhere never cause it.
    """
    if older_than.tzinfo is None or older_than.utcoffset() is None:
        raise ValueError("older_than must be timezone-aware (e.g. datetime.now(UTC))")
    backend = reader.backend
    for _ in range(_ATTEMPTS):
        refs = backend.list_refs_except(_UNREAD)
        plan = _plan(reader, refs, older_than, delete_expired_branches, delete_expired_tags)
        if not plan.writes:
            return plan.expired
        try:
            written = backend.write(_batch(plan, refs, older_than))
        except MissingObjectsError:
            continue  # a collection took snapshots the plan grafts (refs moved): plan again
        if written:
            backend.sync()
            return plan.expired
    raise MaintenanceConflictError(  # pragma: no cover - endless contention
        "expire_snapshots", "the grafts, or the branches and tags it deletes, kept changing "
        "(other runs of expiry or garbage collection)")

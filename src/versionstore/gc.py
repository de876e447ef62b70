"""Garbage collection: delete objects no version can reach.

``collect_garbage`` is the entry point: incremental where the backend keeps
a ledger (``versionstore.gc_incremental``: reference counts, cost in
proportion to what changed since the previous run), otherwise the full
collection described here (``collect_garbage_by_listing``), which marks
everything and lists every object. Both delete the same objects.

Reachable means: from a branch, a tag, or a writable session (its base and
its staged chunks), through snapshot ancestry, tree nodes and chunk
references. Everything else — trees and chunks of snapshots that a
``reset_branch`` or ``delete_branch`` left behind, orphans of killed
processes — is garbage.

Safe alongside writers, and never starved by them: the mark phase reads the
refs once and walks what they reach; the sweep is one atomic step that
compares the refs with what the mark phase saw and, for every ref that
changed since (a commit, a staged write, a reset), marks what the new value
reaches — inside the same step — and spares it. Every writer that makes an
object reachable does so by writing a ref in the same atomic step as it
checks the object exists (``docs/format.md``), so an object is either
spared by the sweep or known missing to the writer, which then fails or
retries cleanly.

History is walked through grafts (``versionstore.grafts``), so snapshots
that ``expire_snapshots`` cut out of every ancestry are collected; the rescue
step ignores grafts, which can only keep more. ``older_than`` spares
unreachable snapshots written at or after that time (and all they reach): a
grace period in which a ``reset_branch`` or ``delete_branch`` can be undone.
Every summary reports the bytes freed (the stored size of the deleted objects).
A session record roots its base only while the session has staged refs;
records of sessions with nothing staged are pruned by the sweep, atomically
checked (``docs/format.md``, S2) — that of a session which has committed
only with its base (``gc_roots.empty_records``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from versionstore.backend.ledger import Ledger
from versionstore.backend.protocol import Backend, ObjectGetter, Rescue
from versionstore.codec import (
    KIND_SNAPSHOT,
    decode_history_page,
    decode_node,
    decode_snapshot,
    decode_staged,
    frame_kind,
)
from versionstore.errors import ShortGracePeriodWarning
from versionstore.gc_incremental import collect_incrementally
from versionstore.gc_located import (
    idle_sessions,
    pending_sessions,
    restore_written,
    sweep_located,
)
from versionstore.gc_roots import (
    GCSummary,
    Progress,
    batches,
    drop_stale_grafts,
    empty_records,
    roots_of,
    session_of,
    staged_sessions,
)
from versionstore.grafts import Grafts, grafts_from_refs, parents_of
from versionstore.ids import ObjectId, object_id_text
from versionstore.objects import ObjectReader
from versionstore.records import (
    Branch,
    ChunkRef,
    HistoryPage,
    Leaf,
    LocatedChunkRef,
    Node,
    Snapshot,
)
from versionstore.refs import session_ref

__all__ = [
    "GCSummary",
    "Progress",
    "collect_garbage",
    "collect_garbage_by_listing",
    "reachable_objects",
    "warn_if_short_grace",
]



def _mark(roots: tuple[list[ObjectId], set[ObjectId]],
          snapshot_of: Callable[[ObjectId], Snapshot | None],
          node_of: Callable[[ObjectId], Node | None],
          page_of: Callable[[ObjectId], HistoryPage | None], marked: set[ObjectId],
          missing: set[ObjectId] | None = None, grafts: Grafts | None = None,
          located: dict[ObjectId, str] | None = None,
          hints: set[str] | None = None) -> set[ObjectId]:
    """Add to ``marked`` everything the roots reach that is not in it yet; return the additions.

    ``located``, if given, receives the location hint of every located chunk
    reference the walk meets (``LocatedChunkRef``: where object storage keeps it),
    by chunk id; ``hints``, if given, every such hint.

    Snapshots are followed through their parents (as ``grafts`` say) and
    keep their history pages.

    Objects that are referenced but not stored go to ``missing`` (there is
    nothing of them to keep; ``verify`` reports them). A damaged object
    raises ``CorruptObjectError``: what it references cannot be known, so
    nothing may be collected.
    """
    snapshots, chunks = list(roots[0]), roots[1]
    missing = set() if missing is None else missing
    added = chunks - marked
    marked |= added
    while snapshots:
        snapshot_id = snapshots.pop()
        if snapshot_id in marked:
            continue
        snapshot = snapshot_of(snapshot_id)
        if snapshot is None:
            missing.add(snapshot_id)
            continue
        marked.add(snapshot_id)
        added.add(snapshot_id)
        snapshots.extend(parents_of(snapshot_id, snapshot, grafts))
        page_id = snapshot.history
        while page_id is not None and page_id not in marked:
            page = page_of(page_id)
            if page is None:
                missing.add(page_id)
                break
            marked.add(page_id)
            added.add(page_id)
            page_id = page.previous  # its entries are ancestors: reached through parents
        pending = [] if snapshot.tree is None or snapshot.tree in marked else [snapshot.tree]
        while pending:
            node_id = pending.pop()
            node = node_of(node_id)
            if node is None:
                missing.add(node_id)
                continue
            marked.add(node_id)
            added.add(node_id)
            if isinstance(node, Branch):
                pending.extend(c for c in node.children if c not in marked)
            elif isinstance(node, Leaf):
                new = {e.chunk_id for e in node.entries if isinstance(e, ChunkRef)} - marked
                if located is not None or hints is not None:
                    for e in node.entries:
                        if e.__class__ is LocatedChunkRef:
                            if located is not None:
                                located.setdefault(e.chunk_id, e.hint)
                            if hints is not None:
                                hints.add(e.hint)
                marked |= new
                added |= new
    return added


def reachable_objects(reader: ObjectReader, refs: Mapping[str, bytes],
                      missing: set[ObjectId] | None = None,
                      located: dict[ObjectId, str] | None = None) -> set[ObjectId]:
    """Every stored object reachable from ``refs`` (a snapshot of the backend's refs).

    History is followed through the grafts among ``refs``. Referenced
    objects that are not stored are added to ``missing``; the location hint
    of each located chunk reached (in a tree or staged) to ``located``.
    """
    marked: set[ObjectId] = set()
    if located is not None:
        for name, raw in refs.items():
            if name.startswith("stage/"):
                entry = decode_staged(name, raw)
                if isinstance(entry, LocatedChunkRef):
                    located.setdefault(entry.chunk_id, entry.hint)
    _mark(roots_of(refs, staged_sessions(refs)), reader.snapshot_if_stored,
          reader.node_if_stored, reader.history_page_if_stored, marked, missing,
          grafts_from_refs(refs), located)
    return marked


def _rescuer(marked: set[ObjectId], rescued: set[ObjectId]) -> Rescue:
    """The sweep's rescue: what the refs changed since the mark phase reach, read atomically.

    Conservative: every changed session record counts as a root, and so does
    the record of every session whose staged refs changed.
    """

    def rescue(changed: Mapping[str, bytes | None], now: Mapping[str, bytes],
               get: ObjectGetter) -> set[ObjectId]:
        def snapshot_of(object_id: ObjectId) -> Snapshot | None:
            data = get([object_id])[0]
            return None if data is None else decode_snapshot(object_id_text(object_id), data)

        def node_of(object_id: ObjectId) -> Node | None:
            data = get([object_id])[0]
            return None if data is None else decode_node(object_id_text(object_id), data)

        def page_of(object_id: ObjectId) -> HistoryPage | None:
            data = get([object_id])[0]
            return None if data is None else decode_history_page(object_id_text(object_id),
                                                                 data)

        roots = dict(changed)
        for session in staged_sessions(changed):
            record = session_ref(session)
            if record in now:
                roots[record] = now[record]
        rescued.update(_mark(roots_of(roots), snapshot_of, node_of, page_of, set(marked)))
        return rescued

    return rescue


def warn_if_short_grace(backend: Backend, older_than: datetime | None, *, dry_run: bool,
                        stacklevel: int) -> None:
    """Warn when a collection's grace period cannot protect writers running meanwhile.

    ``stacklevel`` as the caller would pass it to ``warnings.warn`` (2 names the
    caller's own caller: the user's line).

    Warns:
        ShortGracePeriodWarning: ``older_than`` is later than the backend's
            ``safe_gc_grace()`` before now (object storage: an hour); never on
            a dry run, which deletes nothing.
    """
    safe = backend.safe_gc_grace()
    if (not dry_run and older_than is not None and safe is not None
            and older_than > datetime.now(UTC) - safe):
        warnings.warn(ShortGracePeriodWarning(
            f"garbage collection with older_than={older_than.isoformat()}, less than "
            f"{safe} ago: a writer running meanwhile may reference an object it deletes; "
            "collect this way only while nothing writes to the repository "
            "(docs/format.md, 'Garbage collection on shared storage')"),
            stacklevel=stacklevel + 1)


def collect_garbage(reader: ObjectReader, *, dry_run: bool = False,
                    older_than: datetime | None = None,
                    progress: Progress | None = None, full: bool = False) -> GCSummary:
    """Delete every unreachable object (or, with ``dry_run``, only count them).

    Incremental where the backend keeps a ledger
    (``versionstore.gc_incremental``: the cost follows what changed since the
    previous collection); otherwise, or when the ledger cannot be used, the
    full collection (``collect_garbage_by_listing``). Both delete exactly the
    stored objects no ref reaches, less the grace period's and the rescue's.

    Args:
        reader: the repository's object reader.
        dry_run: count what would be deleted and its bytes; delete nothing.
        older_than: spare unreachable snapshots written at or after this
            (timezone-aware) time, and everything they reach; on object
            storage also every object stored at or after it. ``None``: the
            backend's ``default_gc_grace()`` before now (none on LMDB and
            memory; ``DEFAULT_GC_GRACE``, one day, on object storage).
        progress: told ``(phase, done, total)`` while candidates are sized.
        full: mark everything and list every object, whatever the ledger
            says (and, with a ledger, write it afresh).

    Raises:
        CorruptObjectError: a ref of unknown kind or a damaged object: what
            it references cannot be known, so nothing is deleted.
    """
    backend = reader.backend
    if isinstance(backend, Ledger):
        summary = collect_incrementally(reader, backend, dry_run=dry_run, older_than=older_than,
                                        progress=progress, rebuild=full)
        if summary is not None:
            return summary
    return collect_garbage_by_listing(reader, dry_run=dry_run, older_than=older_than,
                                      progress=progress)


def collect_garbage_by_listing(reader: ObjectReader, *, dry_run: bool = False,
                               older_than: datetime | None = None,
                               progress: Progress | None = None) -> GCSummary:
    """The full collection: mark what the refs reach, list every object, delete the rest.

    Costs in proportion to the repository. Needs nothing from the backend
    beyond ``versionstore.backend.protocol``; it leaves a ledger as it is (a
    ledger stays valid when objects are deleted under it). Arguments as
    ``collect_garbage``.
    """
    backend = reader.backend
    refs = backend.list_refs("")
    grafts = grafts_from_refs(refs)
    hints: set[str] | None = set() if backend.located_staging() else None
    # Listed after the refs were read: a located write made later is young, and its
    # session's record (read above) names its epoch.
    listed = backend.list_located_written() if hints is not None else []
    staged = staged_sessions(refs, None if hints is None else pending_sessions(refs, listed))
    marked: set[ObjectId] = set()
    _mark(roots_of(refs, staged), reader.snapshot_if_stored, reader.node_if_stored,
          reader.history_page_if_stored, marked, None, grafts, hints=hints)
    if older_than is None and (grace := backend.default_gc_grace()) is not None:
        older_than = datetime.now(UTC) - grace
    # Listed after the refs were read: what a writer stores later is not a candidate,
    # and on object storage neither is anything stored at or after ``older_than``.
    candidates = (backend.iter_object_ids() if older_than is None
                  else backend.iter_object_ids_written_before(older_than))
    doomed = [oid for oid in candidates if oid not in marked]
    sizes: dict[ObjectId, int] = {}
    recent: list[ObjectId] = []
    for batch in batches(doomed):
        for object_id, data in zip(batch, backend.get_objects(batch), strict=True):
            if data is None:
                continue
            sizes[object_id] = len(data)
            if older_than is not None and frame_kind(data) == KIND_SNAPSHOT:
                snapshot = decode_snapshot(object_id_text(object_id), data)
                if snapshot.written_at >= older_than:
                    recent.append(object_id)
        if progress is not None:
            progress("sizing unreachable objects", len(sizes), len(doomed))
    if recent:
        _mark((recent, set()), reader.snapshot_if_stored, reader.node_if_stored,
              reader.history_page_if_stored, marked, None, grafts)
        doomed = [oid for oid in doomed if oid not in marked]
    rescued: set[ObjectId] = set()
    idle = (set() if hints is None else
            idle_sessions(refs, listed, datetime.now(UTC) if older_than is None else older_than))
    empty = empty_records(  # pruned, if still so
        refs, staged, doomed,
        lambda name, record: hints is None or record.epoch is None or session_of(name) in idle)
    if not dry_run and (doomed or empty):
        backend.delete_objects(doomed, if_refs_are=refs, rescue=_rescuer(marked, rescued),
                               prune_refs=empty)
        if hints is not None:  # a located write racing the prune: its record comes back
            restore_written(backend, empty)
        drop_stale_grafts(backend, refs, set(doomed) - rescued)
        backend.sync()
    gone = [oid for oid in doomed if oid not in rescued]
    located_gone, located_bytes = (0, 0) if hints is None else sweep_located(
        backend, refs, hints, listed, older_than, dry_run=dry_run)
    return GCSummary(reachable=len(marked) + len(rescued), deleted=len(gone) + located_gone,
                     dry_run=dry_run,
                     bytes_freed=sum(sizes.get(oid, 0) for oid in gone) + located_bytes)

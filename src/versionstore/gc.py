"""Garbage collection: delete objects no version can reach.

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
checked (``docs/format.md``, S2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime

import attrs

from versionstore.backend.protocol import Backend, ObjectGetter, Rescue, WriteBatch
from versionstore.codec import (
    KIND_SNAPSHOT,
    decode_history_page,
    decode_node,
    decode_ref_target,
    decode_session,
    decode_snapshot,
    decode_staged,
    frame_kind,
)
from versionstore.errors import CorruptObjectError
from versionstore.grafts import Grafts, graft_ref, grafts_from_refs, parents_of
from versionstore.ids import ObjectId, object_id_text
from versionstore.objects import ObjectReader
from versionstore.records import Branch, ChunkRef, HistoryPage, Leaf, Node, Snapshot
from versionstore.refs import REPOSITORY_REF, session_ref, stage_prefix

__all__ = ["GCSummary", "Progress", "collect_garbage", "reachable_objects"]

#: Told ``(phase, done, total)`` as a long operation advances (for progress bars).
Progress = Callable[[str, int, int], None]
_BATCH = 512


@attrs.frozen
class GCSummary:
    """What a collection found and removed.

    ``bytes_freed`` is the stored size of the deleted objects (with
    ``dry_run``: of those that would be deleted). On LMDB the file keeps its
    size until ``Repository.compact``; the freed pages are reused first.
    """

    reachable: int
    deleted: int
    dry_run: bool
    bytes_freed: int = 0


_KNOWN = ("branch/", "tag/", "session/", "stage/", "graft/", "ops/")


def _session_of(name: str) -> str:
    """The session id of a ``session/<id>`` or ``stage/<id>/<key>`` ref."""
    return name.split("/", 2)[1]


def _staged_sessions(refs: Mapping[str, bytes | None]) -> set[str]:
    """Ids of the sessions with staged refs among ``refs``."""
    return {_session_of(name) for name, raw in refs.items()
            if raw is not None and name.startswith("stage/")}


def _roots(refs: Mapping[str, bytes | None], staged: set[str] | None = None
           ) -> tuple[list[ObjectId], set[ObjectId]]:
    """Snapshots and chunks that ``refs`` point at directly.

    A session record roots its base only while its session has staged refs
    (ids in ``staged``; ``None``: every record counts). A ref of a kind this
    version does not know — a damaged name, or a newer format — stops the
    collection: what it references cannot be known, so nothing may be deleted.
    """
    snapshots: list[ObjectId] = []
    chunks: set[ObjectId] = set()
    for name, raw in refs.items():
        if raw is None or name == REPOSITORY_REF:
            continue
        if not name.startswith(_KNOWN):
            raise CorruptObjectError(
                name, "a ref of unknown kind (a damaged name?); garbage collection refuses to "
                "run until `versionstore verify` is clean")
        if name.startswith(("branch/", "tag/")):
            target = decode_ref_target(name, raw).snapshot
            if target is not None:
                snapshots.append(target)
        elif name.startswith("session/"):
            record = decode_session(name, raw)
            if staged is None or _session_of(name) in staged:
                snapshots.append(record.base)
        elif name.startswith("stage/"):
            entry = decode_staged(name, raw)
            if isinstance(entry, ChunkRef):
                chunks.add(entry.chunk_id)
    return snapshots, chunks


def _mark(roots: tuple[list[ObjectId], set[ObjectId]],
          snapshot_of: Callable[[ObjectId], Snapshot | None],
          node_of: Callable[[ObjectId], Node | None],
          page_of: Callable[[ObjectId], HistoryPage | None], marked: set[ObjectId],
          missing: set[ObjectId] | None = None, grafts: Grafts | None = None) -> set[ObjectId]:
    """Add to ``marked`` everything the roots reach that is not in it yet; return the additions.

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
                marked |= new
                added |= new
    return added


def reachable_objects(reader: ObjectReader, refs: Mapping[str, bytes],
                      missing: set[ObjectId] | None = None) -> set[ObjectId]:
    """Every stored object reachable from ``refs`` (a snapshot of the backend's refs).

    History is followed through the grafts among ``refs``. Referenced
    objects that are not stored are added to ``missing``.
    """
    marked: set[ObjectId] = set()
    _mark(_roots(refs, _staged_sessions(refs)), reader.snapshot_if_stored,
          reader.node_if_stored, reader.history_page_if_stored, marked, missing,
          grafts_from_refs(refs))
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
        for session in _staged_sessions(changed):
            record = session_ref(session)
            if record in now:
                roots[record] = now[record]
        rescued.update(_mark(_roots(roots), snapshot_of, node_of, page_of, set(marked)))
        return rescued

    return rescue


def _batches(ids: list[ObjectId]) -> Iterable[list[ObjectId]]:
    for start in range(0, len(ids), _BATCH):
        yield ids[start : start + _BATCH]


def collect_garbage(reader: ObjectReader, *, dry_run: bool = False,
                    older_than: datetime | None = None,
                    progress: Progress | None = None) -> GCSummary:
    """Delete every unreachable object (or, with ``dry_run``, only count them).

    Args:
        reader: the repository's object reader.
        dry_run: count what would be deleted and its bytes; delete nothing.
        older_than: spare unreachable snapshots written at or after this
            (timezone-aware) time, and everything they reach; on object
            storage also every object stored at or after it. ``None``: the
            backend's ``default_gc_grace()`` before now (none on LMDB and
            memory; ``DEFAULT_GC_GRACE``, one day, on object storage).
        progress: told ``(phase, done, total)`` while candidates are sized.
    """
    backend = reader.backend
    refs = backend.list_refs("")
    grafts = grafts_from_refs(refs)
    staged = _staged_sessions(refs)
    marked: set[ObjectId] = set()
    _mark(_roots(refs, staged), reader.snapshot_if_stored, reader.node_if_stored,
          reader.history_page_if_stored, marked, None, grafts)
    if older_than is None and (grace := backend.default_gc_grace()) is not None:
        older_than = datetime.now(UTC) - grace
    # Listed after the refs were read: what a writer stores later is not a candidate,
    # and on object storage neither is anything stored at or after ``older_than``.
    candidates = (backend.iter_object_ids() if older_than is None
                  else backend.iter_object_ids_written_before(older_than))
    doomed = [oid for oid in candidates if oid not in marked]
    sizes: dict[ObjectId, int] = {}
    recent: list[ObjectId] = []
    for batch in _batches(doomed):
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
    empty_records = {  # records of sessions with nothing staged: pruned, if still so
        name: (raw, stage_prefix(_session_of(name))) for name, raw in refs.items()
        if name.startswith("session/") and _session_of(name) not in staged
    }
    if not dry_run and (doomed or empty_records):
        backend.delete_objects(doomed, if_refs_are=refs, rescue=_rescuer(marked, rescued),
                               prune_refs=empty_records)
        _drop_stale_grafts(backend, refs, set(doomed) - rescued)
        backend.sync()
    gone = [oid for oid in doomed if oid not in rescued]
    return GCSummary(reachable=len(marked) + len(rescued), deleted=len(gone), dry_run=dry_run,
                     bytes_freed=sum(sizes.get(oid, 0) for oid in gone))


def _drop_stale_grafts(backend: Backend, refs: Mapping[str, bytes],
                       deleted: set[ObjectId]) -> None:
    """Delete the grafts of snapshots just collected (each only if unchanged)."""
    stale = {}
    for snapshot_id in deleted:
        name = graft_ref(snapshot_id)
        if name in refs:
            stale[name] = refs[name]
    if stale:
        backend.write(WriteBatch(delete_if_equal=stale))

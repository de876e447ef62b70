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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs

from versionstore.backend.protocol import ObjectGetter
from versionstore.codec import (
    decode_history_page,
    decode_node,
    decode_ref_target,
    decode_session,
    decode_snapshot,
    decode_staged,
)
from versionstore.ids import ObjectId, object_id_text
from versionstore.objects import ObjectReader
from versionstore.records import Branch, ChunkRef, HistoryPage, Leaf, Node, Snapshot

__all__ = ["GCSummary", "collect_garbage", "reachable_objects"]


@attrs.frozen
class GCSummary:
    """What a collection found and removed."""

    reachable: int
    deleted: int
    dry_run: bool


def _roots(refs: Mapping[str, bytes | None]) -> tuple[list[ObjectId], set[ObjectId]]:
    """Snapshots and chunks that ``refs`` point at directly."""
    snapshots: list[ObjectId] = []
    chunks: set[ObjectId] = set()
    for name, raw in refs.items():
        if raw is None:
            continue
        if name.startswith(("branch/", "tag/")):
            target = decode_ref_target(name, raw).snapshot
            if target is not None:
                snapshots.append(target)
        elif name.startswith("session/"):
            snapshots.append(decode_session(name, raw).base)
        elif name.startswith("stage/"):
            entry = decode_staged(name, raw)
            if isinstance(entry, ChunkRef):
                chunks.add(entry.chunk_id)
    return snapshots, chunks


def _mark(refs: Mapping[str, bytes | None], snapshot_of: Callable[[ObjectId], Snapshot | None],
          node_of: Callable[[ObjectId], Node | None],
          page_of: Callable[[ObjectId], HistoryPage | None], marked: set[ObjectId],
          missing: set[ObjectId] | None = None) -> set[ObjectId]:
    """Add to ``marked`` everything ``refs`` reach that is not in it yet; return the additions.

    Objects that are referenced but not stored go to ``missing`` (there is
    nothing of them to keep; ``verify`` reports them). A damaged object
    raises ``CorruptObjectError``: what it references cannot be known, so
    nothing may be collected.
    """
    snapshots, chunks = _roots(refs)
    added = chunks - marked
    marked |= added
    while snapshots:
        snapshot_id = snapshots.pop()
        if snapshot_id in marked:
            continue
        snapshot = snapshot_of(snapshot_id)
        if snapshot is None:
            if missing is not None:
                missing.add(snapshot_id)
            continue
        marked.add(snapshot_id)
        added.add(snapshot_id)
        snapshots.extend(snapshot.parents)
        page_id = snapshot.history
        while page_id is not None and page_id not in marked:
            page = page_of(page_id)
            if page is None:
                if missing is not None:
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
                if missing is not None:
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

    Referenced objects that are not stored are added to ``missing``.
    """
    marked: set[ObjectId] = set()
    _mark(refs, reader.snapshot_if_stored, reader.node_if_stored, reader.history_page_if_stored,
          marked, missing)
    return marked


def _rescuer(marked: set[ObjectId], rescued: set[ObjectId]
             ) -> Callable[[Mapping[str, bytes | None], ObjectGetter], set[ObjectId]]:
    """The sweep's rescue: what the refs changed since the mark phase reach, read atomically."""

    def rescue(changed: Mapping[str, bytes | None], get: ObjectGetter) -> set[ObjectId]:
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

        rescued.update(_mark(changed, snapshot_of, node_of, page_of, set(marked)))
        return rescued

    return rescue


def collect_garbage(reader: ObjectReader, *, dry_run: bool = False) -> GCSummary:
    """Delete every unreachable object (or, with ``dry_run``, only count them)."""
    backend = reader.backend
    refs = backend.list_refs("")
    marked = reachable_objects(reader, refs)
    doomed = [oid for oid in backend.iter_object_ids() if oid not in marked]
    rescued: set[ObjectId] = set()
    if not dry_run and doomed:
        backend.delete_objects(doomed, if_refs_are=refs, rescue=_rescuer(marked, rescued))
        backend.sync()
    deleted = len(doomed) - len(rescued.intersection(doomed))
    return GCSummary(reachable=len(marked) + len(rescued), deleted=deleted, dry_run=dry_run)

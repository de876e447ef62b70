"""Garbage collection: delete objects no version can reach.

Reachable means: from a branch, a tag, or a writable session (its base and
its staged chunks), through snapshot ancestry, tree nodes and chunk
references. Everything else — trees and chunks of snapshots that a
``reset_branch`` or ``delete_branch`` left behind, orphans of killed
processes — is garbage.

Safe alongside writers: the sweep deletes only if every ref is exactly as the
mark phase saw it, checked in the same atomic step as the deletion; any
commit or staged write in between changes a ref, and the collection starts
over. Commits write their objects in the same atomic step as their branch
move, and staged chunks together with their staging ref, so no object a
writer still needs is ever unreferenced.
"""

from __future__ import annotations

import attrs

from versionstore.codec import decode_ref_target, decode_session, decode_staged
from versionstore.errors import VersionStoreError
from versionstore.ids import ObjectId
from versionstore.objects import ObjectReader
from versionstore.records import Branch, ChunkRef, Leaf

__all__ = ["GCSummary", "collect_garbage", "reachable_objects"]

_ATTEMPTS = 20


@attrs.frozen
class GCSummary:
    """What a collection found and removed."""

    reachable: int
    deleted: int
    dry_run: bool


def reachable_objects(reader: ObjectReader, refs: dict[str, bytes]) -> set[ObjectId]:
    """Every object reachable from ``refs`` (a snapshot of the backend's refs)."""
    marked: set[ObjectId] = set()
    snapshots: list[ObjectId] = []
    for name, raw in refs.items():
        if name.startswith(("branch/", "tag/")):
            target = decode_ref_target(name, raw).snapshot
            if target is not None:
                snapshots.append(target)
        elif name.startswith("session/"):
            snapshots.append(decode_session(name, raw).base)
        elif name.startswith("stage/"):
            entry = decode_staged(name, raw)
            if isinstance(entry, ChunkRef):
                marked.add(entry.chunk_id)
    while snapshots:
        snapshot_id = snapshots.pop()
        if snapshot_id in marked:
            continue
        marked.add(snapshot_id)
        snapshot = reader.snapshot(snapshot_id)
        if snapshot.parent is not None:
            snapshots.append(snapshot.parent)
        _mark_tree(reader, snapshot.tree, marked)
    return marked


def _mark_tree(reader: ObjectReader, root: ObjectId | None, marked: set[ObjectId]) -> None:
    pending = [] if root is None or root in marked else [root]
    while pending:
        node_id = pending.pop()
        marked.add(node_id)
        node = reader.node(node_id)
        if isinstance(node, Branch):
            pending.extend(c for c in node.children if c not in marked)
        elif isinstance(node, Leaf):
            marked.update(e.chunk_id for e in node.entries if isinstance(e, ChunkRef))


def collect_garbage(reader: ObjectReader, *, dry_run: bool = False) -> GCSummary:
    """Delete every unreachable object (or, with ``dry_run``, only count them)."""
    backend = reader.backend
    for _ in range(_ATTEMPTS):
        refs = backend.list_refs("")
        marked = reachable_objects(reader, refs)
        doomed = [oid for oid in backend.iter_object_ids() if oid not in marked]
        if dry_run:
            return GCSummary(reachable=len(marked), deleted=len(doomed), dry_run=True)
        if backend.delete_objects(doomed, if_refs_are=refs):
            backend.sync()
            return GCSummary(reachable=len(marked), deleted=len(doomed), dry_run=False)
    raise VersionStoreError(
        f"garbage collection gave up after {_ATTEMPTS} attempts: the repository kept changing"
    )



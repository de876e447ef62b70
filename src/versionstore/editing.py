"""Editing history: merge, cherry-pick, revert and squash a branch.

Each operation reads the branch's tip, builds the new snapshot (its tree
from ``merge.three_way`` or an existing tree), and moves the branch with
*one* compare-and-swap batch that also stores the new tree nodes and
snapshot, checks that every snapshot the result depends on is still stored
(``requires``: a concurrent garbage collection cannot pull it away), and
writes the ops-log entry (``Refs.move_branch``). If another writer moved the
branch meanwhile, the swap fails, nothing is written, and the operation
starts again from the new tip — so neither change is lost; a conflict with
the new tip raises ``MergeConflictError`` and changes nothing.

Old snapshots are never changed: a squash or amend makes new snapshots, and
the replaced ones stay readable by id (and through tags) until garbage
collection removes those no ref reaches.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import attrs

from versionstore.backend.protocol import WriteBatch
from versionstore.codec import (
    checked_metadata,
    decode_chunk,
    decode_node,
    encode_chunk,
    encode_snapshot,
)
from versionstore.errors import (
    ConflictError,
    MergeConflictError,
    MissingObjectsError,
    NothingToCommitError,
    SnapshotNotFoundError,
)
from versionstore.grafts import GRAFT_PREFIX, Grafts, grafts_from_refs, parents_of
from versionstore.history import merge_base, with_history
from versionstore.ids import ObjectId, object_id_text
from versionstore.merge import Merged, check_on_conflict, merge_trees
from versionstore.objects import ObjectReader
from versionstore.records import ChunkRef, Entry, Node, Snapshot, VirtualRef
from versionstore.refs import Refs
from versionstore.session import INLINE_LIMIT
from versionstore.sizes import sizes_between, sizes_of

__all__ = ["HistoryEditor"]

_MAX_ATTEMPTS = 1000


class HistoryEditor:
    """Merge, cherry-pick, revert and squash, each landing by one compare-and-swap."""

    def __init__(self, reader: ObjectReader, refs: Refs) -> None:
        self.reader = reader
        self.refs = refs

    def _grafts(self) -> Grafts:
        """The parents history follows after ``expire_snapshots`` (``versionstore.grafts``).

        Every walk here follows them, as ``ancestry`` does: an expired
        snapshot may already be deleted by garbage collection.
        """
        return grafts_from_refs(self.refs.backend.list_refs(GRAFT_PREFIX))

    def _read(self, entry: Entry | None) -> bytes | None:
        if isinstance(entry, ChunkRef):
            return self.reader.chunks([entry.chunk_id], [entry.location])[0]
        if isinstance(entry, VirtualRef):
            # Only metadata documents are ever merged by value, and they are never
            # virtual: a virtual chunk changed on both sides is a conflict, unread.
            return None
        return entry

    def _merge(self, base: ObjectId | None, ours: ObjectId | None, theirs: ObjectId | None,
               on_conflict: str) -> Merged:
        """``merge.merge_trees``; chunk objects of the values it makes go with its nodes."""
        chunks: dict[ObjectId, bytes] = {}

        def write(value: bytes) -> Entry:
            if len(value) <= INLINE_LIMIT:
                return value
            chunk_id, frame = encode_chunk(value)
            chunks[chunk_id] = frame
            return ChunkRef(chunk_id=chunk_id, size=len(value))

        merged = merge_trees(self.reader.node, self._read, base, ours, theirs, on_conflict,
                             write)
        merged.nodes.update(chunks)
        return merged

    def _land(self, branch: str, raw_tip: bytes, snapshot: Snapshot,
              nodes: dict[ObjectId, bytes], decoded: dict[ObjectId, Node], *, kind: str,
              requires: list[ObjectId], source: ObjectId | None = None) -> ObjectId | None:
        """Store ``snapshot`` and move ``branch`` to it; ``None`` if the branch moved.

        Without totals of its own, ``snapshot`` gets them from its first
        parent's and the nodes where the two trees differ.
        """
        if snapshot.sizes is None:

            def load(node_id: ObjectId) -> Node:
                made = decoded.get(node_id)
                if made is not None:
                    return made
                data = nodes.get(node_id)
                return self.reader.node(node_id) if data is None else decode_node(
                    object_id_text(node_id), data)

            def read_chunks(chunk_ids: list[ObjectId]) -> list[bytes]:
                return [decode_chunk(object_id_text(i), nodes[i]) if i in nodes
                        else self.reader.chunks([i])[0] for i in chunk_ids]

            base = None if snapshot.parent is None else self.reader.snapshot(snapshot.parent)
            snapshot = attrs.evolve(snapshot, sizes=sizes_between(
                self.reader, base, snapshot.tree, load, read_chunks))
        snapshot, pages = with_history(self.reader, snapshot)
        snapshot_id, frame = encode_snapshot(snapshot)
        batch = WriteBatch(objects=[*nodes.items(), *((i, f) for i, f, _ in pages),
                                    (snapshot_id, frame)],
                           requires=requires)
        try:
            moved = self.refs.move_branch(branch, raw_tip, snapshot_id, batch, kind=kind,
                                          message=snapshot.message, source=source)
        except MissingObjectsError as exc:
            raise SnapshotNotFoundError(
                exc.object_ids[0], f"snapshot {exc.object_ids[0]} was garbage collected while "
                f"the {kind.replace('_', '-')} ran; nothing was changed",
            ) from exc
        if not moved:
            return None
        self.refs.backend.sync()
        self.reader.remember_nodes(decoded)
        return snapshot_id

    def _retrying(self, branch: str, attempt: Callable[[], ObjectId | None]) -> ObjectId:
        for _ in range(_MAX_ATTEMPTS):
            result = attempt()
            if result is not None:
                return result
        raise ConflictError(branch, [])  # pragma: no cover - endless contention

    # -- merge ---------------------------------------------------------------------------

    def merge(self, into: str, source: ObjectId, *, label: str, message: str | None,
              metadata: dict[str, Any] | None, on_conflict: str, fast_forward: bool
              ) -> ObjectId:
        """Merge snapshot ``source`` into branch ``into``; the branch's new tip.

        Merging an ancestor of the tip (the tip included) changes nothing. If
        the tip is an ancestor of ``source`` and ``fast_forward``, the branch
        moves to ``source`` (recorded in the ops log as a merge).
        """
        check_on_conflict(on_conflict)
        metadata = checked_metadata(metadata)

        def attempt() -> ObjectId | None:
            tip, raw_tip = self.refs.branch_tip(into)
            base = merge_base(self.reader, tip, source, self._grafts())
            if base == source:
                return tip
            text = message if message is not None else f"Merge {label} into {into}"
            if base == tip and fast_forward:
                moved = self.refs.move_branch(into, raw_tip, source, verify_target=True,
                                              kind="merge", message=text, source=source)
                if moved:
                    self.refs.backend.sync()
                return source if moved else None
            base_tree = None if base is None else self.reader.snapshot(base).tree
            tip_tree = self.reader.snapshot(tip).tree
            merged = self._merge(base_tree, tip_tree, self.reader.snapshot(source).tree,
                                 on_conflict)
            if merged.conflicts and on_conflict == "raise":
                raise MergeConflictError(into, merged.conflicts)
            snapshot = Snapshot(parents=(tip, source), tree=merged.root, message=text,
                                written_at=datetime.now(UTC), metadata=metadata)
            return self._land(into, raw_tip, snapshot, merged.nodes, merged.decoded,
                              kind="merge", requires=[source], source=source)

        return self._retrying(into, attempt)

    # -- cherry-pick and revert ----------------------------------------------------------------

    def apply_snapshot(self, branch: str, picked: ObjectId, *, revert: bool,
                       message: str | None, metadata: dict[str, Any] | None, on_conflict: str
                       ) -> ObjectId:
        """Apply the change ``picked`` made to its first parent (or its inverse) on ``branch``.

        Raises:
            MergeConflictError: with ``on_conflict="raise"``, if the change
                conflicts with the branch; nothing changed.
            NothingToCommitError: the result equals the branch's tip.
        """
        check_on_conflict(on_conflict)
        metadata = checked_metadata(metadata)
        snapshot = self.reader.snapshot(picked)
        parent = next(iter(parents_of(picked, snapshot, self._grafts())), None)
        parent_tree = None if parent is None else self.reader.snapshot(parent).tree
        base, theirs = (snapshot.tree, parent_tree) if revert else (parent_tree, snapshot.tree)
        kind = "revert" if revert else "cherry_pick"
        text = message
        if text is None:
            verb = "Revert" if revert else "Cherry-pick"
            text = f"{verb} {object_id_text(picked)}: {snapshot.message}"

        def attempt() -> ObjectId | None:
            tip, raw_tip = self.refs.branch_tip(branch)
            tip_tree = self.reader.snapshot(tip).tree
            merged = self._merge(base, tip_tree, theirs, on_conflict)
            if merged.conflicts and on_conflict == "raise":
                raise MergeConflictError(branch, merged.conflicts, kind.replace("_", "-"))
            root, nodes, decoded = merged.root, merged.nodes, merged.decoded
            if root == tip_tree:
                raise NothingToCommitError(
                    f"nothing to {kind.replace('_', '-')}: branch {branch!r} already has "
                    "that change")
            new = Snapshot(parents=(tip,), tree=root, message=text,
                           written_at=datetime.now(UTC), metadata=metadata)
            return self._land(branch, raw_tip, new, nodes, decoded, kind=kind,
                              requires=[picked], source=picked)

        return self._retrying(branch, attempt)

    # -- squash ---------------------------------------------------------------------------

    def squash(self, branch: str, since: ObjectId, *, message: str | None,
               metadata: dict[str, Any] | None) -> ObjectId:
        """Replace the snapshots after ``since`` on ``branch`` by one, whose parent is ``since``.

        ``since`` must be on the branch's first-parent line, before its tip.
        The new snapshot holds the tip's tree. Its message defaults to the
        squashed messages, oldest first; its metadata to the tip's.

        Raises:
            ValueError: ``since`` is not an earlier snapshot of the branch.
        """
        if metadata is not None:
            checked_metadata(metadata)

        def attempt() -> ObjectId | None:
            tip, raw_tip = self.refs.branch_tip(branch)
            grafts = self._grafts()
            squashed: list[Snapshot] = []
            current: ObjectId | None = tip
            while current is not None and current != since:
                snapshot = self.reader.snapshot(current)
                squashed.append(snapshot)
                current = next(iter(parents_of(current, snapshot, grafts)), None)
            if current is None or not squashed:
                raise ValueError(
                    f"snapshot {object_id_text(since)} is not an earlier snapshot on branch "
                    f"{branch!r}'s line; squash needs one of its ancestors")
            text = message if message is not None else "\n".join(
                s.message for s in reversed(squashed))
            new = Snapshot(parents=(since,), tree=squashed[0].tree, message=text,
                           written_at=datetime.now(UTC),
                           metadata=dict(squashed[0].metadata if metadata is None else metadata),
                           sizes=sizes_of(self.reader, squashed[0]))
            return self._land(branch, raw_tip, new, {}, {}, kind="squash", requires=[since])

        return self._retrying(branch, attempt)

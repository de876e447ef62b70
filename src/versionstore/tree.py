"""The key → value map of a snapshot: a persistent, copy-on-write B+tree.

Leaves hold sorted ``key -> entry`` runs; branches hold the first key of each
child. Nodes are immutable objects named by their content hash, so two
snapshots share every node they have in common:

* a commit rewrites only the nodes on the paths to the keys it changed —
  ``O(changes × depth)`` — never the rest of the tree or the array;
* opening a snapshot reads nothing but its root id; a lookup reads one node
  per level, ``O(log n)``;
* a diff skips every subtree whose id both sides share, so comparing two
  nearby snapshots costs in proportion to what changed.

Nodes split evenly when they grow past their limits. Deletions do not merge
nodes (a node that empties disappears); trees therefore stay shallow
and correct, at worst a little sparse after heavy deletion.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator, Sequence

from versionstore.codec import encode_node
from versionstore.ids import ObjectId
from versionstore.records import Branch, ChunkRef, Entry, Leaf, Node

__all__ = [
    "MAX_BRANCH_CHILDREN",
    "MAX_LEAF_ENTRIES",
    "TARGET_LEAF_BYTES",
    "Change",
    "NodeLoader",
    "apply_changes",
    "changed_entries",
    "iter_from",
    "lookup",
]

MAX_LEAF_ENTRIES = 256
MAX_BRANCH_CHILDREN = 256
TARGET_LEAF_BYTES = 64 << 10
_REF_COST = 32

NodeLoader = Callable[[ObjectId], Node]
#: A staged change: the new entry, or ``None`` to delete the key.
Change = tuple[str, Entry | None]


def lookup(load: NodeLoader, root: ObjectId | None, key: str) -> Entry | None:
    """The entry at ``key`` in the tree at ``root``, or ``None``."""
    node_id = root
    while node_id is not None:
        node = load(node_id)
        if isinstance(node, Leaf):
            i = bisect.bisect_left(node.keys, key)
            return node.entries[i] if i < len(node.keys) and node.keys[i] == key else None
        node_id = node.children[max(0, bisect.bisect_right(node.keys, key) - 1)]
    return None


def iter_from(load: NodeLoader, root: ObjectId | None, start: str) -> Iterator[tuple[str, Entry]]:
    """Every ``(key, entry)`` with ``key >= start``, in key order."""
    if root is None:
        return
    stack: list[tuple[Branch, int]] = []
    node = load(root)
    while isinstance(node, Branch):
        i = max(0, bisect.bisect_right(node.keys, start) - 1)
        stack.append((node, i))
        node = load(node.children[i])
    i = bisect.bisect_left(node.keys, start)
    yield from zip(node.keys[i:], node.entries[i:], strict=True)
    while stack:
        branch, i = stack.pop()
        if i + 1 < len(branch.children):
            stack.append((branch, i + 1))
            node = load(branch.children[i + 1])
            while isinstance(node, Branch):
                stack.append((node, 0))
                node = load(node.children[0])
            yield from zip(node.keys, node.entries, strict=True)


# -- writing ---------------------------------------------------------------------------


def _merge(keys: Sequence[str], entries: Sequence[Entry], changes: Sequence[Change]
           ) -> tuple[list[str], list[Entry]]:
    out_keys: list[str] = []
    out_entries: list[Entry] = []
    i = 0
    for key, entry in changes:
        j = bisect.bisect_left(keys, key, i)
        out_keys.extend(keys[i:j])
        out_entries.extend(entries[i:j])
        i = j + 1 if j < len(keys) and keys[j] == key else j
        if entry is not None:
            out_keys.append(key)
            out_entries.append(entry)
    out_keys.extend(keys[i:])
    out_entries.extend(entries[i:])
    return out_keys, out_entries


def _even_pieces(count: int, pieces: int) -> list[tuple[int, int]]:
    bounds = [count * p // pieces for p in range(pieces + 1)]
    return list(zip(bounds, bounds[1:], strict=False))


def _leaf_pieces(keys: list[str], entries: list[Entry]) -> list[tuple[int, int]]:
    size = sum(len(k) for k in keys) + sum(
        len(e) if isinstance(e, bytes)
        else _REF_COST if isinstance(e, ChunkRef) else _REF_COST + len(e.location)
        for e in entries
    )
    pieces = max(math.ceil(len(keys) / MAX_LEAF_ENTRIES), math.ceil(size / TARGET_LEAF_BYTES), 1)
    return _even_pieces(len(keys), min(pieces, len(keys)))


class _Writer:
    """Collects the nodes one ``apply_changes`` call creates."""

    def __init__(self, load: NodeLoader) -> None:
        self._load = load
        self.created: dict[ObjectId, tuple[Node, bytes]] = {}

    def load(self, node_id: ObjectId) -> Node:
        made = self.created.get(node_id)
        return made[0] if made is not None else self._load(node_id)

    def store(self, node: Node) -> ObjectId:
        node_id, data = encode_node(node)
        self.created[node_id] = (node, data)
        return node_id

    def leaves(self, keys: list[str], entries: list[Entry]) -> list[tuple[str, ObjectId]]:
        if not keys:
            return []
        return [
            (keys[a], self.store(Leaf(keys=tuple(keys[a:b]), entries=tuple(entries[a:b]))))
            for a, b in _leaf_pieces(keys, entries)
        ]

    def branches(self, items: list[tuple[str, ObjectId]], level: int
                 ) -> list[tuple[str, ObjectId]]:
        if not items:
            return []
        pieces = _even_pieces(len(items), math.ceil(len(items) / MAX_BRANCH_CHILDREN))
        return [
            (
                items[a][0],
                self.store(
                    Branch(
                        level=level,
                        keys=tuple(k for k, _ in items[a:b]),
                        children=tuple(c for _, c in items[a:b]),
                    )
                ),
            )
            for a, b in pieces
        ]

    def rewrite(self, node_id: ObjectId, changes: Sequence[Change]) -> list[tuple[str, ObjectId]]:
        node = self.load(node_id)
        if isinstance(node, Leaf):
            return self.leaves(*_merge(node.keys, node.entries, changes))
        groups: dict[int, list[Change]] = {}
        for change in changes:
            index = max(0, bisect.bisect_right(node.keys, change[0]) - 1)
            groups.setdefault(index, []).append(change)
        items: list[tuple[str, ObjectId]] = []
        for index, (first, child) in enumerate(zip(node.keys, node.children, strict=True)):
            if index in groups:
                items.extend(self.rewrite(child, groups[index]))
            else:
                items.append((first, child))
        return self.branches(items, node.level)


def apply_changes(
    load: NodeLoader, root: ObjectId | None, changes: Sequence[Change],
    *, decoded: dict[ObjectId, Node] | None = None,
) -> tuple[ObjectId | None, dict[ObjectId, bytes]]:
    """Apply key-sorted ``changes`` to the tree at ``root``.

    Returns the new root and the encoded nodes to store (only those the new
    tree reaches). The old tree is untouched. If ``decoded`` is given, it also
    receives those nodes as objects, so the caller can cache them rather than
    read and decode them back.
    """
    writer = _Writer(load)
    if root is None:
        level = 0
        items = writer.leaves([k for k, e in changes if e is not None],
                              [e for _, e in changes if e is not None])
    else:
        top = writer.load(root)
        level = top.level if isinstance(top, Branch) else 0
        items = writer.rewrite(root, changes) if changes else [("", root)]
    while len(items) > 1:
        level += 1
        items = writer.branches(items, level)
    if not items:
        return None, {}
    new_root = items[0][1]
    node = writer.load(new_root)
    while isinstance(node, Branch) and len(node.children) == 1:
        new_root = node.children[0]
        node = writer.load(new_root)
    keep = _reachable_created(writer, new_root)
    if decoded is not None:
        decoded.update((node_id, writer.created[node_id][0]) for node_id in keep)
    return new_root, keep


def _reachable_created(writer: _Writer, root: ObjectId) -> dict[ObjectId, bytes]:
    keep: dict[ObjectId, bytes] = {}
    pending = [root]
    while pending:
        node_id = pending.pop()
        made = writer.created.get(node_id)
        if made is None or node_id in keep:
            continue
        keep[node_id] = made[1]
        if isinstance(made[0], Branch):
            pending.extend(made[0].children)
    return keep


# -- comparing -------------------------------------------------------------------------


def _unshared_entries(load: NodeLoader, root: ObjectId | None, shared: set[ObjectId]
                      ) -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    pending = [] if root is None else [root]
    while pending:
        node_id = pending.pop()
        if node_id in shared:
            continue
        node = load(node_id)
        if isinstance(node, Leaf):
            entries.update(zip(node.keys, node.entries, strict=True))
        else:
            pending.extend(node.children)
    return entries


def changed_entries(
    load: NodeLoader, old: ObjectId | None, new: ObjectId | None
) -> dict[str, tuple[Entry | None, Entry | None]]:
    """Keys whose entries differ between two trees: ``key -> (old entry, new entry)``.

    Subtrees present in both trees (same id) are skipped without being read.
    """
    if old == new:
        return {}
    old_nodes = _node_ids(load, old)
    new_nodes = _node_ids(load, new)
    shared = old_nodes & new_nodes
    before = _unshared_entries(load, old, shared)
    after = _unshared_entries(load, new, shared)
    return {
        key: (before.get(key), after.get(key))
        for key in before.keys() | after.keys()
        if before.get(key) != after.get(key)
    }


def _node_ids(load: NodeLoader, root: ObjectId | None) -> set[ObjectId]:
    """Ids of every node under ``root``, reading branches only (never leaves)."""
    found: set[ObjectId] = set()
    pending = [] if root is None else [root]
    while pending:
        node_id = pending.pop()
        found.add(node_id)
        node = load(node_id)
        if isinstance(node, Branch):
            if node.level == 1:
                found.update(node.children)
            else:
                pending.extend(c for c in node.children if c not in found)
    return found

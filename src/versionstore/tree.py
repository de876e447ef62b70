"""The key → value map of a snapshot: a persistent, copy-on-write B+tree.

Leaves hold sorted ``key -> entry`` runs; branches hold the first key of each
child. Nodes are immutable objects named by their content hash, so two
snapshots share every node they have in common:

* a commit rewrites only the nodes on the paths to the keys it changed —
  ``O(changes × depth)`` — never the rest of the tree or the array;
* opening a snapshot reads nothing but its root id; a lookup reads one node
  per level, ``O(log n)``;
* a diff skips every subtree whose id both sides share, so comparing two
  nearby snapshots costs in proportion to what changed;
* a three-way merge (``merge_structure``) walks base, ours and theirs side
  by side and takes a subtree only one side changed by id, unread.

Nodes split evenly when they grow past their limits. Deletions do not merge
nodes (a node that empties disappears); trees therefore stay shallow
and correct, at worst a little sparse after heavy deletion.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from versionstore.codec import encode_node
from versionstore.ids import ObjectId
from versionstore.records import Branch, ChunkRef, Entry, Leaf, LocatedChunkRef, Node

__all__ = [
    "MAX_BRANCH_CHILDREN",
    "MAX_LEAF_ENTRIES",
    "TARGET_LEAF_BYTES",
    "Change",
    "ChangeObserver",
    "LeafIndex",
    "MergedTree",
    "NodeLoader",
    "RangeMerge",
    "apply_changes",
    "changed_entries",
    "iter_from",
    "lookup",
    "merge_structure",
]

MAX_LEAF_ENTRIES = 256
MAX_BRANCH_CHILDREN = 256
TARGET_LEAF_BYTES = 64 << 10
_REF_COST = 32

NodeLoader = Callable[[ObjectId], Node]
#: A staged change: the new entry, or ``None`` to delete the key.
Change = tuple[str, Entry | None]
#: Told the applied changes, in runs, as ``(key, entry before, entry after)`` (``None``: absent).
ChangeObserver = Callable[[list[tuple[str, Entry | None, Entry | None]]], None]
#: Observed changes are handed over in runs of at most this many (memory stays bounded).
_OBSERVE_RUN = 4096


class LeafIndex:
    """A leaf read for point lookups: its keys now, each entry built when first asked for.

    Decoding a whole leaf builds hundreds of entries (``codec.decode_node``);
    opening an array looks up one or two keys in each of a few leaves, some
    of them absent. The keys come from ``codec.decode_leaf_lookup`` (the frame
    verified whole); ``raw`` gives the entries' msgpack values, and is called
    only when a lookup first finds a key; ``build`` turns one value into its
    entry, checking it (``codec.leaf_entry``). Immutable as the leaf is: two
    threads building the same entry build equal ones.
    """

    __slots__ = ("_build", "_built", "_raw", "_values", "keys")

    def __init__(self, keys: tuple[str, ...], raw: Callable[[], Sequence[Any]],
                 build: Callable[[Any], Entry]) -> None:
        self.keys = keys
        self._raw = raw
        self._values: Sequence[Any] | None = None
        self._build = build
        self._built: list[Entry | None] = [None] * len(keys)

    def get(self, key: str) -> Entry | None:
        """The entry at ``key``, or ``None``.

        Raises:
            CorruptObjectError: the leaf's entries, or that entry, are malformed.
        """
        keys = self.keys
        i = bisect.bisect_left(keys, key)
        if i == len(keys) or keys[i] != key:
            return None
        entry = self._built[i]
        if entry is None:
            values = self._values
            if values is None:
                values = self._values = self._raw()
            entry = self._built[i] = self._build(values[i])
        return entry


def lookup(load: Callable[[ObjectId], Node | LeafIndex], root: ObjectId | None, key: str
           ) -> Entry | None:
    """The entry at ``key`` in the tree at ``root``, or ``None``.

    ``load`` gives each node; it may give a leaf as a ``LeafIndex``
    (``ObjectReader.lookup_node``), whose lookup builds only the entry found.
    """
    node_id = root
    while node_id is not None:
        node = load(node_id)
        if isinstance(node, LeafIndex):
            return node.get(key)
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


def _even_pieces(count: int, pieces: int) -> list[tuple[int, int]]:
    bounds = [count * p // pieces for p in range(pieces + 1)]
    return list(zip(bounds, bounds[1:], strict=False))


def _entry_cost(key: str, entry: Entry) -> int:
    if isinstance(entry, bytes):
        return len(key) + len(entry)
    if isinstance(entry, ChunkRef):
        return len(key) + _REF_COST
    return len(key) + _REF_COST + len(entry.location)


def _run_cost(keys: Sequence[str], entries: Sequence[Entry]) -> int:
    """``sum(map(_entry_cost, keys, entries))``, summing lengths in C where it can.

    A leaf's entries are most often all inline values (their lengths summed
    by two joins) or all plain chunk references; only the others are costed
    one by one.
    """
    try:  # all inline values (the joins raise TypeError otherwise): summed in C
        return len("".join(keys)) + len(b"".join(entries))  # type: ignore[arg-type]
    except TypeError:
        pass
    cost = sum(map(len, keys))
    refs = 0
    for entry in entries:
        kind = entry.__class__
        if kind is bytes:
            cost += len(entry)  # type: ignore[arg-type]
        elif kind is ChunkRef:
            refs += 1
        else:
            cost += _entry_cost("", entry)
    return cost + refs * _REF_COST


def _leaf_pieces(count: int, size: int) -> list[tuple[int, int]]:
    pieces = max(math.ceil(count / MAX_LEAF_ENTRIES), math.ceil(size / TARGET_LEAF_BYTES), 1)
    return _even_pieces(count, min(pieces, count))


#: A run of merged entries is cut into leaves once it holds twice this many entries
#: (or bytes): the first ``_FLUSH_*`` become leaves, the rest wait for what follows, so
#: a rewrite of any size holds at most a few dozen leaves' worth of entries.
_FLUSH_ENTRIES = 32 * MAX_LEAF_ENTRIES
_FLUSH_BYTES = 32 * TARGET_LEAF_BYTES


class _Changes:
    """The key-sorted changes, consumed once, with one change of look-ahead."""

    def __init__(self, changes: Iterable[Change]) -> None:
        self._iterator = iter(changes)
        self._next: Change | None = None
        self._advance()

    def _advance(self) -> None:
        self._next = next(self._iterator, None)

    def next_key(self) -> str | None:
        """The key of the next change; ``None`` when none is left."""
        return None if self._next is None else self._next[0]

    def below(self, bound: str | None) -> bool:
        """Whether a change is left whose key is below ``bound`` (``None``: no bound)."""
        return self._next is not None and (bound is None or self._next[0] < bound)

    def pop(self) -> Change:
        change = self._next
        assert change is not None
        self._advance()
        return change


class _LeafRun:
    """Entries of merged leaves, in key order, cut into leaves as the run grows."""

    def __init__(self, writer: _Writer) -> None:
        self._writer = writer
        self._keys: list[str] = []
        self._entries: list[Entry] = []
        self._size = 0
        self.items: list[tuple[str, ObjectId]] = []

    def extend(self, keys: Sequence[str], entries: Sequence[Entry]) -> None:
        if keys:
            self._keys.extend(keys)
            self._entries.extend(entries)
            self._size += _run_cost(keys, entries)
            self._cut_while_long()

    def add(self, key: str, entry: Entry) -> None:
        self._keys.append(key)
        self._entries.append(entry)
        self._size += _entry_cost(key, entry)
        self._cut_while_long()

    def _cut_while_long(self) -> None:
        while len(self._keys) >= 2 * _FLUSH_ENTRIES or self._size >= 2 * _FLUSH_BYTES:
            self._cut()

    def _cut(self) -> None:
        count = size = 0
        for key, entry in zip(self._keys, self._entries, strict=True):
            if count >= _FLUSH_ENTRIES or size >= _FLUSH_BYTES:
                break
            count += 1
            size += _entry_cost(key, entry)
        self.items.extend(self._writer.leaves(self._keys[:count], self._entries[:count], size))
        del self._keys[:count], self._entries[:count]
        self._size -= size

    def finish(self) -> list[tuple[str, ObjectId]]:
        self.items.extend(self._writer.leaves(self._keys, self._entries, self._size))
        return self.items


class _Writer:
    """Collects the nodes one ``apply_changes`` call creates.

    Branches are kept (there are few: one per ``MAX_BRANCH_CHILDREN`` leaves);
    leaves go to ``emit`` as they are made when one is given, so a rewrite of
    millions of keys never holds its leaves.
    """

    def __init__(self, load: NodeLoader,
                 emit: Callable[[ObjectId, bytes, Leaf], None] | None,
                 observe: ChangeObserver | None = None) -> None:
        self._load = load
        self._emit = emit
        self._observe = observe
        self.created: dict[ObjectId, tuple[Node, bytes]] = {}

    def load(self, node_id: ObjectId) -> Node:
        made = self.created.get(node_id)
        return made[0] if made is not None else self._load(node_id)

    def store(self, node: Node) -> ObjectId:
        node_id, data = encode_node(node)
        if self._emit is not None and isinstance(node, Leaf):
            self._emit(node_id, data, node)
        else:
            self.created[node_id] = (node, data)
        return node_id

    def leaves(self, keys: list[str], entries: list[Entry], size: int
               ) -> list[tuple[str, ObjectId]]:
        if not keys:
            return []
        return [
            (keys[a], self.store(Leaf(keys=tuple(keys[a:b]), entries=tuple(entries[a:b]))))
            for a, b in _leaf_pieces(len(keys), size)
        ]

    def branches(self, items: list[tuple[str, ObjectId]], level: int
                 ) -> list[tuple[str, ObjectId]]:
        if not items:
            return []
        pieces = _even_pieces(len(items), math.ceil(len(items) / MAX_BRANCH_CHILDREN))
        keys, children = zip(*items, strict=True)
        return [
            (keys[a], self.store(Branch(level=level, keys=keys[a:b], children=children[a:b])))
            for a, b in pieces
        ]

    def merge_leaf(self, leaf: Leaf | None, changes: _Changes, bound: str | None
                   ) -> list[tuple[str, ObjectId]]:
        """The leaves of ``leaf`` with every change below ``bound`` applied."""
        keys: Sequence[str] = () if leaf is None else leaf.keys
        entries: Sequence[Entry] = () if leaf is None else leaf.entries
        run = _LeafRun(self)
        observe = self._observe
        seen: list[tuple[str, Entry | None, Entry | None]] = []
        i = 0
        while changes.below(bound):
            key, entry = changes.pop()
            j = bisect.bisect_left(keys, key, i)
            run.extend(keys[i:j], entries[i:j])
            found = j < len(keys) and keys[j] == key
            if observe is not None:
                seen.append((key, entries[j] if found else None, entry))
                if len(seen) >= _OBSERVE_RUN:
                    observe(seen)
                    seen = []
            i = j + 1 if found else j
            if entry is not None:
                if found and entry.__class__ is LocatedChunkRef and entry == entries[j]:
                    entry = entries[j]  # the same chunk, already kept: an identical rewrite
                run.add(key, entry)
        if seen and observe is not None:
            observe(seen)
        run.extend(keys[i:], entries[i:])
        return run.finish()

    def rewrite(self, node_id: ObjectId, changes: _Changes, bound: str | None
                ) -> list[tuple[str, ObjectId]]:
        """Rewrite the subtree at ``node_id`` with every change below ``bound``."""
        node = self.load(node_id)
        if isinstance(node, Leaf):
            return self.merge_leaf(node, changes, bound)
        keys, children = node.keys, node.children
        items: list[tuple[str, ObjectId]] = []
        index, last = 0, len(keys) - 1
        while index <= last:
            pending = changes.next_key()
            if pending is None or (bound is not None and pending >= bound):
                items.extend(zip(keys[index:], children[index:], strict=True))
                break
            # The child holding the next change; the ones before it are kept as they are.
            target = max(index, bisect.bisect_right(keys, pending, index) - 1)
            upper = bound if target == last else keys[target + 1]
            rewritten = self.rewrite(children[target], changes, upper)
            if (index == 0 and len(rewritten) == 1 and not changes.below(bound)
                    and len(keys) <= MAX_BRANCH_CHILDREN):
                # Every change was in this child, which stays one node (most commits):
                # the branch ``branches`` would make, built by slicing.
                key, child = rewritten[0]
                branch = Branch(level=node.level,
                                keys=(*keys[:target], key, *keys[target + 1:]),
                                children=(*children[:target], child, *children[target + 1:]))
                return [(branch.keys[0], self.store(branch))]
            items.extend(zip(keys[index:target], children[index:target], strict=True))
            items.extend(rewritten)
            index = target + 1
        return self.branches(items, node.level)


def apply_changes(
    load: NodeLoader, root: ObjectId | None, changes: Iterable[Change],
    *, decoded: dict[ObjectId, Node] | None = None,
    emit: Callable[[ObjectId, bytes, Leaf], None] | None = None,
    observe: ChangeObserver | None = None,
) -> tuple[ObjectId | None, dict[ObjectId, bytes]]:
    """Apply key-sorted ``changes`` to the tree at ``root``, streaming.

    ``changes`` is read once, in order, and never held: memory grows with the
    number of leaves rewritten divided by ``MAX_BRANCH_CHILDREN``, not with
    the number of changes (``docs/benchmarks.md``, "Huge commits").

    Returns the new root and the encoded nodes to store (only those the new
    tree reaches). With ``emit``, each new leaf is handed to it as
    ``(id, encoded, leaf)`` instead, and the nodes returned are only the
    branches; every leaf handed over is part of the new tree. The old tree is
    untouched. If ``decoded`` is given, it also receives the returned nodes as
    objects, so the caller can cache them rather than read and decode them back.
    ``observe`` is told every change with the entry it replaces (the running
    size totals are kept this way, ``versionstore.sizes``).
    """
    writer = _Writer(load, emit, observe)
    stream = _Changes(changes)
    if root is None:
        level = 0
        items = writer.merge_leaf(None, stream, None)
    else:
        top = writer.load(root)
        level = top.level if isinstance(top, Branch) else 0
        items = writer.rewrite(root, stream, None) if stream.below(None) else [("", root)]
    while len(items) > 1:
        level += 1
        items = writer.branches(items, level)
    if not items:
        return None, {}
    new_root = items[0][1]
    made = writer.created.get(new_root)
    while made is not None and isinstance(made[0], Branch) and len(made[0].children) == 1:
        new_root = made[0].children[0]
        made = writer.created.get(new_root)
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
        if isinstance(made[0], Branch):  # only the children made here: a set operation
            pending.extend(writer.created.keys() & made[0].children)
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


# -- three-way structural merge ----------------------------------------------------------

#: A merged key range: given base's, ours' and theirs' entries over one range, the
#: range's merged entries (sorted by key).
RangeMerge = Callable[[list[tuple[str, Entry]], list[tuple[str, Entry]],
                       list[tuple[str, Entry]]], list[tuple[str, Entry]]]


class MergedTree:
    """What ``merge_structure`` made: the root, the nodes to store, and where it looked.

    ``taken`` lists the first keys of the subtrees one side alone changed and
    that were taken whole, without being read (``(first key, "ours" or
    "theirs")``).
    """

    def __init__(self, root: ObjectId | None, nodes: dict[ObjectId, bytes],
                 decoded: dict[ObjectId, Node], taken: list[tuple[str, str]]) -> None:
        self.root = root
        self.nodes = nodes
        self.decoded = decoded
        self.taken = taken


def merge_structure(load: NodeLoader, base: ObjectId, ours: ObjectId, theirs: ObjectId,
                    merge_range: RangeMerge) -> MergedTree | None:
    """Merge two trees derived from ``base`` by walking the three side by side.

    Where the three trees have the same shape (the same separator keys at
    the same level, as copy-on-write commits of a common base mostly keep
    them), a child that only one side changed is taken from that side by
    id, unread; a child both sides changed is descended into, and at the
    bottom (or wherever the shapes part) its key range is merged by
    ``merge_range``. The cost is that of the subtrees *both* sides changed,
    plus the branch nodes above them — not of the changes each side made
    alone, nor of the tree. Returns ``None`` if the roots themselves differ
    in shape (the caller merges key by key then).
    """
    writer = _Writer(load, None)
    taken: list[tuple[str, str]] = []

    def entries(node_id: ObjectId) -> list[tuple[str, Entry]]:
        return list(iter_from(writer.load, node_id, ""))

    def walk(first: str, b: ObjectId, o: ObjectId, t: ObjectId) -> list[tuple[str, ObjectId]]:
        if o == t or b == t:
            if o != b:
                taken.append((first, "ours"))
            return [(first, o)]
        if b == o:
            taken.append((first, "theirs"))
            return [(first, t)]
        nb, no, nt = writer.load(b), writer.load(o), writer.load(t)
        if (isinstance(nb, Branch) and isinstance(no, Branch) and isinstance(nt, Branch)
                and nb.level == no.level == nt.level and nb.keys == no.keys == nt.keys):
            items: list[tuple[str, ObjectId]] = []
            for key, cb, co, ct in zip(nb.keys, nb.children, no.children, nt.children,
                                       strict=True):
                items.extend(walk(key, cb, co, ct))
            if [c for _, c in items] == list(no.children):
                return [(first, o)]
            return writer.branches(items, no.level)
        if isinstance(nb, Leaf) and isinstance(no, Leaf) and isinstance(nt, Leaf):
            merged = merge_range(list(zip(nb.keys, nb.entries, strict=True)),
                                 list(zip(no.keys, no.entries, strict=True)),
                                 list(zip(nt.keys, nt.entries, strict=True)))
        else:  # the shapes part here: merge the whole range key by key
            merged = merge_range(entries(b), entries(o), entries(t))
        keys, values = [k for k, _ in merged], [e for _, e in merged]
        return writer.leaves(keys, values, sum(map(_entry_cost, keys, values)))

    top = [writer.load(n) for n in (base, ours, theirs)]
    if not (all(isinstance(n, Leaf) for n in top) or (
            all(isinstance(n, Branch) for n in top) and len({n.keys for n in top}) == 1
            and len({n.level for n in top if isinstance(n, Branch)}) == 1)):
        return None
    items = walk(top[1].keys[0], base, ours, theirs)
    level = top[1].level if isinstance(top[1], Branch) else 0
    while len(items) > 1:
        level += 1
        items = writer.branches(items, level)
    if not items:
        return MergedTree(None, {}, {}, taken)
    root = items[0][1]
    node = writer.load(root)
    while isinstance(node, Branch) and len(node.children) == 1:
        root = node.children[0]
        node = writer.load(root)
    keep = _reachable_created(writer, root)
    decoded = {node_id: writer.created[node_id][0] for node_id in keep}
    return MergedTree(root, keep, decoded, taken)

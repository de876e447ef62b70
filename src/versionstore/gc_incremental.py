"""Incremental garbage collection: reference counts kept in the backend's ledger.

The full collection (``versionstore.gc``) marks everything the refs reach
and lists every stored object, so its cost grows with the repository even
when nothing is to be deleted. This one keeps, in the backend's ledger
(``versionstore.backend.ledger``), a *count* per live object — how many
roots and live objects point at it — and the roots and grafts the previous
run saw. A run then:

1. reads the ledger's header and the journal's end, then every ref that
   can root something — all but the ops log, which grows with history and
   roots nothing (``gc_roots.UNROOTED_REFS``) — and the counts of what the
   journal and the roots name, in one pass in key order;
2. diffs the roots (and grafts) with the header's: each root or edge that
   appeared adds one to its target — an object going from zero to one
   becomes live and adds one to each of its children — and then each that
   disappeared takes one away — an object reaching zero dies and takes one
   from each child. Increments all come first, so nothing dies that the
   new refs keep; content addressing makes the graph acyclic, so a count
   of zero means unreachable. A commit's tree shares all but its changed
   path with its parent's (copy-on-write), so this touches O(changes);
3. the *candidates* are the objects that died, the objects stored since
   the previous run (the journal) and those it kept pending — every stored
   object that is not live is among them — less those with a non-zero count;
4. sizes them, spares ``older_than``'s recent snapshots and what they
   reach, exactly as the full collection does, and sweeps: one atomic step
   that deletes the rest, rescues what refs changed since step 1 reach
   (as ``versionstore.gc`` does, stopping at live objects), and writes the
   new counts, pending set and header — only if the header is still the one
   step 1 read (a concurrent collection makes this one start over).

What it deletes is exactly what the full collection would delete from the
same refs: both delete the stored objects the refs do not reach, less the
same grace and rescue sets (``tests/test_gc_incremental.py`` checks this on
random histories). Without a ledger header — the first run, a repository
from before ledgers, ``full=True``, or a ledger that does not match what is
stored (an object it counts was deleted by other means) — the run counts
everything from the roots and lists every object, like the full collection,
and writes a fresh ledger.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from itertools import compress
from operator import attrgetter, ne

from versionstore.backend.ledger import CountGetter, Ledger, LedgerRescue, LedgerUpdate
from versionstore.backend.protocol import ObjectGetter
from versionstore.codec import (
    KIND_SNAPSHOT,
    decode_gc_ledger,
    decode_history_page,
    decode_node,
    decode_snapshot,
    encode_gc_ledger,
    frame_kind,
)
from versionstore.errors import CorruptObjectError, UnsupportedFormatError
from versionstore.gc_roots import (
    UNROOTED_REFS,
    GCSummary,
    Progress,
    batches,
    drop_stale_grafts,
    empty_records,
    roots_of,
    staged_sessions,
)
from versionstore.grafts import Grafts, grafts_from_refs, parents_of
from versionstore.ids import ObjectId
from versionstore.objects import ObjectReader
from versionstore.records import Branch, ChunkRef, GCLedger
from versionstore.refs import session_ref

__all__ = ["collect_incrementally"]

#: Object kinds as the ledger's roots record them (what an edge points at).
SNAPSHOT, NODE, PAGE, CHUNK = 0, 1, 2, 3
Edge = tuple[ObjectId, int]
#: Collections that lose the race for the ledger this many times in a row give up.
_ATTEMPTS = 5
#: A node differing from its predecessor in at most this many positions is diffed by them.
_FEW_CHANGES = 32
_CHUNK_ID = attrgetter("chunk_id")


class _StaleLedger(Exception):
    """The ledger counts an object that is not stored (deleted by other means): rebuild."""


def _root_edges(refs: Mapping[str, bytes | None], staged: set[str] | None) -> Counter[Edge]:
    snapshots, chunks = roots_of(refs, staged)
    edges: Counter[Edge] = Counter((s, SNAPSHOT) for s in snapshots)
    edges.update((c, CHUNK) for c in chunks)
    return edges


class _Counts:
    """Reference counts: the ledger's (``base``, read lazily) plus this run's changes.

    With ``fresh`` the ledger is ignored (every count starts at zero): a rebuild.

    Tree nodes born with a predecessor count only the children it lacks
    (``_born_node``): after one small commit, the new nodes add a count to
    what changed, not to every child they hold — the work is the changed
    keys, not the size of the leaves and branches they landed in.
    """

    def __init__(self, reader: ObjectReader, ledger: Ledger, *, fresh: bool,
                 grafts: Grafts) -> None:
        self.reader, self.ledger, self.fresh, self.grafts = reader, ledger, fresh, grafts
        self.base: dict[ObjectId, int] = {}
        self.delta: dict[ObjectId, int] = {}
        self.born = 0  # objects that went from zero to live
        self.died: list[ObjectId] = []
        #: Node -> predecessor as the ledger has it (read lazily), and this run's changes.
        self.base_links: dict[ObjectId, ObjectId | None] = {}
        self.links: dict[ObjectId, ObjectId | None] = {}
        self.link_changes: dict[ObjectId, ObjectId | None] = {}
        #: Where to look for a new node's predecessor: the parent snapshot's tree root.
        self.hints: dict[ObjectId, ObjectId] = {}
        #: Hinted roots found live (checked once per run: see ``_predecessor``).
        self.live_roots: set[ObjectId] = set()

    def load(self, ids: Iterable[ObjectId]) -> None:
        if self.fresh:
            return
        wanted = sorted({i for i in ids if i not in self.base})  # key order: nearby pages
        for start in range(0, len(wanted), 4096):
            part = wanted[start : start + 4096]
            self.base.update(zip(part, self.ledger.counts(part), strict=True))

    def count(self, object_id: ObjectId) -> int:
        return self.base.get(object_id, 0) + self.delta.get(object_id, 0)

    def link(self, leaf: ObjectId) -> ObjectId | None:
        """Tree node ``leaf``'s predecessor as of now."""
        if leaf in self.links:
            return self.links[leaf]
        if self.fresh:
            return None
        if leaf not in self.base_links:
            self.base_links[leaf] = self.ledger.links([leaf])[0]
        return self.base_links[leaf]

    def set_link(self, leaf: ObjectId, before: ObjectId | None, *, born: bool = False) -> None:
        """Link ``leaf`` to predecessor ``before`` (``None``: unlink).

        A node being born has no link in the ledger (a dying node loses its
        own and its successors'), so its old link is not read.
        """
        if born and leaf not in self.links:
            self.base_links.setdefault(leaf, None)
        old = self.link(leaf)
        if old == before:
            return
        self.links[leaf] = before
        if leaf not in self.link_changes:
            self.link_changes[leaf] = old
        if self.link_changes[leaf] == before:
            del self.link_changes[leaf]  # back to what the ledger has

    def successors(self, leaf: ObjectId) -> list[ObjectId]:
        """The tree nodes whose predecessor is ``leaf`` now."""
        found = set() if self.fresh else set(self.ledger.successors(leaf))
        found.update(i for i, before in self.links.items() if before == leaf)
        return [i for i in found if self.link(i) == leaf]

    def node_children(self, node_id: ObjectId) -> list[Edge]:
        """A tree node's children: child nodes of a branch, chunks of a leaf (each once)."""
        ids, kind = self._child_ids(node_id)
        return [(c, kind) for c in dict.fromkeys(ids) if c is not None]

    def _child_ids(self, node_id: ObjectId) -> tuple[Sequence[ObjectId | None], int]:
        """A node's children in entry order; a leaf's entries without a chunk give ``None``."""
        node = self.reader.node_if_stored(node_id)
        if node is None:
            raise _StaleLedger(node_id)
        if isinstance(node, Branch):
            return node.children, NODE
        try:  # every entry a chunk reference, as a rule: one pass in C
            return tuple(map(_CHUNK_ID, node.entries)), CHUNK
        except AttributeError:  # inline values or virtual references among them
            return tuple(e.chunk_id if isinstance(e, ChunkRef) else None
                         for e in node.entries), CHUNK

    def _children_not_in(self, node_id: ObjectId, other: ObjectId) -> list[Edge]:
        """``node_id``'s children that node ``other`` does not hold (``_born_node``'s diff).

        A node rewritten by a small commit differs from its predecessor in a
        few positions: the two id sequences are compared position by
        position (in C), and only the ids that differ are looked for in the
        predecessor. A child the predecessor lacks differs from it at its
        position, so it is among them: the result is the set difference.
        Nodes of different lengths, or with many differences, are diffed as sets.
        """
        ids, kind = self._child_ids(node_id)
        held = self._child_ids(other)[0]
        if len(ids) == len(held):
            changed = list(compress(ids, map(ne, ids, held)))
            if len(changed) <= _FEW_CHANGES:
                return [(c, kind) for c in dict.fromkeys(changed)
                        if c is not None and c not in held]
        held_set = set(held)
        return [(c, kind) for c in dict.fromkeys(ids) if c is not None and c not in held_set]

    def children(self, edge: Edge) -> list[Edge]:
        """What ``edge``'s object points at (as ``versionstore.gc``'s mark follows it)."""
        object_id, kind = edge
        if kind == CHUNK:
            return []
        reader = self.reader
        if kind == SNAPSHOT:
            snapshot = reader.snapshot_if_stored(object_id)
            if snapshot is None:
                raise _StaleLedger(object_id)
            found = [(p, SNAPSHOT) for p in dict.fromkeys(
                parents_of(object_id, snapshot, self.grafts))]
            if snapshot.history is not None:
                found.append((snapshot.history, PAGE))
            if snapshot.tree is not None:
                found.append((snapshot.tree, NODE))
            return found
        if kind == PAGE:
            page = reader.history_page_if_stored(object_id)
            if page is None:
                raise _StaleLedger(object_id)
            return [] if page.previous is None else [(page.previous, PAGE)]
        return self.node_children(object_id)

    def _hint_tree(self, snapshot_id: ObjectId) -> None:
        """A born snapshot's tree looks for predecessors in its first parent's tree."""
        snapshot = self.reader.snapshot_if_stored(snapshot_id)
        if snapshot is None or snapshot.tree is None:
            return
        parents = parents_of(snapshot_id, snapshot, self.grafts)
        above = None if not parents else self.reader.snapshot_if_stored(parents[0])
        if above is not None and above.tree is not None and above.tree != snapshot.tree:
            self.hints.setdefault(snapshot.tree, above.tree)

    def _predecessor(self, node_id: ObjectId) -> ObjectId | None:
        """The node of the hinted older tree at ``node_id``'s level and first key, if live.

        The older tree is live as a whole or not at all: trees are counted
        one at a time, oldest first (``increment``), and nothing dies while
        counts only grow, so a live root means every node under it is live.
        """
        root = self.hints.get(node_id)
        node = self.reader.node_if_stored(node_id)
        if root is None or node is None:
            return None
        if root not in self.live_roots:
            self.load([root])
            if self.count(root) == 0:
                return None
            self.live_roots.add(root)
        level = node.level if isinstance(node, Branch) else 0
        key = node.keys[0]
        found_id, found = root, self.reader.node_if_stored(root)
        while isinstance(found, Branch) and found.level > level:
            index = max(bisect.bisect_right(found.keys, key) - 1, 0)
            found_id = found.children[index]
            found = self.reader.node_if_stored(found_id)
        if found is None or found_id == node_id or (
                found.level if isinstance(found, Branch) else 0) != level:
            return None
        return found_id

    def _born_node(self, node_id: ObjectId) -> list[Edge]:
        """The edges a newly live tree node adds: to the children its predecessor lacks.

        A node owes a count to a child only where its predecessor — a live
        node of the same level it was rewritten from, linked in the ledger —
        does not hold that child. So every live object keeps a non-zero
        count: follow a node's predecessors while they hold the child; the
        last of them counts it. After a small commit, the new nodes count
        the children that changed, not every child they hold. A dying
        predecessor hands its counts of shared children to its successors
        (``_dying_node``).
        """
        before = self._predecessor(node_id)
        self.set_link(node_id, before, born=True)
        children = (self.node_children(node_id) if before is None
                    else self._children_not_in(node_id, before))
        root = self.hints.get(node_id)
        if root is not None:
            for child, kind in children:
                if kind == NODE:
                    self.hints.setdefault(child, root)
        return children

    def _dying_node(self, node_id: ObjectId) -> tuple[list[Edge], list[Edge]]:
        """What a tree node's death changes: (counts its successors take, counts it drops)."""
        held = set(self._child_ids(node_id)[0])
        taken: list[Edge] = []
        for successor in self.successors(node_id):
            taken.extend(c for c in self.node_children(successor) if c[0] in held)
            self.set_link(successor, None)
        before = self.link(node_id)
        self.set_link(node_id, None)
        children = (self.node_children(node_id) if before is None
                    else self._children_not_in(node_id, before))
        return taken, children

    def increment(self, edges: list[Edge]) -> None:
        """Add one per edge; objects that become live add their own edges.

        The trees of newly live snapshots wait until no snapshot is left to
        expand, then are counted one at a time, the last found (the oldest)
        first: a commit's tree then finds the tree of its parent — live by
        then, even if it is new too — to take its nodes' predecessors from.
        """
        trees: list[Edge] = []
        while True:
            while edges:
                self.load(i for i, _ in edges)
                following: list[Edge] = []
                delta = self.delta
                for edge in edges:
                    object_id = edge[0]
                    before = self.count(object_id)
                    delta[object_id] = delta.get(object_id, 0) + 1
                    if before == 0:
                        self.born += 1
                        if edge[1] == NODE:
                            following.extend(self._born_node(object_id))
                            continue
                        children = self.children(edge)
                        if edge[1] == SNAPSHOT:
                            self._hint_tree(object_id)
                            trees.extend(c for c in children if c[1] == NODE)
                            children = [c for c in children if c[1] != NODE]
                        following.extend(children)
                edges = following
            if not trees:
                return
            edges = [trees.pop()]

    def decrement(self, edges: list[Edge]) -> None:
        """Take one per edge; objects that reach zero die and take their own edges."""
        while edges:
            self.load(i for i, _ in edges)
            following: list[Edge] = []
            delta = self.delta
            for edge in edges:
                object_id = edge[0]
                delta[object_id] = delta.get(object_id, 0) - 1
                after = self.count(object_id)
                if after < 0:
                    raise _StaleLedger(object_id)
                if after == 0:
                    self.died.append(object_id)
                    if edge[1] == NODE:
                        taken, dropped = self._dying_node(object_id)
                        # Successors take their counts first: no shared child dies.
                        self.increment(taken)
                        following.extend(dropped)
                    else:
                        following.extend(self.children(edge))
            edges = following


def _header(raw: bytes | None) -> GCLedger | None:
    if raw is None:
        return None
    try:
        return decode_gc_ledger(raw)
    except (CorruptObjectError, UnsupportedFormatError):
        return None  # only a cache of what the refs say: rebuilt from them


def _recount(counts: _Counts, header: GCLedger | None, roots: Counter[Edge],
             grafts: Grafts) -> None:
    """Bring the counts from the refs ``header`` saw to ``roots`` and ``grafts``."""
    if header is None:
        counts.increment(list(roots.elements()))
        return
    old_roots: Counter[Edge] = Counter({(i, k): n for i, k, n in header.roots})
    old_grafts = dict(header.grafts)
    adds: list[Edge] = []
    removes: list[Edge] = []
    regrafted = [s for s in old_grafts.keys() | grafts.keys()
                 if old_grafts.get(s) != grafts.get(s)]
    counts.load(regrafted)
    for snapshot_id in regrafted:
        if counts.count(snapshot_id) == 0:
            continue  # not live: its edges were never counted
        snapshot = counts.reader.snapshot_if_stored(snapshot_id)
        if snapshot is None:
            raise _StaleLedger(snapshot_id)
        old = dict.fromkeys(old_grafts.get(snapshot_id, snapshot.parents))
        new = dict.fromkeys(grafts.get(snapshot_id, snapshot.parents))
        adds.extend((p, SNAPSHOT) for p in new if p not in old)
        removes.extend((p, SNAPSHOT) for p in old if p not in new)
    for edge in roots.keys() | old_roots.keys():
        change = roots[edge] - old_roots[edge]
        (adds if change > 0 else removes).extend([edge] * abs(change))
    counts.increment(adds)
    counts.decrement(removes)


def _spare_recent(counts: _Counts, recent: list[ObjectId]) -> set[ObjectId]:
    """What unreachable snapshots inside the grace period reach (and are not live)."""
    spared: set[ObjectId] = set()
    pending: list[Edge] = [(s, SNAPSHOT) for s in recent]
    while pending:
        edge = pending.pop()
        if edge[0] in spared:
            continue
        counts.load([edge[0]])
        if counts.count(edge[0]):
            continue
        try:
            following = counts.children(edge)
        except _StaleLedger:
            continue  # not stored: nothing of it to keep (verify reports it)
        spared.add(edge[0])
        pending.extend(following)
    return spared


def _rescuer(counts: _Counts, spared: set[ObjectId], rescued: set[ObjectId]) -> LedgerRescue:
    """The sweep's rescue: what the refs changed since step 1 reach, read atomically.

    A walk from the changed refs that stops at live objects (everything they
    reach is live), reading objects and — for ids this run did not load —
    counts inside the sweep's atomic step. Like ``versionstore.gc``'s rescue
    it ignores grafts, which can only keep more.
    """

    def rescue(changed: Mapping[str, bytes | None], now: Mapping[str, bytes],
               get: ObjectGetter, stored_counts: CountGetter) -> set[ObjectId]:
        roots = dict(changed)
        for session in staged_sessions(changed):
            record = session_ref(session)
            if record in now:
                roots[record] = now[record]
        snapshots, chunks = roots_of(roots)
        pending: list[Edge] = [(s, SNAPSHOT) for s in snapshots]
        pending.extend((c, CHUNK) for c in chunks)

        def live(object_id: ObjectId) -> bool:
            base = counts.base.get(object_id)
            if base is None:
                base = 0 if counts.fresh else stored_counts([object_id])[0]
            return base + counts.delta.get(object_id, 0) > 0

        while pending:
            object_id, kind = pending.pop()
            if object_id in rescued or object_id in spared or live(object_id):
                continue
            if kind == CHUNK:
                rescued.add(object_id)
                continue
            data = get([object_id])[0]
            if data is None:
                continue
            rescued.add(object_id)
            pending.extend(_stored_children(object_id, kind, data))
        return rescued

    return rescue


def _stored_children(object_id: ObjectId, kind: int, data: bytes) -> list[Edge]:
    """An object's children from its bytes, its stored parents included (no grafts)."""
    name = object_id.hex()
    if kind == SNAPSHOT:
        snapshot = decode_snapshot(name, data)
        found = [(p, SNAPSHOT) for p in snapshot.parents]
        if snapshot.history is not None:
            found.append((snapshot.history, PAGE))
        if snapshot.tree is not None:
            found.append((snapshot.tree, NODE))
        return found
    if kind == PAGE:
        page = decode_history_page(name, data)
        return [] if page.previous is None else [(page.previous, PAGE)]
    node = decode_node(name, data)
    if isinstance(node, Branch):
        return [(c, NODE) for c in node.children]
    return [(e.chunk_id, CHUNK) for e in node.entries if isinstance(e, ChunkRef)]


def collect_incrementally(reader: ObjectReader, ledger: Ledger, *, dry_run: bool = False,
                          older_than: datetime | None = None, progress: Progress | None = None,
                          rebuild: bool = False) -> GCSummary | None:
    """Collect garbage from the ledger (see the module docstring).

    Args:
        reader: the repository's object reader.
        ledger: the reader's backend, as a ``Ledger``.
        dry_run: count what would be deleted; change nothing (not even the ledger).
        older_than: as ``versionstore.gc.collect_garbage``.
        progress: told ``(phase, done, total)`` while candidates are sized.
        rebuild: ignore the ledger's counts: count from the roots and list
            every object (a full collection), then write a fresh ledger.

    Returns:
        The summary, or ``None`` when no ledger could be used: the repository
        references objects that are not stored (``verify`` reports them), or
        other collections kept winning the race for the ledger. The caller
        then runs the full collection, which needs no ledger.
    """
    for _ in range(_ATTEMPTS):
        try:
            summary = _collect(reader, ledger, dry_run=dry_run, older_than=older_than,
                               progress=progress, rebuild=rebuild)
        except _StaleLedger:
            if rebuild:
                return None
            rebuild = True
            continue
        if summary is not None:
            return summary
    return None


def _collect(reader: ObjectReader, ledger: Ledger, *, dry_run: bool,
             older_than: datetime | None, progress: Progress | None,
             rebuild: bool) -> GCSummary | None:
    backend = reader.backend
    raw, journal_end = ledger.read_ledger()
    stored_header = _header(raw)
    header = None if rebuild else stored_header
    refs = backend.list_refs_except(UNROOTED_REFS)
    staged = staged_sessions(refs)
    grafts = grafts_from_refs(refs)
    roots = _root_edges(refs, staged)
    counts = _Counts(reader, ledger, fresh=header is None, grafts=grafts)
    found: set[ObjectId] = set()
    if header is not None:
        # What the run will look at, its counts read in one pass in key order: the objects
        # stored since the last run (after a commit: the recount's new objects) and
        # pending, and the roots before and after.
        found.update(ledger.journal(header.journal, journal_end))
        found.update(ledger.pending())
        counts.load([*found, *(i for i, _ in roots), *(i for i, _, _ in header.roots)])
    _recount(counts, header, roots, grafts)
    if header is None:
        candidates = [i for i in backend.iter_object_ids() if not counts.count(i)]
        live = counts.born
    else:
        found.update(counts.died)
        counts.load(found)
        candidates = sorted(i for i in found if not counts.count(i))
        live = header.live + counts.born - len(counts.died)

    sizes: dict[ObjectId, int] = {}
    recent: list[ObjectId] = []
    for batch in batches(candidates):
        for object_id, data in zip(batch, backend.get_objects(batch), strict=True):
            if data is None:
                continue  # deleted since (by another collection): nothing to do
            sizes[object_id] = len(data)
            if older_than is not None and frame_kind(data) == KIND_SNAPSHOT:
                if decode_snapshot(object_id.hex(), data).written_at >= older_than:
                    recent.append(object_id)
        if progress is not None:
            progress("sizing unreachable objects", len(sizes), len(candidates))
    spared = _spare_recent(counts, recent) if recent else set()
    doomed = [i for i in candidates if i in sizes and i not in spared]
    if dry_run:
        return GCSummary(reachable=live + len(spared), deleted=len(doomed), dry_run=True,
                         bytes_freed=sum(sizes[i] for i in doomed))

    generation = 0 if stored_header is None else stored_header.generation
    new_header = GCLedger(
        generation=generation + 1, journal=journal_end, live=live,
        roots=tuple((i, k, n) for (i, k), n in sorted(roots.items())),
        grafts=tuple(sorted(grafts.items())),
    )
    empty = empty_records(refs, staged, doomed)  # pruned, if still so
    rescued: set[ObjectId] = set()
    update = LedgerUpdate(
        expect=raw, header=encode_gc_ledger(new_header),
        counts={i: counts.count(i) for i, change in counts.delta.items() if change},
        links={i: (old, counts.links[i]) for i, old in counts.link_changes.items()},
        pending=[i for i in spared if i in sizes], journal_end=journal_end,
        reset=header is None,
    )
    if not ledger.sweep(doomed, if_refs_are=refs, rescue=_rescuer(counts, spared, rescued),
                        prune_refs=empty, ledger=update, ignoring=UNROOTED_REFS):
        return None
    drop_stale_grafts(backend, refs, set(doomed) - rescued)
    gone = [i for i in doomed if i not in rescued]
    if gone:
        # Only deletions are worth an fsync. A run that deleted nothing changed the
        # ledger alone, atomically; lost to a crash, it rolls back whole to the
        # previous ledger, which the next run brings up to date, and any later
        # sync (a commit's) makes it durable with everything before it.
        backend.sync()
    return GCSummary(reachable=live + len(spared) + len(rescued), deleted=len(gone),
                     dry_run=False, bytes_freed=sum(sizes[i] for i in gone))

"""The key tree and its streaming writer, checked against a dict, and the spills a commit uses.

``apply_changes`` reads its changes once, as a stream, and cuts long runs of
entries into leaves as it goes; these tests drive it past those cuts (tens of
thousands of keys) from an empty tree and into an existing one, and check
every key, the node limits, and that every leaf handed out is in the tree.
"""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import versionstore as vs
from versionstore import session as session_module
from versionstore import spill
from versionstore.backend import MemoryBackend
from versionstore.backend.protocol import WriteBatch
from versionstore.codec import decode_node
from versionstore.ids import ObjectId, object_id_text
from versionstore.objects import ObjectReader
from versionstore.records import Branch, ChunkRef, Entry, Leaf, Node, VirtualRef
from versionstore.spill import Spill
from versionstore.tree import (
    MAX_BRANCH_CHILDREN,
    MAX_LEAF_ENTRIES,
    Change,
    LeafIndex,
    apply_changes,
    iter_from,
    lookup,
)


class Nodes:
    """An object store of tree nodes (what a backend holds), and the loader over it."""

    def __init__(self) -> None:
        self.stored: dict[ObjectId, bytes] = {}

    def load(self, node_id: ObjectId) -> Node:
        return decode_node(object_id_text(node_id), self.stored[node_id])

    def apply(self, root: ObjectId | None, changes: list[Change], *, streamed: bool
              ) -> tuple[ObjectId | None, list[ObjectId]]:
        emitted: list[ObjectId] = []

        def emit(node_id: ObjectId, data: bytes, leaf: Leaf) -> None:
            emitted.append(node_id)
            self.stored[node_id] = data

        new_root, nodes = apply_changes(self.load, root, iter(changes),
                                        emit=emit if streamed else None)
        self.stored.update(nodes)
        return new_root, emitted


def _key(i: int) -> str:
    return f"a/c/{i}"


def _check(nodes: Nodes, root: ObjectId | None, model: dict[str, Entry]) -> None:
    assert list(iter_from(nodes.load, root, "")) == sorted(model.items())
    for key in random.Random(0).sample(sorted(model), min(200, len(model))):
        assert lookup(nodes.load, root, key) == model[key]
    pending = [] if root is None else [root]
    while pending:
        node = nodes.load(pending.pop())
        if isinstance(node, Branch):
            assert len(node.children) <= MAX_BRANCH_CHILDREN
            pending.extend(node.children)
        else:
            assert 0 < len(node.keys) <= MAX_LEAF_ENTRIES


def _reachable_leaves(nodes: Nodes, root: ObjectId | None) -> set[ObjectId]:
    leaves: set[ObjectId] = set()
    pending = [] if root is None else [root]
    while pending:
        node_id = pending.pop()
        node = nodes.load(node_id)
        if isinstance(node, Branch):
            pending.extend(node.children)
        else:
            leaves.add(node_id)
    return leaves


@pytest.mark.parametrize("streamed", [True, False], ids=["leaves-emitted", "leaves-returned"])
def test_a_huge_stream_of_changes_builds_and_rewrites_a_tree(streamed: bool) -> None:
    nodes = Nodes()
    count = 40_000  # past the run cut (32 leaves' worth of entries) several times
    first = [(_key(i), bytes([i % 251])) for i in range(count)]
    first.sort()
    model: dict[str, Entry] = dict(first)
    root, emitted = nodes.apply(None, list(first), streamed=streamed)
    _check(nodes, root, model)
    if streamed:
        assert set(emitted) == _reachable_leaves(nodes, root)

    rng = random.Random(7)
    changes: dict[str, Entry | None] = {}
    for i in rng.sample(range(count * 2), 25_000):
        if i < count and rng.random() < 0.3:
            changes[_key(i)] = None
        else:
            changes[_key(i)] = ChunkRef(chunk_id=ObjectId(bytes(20)), size=1000) \
                if rng.random() < 0.1 else b"v%d" % i
    ordered = sorted(changes.items())
    for key, entry in ordered:
        if entry is None:
            model.pop(key, None)
        else:
            model[key] = entry
    root, emitted = nodes.apply(root, ordered, streamed=streamed)
    _check(nodes, root, model)
    if streamed:
        assert set(emitted) <= _reachable_leaves(nodes, root)

    # Deleting everything leaves an empty tree.
    root, _ = nodes.apply(root, [(key, None) for key in sorted(model)], streamed=streamed)
    assert root is None


@given(
    base=st.dictionaries(st.integers(0, 3000), st.binary(max_size=8), max_size=1500),
    changes=st.dictionaries(st.integers(0, 3000), st.none() | st.binary(max_size=8),
                            max_size=1500),
)
def test_streamed_and_returned_leaves_make_the_same_tree(
    base: dict[int, bytes], changes: dict[int, bytes | None],
) -> None:
    results = []
    for streamed in (True, False):
        nodes = Nodes()
        root, _ = nodes.apply(None, sorted((_key(i), v) for i, v in base.items()),
                              streamed=streamed)
        root, _ = nodes.apply(root, sorted((_key(i), v) for i, v in changes.items()),
                              streamed=streamed)
        results.append(root)
        model = {_key(i): v for i, v in base.items()}
        for i, value in changes.items():
            if value is None:
                model.pop(_key(i), None)
            else:
                model[_key(i)] = value
        _check(nodes, root, model)
    assert results[0] == results[1]


def _records(count: int) -> Iterator[tuple[bytes, bytes]]:
    rng = random.Random(count)
    for i in range(count):
        yield b"k%d" % i, rng.randbytes(rng.randrange(0, 300))


@pytest.mark.parametrize("memory_bytes", [1 << 30, 4096], ids=["in-memory", "on-disk"])
def test_a_spill_gives_back_its_records_to_every_iterator(memory_bytes: int) -> None:
    spill = Spill(2, memory_bytes=memory_bytes)
    records = list(_records(20_000))
    for record in records:
        spill.append(*record)
    assert spill.on_disk == (memory_bytes == 4096)
    assert len(spill) == len(records)
    first, second = iter(spill), iter(spill)
    head = [next(first) for _ in range(100)]
    assert list(second) == records  # interleaved iterators keep their own places
    assert head + list(first) == records
    assert list(spill) == records  # and again
    with pytest.raises(ValueError, match="2 fields"):
        spill.append(b"only one")
    spill.close()


def _commit_peak(tmp_path: Path, count: int) -> int:
    """Peak Python allocations (bytes) while committing ``count`` staged tiny chunks."""
    repo = vs.Repository.create(vs.lmdb_storage(tmp_path / f"repo-{count}"))
    session = repo.writable_session("main")
    for start in range(0, count, 10_000):
        session.set_values([(f"a/c/{i}", bytes([i % 251]))
                            for i in range(start, min(count, start + 10_000))])
    tracemalloc.start()
    try:
        session.commit(f"{count} chunks")
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        assert len(list(repo.readonly_session("main").store.storage.list_prefix("a/"))) == count
        repo.close()


def test_a_commit_holds_no_more_python_objects_for_more_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Five times the staged changes cost the commit (almost) no more Python memory.

    Python allocations are counted exactly (``tracemalloc``), not sampled RSS,
    so the check is the same on any machine; the spills' in-memory share is
    made small so that both sizes spill to disk.
    """
    monkeypatch.setattr(spill, "MEMORY_BYTES", 256 << 10)
    # Nor keep the new leaves decoded for the next commit (a cache capped at 1,024 leaves).
    monkeypatch.setattr(session_module, "_REMEMBER_LEAVES", 0)
    small = _commit_peak(tmp_path, 10_000)
    large = _commit_peak(tmp_path, 50_000)
    # Materialising the changes would cost about 250 bytes per change (10 MB here).
    assert large - small < 1 << 20, (small, large)


# -- point lookups through leaf indexes (ObjectReader.lookup_node) ----------------------

_entries = st.one_of(
    st.binary(max_size=8),
    st.builds(lambda b, n: ChunkRef(chunk_id=ObjectId(b), size=n),
              st.binary(min_size=20, max_size=20), st.integers(0, 2**40)),
    st.builds(lambda o, n: VirtualRef(location="s3://bucket/file", offset=o, length=n),
              st.integers(0, 2**40), st.integers(0, 2**20)),
)


@given(
    model=st.dictionaries(st.integers(0, 5000), _entries, max_size=1200),
    probes=st.lists(st.integers(-5, 5005), max_size=50),
)
def test_lookups_through_leaf_indexes_find_what_whole_leaves_hold(
    model: dict[int, Entry], probes: list[int],
) -> None:
    nodes = Nodes()
    root, _ = nodes.apply(None, sorted((_key(i), e) for i, e in model.items()), streamed=False)
    backend = MemoryBackend()
    backend.write(WriteBatch(objects=list(nodes.stored.items())))
    reader = ObjectReader(backend)
    leaves_seen = 0
    for i in [*probes, *sorted(model)]:
        key = _key(i)
        assert lookup(reader.lookup_node, root, key) == model.get(i), key
        assert lookup(reader.lookup_node, root, key) == lookup(nodes.load, root, key)
    for node_id in _reachable_leaves(nodes, root):
        loaded = reader.lookup_node(node_id)
        assert isinstance(loaded, LeafIndex), "a leaf read for a lookup is indexed, not built"
        leaf = nodes.load(node_id)
        assert isinstance(leaf, Leaf) and loaded.keys == leaf.keys
        leaves_seen += 1
    assert leaves_seen == len(_reachable_leaves(nodes, root))
    if root is not None:
        whole = reader.node(root)  # a node decoded whole is then served as such
        assert reader.lookup_node(root) is whole


def test_a_walk_of_every_leaf_holds_a_bounded_cache() -> None:
    """Reading every leaf of a big tree keeps at most the cache's budget of them decoded.

    Counted in nodes, the cache held 8,192 decoded leaves (about 440 MiB of
    Python objects) after a walk of a large array; it is weighed by entries
    now. Python allocations are counted exactly (``tracemalloc``).
    """
    count = 40 * MAX_LEAF_ENTRIES
    nodes = Nodes()
    changes = [(_key(i), ChunkRef(chunk_id=ObjectId(i.to_bytes(20, "big")), size=i))
               for i in range(count)]
    root, _ = nodes.apply(None, sorted(changes), streamed=False)
    backend = MemoryBackend()
    backend.write(WriteBatch(objects=list(nodes.stored.items())))
    leaves = _reachable_leaves(nodes, root)
    assert len(leaves) >= 40

    def held_after_walk(budget: int) -> int:
        reader = ObjectReader(backend, cache_nodes=budget)
        tracemalloc.start()
        try:
            for leaf_id in leaves:
                assert isinstance(reader.node(leaf_id), Leaf)
            return tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()

    everything = held_after_walk(10 * count)
    four_leaves = held_after_walk(4 * (MAX_LEAF_ENTRIES + 1))
    # Each decoded leaf holds about 200 bytes per entry; four of forty stay.
    assert four_leaves < everything / 5, (four_leaves, everything)


def _first_key(nodes: Nodes, node_id: ObjectId) -> str:
    node = nodes.load(node_id)
    while isinstance(node, Branch):
        node = nodes.load(node.children[0])
    return node.keys[0]


@given(size=st.integers(MAX_LEAF_ENTRIES + 1, 12 * MAX_LEAF_ENTRIES),
       rounds=st.lists(st.lists(st.tuples(st.integers(-5, 13 * MAX_LEAF_ENTRIES),
                                          st.booleans()), min_size=1, max_size=4),
                       min_size=1, max_size=6))
def test_small_commits_keep_every_separator_the_first_key_below_it(
        size: int, rounds: list[list[tuple[int, bool]]]) -> None:
    """A commit of a few keys rewrites one path (``_Writer.rewrite``'s one-child case).

    Keys before the first and after the last, deletions of a leaf's first key,
    and changes in neighbouring leaves: every branch still names each child by
    the first key under it, the tree holds what a dict holds, and the nodes a
    commit returns are all the new ones its tree reaches, and only nodes it reaches.
    """
    nodes = Nodes()
    model: dict[str, Entry] = {f"k/{i:06d}": bytes([i % 256]) for i in range(0, 2 * size, 2)}
    root, _ = nodes.apply(None, sorted(model.items()), streamed=False)
    for number, changes in enumerate(rounds):
        batch: dict[str, Entry | None] = {}
        for i, delete in changes:
            key = f"k/{i:06d}" if i >= 0 else f"j/{-i}"  # "j/…" sorts before every "k/…"
            batch[key] = None if delete else bytes([number, i % 256])
        before = set(nodes.stored)
        new_root, made = apply_changes(nodes.load, root, iter(sorted(batch.items())))
        nodes.stored.update(made)
        for key, entry in batch.items():
            if entry is None:
                model.pop(key, None)
            else:
                model[key] = entry
        _check(nodes, new_root, model)
        reached, pending = set(), [] if new_root is None else [new_root]
        while pending:
            node_id = pending.pop()
            reached.add(node_id)
            node = nodes.load(node_id)
            if isinstance(node, Branch):
                assert [_first_key(nodes, c) for c in node.children] == list(node.keys)
                pending.extend(node.children)
        assert reached - before <= set(made) <= reached  # identical rewrites make old ids
        root = new_root

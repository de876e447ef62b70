"""The structural merge (``merge.merge_trees``) against the key-by-key one (``merge.three_way``).

``merge_trees`` walks base, ours and theirs side by side and takes subtrees
one side alone changed by id, unread; it must give exactly what
``three_way`` + ``tree.apply_changes`` give — the same content and the same
conflicts, for every ``on_conflict`` — on trees of many nodes (the node
limits are lowered so that a few dozen keys make a three-level tree), with
value rewrites, new and deleted keys, metadata edits and deleted arrays and
groups on either side. Plus: a region one side alone rewrote is not read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

from hypothesis import given
from hypothesis import strategies as st

from versionstore import tree
from versionstore.codec import decode_node
from versionstore.ids import ObjectId
from versionstore.merge import merge_trees, three_way
from versionstore.records import ChunkRef, Entry, Node
from versionstore.tree import apply_changes, iter_from


@contextmanager
def _small_nodes() -> Iterator[None]:
    with mock.patch.object(tree, "MAX_LEAF_ENTRIES", 4), \
            mock.patch.object(tree, "MAX_BRANCH_CHILDREN", 3):
        yield


class _Store:
    """Tree nodes in a dict, as the backend would hold them."""

    def __init__(self) -> None:
        self.nodes: dict[ObjectId, bytes] = {}
        self.loads = 0

    def load(self, node_id: ObjectId) -> Node:
        self.loads += 1
        return decode_node("", self.nodes[node_id])

    def build(self, root: ObjectId | None, changes: dict[str, Entry | None]) -> ObjectId | None:
        new_root, nodes = apply_changes(self.load, root, sorted(changes.items()))
        self.nodes.update(nodes)
        return new_root

    def content(self, root: ObjectId | None) -> dict[str, Entry]:
        return dict(iter_from(self.load, root, ""))


def _array(shape: int) -> bytes:
    return json.dumps({
        "zarr_format": 3, "node_type": "array", "shape": [shape], "data_type": "uint8",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0, "codecs": [{"name": "bytes"}], "attributes": {},
    }).encode()


_GROUP = b'{"zarr_format": 3, "node_type": "group", "attributes": {}}'


def _base() -> dict[str, Entry | None]:
    keys: dict[str, Entry | None] = {"zarr.json": _GROUP, "g/zarr.json": _GROUP,
                                     "a/zarr.json": _array(30), "g/b/zarr.json": _array(10)}
    keys.update({f"a/c/{i}": bytes([i]) for i in range(30)})
    keys.update({f"g/b/c/{i}": bytes([100 + i]) for i in range(10)})
    keys["notes.txt"] = b"base"
    return keys


_KEYS = sorted(_base()) + [f"a/c/{i}" for i in range(30, 34)] + ["new.txt"]

_edit = st.one_of(
    st.tuples(st.sampled_from(_KEYS), st.sampled_from([b"x", b"y", None])),
    st.tuples(st.just("a/zarr.json"), st.sampled_from([_array(40), _array(50)])),
    st.tuples(st.just("g/zarr.json"), st.just(b'{"zarr_format": 3, "node_type": "group", '
                                              b'"attributes": {"k": 1}}')),
)
_side = st.tuples(
    st.dictionaries(st.sampled_from(_KEYS), st.sampled_from([b"x", b"y", None]), max_size=8),
    st.lists(_edit, max_size=3),
    st.sampled_from([None, "a", "g/b", "g"]),  # a node deleted with everything under it
    st.sampled_from([None, range(0, 10), range(10, 20), range(20, 30)]),  # a block rewritten
)


Side = tuple[dict[str, Entry | None], list[tuple[str, Entry | None]], str | None,
             range | None]


def _changes(base: dict[str, Entry | None], side: Side, mark: bytes
             ) -> dict[str, Entry | None]:
    edits, extra, deleted, block = side
    changes: dict[str, Entry | None] = dict(edits)
    changes.update(extra)
    if block is not None:
        changes.update({f"a/c/{i}": mark + bytes([i]) for i in block})
    if deleted is not None:
        changes.update(dict.fromkeys(k for k in base if k.startswith(f"{deleted}/")))
    return changes


@given(ours=_side, theirs=_side, on_conflict=st.sampled_from(["raise", "ours", "theirs"]))
def test_structural_merge_equals_key_by_key_merge(ours: Side, theirs: Side,
                                                  on_conflict: str) -> None:
    with _small_nodes():
        store = _Store()
        base_keys = _base()
        base = store.build(None, base_keys)
        ours_tree = store.build(base, _changes(base_keys, ours, b"o"))
        theirs_tree = store.build(base, _changes(base_keys, theirs, b"t"))

        def read(entry: Entry | None) -> bytes | None:
            assert not isinstance(entry, ChunkRef)
            return entry

        changes, expected = three_way(store.load, read, base, ours_tree, theirs_tree,
                                      on_conflict, lambda value: value)
        merged = merge_trees(store.load, read, base, ours_tree, theirs_tree, on_conflict,
                             lambda value: value)

        def order(conflicts: list[object]) -> list[object]:
            return sorted(conflicts, key=repr)

        assert order(merged.conflicts) == order(expected)  # type: ignore[arg-type]
        if expected and on_conflict == "raise":
            assert merged.root is None
            return
        want = store.build(ours_tree, dict(changes))
        store.nodes.update(merged.nodes)
        assert store.content(merged.root) == store.content(want)


def _region_merge_loads(width: int) -> tuple[int, int]:
    """Node reads of the structural and the key-by-key merge of two rewritten regions."""
    with _small_nodes():
        store = _Store()
        base_keys: dict[str, Entry | None] = {"a/zarr.json": _array(4000)}
        base_keys.update({f"a/c/{i:04d}": b"0" for i in range(4000)})
        base = store.build(None, base_keys)
        ours = store.build(base, {f"a/c/{i:04d}": b"o" for i in range(100, 100 + width)})
        theirs = store.build(base, {f"a/c/{i:04d}": b"t" for i in range(3000, 3000 + width)})
        store.loads = 0
        merged = merge_trees(store.load, lambda e: e,  # type: ignore[arg-type,return-value]
                             base, ours, theirs, "raise", lambda value: value)
        structural = store.loads
        store.loads = 0
        three_way(store.load, lambda e: e,  # type: ignore[arg-type,return-value]
                  base, ours, theirs, "raise", lambda value: value)
        store.nodes.update(merged.nodes)
        content = store.content(merged.root)
        assert content["a/c/0120"] == b"o" and content["a/c/3020"] == b"t"
        assert content["a/c/2000"] == b"0" and len(content) == 4001
        return structural, store.loads


def test_regions_one_side_alone_rewrote_are_taken_unread() -> None:
    small, small_by_key = _region_merge_loads(40)
    large, large_by_key = _region_merge_loads(800)
    # 20× the rewritten keys: the key-by-key merge reads each side's changed leaves
    # (on top of every branch of both trees); the structural one reads the same branches
    # above the two regions, and the node documents' paths, and nothing more.
    assert large_by_key > 2 * small_by_key
    assert large <= small + 30 < small_by_key

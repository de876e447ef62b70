"""Running size totals (``versionstore.sizes``): kept right by every writer, read by ``du``.

Every snapshot carries per-array totals computed from its base's totals and
the keys it changed. The state machine runs random commits, amends, merges,
squashes, cherry-picks, reverts, purges and virtual references, and checks
each branch tip's totals against a walk of its whole tree. Older snapshots
(written without totals) read the same through the walk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from hypothesis_budget import fewer_examples

import versionstore as vs
from versionstore.backend.protocol import WriteBatch
from versionstore.codec import decode_snapshot, encode_snapshot
from versionstore.errors import MergeConflictError, NothingToCommitError
from versionstore.ids import ID_LENGTH, ObjectId, object_id_from_text, object_id_text
from versionstore.records import ChunkRef, SizeRow, Sizes
from versionstore.sizes import METADATA_NAMES, SizeTally, walk_sizes

_ARRAY = json.dumps({"zarr_format": 3, "node_type": "array", "shape": [4]}).encode()
_GROUP = json.dumps({"zarr_format": 3, "node_type": "group"}).encode()
#: An array document over the inline limit: stored as a chunk object.
_BIG_ARRAY = json.dumps({"zarr_format": 3, "node_type": "array",
                         "attributes": {"pad": "x" * 800}}).encode()

_DOCUMENT_KEYS = ["zarr.json", "a/zarr.json", "a/b/zarr.json", "a/.zarray", "x/zarr.json"]
_CHUNK_KEYS = ["a/c/0", "a/c/1", "a/b/c/0", "x/0", "x/y/1", "top", "a/.zattrs"]
_documents = st.sampled_from([_ARRAY, _GROUP, _BIG_ARRAY, b"not json", None])
_values = st.one_of(
    st.none(),
    st.binary(min_size=0, max_size=40),
    st.integers(513, 3000).map(lambda n: b"v" * n),
    st.integers(1, 5000).map(lambda n: ("virtual", n)),
)
_changes = st.lists(
    st.one_of(st.tuples(st.sampled_from(_DOCUMENT_KEYS), _documents),
              st.tuples(st.sampled_from(_CHUNK_KEYS), _values)),
    min_size=1, max_size=8,
)


def _stage(session: vs.Session, changes: list[tuple[str, Any]]) -> None:
    storage = session.store.storage
    for key, value in changes:
        if value is None:
            storage.erase(key)
        elif isinstance(value, tuple) and key.rpartition("/")[2] not in METADATA_NAMES:
            session.store.set_virtual_ref(key, "file:///data/source.nc", 0, value[1],
                                          validate_container=False)
        else:
            storage.set(key, value if isinstance(value, bytes) else b"v" * value[1])


def _check_totals(repo: vs.Repository, snapshot_text: str) -> None:
    snapshot = repo.reader.snapshot(object_id_from_text(snapshot_text))
    assert snapshot.sizes is not None
    assert snapshot.sizes == walk_sizes(repo.reader, snapshot.tree)


class SizesMachine(RuleBasedStateMachine):
    """Random history edits; every tip's totals equal a walk of its tree."""

    def __init__(self) -> None:
        super().__init__()
        self.repo = vs.Repository.create(vs.in_memory_storage())
        self.branches = ["main"]
        self.snapshots: list[str] = []

    @initialize()
    def first(self) -> None:
        self.snapshots.append(self.repo.lookup_branch("main"))

    def _commit(self, branch: str, changes: list[tuple[str, Any]], *, amend: bool = False
                ) -> None:
        session = self.repo.writable_session(branch)
        _stage(session, changes)
        try:
            made = session.amend() if amend else session.commit("c")
        except NothingToCommitError:
            session.discard_changes()
            return
        self.snapshots.append(made)

    @rule(branch=st.integers(0, 3), changes=_changes)
    def commit(self, branch: int, changes: list[tuple[str, Any]]) -> None:
        self._commit(self.branches[branch % len(self.branches)], changes)

    @rule(changes=_changes)
    def amend(self, changes: list[tuple[str, Any]]) -> None:
        if len(list(self.repo.ancestry(branch="main"))) > 1:
            self._commit("main", changes, amend=True)

    @precondition(lambda self: len(self.branches) < 4)
    @rule(at=st.integers(0, 100))
    def branch(self, at: int) -> None:
        name = f"b{len(self.branches)}"
        self.repo.create_branch(name, self.snapshots[at % len(self.snapshots)])
        self.branches.append(name)

    @rule(source=st.integers(0, 3), side=st.sampled_from(["ours", "theirs"]))
    def merge(self, source: int, side: str) -> None:
        name = self.branches[source % len(self.branches)]
        if name != "main":
            self.snapshots.append(self.repo.merge(name, "main", on_conflict=side,
                                                  fast_forward=False))

    @rule(picked=st.integers(0, 100), revert=st.booleans())
    def pick(self, picked: int, revert: bool) -> None:
        snapshot = self.snapshots[picked % len(self.snapshots)]
        if self.repo.lookup_snapshot(snapshot).parent_id is None:
            return
        try:
            made = (self.repo.revert(snapshot, on_conflict="ours") if revert
                    else self.repo.cherry_pick(snapshot, on_conflict="theirs"))
        except (NothingToCommitError, MergeConflictError):
            return
        self.snapshots.append(made)

    @rule(back=st.integers(1, 4))
    def squash(self, back: int) -> None:
        line = [info.id for info in self.repo.ancestry(branch="main")]
        if len(line) > back:
            self.snapshots.append(self.repo.squash("main", since_snapshot_id=line[back]))

    @rule(path=st.sampled_from(["/a", "/a/b", "/x"]))
    def purge(self, path: str) -> None:
        self.repo.purge(path, force=True)
        # purge collects what it made unreachable (amended-away snapshots too).
        self.snapshots = [info.id for name in self.branches
                          for info in self.repo.ancestry(branch=name)]

    @invariant()
    def tips_match_a_walk(self) -> None:
        for name in self.branches:
            tip = self.repo.lookup_branch(name)
            _check_totals(self.repo, tip)
            usage = self.repo.du(name)
            walked = walk_sizes(self.repo.reader, self.repo.reader.snapshot(
                object_id_from_text(tip)).tree)
            assert usage.keys == sum(r.keys for r in walked.rows)
            assert usage.stored_bytes == sum(r.stored_bytes for r in walked.rows)
        report = self.repo.verify()  # recomputes every snapshot's totals from its parent's
        assert report.ok, report.problems


TestSizesMachine = SizesMachine.TestCase
TestSizesMachine.settings = settings(fewer_examples(8), stateful_step_count=20)


# -- older repositories ---------------------------------------------------------------


@pytest.fixture(params=["memory", "lmdb"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> vs.Repository:
    storage: Any = (vs.in_memory_storage() if request.param == "memory"
                    else vs.lmdb_storage(tmp_path / "repo"))
    return vs.Repository.create(storage)


def _rewrite_without_totals(repo: vs.Repository, branch: str) -> str:
    """Store ``branch``'s tip again as an older release wrote it (no totals); move the branch.

    Its parent keeps its totals, so commits on top of it exercise both the
    walk (for the old tip) and the running totals.
    """
    tip = object_id_from_text(repo.lookup_branch(branch))
    old = attrs.evolve(repo.reader.snapshot(tip), sizes=None)
    old_id, frame = encode_snapshot(old)
    assert decode_snapshot("old", frame).sizes is None
    assert repo.backend.write(WriteBatch(objects=[(old_id, frame)]))
    repo.reset_branch(branch, object_id_text(old_id))
    return object_id_text(old_id)


def _zarr_array(session: vs.Session, path: str, values: int) -> None:
    import numpy as np
    import zarr

    group = zarr.open_group(session.store, mode="a")
    array = group.require_array(path, shape=(values,), chunks=(100,), dtype="f8",
                                compressors=None)
    array[:] = np.arange(values, dtype="f8")


def test_older_snapshot_is_walked_and_the_next_commit_starts_totals(
        repo: vs.Repository) -> None:
    session = repo.writable_session()
    _zarr_array(session, "x", 1000)
    session.commit("x")
    old = _rewrite_without_totals(repo, "main")
    assert repo.reader.snapshot(object_id_from_text(old)).sizes is None
    usage = repo.du()  # the walk
    assert usage.arrays["/x"].chunks == 10 and usage.arrays["/x"].keys == 11
    assert usage.stored_bytes == usage.logical_bytes + 10 * 13 + 0  # frames: 13-byte headers
    session = repo.writable_session()
    _zarr_array(session, "y", 300)
    new = session.commit("y")
    assert repo.reader.snapshot(object_id_from_text(new)).sizes is not None
    _check_totals(repo, new)
    after = repo.du()
    assert after.arrays["/x"] == usage.arrays["/x"]
    assert after.arrays["/y"].chunks == 3
    assert repo.verify().ok


def test_totals_are_read_not_walked(repo: vs.Repository) -> None:
    """``du`` reads no tree node: the totals answer it."""
    session = repo.writable_session()
    _zarr_array(session, "x", 1000)
    session.commit("x")
    reader = repo.reader
    calls: list[ObjectId] = []
    original = reader.node

    def counting(node_id: ObjectId) -> Any:
        calls.append(node_id)
        return original(node_id)

    reader.node = counting  # type: ignore[method-assign]
    usage = repo.du()
    assert calls == [] and usage.arrays["/x"].keys == 11


def test_a_commit_reads_only_the_changed_keys() -> None:
    """``SizeTally`` turns changes into totals without reading the rest of the tree."""
    base = Sizes(rows=(SizeRow(path=None, keys=1, chunks=1, objects=0, logical_bytes=3,
                               stored_bytes=3),
                       SizeRow(path="a", keys=2, chunks=1, objects=1, logical_bytes=1000,
                               stored_bytes=1013)))

    def no_reads(node_id: ObjectId) -> Any:
        raise AssertionError("read a node")

    tally = SizeTally()
    tally.observe("a/c/1", None, ChunkRef(ObjectId(b"\0" * ID_LENGTH), 600))
    tally.observe("top", b"abc", None)
    tally.observe("a/c/0", b"same", b"same")  # an identical rewrite changes nothing
    result = tally.sizes(no_reads, ObjectId(b"\1" * ID_LENGTH), base, lambda ids: [])
    assert result == Sizes(rows=(SizeRow(path="a", keys=3, chunks=2, objects=2,
                                         logical_bytes=1600, stored_bytes=1626),))
    assert tally.changed == 2


def test_verify_reports_wrong_totals(repo: vs.Repository) -> None:
    session = repo.writable_session()
    _zarr_array(session, "x", 1000)
    session.commit("x")
    tip = object_id_from_text(repo.lookup_branch("main"))
    snapshot = repo.reader.snapshot(tip)
    assert snapshot.sizes is not None
    wrong = Sizes(rows=tuple(attrs.evolve(r, keys=r.keys + 1) if r.path == "x" else r
                             for r in snapshot.sizes.rows))
    bad_id, frame = encode_snapshot(attrs.evolve(snapshot, sizes=wrong))
    assert repo.backend.write(WriteBatch(objects=[(bad_id, frame)]))
    repo.reset_branch("main", object_id_text(bad_id))
    problems = repo.verify().problems
    assert len(problems) == 1 and "recorded sizes of array 'x' differ" in problems[0]

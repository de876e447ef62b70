"""The gc ledger's counts and links, checked by ``verify`` (``versionstore.verify_ledger``).

Trees here are large enough to have branch nodes (hundreds of keys), so the
predecessor links of both leaves and branches are exercised: a state machine
commits small changes, resets, branches, deletes branches, expires and
collects; after every step ``verify`` recomputes the ledger from its roots
and finds it exact, and a collection without a grace period leaves exactly
what the refs reach. Damaged ledgers (a header, a count, a link) are
reported by ``verify`` and the command line, and a full collection repairs
them.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from machine_support import OnEitherBackend

import versionstore as vs
from versionstore.backend.ledger import Ledger, LedgerUpdate
from versionstore.backend.memory import MemoryBackend
from versionstore.backend.protocol import WriteBatch
from versionstore.cli import cli
from versionstore.codec import encode_node
from versionstore.errors import NothingToCommitError
from versionstore.gc import reachable_objects
from versionstore.gc_incremental import _Counts
from versionstore.ids import ObjectId, object_id_from_text
from versionstore.objects import ObjectReader
from versionstore.records import Branch, ChunkRef, Leaf
from versionstore.verify_ledger import check_ledger

_KEYS = 700  # three leaves or more: a root branch above them


def _value(index: int, version: int) -> bytes:
    if version % 3 == 0:
        return b"i%d.%d" % (index, version)  # inline
    return (b"%08d%04d" % (index, version)) * 50  # a chunk object (600 bytes)


class LedgerMachine(OnEitherBackend, RuleBasedStateMachine):
    """Small changes to big trees; the ledger always equals a recount from its roots."""

    @initialize()
    def start(self) -> None:
        self.create_repository()
        session = self.repo.writable_session()
        session.set_values([(f"k/{i:04d}", _value(i, 1)) for i in range(_KEYS)])
        session.commit("load")
        self.repo.garbage_collect()
        self.version = 1
        self.times = [datetime.now(UTC)]

    def teardown(self) -> None:
        self.close_repository()

    @rule(branch=st.sampled_from(["main", "dev"]),
          keys=st.lists(st.integers(0, _KEYS + 50), min_size=1, max_size=6),
          erase=st.booleans())
    def commit(self, branch: str, keys: list[int], erase: bool) -> None:
        if branch not in self.repo.list_branches():
            self.repo.create_branch(branch, self.repo.lookup_branch("main"))
        self.version += 1
        session = self.repo.writable_session(branch)
        session.set_values([(f"k/{i:04d}", _value(i, self.version)) for i in keys])
        if erase:
            session.store.storage.erase(f"k/{keys[0]:04d}")
        try:
            session.commit("change")
        except NothingToCommitError:  # a new key written and erased again
            session.discard_changes()
        time.sleep(0.001)
        self.times.append(datetime.now(UTC))

    @rule(back=st.integers(1, 3))
    def reset(self, back: int) -> None:
        line = [info.id for info in self.repo.ancestry(branch="main")]
        if len(line) > back + 1:
            self.repo.reset_branch("main", line[back])

    @rule()
    def delete_dev(self) -> None:
        if "dev" in self.repo.list_branches():
            self.repo.delete_branch("dev")

    @rule(which=st.integers(0, 30))
    def expire(self, which: int) -> None:
        self.repo.expire_snapshots(self.times[which % len(self.times)])

    @rule(full=st.booleans())
    def collect(self, full: bool) -> None:
        self.repo.garbage_collect(full=full)
        reachable = reachable_objects(self.repo.reader, self.repo.backend.list_refs(""))
        assert set(self.repo.backend.iter_object_ids()) == reachable

    @invariant()
    def ledger_is_exact(self) -> None:
        if hasattr(self, "repo"):
            backend = self.repo.backend
            assert isinstance(backend, Ledger)
            assert check_ledger(self.repo.reader, backend) == []


class LMDBLedgerMachine(LedgerMachine):
    backend = "lmdb"


_PROFILE = settings()
TestLedgerInMemory = LedgerMachine.TestCase
TestLedgerInMemory.settings = settings(_PROFILE, max_examples=max(10, _PROFILE.max_examples // 8),
                                       stateful_step_count=min(25, _PROFILE.stateful_step_count))
TestLedgerOnLMDB = LMDBLedgerMachine.TestCase
TestLedgerOnLMDB.settings = settings(_PROFILE, max_examples=max(5, _PROFILE.max_examples // 20),
                                     stateful_step_count=min(20, _PROFILE.stateful_step_count))


# -- what a small commit costs the ledger ----------------------------------------------------


@pytest.fixture(params=["memory", "lmdb"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> vs.Repository:
    storage: Any = (vs.in_memory_storage() if request.param == "memory"
                    else vs.lmdb_storage(tmp_path / "repo"))
    return vs.Repository.create(storage)


def _loaded(repo: vs.Repository, keys: int = 3000) -> None:
    session = repo.writable_session()
    session.set_values([(f"k/{i:05d}", _value(i, 1)) for i in range(keys)])
    session.commit("load")
    repo.garbage_collect()


def test_a_small_commit_updates_counts_of_what_changed_only(repo: vs.Repository) -> None:
    """Ten changed keys in ten leaves: about thirty count updates, not ten leaves' worth."""
    _loaded(repo)
    backend = repo.backend
    assert isinstance(backend, Ledger)
    written: list[LedgerUpdate] = []
    sweep = backend.sweep

    def recording(*args: Any, **kwargs: Any) -> bool:
        written.append(kwargs["ledger"])
        return sweep(*args, **kwargs)

    backend.sweep = recording  # type: ignore[method-assign]
    session = repo.writable_session()
    session.set_values([(f"k/{i:05d}", _value(i, 2)) for i in range(0, 3000, 300)])
    session.commit("ten")
    repo.garbage_collect()
    # New: 10 chunks, about 10 leaves, a few branches, a snapshot, a page; the parent
    # snapshot gains one. The ~2,500 unchanged chunks under the new leaves are untouched.
    assert len(written[0].counts) < 60
    assert written[0].links  # the new nodes link to the ones they were rewritten from
    assert check_ledger(repo.reader, backend) == []
    # Three commits before one run: each new tree links to its parent's, new as well.
    for version in (3, 4, 5):
        session.set_values([(f"k/{i:05d}", _value(i, version)) for i in range(7, 3000, 300)])
        session.commit(f"v{version}")
    repo.garbage_collect()
    assert len(written[1].counts) < 3 * 60
    assert check_ledger(repo.reader, backend) == []


# -- damaged ledgers ----------------------------------------------------------------------


def _damage(repo: vs.Repository, *, header: bytes | None = None,
            counts: dict[ObjectId, int] | None = None,
            links: dict[ObjectId, tuple[ObjectId | None, ObjectId | None]] | None = None
            ) -> None:
    """Rewrite part of the ledger through its own atomic step (as a buggy writer could)."""
    backend = repo.backend
    assert isinstance(backend, Ledger)
    raw, end = backend.read_ledger()
    assert raw is not None
    assert backend.sweep([], if_refs_are=backend.list_refs(""), rescue=lambda *a: set(),
                         prune_refs={}, ledger=LedgerUpdate(
                             expect=raw, header=raw if header is None else header,
                             counts=counts or {}, pending=backend.pending(), journal_end=0,
                             links=links or {}))


def _a_chunk_and_its_leaf(repo: vs.Repository) -> tuple[ObjectId, ObjectId]:
    reader = repo.reader
    node_id = reader.snapshot(_tip(repo)).tree
    assert node_id is not None
    node = reader.node(node_id)
    while not isinstance(node, Leaf):
        node_id = node.children[0]
        node = reader.node(node_id)
    chunk = next(e.chunk_id for e in node.entries if isinstance(e, ChunkRef))
    return chunk, node_id


def _tip(repo: vs.Repository) -> ObjectId:
    return object_id_from_text(repo.lookup_branch("main"))


def _problems(repo: vs.Repository) -> list[str]:
    return [p for p in repo.verify().problems if p.startswith("gc ledger")]


def test_a_damaged_header_is_reported_and_rebuilt(repo: vs.Repository) -> None:
    _loaded(repo, 600)
    _damage(repo, header=b"VS\x01\x0e\x00" + b"\x00" * 8 + b"junk")
    problems = _problems(repo)
    assert len(problems) == 1 and "header is damaged" in problems[0]
    repo.garbage_collect()  # an unreadable header: the run rebuilds the ledger
    assert repo.verify().ok


def test_an_uncounted_reachable_chunk_is_reported(repo: vs.Repository) -> None:
    _loaded(repo, 600)
    chunk, _ = _a_chunk_and_its_leaf(repo)
    _damage(repo, counts={chunk: 0})
    problems = _problems(repo)
    assert any("reachable but uncounted" in p and "count 0, its referrers give 1" in p
               for p in problems), problems
    repo.garbage_collect(full=True)
    assert repo.verify().ok


def test_a_count_for_nothing_reachable_and_a_dangling_link_are_reported(
        repo: vs.Repository) -> None:
    _loaded(repo, 600)
    chunk, leaf = _a_chunk_and_its_leaf(repo)
    stray = ObjectId(b"\x07" * 20)
    _damage(repo, counts={stray: 3}, links={leaf: (None, stray)})
    problems = _problems(repo)
    assert any("has count 3 but its roots do not reach it" in p for p in problems), problems
    assert any("not both live tree nodes" in p for p in problems), problems
    repo.garbage_collect(full=True)
    assert repo.verify().ok


def test_verify_command_reports_a_damaged_ledger_and_progress(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    repo = vs.Repository.create(vs.lmdb_storage(path))
    _loaded(repo, 600)
    chunk, _ = _a_chunk_and_its_leaf(repo)
    _damage(repo, counts={chunk: 0})
    repo.close()
    result = CliRunner().invoke(cli, ["verify", str(path)])
    assert result.exit_code == 1
    assert "reachable but uncounted" in result.output
    phases: list[str] = []
    reopened = vs.Repository.open(vs.lmdb_storage(path))
    reopened.verify(progress=lambda phase, done, total: phases.append(phase))
    assert "checking the gc ledger" in phases and "verifying objects" in phases
    reopened.close()


# -- the diff of a new node against its predecessor ----------------------------------------

_IDS = st.binary(min_size=20, max_size=20).map(ObjectId)
_ENTRIES = st.one_of(_IDS.map(lambda i: ChunkRef(chunk_id=i, size=600)),
                     st.binary(max_size=8))  # chunk references and inline values


@settings(max_examples=60)
@given(old=st.lists(_ENTRIES, min_size=1, max_size=300),
       edits=st.lists(st.tuples(st.integers(0, 299), _ENTRIES), max_size=40),
       grow=st.lists(_ENTRIES, max_size=3), as_branch=st.booleans())
def test_a_new_node_counts_exactly_the_children_its_predecessor_lacks(
        old: list[Any], edits: list[tuple[int, Any]], grow: list[Any], as_branch: bool) -> None:
    new = list(old)
    for position, entry in edits:
        new[position % len(new)] = entry
    new.extend(grow)
    if as_branch:  # a branch node's children are node ids: the same diff, by position
        def node(entries: list[Any]) -> Any:
            ids = [e.chunk_id if isinstance(e, ChunkRef) else ObjectId(bytes(20)) for e in entries]
            return Branch(level=1, keys=tuple(f"k{i:04d}" for i in range(len(ids))),
                          children=tuple(ids))
    else:

        def node(entries: list[Any]) -> Any:
            return Leaf(keys=tuple(f"k{i:04d}" for i in range(len(entries))),
                        entries=tuple(entries))
    backend = MemoryBackend()
    (old_id, old_data), (new_id, new_data) = encode_node(node(old)), encode_node(node(new))
    backend.write(WriteBatch(objects=[(old_id, old_data), (new_id, new_data)]))
    counts = _Counts(ObjectReader(backend), backend, fresh=True, grafts={})
    found = counts._children_not_in(new_id, old_id)

    def ids(n: Any) -> list[ObjectId]:
        return (list(n.children) if isinstance(n, Branch) else
                [e.chunk_id for e in n.entries if isinstance(e, ChunkRef)])
    expected = [i for i in dict.fromkeys(ids(node(new))) if i not in set(ids(node(old)))]
    assert [c for c, _ in found] == expected

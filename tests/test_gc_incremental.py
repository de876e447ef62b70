"""Incremental gc deletes exactly what the full collection deletes, on random histories.

A hypothesis state machine builds a history — commits on several branches,
branches created and deleted, resets, tags, a resumable session staging and
overwriting writes, ``expire_snapshots``, ``purge`` — and collects garbage
now and then: incrementally (from the ledger), with ``full=True`` (the
ledger rebuilt), or with the ledger-free listing collection (which deletes
objects under the ledger, so the next incremental run must notice). Before
every incremental or full run, the repository is copied into a fresh
in-memory backend and ``collect_garbage_by_listing`` runs there with the
same grace period: afterwards both must hold exactly the same objects and
report the same deletions and bytes. A second check needs no reference at
all: without a grace period, what is left is exactly what the refs reach.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from machine_support import OnEitherBackend, commit_values, either_repo_fixture

import versionstore as vs
from versionstore.backend.memory import MemoryBackend
from versionstore.backend.protocol import WriteBatch
from versionstore.gc import collect_garbage_by_listing, reachable_objects
from versionstore.objects import ObjectReader

KEYS = st.sampled_from(["a", "b", "c", "p/x", "p/y"])
# Values over 512 bytes are chunk objects; the rest live inline in leaves.
VALUES = st.sampled_from([b"v", b"w", b"V" * 700, b"W" * 700, b"X" * 900, b"Y" * 1500,
                          b"S" * 5000])  # staged alone: inline, in its record, a chunk
BRANCHES = st.sampled_from(["main", "dev", "feature"])

__all__ = ["either_repo_fixture"]  # the ``repo`` fixture


def _copy(backend: Any) -> MemoryBackend:
    """Every object and ref of ``backend`` in a fresh in-memory backend."""
    ids = list(backend.iter_object_ids())
    copy = MemoryBackend()
    copy.write(WriteBatch(objects=list(zip(ids, backend.get_objects(ids), strict=True)),
                          refs=backend.list_refs("")))
    return copy


class IncrementalGCMachine(OnEitherBackend, RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.create_repository()
        self.times: list[datetime] = [datetime.now(UTC)]
        self.session_id: str | None = None
        self.collections = 0

    def teardown(self) -> None:
        self.close_repository()

    def _branches(self) -> set[str]:
        return set(self.repo.list_branches())

    def _mark_time(self) -> None:
        time.sleep(0.001)
        self.times.append(datetime.now(UTC))

    # -- history ----------------------------------------------------------------------

    @rule(branch=BRANCHES, key=KEYS, value=VALUES, erase=st.booleans())
    def commit(self, branch: str, key: str, value: bytes, erase: bool) -> None:
        if branch not in self._branches():
            self.repo.create_branch(branch, self.repo.lookup_branch("main"))
        session = self.repo.writable_session(branch)
        if erase and session.store.storage.get(key) is not None:
            session.store.storage.erase(key)
        else:
            session.store.storage.set(key, value)
        try:
            session.commit("c")
        except vs.NothingToCommitError:
            pass
        self._mark_time()

    @rule(branch=st.sampled_from(["dev", "feature"]))
    def delete_branch(self, branch: str) -> None:
        if branch in self._branches():
            self.repo.delete_branch(branch)

    @rule(branch=BRANCHES, back=st.integers(1, 3))
    def reset(self, branch: str, back: int) -> None:
        if branch not in self._branches():
            return
        history = list(self.repo.ancestry(branch=branch))
        if len(history) > back:
            self.repo.reset_branch(branch, history[back].id)

    @rule(name=st.sampled_from(["t1", "t2"]), branch=BRANCHES)
    def tag(self, name: str, branch: str) -> None:
        if name in self.repo.list_tags():
            self.repo.delete_tag(name)
        elif branch in self._branches():
            try:
                self.repo.create_tag(name, self.repo.lookup_branch(branch))
            except vs.ImmutableTagError:
                pass

    @rule(key=KEYS, value=VALUES)
    def stage(self, key: str, value: bytes) -> None:
        """Stage in a resumable session: an overwritten staged chunk becomes garbage."""
        if self.session_id not in self.repo.resumable_sessions():
            # (an identical rewrite stages nothing: gc prunes such a record)
            session = self.repo.writable_session("main")
        else:
            session = self.repo.writable_session(resume=self.session_id)
        session.store.storage.set(key, value)
        self.session_id = session.session_id

    @precondition(lambda self: self.session_id is not None)
    @rule(commit=st.booleans())
    def finish_session(self, commit: bool) -> None:
        assert self.session_id is not None
        if self.session_id in self.repo.resumable_sessions():
            if commit:
                session = self.repo.writable_session(resume=self.session_id)
                try:
                    session.commit("from the session")
                except (vs.ConflictError, vs.NothingToCommitError):
                    self.repo.discard_session(self.session_id)
            else:
                self.repo.discard_session(self.session_id)
        self.session_id = None
        self._mark_time()

    @rule(which=st.integers(0, 30))
    def expire(self, which: int) -> None:
        self.repo.expire_snapshots(self.times[which % len(self.times)])

    @rule()
    def purge(self) -> None:
        self.repo.purge("/p", force=True)
        if self.session_id not in self.repo.resumable_sessions():
            self.session_id = None

    # -- collections --------------------------------------------------------------------

    @rule(how=st.sampled_from(["incremental", "incremental", "incremental", "full"]),
          grace=st.one_of(st.none(), st.integers(0, 30)), dry_run=st.booleans())
    def collect(self, how: str, grace: int | None, dry_run: bool) -> None:
        older_than = None if grace is None else self.times[grace % len(self.times)]
        reference = _copy(self.repo.backend)
        expected = collect_garbage_by_listing(ObjectReader(reference), older_than=older_than,
                                              dry_run=dry_run)
        before = set(self.repo.backend.iter_object_ids())
        got = self.repo.garbage_collect(older_than, dry_run=dry_run, full=how == "full")
        after = set(self.repo.backend.iter_object_ids())
        if dry_run:
            assert after == before
        else:
            assert after == set(reference.iter_object_ids())
        assert (got.deleted, got.bytes_freed, got.dry_run) == (
            expected.deleted, expected.bytes_freed, expected.dry_run)
        assert got.reachable == expected.reachable
        self.collections += 1

    @rule()
    def collect_by_listing(self) -> None:
        """Delete under the ledger: the next incremental run must cope."""
        collect_garbage_by_listing(self.repo.reader)

    @rule()
    def collect_exactly_the_unreachable(self) -> None:
        self.repo.garbage_collect()
        refs = self.repo.backend.list_refs("")
        reachable = reachable_objects(self.repo.reader, refs)
        assert set(self.repo.backend.iter_object_ids()) == reachable

    @invariant()
    def verifies(self) -> None:
        if hasattr(self, "repo"):
            report = self.repo.verify()
            assert report.ok, report.problems


class LMDBIncrementalGCMachine(IncrementalGCMachine):
    backend = "lmdb"


_PROFILE = settings()
TestIncrementalGCInMemory = IncrementalGCMachine.TestCase
TestIncrementalGCInMemory.settings = settings(_PROFILE,
                                              max_examples=max(10, _PROFILE.max_examples // 4))
TestIncrementalGCOnLMDB = LMDBIncrementalGCMachine.TestCase
TestIncrementalGCOnLMDB.settings = settings(_PROFILE,
                                            max_examples=max(5, _PROFILE.max_examples // 10))
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# -- directed cases ---------------------------------------------------------------------


def _left_is_reachable(repo: vs.Repository) -> None:
    reachable = reachable_objects(repo.reader, repo.backend.list_refs(""))
    assert set(repo.backend.iter_object_ids()) == reachable


def test_a_run_after_a_small_change_lists_nothing_and_reads_little(
        repo: vs.Repository) -> None:
    session = repo.writable_session()
    for i in range(2000):
        session.store.storage.set(f"k/{i}", bytes([i % 251]) * 600 + str(i).encode())
    session.commit("2000 chunks")
    repo.garbage_collect()  # the first run counts everything and writes the ledger
    commit_values(repo, **{"k/7": b"new" * 300})
    backend = repo.backend
    read: list[int] = []
    original_get = backend.get_objects

    def counting_get(ids: Any) -> Any:
        read.append(len(ids))
        return original_get(ids)

    def no_listing(*_: Any) -> Any:
        raise AssertionError("an incremental run listed every object")

    backend.get_objects = counting_get  # type: ignore[method-assign]
    backend.iter_object_ids = no_listing  # type: ignore[method-assign]
    repo.reader = ObjectReader(backend)  # nothing cached: every read is counted
    try:
        summary = repo.garbage_collect()
    finally:
        backend.__dict__.pop("get_objects")
        backend.__dict__.pop("iter_object_ids")
    assert summary.deleted == 0
    assert summary.reachable > 2000
    assert sum(read) < 40  # the new snapshot, its page and its changed path: not 2000 chunks
    _left_is_reachable(repo)


def test_what_the_grace_period_kept_goes_at_a_later_run(repo: vs.Repository) -> None:
    first = commit_values(repo, a=b"A" * 1000)
    repo.garbage_collect()
    cutoff = datetime.now(UTC)
    time.sleep(0.001)
    commit_values(repo, a=b"B" * 1000)
    repo.reset_branch("main", first)  # the "B" snapshot is garbage, but recent
    assert repo.garbage_collect(cutoff).deleted == 0
    assert repo.garbage_collect(cutoff).deleted == 0  # kept pending, still spared
    summary = repo.garbage_collect()
    assert summary.deleted >= 3  # snapshot, page or tree, and the "B" chunk
    _left_is_reachable(repo)


def test_deleting_a_branch_frees_only_what_it_alone_used(repo: vs.Repository) -> None:
    base = commit_values(repo, a=b"A" * 1000, b=b"B" * 1000)
    repo.create_branch("dev", base)
    commit_values(repo, "dev", c=b"C" * 1000)
    commit_values(repo, "dev", d=b"D" * 1000)
    repo.garbage_collect()
    repo.delete_branch("dev")
    summary = repo.garbage_collect()
    assert summary.deleted >= 4  # two snapshots, their trees, the C and D chunks
    _left_is_reachable(repo)
    assert repo.readonly_session().store.storage.get("b") == b"B" * 1000


def test_a_listing_collection_under_the_ledger_makes_the_next_run_rebuild(
        repo: vs.Repository) -> None:
    first = commit_values(repo, a=b"A" * 1000)
    repo.create_branch("dev", first)
    commit_values(repo, "dev", b=b"B" * 1000)
    repo.garbage_collect()
    repo.delete_branch("dev")
    collect_garbage_by_listing(repo.reader)  # deletes what the ledger still counts
    repo.reader = ObjectReader(repo.backend)  # forget cached nodes of the deleted branch
    commit_values(repo, c=b"C" * 1000)
    repo.garbage_collect()  # the counted objects are gone: rebuilt, nothing lost
    _left_is_reachable(repo)
    assert repo.verify().ok


def test_two_collections_racing_for_the_ledger_both_end_correct(repo: vs.Repository) -> None:
    first = commit_values(repo, a=b"A" * 1000)
    repo.garbage_collect()
    commit_values(repo, a=b"B" * 1000)
    repo.reset_branch("main", first)
    backend = repo.backend
    original = backend.sweep

    def interleaved(*args: Any, **kwargs: Any) -> bool:
        backend.__dict__.pop("sweep")  # once: the other collection sweeps first
        assert repo.garbage_collect().deleted >= 1
        return bool(original(*args, **kwargs))

    backend.sweep = interleaved  # type: ignore[method-assign]
    try:
        summary = repo.garbage_collect()  # its first sweep finds a new header: starts over
    finally:
        backend.__dict__.pop("sweep", None)
    assert summary.deleted == 0
    _left_is_reachable(repo)
    commit_values(repo, c=b"C" * 1000)
    repo.reset_branch("main", first)
    assert repo.garbage_collect().deleted >= 1
    _left_is_reachable(repo)


def test_the_ledger_survives_reopening(tmp_path: Any) -> None:
    path = tmp_path / "repo"
    repo = vs.Repository.create(vs.lmdb_storage(path))
    first = commit_values(repo, a=b"A" * 1000)
    repo.garbage_collect()
    commit_values(repo, a=b"B" * 1000)
    repo.close()
    repo = vs.Repository.open(vs.lmdb_storage(path))
    repo.reset_branch("main", first)

    def no_listing(*_: Any) -> Any:
        raise AssertionError("an incremental run listed every object")

    repo.backend.iter_object_ids = no_listing  # type: ignore[method-assign]
    try:
        assert repo.garbage_collect().deleted >= 2
    finally:
        repo.backend.__dict__.pop("iter_object_ids")
    _left_is_reachable(repo)
    repo.close()


def test_a_run_reads_no_ops_log_entry(repo: vs.Repository) -> None:
    for i in range(30):
        commit_values(repo, a=bytes([i]) * 700)
    repo.garbage_collect()
    commit_values(repo, a=b"last" * 200)
    assert len(repo.backend.list_refs("ops/")) > 30
    backend = repo.backend
    listed: list[dict[str, bytes]] = []
    original = backend.list_refs_except

    def recording(prefixes: Any) -> dict[str, bytes]:
        found = original(prefixes)
        listed.append(found)
        return found

    def no_full_listing(prefix: str, limit: int | None = None) -> Any:
        raise AssertionError(f"an incremental run listed refs under {prefix!r}")

    backend.list_refs_except = recording  # type: ignore[method-assign]
    backend.list_refs = no_full_listing  # type: ignore[method-assign]
    try:
        summary = repo.garbage_collect()
    finally:
        backend.__dict__.pop("list_refs_except")
        backend.__dict__.pop("list_refs")
    assert summary.deleted == 0  # history keeps every version
    assert listed and not any(name.startswith("ops/") for found in listed for name in found)
    _left_is_reachable(repo)


def test_a_branch_moved_during_the_sweep_is_rescued_and_ops_entries_are_not_compared(
        repo: vs.Repository) -> None:
    first = commit_values(repo, a=b"A" * 1000)
    repo.garbage_collect()
    second = commit_values(repo, a=b"B" * 1000)
    repo.reset_branch("main", first)  # the "B" snapshot is garbage as the run reads the refs
    backend = repo.backend
    original = backend.sweep
    rescues: list[set[str]] = []

    def moved_meanwhile(*args: Any, **kwargs: Any) -> bool:
        backend.__dict__.pop("sweep")
        repo.reset_branch("main", second)  # moves main back, and writes an ops-log entry
        rescue = kwargs["rescue"]

        def recording(changed: Any, *rest: Any) -> Any:
            rescues.append(set(changed))
            return rescue(changed, *rest)

        return bool(original(*args, **{**kwargs, "rescue": recording}))

    backend.sweep = moved_meanwhile  # type: ignore[method-assign]
    try:
        summary = repo.garbage_collect()
    finally:
        backend.__dict__.pop("sweep", None)
    assert summary.deleted == 0  # everything the "B" snapshot reaches was rescued
    assert rescues == [{"branch/main"}]  # the new ops-log entry was not compared
    assert repo.readonly_session().store.storage.get("a") == b"B" * 1000
    _left_is_reachable(repo)
    assert repo.verify().ok

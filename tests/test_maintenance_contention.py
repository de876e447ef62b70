"""Maintenance while another process commits in a tight loop: never starved, nothing lost.

The guide promises that expiry, purge and garbage collection are safe while
other processes commit. Each test here starts a real committer process
(``maintenance_workers.commit_loop``, spawn context) that commits one chunk
at a time to a branch of an LMDB repository, runs one maintenance operation
in this process while the commits land, then stops the committer and checks
that the operation completed, that every commit the committer got back is
readable and that ``verify`` is clean.

Before the fix, ``expire_snapshots`` and ``purge`` expected *every* branch
and tag ref unchanged at their final compare-and-swap, so each commit
anywhere made them plan again from scratch: with a few hundred snapshots of
history they failed all their attempts (a ``ConflictError`` naming "(expire)") or
finished only once the committer stopped. A commit that moves a branch the
operation does not write cannot invalidate its plan (``versionstore.expire``
and ``versionstore.purge`` say why), so each now writes on its first attempt;
the tests count the attempts, never the time they took. Garbage collection
was never starved (its sweep rescues what refs changed since its mark
reach): its tests check that it sweeps once, deleting garbage, while the
commits land.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import maintenance_workers as workers
import pytest

import versionstore as vs
from versionstore.backend.protocol import WriteBatch
from versionstore.gc import collect_garbage_by_listing

SPAWN = multiprocessing.get_context("spawn")
WAIT = 120.0  # seconds; a bound on hangs, not an expectation of speed
#: Old commits on ``main``: enough history that planning takes longer than a commit.
HISTORY = 300
#: A bound on the committer; the parent stops it (an Event) long before, as a rule.
LIMIT = 100_000
SECRET = "secret"

pytestmark = pytest.mark.slow


def _commit(repo: vs.Repository, branch: str, message: str, **values: bytes) -> str:
    session = repo.writable_session(branch)
    session.set_values([(key.replace("__", "/"), value) for key, value in values.items()])
    return session.commit(message)


@pytest.fixture
def repo_path(tmp_path: Path) -> str:
    """``main`` and ``ingest``: ``HISTORY`` old commits holding ``/secret``; ``clean``: none.

    Also garbage (a deleted branch's commits) for the collections to delete,
    and a ledger written by a first collection.
    """
    path = str(tmp_path / "repo")
    with vs.Repository.create(vs.lmdb_storage(path)) as repo:
        repo.create_branch("clean", repo.lookup_branch("main"))
        for n in range(HISTORY):
            _commit(repo, "main", f"old {n}", **{f"old__c__{n}": b"o" * 700,
                                                 f"{SECRET}__c__0": b"s" * 700 + bytes([n % 7])})
        repo.create_branch("ingest", repo.lookup_branch("main"))
        repo.garbage_collect()
        repo.create_branch("scratch", repo.lookup_branch("main"))
        for n in range(5):
            _commit(repo, "scratch", f"scratch {n}", **{f"scratch__c__{n}": b"x" * 900})
        repo.delete_branch("scratch")
    return path


@contextmanager
def committing(repo_path: str, branch: str) -> Iterator[list[tuple[str, str, bytes]]]:
    """Run a tight-loop committer on ``branch`` for the block; then the commits it got back."""
    running, stop, queue = SPAWN.Event(), SPAWN.Event(), SPAWN.Queue()
    process = SPAWN.Process(target=workers.commit_loop,
                            args=(repo_path, branch, LIMIT, running, stop, queue))
    process.start()
    landed: list[tuple[str, str, bytes]] = []
    try:
        assert running.wait(WAIT), "the committer did not start"
        yield landed
    finally:
        stop.set()
        status, report = queue.get(timeout=WAIT)
        process.join(timeout=WAIT)
        if process.is_alive():
            process.kill()
            process.join(timeout=10)
    assert status == "ok", "the committer failed:\n" + report
    assert process.exitcode == 0
    landed.extend(report)


def _count_writes(repo: vs.Repository, monkeypatch: pytest.MonkeyPatch,
                  counted: Callable[[WriteBatch], bool]) -> list[bool]:
    """The results of this process's writes that ``counted`` picks, as they happen."""
    results: list[bool] = []
    original = repo.backend.write

    def write(batch: WriteBatch) -> bool:
        result = original(batch)
        if counted(batch):
            results.append(result)
        return result

    monkeypatch.setattr(repo.backend, "write", write)
    return results


def _moves_refs(batch: WriteBatch) -> bool:
    """A maintenance step's batch: it writes a branch, tag or graft ref."""
    return any(name.startswith(("branch/", "tag/", "graft/")) for name in batch.refs)


def _check_afterwards(repo_path: str, landed: list[tuple[str, str, bytes]]) -> None:
    assert len(landed) >= workers.WARM_UP
    with vs.Repository.open(vs.lmdb_storage(repo_path)) as repo:
        for snapshot_id, key, value in landed:
            assert repo.readonly_session(snapshot_id=snapshot_id).store.storage.get(key) == value
        assert repo.verify().ok


# -- expire ----------------------------------------------------------------------------


def test_expire_is_not_starved_by_a_committer_moving_a_branch_forward(
        repo_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The committer moves `ingest`, whose tip is in the planned history, forward.
    cutoff = datetime.now(UTC)
    with committing(repo_path, "ingest") as landed, \
            vs.Repository.open(vs.lmdb_storage(repo_path)) as repo:
        attempts = _count_writes(repo, monkeypatch, _moves_refs)
        expired = repo.expire_snapshots(cutoff)
        assert attempts == [True]  # one plan, one write
        assert len(expired) == HISTORY - 1  # all but main's (and ingest's) tip
    _check_afterwards(repo_path, landed)
    with vs.Repository.open(vs.lmdb_storage(repo_path)) as repo:
        history = [info.id for info in repo.ancestry(branch="ingest")]
        assert history[: len(landed)] == [s for s, _, _ in reversed(landed)]
        assert len(history) == len(landed) + 2  # ingest's old tip, then the first snapshot
        assert not set(history) & expired
        assert repo.garbage_collect().deleted > 0
    _check_afterwards(repo_path, landed)


def test_expire_deleting_branches_is_not_starved_by_a_committer_on_another(
        repo_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with vs.Repository.open(vs.lmdb_storage(repo_path)) as repo:
        old = [info.id for info in repo.ancestry(branch="main")][HISTORY // 2]
        repo.create_branch("stale", old)
        repo.create_tag("v0", old)
        repo.create_tag("v1", repo.lookup_branch("main"))
    cutoff = datetime.now(UTC)
    with committing(repo_path, "clean") as landed, \
            vs.Repository.open(vs.lmdb_storage(repo_path)) as repo:
        attempts = _count_writes(repo, monkeypatch, _moves_refs)
        expired = repo.expire_snapshots(cutoff, delete_expired_branches=True,
                                        delete_expired_tags=True)
        assert attempts == [True]
        assert old in expired
        # main's tip stays, and with it the branch and tag on it (as icechunk 2).
        assert repo.list_branches() == {"main", "ingest", "clean"}
        assert repo.list_tags() == {"v1"}
    _check_afterwards(repo_path, landed)


# -- purge -----------------------------------------------------------------------------


def test_purge_is_not_starved_by_a_committer_on_a_branch_it_does_not_move(
        repo_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with committing(repo_path, "clean") as landed, \
            vs.Repository.open(vs.lmdb_storage(repo_path)) as repo:
        attempts = _count_writes(repo, monkeypatch, _moves_refs)
        result = repo.purge(f"/{SECRET}", message="withdrawn")
        assert attempts == [True]
        assert len(result.rewritten) == HISTORY
        for branch in ("main", "ingest"):
            assert repo.readonly_session(branch).store.storage.get(f"{SECRET}/c/0") is None
    _check_afterwards(repo_path, landed)
    with vs.Repository.open(vs.lmdb_storage(repo_path)) as repo:
        assert repo.lookup_branch("clean") == landed[-1][0]
        assert all(repo.readonly_session(snapshot_id=info.id).store.storage.get(
            f"{SECRET}/c/0") is None for info in repo.ancestry(branch="main"))


# -- garbage collection ------------------------------------------------------------------


def _sweeps(repo: vs.Repository, monkeypatch: pytest.MonkeyPatch, method: str) -> list[bool]:
    """The results of the backend's ``method`` (``sweep`` or ``delete_objects``) calls."""
    results: list[bool] = []
    original = getattr(repo.backend, method)

    def sweep(*args: Any, **kwargs: Any) -> bool:
        result: bool = original(*args, **kwargs)
        results.append(result)
        return result

    monkeypatch.setattr(repo.backend, method, sweep)
    return results


@pytest.mark.parametrize("full", [False, True], ids=["incremental", "full"])
def test_gc_is_not_starved_by_a_committer(repo_path: str, monkeypatch: pytest.MonkeyPatch,
                                          full: bool) -> None:
    with committing(repo_path, "ingest") as landed, \
            vs.Repository.open(vs.lmdb_storage(repo_path)) as repo:
        sweeps = _sweeps(repo, monkeypatch, "sweep")
        listed = _sweeps(repo, monkeypatch, "delete_objects")
        summary = repo.garbage_collect(full=full)
        assert summary.deleted > 0  # the deleted branch's commits
        assert (sweeps, listed) == ([True], [])  # one ledger sweep, no fallback
    _check_afterwards(repo_path, landed)


def test_gc_by_listing_is_not_starved_by_a_committer(
        repo_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with committing(repo_path, "ingest") as landed, \
            vs.Repository.open(vs.lmdb_storage(repo_path)) as repo:
        listed = _sweeps(repo, monkeypatch, "delete_objects")
        summary = collect_garbage_by_listing(repo.reader)
        assert summary.deleted > 0
        assert listed == [True]
    _check_afterwards(repo_path, landed)


def test_expire_then_gc_while_a_committer_runs(repo_path: str) -> None:
    cutoff = datetime.now(UTC) - timedelta(microseconds=1)
    with committing(repo_path, "main") as landed, \
            vs.Repository.open(vs.lmdb_storage(repo_path)) as repo:
        repo.expire_snapshots(cutoff)
        assert repo.garbage_collect().deleted > 0
    _check_afterwards(repo_path, landed)

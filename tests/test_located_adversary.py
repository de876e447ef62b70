"""Attacks on located staging (docs/format.md, "Located staging"; issue 11).

Each test is one way a copy of a session, a killed process, gc or an odd key
could lose a ``set`` that returned or let a commit land half-done; the
promise under attack: every ``set`` that returned is committed (or a newer
write of its key is), and a commit lands whole or raises ``ConflictError``.
All run against moto's S3 server behind the counting proxy (``s3_proxy``).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import located_workers
import pytest
from object_repo_support import S3Repos, aws_env_fixture, s3_fixture, s3_repos_fixture

import versionstore as vs
import versionstore.session as session_module
from versionstore.located_staging import LocatedStaging
from versionstore.refs import Refs
from versionstore.session_store import validate_session_key
from zarrstore.errors import InvalidKeyError

__all__ = ["aws_env_fixture", "s3_fixture", "s3_repos_fixture"]

_NO_GRACE = timedelta(days=1)


@pytest.fixture(autouse=True)
def every_chunk_located(monkeypatch: pytest.MonkeyPatch) -> None:
    """No chunk staged as a log record first (``session._LOGGED_FIRST``): all located."""
    monkeypatch.setattr(session_module, "_LOGGED_FIRST", 0)


def _collect_everything(repo: vs.Repository) -> None:
    """gc with no grace period: idle session records are pruned, old writes collected."""
    repo.garbage_collect(datetime.now(UTC) + _NO_GRACE)


def _committed(repo: vs.Repository, keys: list[str]) -> list[bytes | None]:
    view = repo.readonly_session(branch="main")
    return view.read_entries([view.entry(k) for k in keys])


def _assert_every_returned_write_committed(repo: vs.Repository, workers: list[Any]) -> None:
    """Every write a worker logged as returned is on ``main``; the shared key ``s/c/0``
    holds one worker's value (each copy's writes of it follow each other: a last one wins)."""
    returned = [w.returned() for w in workers]
    for found in returned:
        keys = sorted(k for k in found if k != "s/c/0")
        assert _committed(repo, keys) == [located_workers.value(k, found[k]) for k in keys]
    assert _committed(repo, ["s/c/0"])[0] in [
        located_workers.value("s/c/0", found["s/c/0"]) for found in returned]


def _staged_with_a_copy(s3_repos: S3Repos, items: list[tuple[str, bytes]]
                        ) -> tuple[Any, vs.Repository, vs.Session, vs.Session]:
    """A new repository, a session that staged ``items``, and a copy of it resumed elsewhere."""
    storage = s3_repos.storage()
    repo = vs.Repository.create(storage)
    session = repo.writable_session("main")
    session.set_values(items)
    assert session.session_id is not None
    copy = vs.Repository.open(storage).writable_session("main", resume=session.session_id)
    return storage, repo, session, copy


def test_a_write_after_gc_of_an_idle_committed_session_does_not_revive_an_old_epoch(
        s3_repos: S3Repos) -> None:
    # Epoch numbers restarted at 0 once gc pruned an idle record: the session's
    # old epoch-0 writes (kept: an older snapshot names them) were listed again
    # as pending, and the next commit reverted their keys to those old values.
    repo = vs.Repository.create(s3_repos.storage())
    session = repo.writable_session("main")
    session.set_values([("k/c/0", b"1" * 1000)])
    session.commit("v1")  # located in epoch 0
    session.set_values([("k/c/0", b"2" * 1000)])
    session.commit("v2")  # located in epoch 1
    _collect_everything(repo)
    # Idle, but it committed: its record stays while its base is stored (docs/format.md,
    # S3), so the next writes go on in its epochs instead of restarting them.
    assert list(repo.backend.list_refs("session/")) == [f"session/{session.session_id}"]
    session.set_values([("k/c/1", b"3" * 1000)])
    session.set_values([("k/c/2", b"4" * 1000)])  # located again
    assert session.value("k/c/0") == b"2" * 1000
    session.commit("two more")
    assert _committed(repo, ["k/c/0", "k/c/1", "k/c/2"]) == [
        b"2" * 1000, b"3" * 1000, b"4" * 1000]


def test_a_stale_copys_later_write_beats_an_earlier_write_in_a_newer_epoch(
        s3_repos: S3Repos) -> None:
    # A copy that had not seen a commit wrote into the epoch it last read; the
    # write raced the absorb and was staged as a ref naming that old epoch, and
    # the commit's absorb then let an *earlier* write of the key in the newer
    # epoch replace it (epochs compared first).
    storage, repo, session, copy = _staged_with_a_copy(s3_repos, [("z/c/0", b"0" * 1000)])
    copy.set_values([("z/c/1", b"1" * 1000)])  # the copy reads epoch 0
    session.commit("first")  # absorbs: epoch 1 opens, the copy does not know
    session.set_values([("z/c/2", b"a" * 1000)])  # epoch 1
    copy.set_values([("z/c/2", b"b" * 1000)])  # later, from the stale copy
    assert session.value("z/c/2") == b"b" * 1000
    session.commit("second")
    assert _committed(repo, ["z/c/2"]) == [b"b" * 1000]


def test_a_write_whose_epoch_was_absorbed_committed_and_collected_meanwhile_survives(
        s3_repos: S3Repos, monkeypatch: pytest.MonkeyPatch) -> None:
    # Between a located PUT and its look at the record, another copy absorbs
    # (listing before the PUT landed), commits, and gc runs: the write's epoch
    # is neither open nor closing and nothing names the write, so gc deletes
    # it. The writer then staged a ref naming the deleted object.
    storage, repo, session, copy = _staged_with_a_copy(s3_repos, [("w/c/0", b"0" * 1000)])
    real_put = LocatedStaging.put
    raced = []

    def put_then_race(self: LocatedStaging, epoch: int, items: list[tuple[str, bytes]]
                      ) -> tuple[object, object]:
        if any(key == "w/c/1" for key, _ in items) and not raced:
            raced.append(True)
            # The absorb lists the epoch *before* this PUT lands (and misses it).
            session.commit("meanwhile")
            found = real_put(self, epoch, items)
            _collect_everything(repo)
            return found
        return real_put(self, epoch, items)

    monkeypatch.setattr(LocatedStaging, "put", put_then_race)
    copy.set_values([("w/c/1", b"1" * 1000)])
    assert raced
    copy.commit("the copy's write")
    assert _committed(repo, ["w/c/0", "w/c/1"]) == [b"0" * 1000, b"1" * 1000]
    assert repo.verify().ok


# -- pickled copies in other processes, and SIGKILL at chosen points ----------------------

#: Children fork from a server (obstore's runtime does not survive a plain fork).
_CONTEXT = multiprocessing.get_context("forkserver")
_WAIT = 120.0


class _Worker:
    """A child process writing through a pickled copy of a session (``located_workers``)."""

    def __init__(self, session: vs.Session, tmp_path: Path, worker: int, **config: Any) -> None:
        self.log = tmp_path / f"w{worker}.log"
        self.errors = tmp_path / f"w{worker}.err"
        self.process = _CONTEXT.Process(target=located_workers.write, args=(
            session, {"log": str(self.log), "worker": worker, **config}, str(self.errors)))
        self.process.start()

    def lines(self) -> list[list[str]]:
        text = self.log.read_text() if self.log.exists() else ""
        return [line.split() for line in text.splitlines() if line.strip()]

    def wait_for(self, word: str) -> None:
        deadline = time.monotonic() + _WAIT
        while not any(line[0] == word for line in self.lines()):
            assert self.process.is_alive() or any(line[0] == word for line in self.lines()), (
                self.errors.read_text() if self.errors.exists() else "the worker died")
            assert time.monotonic() < deadline, f"the worker never logged {word!r}"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.process.pid is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(60)
        assert self.process.exitcode == -signal.SIGKILL

    def returned(self) -> dict[str, str]:
        """The newest returned write per key: key -> tag."""
        found: dict[str, str] = {}
        for line in self.lines():
            if line[0] == "set":
                found[line[1]] = line[2]
        return found


def _resume_and_commit(repo: vs.Repository, session_id: str) -> None:
    try:
        session = repo.writable_session("main", resume=session_id)
    except vs.SessionNotFoundError:
        return  # nothing staged: the worker's commit took it all
    with contextlib.suppress(vs.NothingToCommitError):
        session.commit("resumed")


def _started_session(repo: vs.Repository) -> vs.Session:
    """A writable session of ``main`` that has staged (so copies can resume it)."""
    session = repo.writable_session("main")
    session.set_values([("zarr.json", b"{}")])
    return session


@pytest.mark.parametrize("copies_commit", [False, True])
def test_copies_in_other_processes_write_while_the_session_commits(
        s3_repos: S3Repos, tmp_path: Path, copies_commit: bool) -> None:
    # Two copies write (one key each time, and every other time one shared key)
    # while the session commits; with copies_commit, each copy commits too.
    storage = s3_repos.storage()
    repo = vs.Repository.create(storage)
    session = _started_session(repo)
    workers = [_Worker(session, tmp_path, n, count=30, shared="s/c/0",
                       commit_every=7 if copies_commit else 0) for n in range(2)]
    commits = 0
    deadline = time.monotonic() + _WAIT
    while not all(any(line[0] == "done" for line in w.lines()) for w in workers):
        assert time.monotonic() < deadline, "the workers never finished"
        for worker in workers:
            assert worker.process.is_alive() or not worker.errors.exists(), (
                worker.errors.read_text())
        with contextlib.suppress(vs.NothingToCommitError):
            session.commit(f"meanwhile {commits}")
            commits += 1
    for worker in workers:
        worker.process.join(60)
        assert worker.process.exitcode == 0, worker.errors.read_text()
    with contextlib.suppress(vs.NothingToCommitError):
        session.commit("the rest")
    _assert_every_returned_write_committed(repo, workers)
    assert repo.verify().ok
    assert not repo.resumable_sessions()


@pytest.mark.parametrize("pause", ["after_put", "after_close", "before_commit"])
def test_a_copy_killed_mid_write_or_mid_commit_loses_no_returned_write(
        s3_repos: S3Repos, tmp_path: Path, pause: str) -> None:
    # SIGKILL between a located PUT and its look at the record; between the
    # absorb's record closing the epoch and its record of staged refs; after
    # the absorb, before the commit's own record. Then gc (no grace beyond
    # now) runs, the session is reopened by id and committed.
    storage = s3_repos.storage()
    repo = vs.Repository.create(storage)
    session = _started_session(repo)
    assert session.session_id is not None
    worker = _Worker(session, tmp_path, 0, count=6, pause=pause, pause_at=4)
    worker.wait_for("paused")
    worker.kill()
    returned = worker.returned()
    assert len(returned) == (3 if pause == "after_put" else 6)
    repo.garbage_collect(datetime.now(UTC))
    _resume_and_commit(vs.Repository.open(storage), session.session_id)
    keys = sorted(returned)
    assert _committed(repo, keys) == [located_workers.value(k, returned[k]) for k in keys]
    if pause == "after_put":  # the write cut off: absent, or whole
        assert _committed(repo, ["w0/c/3"])[0] in (None, located_workers.value("w0/c/3", "0-3"))
    assert repo.verify().ok
    repo.garbage_collect(datetime.now(UTC))
    assert repo.verify().ok
    assert _committed(repo, keys) == [located_workers.value(k, returned[k]) for k in keys]


# -- hostile keys ---------------------------------------------------------------------------

_HOSTILE = [
    "ü/c/0", "日本/c/0", "emoji😀/c/0", "sp ace/c/0", "dot.key/c/0", "a/c/0", "a/c/01",
    "a/c/0x", "a/c/0/1", "p%2Fq/c/0", "p/q/c/0", "%41/c/0", "A/c/0", "x%/c/0", "x%%/c/0",
    "a/../b/c/0", "../c/0", "./c/0", "a/./c/0", "-/c/0", "_/c/0", "%/c/0",
    "L/" + "x" * 398, "L/" + "%" * 199, "L/" + "%" * 198, "L/" + "é" * 199, "L/" + "日" * 132,
    "L/" + "y" * 700,
    "tab\t/c/0", "nl\n/c/0", "nul\0/c/0", "a//c/0", "/lead/c/0", "trail/c/0/",
]


def _accepted(keys: list[str]) -> list[str]:
    ok = []
    for key in keys:
        try:
            validate_session_key(key)
        except InvalidKeyError:
            continue
        ok.append(key)
    return ok


@pytest.mark.parametrize("prefix_length", [12, 420])
def test_hostile_keys_stage_read_list_and_commit_as_written(
        s3_repos: S3Repos, prefix_length: int) -> None:
    # Escaping must be one-to-one, no key a prefix of another's folder, and a key
    # too long for an object name (with the storage's own prefix) staged another way.
    repo = vs.Repository.create(s3_repos.storage("p" * (prefix_length - 12)
                                                 + uuid.uuid4().hex[:12]))
    keys = _accepted(_HOSTILE)
    assert len(keys) > 20
    values = {key: f"{n}:{key}".encode().ljust(1000, b"#") for n, key in enumerate(keys)}
    session = repo.writable_session("main")
    session.set_values(list(values.items()))  # one batch
    for key in keys[::3]:  # and one at a time, over the first writes
        values[key] = values[key][::-1]
        session.set_values([(key, values[key])])
    assert {k: session.value(k) for k in keys} == values
    assert set(session.staged()) == set(keys)
    session.commit("hostile")
    assert dict(zip(keys, _committed(repo, keys), strict=True)) == values
    assert repo.verify().ok
    _collect_everything(repo)
    assert dict(zip(keys, _committed(repo, keys), strict=True)) == values


# -- deletes, discards, moves and rebases mixed with located writes ---------------------------


def test_rebase_keeps_the_epoch_an_absorb_opened(
        s3_repos: S3Repos, monkeypatch: pytest.MonkeyPatch) -> None:
    # Rebase absorbs first, then writes the record: were it written with the epochs
    # this object read *before* that absorb, the epoch would go back, and a copy's
    # write made in the epoch the absorb opened would be in no open or closing epoch
    # (gc would collect it). It passes: the rebase reads the record again.
    storage, repo, session, copy = _staged_with_a_copy(s3_repos, [("r/c/0", b"0" * 1000)])
    other = repo.writable_session("main")
    other.set_values([("o/c/0", b"o" * 1000)])
    other.commit("the branch moves")
    real = vs.Session._record_state
    calls = []

    def record_state(self: vs.Session) -> bytes | None:
        if self is session and not calls:
            calls.append(True)
            assert copy.value("r/c/0") == b"0" * 1000  # the copy reads the record
            copy.set_values([("r/c/1", b"1" * 1000)])  # into the epoch the absorb opened
        return real(self)

    monkeypatch.setattr(vs.Session, "_record_state", record_state)
    session.rebase()
    assert calls
    repo.garbage_collect(datetime.now(UTC))
    session.commit("after the rebase")
    assert _committed(repo, ["r/c/0", "r/c/1", "o/c/0"]) == [
        b"0" * 1000, b"1" * 1000, b"o" * 1000]


def test_deletes_and_located_writes_of_one_key_apply_in_order(s3_repos: S3Repos) -> None:
    storage = s3_repos.storage()
    repo = vs.Repository.create(storage)
    base = repo.writable_session("main")
    base.set_values([("d/c/0", b"b" * 1000), ("d/c/1", b"b" * 1000)])
    base.commit("base")
    session = repo.writable_session("main")
    assert session.session_id is not None
    session.set_values([("d/c/0", b"1" * 1000), ("d/c/2", b"1" * 1000)])
    copy = vs.Repository.open(storage).writable_session("main", resume=session.session_id)
    session.erase_keys(["d/c/0", "d/c/2"])  # after located writes: the deletes win
    assert session.value("d/c/0") is None and copy.value("d/c/2") is None
    copy.set_values([("d/c/0", b"2" * 1000)])  # then a located write wins again
    session.erase_keys(["d/c/1"])
    copy.set_values([("d/c/1", b"3" * 1000), ("d/c/2", b"3" * 1000)])
    session.erase_keys(["d/c/2"])
    assert {k: session.value(k) for k in ("d/c/0", "d/c/1", "d/c/2")} == {
        "d/c/0": b"2" * 1000, "d/c/1": b"3" * 1000, "d/c/2": None}
    session.commit("mixed")
    assert _committed(repo, ["d/c/0", "d/c/1", "d/c/2"]) == [b"2" * 1000, b"3" * 1000, None]


def test_writes_after_discard_changes_are_kept_and_discarded_ones_stay_gone(
        s3_repos: S3Repos) -> None:
    storage, repo, session, copy = _staged_with_a_copy(
        s3_repos, [("q/c/0", b"0" * 1000), ("q/c/1", b"1" * 1000)])
    session.discard_changes()
    assert not session.has_uncommitted_changes
    copy.set_values([("q/c/2", b"2" * 1000)])  # a copy that did not see the discard
    session.set_values([("q/c/3", b"3" * 1000)])
    _collect_everything(repo)  # the discarded writes are garbage, the new ones are not
    assert sorted(session.staged()) == ["q/c/2", "q/c/3"]
    session.commit("after the discard")
    assert _committed(repo, ["q/c/0", "q/c/1", "q/c/2", "q/c/3"]) == [
        None, None, b"2" * 1000, b"3" * 1000]
    assert repo.verify().ok


def test_a_move_takes_the_located_writes_pending_under_its_source(s3_repos: S3Repos) -> None:
    storage = s3_repos.storage()
    repo = vs.Repository.create(storage)
    session = repo.writable_session("main")
    session.set_values([("g/zarr.json", b'{"node_type": "group"}'), ("g/c/0", b"0" * 1000)])
    session.commit("a group")
    session.set_values([("g/c/1", b"1" * 1000)])
    assert session.session_id is not None
    copy = vs.Repository.open(storage).writable_session("main", resume=session.session_id)
    copy.set_values([("g/c/2", b"2" * 1000), ("g/c/0", b"9" * 1000)])  # pending, by a copy
    session.move("/g", "/h")
    assert session.value("g/c/2") is None and session.value("h/c/0") == b"9" * 1000
    copy.set_values([("h/c/3", b"3" * 1000)])  # a stale copy writes under the target
    _collect_everything(repo)
    session.commit("moved")
    keys = ["g/c/0", "g/c/1", "g/c/2", "h/c/0", "h/c/1", "h/c/2", "h/c/3"]
    assert _committed(repo, keys) == [None, None, None, b"9" * 1000, b"1" * 1000,
                                      b"2" * 1000, b"3" * 1000]
    _collect_everything(repo)
    assert repo.verify().ok
    assert _committed(repo, keys[3:]) == [b"9" * 1000, b"1" * 1000, b"2" * 1000, b"3" * 1000]


def test_rebase_and_amend_carry_pending_located_writes(s3_repos: S3Repos) -> None:
    storage = s3_repos.storage()
    repo = vs.Repository.create(storage)
    session = repo.writable_session("main")
    session.set_values([("b/c/0", b"0" * 1000)])
    other = repo.writable_session("main")
    other.set_values([("b/c/0", b"x" * 1000), ("b/c/1", b"x" * 1000)])
    other.commit("theirs")
    with pytest.raises(vs.ConflictError):
        session.rebase()
    session.rebase(keep="ours")
    session.set_values([("b/c/2", b"2" * 1000)])
    session.commit("ours")
    assert _committed(repo, ["b/c/0", "b/c/1", "b/c/2"]) == [
        b"0" * 1000, b"x" * 1000, b"2" * 1000]
    session.set_values([("b/c/3", b"3" * 1000)])
    session.amend("ours, and one more")
    assert _committed(repo, ["b/c/0", "b/c/1", "b/c/2", "b/c/3"]) == [
        b"0" * 1000, b"x" * 1000, b"2" * 1000, b"3" * 1000]


# -- gc while a session writes ----------------------------------------------------------------


def test_a_write_landing_after_gc_listed_survives_the_prune_of_its_idle_record(
        s3_repos: S3Repos, monkeypatch: pytest.MonkeyPatch) -> None:
    # An idle session (committed, nothing pending) writes again while gc runs:
    # gc listed the located writes before the PUT landed, found the session idle
    # and pruned its record after the write had looked at it and returned. The
    # write's epoch is then in no record, and the next gc deleted it.
    storage = s3_repos.storage()
    repo = vs.Repository.create(storage)
    session = repo.writable_session("main")
    session.set_values([("i/c/0", b"0" * 1000)])
    session.commit("one")
    collector = vs.Repository.open(storage)
    real = type(collector.backend).list_located_written
    raced = []

    def listed_then_write(backend: Any) -> Any:
        found = real(backend)
        if backend is collector.backend and not raced:
            raced.append(True)
            session.set_values([("i/c/1", b"1" * 1000)])  # returns before the prune
        return found

    monkeypatch.setattr(type(collector.backend), "list_located_written", listed_then_write)
    collector.garbage_collect(datetime.now(UTC))  # no grace: the session is idle
    assert raced
    collector.garbage_collect(datetime.now(UTC))
    assert session.value("i/c/1") == b"1" * 1000
    session.commit("two")
    assert _committed(repo, ["i/c/0", "i/c/1"]) == [b"0" * 1000, b"1" * 1000]


def test_a_pickled_copy_stages_its_first_chunk_located_without_an_absorb(
        s3_repos: S3Repos, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each dask task writes through its own unpickled copy: were a copy's first
    # chunks log records (the small-commit rule, session._LOGGED_FIRST), every
    # task would pay a log record and an absorb (close record, LIST, refs record).
    monkeypatch.setattr(session_module, "_LOGGED_FIRST", 4)
    repo = vs.Repository.create(s3_repos.storage())
    session = _started_session(repo)
    session.set_values([(f"a/c/{n}", bytes([n]) * 1000) for n in range(6)])  # epoch open
    copies = [pickle.loads(pickle.dumps(session)) for _ in range(3)]
    proxy = s3_repos.proxy
    proxy.reset_counts()
    for n, copy in enumerate(copies):
        copy.set_values([(f"b/c/{n}", bytes([n]) * 1000)])
    log_writes = sum(count for request, count in proxy.requests.items()
                     if request.startswith("PUT") and "/log/" in request)
    assert log_writes == 0, dict(proxy.requests)
    session.commit("copies")
    assert _committed(repo, [f"b/c/{n}" for n in range(3)]) == [
        bytes([n]) * 1000 for n in range(3)]


def test_gc_without_grace_while_copies_write_and_the_session_commits(
        s3_repos: S3Repos, tmp_path: Path) -> None:
    # gc with no grace period (older_than = now) again and again while two copies in
    # other processes write and the session commits: nothing that returned is lost.
    storage = s3_repos.storage()
    repo = vs.Repository.create(storage)
    session = _started_session(repo)
    collector = vs.Repository.open(storage)
    workers = [_Worker(session, tmp_path, n, count=25, shared="s/c/0") for n in range(2)]
    rounds = 0
    deadline = time.monotonic() + _WAIT
    while not all(any(line[0] == "done" for line in w.lines()) for w in workers):
        assert time.monotonic() < deadline, "the workers never finished"
        for worker in workers:
            assert worker.process.is_alive() or not worker.errors.exists(), (
                worker.errors.read_text())
        collector.garbage_collect(datetime.now(UTC))
        if rounds % 2:
            with contextlib.suppress(vs.NothingToCommitError):
                session.commit(f"meanwhile {rounds}")
        rounds += 1
    for worker in workers:
        worker.process.join(60)
        assert worker.process.exitcode == 0, worker.errors.read_text()
    collector.garbage_collect(datetime.now(UTC))
    with contextlib.suppress(vs.NothingToCommitError):
        session.commit("the rest")
    collector.garbage_collect(datetime.now(UTC))
    _assert_every_returned_write_committed(repo, workers)
    assert repo.verify().ok


def test_a_copy_pickled_before_a_commit_and_a_gc_builds_on_the_commit(
        s3_repos: S3Repos) -> None:
    # On object storage as on LMDB: gc pruned the record the commit had emptied, the
    # copy recreated it with its older base and rewrote the chunk from it, and the
    # session's next commit dropped the committed value.
    repo = vs.Repository.create(s3_repos.storage())
    driver = repo.writable_session("main")
    driver.set_values([("g/c/0", b"0" * 1000)])
    driver.commit("create")
    blob = pickle.dumps(driver)
    driver.set_values([("g/c/0", b"1" * 1000)])
    driver.commit("the session's own change")
    _collect_everything(repo)
    worker = pickle.loads(blob)
    assert worker.value("g/c/0") == b"1" * 1000  # it follows the commit
    worker.set_values([("g/c/1", worker.value("g/c/0") + b"+")])
    driver.commit("the worker's")
    assert _committed(repo, ["g/c/0", "g/c/1"]) == [b"1" * 1000, b"1" * 1000 + b"+"]
    assert repo.verify().ok


def test_a_commit_after_gc_of_an_idle_committed_session_does_not_reopen_an_old_epoch(
        s3_repos: S3Repos) -> None:
    # An idle session object kept the epochs it last read; gc pruned the record, a
    # log-recorded write recreated it (without epochs), and the commit wrote the
    # stale epochs back: an epoch whose writes a copy had committed long before was
    # open again, and the next commit reverted a key another writer had changed since.
    # (gc now keeps the record of a session that committed while its base is stored;
    # the object's stale epochs must still not come back.)
    storage = s3_repos.storage()
    repo = vs.Repository.create(storage)
    session = repo.writable_session("main")
    session.set_values([("e/c/0", b"0" * 1000)])
    session.commit("one")  # this object now writes into epoch 1
    assert session.session_id is not None
    copy = pickle.loads(pickle.dumps(session))
    copy.set_values([("e/c/1", b"1" * 1000)])  # epoch 1
    copy.commit("the copy's")  # epoch 2
    _collect_everything(repo)
    assert list(repo.backend.list_refs("session/")) == [f"session/{session.session_id}"]
    other = repo.writable_session("main")
    other.set_values([("e/c/1", b"2" * 1000)])
    other.commit("another writer changes e/c/1")
    session.set_values([("zarr.json", b"{}")])  # a log record
    session.commit("metadata")
    assert session.value("e/c/1") == b"2" * 1000
    session.set_values([("e/c/2", b"3" * 1000)])
    session.commit("more")
    assert _committed(repo, ["e/c/0", "e/c/1", "e/c/2"]) == [
        b"0" * 1000, b"2" * 1000, b"3" * 1000]


def test_a_copy_opening_the_first_epoch_while_the_session_commits_loses_nothing(
        s3_repos: S3Repos, monkeypatch: pytest.MonkeyPatch) -> None:
    # The session object had staged only log records (its record had no epochs), so
    # its commit did not expect the record as read: a copy that opened the first
    # epoch and wrote into it meanwhile had its epoch overwritten by the commit.
    monkeypatch.setattr(session_module, "_LOGGED_FIRST", 4)
    repo = vs.Repository.create(s3_repos.storage())
    session = repo.writable_session("main")
    session.set_values([("f/c/0", b"0" * 1000)])  # a log record: no epochs yet
    copy = pickle.loads(pickle.dumps(session))
    real = Refs.move_branch
    raced = []

    def move_branch(self: Refs, *args: Any, **kwargs: Any) -> Any:
        if not raced:
            raced.append(True)
            copy.set_values([("f/c/1", b"1" * 1000)])  # opens epoch 0, located
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Refs, "move_branch", move_branch)
    session.commit("the session's")
    assert raced
    assert session.value("f/c/1") == b"1" * 1000
    with contextlib.suppress(vs.NothingToCommitError):  # the first commit took it
        session.commit("the copy's")
    assert _committed(repo, ["f/c/0", "f/c/1"]) == [b"0" * 1000, b"1" * 1000]

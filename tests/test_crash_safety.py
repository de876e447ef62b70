"""Crash safety: worker processes SIGKILLed while they stage and commit.

DESIGN.md promises that a crash at any instant leaves the last committed
state intact and readable, and the issue adds that a writable session's
staged changes survive a dead kernel. Here real subprocesses
(``process_workers.py``, never forked) write an uncompressed zarr array
``a`` round after round and are killed — at random moments, and at chosen
points inside a commit — and after every kill the repository must open,
every snapshot on ``main`` must read back exactly the round it records, every
commit the worker saw return must be there, and its last session must be
either resumable with everything it staged, or cleanly gone.

The last tests are regressions for two bugs found while writing these: a process
killed inside an LMDB read transaction pinned the file's old pages, and a
staged write could return without the session record that makes it
resumable.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import branch_workers
import numpy as np
import process_workers as workers
import pytest
import zarr
from process_workers import CHUNKS, chunk_bytes, chunk_key, read_log

import versionstore as vs

WORKER_SCRIPT = Path(workers.__file__).resolve()
WAIT = 120.0  # seconds; a bound on hangs, not an expectation of speed


class Worker:
    """A crash worker subprocess, started early so its imports overlap other work.

    It opens the repository, logs ``ready``, waits for ``go``, logs
    ``started`` and runs ``command`` until it dies or is killed.
    """

    def __init__(self, repo_path: str, logs: Path, command: str, first_round: int,
                 *extra: str) -> None:
        logs.mkdir()
        self.logs = logs
        self._stderr = (logs / "stderr").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER_SCRIPT), command, repo_path, str(logs),
             str(first_round), *extra],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr,
        )

    def events(self) -> list[str]:
        return [line[0] for line in read_log(self.logs / "events.log")]

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        """Poll ``condition``; fail (with the worker's stderr) if it exits or stalls first."""
        deadline = time.monotonic() + WAIT
        while not condition():
            if self.process.poll() is not None:
                pytest.fail(f"worker exited ({self.process.returncode}) before {what}:\n"
                            + (self.logs / "stderr").read_text())
            if time.monotonic() > deadline:
                pytest.fail(f"worker never reached {what}")
            time.sleep(0.002)

    def go(self) -> None:
        """Release the worker and wait until it reports that it started."""
        self.wait_for(lambda: "ready" in self.events(), "ready")
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")
        self.process.stdin.flush()
        self.wait_for(lambda: "started" in self.events(), "started")

    def kill(self) -> None:
        """SIGKILL the worker; it must still have been running."""
        alive = self.process.poll() is None
        self.stop()
        assert alive, "worker died on its own:\n" + (self.logs / "stderr").read_text()

    def stop(self, *, kill: bool = True) -> int:
        """Kill the worker (unless ``kill`` is false), wait for it to exit; its return code."""
        if kill and self.process.poll() is None:
            self.process.kill()
        try:
            returncode = self.process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:  # a worker that should have died by itself hangs
            self.process.kill()
            self.process.wait(timeout=WAIT)
            raise
        if self.process.stdin is not None:
            self.process.stdin.close()
        self._stderr.close()
        return returncode


@pytest.fixture
def repo_path(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "repo")
    with vs.Repository.create(vs.lmdb_storage(path)) as repo:
        session = repo.writable_session("main")
        workers.create_crash_array(session)
        session.commit("create a", metadata={"round": None})
    yield path


def _snapshot_round(info: vs.SnapshotInfo) -> int | None:
    return info.metadata.get("round")


def _expected_chunks(round_: int | None) -> list[bytes | None]:
    return [None if round_ is None else chunk_bytes(round_, i) for i in range(CHUNKS)]


def _read_chunks(session: vs.Session) -> list[bytes | None]:
    return session.store.storage.get_many([(chunk_key(i), None) for i in range(CHUNKS)])


def check_snapshot(repo: vs.Repository, info: vs.SnapshotInfo, *, through_zarr: bool = False
                   ) -> None:
    """The snapshot holds exactly the round its metadata names (``None``: no chunks yet)."""
    session = repo.readonly_session(snapshot_id=info.id)
    round_ = _snapshot_round(info)
    assert _read_chunks(session) == _expected_chunks(round_), f"snapshot {info.id}"
    if through_zarr:
        values = zarr.open_array(session.store, path="a", mode="r")[:]
        expected = np.full(CHUNKS * workers.CHUNK, -1) if round_ is None \
            else workers.array_values(round_)
        np.testing.assert_array_equal(values, expected)


class CrashChecker:
    """What must hold after each kill, and what has been proven so far."""

    def __init__(self, repo_path: str) -> None:
        self.storage = vs.lmdb_storage(repo_path)
        self.logged: dict[str, int] = {}  # snapshot id -> round, from workers' commit logs
        self.history: list[str] = []  # main's snapshot ids, oldest first, at the last check
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.rng = random.Random(7)

    def history_of(self, repo: vs.Repository) -> list[vs.SnapshotInfo]:
        infos = list(repo.ancestry(branch="main"))[::-1]
        for parent, child in zip(infos, infos[1:], strict=False):
            assert child.parent_id == parent.id
        ids = [info.id for info in infos]
        assert ids[: len(self.history)] == self.history, "committed history changed"
        rounds = [int(info.metadata["round"]) for info in infos[2:]]
        assert rounds == sorted(set(rounds)), "a round committed twice or out of order"
        return infos

    def after_kill(self, logs: Path) -> str:
        """Check the repository after the worker that logged to ``logs`` was killed."""
        with vs.Repository.open(self.storage) as repo:
            infos = self.history_of(repo)
            by_id: dict[str, vs.SnapshotInfo] = {info.id: info for info in infos}
            for snapshot, text in read_log(logs / "commits.log"):
                self.logged[snapshot] = int(text)
            for snapshot, round_ in self.logged.items():
                assert snapshot in by_id, f"logged commit {snapshot} (round {round_}) is lost"
                assert _snapshot_round(by_id[snapshot]) == round_
            new = infos[len(self.history):]
            old = infos[: len(self.history)]
            for info in new + self.rng.sample(old, min(3, len(old))):
                check_snapshot(repo, info)
            outcome = self._check_sessions(repo, infos, logs)
            self.history = [info.id for info in self.history_of(repo)]
        self.outcomes[outcome] += 1
        return outcome

    def _check_sessions(self, repo: vs.Repository, infos: list[vs.SnapshotInfo], logs: Path
                        ) -> str:
        sessions = [(int(r), sid) for r, sid in read_log(logs / "sessions.log")]
        committed_rounds = {_snapshot_round(info) for info in infos}
        for round_, session_id in sessions[:-1]:  # committed and logged: nothing to resume
            assert round_ in committed_rounds
            with pytest.raises(vs.SessionNotFoundError):
                repo.writable_session("main", resume=session_id)
        if not sessions:
            return "killed before its first session"
        round_, session_id = sessions[-1]
        staged = {int(i) for r, i in read_log(logs / "staged.log") if int(r) == round_}
        try:
            resumed = repo.writable_session("main", resume=session_id)
        except vs.SessionNotFoundError:
            if round_ in committed_rounds:
                logged = round_ in self.logged.values()
                return "after commit" if logged else "in commit, after the branch moved"
            assert not staged, "staged writes were logged, but the session is gone"
            return "before its first staged write"
        # Resumable: the commit did not happen, the base is the tip, all logged writes are there.
        assert round_ not in committed_rounds
        tip = infos[-1]
        assert resumed.snapshot_id == tip.id and resumed.has_uncommitted_changes
        mine, before = _expected_chunks(round_), _expected_chunks(_snapshot_round(tip))
        seen = _read_chunks(resumed)
        for index, value in enumerate(seen):
            if index in staged:
                assert value == mine[index], f"logged staged chunk {index} is lost"
            else:
                assert value in (mine[index], before[index]), f"chunk {index} is torn"
        done = sum(value == mine[index] for index, value in enumerate(seen))
        # Finish the round through the resumed session: it must commit like any other.
        resumed.set_values([(chunk_key(i), mine[i]) for i in range(CHUNKS)  # type: ignore[misc]
                            if seen[i] != mine[i]])
        snapshot = resumed.commit(f"round {round_} (resumed)", metadata={"round": round_})
        self.logged[snapshot] = round_
        assert repo.lookup_branch("main") == snapshot
        check_snapshot(repo, repo.lookup_snapshot(snapshot))
        return "in commit, before the branch moved" if done == CHUNKS else "while staging"

    def final_check(self) -> None:
        with vs.Repository.open(self.storage) as repo:
            infos = self.history_of(repo)
            assert set(self.logged) <= {info.id for info in infos}
            for n, info in enumerate(infos):
                check_snapshot(repo, info, through_zarr=n % 10 == 1 or n == len(infos) - 1)
            assert repo.resumable_sessions() == {}
            report = repo.verify()
            assert report.ok, report.problems


#: Random-kill trials: at least MIN_TRIALS, then more while within BUDGET seconds, up to
#: MAX_TRIALS. The budget bounds the test's length on a slow machine; it asserts nothing.
MIN_TRIALS, MAX_TRIALS, BUDGET = 20, 40, 35.0


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing(repo_path: str, tmp_path: Path) -> None:
    prestarted = 2  # workers importing ahead, so a trial does not wait for Python to start
    rng = random.Random(20240917)
    checker = CrashChecker(repo_path)
    started = time.monotonic()

    def spawn(trial: int) -> Worker:
        return Worker(repo_path, tmp_path / f"trial-{trial}", "commit-loop", trial * 1000)

    pending = collections.deque(spawn(t) for t in range(prestarted))
    trials = 0
    try:
        while trials < MAX_TRIALS and (trials < MIN_TRIALS
                                       or time.monotonic() - started < BUDGET):
            worker = pending.popleft()
            worker.go()
            pending.append(spawn(trials + prestarted))
            time.sleep(rng.uniform(0.0, 0.3))
            worker.kill()
            checker.after_kill(worker.logs)
            trials += 1
            if trials % 10 == 0:
                with vs.Repository.open(checker.storage) as repo:
                    assert repo.verify().ok
    finally:
        for worker in pending:
            worker.stop()
    checker.final_check()
    print(f"\n{trials} kills in {time.monotonic() - started:.1f} s, "
          f"{len(checker.logged)} commits checked; killed: {dict(checker.outcomes)}")


@pytest.mark.slow
def test_sigkill_while_staging_then_resume_and_commit(repo_path: str, tmp_path: Path) -> None:
    rng = random.Random(99)
    started = [Worker(repo_path, tmp_path / f"trial-{trial}", "stage-forever", trial)
               for trial in range(3)]  # all at once, so that their imports overlap
    try:
        for trial, worker in enumerate(started):
            worker.go()
            log, wanted = worker.logs / "staged.log", 20 + rng.randrange(200)
            worker.wait_for(partial(_has_lines, log, wanted), f"{wanted} staged writes")
            time.sleep(rng.uniform(0.0, 0.02))
            worker.kill()
            _check_resumed_staging(repo_path, worker.logs, trial)
    finally:
        for worker in started:
            worker.stop()


def _has_lines(log: Path, count: int) -> bool:
    return len(read_log(log)) >= count


def _check_resumed_staging(repo_path: str, logs: Path, trial: int) -> None:
    [(_, session_id)] = read_log(logs / "sessions.log")
    logged = [int(n) for _, n in read_log(logs / "staged.log")]
    with vs.Repository.open(vs.lmdb_storage(repo_path)) as repo:
        tip = repo.lookup_branch("main")
        resumed = repo.writable_session("main", resume=session_id)
        assert resumed.snapshot_id == tip
        storage = resumed.store.storage
        prefix = f"k{trial}/"
        staged = sorted(int(key.removeprefix(prefix)) for key in storage.list_prefix(prefix))
        # Every logged write is there; at most the one in flight beyond them.
        assert staged[: len(logged)] == logged and len(staged) <= len(logged) + 1
        values = {n: chunk_bytes(trial, n % CHUNKS) for n in staged}
        assert {n: storage.get(f"{prefix}{n}") for n in staged} == values
        snapshot = resumed.commit(f"resumed staging {trial}")
        assert repo.lookup_branch("main") == snapshot
        assert repo.lookup_snapshot(snapshot).parent_id == tip
        committed = repo.readonly_session(snapshot_id=snapshot).store.storage
        assert {n: committed.get(f"{prefix}{n}") for n in staged} == values
        with pytest.raises(vs.SessionNotFoundError):
            repo.writable_session("main", resume=session_id)


KILL_POINTS = ["mid-stage-txn", "before-cas", "mid-commit-txn", "after-cas"]


def _dying_worker(repo_path: str, logs: Path, point: str, round_: int = 7) -> Worker:
    """Start (but do not release) a worker that will kill itself at ``point``."""
    return Worker(repo_path, logs, "die-at", round_, point)


def _kill_at(worker: Worker) -> tuple[str, list[str]]:
    """Release a dying worker, let it die; its session id and attempted snapshots."""
    logs = worker.logs
    worker.go()
    assert worker.stop(kill=False) == -signal.SIGKILL, (logs / "stderr").read_text()
    [(_, session_id)] = read_log(logs / "sessions.log")
    return session_id, [line[0] for line in read_log(logs / "attempts.log")]


@pytest.mark.slow
@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_at_chosen_points_in_a_commit(repo_path: str, tmp_path: Path, point: str
                                            ) -> None:
    # The parent keeps the repository open across the kill: LMDB must hand the
    # dead writer's lock on to the next writer.
    with vs.Repository.open(vs.lmdb_storage(repo_path)) as repo:
        tip = repo.lookup_branch("main")
        session_id, attempted = _kill_at(_dying_worker(repo_path, tmp_path / "logs", point))
        staged = len(read_log(tmp_path / "logs" / "staged.log"))
        assert repo.verify().ok
        if point == "after-cas":  # the branch moved: committed whole, session gone
            [snapshot] = attempted
            assert repo.lookup_branch("main") == snapshot
            info = repo.lookup_snapshot(snapshot)
            assert info.parent_id == tip and info.metadata == {"round": 7}
            check_snapshot(repo, info, through_zarr=True)
            with pytest.raises(vs.SessionNotFoundError):
                repo.writable_session("main", resume=session_id)
            return
        assert repo.lookup_branch("main") == tip
        assert len(attempted) == (0 if point == "mid-stage-txn" else 1)
        for snapshot in attempted:  # its objects are written with the branch move, or not at all
            with pytest.raises(vs.SnapshotNotFoundError):
                repo.lookup_snapshot(snapshot)
        resumed = repo.writable_session("main", resume=session_id)
        # Staged batches are atomic: the killed fifth batch left nothing behind.
        assert staged == (4 * workers.BATCH if point == "mid-stage-txn" else CHUNKS)
        assert _read_chunks(resumed) == _expected_chunks(7)[:staged] + [None] * (CHUNKS - staged)
        other = repo.writable_session("main")  # the next writer is not blocked
        other.store.storage.set("other", b"x")
        other_snapshot = other.commit("another writer")
        resumed.set_values([(chunk_key(i), chunk_bytes(7, i)) for i in range(staged, CHUNKS)])
        snapshot = resumed.commit("round 7, resumed", metadata={"round": 7})
        history = [info.id for info in repo.ancestry(branch="main")]
        assert history[:3] == [snapshot, other_snapshot, tip]
        check_snapshot(repo, repo.lookup_snapshot(snapshot), through_zarr=True)
        assert repo.verify().ok


@pytest.mark.slow
def test_orphans_of_a_killed_commit_never_become_visible(repo_path: str, tmp_path: Path
                                                         ) -> None:
    with vs.Repository.open(vs.lmdb_storage(repo_path)) as repo:
        tip = repo.lookup_branch("main")

        def objects() -> set[bytes]:
            return set(repo.backend.iter_object_ids())

        def visible() -> set[str]:
            return {info.id for branch in repo.list_branches()
                    for info in repo.ancestry(branch=branch)}

        # Both workers start now, so that their imports overlap.
        first = _dying_worker(repo_path, tmp_path / "killed", "mid-commit-txn")
        second = _dying_worker(repo_path, tmp_path / "abandoned", "before-cas", round_=8)
        before = objects()
        session_id, [attempt] = _kill_at(first)
        killed = repo.writable_session("main", resume=session_id)
        staged_chunks = {entry.chunk_id for entry in killed.staged().values()}  # type: ignore[union-attr]
        # What the dead process wrote before its branch compare-and-swap is
        # exactly its staged chunks; its tree nodes and snapshot died with the
        # transaction they were being written in.
        assert len(staged_chunks) == CHUNKS and objects() - before == staged_chunks
        with pytest.raises(vs.SnapshotNotFoundError):
            repo.lookup_snapshot(attempt)
        assert repo.lookup_branch("main") == tip and visible() == {
            info.id for info in repo.ancestry(branch="main")}
        assert _read_chunks(repo.readonly_session("main")) == _expected_chunks(None)
        assert repo.diff(from_snapshot_id=tip, to_branch="main").is_empty()
        # Garbage collection keeps them while the session can still commit them ...
        assert repo.garbage_collect().deleted == 0
        # ... and later commits build on the tip, never on the dead attempt.
        fresh = repo.writable_session("main")
        fresh.store.storage.set("later", b"1")
        later = fresh.commit("later")
        final = killed.commit("round 7, resumed", metadata={"round": 7})
        assert [info.id for info in repo.ancestry(branch="main")][:3] == [final, later, tip]
        assert attempt not in visible()
        assert _read_chunks(repo.readonly_session("main")) == _expected_chunks(7)

        # A second dead writer whose session is abandoned: its chunks stay
        # invisible, and once discarded, garbage collection removes exactly them.
        committed = objects()
        abandoned_id, _ = _kill_at(second)
        orphans = objects() - committed
        assert len(orphans) == CHUNKS
        tip = repo.lookup_branch("main")
        assert _read_chunks(repo.readonly_session("main")) == _expected_chunks(7)
        repo.writable_session("main", resume=abandoned_id).discard_changes()
        with pytest.raises(vs.SessionNotFoundError):
            repo.writable_session("main", resume=abandoned_id)
        assert repo.garbage_collect().deleted == CHUNKS
        assert objects() == committed and repo.lookup_branch("main") == tip
        assert repo.verify().ok


def test_a_write_that_returned_is_resumable_while_another_is_in_flight(
    repo_path: str, tmp_path: Path
) -> None:
    """Regression: the session record (what makes staged writes resumable) was
    marked written before its write happened, so a second thread's write could
    return without it; a crash then left that write staged but not resumable."""
    worker = Worker(repo_path, tmp_path / "logs", "die-with-a-held-write", 0)
    worker.go()
    assert worker.stop(kill=False) == -signal.SIGKILL, (tmp_path / "logs/stderr").read_text()
    [(_, session_id)] = read_log(tmp_path / "logs" / "sessions.log")
    assert read_log(tmp_path / "logs" / "staged.log") == [["second"]]
    with vs.Repository.open(vs.lmdb_storage(repo_path)) as repo:
        resumed = repo.writable_session("main", resume=session_id)
        storage = resumed.store.storage
        assert (storage.get("first"), storage.get("second")) == (None, b"2")
        snapshot = resumed.commit("resumed")
        assert repo.readonly_session(snapshot_id=snapshot).store.storage.get("second") == b"2"


def test_a_failed_first_write_does_not_make_later_ones_unresumable(
    repo_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a session's first staged write failing (full disk, interrupt)
    left it believing its record was stored, so no later write stored it."""
    with vs.Repository.open(vs.lmdb_storage(repo_path)) as repo:
        session = repo.writable_session("main")
        write = repo.backend.write

        def failing(*args: object, **kwargs: object) -> None:
            raise vs.BackendError("simulated: disk full")

        monkeypatch.setattr(repo.backend, "write", failing)
        with pytest.raises(vs.BackendError):
            session.store.storage.set("k", b"lost")
        monkeypatch.setattr(repo.backend, "write", write)
        session.store.storage.set("k", b"kept")
        assert session.session_id is not None
        resumed = repo.writable_session("main", resume=session.session_id)
        assert resumed.store.storage.get("k") == b"kept"


def _churn(repo: vs.Repository, rounds: int) -> None:
    """Many small write transactions that add almost no data (values repeat)."""
    for round_ in range(rounds):
        session = repo.writable_session("main")
        for index in range(100):
            session.store.storage.set(f"churn/{index}", bytes([round_ % 2]) * 1024)
        session.commit(f"churn {round_}")


def test_a_reader_killed_mid_transaction_does_not_pin_the_file(repo_path: str, tmp_path: Path
                                                               ) -> None:
    """Regression: a process SIGKILLed inside an LMDB read transaction left its reader
    slot behind, and while any process kept the repository open LMDB could never
    reuse a page freed after that moment: every write grew the file (tens of MB
    for this churn), and about a thousand such deaths would fill the reader table.
    Opening a repository now clears the slots of dead processes."""
    storage = vs.lmdb_storage(repo_path)
    data_file = Path(repo_path) / "data.mdb"
    with vs.Repository.open(storage) as holder:  # keeps the environment open throughout
        worker = Worker(repo_path, tmp_path / "logs", "die-reading", 0)
        worker.go()
        assert worker.stop(kill=False) == -signal.SIGKILL, (tmp_path / "logs/stderr").read_text()
        with vs.Repository.open(storage) as repo:  # as the next process would
            _churn(repo, 2)
            before = data_file.stat().st_size
            _churn(repo, 20)
            growth = data_file.stat().st_size - before
            assert holder.lookup_branch("main") == repo.lookup_branch("main")
    # 2,000 write transactions of ~1 KiB values; with freed pages reusable the
    # file barely grows (a pinned reader made it grow by ~19 KiB per transaction).
    assert growth < 4 << 20, f"the data file grew by {growth} bytes"


def test_worker_helpers_agree_with_zarr(tmp_path: Path) -> None:
    """``chunk_bytes`` is exactly what zarr stores for array ``a`` (no codec surprises)."""
    with vs.Repository.create(vs.lmdb_storage(tmp_path / "repo")) as repo:
        session = repo.writable_session("main")
        workers.create_crash_array(session)
        zarr.open_array(session.store, path="a", mode="r+")[:] = workers.array_values(3)
        assert _read_chunks(session) == _expected_chunks(3)


# -- two writers on two branches and a collector, all killed at one random instant ---------

#: Children fork from a server that imported everything once; LMDB is opened only in them.
_FORKSERVER = multiprocessing.get_context("forkserver")
_FORKSERVER.set_forkserver_preload(["versionstore"])  # unless another test started it


class _Forked:
    """A ``branch_workers`` function in a forkserver child, released by ``go``."""

    def __init__(self, logs: Path, target: Callable[..., None], *args: object) -> None:
        logs.mkdir()
        self.logs = logs
        receive, self._go = _FORKSERVER.Pipe(duplex=False)
        self.process = _FORKSERVER.Process(target=target, args=(*args, receive))
        self.process.start()

    def events(self) -> list[list[str]]:
        return self.events_of(self.logs)

    def go(self) -> None:
        self._go.send("go")
        deadline = time.monotonic() + WAIT
        while not self.events():
            assert self.process.is_alive(), f"worker died ({self.process.exitcode})"
            assert time.monotonic() < deadline, "worker never started"
            time.sleep(0.002)

    def kill(self) -> None:
        assert self.process.is_alive(), f"worker died on its own ({self.process.exitcode})"
        self.process.kill()
        self.process.join(WAIT)
        self._go.close()

    @staticmethod
    def events_of(logs: Path) -> list[list[str]]:
        path = logs / "events.log"
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def _check_branch(repo: vs.Repository, branch: str, events: list[list[str]],
                  logged: dict[str, int]) -> str:
    """Every logged commit is on ``branch`` with its round; the last session resumes whole."""
    for event in events:
        if event[0] == "commit":
            logged[event[1]] = int(event[2])
    infos = list(repo.ancestry(branch=branch))
    rounds = {info.id: info.metadata.get("round") for info in infos}
    for snapshot, round_ in logged.items():
        assert rounds.get(snapshot) == round_, f"{branch}: commit {snapshot} lost"
    keys = [branch_workers.key(branch, i) for i in range(branch_workers.KEYS)]
    tip = infos[0]
    tip_round = tip.metadata.get("round")
    view = repo.readonly_session(snapshot_id=tip.id)
    assert view.store.storage.get_many([(k, None) for k in keys]) == (
        [None] * len(keys) if tip_round is None else
        [branch_workers.value(branch, tip_round, i) for i in range(len(keys))])
    sessions = [(int(e[1]), e[2]) for e in events if e[0] == "session"]
    if not sessions:
        return "before a write"
    round_, session_id = sessions[-1]
    staged = {int(e[2]) for e in events if e[0] == "staged" and int(e[1]) == round_}
    try:
        resumed = repo.writable_session(branch, resume=session_id)
    except vs.SessionNotFoundError:
        assert tip_round == round_ or not staged, f"{branch}: staged round {round_} lost"
        return "after its commit"
    assert tip_round != round_, f"{branch}: round {round_} committed and still resumable"
    seen = resumed.store.storage.get_many([(k, None) for k in keys])
    for i in staged:
        assert seen[i] == branch_workers.value(branch, round_, i), f"{branch}: staged {i} lost"
    resumed.set_values([(keys[i], branch_workers.value(branch, round_, i))
                        for i in range(len(keys)) if i not in staged])
    logged[resumed.commit(f"{branch} round {round_} (resumed)", metadata={"round": round_})] = (
        round_)
    return "while staging or committing"


@pytest.mark.slow
def test_sigkill_while_two_branches_commit_and_gc_runs_loses_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "repo")
    with vs.Repository.create(vs.lmdb_storage(path)) as repo:
        for branch in ("a", "b"):
            repo.create_branch(branch, repo.lookup_branch("main"))
    rng = random.Random(20261130)
    logged: dict[str, dict[str, int]] = {"a": {}, "b": {}}
    outcomes: collections.Counter[str] = collections.Counter()
    started = time.monotonic()

    def team(trial: int) -> list[_Forked]:
        logs = tmp_path / f"trial-{trial}"
        logs.mkdir()
        return [_Forked(logs / "a", branch_workers.write_rounds, path, logs / "a", "a",
                        trial * 1000),
                _Forked(logs / "b", branch_workers.write_rounds, path, logs / "b", "b",
                        trial * 1000),
                _Forked(logs / "gc", branch_workers.collect_forever, path, logs / "gc")]

    upcoming = team(0)
    trials = 0
    try:
        while trials < MIN_TRIALS:
            current, upcoming = upcoming, team(trials + 1)
            for worker in current:
                worker.go()
            time.sleep(rng.uniform(0.05, 0.6))
            for worker in current:
                worker.kill()
            with vs.Repository.open(vs.lmdb_storage(path)) as repo:
                for worker, branch in zip(current, ("a", "b"), strict=False):
                    outcomes[_check_branch(repo, branch, worker.events(), logged[branch])] += 1
                # Left: sessions whose first write landed but never returned (so never
                # logged), and scratch garbage cut off; none holds a logged write.
                for session_id in repo.resumable_sessions():
                    repo.discard_session(session_id)
                if trials % 5 == 4:
                    report = repo.verify()
                    assert report.ok, report.problems
            trials += 1
    finally:
        for worker in upcoming:
            worker.process.kill()
            worker.process.join(WAIT)
    with vs.Repository.open(vs.lmdb_storage(path)) as repo:
        assert repo.resumable_sessions() == {}
        report = repo.verify()
        assert report.ok, report.problems
        collected = sum(int(e[1]) for t in range(trials)
                        for e in _Forked.events_of(tmp_path / f"trial-{t}" / "gc")
                        if e[0] == "gc" and e[1] != "-1")
    assert collected > 0, "the collector never deleted anything: the test proves little"
    print(f"\n{trials} kills in {time.monotonic() - started:.1f} s, "
          f"{sum(map(len, logged.values()))} commits checked, {collected} objects collected; "
          f"writers killed: {dict(outcomes)}")


def test_power_lost_during_write_back_leaves_the_last_whole_transaction(tmp_path: Path) -> None:
    """A machine stopping while the kernel writes pages back never costs committed data.

    The repository's LMDB environment flushes each transaction's pages before
    LMDB writes the header page that points at them (``MDB_NOMETASYNC``). Here
    every state the disk can be left in by a power loss is replayed: one
    flushed commit, then staging transactions, each cut after every page of
    its own in file order (the order Linux writes a file back in). Each image
    must open with the committed values and verify. Without the ordering, 83
    of 85 such cuts (across transactions, header pages first) left a file
    LMDB cannot open or aborts on (``python -m benchmarks.writeback_order``).
    """
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import writeback_order as replay

    files = replay.data_files(tmp_path / "repo", keys=300, batches=2)
    with vs.Repository.open(vs.lmdb_storage(tmp_path / "repo")) as repo:
        flags = repo.backend._handle.env.flags()  # type: ignore[attr-defined]
    assert flags["sync"] and not flags["metasync"]
    values = replay.committed_values(300)
    cuts = 0
    for before, after in zip(files, files[1:], strict=False):
        pages = [p for p in replay.changed_pages(before, after) if p not in replay.HEADER_PAGES]
        for image in replay.cut_images(before, after, pages):
            cuts += 1
            target = tmp_path / f"cut-{cuts}"
            target.mkdir()
            (target / "data.mdb").write_bytes(image)
            with vs.Repository.open(vs.lmdb_storage(target, read_only=True)) as repo:
                storage = repo.readonly_session("main").store.storage
                assert {key: storage.get(key) for key in values} == values
                assert repo.verify().ok
    assert cuts >= 10, cuts


def test_every_way_a_repository_reopens_its_environment_keeps_writes_ordered(tmp_path: Path
                                                                            ) -> None:
    """A read-only open first, a compaction and a fork each leave write ordering on.

    The environment is shared by every handle on the directory and its flags
    are decided by the one that opens it: a read-only repository opened first,
    the reopen after ``compact`` and the reopen in a forked child must all
    still flush each transaction's pages before its header page.
    """
    def ordered(repo: vs.Repository) -> bool:
        flags = repo.backend._handle.env.flags()  # type: ignore[attr-defined]
        return bool(flags["sync"]) and not flags["metasync"]

    path = tmp_path / "repo"
    with vs.Repository.create(vs.lmdb_storage(path)) as repo:
        session = repo.writable_session("main")
        session.set_values([("k", b"0")])
        session.commit("first")
    with vs.Repository.open(vs.lmdb_storage(path, read_only=True)) as reader, \
            vs.Repository.open(vs.lmdb_storage(path)) as writer:
        assert ordered(reader) and ordered(writer)
    with vs.Repository.open(vs.lmdb_storage(path)) as repo:
        repo.compact()
        assert ordered(repo)
        session = repo.writable_session("main")
        session.set_values([("k", b"1")])
        session.commit("after compaction")
        child = os.fork()
        if child == 0:  # pragma: no cover - the child reports through its exit status
            os._exit(0 if ordered(repo) else 1)
        assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0

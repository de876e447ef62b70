"""SIGKILL at random instants on S3 (moto behind the serialising proxy).

Several worker processes (``s3_kill_workers.py``) commit, stage into
resumable sessions, garbage-collect while another makes garbage, and clone,
push and fetch — each opening the repository with its own client — until
all are SIGKILLed at a random instant. After every kill: ``verify`` passes;
every commit a worker saw return is in its branch's history; every branch
a single worker moves holds the last commit that returned or one child of it
(old or new, nothing else); every write a session saw return reads back,
from the resumed session or from the commit that took it; every clone a
worker finished verifies, and one cut off resumes and verifies; the pushed
repository verifies and its ``main`` is a snapshot of the source's. Trials
follow each other on one repository, so each starts from the debris of the
last. 21 trials, three kinds (a first run of 24 trials, 80 kills, took 11 minutes
on a two-core machine at load 12: mostly opens and ``verify`` over S3).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest
import s3_kill_workers
from object_repo_support import BUCKET, S3Repos, aws_env_fixture, s3_fixture, s3_repos_fixture
from s3_kill_workers import value

import versionstore as vs

__all__ = ["aws_env_fixture", "s3_fixture", "s3_repos_fixture"]

#: Workers fork from a server that imported versionstore, zarr and obstore once (and
#: made no request: obstore's runtime does not survive a fork), so a trial does not
#: wait seconds for each worker's imports.
_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["s3_kill_workers", "zarr", "numpy"])
#: The workers of each kind of trial: (role, worker number).
KINDS = {
    "commits": [("commit", 0), ("commit", 1), ("stage", 2)],
    "gc": [("commit", 0), ("stage", 2), ("scratch", 3), ("gc", 4)],
    "transfer": [("commit", 1), ("transfer", 5), ("gc", 4)],
}
TRIALS_PER_KIND = 7
#: A worker not ready after this many seconds fails the test.
_READY_WAIT = 120.0


class Trials:
    """One repository on S3, what its workers logged over every trial, and the checks."""

    def __init__(self, s3_repos: S3Repos, tmp_path: Path) -> None:
        self.s3_repos = s3_repos
        self.dir = tmp_path
        self.prefix = f"kill-{uuid.uuid4().hex[:12]}"
        self.remote_prefix = self.prefix + "-remote"
        vs.Repository.create(s3_repos.storage(self.prefix))
        remote = vs.Repository.create(s3_repos.storage(self.remote_prefix))
        self.remote_initial = remote.lookup_branch("main")
        #: Per branch moved by one worker only: the last commit seen to return.
        self.last: dict[str, str] = {}
        self.returned: list[tuple[str, str]] = []
        self.kills = 0
        self.operations = 0
        #: Seconds spent starting workers, letting them work, and checking (to tune the test).
        self.spent = {"start": 0.0, "work": 0.0, "check": 0.0}

    def run(self, kind: str, trial: int, delay: float) -> None:
        logs = {worker: self.dir / f"t{trial}-w{worker}.log" for _, worker in KINDS[kind]}
        children = []
        for role, worker in KINDS[kind]:
            config = {"bucket": BUCKET, "endpoint": self.s3_repos.proxy.endpoint,
                      "prefix": self.prefix, "remote_prefix": self.remote_prefix,
                      "worker": worker, "trial": trial, "log": str(logs[worker]),
                      "grace": 20, "dir": str(self.dir)}
            child = _CONTEXT.Process(target=s3_kill_workers.main, args=(
                role, json.dumps(config), str(self.dir / f"t{trial}-w{worker}.err")))
            child.start()
            children.append(child)
        started = time.monotonic()
        deadline = started + _READY_WAIT
        while not all(p.exists() and "ready" in p.read_text() for p in logs.values()):
            assert time.monotonic() < deadline, "a worker never got ready"
            assert all(c.is_alive() for c in children), self._errors(trial)
            time.sleep(0.05)
        self.spent["start"] += time.monotonic() - started
        time.sleep(delay)
        self.spent["work"] += delay
        for child in children:
            assert child.is_alive(), self._errors(trial)  # still working when killed
            assert child.pid is not None
            os.kill(child.pid, signal.SIGKILL)
        for child in children:
            child.join(60)
            assert child.exitcode == -signal.SIGKILL
        self.kills += len(children)
        started = time.monotonic()
        self.check([line.split() for path in logs.values()
                    for line in path.read_text().splitlines() if line.strip()])
        self.spent["check"] += time.monotonic() - started

    def _errors(self, trial: int) -> str:
        return "\n".join(p.read_text() for p in sorted(self.dir.glob(f"t{trial}-w*.err")))

    def check(self, lines: list[list[str]]) -> None:
        repo = vs.Repository.open(self.s3_repos.storage(self.prefix))
        report = repo.verify()
        assert report.ok, report.problems
        self.operations += sum(1 for line in lines if line[0] != "ready")
        for line in lines:
            if line[0] == "commit":
                self.returned.append((line[1], line[2]))
                if line[1] != "main":
                    self.last[line[1]] = line[2]
        histories: dict[str, set[str]] = {}
        for branch, snapshot in self.returned:
            if branch not in histories:
                histories[branch] = {info.id for info in repo.ancestry(branch=branch,
                                                                        all_parents=True)}
            assert snapshot in histories[branch], (branch, snapshot)
        for branch, snapshot in self.last.items():
            tip = next(iter(repo.ancestry(branch=branch)))
            assert tip.id == snapshot or snapshot in tip.parent_ids, (branch, snapshot, tip)
        self._check_staged(repo, lines)
        self._check_transfers(repo, lines)
        repo.close()

    def _check_staged(self, repo: vs.Repository, lines: list[list[str]]) -> None:
        session_id: str | None = None
        keys: list[str] = []
        sessions: list[tuple[str, list[str]]] = []
        for line in lines:
            if line[0] == "session":
                session_id, keys = line[1], []
                sessions.append((session_id, keys))
            elif line[0] == "staged":
                keys.append(line[1])
        for session_id, keys in sessions:
            if not keys:
                continue
            branch = f"s{keys[0].split('/')[0][1:]}"
            try:
                session = repo.writable_session(branch, resume=session_id)
            except vs.VersionStoreError:  # committed: the keys are on the branch
                session = repo.readonly_session(branch=branch)
            assert session.read_entries([session.entry(k) for k in keys]) == [
                value(k) for k in keys]
            if session_id in repo.resumable_sessions():
                repo.discard_session(session_id)

    def _check_transfers(self, repo: vs.Repository, lines: list[list[str]]) -> None:
        started = [line[1] for line in lines if line[0] == "cloning"]
        finished = {line[1] for line in lines if line[0] == "cloned"}
        for path in started:
            if path not in finished:  # cut off: it resumes
                vs.copy_repository(repo.storage, vs.lmdb_storage(path), progress=False)
            clone = vs.Repository.open(vs.lmdb_storage(path))
            assert clone.verify().ok
            clone.close()
        if not started:
            return
        remote = vs.Repository.open(self.s3_repos.storage(self.remote_prefix))
        report = remote.verify()
        assert report.ok, report.problems
        main = {info.id for info in repo.ancestry(branch="main", all_parents=True)}
        assert remote.lookup_branch("main") in main | {self.remote_initial}
        pushed = [line[1] for line in lines if line[0] == "pushed"]
        assert set(pushed) <= main
        remote.close()


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL exists only on POSIX systems")
def test_sigkill_at_random_instants_on_s3(s3_repos: S3Repos, tmp_path: Path) -> None:
    trials = Trials(s3_repos, tmp_path)
    rng = random.Random(20261130)
    order = [kind for _ in range(TRIALS_PER_KIND) for kind in KINDS]
    for trial, kind in enumerate(order):
        trials.run(kind, trial, rng.uniform(0.2, 2.5))
    assert trials.kills >= 3 * len(order)
    assert trials.operations > 0
    print(f"{len(order)} trials, {trials.kills} kills, {trials.operations} operations "
          f"returned, {len(trials.returned)} commits; seconds spent: {trials.spent}")

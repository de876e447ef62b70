"""SIGKILL at random instants while a huge session absorbs into staged manifests and commits.

docs/format.md, "Staged manifests": an absorb of many located writes lists
them, sorts them externally (runs spilled to temporary files), stores
manifest parts and writes one record; the commit streams the manifests into
the tree. Here real worker processes (``manifest_workers.py``, thresholds
lowered so that a few hundred writes make manifests of several parts and
spilled runs) run one session each — writes, absorbs, rewrites of the same
keys in the same and in later epochs, erasures, the commit — on obstore's
``LocalStore``, and are SIGKILLed at a random instant, at least ``MIN_TRIALS``
times. After each kill, garbage collection with no grace period runs first
(every other trial), then the session is resumed and committed. Every write
the worker saw return must be on ``main`` (or, for the write cut off, the
old or the new value of each key), earlier trials' data unchanged, and
``verify`` must pass.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import random
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import manifest_workers as workers
import pytest
from obstore.store import LocalStore

import versionstore as vs

WAIT = 120.0  # seconds; a bound on hangs, not an expectation of speed
MIN_TRIALS = 20


#: Children fork from a server that imported everything once (a trial then starts at once);
#: obstore's runtime does not survive a plain fork.
_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["versionstore", "obstore.store"])  # unless already started


class _Worker:
    """A worker process started ahead (it opens the repository while the previous trial runs)."""

    def __init__(self, repo_dir: Path, logs: Path, trial: int) -> None:
        logs.mkdir()
        self.logs, self.trial = logs, trial
        receive, self._go = _CONTEXT.Pipe(duplex=False)
        self.process = _CONTEXT.Process(target=workers.run,
                                        args=(str(repo_dir), logs, trial, receive))
        self.process.start()

    def events(self) -> list[list[str]]:
        path = self.logs / "events.log"
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []

    def times(self) -> dict[str, float]:
        """When each event happened (``op 5`` for the fifth step), on the monotonic clock."""
        return {" ".join(e[:-1]) if e[0] == "op" else e[0]: float(e[-1]) for e in self.events()}

    def go(self) -> None:
        self._go.send("go")
        self.wait_for("started")

    def wait_for(self, event: str) -> None:
        """Wait until the worker logged ``event`` (or ended: then the kill comes late)."""
        deadline = time.monotonic() + WAIT
        while event not in self.times():
            if not self.process.is_alive():
                return
            assert time.monotonic() < deadline, f"the worker never logged {event!r}"
            time.sleep(0.002)

    def finish(self, kill: bool) -> int | None:
        if kill and self.process.is_alive():
            assert self.process.pid is not None
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(WAIT)
        self._go.close()
        return self.process.exitcode


def _no_grace(repo: vs.Repository) -> None:
    repo.garbage_collect(datetime.now(UTC) + timedelta(days=1))


class _Checker:
    """What each kill must leave: returned writes committed, old trials intact."""

    def __init__(self, storage: vs.RepositoryStorage) -> None:
        self.storage = storage
        self.main: dict[str, bytes | None] = {}  # every trial's keys as main holds them
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.phases: collections.Counter[str] = collections.Counter()  # steps done when killed

    def after(self, worker: _Worker, *, collect: bool) -> None:
        trial, events = worker.trial, worker.events()
        steps = workers.plan(trial)
        done = max([int(e[1]) for e in events if e[0] == "op"], default=0)
        self.phases[f"op {done}"] += 1
        before = workers.state(trial, steps[:done])
        after = workers.state(trial, steps[:done + 1])
        names = sorted(after)
        index = {name: int(name.rpartition("/")[2]) for name in names}

        def allowed(name: str) -> set[bytes | None]:
            return {None if v is None else workers.value(trial, index[name], v)
                    for v in (before.get(name), after.get(name))}

        committed = any(e[0] == "commit" for e in events)
        repo = vs.Repository.open(self.storage)
        if collect:
            _no_grace(repo)  # a killed session's writes and manifests must survive it
        resumable = repo.resumable_sessions()
        assert len(resumable) <= 1, resumable
        if resumable:
            assert not committed, "a committed session is still resumable"
            [session_id] = resumable
            session = repo.writable_session("main", resume=session_id)
            staged = dict(zip(names, session.store.storage.get_many([(n, None) for n in names]),
                              strict=True))
            for name in names:
                assert staged[name] in allowed(name), f"trial {trial}: staged {name} lost"
            session.commit(f"trial {trial} (resumed)")
            outcome = "committing" if any(e[0] == "committing" for e in events) else "staging"
        else:
            staged = None
            outcome = "after commit" if committed else (
                "in commit" if any(e[0] == "committing" for e in events) else "before a write")
        self.outcomes[outcome] += 1
        view = repo.readonly_session(branch="main")
        on_main = dict(zip(names, view.store.storage.get_many([(n, None) for n in names]),
                           strict=True))
        for name in names:
            if committed or outcome == "in commit":
                final = workers.state(trial, steps)[name]
                assert on_main[name] == (None if final is None else
                                         workers.value(trial, index[name], final)), name
            elif staged is not None:
                assert on_main[name] == staged[name], f"trial {trial}: {name} not committed"
            else:
                assert on_main[name] is None, f"trial {trial}: {name} appeared from nowhere"
        old = random.Random(trial).sample(sorted(self.main), min(50, len(self.main)))
        assert dict(zip(old, view.store.storage.get_many([(n, None) for n in old]),
                        strict=True)) == {n: self.main[n] for n in old}, "an older trial changed"
        self.main.update(on_main)
        repo.close()


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL exists only on POSIX systems")
def test_sigkill_during_manifest_absorbs_and_commits_loses_no_returned_write(
        tmp_path: Path) -> None:
    repo_dir = tmp_path / "store"
    repo_dir.mkdir()
    storage = vs.object_storage(LocalStore(str(repo_dir)), "repo")
    vs.Repository.create(storage).close()
    checker = _Checker(storage)
    rng = random.Random(20261130)
    pending = collections.deque(_Worker(repo_dir, tmp_path / f"t{n}", n) for n in range(2))
    trials, started = 0, time.monotonic()
    try:
        # Trial 0 runs to the end: when each step ends, to aim the kills at.
        first = pending.popleft()
        pending.append(_Worker(repo_dir, tmp_path / "t2", 2))
        first.go()
        assert first.finish(kill=False) == 0, f"trial 0 failed ({first.process.exitcode})"
        checker.after(first, collect=False)
        at = first.times()
        # Kills land a random time after an event: anywhere in the session, in the
        # absorb of the first manifest, of the second (over the first), in the commit.
        aims = [("started", at["commit"] - at["started"]),
                ("op 4", at["op 5"] - at["op 4"]),
                ("op 8", at["op 9"] - at["op 8"]),
                ("committing", at["commit"] - at["committing"])]
        next_trial = 3
        while trials < MIN_TRIALS:
            worker = pending.popleft()
            pending.append(_Worker(repo_dir, tmp_path / f"t{next_trial}", next_trial))
            next_trial += 1
            worker.go()
            event, span = aims[trials % len(aims)]
            worker.wait_for(event)
            time.sleep(rng.uniform(0.0, span * 1.2))  # later trials are a little slower
            assert worker.finish(kill=True) in (0, -signal.SIGKILL)
            checker.after(worker, collect=trials % 4 == 1)
            trials += 1
    finally:
        for worker in pending:
            worker.finish(kill=True)
    repo = vs.Repository.open(storage)
    report = repo.verify()
    assert report.ok, report.problems
    _no_grace(repo)
    report = repo.verify()
    assert report.ok, report.problems
    view = repo.readonly_session(branch="main")
    names = sorted(checker.main)
    assert dict(zip(names, view.store.storage.get_many([(n, None) for n in names]),
                    strict=True)) == checker.main
    print(f"\n{trials} kills in {time.monotonic() - started:.1f} s (a whole session: "
          f"{at['commit'] - at['started']:.2f} s); killed: {dict(checker.outcomes)}, "
          f"after steps: {dict(checker.phases)}")

"""History edits under SIGKILL and under races with other processes.

The crash test kills a worker (``history_workers.edit-loop``) at random
instants while it merges, squashes and amends, ≥ 20 times. After each kill
the repository must verify, and the ops log must tell the exact story of
each branch: read oldest to newest, each entry of a branch starts where the
previous one ended, and the last one ends at the branch's current tip. So
every ref is either its old or its new value, with an ops-log entry exactly
when it moved (a move without its entry, or an entry without its move,
breaks the chain). Every key the worker logged as landed must be on ``main``.

The race test runs a committer, a merger, an amender and a squasher in four
processes against one branch: every call either lands or raises a clear
error, and no landed change is lost.
"""

from __future__ import annotations

import multiprocessing
import random
import subprocess
import sys
import time
from pathlib import Path

import history_workers as workers
import pytest

import versionstore as vs

WORKER = Path(workers.__file__).resolve()
WAIT = 120.0
MIN_TRIALS = 20


@pytest.fixture
def repo_path(tmp_path: Path) -> str:
    path = str(tmp_path / "repo")
    with vs.Repository.create(vs.lmdb_storage(path)) as repo:
        repo.create_branch("side", repo.lookup_branch("main"))
        repo.create_branch("dev", repo.lookup_branch("main"))
    return path


def _lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    text = path.read_text()
    return text[: text.rfind("\n") + 1].splitlines()


def check_ops_log_chains(repo: vs.Repository) -> None:
    """Each branch's entries chain from creation to its current tip, with no gap."""
    now = {name: repo.lookup_branch(name) for name in repo.list_branches()}
    last: dict[str, str | None] = {}
    for entry in reversed(list(repo.ops_log())):
        if entry.ref_type != "branch":
            continue
        assert last.get(entry.name) == entry.old, entry
        last[entry.name] = entry.new
    assert {name: tip for name, tip in last.items() if tip is not None} == now


def _main_content(repo: vs.Repository) -> dict[str, bytes | None]:
    session = repo.readonly_session("main")
    entries = dict(session.iter_entries("", ""))
    keys = sorted(entries)
    return dict(zip(keys, session.read_entries([entries[k] for k in keys]), strict=True))


def _start(repo_path: str, logs: Path, first: int) -> subprocess.Popen[bytes]:
    logs.mkdir()
    return subprocess.Popen(
        [sys.executable, str(WORKER), "edit-loop", repo_path, str(logs), str(first)],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=(logs / "stderr").open("wb"))


def _wait_for(process: subprocess.Popen[bytes], logs: Path, event: str) -> None:
    deadline = time.monotonic() + WAIT
    while event not in _lines(logs / "events.log"):
        if process.poll() is not None:
            pytest.fail(f"worker exited before {event}: {(logs / 'stderr').read_text()}")
        assert time.monotonic() < deadline, f"worker never reached {event}"
        time.sleep(0.005)


@pytest.mark.slow
def test_sigkill_during_merge_squash_amend_keeps_refs_and_ops_log_in_step(
        repo_path: str, tmp_path: Path) -> None:
    rng = random.Random(1212)
    landed: set[str] = set()
    kinds: set[str] = set()
    upcoming = _start(repo_path, tmp_path / "trial-0", 0)
    for trial in range(MIN_TRIALS):
        process, logs = upcoming, tmp_path / f"trial-{trial}"
        _wait_for(process, logs, "ready")
        assert process.stdin is not None
        process.stdin.write(b"go\n")
        process.stdin.flush()
        _wait_for(process, logs, "started")
        upcoming = _start(repo_path, tmp_path / f"trial-{trial + 1}", (trial + 1) * 1000)
        time.sleep(rng.uniform(0.05, 0.6))
        assert process.poll() is None, (logs / "stderr").read_text()
        process.kill()
        process.wait(timeout=WAIT)
        assert process.stdin is not None
        process.stdin.close()
        for line in _lines(logs / "done.log"):
            kind, *keys = line.split(",")
            kinds.add(kind)
            landed.update(keys)
        with vs.Repository.open(vs.lmdb_storage(repo_path)) as repo:
            report = repo.verify()
            assert report.ok, report.problems
            check_ops_log_chains(repo)
            content = _main_content(repo)
            missing = [key for key in landed if content.get(key) != workers.value_of(key)]
            assert not missing, missing
    upcoming.kill()
    upcoming.wait(timeout=WAIT)
    assert {"merge", "squash", "amend"} <= kinds, kinds  # every operation was exercised


def test_merges_amends_and_squashes_race_commits_from_other_processes(repo_path: str) -> None:
    context = multiprocessing.get_context("spawn")
    roles = ["committer", "merger", "amender", "squasher"]
    barrier = context.Barrier(len(roles))
    queue = context.Queue()
    processes = [context.Process(target=workers.race, args=(repo_path, role, 8, barrier, queue))
                 for role in roles]
    for process in processes:
        process.start()
    results = [queue.get(timeout=WAIT) for _ in roles]
    for process in processes:
        process.join(timeout=WAIT)
    failures = [r[2] for r in results if r[1] != "ok"]
    assert not failures, failures[0]
    landed = [key for result in results for key in result[2]]
    assert len(landed) >= 8 * 3  # committer, merger and squasher always land their keys
    with vs.Repository.open(vs.lmdb_storage(repo_path)) as repo:
        content = _main_content(repo)
        assert [key for key in landed if content.get(key) != workers.value_of(key)] == []
        check_ops_log_chains(repo)
        assert repo.verify().ok
        kinds = {entry.kind for entry in repo.ops_log()}
        assert {"commit", "merge", "amend", "squash"} <= kinds

"""Code that edits history in *other processes*, for the crash and race tests.

Run as ``python tests/history_workers.py edit-loop REPO LOGS FIRST`` for the
crash test (SIGKILLed at random instants): it logs ``ready``, waits for
``go`` on stdin, logs ``started``, then loops over merges, squashes and
amends on ``main``. Each operation appends one line to ``done.log`` *after*
it returned (one ``os.write``, so a line survives a kill): the operation, and
the keys that ``main`` must hold from then on.

``race`` is the function ``multiprocessing``'s spawn context runs in the
race test: one role per process (committer, merger, amender, squasher).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import versionstore as vs


def value_of(key: str) -> bytes:
    """The value every worker writes at ``key`` (large enough to be a chunk object)."""
    return key.encode().ljust(600, b"*")


def open_repo(path: str) -> vs.Repository:
    """Open the LMDB repository at ``path``."""
    return vs.Repository.open(vs.lmdb_storage(path))


def _commit(repo: vs.Repository, branch: str, keys: list[str], message: str) -> str:
    session = repo.writable_session(branch)
    session.set_values([(key, value_of(key)) for key in keys])
    return session.commit(message)


def _log(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def edit_loop(repo_path: str, logs: Path, first: int) -> None:
    """Merge, squash and amend on ``main`` until killed; log each after it returns."""
    repo = open_repo(repo_path)
    events, done = logs / "events.log", logs / "done.log"
    _log(events, "ready")
    sys.stdin.readline()
    _log(events, "started")
    n = first
    while True:
        kind = ("merge", "squash", "amend")[n % 3]
        if kind == "merge":
            _commit(repo, "side", [f"side/{n}"], f"side {n}")
            _commit(repo, "main", [f"main/{n}"], f"main {n}")
            _log(done, f"commit,main/{n}")
            repo.merge("side", "main", fast_forward=False, message=f"merge {n}")
            _log(done, f"merge,side/{n}")
        elif kind == "squash":
            since = repo.lookup_branch("main")
            _commit(repo, "main", [f"sq/{n}/1"], f"sq {n} 1")
            _commit(repo, "main", [f"sq/{n}/2"], f"sq {n} 2")
            _log(done, f"commit,sq/{n}/1,sq/{n}/2")
            repo.squash("main", since_snapshot_id=since, message=f"squash {n}")
            _log(done, "squash")
        else:
            session = repo.writable_session("main")
            session.set_values([(f"am/{n}", value_of(f"am/{n}"))])
            session.amend(f"amended {n}")
            _log(done, f"amend,am/{n}")
        n += 1


# -- the race (multiprocessing, spawn) ----------------------------------------------------


def race(repo_path: str, role: str, rounds: int, barrier: Any, queue: Any) -> None:
    """Play ``role`` for ``rounds`` against the other processes; report the keys it landed."""
    try:
        repo = open_repo(repo_path)
        landed: list[str] = []
        conflicts = 0
        barrier.wait(60)
        n, deadline = 0, time.monotonic() + 60
        # The amender goes on past `rounds` until one amend has landed: every one of
        # its attempts may be refused while the others run (a conflict, or main still
        # at its root), and once they are done nothing can refuse it.
        while n < rounds or (role == "amender" and not landed and time.monotonic() < deadline):
            n += 1
            if role == "committer":
                _commit(repo, "main", [f"c/{n}"], f"c {n}")
                landed.append(f"c/{n}")
            elif role == "merger":
                _commit(repo, "dev", [f"d/{n}"], f"d {n}")
                repo.merge("dev", "main", fast_forward=False)
                landed.append(f"d/{n}")
            elif role == "amender":
                session = repo.writable_session("main")
                session.set_values([(f"a/{n}", value_of(f"a/{n}"))])
                try:
                    session.amend()
                except vs.ConflictError:  # a clear refusal: nothing of ours landed
                    conflicts += 1
                    continue
                except vs.AmendInitialSnapshotError:  # main not yet past its root: refused
                    session.discard_changes()
                    continue
                landed.append(f"a/{n}")
            else:  # squasher
                since = repo.lookup_branch("main")
                _commit(repo, "main", [f"s/{n}"], f"s {n}")
                try:
                    repo.squash("main", since_snapshot_id=since, message=f"squash {n}")
                except ValueError:  # another squash or amend rewrote `since` away
                    conflicts += 1
                landed.append(f"s/{n}")
        repo.close()
        queue.put((role, "ok", landed, conflicts))
    except BaseException:  # noqa: BLE001 - every failure must reach the parent
        queue.put((role, "error", traceback.format_exc(), 0))


if __name__ == "__main__":
    if sys.argv[1] == "edit-loop":
        edit_loop(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))

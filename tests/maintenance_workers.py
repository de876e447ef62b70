"""A committer that runs in *another process* while maintenance runs in the test's own.

``commit_loop`` is what ``multiprocessing``'s spawn context runs for
``test_maintenance_contention.py`` (an LMDB environment must never cross a
fork): one-chunk commits to one branch in a tight loop, until the parent
sets ``stop`` or ``limit`` commits have landed. It sets ``running`` once its
first commits have landed, so the maintenance in the parent starts while
commits are landing, and reports every commit it got back: the snapshot id,
the key and the value, so the parent can read each of them afterwards.
"""

from __future__ import annotations

import traceback
from typing import Any

import versionstore as vs

#: Commits that land before the committer tells the parent it is running.
WARM_UP = 3


def value_of(branch: str, n: int) -> bytes:
    """The value of the ``n``-th commit to ``branch`` (large enough to be a chunk object)."""
    return f"{branch}/{n}".encode().ljust(600, b"*")


def key_of(n: int) -> str:
    """The key of the ``n``-th commit (a new key each time: every commit adds a chunk)."""
    return f"data/c/{n}"


def commit_loop(repo_path: str, branch: str, limit: int, running: Any, stop: Any,
                queue: Any) -> None:
    """Commit one chunk at a time to ``branch`` until ``stop`` or ``limit``; report them.

    Puts ``("ok", [(snapshot id, key, value), ...])`` on ``queue``, or
    ``("error", traceback)``: a failure reaches the parent, never as a hang.
    """
    try:
        landed: list[tuple[str, str, bytes]] = []
        with vs.Repository.open(vs.lmdb_storage(repo_path)) as repo:
            for n in range(limit):
                if stop.is_set():
                    break
                session = repo.writable_session(branch)
                session.set_values([(key_of(n), value_of(branch, n))])
                landed.append((session.commit(f"{branch} {n}"), key_of(n),
                               value_of(branch, n)))
                if n + 1 == WARM_UP:
                    running.set()
        running.set()  # also when ``limit`` is below the warm-up
        queue.put(("ok", landed))
    except BaseException:  # noqa: BLE001 - every failure must reach the parent
        running.set()
        queue.put(("error", traceback.format_exc()))

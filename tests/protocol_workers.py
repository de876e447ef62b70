"""Processes for the protocol stress test (spawned; each opens the repository itself).

Each worker runs for a bounded number of rounds or until a stop file
appears, and returns what it did so the parent can check that nothing it
was told about was lost.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import versionstore as vs

ROUNDS = 120
KEYS = 3


def value(writer: int, round_: int) -> bytes:
    """The value writer ``writer`` stages in round ``round_``: a chunk object once committed.

    Staged alone, an even writer's (under ``STAGED_INLINE_LIMIT``) is kept in
    its staged record until the commit; an odd writer's is a staged chunk object.
    """
    return f"{writer}:{round_};".encode() * (80 if writer % 2 == 0 else 1000)


def write_rounds(session: vs.Session, writer: int) -> int:
    """Stage ``ROUNDS`` overwrites of this writer's keys through a pickled session copy."""
    for round_ in range(ROUNDS):
        session.set_values([(f"w{writer}/k{round_ % KEYS}", value(writer, round_))])
    return ROUNDS


def commit_until(session: vs.Session, stop: str) -> list[str]:
    """Commit whatever is staged, again and again, until ``stop`` exists; the ids returned."""
    committed: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        stopping = os.path.exists(stop)
        try:
            committed.append(session.commit("stress"))
        except vs.NothingToCommitError:
            if stopping:
                return committed
            time.sleep(0.005)
    return committed


def collect_until(path: str, stop: str) -> int:
    """Run garbage collection until ``stop`` exists; how many runs."""
    runs = 0
    with vs.Repository.open(vs.lmdb_storage(path)) as repo:
        while runs < 3 or (not os.path.exists(stop) and runs < 500):
            repo.garbage_collect()
            runs += 1
    return runs


def move_refs_until(path: str, stop: str) -> int:
    """Reset a side branch to snapshots of main and back, and tag some; how many moves."""
    moves = 0
    with vs.Repository.open(vs.lmdb_storage(path)) as repo:
        first = repo.lookup_branch("main")
        repo.create_branch("side", first)
        while moves < 20 or (not os.path.exists(stop) and moves < 2000):
            tip = repo.lookup_branch("main")
            for target in (tip, first):
                try:
                    repo.reset_branch("side", target)
                except vs.SnapshotNotFoundError:
                    pass  # the snapshot was collected after main moved on: refused, not dangling
                moves += 1
            if moves % 50 == 0:
                try:
                    repo.create_tag(f"t{moves}", tip)
                except vs.SnapshotNotFoundError:
                    pass
    Path(stop + ".movers").touch()
    return moves

"""Writers on two branches and a garbage collector, in other processes, to be SIGKILLed.

``test_crash_safety.py``'s concurrent kill loop runs these with the
``forkserver`` context (the modules are imported once, in the server; an LMDB
environment is only ever opened in the child). Each waits for a message on
``go``, then works until killed, and logs to ``logs/events.log`` one line
per ``os.write``, *after* the step it records returned:

* ``write_rounds``: round after round, a session on ``branch`` stages
  ``KEYS`` chunks in pairs (``staged <round> <index>``) and commits them with
  ``metadata={"round": round}`` (``commit <snapshot id> <round>``);
  ``session <round> <id>`` comes after the first write (the session exists).
  Every third round it also commits garbage to a scratch branch and deletes
  the branch, so the collector always has something to delete.
* ``collect_forever``: garbage collection without a grace period, forever
  (``gc <deleted>``).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import versionstore as vs

#: Chunks per round (each 1 KiB: its own object), staged two per ``set_values``.
KEYS = 12


def value(branch: str, round_: int, index: int) -> bytes:
    """Chunk ``index`` of ``round_`` on ``branch``."""
    return f"{branch}:{round_}:{index}:".encode().ljust(1024, b".")


def key(branch: str, index: int) -> str:
    """The key of chunk ``index`` written on ``branch``."""
    return f"{branch}/c/{index}"


def _line(logs: Path, text: str) -> None:
    fd = os.open(logs / "events.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def write_rounds(path: str, logs: Path, branch: str, first_round: int, go: Any) -> None:
    """Stage and commit a whole new round on ``branch``, forever (until killed)."""
    repo = vs.Repository.open(vs.lmdb_storage(path))
    go.recv()
    _line(logs, "started")
    round_ = first_round
    while True:
        session = repo.writable_session(branch)
        for first in range(0, KEYS, 2):
            session.set_values([(key(branch, i), value(branch, round_, i))
                                for i in (first, first + 1)])
            if first == 0:
                _line(logs, f"session {round_} {session.session_id}")
            _line(logs, f"staged {round_} {first}")
            _line(logs, f"staged {round_} {first + 1}")
        snapshot = session.commit(f"{branch} round {round_}", metadata={"round": round_})
        _line(logs, f"commit {snapshot} {round_}")
        if round_ % 3 == 0:
            scratch = f"scratch-{branch}-{round_}"
            repo.create_branch(scratch, snapshot)
            junk = repo.writable_session(scratch)
            junk.set_values([(f"junk/{round_}", os.urandom(2048))])
            junk.commit("garbage")
            repo.delete_branch(scratch)
        round_ += 1


def collect_forever(path: str, logs: Path, go: Any) -> None:
    """Collect garbage with no grace period, over and over (until killed)."""
    repo = vs.Repository.open(vs.lmdb_storage(path))
    go.recv()
    _line(logs, "started")
    while True:
        try:
            deleted = repo.garbage_collect(datetime.now(UTC) + timedelta(days=1)).deleted
        except vs.VersionStoreError as exc:
            if type(exc) is not vs.VersionStoreError:  # only "the repository kept changing"
                raise
            deleted = -1
        _line(logs, f"gc {deleted}")

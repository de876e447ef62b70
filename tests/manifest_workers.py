"""A worker staging a huge session on object storage, to be SIGKILLed (``test_manifest_crash``).

``run(repo_dir, logs, trial, go)`` runs in a child process (``forkserver``:
the modules are imported once, in the server). It opens the repository at
``repo_dir`` (obstore's ``LocalStore``, prefix ``repo``), lowers the
staged-manifest thresholds (``SMALL``: a few hundred writes make manifests
of several parts, and the absorb's external sort spills runs to temporary
files), waits for a message on ``go`` and runs ``plan(trial)`` in one
writable session: batches of located writes, absorbs (a log-recorded
write), rewrites of the same keys with other values in the same and in
later epochs, erasures, then the commit. It appends to ``logs/events.log``,
one ``os.write`` each, *after* the step returned: ``session <id>``, ``op
<n>`` (the plan's first ``n`` steps returned), ``committing`` and ``commit
<snapshot id>``, each followed by ``time.monotonic()`` (one clock for every
process on Linux). The parent kills it at a random instant and knows from
the log exactly which writes returned.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

from obstore.store import LocalStore

import versionstore as vs
import versionstore.session as session_module
import versionstore.sorted_runs as sorted_runs
import versionstore.staged_manifest as staged_manifest

#: Manifests from this many writes on, parts of ``PART`` writes, sorted runs of ``RUN``.
SMALL = {"spill_at": 64, "part": 40, "run": 50}
#: What one step of a plan does: ``("set", [(key, version), ...])``, ``("erase", [key, ...])``,
#: ``("absorb", [])`` (a log-recorded write of the trial's ``zarr.json``).
Step = tuple[str, list[tuple[str, int]] | list[str]]


def lower_thresholds() -> None:
    """Make a few hundred located writes behave as 10^6 do (manifests, spilled runs)."""
    staged_manifest.SPILL_AT = SMALL["spill_at"]
    staged_manifest.PART_ENTRIES = SMALL["part"]
    sorted_runs.RUN_RECORDS = SMALL["run"]
    session_module._LOGGED_FIRST = 0  # every chunk located from the first


def key(trial: int, index: int) -> str:
    """The chunk key ``index`` of ``trial`` (each trial writes its own array)."""
    return f"t{trial}/c/{index}"


def value(trial: int, index: int, version: int) -> bytes:
    """The bytes of version ``version`` of chunk ``index`` (above the inline limit)."""
    return f"{trial}:{index}:{version}:".encode().ljust(700, b".")


def plan(trial: int) -> list[Step]:
    """The steps of ``trial``'s session (deterministic: the parent computes it too)."""
    rng = random.Random(trial)
    steps: list[Step] = []
    first = 120
    for start in range(0, first, 30):  # version 1 of 120 keys: a manifest of 3 parts
        steps.append(("set", [(key(trial, i), 1) for i in range(start, start + 30)]))
    steps.append(("absorb", []))
    rewrite = sorted(rng.sample(range(first), 60))
    steps.append(("set", [(key(trial, i), 2) for i in rewrite[:30]]))
    steps.append(("set", [(key(trial, i), 3) for i in rewrite]))  # same epoch, newer stamp
    steps.append(("set", [(key(trial, i), 2) for i in range(first, first + 20)]))
    steps.append(("absorb", []))  # a second manifest (80 keys) over the first
    steps.append(("set", [(key(trial, i), 4) for i in rewrite[::6]]))  # a few: refs
    steps.append(("erase", [key(trial, i) for i in rewrite[1::10]]))
    steps.append(("set", [(key(trial, i), 5) for i in range(first + 20, first + 30)]))
    return steps


def state(trial: int, steps: list[Step]) -> dict[str, int | None]:
    """The version of each key after ``steps`` (``None``: erased)."""
    found: dict[str, int | None] = {}
    for kind, items in steps:
        if kind == "set":
            for name, version in items:  # type: ignore[misc]
                found[name] = version
        elif kind == "erase":
            for name in items:
                found[name] = None  # type: ignore[index]
    return found


def _line(log: Path, text: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{text} {time.monotonic()}\n".encode())
    finally:
        os.close(fd)


def run(repo_dir: str, logs: Path, trial: int, go: Any) -> None:
    """Open, wait for a message on ``go``, stage ``plan(trial)`` and commit it."""
    lower_thresholds()
    repo = vs.Repository.open(vs.object_storage(LocalStore(repo_dir), "repo"))
    log = logs / "events.log"
    go.recv()
    _line(log, "started")
    session = repo.writable_session("main")
    storage = session.store.storage
    for n, (kind, items) in enumerate(plan(trial), start=1):
        if kind == "set":
            session.set_values([(name, value(trial, int(name.rpartition("/")[2]), version))
                                for name, version in items])  # type: ignore[misc]
        elif kind == "erase":
            for name in items:
                storage.erase(name)  # type: ignore[arg-type]
        else:
            session.set_values([(f"t{trial}/zarr.json", b"{}")])
        if n == 1:
            _line(log, f"session {session.session_id}")
        _line(log, f"op {n}")
    _line(log, "committing")
    _line(log, f"commit {session.commit(f'trial {trial}')}")

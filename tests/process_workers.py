"""Code that runs in *other processes* for the concurrency and crash-safety tests.

Two ways in, both without ``fork`` (an LMDB environment must never cross a
fork):

* functions that ``multiprocessing``'s ``spawn`` context runs
  (``test_concurrency.py``); each reports through ``run_reporting`` so a
  failure in a child arrives in the parent as a traceback, never as a hang;
* a command line for ``subprocess`` workers that the crash tests SIGKILL
  (``python tests/process_workers.py COMMAND ...``). They record what they did
  in append-only logs, one ``os.write`` per line *after* the step it records
  returned, so a line survives a kill and always describes durable work.

The crash workers' data is a zarr array ``a`` of ``CHUNKS`` uncompressed int64
chunks; ``chunk_bytes(round, i)`` is chunk ``i`` in round ``round``, so the
parent can check any snapshot (or staged session) knowing only its round.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import zarr

import versionstore as vs

#: Generous bound for any wait on another process (a barrier, an event, a queue).
WAIT = 60.0

# -- shared helpers -----------------------------------------------------------------------


def run_reporting(queue: Any, index: int, target: Callable[..., Any], *args: Any) -> None:
    """Run ``target(*args)`` and put ``(index, "ok", result)`` or ``(index, "error", tb)``."""
    try:
        queue.put((index, "ok", target(*args)))
    except BaseException:  # noqa: BLE001 - every failure must reach the parent
        queue.put((index, "error", traceback.format_exc()))


def open_repo(path: str) -> vs.Repository:
    """Open the LMDB repository at ``path``."""
    return vs.Repository.open(vs.lmdb_storage(path))


# -- concurrency workers (multiprocessing, spawn) -----------------------------------------


def open_or_create(path: str, barrier: Any) -> str:
    """Race the other processes to ``Repository.open_or_create``; the ``main`` tip seen."""
    barrier.wait(WAIT)
    repo = vs.Repository.open_or_create(vs.lmdb_storage(path))
    tip = repo.lookup_branch("main")
    repo.close()
    return tip


def open_in_threads(path: str, threads: int, cycles: int) -> int:
    """Open, read and close the repository over and over in several threads at once,
    while one more thread commits; how many opens succeeded."""
    import threading

    holder = open_repo(path)  # keeps the environment open, as a long-lived kernel would
    opened: list[int] = []

    def churn() -> None:
        for _ in range(cycles):
            repo = open_repo(path)
            repo.lookup_branch("main")
            repo.close()
            opened.append(1)

    def commit() -> None:
        for n in range(cycles // 10):
            session = holder.writable_session("main")
            session.store.storage.set("n", str(n).encode())
            session.commit(f"n = {n}")

    workers = [threading.Thread(target=churn) for _ in range(threads)]
    workers.append(threading.Thread(target=commit))
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    holder.close()
    return len(opened)


def write_region(path: str, start: int, stop: int, value: int, barrier: Any) -> dict[str, Any]:
    """Write ``value`` into ``t[start:stop]``, wait for everyone to stage, then commit."""
    repo = open_repo(path)
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="t", mode="r+")[start:stop] = value
    base = session.snapshot_id
    barrier.wait(WAIT)  # every writer has staged on the same base before anyone commits
    snapshot = session.commit(f"t[{start}:{stop}] = {value}")
    repo.close()
    return {"base": base, "snapshot": snapshot}


def write_same_key(path: str, key: str, value: bytes, barrier: Any) -> dict[str, Any]:
    """Stage ``key = value``, race the other writer to commit, resolve a conflict with ours."""
    repo = open_repo(path)
    session = repo.writable_session("main")
    storage = session.store.storage
    storage.set(key, value)
    result: dict[str, Any] = {"base": session.snapshot_id, "first": None, "conflict": None}
    barrier.wait(WAIT)
    try:
        result["first"] = session.commit(f"{key} = {value!r}")
    except vs.ConflictError as exc:
        result["conflict"] = {
            "keys": sorted(exc.keys),
            "branch": exc.branch,
            "has_uncommitted_changes": session.has_uncommitted_changes,
            "staged_value": storage.get(key),
            "base_after_conflict": session.snapshot_id,
        }
        session.rebase(keep="ours")
        result["conflict"]["base_after_rebase"] = session.snapshot_id
        result["second"] = session.commit(f"{key} = {value!r} (after conflict)")
    repo.close()
    return result


def race_rounds(path: str, worker: int, rounds: int, barrier: Any) -> list[dict[str, Any]]:
    """Each round: open a session, stage this worker's keys, meet the others, commit.

    Every round writes ``w<worker>/last`` and ``w<worker>/r<round>``; odd rounds
    also write ``shared``, which every worker wants. All workers of a round
    stage on the same base (the barriers see to that), so every commit but
    the first of a round rebases, and on odd rounds all but one conflict on
    ``shared``. A conflicted worker keeps theirs for ``shared`` and commits
    the rest: no worker's own keys are ever lost.
    """
    repo = open_repo(path)
    commits = []
    for round_ in range(rounds):
        barrier.wait(WAIT)  # the previous round's commits are all done
        session = repo.writable_session("main")
        storage = session.store.storage
        mine = f"{worker}:{round_}".encode()
        storage.set(f"w{worker}/last", mine)
        storage.set(f"w{worker}/r{round_}", mine)
        wants_shared = round_ % 2 == 1
        if wants_shared:
            storage.set("shared", mine)
        base = session.snapshot_id
        conflict: list[str] = []
        metadata = {"worker": worker, "round": round_, "shared": wants_shared}
        barrier.wait(WAIT)  # everyone has staged on the same base: now race
        try:
            snapshot = session.commit(f"w{worker} r{round_}", metadata=metadata)
        except vs.ConflictError as exc:
            conflict = sorted(exc.keys)
            session.rebase(keep="theirs")
            metadata["shared"] = False
            snapshot = session.commit(f"w{worker} r{round_} (kept theirs)", metadata=metadata)
        commits.append({"round": round_, "base": base, "snapshot": snapshot,
                        "conflict": conflict, "wrote_shared": metadata["shared"]})
    repo.close()
    return commits


def stage_region(session: vs.Session, start: int, stop: int, value: int) -> str:
    """Write ``t[start:stop] = value`` through a session pickled from another process."""
    zarr.open_array(session.store, path="t", mode="r+")[start:stop] = value
    assert session.session_id is not None
    return session.session_id


def stage_region_from_pickle(blob: bytes, start: int, stop: int, value: int) -> str:
    """``stage_region`` through a session pickled (as ``blob``) long before this runs."""
    session = pickle.loads(blob)  # noqa: S301 - the test's own session
    return stage_region(session, start, stop, value)


def kept_value(worker: int, round_: int) -> bytes:
    """The 1 KiB value ``w<worker>/r<round>`` holds (large enough to be its own object)."""
    return f"{worker}:{round_}:".encode().ljust(1024, b".")


def commit_and_discard(path: str, worker: int, rounds: int) -> list[str]:
    """Make garbage and keepers: each round a commit on a scratch branch that is then
    reset away, and a commit on ``main`` of the *same* bytes (so staging dedups
    against chunks that garbage collection is about to delete)."""
    repo = open_repo(path)
    scratch = f"scratch{worker}"
    repo.create_branch(scratch, snapshot_id=repo.lookup_branch("main"))
    kept: list[str] = []
    for round_ in range(rounds):
        base = repo.lookup_branch(scratch)
        session = repo.writable_session(scratch)
        session.store.storage.set(f"g{worker}", kept_value(worker, round_))
        session.commit(f"garbage {worker}:{round_}")
        repo.reset_branch(scratch, base)
        session = repo.writable_session("main")
        session.store.storage.set(f"w{worker}/r{round_}", kept_value(worker, round_))
        kept.append(session.commit(f"keep {worker}:{round_}",
                                   metadata={"worker": worker, "round": round_}))
    repo.close()
    return kept


def collect_garbage_until(path: str, done: Any) -> dict[str, int]:
    """Run garbage collection over and over until ``done``; count what it did."""
    repo = open_repo(path)
    counts = {"runs": 0, "deleted": 0, "gave_up": 0}
    while not done.is_set():
        try:
            counts["deleted"] += repo.garbage_collect().deleted
            counts["runs"] += 1
        except vs.VersionStoreError as exc:
            if type(exc) is not vs.VersionStoreError:  # only "the repository kept changing"
                raise
            counts["gave_up"] += 1
    repo.close()
    return counts


def commit_versions(path: str, rounds: int, seen: Any) -> list[str]:
    """Commit ``v[:] = round`` for each round, waiting until every reader has seen each one.

    ``seen[i]`` is the newest version reader ``i`` has read whole (``-1``
    before its first read). Waiting on the readers (not on a clock)
    guarantees they read while this process stages and commits the next
    version, and that each reader sees every version.
    """
    repo = open_repo(path)
    _wait_until(partial(_all_seen, seen, 0), "readers to start")
    snapshots: list[str] = []
    for round_ in range(1, rounds + 1):
        session = repo.writable_session("main")
        zarr.open_array(session.store, path="v", mode="r+")[:] = round_
        snapshots.append(session.commit(f"v = {round_}"))
        _wait_until(partial(_all_seen, seen, round_), f"readers to see version {round_}")
    repo.close()
    return snapshots


def read_versions(path: str, done: Any, seen: Any, slot: int) -> dict[str, Any]:
    """Read ``v`` from the branch tip until ``done``; report every version seen whole."""
    repo = open_repo(path)
    versions: list[int] = []
    mixed: list[list[int]] = []
    reads = 0
    while True:
        finished = done.is_set()  # read once more after the last commit
        session = repo.readonly_session("main")
        values = zarr.open_array(session.store, path="v", mode="r")[:]
        reads += 1
        distinct = sorted({int(x) for x in np.unique(values)})
        if len(distinct) != 1:
            mixed.append(distinct)
        elif not versions or versions[-1] != distinct[0]:
            versions.append(distinct[0])
            seen[slot] = max(seen[slot], distinct[0])
        if finished:
            break
    repo.close()
    return {"versions": versions, "mixed": mixed, "reads": reads}


def _all_seen(seen: Any, version: int) -> bool:
    return bool(min(seen[:]) >= version)


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.001)


# -- crash workers (subprocess, SIGKILLed) ------------------------------------------------

CHUNK = 128  #: elements per chunk: 1 KiB of int64, so every chunk is its own object
CHUNKS = 400  #: chunks per round: a commit changes hundreds of keys
BATCH = 50  #: chunks per ``set_values`` call on batched rounds


def chunk_key(index: int) -> str:
    """Store key of chunk ``index`` of array ``a``."""
    return f"a/c/{index}"


def chunk_bytes(round_: int, index: int) -> bytes:
    """Chunk ``index`` of array ``a`` as written in round ``round_``."""
    start = (round_ * CHUNKS + index) * CHUNK
    return np.arange(start, start + CHUNK, dtype="<i8").tobytes()


def array_values(round_: int) -> np.ndarray[Any, Any]:
    """All of array ``a`` as written in round ``round_``."""
    start = round_ * CHUNKS * CHUNK
    return np.arange(start, start + CHUNKS * CHUNK, dtype="<i8")


def create_crash_array(session: vs.Session) -> None:
    """Create array ``a`` (uncompressed, so ``chunk_bytes`` is exactly what zarr stores)."""
    zarr.create_array(session.store, name="a", shape=(CHUNKS * CHUNK,), chunks=(CHUNK,),
                      dtype="<i8", compressors=None, fill_value=-1)


class _Log:
    """An append-only text log; each line is one ``write`` system call (survives SIGKILL)."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def lines(self, lines: Iterable[str]) -> None:
        os.write(self._fd, "".join(f"{line}\n" for line in lines).encode())

    def line(self, line: str) -> None:
        self.lines([line])


def read_log(path: Path) -> list[list[str]]:
    """Complete lines of a worker log, split on commas (a torn last line is dropped)."""
    if not path.exists():
        return []
    text = path.read_text()
    complete = text[: text.rfind("\n") + 1]
    return [line.split(",") for line in complete.splitlines()]


def _start(logs: Path) -> vs.Repository:
    """Open the repository, say ``ready``, wait for ``go`` on stdin, say ``started``."""
    repo = open_repo(sys.argv[2])
    _Log(logs / "events.log").line("ready")
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("expected 'go'")
    _Log(logs / "events.log").line("started")
    return repo


def _stage_round(session: vs.Session, round_: int, staged: _Log) -> None:
    """Stage every chunk of ``round_``: one key per write every third round, else in batches."""
    if round_ % 3 == 0:
        storage = session.store.storage
        for index in range(CHUNKS):
            storage.set(chunk_key(index), chunk_bytes(round_, index))
            staged.line(f"{round_},{index}")
    else:
        for first in range(0, CHUNKS, BATCH):
            indices = range(first, min(first + BATCH, CHUNKS))
            session.set_values([(chunk_key(i), chunk_bytes(round_, i)) for i in indices])
            staged.lines(f"{round_},{i}" for i in indices)


def commit_loop(logs: Path, first_round: int) -> None:
    """Stage and commit a whole new version of ``a`` per round, forever (until killed).

    Logs, each after the step returned: ``sessions.log`` ``round,session id``
    (before staging), ``staged.log`` ``round,chunk index``, ``commits.log``
    ``snapshot id,round``.
    """
    repo = _start(logs)
    sessions, staged, commits = (_Log(logs / name) for name in
                                 ("sessions.log", "staged.log", "commits.log"))
    round_ = first_round
    while True:
        session = repo.writable_session("main")
        sessions.line(f"{round_},{session.session_id}")
        _stage_round(session, round_, staged)
        snapshot = session.commit(f"round {round_}", metadata={"round": round_})
        commits.line(f"{snapshot},{round_}")
        round_ += 1


def stage_forever(logs: Path, first_round: int) -> None:
    """Stage keys ``k<first_round>/<n>`` in one session forever (until killed), never committing."""
    repo = _start(logs)
    session = repo.writable_session("main")
    _Log(logs / "sessions.log").line(f"{first_round},{session.session_id}")
    staged = _Log(logs / "staged.log")
    storage = session.store.storage
    n = 0
    while True:
        storage.set(f"k{first_round}/{n}", chunk_bytes(first_round, n % CHUNKS))
        staged.line(f"{first_round},{n}")
        n += 1


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _KillDuring:
    """A batch's objects (sized, as ``WriteBatch`` holds them) that die inside the write.

    The write transaction iterating them gets ``after`` objects, then the
    process kills itself, inside the open transaction.
    """

    def __init__(self, objects: Iterable[Any], after: int) -> None:
        self._objects = list(objects)
        self._after = after

    def __len__(self) -> int:
        return len(self._objects)

    def __iter__(self) -> Iterator[Any]:
        for n, item in enumerate(self._objects):
            if n == self._after:
                _kill_self()
            yield item
        _kill_self()


def _kill_during(objects: Iterable[Any], after: int) -> _KillDuring:
    """``objects`` that kill the process after ``after`` of them go into a write transaction."""
    return _KillDuring(objects, after)


def die_at(logs: Path, first_round: int, point: str) -> None:
    """Stage a round, then commit it and SIGKILL ourselves at ``point``.

    Points: ``mid-stage-txn`` (inside the write transaction of the fifth staged
    batch), ``before-cas`` (the new tree built, the branch not yet moved),
    ``mid-commit-txn`` (inside the compare-and-swap transaction, after it
    wrote some of the commit's tree nodes) and ``after-cas`` (the branch
    moved, before the flush). The snapshot each commit attempt would publish
    is logged in ``attempts.log`` first.
    """
    from versionstore.backend.lmdb import LMDBBackend
    from versionstore.ids import object_id_text
    from versionstore.refs import Refs

    repo = _start(logs)
    session = repo.writable_session("main")
    _Log(logs / "sessions.log").line(f"{first_round},{session.session_id}")
    staged = _Log(logs / "staged.log")
    attempts = _Log(logs / "attempts.log")
    import attrs

    write, move_branch = LMDBBackend.write, Refs.move_branch
    batches = 0

    def hooked_write(self: LMDBBackend, batch: Any) -> bool:
        nonlocal batches
        if batch.expect:  # a compare-and-swap: the commit's
            if point == "mid-commit-txn" and batch.objects:
                batch = attrs.evolve(
                    batch, objects=_kill_during(batch.objects, after=len(batch.objects) // 2))
        else:
            batches += 1
            if point == "mid-stage-txn" and batches == 5:
                batch = attrs.evolve(
                    batch, objects=_kill_during(batch.objects, after=len(batch.objects) // 2))
        return write(self, batch)

    def move(self: Refs, name: str, expected: bytes, snapshot: Any, *args: Any,
             **kwargs: Any) -> bool:
        attempts.line(object_id_text(snapshot))
        if point == "before-cas":
            _kill_self()
        moved = move_branch(self, name, expected, snapshot, *args, **kwargs)
        if point == "after-cas":
            _kill_self()
        return moved

    LMDBBackend.write = hooked_write  # type: ignore[method-assign]
    Refs.move_branch = move  # type: ignore[method-assign,assignment]
    for first in range(0, CHUNKS, BATCH):
        indices = range(first, min(first + BATCH, CHUNKS))
        session.set_values([(chunk_key(i), chunk_bytes(first_round, i)) for i in indices])
        staged.lines(f"{first_round},{i}" for i in indices)
    session.commit(f"round {first_round}", metadata={"round": first_round})
    raise SystemExit(f"survived {point}")


def die_reading(logs: Path) -> None:
    """SIGKILL ourselves inside an LMDB read transaction (iterating the ids it reads)."""
    repo = _start(logs)
    tip = repo.reader.backend.get_ref("branch/main")
    assert tip is not None
    repo.backend.get_objects(_kill_during([b"x" * 20] * 4, after=2))  # type: ignore[arg-type]
    raise SystemExit("survived the read")


def die_with_a_held_write(logs: Path) -> None:
    """Two threads stage into one session; the first write is held back, the second
    returns, and then the process dies (as a kernel with a thread pool might)."""
    import threading

    from versionstore.backend.lmdb import LMDBBackend

    repo = _start(logs)
    session = repo.writable_session("main")
    _Log(logs / "sessions.log").line(f"0,{session.session_id}")
    held = threading.Event()
    write = LMDBBackend.write

    def hooked_write(self: LMDBBackend, batch: Any) -> bool:
        if threading.current_thread().name == "held":
            held.set()
            threading.Event().wait()  # this write never happens: we die first
        return write(self, batch)

    LMDBBackend.write = hooked_write  # type: ignore[method-assign]
    first = threading.Thread(target=session.set_values, args=([("first", b"1")],),
                             name="held", daemon=True)
    first.start()
    if not held.wait(WAIT):
        raise SystemExit("the first write never started")
    session.set_values([("second", b"2")])
    _Log(logs / "staged.log").line("second")
    _kill_self()


def main() -> None:
    """``process_workers.py COMMAND REPO LOGDIR FIRST_ROUND [POINT]``."""
    command, logs, first_round = sys.argv[1], Path(sys.argv[3]), int(sys.argv[4])
    if command == "commit-loop":
        commit_loop(logs, first_round)
    elif command == "stage-forever":
        stage_forever(logs, first_round)
    elif command == "die-with-a-held-write":
        die_with_a_held_write(logs)
    elif command == "die-reading":
        die_reading(logs)
    elif command == "die-at":
        die_at(logs, first_round, sys.argv[5])
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main()

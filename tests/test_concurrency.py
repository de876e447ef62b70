"""Many writers and readers on one LMDB repository: real processes, and threads.

The engine's promise (DESIGN.md, "Concurrency"): two commits on one branch
race by compare-and-swap; the loser rebases itself when the changes do not
overlap and gets ``ConflictError`` naming the keys when they do; nothing
committed is ever lost; readers always see whole committed versions. Every
process here is started with the ``spawn`` context (an LMDB environment must
never cross a ``fork``); the code they run lives in ``process_workers``.
Every wait is bounded, and no assertion depends on how fast anything ran.
"""

from __future__ import annotations

import multiprocessing
import pickle
import random
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import process_workers as workers
import pytest
import zarr
from obstore.store import MemoryStore

import versionstore as vs
import versionstore.session as session_module
import versionstore.staged_manifest as manifest_module

SPAWN = multiprocessing.get_context("spawn")
JOIN = 120.0  # seconds; a bound on hangs, not an expectation of speed


def run_processes(calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[Any]:
    """Run each ``(target, args)`` in its own spawned process; their results, in order.

    A child's exception fails the test with the child's traceback.
    """
    queue = SPAWN.Queue()
    processes = [
        SPAWN.Process(target=workers.run_reporting, args=(queue, index, target, *args))
        for index, (target, args) in enumerate(calls)
    ]
    for process in processes:
        process.start()
    try:
        reports = [queue.get(timeout=JOIN) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=JOIN)
            if process.is_alive():
                process.kill()
                process.join(timeout=10)
    errors = [report for _, status, report in reports if status == "error"]
    assert not errors, "a worker process failed:\n" + "\n".join(errors)
    assert [process.exitcode for process in processes] == [0] * len(processes)
    return [result for _, _, result in sorted(reports, key=lambda report: report[0])]


def run_threads(targets: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run each target in its own thread; their results, in order (exceptions re-raised)."""
    results: list[Any] = [None] * len(targets)
    failures: list[BaseException] = []

    def run(index: int, target: Callable[[], Any]) -> None:
        try:
            results[index] = target()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i, t), daemon=True)
               for i, t in enumerate(targets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=JOIN)
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish"
    if failures:
        raise failures[0]
    return results


def read_array(session: vs.Session, path: str) -> list[int]:
    """The whole zarr array at ``path`` as the session sees it, as a list."""
    values: list[int] = np.asarray(zarr.open_array(session.store, path=path, mode="r")[:]).tolist()
    return values


def history(repo: vs.Repository, branch: str = "main") -> list[vs.SnapshotInfo]:
    """The branch's snapshots, oldest first, checked to be one parent chain."""
    infos = list(repo.ancestry(branch=branch))[::-1]
    assert infos[0].parent_id is None
    for parent, child in zip(infos, infos[1:], strict=False):
        assert child.parent_id == parent.id
    assert len({info.id for info in infos}) == len(infos)
    return infos


@pytest.fixture
def switch_often() -> Iterator[None]:
    """Threads switch every microsecond, so a race's window of a few bytecodes is hit."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


@pytest.fixture
def repo_path(tmp_path: Path) -> str:
    return str(tmp_path / "repo")


@pytest.fixture
def repo(repo_path: str) -> Iterator[vs.Repository]:
    repository = vs.Repository.create(vs.lmdb_storage(repo_path))
    yield repository
    repository.close()


def test_processes_racing_to_open_or_create_share_one_repository(tmp_path: Path) -> None:
    path = str(tmp_path / "new-repo")
    barrier = SPAWN.Barrier(3)

    tips = run_processes([(workers.open_or_create, (path, barrier)) for _ in range(3)])

    with vs.Repository.open(vs.lmdb_storage(path)) as repo:
        assert tips == [repo.lookup_branch("main")] * 3
        assert len(history(repo)) == 1 and repo.list_branches() == {"main"}


def test_disjoint_writers_in_two_processes_both_commit(repo: vs.Repository, repo_path: str
                                                       ) -> None:
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="t", shape=(20,), chunks=(5,), dtype="i4",
                      fill_value=0)
    setup = session.commit("create t")
    barrier = SPAWN.Barrier(2)

    first, second = run_processes([
        (workers.write_region, (repo_path, 0, 10, 1, barrier)),
        (workers.write_region, (repo_path, 10, 20, 2, barrier)),
    ])

    assert first["base"] == second["base"] == setup
    infos = history(repo)
    assert len(infos) == 4 and infos[1].id == setup
    committed = [info.id for info in infos[2:]]
    assert sorted(committed) == sorted([first["snapshot"], second["snapshot"]])
    assert infos[2].parent_id == setup  # the winner; the loser rebased onto it
    assert read_array(repo.readonly_session("main"), "t") == [1] * 10 + [2] * 10
    # Each commit holds its own half, and the rebased one the winner's half too.
    by_id = {info.id: n for n, info in enumerate(infos)}
    for snapshot, half in [(first["snapshot"], slice(0, 10)), (second["snapshot"], slice(10, 20))]:
        values = read_array(repo.readonly_session(snapshot_id=snapshot), "t")
        assert values[half] == [1 if half.start == 0 else 2] * 10
        other = slice(10, 20) if half.start == 0 else slice(0, 10)
        assert values[other] == ([0] * 10 if by_id[snapshot] == 2 else
                                 [1 if other.start == 0 else 2] * 10)


def test_same_key_in_two_processes_exactly_one_wins(repo: vs.Repository, repo_path: str
                                                    ) -> None:
    session = repo.writable_session("main")
    session.store.storage.set("k", b"base")
    setup = session.commit("k = base")
    barrier = SPAWN.Barrier(2)

    results = run_processes([
        (workers.write_same_key, (repo_path, "k", b"one", barrier)),
        (workers.write_same_key, (repo_path, "k", b"two", barrier)),
    ])

    assert [r["base"] for r in results] == [setup, setup]
    winners = [r for r in results if r["first"] is not None]
    losers = [r for r in results if r["conflict"] is not None]
    assert len(winners) == 1 and len(losers) == 1
    winner, loser = winners[0], losers[0]
    conflict = loser["conflict"]
    assert "k" in conflict["keys"] and conflict["branch"] == "main"
    assert conflict["has_uncommitted_changes"] is True
    assert conflict["staged_value"] in (b"one", b"two") and conflict["base_after_conflict"] == setup
    assert conflict["base_after_rebase"] == winner["first"]
    infos = history(repo)
    assert [info.id for info in infos[1:]] == [setup, winner["first"], loser["second"]]
    tip = repo.readonly_session("main").store.storage
    assert tip.get("k") == conflict["staged_value"]  # "ours" won the resolution
    won = repo.readonly_session(snapshot_id=winner["first"]).store.storage
    assert won.get("k") not in (b"base", conflict["staged_value"])


def test_racing_rounds_lose_no_commit(repo: vs.Repository, repo_path: str) -> None:
    processes, rounds = 4, 10
    barrier = SPAWN.Barrier(processes)

    reports = run_processes(
        [(workers.race_rounds, (repo_path, worker, rounds, barrier))
         for worker in range(processes)]
    )

    commits = {(w, c["round"]): c for w, report in enumerate(reports) for c in report}
    assert len(commits) == processes * rounds
    infos = history(repo)
    assert len(infos) == 1 + processes * rounds
    by_id = {info.id: info for info in infos}
    for (worker, round_), commit in commits.items():
        info = by_id[commit["snapshot"]]  # every returned snapshot is in the history
        assert (info.metadata["worker"], info.metadata["round"]) == (worker, round_)
        assert commit["conflict"] in ([], ["shared"])
        assert commit["wrote_shared"] == info.metadata["shared"]
    position = {info.id: n for n, info in enumerate(infos)}
    for round_ in range(rounds):
        # One base per round (the last commit of the round before): exactly one
        # commit moved the branch from it, every other one rebased.
        in_round = [commits[worker, round_] for worker in range(processes)]
        [base] = {c["base"] for c in in_round}
        last = max(position[c["snapshot"]] for c in in_round)
        assert sorted(position[c["snapshot"]] for c in in_round) == list(
            range(last - processes + 1, last + 1))
        assert infos[last - processes + 1].parent_id == base
        conflicted = [c for c in in_round if c["conflict"]]
        assert len(conflicted) == (processes - 1 if round_ % 2 else 0)

    # Replay the history as a model: every snapshot holds exactly the keys
    # committed up to it, with their latest values.
    model: dict[str, bytes] = {}
    for info in infos[1:]:
        worker, round_ = info.metadata["worker"], info.metadata["round"]
        value = f"{worker}:{round_}".encode()
        model[f"w{worker}/last"] = model[f"w{worker}/r{round_}"] = value
        if info.metadata["shared"]:
            model["shared"] = value
        storage = repo.readonly_session(snapshot_id=info.id).store.storage
        keys = sorted(storage.list_prefix(""))
        assert keys == sorted(model)
        assert storage.get_many([(key, None) for key in keys]) == [model[k] for k in keys]
    conflicts = sum(bool(c["conflict"]) for c in commits.values())
    print(f"\n{processes} processes x {rounds} rounds: {len(commits)} commits, "
          f"{conflicts} resolved conflicts on 'shared'")


def test_readers_see_only_whole_versions(repo: vs.Repository, repo_path: str) -> None:
    rounds, reader_threads = 8, 3
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="v", shape=(1000,), chunks=(100,), dtype="i8",
                      fill_value=0)[:] = 0
    session.commit("v = 0")
    seen = SPAWN.Array("q", [-1] * (reader_threads + 1))
    done = SPAWN.Event()
    thread_results: list[dict[str, Any]] = []

    def thread_reader(slot: int) -> None:
        thread_results.append(workers.read_versions(repo_path, done, seen, slot))

    threads = [threading.Thread(target=thread_reader, args=(slot,), daemon=True)
               for slot in range(reader_threads)]
    for thread in threads:
        thread.start()
    queue = SPAWN.Queue()
    reader = SPAWN.Process(target=workers.run_reporting,
                           args=(queue, 0, workers.read_versions, repo_path, done, seen,
                                 reader_threads))
    reader.start()
    try:
        # One held read-only session keeps its version while the writer commits.
        held = repo.readonly_session("main")
        [snapshots] = run_processes([(workers.commit_versions, (repo_path, rounds, seen))])
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=JOIN)
        report = queue.get(timeout=JOIN)
        reader.join(timeout=JOIN)
    assert not any(thread.is_alive() for thread in threads)
    assert report[1] == "ok", report[2]
    results = [*thread_results, report[2]]
    assert len(results) == reader_threads + 1
    for result in results:
        assert result["mixed"] == []
        assert result["versions"] == list(range(rounds + 1))
    assert read_array(held, "v") == [0] * 1000
    assert read_array(repo.readonly_session("main"), "v") == [rounds] * 1000
    assert [info.id for info in history(repo)[2:]] == snapshots


def test_a_session_pickled_to_processes_stages_for_one_commit(repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="t", shape=(30,), chunks=(5,), dtype="i4",
                      fill_value=0)
    base = session.commit("create t")

    # As with dask: the same writable session, pickled to three processes.
    staged_by = run_processes(
        [(workers.stage_region, (session, 10 * n, 10 * n + 10, n + 1)) for n in range(3)]
    )

    assert staged_by == [session.session_id] * 3
    assert session.has_uncommitted_changes
    snapshot = session.commit("three processes' writes")
    assert repo.lookup_snapshot(snapshot).parent_id == base
    assert read_array(repo.readonly_session("main"), "t") == [1] * 10 + [2] * 10 + [3] * 10


def test_a_copy_unpickled_in_a_process_after_a_commit_and_a_gc_builds_on_the_commit(
        repo: vs.Repository) -> None:
    # A dask task graph pickled before the session committed, run after a gc: gc used
    # to prune the emptied record, the worker recreated it with the base it was pickled
    # on and rewrote the chunk from that, and the next commit lost the committed row.
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="t", shape=(30,), chunks=(30,), dtype="i4",
                      fill_value=0)
    session.commit("create t")
    blob = pickle.dumps(session)
    zarr.open_array(session.store, path="t")[0:10] = 1
    session.commit("the first ten")
    repo.garbage_collect()
    assert run_processes([(workers.stage_region_from_pickle, (blob, 10, 20, 2))]) == [
        session.session_id]
    session.commit("the worker's ten")
    assert read_array(repo.readonly_session("main"), "t") == [1] * 10 + [2] * 10 + [0] * 10
    assert repo.verify().ok


def test_garbage_collection_alongside_writers_removes_only_garbage(
    repo: vs.Repository, repo_path: str
) -> None:
    writers, rounds = 2, 8
    done = SPAWN.Event()
    queue = SPAWN.Queue()
    collector = SPAWN.Process(target=workers.run_reporting,
                              args=(queue, 0, workers.collect_garbage_until, repo_path, done))
    collector.start()
    try:
        kept = run_processes([(workers.commit_and_discard, (repo_path, w, rounds))
                              for w in range(writers)])
    finally:
        done.set()
        report = queue.get(timeout=JOIN)
        collector.join(timeout=JOIN)
    assert report[1] == "ok", report[2]
    assert collector.exitcode == 0

    infos = history(repo)
    assert {info.id for info in infos[1:]} == {s for snapshots in kept for s in snapshots}
    model: dict[str, bytes] = {}
    for info in infos[1:]:  # every kept version is whole, whatever was collected meanwhile
        worker, round_ = info.metadata["worker"], info.metadata["round"]
        model[f"w{worker}/r{round_}"] = workers.kept_value(worker, round_)
        storage = repo.readonly_session(snapshot_id=info.id).store.storage
        assert sorted(storage.list_prefix("")) == sorted(model)
        assert [storage.get(key) for key in sorted(model)] == [model[k] for k in sorted(model)]
    verified = repo.verify()
    assert verified.ok, verified.problems
    repo.garbage_collect()  # whatever garbage the collector did not get to
    assert repo.garbage_collect(dry_run=True).deleted == 0 and repo.verify().ok
    print(f"\ncollector alongside {writers} writers: {report[2]}")


def _commit_keys(repo: vs.Repository, name: str, commits: int,
                 barrier: threading.Barrier) -> list[tuple[str, str]]:
    """Commit ``name/<n>`` once per round, racing the other threads; ``(base, snapshot)``s."""
    made: list[tuple[str, str]] = []
    for n in range(commits):
        barrier.wait(JOIN)
        session = repo.writable_session("main")
        session.store.storage.set(f"{name}/{n}", f"{name}:{n}".encode())
        barrier.wait(JOIN)  # every thread has staged on the same base
        made.append((session.snapshot_id, session.commit(f"{name} {n}")))
    return made


def _check_thread_commits(repo: vs.Repository, names: list[str],
                          results: list[list[tuple[str, str]]], commits: int) -> None:
    infos = history(repo)
    assert len(infos) == 1 + len(names) * commits
    assert {info.id for info in infos[1:]} == {s for made in results for _, s in made}
    for n in range(commits):  # each round all staged on one base: all but one rebased
        assert len({made[n][0] for made in results}) == 1
    storage = repo.readonly_session("main").store.storage
    expected = {f"{name}/{n}": f"{name}:{n}".encode() for name in names for n in range(commits)}
    assert sorted(storage.list_prefix("")) == sorted(expected)
    assert {key: storage.get(key) for key in expected} == expected


def test_threads_each_with_a_session_on_one_repository(repo: vs.Repository) -> None:
    names, commits = [f"t{i}" for i in range(8)], 5
    barrier = threading.Barrier(len(names))

    results = run_threads([partial(_commit_keys, repo, name, commits, barrier)
                           for name in names])

    _check_thread_commits(repo, names, results, commits)


def test_threads_committing_compressed_leaves_on_their_own_branches(repo: vs.Repository) -> None:
    """Regression: the commits' leaves (over 4 KiB: compressed) shared one zstd compressor.

    python-zstandard's compressors must not be used by two threads at once: the
    process crashed, or a commit raised "Src size is incorrect".
    """
    names, commits = [f"b{i}" for i in range(6)], 20
    for name in names:
        repo.create_branch(name, repo.lookup_branch("main"))

    def values(name: str, n: int) -> dict[str, bytes]:
        return {f"{name}/{n}/{k:04d}": f"{name}:{n}:{k}:".encode() * 6 for k in range(1024)}

    def commit_rounds(name: str) -> None:
        for n in range(commits):
            session = repo.writable_session(name)
            session.set_values(list(values(name, n).items()))
            session.commit(f"{name} {n}")

    run_threads([partial(commit_rounds, name) for name in names])

    for name in names:
        expected = {k: v for n in range(commits) for k, v in values(name, n).items()}
        storage = repo.readonly_session(name).store.storage
        assert sorted(storage.list_prefix(name + "/")) == sorted(expected)
        assert {key: storage.get(key) for key in expected} == expected
    assert repo.verify().ok


def test_threads_opening_repositories_at_once_never_hang(repo_path: str,
                                                       repo: vs.Repository) -> None:
    """Regression: each open ran ``open_db`` (a write transaction that py-lmdb 3
    begins while holding the GIL), so two threads opening at once could deadlock
    the whole process. It runs in a child process: a hang there is a failure
    here, not a frozen test run."""
    queue = SPAWN.Queue()
    child = SPAWN.Process(target=workers.run_reporting,
                          args=(queue, 0, workers.open_in_threads, repo_path, 4, 200))
    child.start()
    child.join(timeout=JOIN)
    hung = child.is_alive()
    if hung:
        child.kill()
        child.join(timeout=10)
    assert not hung, "threads opening the repository deadlocked"
    _, status, result = queue.get(timeout=10)
    assert status == "ok", result
    assert result == 4 * 200


def test_threads_with_several_repository_objects_on_one_directory(
    repo: vs.Repository, repo_path: str
) -> None:
    others = [vs.Repository.open(vs.lmdb_storage(repo_path)) for _ in range(3)]
    repos = [repo, *others]
    names, commits = [f"r{i}t{j}" for i in range(len(repos)) for j in range(2)], 5
    barrier = threading.Barrier(len(names))
    try:
        results = run_threads([
            partial(_commit_keys, repos[i // 2], name, commits, barrier)
            for i, name in enumerate(names)
        ])
    finally:
        for other in others:
            other.close()

    _check_thread_commits(repo, names, results, commits)


def test_processes_and_threads_commit_together(repo: vs.Repository, repo_path: str) -> None:
    processes, rounds, threads = 2, 5, 2
    barrier = SPAWN.Barrier(processes)
    thread_names = [f"thread{i}" for i in range(threads)]
    thread_barrier = threading.Barrier(threads)
    collected: list[list[tuple[str, str]]] = []

    def in_threads() -> None:
        collected.extend(run_threads([
            partial(_commit_keys, repo, name, rounds, thread_barrier)
            for name in thread_names
        ]))

    background = threading.Thread(target=in_threads, daemon=True)
    background.start()
    reports = run_processes(
        [(workers.race_rounds, (repo_path, worker, rounds, barrier))
         for worker in range(processes)]
    )
    background.join(timeout=JOIN)
    assert not background.is_alive() and len(collected) == threads

    infos = history(repo)
    committed = {c["snapshot"] for report in reports for c in report}
    committed |= {s for made in collected for _, s in made}
    assert {info.id for info in infos[1:]} == committed
    assert len(infos) == 1 + processes * rounds + threads * rounds
    tip = repo.readonly_session("main").store.storage
    for worker in range(processes):
        assert tip.get(f"w{worker}/last") == f"{worker}:{rounds - 1}".encode()
    assert np.all([tip.get(f"{name}/{n}") == f"{name}:{n}".encode()
                   for name in thread_names for n in range(rounds)])


def test_threads_reading_a_session_whose_writes_are_in_a_staged_manifest(
    monkeypatch: pytest.MonkeyPatch, switch_often: None
) -> None:
    """Regression: the session's one ``ManifestReader`` evicted its oldest cached part
    (``next(iter(cache))``, then ``pop``) while other threads inserted theirs: plain
    reads raised "dictionary changed size during iteration" or ``KeyError``.

    Thresholds lowered as in ``test_staged_manifest.py``: 640 located writes make a
    manifest of 40 parts, far more than the reader caches, so lookups evict.
    """
    monkeypatch.setattr(manifest_module, "SPILL_AT", 20)
    monkeypatch.setattr(manifest_module, "PART_ENTRIES", 16)
    monkeypatch.setattr(session_module, "_LOGGED_FIRST", 0)
    repo = vs.Repository.create(vs.object_storage(MemoryStore(), "repo"))
    writes = 640

    def value(i: int) -> bytes:
        return i.to_bytes(8, "little") * 80  # 640 bytes: a located chunk

    session = repo.writable_session("main")
    session.set_values([(f"a/c/{i}", value(i)) for i in range(writes)])
    session.set_values([("a/zarr.json", b"{}")])  # a log-recorded write absorbs first
    barrier = threading.Barrier(8)

    def read(seed: int) -> None:
        picks = random.Random(seed)
        barrier.wait(timeout=JOIN)
        for _ in range(1000):
            i = picks.randrange(writes)
            assert session.value(f"a/c/{i}") == value(i)

    run_threads([partial(read, seed) for seed in range(8)])

    session.commit("read meanwhile")
    storage = repo.readonly_session("main").store.storage
    assert storage.get_many([(f"a/c/{i}", None) for i in range(writes)]) == [
        value(i) for i in range(writes)]


def test_moves_and_erases_racing_a_commit_of_one_session_duplicate_nothing(
        repo: vs.Repository, switch_often: None) -> None:
    """A move or erase decided on the base a commit is replacing starts over.

    Regression: ``move`` and ``erase_keys`` drop a key staged only in this
    session by deleting its staged ref (no tombstone, the base lacks it). A
    commit of the same session landing between that reading and the batch put
    the key into the new base, so the move left it at its source too (two
    nodes) and the erase left it in place.
    """
    session = repo.writable_session("main")
    session.set_values([("g0/zarr.json", b'{"node_type": "group"}'),
                        ("g1/zarr.json", b'{"node_type": "group"}')])
    session.commit("groups")
    rounds = 150
    stop = threading.Event()

    def move_and_erase() -> None:
        try:
            for i in range(rounds):
                session.set_values([("g0/x/zarr.json", b'{"node_type": "group"}'),
                                    (f"gone/{i}", b"v")])
                session.move("/g0/x", "/g1/x")
                session.erase_keys([f"gone/{i}"])
                session.erase_keys(["g1/x/zarr.json"])
        finally:
            stop.set()

    def commit() -> None:
        while not stop.is_set():
            try:
                session.commit("meanwhile")
            except vs.NothingToCommitError:
                pass

    run_threads([move_and_erase, commit])
    try:
        session.commit("last")
    except vs.NothingToCommitError:
        pass
    left = [key for key, _ in repo.readonly_session("main").iter_entries("", "")]
    assert left == ["g0/zarr.json", "g1/zarr.json"]
    assert repo.verify().problems == ()

"""``python -m benchmarks.side_by_side``: issue 12's history rows, systems interleaved.

The suite runs each system in its own worker, one after the other, so on a
shared machine the load differs between the figures it compares. Here every
system is built first, then each round times every system in turn, and the
medians are compared: whatever the load does, it does to all of them.

**Ancestry** (``--commits``, default 100): the ``scale`` workload's history
(one tiny chunk rewritten per commit). Each round does what a user does:
opens the repository anew (``Repository.open(storage)``, nothing cached in
the process, no session) and lists the branch's ancestry — every snapshot id
of ``list(repo.ancestry(branch="main"))`` — once, then again on the same open
repository. Three times are kept: *open + first listing* (both, as a user
waits for them), *first listing* (the listing alone, after the open), and
*listing again* (each system's own caches warm, the branch re-read). Both
systems are timed the same way, through the same calls.

**In a new process** (``--fresh-rounds``, persistent systems only): the same
open + first listing, each sample in a Python process of its own, timed
inside it after its imports — nothing of an earlier open is left anywhere
in the process (versionstore keeps decoded history for the process, so a
repository opened again in one process lists from it; icechunk's first
calls also start its runtime here, as they do for a user).

**Checkout** (``--checkout``): the ``history`` workload's repository (100
commits each rewriting 1 % of 1,000 chunks of 64 KiB). An unversioned
system given (``zarr-mem``: zarr's ``MemoryStore``) opens its one version
the same way: zarr's own cost of opening the array, the floor under both. Each round, for the
persistent systems after evicting their files from the page cache: open
(untimed), then open the *first* snapshot's array through zarr (timed), and
the bytes the process read from the disk meanwhile (``/proc/self/io``) and
its major page faults (``getrusage``: a read of LMDB's memory map that went
to the disk; icechunk reads with ``read()``, which counts bytes, not faults).

Nothing here asserts a duration; ``tests/test_benchmarks_smoke.py`` runs it
at tiny sizes so that it keeps working.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr

from benchmarks.data import tiny_values
from benchmarks.measure import evict_page_cache
from benchmarks.systems import SYSTEMS, System, available_systems, run_async
from benchmarks.workloads import history as history_workload

DEFAULT_SYSTEMS = ("vs-lmdb", "vs-mem", "icechunk-fs", "icechunk-mem")
PAIRS = (("vs-lmdb", "icechunk-fs"), ("vs-mem", "icechunk-mem"))


def _read_bytes() -> int:
    try:
        with open("/proc/self/io", encoding="ascii") as io:
            fields = dict(line.split(": ") for line in io.read().splitlines())
    except OSError:
        return 0
    return int(fields.get("read_bytes", 0))


def _build_history(system: System, commits: int) -> None:
    values = tiny_values(1000)
    system.create()
    zarr.create_array(system.write_store(), name="a", shape=(100,), chunks=(1,), dtype="int32")
    system.commit("initial")
    for c in range(commits):
        run_async(system.set_keys([(f"a/c/{c % 100}", values[c % 1000])]))
        system.commit(f"change {c}")
    system.close()


def _build_checkout(system: System, params: dict[str, float]) -> str | None:
    chunk_elems, n, _, _ = history_workload._shape(params)
    system.create()
    array = zarr.create_array(system.write_store(), name="hist", shape=(n * chunk_elems,),
                              chunks=(chunk_elems,), dtype="float32")
    array[:] = np.arange(n * chunk_elems, dtype="float32")
    first = system.commit("initial")
    assert first is not None or not system.versioned
    for c, change in enumerate(history_workload._changes(params)):
        array = zarr.open_array(system.write_store(), path="hist")
        for i, values in change:
            array[i * chunk_elems:(i + 1) * chunk_elems] = values
        system.commit(f"change {c}")
    system.close()
    return first


def _summary(samples: list[float]) -> str:
    return f"{statistics.median(samples):.3f} ({min(samples):.3f}–{max(samples):.3f})"


def _ratios(times: dict[str, list[float]], label: str) -> list[str]:
    lines = []
    for ours, theirs in PAIRS:
        if times.get(ours) and times.get(theirs):
            ratio = statistics.median(times[theirs]) / statistics.median(times[ours])
            lines.append(f"  {label}: {ours} {ratio:.2f}× {theirs}")
    return lines


def ancestry(systems: list[System], commits: int, rounds: int,
             out: Callable[[str], None] = print) -> dict[str, dict[str, list[float]]]:
    """Build, then time open + first listing, first listing, listing again; ms samples."""
    for system in systems:
        _build_history(system, commits)
    opened: dict[str, list[float]] = {s.name: [] for s in systems}
    first: dict[str, list[float]] = {s.name: [] for s in systems}
    again: dict[str, list[float]] = {s.name: [] for s in systems}
    for _ in range(rounds):
        for system in systems:
            t0 = time.perf_counter()
            system.open_repository()
            t1 = time.perf_counter()
            listed = system.snapshots()
            t2 = time.perf_counter()
            relisted = system.snapshots()
            t3 = time.perf_counter()
            system.close()
            if len(listed) != commits + 2 or relisted != listed:
                raise AssertionError(f"{system.name}: ancestry has {len(listed)} snapshots")
            opened[system.name].append((t2 - t0) * 1000)
            first[system.name].append((t2 - t1) * 1000)
            again[system.name].append((t3 - t2) * 1000)
    out(f"ancestry of {commits} commits, {rounds} rounds (ms: median (min–max))")
    for system in systems:
        out(f"  {system.name:13s} open + first listing {_summary(opened[system.name])}   "
            f"first listing {_summary(first[system.name])}   "
            f"listing again {_summary(again[system.name])}")
    for line in (_ratios(opened, "open + first listing") + _ratios(first, "first listing")
                 + _ratios(again, "listing again")):
        out(line)
    return {"open + first": opened, "first": first, "again": again}


#: Opens a repository and lists ``main`` in a new process; prints the count and two times.
_FRESH = """
import sys, time
kind, path = sys.argv[1], sys.argv[2]
if kind == "vs":
    import versionstore as vs
    storage, opener = vs.lmdb_storage(path), vs.Repository.open
else:
    import icechunk as ic
    ic.set_logs_filter("error")
    storage, opener = ic.local_filesystem_storage(path), ic.Repository.open
t0 = time.perf_counter()
repo = opener(storage)
t1 = time.perf_counter()
ids = [str(info.id) for info in repo.ancestry(branch="main")]
t2 = time.perf_counter()
print(len(ids), (t2 - t0) * 1000, (t2 - t1) * 1000)
"""
_FRESH_KINDS = {"vs-lmdb": "vs", "icechunk-fs": "ic"}


def fresh(systems: list[System], commits: int, rounds: int,
          out: Callable[[str], None] = print) -> dict[str, dict[str, list[float]]]:
    """Open + first listing in a new process per sample, systems in turn (built by ``ancestry``)."""
    chosen = [s for s in systems if s.name in _FRESH_KINDS]
    opened: dict[str, list[float]] = {s.name: [] for s in chosen}
    first: dict[str, list[float]] = {s.name: [] for s in chosen}
    for _ in range(rounds):
        for system in chosen:
            done = subprocess.run(
                [sys.executable, "-c", _FRESH, _FRESH_KINDS[system.name],
                 str(system.root / "repo")], capture_output=True, text=True, check=True)
            count, both, listing = done.stdout.split()
            if int(count) != commits + 2:
                raise AssertionError(f"{system.name}: ancestry has {count} snapshots")
            opened[system.name].append(float(both))
            first[system.name].append(float(listing))
    out(f"in a new process each: ancestry of {commits} commits, {rounds} rounds (ms)")
    for system in chosen:
        out(f"  {system.name:13s} open + first listing {_summary(opened[system.name])}   "
            f"first listing {_summary(first[system.name])}")
    for line in _ratios(opened, "new process, open + first listing") + _ratios(
            first, "new process, first listing"):
        out(line)
    return {"open + first": opened, "first": first}


def checkout(systems: list[System], rounds: int, params: dict[str, float],
             out: Callable[[str], None] = print) -> dict[str, dict[str, list[float]]]:
    """Build the history workload's repository, then time cold checkouts, interleaved."""
    firsts = {system.name: _build_checkout(system, params) for system in systems}
    times: dict[str, list[float]] = {s.name: [] for s in systems}
    read: dict[str, list[float]] = {s.name: [] for s in systems}
    faults: dict[str, list[float]] = {s.name: [] for s in systems}
    for _ in range(rounds):
        for system in systems:
            if system.persistent:
                evict_page_cache(system.root)
            system.open()
            before = _read_bytes()
            faulted = resource.getrusage(resource.RUSAGE_SELF).ru_majflt
            t0 = time.perf_counter()
            array = zarr.open_array(system.read_store(firsts[system.name]), path="hist",
                                    mode="r")
            times[system.name].append((time.perf_counter() - t0) * 1000)
            faults[system.name].append(resource.getrusage(resource.RUSAGE_SELF).ru_majflt
                                       - faulted)
            read[system.name].append((_read_bytes() - before) / 1024)
            if array.shape[0] != params["history_chunks"] * params["history_chunk_kib"] * 256:
                raise AssertionError(f"{system.name}: wrong array")
            system.close()
    out(f"checkout of the first snapshot, page cache evicted, {rounds} rounds")
    for system in systems:
        out(f"  {system.name:13s} {_summary(times[system.name])} ms, "
            f"read from disk {statistics.median(read[system.name]):.0f} KiB, "
            f"major faults {statistics.median(faults[system.name]):.0f}")
    for line in _ratios(times, "checkout"):
        out(line)
    return {"ms": times, "read KiB": read, "major faults": faults}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.side_by_side",
                                     description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS))
    parser.add_argument("--commits", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--fresh-rounds", type=int, default=0,
                        help="also open + first listing in a new process per sample")
    parser.add_argument("--checkout", action="store_true", help="also the checkout rows")
    parser.add_argument("--checkout-rounds", type=int, default=9)
    parser.add_argument("--history-chunks", type=int, default=1000)
    parser.add_argument("--history-chunk-kib", type=int, default=64)
    parser.add_argument("--history-commits", type=int, default=100)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where repositories are written (a real disk, not tmpfs)")
    args = parser.parse_args(argv)
    usable = available_systems()
    names = [n for n in args.systems.split(",") if n in usable and usable[n] is None]
    root = Path(tempfile.mkdtemp(prefix="side-by-side-", dir=args.workdir))
    try:
        print(f"load average {os.getloadavg()[0]:.2f}")
        built = [SYSTEMS[n](root / f"a-{n}") for n in names if SYSTEMS[n].versioned]
        ancestry(built, args.commits, args.rounds)
        if args.fresh_rounds:
            fresh(built, args.commits, args.fresh_rounds)
        if args.checkout:
            params = {"history_chunks": args.history_chunks,
                      "history_chunk_kib": args.history_chunk_kib,
                      "history_commits": args.history_commits, "history_change": 0.01}
            checkout([SYSTEMS[n](root / f"c-{n}") for n in names], args.checkout_rounds,
                     params)
        print(f"load average {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

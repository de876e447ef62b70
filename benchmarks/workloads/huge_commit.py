"""Huge commits: N changed chunks staged in one session and committed at once.

For each size N (10^5 and 10^6 by default; pass ``--huge-sizes 1e5,1e6,1e7``
for the opt-in 10^7), a fresh worker process creates a repository with one
int32 array of N single-element chunks, stages all N chunk values through the
system's public write path (versionstore: ``Session.set_values`` batches of
10,000 — what ``session.store`` does for zarr's concurrent writes; icechunk:
concurrent ``Store.set`` on its own store) and commits them in one commit.
The chunks are zarr's own encodings of one int32 each (so they are tiny and
stored inline by both systems), and the array is read back afterwards at a
few random indices to check the commit.

Reported per N: the staging time and the commit time; the peak *anonymous*
resident memory (``RssAnon``, sampled every 10 ms: heap and buffers, not the
file pages of a memory-mapped repository) during staging, during the commit,
and over the whole job; and ``ru_maxrss`` (which also counts mapped file
pages). Each N runs in its own process, so one size's memory never hides in
another's. The issue's targets: a commit of 10^6 changed chunks under
300 MiB peak anonymous RSS, 10^7 under 500 MiB.

icechunk keeps every staged change in memory until commit; it runs up to
``huge_icechunk_max`` (10^6) chunks, since building 10^7 through a million
``Store.set`` calls per 10^6 takes longer than the suite's budget.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from benchmarks.data import tiny_values
from benchmarks.measure import AnonymousPeak, Recorder
from benchmarks.systems import System, remove
from benchmarks.workloads.commit_latency import size_label

NAME = "huge"
TITLE = "Huge commits: N changed chunks in one commit (time, peak anonymous RSS)"
PATH = "a"
DISTINCT = 1000


def fixtures(params: dict[str, Any], directory: Path) -> dict[str, Any]:
    return {"huge_values": [v.hex() for v in tiny_values(DISTINCT)]}


def _sizes(system: type[System], params: dict[str, Any]) -> list[int]:
    sizes = list(params["huge_sizes"])
    cap = params.get("huge_icechunk_max") or 0
    if system.name.startswith("icechunk") and cap:
        sizes = [s for s in sizes if s <= cap]
    return sizes


def phases(system: type[System], params: dict[str, Any]) -> list[str]:
    if not (system.versioned and system.zarr_capable):
        return []
    return [f"n{size}" for size in _sizes(system, params)]


def run(phase: str, system: System, params: dict[str, Any], rec: Recorder,
        fixtures: dict[str, Any]) -> None:
    size = int(phase[1:])
    label = size_label(size)
    values = [bytes.fromhex(v) for v in fixtures["huge_values"]]
    instance = type(system)(system.root / phase)
    with AnonymousPeak() as whole:
        instance.create()
        zarr.create_array(instance.write_store(), name=PATH, shape=(size,), chunks=(1,),
                          dtype="int32")
        items = ((f"{PATH}/c/{i}", values[i % DISTINCT]) for i in range(size))
        with AnonymousPeak() as staging:
            start = time.perf_counter()
            instance.load_keys(items)
            staged = time.perf_counter()
        with AnonymousPeak() as committing:
            instance.commit(f"{size} chunks")
            committed = time.perf_counter()
    rec.add(f"stage s (N={label})", staged - start, "s")
    rec.add(f"commit s (N={label})", committed - staged, "s")
    rec.add(f"stage peak anon MiB (N={label})", staging.peak_mib, "MiB")
    rec.add(f"commit peak anon MiB (N={label})", committing.peak_mib, "MiB")
    rec.add(f"job peak anon MiB (N={label})", whole.peak_mib, "MiB")
    rec.rss(f"peak RSS incl. mapped files MiB (N={label})")
    array = zarr.open_array(instance.read_store(), path=PATH, mode="r")
    for index in np.random.default_rng(size).integers(size, size=20):
        if array[int(index)] != int(index) % DISTINCT + 1:
            raise AssertionError(f"{system.name}: chunk {index} wrong after the commit")
    instance.close()
    remove(instance.root)

"""A history of small changes: 100 commits each rewriting 1 % of the chunks.

One float32 array (default 1,000 chunks of 64 KiB) is written and committed,
then each of 100 commits rewrites a random 1 % of its chunks with new values
(one zarr write per chunk). Measured: the time of each commit and of each
commit's writes; then, on a newly opened repository (new in-process caches;
page cache evicted for persistent systems), checking out the *first* snapshot
(open a read-only session there and the array) and reading it fully, the time
to list the branch's ancestry, and the bytes on disk against the logical
bytes.

Logical bytes = the encoded bytes of every distinct chunk version the history
holds (the initial chunks plus every rewritten chunk) plus the array
metadata: what a perfect versioned store would have to keep. They are
computed once, from the bytes zarr stores for the same writes
(``data.ChunkEncoder``). For LMDB, the file size never shrinks, so the pages LMDB
really uses are reported too (``lmdb_used_bytes``). Unversioned systems keep
only the latest version; their footprint is shown for reference.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from benchmarks.data import ChunkEncoder, normal_block, shifted
from benchmarks.measure import MIB, Recorder, Stopwatch, evict_page_cache
from benchmarks.systems import System, run_async

NAME = "history"
TITLE = "History: 100 commits each changing 1 % of chunks"
PATH = "hist"


def _shape(params: dict[str, Any]) -> tuple[int, int, int, int]:
    chunk_elems = params["history_chunk_kib"] * 1024 // 4
    n = params["history_chunks"]
    per_commit = max(1, round(n * params["history_change"]))
    return chunk_elems, n, params["history_commits"], per_commit


def _changes(params: dict[str, Any]) -> Iterator[list[tuple[int, np.ndarray]]]:
    """For each commit: ``(chunk index, new values)`` for each rewritten chunk."""
    chunk_elems, n, commits, per_commit = _shape(params)
    base = normal_block(n * chunk_elems, seed=2)
    for c in range(commits):
        picks = sorted(np.random.default_rng(100 + c).choice(n, per_commit, replace=False).tolist())
        yield [
            (i, shifted(base[i * chunk_elems:(i + 1) * chunk_elems], 1000 * (c + 1)))
            for i in picks
        ]


def _versions(params: dict[str, Any]) -> Iterator[dict[str, bytes]]:
    """The encoded keys of each version: metadata and initial chunks, then each commit's."""
    chunk_elems, n, _, _ = _shape(params)
    base = normal_block(n * chunk_elems, seed=2)
    encoder = ChunkEncoder(PATH, n * chunk_elems, chunk_elems)
    initial = dict(encoder.metadata)
    initial.update(encoder.encode(i, base[i * chunk_elems:(i + 1) * chunk_elems])
                   for i in range(n))
    yield initial
    for change in _changes(params):
        yield dict(encoder.encode(i, values) for i, values in change)


def fixtures(params: dict[str, Any], directory: Path) -> dict[str, Any]:
    logical = sum(len(v) for version in _versions(params) for v in version.values())
    latest: dict[str, int] = {}
    for version in _versions(params):
        latest.update({k: len(v) for k, v in version.items()})
    return {"history_logical_bytes": logical, "history_latest_bytes": sum(latest.values())}


def phases(system: type[System], params: dict[str, Any]) -> list[str]:
    return ["run"]


def run(phase: str, system: System, params: dict[str, Any], rec: Recorder,
        fixtures: dict[str, Any]) -> None:
    chunk_elems, n, commits, per_commit = _shape(params)
    logical = fixtures["history_logical_bytes"]
    rec.note("logical_bytes", logical)
    rec.note("latest_version_bytes", fixtures["history_latest_bytes"])
    rec.note("chunks", n)
    rec.note("chunks_per_commit", per_commit)
    system.create()
    total = Stopwatch()
    if system.zarr_capable:
        base = normal_block(n * chunk_elems, seed=2)
        array = zarr.create_array(system.write_store(), name=PATH, shape=(n * chunk_elems,),
                                  chunks=(chunk_elems,), dtype="float32")
        with total.running():
            array[:] = base
            first = system.commit("initial")
        for c, change in enumerate(_changes(params)):
            if system.versioned:  # an icechunk session is spent after commit: reopen (untimed)
                array = zarr.open_array(system.write_store(), path=PATH)
            start = time.perf_counter()
            with total.running():
                for i, values in change:
                    array[i * chunk_elems:(i + 1) * chunk_elems] = values
                middle = time.perf_counter()
                system.commit(f"change {c}")
            end = time.perf_counter()
            rec.add("write 1% ms", (middle - start) * 1000, "ms")
            if system.has_commit:
                rec.add("commit ms", (end - middle) * 1000, "ms")
    else:
        versions = _versions(params)
        with total.running():
            run_async(system.set_keys(list(next(versions).items())))
            first = system.commit("initial")
        for version in versions:
            start = time.perf_counter()
            with total.running():
                run_async(system.set_keys(list(version.items())))
                middle = time.perf_counter()
                system.commit("change")
            end = time.perf_counter()
            rec.add("write 1% ms", (middle - start) * 1000, "ms")
            rec.add("commit ms", (end - middle) * 1000, "ms")
    rec.add("initial + all commits s", total.total, "s")
    system.close()

    if system.versioned:
        if system.persistent:
            evict_page_cache(system.root)
        system.open()
        start = time.perf_counter()
        array = zarr.open_array(system.read_store(first), path=PATH, mode="r")
        rec.add("checkout first ms", (time.perf_counter() - start) * 1000, "ms")
        base = normal_block(n * chunk_elems, seed=2)
        reading = Stopwatch()
        step = 16 * chunk_elems
        for s in range(0, n * chunk_elems, step):
            with reading.running():
                values = array[s:s + step]
            if not np.array_equal(values[:8], base[s:s + 8]):
                raise AssertionError(f"{system.name}: first snapshot has wrong data at {s}")
        rec.add("read first snapshot MiB/s", n * chunk_elems * 4 / MIB / reading.total,
                "MiB/s", "higher")
        # icechunk defers loading the manifest to the first chunk read; the sum is what counts.
        rec.add("checkout first + read it s",
                rec.metrics["checkout first ms"]["samples"][-1] / 1000 + reading.total, "s")
        system.close()
        system.open()
        start = time.perf_counter()
        snapshots = system.snapshots()
        rec.add("ancestry ms", (time.perf_counter() - start) * 1000, "ms")
        rec.note("ancestry_length", len(snapshots))
        system.close()

    usage = system.disk_usage()
    rec.note("disk_usage", usage)
    if usage:
        rec.add("disk / logical (file size)", usage["apparent_bytes"] / logical, "×")
        if "lmdb_used_bytes" in usage:
            rec.add("disk / logical (LMDB used pages)", usage["lmdb_used_bytes"] / logical, "×")

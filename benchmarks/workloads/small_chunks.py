"""Many small chunks: write + commit of 20,000 × 4 KiB, then random single-chunk reads.

Write through zarr: one float32 array with one chunk per 4 KiB, written with
one ``array[:] = data`` call (zarr encodes and stores the chunks, 10 in
flight), then one commit. Write at key level: the same encoded bytes (made
once, in the parent, with zarr's own codec — see ``data.encode_1d``) stored
under the same keys through the zarr ``Store.set`` API, 10 in flight, then
one commit — this leaves out zarr's
codec pipeline, whose per-chunk cost is the same for every store.

Random reads: after the commit, a read-only session at the new snapshot; the
first read (which loads the manifest / tree root) is reported on its own,
then N reads of random chunks are timed one by one, through zarr
(``array[i*c:(i+1)*c]``, decoding) and at key level (``Store.get``, one
py-lmdb transaction per get for raw LMDB). Reported: p50, p99, ops/s.
"""

from __future__ import annotations

import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from benchmarks.data import encode_1d, normal_block
from benchmarks.measure import Recorder, percentile
from benchmarks.systems import System, run_async

NAME = "small"
TITLE = "Small chunks (4 KiB): write + commit, random single-chunk reads"
PATH = "small"


def _shape(params: dict[str, Any]) -> tuple[int, int]:
    return params["small_chunk_kib"] * 1024 // 4, params["small_chunks"]


def fixtures(params: dict[str, Any], directory: Path) -> dict[str, Any]:
    chunk_elems, n = _shape(params)
    items = encode_1d(PATH, normal_block(n * chunk_elems, seed=1), chunk_elems)
    path = directory / "small_chunks.pickle"
    with open(path, "wb") as f:
        pickle.dump(items, f, protocol=pickle.HIGHEST_PROTOCOL)
    return {"small_items": str(path)}


def phases(system: type[System], params: dict[str, Any]) -> list[str]:
    return ["run"]


def run(phase: str, system: System, params: dict[str, Any], rec: Recorder,
        fixtures: dict[str, Any]) -> None:
    chunk_elems, n = _shape(params)
    rec.note("chunks", n)
    rec.note("logical_bytes", n * chunk_elems * 4)
    with open(fixtures["small_items"], "rb") as f:
        items: dict[str, bytes] = pickle.load(f)
    rec.note("stored_chunk_bytes", sum(len(v) for k, v in items.items() if "/c/" in k))
    # Key-level write first, in its own directory; the zarr-level repository is kept for reads.
    keyed = type(system)(system.root / "keyed")
    keyed.create()
    start = time.perf_counter()
    run_async(keyed.set_keys(sorted(items.items())))
    written = time.perf_counter() - start
    start = time.perf_counter()
    keyed.commit("small chunks")
    committing = time.perf_counter() - start
    if system.has_commit:
        rec.add("key write: commit s", committing, "s")
    total = written + committing
    rec.add("key write: set s", written, "s")
    rec.add("key write+commit s", total, "s")
    rec.add("key write+commit chunks/s", n / total, "chunks/s", "higher")
    if system.zarr_capable:
        keyed.close()
        system.create()
        array = zarr.create_array(system.write_store(), name=PATH, shape=(n * chunk_elems,),
                                  chunks=(chunk_elems,), dtype="float32")
        data = normal_block(n * chunk_elems, seed=1)
        start = time.perf_counter()
        array[:] = data
        middle = time.perf_counter()
        system.commit("small chunks")
        end = time.perf_counter()
        rec.add("zarr write s", middle - start, "s")
        if system.has_commit:
            rec.add("zarr write: commit s", end - middle, "s")
        total = end - start
        rec.add("zarr write+commit s", total, "s")
        rec.add("zarr write+commit chunks/s", n / total, "chunks/s", "higher")
        reader = system
    else:
        reader = keyed  # raw LMDB: read back what the key-level write stored
    _random_reads(reader, params, rec)
    reader.close()


def _random_reads(system: System, params: dict[str, Any], rec: Recorder) -> None:
    chunk_elems, n = _shape(params)
    picks = np.random.default_rng(7).integers(0, n, size=params["random_reads"]).tolist()
    data = normal_block(n * chunk_elems, seed=1)
    if system.zarr_capable:
        array = zarr.open_array(system.read_store(), path=PATH, mode="r")
        start = time.perf_counter()
        first = array[0:chunk_elems]
        rec.add("zarr first read ms", (time.perf_counter() - start) * 1000, "ms")
        assert first[0] == data[0]
        latencies = []
        for i in picks:
            t0 = time.perf_counter_ns()
            values = array[i * chunk_elems:(i + 1) * chunk_elems]
            latencies.append(time.perf_counter_ns() - t0)
            if values[-1] != data[(i + 1) * chunk_elems - 1]:
                raise AssertionError(f"{system.name}: wrong chunk {i}")
        _latency_metrics(rec, "zarr random read", latencies)

    reader = system.key_reader()
    keys = [f"{PATH}/c/{i}" for i in picks]

    async def timed_gets() -> tuple[float, list[int]]:
        t0 = time.perf_counter()
        await system.get_key(reader, f"{PATH}/c/0")
        first = time.perf_counter() - t0
        out = []
        for key in keys:
            t0_ns = time.perf_counter_ns()
            await system.get_key(reader, key)
            out.append(time.perf_counter_ns() - t0_ns)
        return first, out

    first_s, latencies = run_async(timed_gets())
    rec.add("key first read ms", first_s * 1000, "ms")
    _latency_metrics(rec, "key random read", latencies)


def _latency_metrics(rec: Recorder, prefix: str, latencies_ns: list[int]) -> None:
    micros = [v / 1000 for v in latencies_ns]
    rec.add(f"{prefix} p50 µs", percentile(micros, 50), "µs")
    rec.add(f"{prefix} p99 µs", percentile(micros, 99), "µs")
    rec.add(f"{prefix} ops/s", len(micros) / (sum(micros) / 1e6), "ops/s", "higher")

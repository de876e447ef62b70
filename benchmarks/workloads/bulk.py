"""Bulk write + commit of 1 MiB chunks, then full reads (cold and warm), with peak RSS.

Memory: ``peak RSS`` is the worker's ``ru_maxrss``, which counts file pages
mapped into the process (an LMDB read maps the data it reads); ``peak anon
RSS`` samples the anonymous part (heap, buffers) every 10 ms — the memory a
streaming read or write must keep bounded.

Write: one float32 array, written through zarr slab by slab (16 chunks per
call) so the writer never holds more than a slab of source data; only the
zarr calls and the commit are timed. Raw LMDB stores the same encoded bytes
(made untimed by ``data.ChunkEncoder``) with one transaction per slab and an
``fsync`` for "commit". versionstore's commit fsyncs (a commit survives power
loss); icechunk's local filesystem storage and zarr's
``LocalStore`` never fsync, so for persistent systems the time to ``fsync``
what is left afterwards is measured too, and "durable write+commit+fsync"
compares like with like.

Read: for persistent systems, a new worker process after the writer exited,
with the page cache of the system's files evicted (``evict_page_cache``):
"cold" = new process, newly opened repository, nothing cached in-process, the
system's files dropped from the OS page cache. "warm" = the same read again
in the same session. Both are done through zarr (decoding every chunk, slab by
slab) and at key level (the stored bytes of every chunk through the zarr
``Store`` API, 10 in flight; py-lmdb gets in one transaction for raw LMDB),
with a close + evict between the two levels so each starts cold. In-memory
systems cannot outlive their process: their "cold" read follows the write in
the same process on a newly opened repository (fresh in-process caches).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import zarr

from benchmarks.data import ChunkEncoder, normal_block, shifted
from benchmarks.measure import MIB, AnonymousPeak, Recorder, Stopwatch, evict_page_cache, fsync_tree
from benchmarks.systems import System, run_async

NAME = "bulk"
TITLE = "Bulk write + commit (1 MiB chunks) and full read"
PATH = "bulk"
SLAB_CHUNKS = 16


def _shape(params: dict[str, Any]) -> tuple[int, int, int]:
    chunk_elems = params["bulk_chunk_kib"] * 1024 // 4
    n_chunks = max(1, params["bulk_mib"] * 1024 // params["bulk_chunk_kib"])
    slab = min(SLAB_CHUNKS, n_chunks)
    return chunk_elems, n_chunks, slab


def phases(system: type[System], params: dict[str, Any]) -> list[str]:
    return ["write", "read"] if system.persistent else ["write+read"]


def run(phase: str, system: System, params: dict[str, Any], rec: Recorder,
        fixtures: dict[str, Any]) -> None:
    chunk_elems, n_chunks, slab = _shape(params)
    logical = n_chunks * chunk_elems * 4
    rec.note("logical_bytes", logical)
    rec.note("chunks", n_chunks)
    if phase in ("write", "write+read"):
        with AnonymousPeak() as anon:
            _write(system, params, rec)
        rec.rss("write peak RSS")
        rec.add("write peak anon RSS", anon.peak_mib, "MiB")
    if phase == "write+read":
        system.open()
        with AnonymousPeak() as anon:
            _read(system, params, rec, evict=False)
        rec.rss("write+read peak RSS (in-memory: holds the data)")
        rec.add("read peak anon RSS (in-memory: holds the data)", anon.peak_mib, "MiB")
    if phase == "read":
        with AnonymousPeak() as anon:
            _read(system, params, rec, evict=True)
        rec.rss("read peak RSS")
        rec.add("read peak anon RSS", anon.peak_mib, "MiB")


def _write(system: System, params: dict[str, Any], rec: Recorder) -> None:
    chunk_elems, n_chunks, slab = _shape(params)
    logical = n_chunks * chunk_elems * 4
    system.create()
    base = normal_block(slab * chunk_elems, seed=0)
    n_slabs = -(-n_chunks // slab)
    writing = Stopwatch()
    if system.zarr_capable:
        array = zarr.create_array(system.write_store(), name=PATH, shape=(n_chunks * chunk_elems,),
                                  chunks=(chunk_elems,), dtype="float32")
        for s in range(n_slabs):
            start, stop = s * slab * chunk_elems, min(n_chunks, (s + 1) * slab) * chunk_elems
            values = shifted(base[: stop - start], s)
            with writing.running():
                array[start:stop] = values
    else:
        encoder = ChunkEncoder(PATH, n_chunks * chunk_elems, chunk_elems)
        run_async(system.set_keys(list(encoder.metadata.items())))
        for s in range(n_slabs):
            first, stop = s * slab, min(n_chunks, (s + 1) * slab)
            values = shifted(base[: (stop - first) * chunk_elems], s)
            items = [
                encoder.encode(i, values[(i - first) * chunk_elems:(i + 1 - first) * chunk_elems])
                for i in range(first, stop)
            ]
            with writing.running():
                run_async(system.set_keys(items))
    rec.add("write s", writing.total, "s")
    start = time.perf_counter()
    system.commit("bulk write")
    committing = time.perf_counter() - start
    if system.has_commit:
        rec.add("commit s", committing, "s")
    total = writing.total + committing
    rec.add("write+commit s", total, "s")
    rec.add("write+commit MiB/s", logical / MIB / total, "MiB/s", "higher")
    system.close()
    if system.persistent:
        start = time.perf_counter()
        fsync_tree(system.root)
        flushing = time.perf_counter() - start
        rec.add("then fsync s", flushing, "s")
        rec.add("durable write+commit+fsync MiB/s", logical / MIB / (total + flushing), "MiB/s",
                "higher")


def _read(system: System, params: dict[str, Any], rec: Recorder, *, evict: bool) -> None:
    chunk_elems, n_chunks, slab = _shape(params)
    logical = n_chunks * chunk_elems * 4
    if system.zarr_capable:
        if evict:
            rec.note("evicted_files", evict_page_cache(system.root))
            system.open()
        base = normal_block(slab * chunk_elems, seed=0)
        array = None
        for temperature in ("cold", "warm"):
            reading = Stopwatch()
            with reading.running():
                if array is None:
                    array = zarr.open_array(system.read_store(), path=PATH, mode="r")
            for s in range(-(-n_chunks // slab)):
                start, stop = s * slab * chunk_elems, min(n_chunks, (s + 1) * slab) * chunk_elems
                with reading.running():
                    values = array[start:stop]
                if values[0] != base[0] + np.float32(s):
                    raise AssertionError(f"{system.name}: wrong data in slab {s}")
            rec.add(f"zarr read {temperature} MiB/s", logical / MIB / reading.total, "MiB/s",
                    "higher")
        system.close()
    if evict:
        evict_page_cache(system.root)
    system.open()
    keys = [f"{PATH}/c/{i}" for i in range(n_chunks)]
    reader = system.key_reader()
    for temperature in ("cold", "warm"):
        reading = Stopwatch()
        stored = 0
        for s in range(0, n_chunks, slab):
            with reading.running():
                stored += run_async(system.get_keys(reader, keys[s:s + slab]))
        rec.add(f"key read {temperature} MiB/s", stored / MIB / reading.total, "MiB/s",
                "higher")
        rec.note("stored_chunk_bytes", stored)
    system.close()

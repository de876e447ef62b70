"""Garbage collection after a few small commits, in repositories of 10^3 … 10^6 chunks.

For each size N, a new repository holds N distinct 600-byte chunks (above
the 512-byte inline limit of both versionstore and icechunk, so each is a
stored object a collection must account for), loaded untimed by each
system's bulk path and committed. A first garbage collection runs (reported
as "first gc s": versionstore's first run counts everything and writes its
ledger; icechunk's always lists everything). Then, ``gc_samples`` times:
rewrite ``gc_changes`` chunks with new values and commit (untimed), and
collect garbage (timed): "gc after small commit ms", and the CPU time of
the worker process meanwhile ("… CPU ms", all its threads: less moved by
other jobs on a loaded machine than the wall time). For versionstore it
also records how many objects the commit stored (its chunks, new tree
nodes, snapshot and history page: what an incremental collection must
look at, read from the gc ledger's journal before the clock starts) and
the CPU time per stored object: scattered changes in a deeper tree store
more nodes, so the per-object figure is the one that shows whether the
cost follows the work or the repository's size. Nothing is garbage
then; what is measured is what a routine collection costs. versionstore's
is incremental (``versionstore.gc_incremental``); icechunk's
``garbage_collect`` (with a cut-off of now) lists every chunk. Finally
versionstore runs one ``garbage_collect(full=True)`` ("full gc s"), the
mark-everything collection, for reference.

With ``gc_interleave`` (``--gc-interleave 1``) every size is built first and
the samples then alternate between sizes (one of each in turn), so a load
that comes and goes on a shared machine weighs on every size alike; the
peak RSS is then that of all sizes together.

Building icechunk's array takes one ``Store.set`` per chunk, so by default it
runs up to ``gc_icechunk_max`` chunks; 10^6 chunks are opt-in for every
system (``--gc-sizes 1e3,1e4,1e5,1e6``): loading them takes minutes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from benchmarks.measure import Recorder
from benchmarks.systems import System, remove
from benchmarks.workloads.commit_latency import size_label

NAME = "gc"
TITLE = "Garbage collection after a few small commits, N chunks"
PATH = "a"
SYSTEMS = ("vs-lmdb", "vs-mem", "icechunk-fs", "icechunk-mem")


def _value(index: int, version: int = 0) -> bytes:
    """A distinct 600-byte chunk value."""
    return (index.to_bytes(6, "big") + version.to_bytes(2, "big")) * 75


def phases(system: type[System], params: dict[str, Any]) -> list[str]:
    return ["run"] if system.name in SYSTEMS else []


def run(phase: str, system: System, params: dict[str, Any], rec: Recorder,
        fixtures: dict[str, Any]) -> None:
    rng = np.random.default_rng(17)
    cap = params.get("gc_icechunk_max") or 0
    sizes = params["gc_sizes"]
    if system.name.startswith("icechunk") and cap:
        rec.note("sizes_skipped", [s for s in sizes if s > cap])
        sizes = [s for s in sizes if s <= cap]
    rec.note("changes_per_commit", params["gc_changes"])
    interleave = bool(params.get("gc_interleave"))
    rec.note("interleaved", interleave)
    built = []
    for size in sizes:
        built.append((size, _build(system, size, rec)))
        if not interleave:
            _sample(*built[-1], params, rng, rec, range(params["gc_samples"]))
            _finish(system, *built.pop(), rec)
    for s in range(params["gc_samples"]):  # interleaved: one sample of each size in turn
        for size, instance in built:
            _sample(size, instance, params, rng, rec, [s])
    for size, instance in built:
        _finish(system, size, instance, rec)


def _build(system: System, size: int, rec: Recorder) -> System:
    """A new repository of ``size`` distinct chunks, committed, and its first collection."""
    label = size_label(size)
    instance = type(system)(system.root / f"n{size}")
    instance.create()
    start = time.perf_counter()
    # An int32 array of 150-element chunks: 600 bytes each (stored raw, never read).
    zarr.create_array(instance.write_store(), name=PATH, shape=(size * 150,),
                      chunks=(150,), dtype="int32", compressors=None)
    instance.load_keys((f"{PATH}/c/{i}", _value(i)) for i in range(size))
    instance.commit("load")
    rec.add(f"load + commit s (N={label})", time.perf_counter() - start, "s")
    start = time.perf_counter()
    instance.garbage_collect()
    rec.add(f"first gc s (N={label})", time.perf_counter() - start, "s")
    return instance


def _sample(size: int, instance: System, params: dict[str, Any], rng: np.random.Generator,
            rec: Recorder, samples: Iterable[int]) -> None:
    """Per sample: rewrite ``gc_changes`` chunks, commit (untimed), collect (timed)."""
    label = size_label(size)
    for s in samples:
        picks = rng.choice(size, params["gc_changes"], replace=False).tolist()
        instance.load_keys([(f"{PATH}/c/{i}", _value(i, s + 1)) for i in picks])
        instance.commit(f"small change {s}")
        created = instance.objects_since_gc()  # read before the clock starts
        start, cpu = time.perf_counter(), time.process_time()
        deleted = instance.garbage_collect()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        rec.add(f"gc after small commit ms (N={label})", wall * 1000, "ms")
        rec.add(f"gc after small commit CPU ms (N={label})", cpu * 1000, "ms")
        if created:
            rec.add(f"objects the commit stored (N={label})", created, "objects")
            rec.add(f"gc CPU µs per stored object (N={label})", cpu * 1e6 / created, "µs")
        if deleted:
            raise AssertionError(f"{instance.name}: gc deleted {deleted} live objects")


def _finish(system: System, size: int, instance: System, rec: Recorder) -> None:
    """The full collection for reference (versionstore), then close and remove."""
    label = size_label(size)
    if system.name.startswith("vs-"):
        start = time.perf_counter()
        instance.garbage_collect(full=True)
        rec.add(f"full gc s (N={label})", time.perf_counter() - start, "s")
    instance.close()
    rec.rss(f"peak RSS (N={label})")
    remove(instance.root)


def fixtures(params: dict[str, Any], directory: Path) -> dict[str, Any]:
    return {}

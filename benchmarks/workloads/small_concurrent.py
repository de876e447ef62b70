"""Small chunks through zarr at ``async.concurrency`` 64: one ``array[:] = data`` + commit.

The outside measurement of issue 13 in its exact form: for each N in
``concurrent_sizes`` (4,096 and 20,000), a new repository (store) holds one
float32 array of N chunks of 4 KiB, written with one ``array[:] = data``
under ``zarr.config`` ``async.concurrency`` 64, then committed (plain zarr
stores have no commit). Repetitions of the whole workload interleave the
systems (the suite rotates their order), so a slow spell of the shared
machine does not land on one system. zarr's ``MemoryStore`` (a dict) is the
ceiling for any store through zarr: the ratio against it says how much of the
time the store itself adds.
"""

from __future__ import annotations

import time
from typing import Any

import zarr

from benchmarks.data import normal_block
from benchmarks.measure import Recorder
from benchmarks.systems import System, remove

NAME = "small64"
TITLE = "Small chunks through zarr, async.concurrency 64: array[:] = data + commit"
PATH = "s"
CONCURRENCY = 64


def phases(system: type[System], params: dict[str, Any]) -> list[str]:
    return ["run"] if system.zarr_capable else []


def run(phase: str, system: System, params: dict[str, Any], rec: Recorder,
        fixtures: dict[str, Any]) -> None:
    chunk_elems = 1024  # 4 KiB of float32
    with zarr.config.set({"async.concurrency": CONCURRENCY}):
        for n in params["concurrent_sizes"]:
            instance = type(system)(system.root / f"n{n}")
            instance.create()
            data = normal_block(n * chunk_elems, seed=n)
            array = zarr.create_array(instance.write_store(), name=PATH, shape=data.shape,
                                      chunks=(chunk_elems,), dtype="float32")
            start = time.perf_counter()
            array[:] = data
            middle = time.perf_counter()
            instance.commit(f"{n} chunks")
            end = time.perf_counter()
            rec.add(f"zarr write s (N={n})", middle - start, "s")
            if instance.has_commit:
                rec.add(f"commit s (N={n})", end - middle, "s")
            rec.add(f"write+commit s (N={n})", end - start, "s")
            rec.add(f"write+commit chunks/s (N={n})", n / (end - start), "chunks/s", "higher")
            check = zarr.open_array(instance.read_store(), path=PATH, mode="r")
            last = check[(n - 1) * chunk_elems:]
            if last[-1] != data[-1]:
                raise AssertionError(f"{system.name}: last chunk not stored (N={n})")
            instance.close()
            remove(instance.root)

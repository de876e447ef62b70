"""Single calls through zarr's async store API: ``await store.set`` / ``get``, one at a time.

Where the store's own time goes, with nothing to overlap: an array's
metadata is written first (icechunk refuses chunks of an array it has not
seen), then ``per_call_ops`` values of 4 KiB (distinct random bytes) are
written one ``await store.set`` at a time under that array's chunk keys, on
the writable session (versionstore: staged, durable against a killed process
when ``set`` returns), and read back one ``await store.get`` at a time from
the same writable store (versionstore: staged reads). Each call is timed on
its own: p50 and p99 in µs. Raw LMDB does one write transaction per ``set``
and one read transaction per ``get`` (the floor of a per-call LMDB store);
zarr's ``MemoryStore`` is a dict behind the same API (the floor of zarr's
store API). Nothing is committed.
"""

from __future__ import annotations

import os
import time
from typing import Any

import zarr
from zarr.core.buffer import default_buffer_prototype

from benchmarks.measure import Recorder, percentile
from benchmarks.systems import System, run_async

NAME = "percall"
TITLE = "Per call: await store.set / get of one 4 KiB value, one at a time"
PATH = "p"
_PROTO = default_buffer_prototype()


def phases(system: type[System], params: dict[str, Any]) -> list[str]:
    return ["run"]


def run(phase: str, system: System, params: dict[str, Any], rec: Recorder,
        fixtures: dict[str, Any]) -> None:
    n, size = params["per_call_ops"], 4096
    values = [os.urandom(size) for _ in range(n)]
    keys = [f"{PATH}/c/{i}" for i in range(n)]
    system.create()
    sets: list[float] = []
    gets: list[float] = []
    if system.zarr_capable:
        store = system.write_store()
        zarr.create_array(store, name=PATH, shape=(n * size // 4,), chunks=(size // 4,),
                          dtype="float32")
        buffers = [_PROTO.buffer.from_bytes(v) for v in values]

        async def calls() -> None:
            clock = time.perf_counter_ns
            for key, buffer in zip(keys, buffers, strict=True):
                t0 = clock()
                await store.set(key, buffer)
                sets.append((clock() - t0) / 1000)
            for key, value in zip(keys, values, strict=True):
                t0 = clock()
                got = await store.get(key, _PROTO)
                gets.append((clock() - t0) / 1000)
                if got is None or got.to_bytes() != value:
                    raise AssertionError(f"{system.name}: wrong value at {key}")

        run_async(calls())
    else:  # raw LMDB: one transaction per call
        env, db = system._env, system._db  # type: ignore[attr-defined]
        clock = time.perf_counter_ns
        for key, value in zip(keys, values, strict=True):
            t0 = clock()
            with env.begin(write=True, db=db) as txn:
                txn.put(key.encode(), value)
            sets.append((clock() - t0) / 1000)
        for key, value in zip(keys, values, strict=True):
            t0 = clock()
            with env.begin(db=db) as txn:
                got = txn.get(key.encode())
            gets.append((clock() - t0) / 1000)
            if got != value:
                raise AssertionError(f"{system.name}: wrong value at {key}")
    for label, samples in (("set", sets), ("get", gets)):
        rec.add(f"{label} p50 µs", percentile(samples, 50), "µs")
        rec.add(f"{label} p99 µs", percentile(samples, 99), "µs")
        rec.add(f"{label} mean µs", sum(samples) / len(samples), "µs")
    system.close()

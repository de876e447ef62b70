"""Where a lone ``await store.set`` / ``get`` spends its time, layer by layer, in one process.

The ``percall`` workload times the whole call; this breaks it down (issue 13's
profile of the per-call miss). Each layer is timed on its own fresh 4 KiB
values and keys, in blocks of 50 calls rotating through the layers, so every
layer meets the same machine state (this VM's speed moves by 2x between
moments): ``await store.set`` on a writable LMDB session, ``Session.set_value``,
``Backend.stage`` (the staging transaction), the LMDB handle's ``write`` with
the same two operations (its gate and fork check), the bare py-lmdb
transaction (the session record's ``get`` and the staged ref's ``put``), and
``benchmarks.lmdb_floor`` (one ``put`` per call through zarr's store API).
Reads likewise, down to two ``txn.get`` in one read transaction.

    python -m benchmarks.per_call_layers [--calls 9000] [--rounds 3]

Prints p50 µs per layer and round; nothing is written to the results. The
values staged alone through ``store.set`` and ``set_value`` must stay within
``STAGED_INLINE_BUDGET`` (past it a lone value is a chunk object again), which
bounds ``--calls``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import zarr
from zarr.core.buffer import default_buffer_prototype

import versionstore as vs
from benchmarks.lmdb_floor import LMDBFloorStore
from versionstore.codec import encode_staged
from versionstore.session import STAGED_INLINE_BUDGET

_PROTO = default_buffer_prototype()
_BLOCK = 50
SET_LAYERS = ("store.set", "set_value", "backend.stage", "handle.write", "lmdb txn", "floor set")
GET_LAYERS = ("store.get", "storage.get", "value", "backend read", "lmdb read txn", "floor get")


def _p50(samples: list[int]) -> float:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2] / 1000


async def _round(root: Path, calls: int) -> dict[str, float]:
    repo = vs.Repository.create(vs.lmdb_storage(root / "repo"))
    session = repo.writable_session("main")
    store = session.store
    zarr.create_array(store, name="p", shape=(1024,), chunks=(1024,), dtype="float32")
    floor = LMDBFloorStore(root / "floor")
    backend: Any = repo.backend
    handle = backend._handle
    prefix, record = session._stage_names  # type: ignore[misc]
    record_key = record.encode()
    rule = session._staging()
    buffers = [_PROTO.buffer.from_bytes(os.urandom(4096)) for _ in range(calls)]
    clock = time.perf_counter_ns
    times: dict[str, list[int]] = {name: [] for name in (*SET_LAYERS, *GET_LAYERS)}
    written: dict[str, list[str]] = {name: [] for name in SET_LAYERS}
    i = 0
    layer = 0
    while i + _BLOCK <= calls:
        name = SET_LAYERS[layer % len(SET_LAYERS)]
        layer += 1
        samples = times[name]
        for _ in range(_BLOCK):
            key, buffer = f"p/c/{i}", buffers[i]
            i += 1
            written[name].append(key)
            if name == "store.set":
                t0 = clock()
                await store.set(key, buffer)
                samples.append(clock() - t0)
            elif name == "floor set":
                t0 = clock()
                await floor.set(key, buffer)
                samples.append(clock() - t0)
            elif name == "set_value":
                value = buffer.to_bytes()
                t0 = clock()
                session.set_value(key, value)
                samples.append(clock() - t0)
            else:
                raw = encode_staged(prefix + key, buffer.to_bytes())
                ref = (prefix + key).encode()
                refs = handle.databases[1]

                def work(txn: Any, ref: bytes = ref, raw: bytes = raw, refs: Any = refs) -> None:
                    txn.get(record_key, db=refs)
                    txn.put(ref, raw, db=refs)

                if name == "backend.stage":
                    t0 = clock()
                    backend.stage(prefix + key, raw, rule)
                elif name == "handle.write":
                    t0 = clock()
                    handle.write("timing", work)
                else:
                    env = handle.env
                    t0 = clock()
                    with env.begin(write=True) as txn:
                        work(txn)
                samples.append(clock() - t0)
    storage = store.storage
    staged_keys = written["store.set"] + written["set_value"] + written["backend.stage"]
    floor_keys = written["floor set"]
    for n, key in enumerate(staged_keys):
        name = GET_LAYERS[(n // _BLOCK) % 5]
        samples = times[name]
        if name == "store.get":
            t0 = clock()
            await store.get(key, _PROTO)
        elif name == "storage.get":
            t0 = clock()
            storage.get(key)
        elif name == "value":
            t0 = clock()
            session.value(key)
        elif name == "backend read":
            t0 = clock()
            backend.get_refs_and_objects([prefix + key, record], lambda refs: ())
        else:
            env, refs = handle.env, handle.databases[1]
            ref = (prefix + key).encode()
            t0 = clock()
            with env.begin() as txn:
                txn.get(ref, db=refs)
                txn.get(record_key, db=refs)
        samples.append(clock() - t0)
    for key in floor_keys:
        t0 = clock()
        await floor.get(key, _PROTO)
        times["floor get"].append(clock() - t0)
    floor.close()
    repo.close()
    return {name: _p50(samples) for name, samples in times.items() if samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=9_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.calls // len(SET_LAYERS) * 2 * 4096 > STAGED_INLINE_BUDGET:
        parser.error("--calls: the values staged alone would pass STAGED_INLINE_BUDGET")
    results = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(dir=os.environ.get("VS_BENCH_DIR")) as root:
            results.append(asyncio.run(_round(Path(root), args.calls)))
    for layers in (SET_LAYERS, GET_LAYERS):
        print("| layer | " + " | ".join(f"round {n + 1} p50 µs" for n in range(args.rounds)) + " |")
        print("|---|" + "---|" * args.rounds)
        for name in layers:
            print(f"| {name} | " + " | ".join(f"{r[name]:.1f}" for r in results) + " |")
        print()


if __name__ == "__main__":
    main()

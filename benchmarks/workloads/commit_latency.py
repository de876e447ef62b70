"""Commit latency of one changed chunk, in arrays of 10^3 … 10^6 chunks.

For each size N, a new repository holds one int32 array of N single-element
chunks (tiny chunks, so that the 10^6-chunk array is affordable; every system
stores them inline). The array is built once per system and size, untimed,
by the fastest bulk path each system offers (versionstore: staging whole
batches with ``Session.set_values``; icechunk: 1,000 concurrent ``Store.set``;
raw LMDB: one transaction), then committed (that first commit is reported
as "load commit s", for information). Then, ``samples`` times: open the array
in a writable session (untimed), write one chunk through zarr (timed apart),
and commit (timed): the commit latency. Raw LMDB's "commit" is one put and an
``fsync``, the cost of making one change durable at all. Unversioned zarr
stores have no commit and are not run here.

On ``vs-lmdb`` two more figures are taken per commit: the time its
``fsync`` took ("commit fsync ms"), and the floor of a durable commit of
the same writes — py-lmdb writing exactly what that sample changed (the
commit's new objects and every ref and gc ledger key the session and its
commit left changed) into a byte-for-byte copy of the environment, in one
transaction, then ``fsync`` (``benchmarks.commit_floor``, "raw same writes +
fsync ms"). The copy catches up before the sample's session opens, not right
before the commit: its own flush there slowed the commit by 0.1–0.2 ms.

With ``--commit-aged K``, K one-chunk commits (untimed, as the samples)
come between the load and the samples: a repository in use rather than just
built. On LMDB this matters: the load's commit frees the pages of everything
it staged, one long run that the next commits reuse page after page
(written with one ``writev`` each); about a thousand commits later that run
is used up, and each commit reuses the scattered pages its predecessors freed
(one ``pwrite`` per page, and a slower ``fsync``). ``docs/benchmarks.md``,
"Issue 13, seventh round", has both.

icechunk has no bulk write: building its 10^6-chunk array takes a million
``Store.set`` calls (1–3 minutes on 2 cores), more than the whole suite's
budget, so by default icechunk runs up to ``commit_icechunk_max`` (10^5)
chunks; pass ``--commit-icechunk-max 0`` to build the 10^6 array too.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from benchmarks.commit_floor import CommitReplay
from benchmarks.data import tiny_values
from benchmarks.measure import Recorder
from benchmarks.systems import System, remove

NAME = "commit"
TITLE = "Commit latency: 1 changed chunk in arrays of N chunks"
PATH = "a"
DISTINCT = 1000


def fixtures(params: dict[str, Any], directory: Path) -> dict[str, Any]:
    return {"tiny_values": [v.hex() for v in tiny_values(DISTINCT)]}


def phases(system: type[System], params: dict[str, Any]) -> list[str]:
    return ["run"] if system.versioned or not system.zarr_capable else []


def run(phase: str, system: System, params: dict[str, Any], rec: Recorder,
        fixtures: dict[str, Any]) -> None:
    values = [bytes.fromhex(v) for v in fixtures["tiny_values"]]
    rng = np.random.default_rng(11)
    cap = params.get("commit_icechunk_max") or 0
    sizes = params["commit_sizes"]
    if system.name.startswith("icechunk") and cap:
        rec.note("sizes_skipped", [s for s in sizes if s > cap])
        sizes = [s for s in sizes if s <= cap]
    for size in sizes:
        label = size_label(size)
        instance = type(system)(system.root / f"n{size}")
        instance.create()
        items = ((f"{PATH}/c/{i}", values[i % DISTINCT]) for i in range(size))
        start = time.perf_counter()
        if instance.zarr_capable:
            zarr.create_array(instance.write_store(), name=PATH, shape=(size,), chunks=(1,),
                              dtype="int32")
        instance.load_keys(items)
        middle = time.perf_counter()
        instance.commit("load")
        end = time.perf_counter()
        rec.add(f"load s (N={label})", middle - start, "s")
        rec.add(f"load commit s (N={label})", end - middle, "s")
        _age(instance, size, params.get("commit_aged") or 0, rng, values)
        replay, syncs = _floor(instance)
        for s in range(params["commit_samples"]):
            index = int(rng.integers(size))
            if replay is not None:
                # Untimed, and before the session opens: the copy's own flush right
                # before the commit slowed the commit measured by 0.1–0.2 ms.
                replay.before()
            if instance.zarr_capable:
                array = zarr.open_array(instance.write_store(), path=PATH)
                t0 = time.perf_counter()
                array[index] = -(s + 1)
            else:
                t0 = time.perf_counter()
                instance.put([(f"{PATH}/c/{index}", values[s % DISTINCT])])  # type: ignore[attr-defined]
            written = time.perf_counter()
            t1 = time.perf_counter()
            instance.commit(f"one chunk {s}")
            t2 = time.perf_counter()
            rec.add(f"write 1 chunk ms (N={label})", (written - t0) * 1000, "ms")
            rec.add(f"commit ms (N={label})", (t2 - t1) * 1000, "ms")
            if replay is not None:
                rec.add(f"commit fsync ms (N={label})", sum(syncs) * 1000, "ms")
                syncs.clear()
                rec.add(f"raw same writes + fsync ms (N={label})", replay.replay() * 1000, "ms")
        if replay is not None:
            replay.close()
        if instance.zarr_capable:
            check = zarr.open_array(instance.read_store(), path=PATH, mode="r")
            if check[index] != -params["commit_samples"]:
                raise AssertionError(f"{system.name}: last commit not visible (N={size})")
        instance.close()
        rec.rss(f"peak RSS (N={label})")
        remove(instance.root)


def _age(instance: System, size: int, commits: int, rng: np.random.Generator,
         values: list[bytes]) -> None:
    """``commits`` untimed one-chunk commits, each writing a number no chunk holds yet."""
    for a in range(commits):
        index = int(rng.integers(size))
        if instance.zarr_capable:
            zarr.open_array(instance.write_store(), path=PATH)[index] = size + a + 1
        else:
            instance.put([(f"{PATH}/c/{index}", values[a % DISTINCT])])  # type: ignore[attr-defined]
        instance.commit(f"aging {a}")


def _floor(instance: System) -> tuple[CommitReplay | None, list[float]]:
    """On ``vs-lmdb``: a replay of each commit into a copy, and the seconds of each ``fsync``."""
    syncs: list[float] = []
    if instance.name != "vs-lmdb":
        return None, syncs
    backend = instance.repository.backend  # type: ignore[attr-defined]
    sync = backend.sync

    def timed_sync() -> None:
        start = time.perf_counter()
        sync()
        syncs.append(time.perf_counter() - start)

    backend.sync = timed_sync
    return CommitReplay(instance.repository, instance.root / "replay"), syncs  # type: ignore[attr-defined]


def size_label(size: int) -> str:
    """``10^6`` for powers of ten, the plain number otherwise."""
    text = str(size)
    if text.startswith("1") and set(text[1:]) <= {"0"} and len(text) > 1:
        return f"10^{len(text) - 1}"
    return text

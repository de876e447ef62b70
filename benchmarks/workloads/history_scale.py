"""History at scale: listing long histories, and merging branches of big arrays.

**Ancestry.** For each length N (default 100 and 10,000), a new repository
gets N + 1 commits, each rewriting one tiny chunk of a small array (built
through zarr, then one ``Store.set`` and a commit per snapshot). Then, five
times: open the repository anew (new in-process caches; the OS page cache
stays warm) and list the branch's ancestry — every snapshot id — timed.
icechunk runs the same, side by side.

**Merge** (versionstore only: icechunk has no merge). For each size N
(default 10^3 … 10^6 single-element int32 chunks, stored inline as in the
commit workload), a new repository holds the array, built untimed by
``Session.set_values`` and committed as the base. Then, ``merge_samples``
times: two branches from the base each rewrite their own 1 % of the chunks
(*regions*: two adjacent runs of N/100 chunks, as two jobs writing their own
part of an array; *scattered*: N/100 random chunks each, up to
``merge_scatter_max`` chunks), committed (untimed); then the merge of one
into the other (``fast_forward=False``: a merge snapshot), timed, and its
result checked. The target is a merge time that grows less than 2× from
10^3 to 10^6 chunks: the cost of what both branches changed in the same
places, not of the array nor of what each changed alone.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from benchmarks.data import tiny_values
from benchmarks.measure import Recorder
from benchmarks.systems import System, remove, run_async

NAME = "scale"
TITLE = "History at scale: ancestry of long histories, merge of big arrays"
PATH = "a"
DISTINCT = 1000


def fixtures(params: dict[str, Any], directory: Path) -> dict[str, Any]:
    return {"tiny_values": [v.hex() for v in tiny_values(DISTINCT)]}


def phases(system: type[System], params: dict[str, Any]) -> list[str]:
    if not system.versioned or not system.zarr_capable:
        return []
    return ["ancestry", "merge"] if system.name.startswith("vs-") else ["ancestry"]


def run(phase: str, system: System, params: dict[str, Any], rec: Recorder,
        fixtures: dict[str, Any]) -> None:
    values = [bytes.fromhex(v) for v in fixtures["tiny_values"]]
    if phase == "ancestry":
        for length in params["scale_commits"]:
            _ancestry(type(system)(system.root / f"h{length}"), length, values, rec)
    else:
        for size in params["merge_sizes"]:
            _merges(type(system)(system.root / f"m{size}"), size, values, params, rec)


def _ancestry(system: System, length: int, values: list[bytes], rec: Recorder) -> None:
    label = size_label(length)
    system.create()
    zarr.create_array(system.write_store(), name=PATH, shape=(100,), chunks=(1,),
                      dtype="int32")
    system.commit("initial")
    start = time.perf_counter()
    for c in range(length):
        run_async(system.set_keys([(f"{PATH}/c/{c % 100}", values[c % DISTINCT])]))
        system.commit(f"change {c}")
    rec.add(f"build: commit ms ({label} commits)", (time.perf_counter() - start) * 1000 / length,
            "ms")
    system.close()
    for _ in range(5):
        system.open()
        t0 = time.perf_counter()
        snapshots = system.snapshots()
        rec.add(f"ancestry ms ({label} commits)", (time.perf_counter() - t0) * 1000, "ms")
        system.close()
        if len(snapshots) != length + 2:  # + the repository's first snapshot and "initial"
            raise AssertionError(f"{system.name}: ancestry has {len(snapshots)} snapshots")
    remove(system.root)


def _merges(system: System, size: int, values: list[bytes], params: dict[str, Any],
            rec: Recorder) -> None:
    label = size_label(size)
    system.create()
    repo = system.repository  # type: ignore[attr-defined]
    zarr.create_array(system.write_store(), name=PATH, shape=(size,), chunks=(1,),
                      dtype="int32")
    system.load_keys((f"{PATH}/c/{i}", values[i % DISTINCT]) for i in range(size))
    base = system.commit("base")
    rng = np.random.default_rng(size)
    width = max(1, size // 100)
    layouts = ["regions"]
    if size <= params["merge_scatter_max"]:
        layouts.append("scattered")
    for layout in layouts:
        for s in range(params["merge_samples"]):
            if layout == "regions":
                first = int(rng.integers(0, size - 2 * width + 1))
                ours = list(range(first, first + width))
                theirs = list(range(first + width, first + 2 * width))
            else:
                picks = rng.choice(size, 2 * width, replace=False).tolist()
                ours, theirs = picks[:width], picks[width:]
            names = (f"{layout}-ours-{s}", f"{layout}-theirs-{s}")
            for name, chunks, shift in zip(names, (ours, theirs), (1, 2), strict=True):
                repo.create_branch(name, base)
                session = repo.writable_session(name)
                session.set_values([(f"{PATH}/c/{i}", values[(i + shift) % DISTINCT])
                                    for i in chunks])
                session.commit(f"{layout} {s} on {name}")
            t0 = time.perf_counter()
            repo.merge(names[1], names[0], fast_forward=False)
            rec.add(f"merge ms ({layout}, N={label})", (time.perf_counter() - t0) * 1000, "ms")
            merged = repo.readonly_session(names[0]).store
            for i, shift in ((ours[0], 1), (theirs[-1], 2)):
                got = run_async(merged.get(f"{PATH}/c/{i}", _prototype()))
                if got is None or got.to_bytes() != values[(i + shift) % DISTINCT]:
                    raise AssertionError(f"{system.name}: merge lost chunk {i} (N={size})")
    system.close()
    remove(system.root)


def _prototype() -> Any:
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype()


def size_label(size: int) -> str:
    """``10^6`` for powers of ten from 1,000, the plain number otherwise."""
    text = str(size)
    if text.startswith("1") and set(text[1:]) <= {"0"} and len(text) > 3:
        return f"10^{len(text) - 1}"
    return text

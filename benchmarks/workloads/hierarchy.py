"""A wide hierarchy: create 1,000 arrays in 10 groups, commit, list it back.

Create: through zarr, a root group, 10 groups and 100 small arrays in each
(metadata only — no chunks), then one commit. List: on a newly opened
repository (page cache evicted for persistent systems), ``members(max_depth=None)``
of the root group, which lists every directory and reads every node's
metadata, and must find all 1,010 nodes.
"""

from __future__ import annotations

import time
from typing import Any

import zarr

from benchmarks.measure import Recorder, evict_page_cache
from benchmarks.systems import System

NAME = "hierarchy"
TITLE = "Hierarchy of 1,000 arrays: create, commit, list"
GROUPS = 10


def phases(system: type[System], params: dict[str, Any]) -> list[str]:
    return ["run"] if system.zarr_capable else []


def run(phase: str, system: System, params: dict[str, Any], rec: Recorder,
        fixtures: dict[str, Any]) -> None:
    arrays = params["hierarchy_arrays"]
    groups = min(GROUPS, arrays)
    per_group = -(-arrays // groups)
    system.create()
    start = time.perf_counter()
    root = zarr.create_group(system.write_store())
    made = 0
    for g in range(groups):
        group = root.create_group(f"g{g}")
        for a in range(min(per_group, arrays - made)):
            group.create_array(f"a{a}", shape=(16,), chunks=(16,), dtype="float32")
            made += 1
    middle = time.perf_counter()
    system.commit("hierarchy")
    end = time.perf_counter()
    rec.add("create s", middle - start, "s")
    if system.has_commit:
        rec.add("commit ms", (end - middle) * 1000, "ms")
    rec.add("create+commit s", end - start, "s")
    system.close()
    if system.persistent:
        evict_page_cache(system.root)
    system.open()
    start = time.perf_counter()
    members = list(zarr.open_group(system.read_store(), mode="r").members(max_depth=None))
    rec.add("list all members s", time.perf_counter() - start, "s")
    if len(members) != groups + made:
        raise AssertionError(f"{system.name}: listed {len(members)} nodes, made {groups + made}")
    rec.note("nodes", len(members))
    system.close()

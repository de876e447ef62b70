"""The suite: parameters, machine facts, fixtures, and the loop over worker jobs.

The parent process never touches a system itself: it prepares the shared
fixtures (the encoded bytes every system stores), then for each workload,
repetition and system runs that system's phases as worker processes on one
fresh directory, and collects their metrics. Systems run in a rotated order
from one repetition to the next so that a slow spell on a shared machine does
not always land on the same system.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.systems import SYSTEMS, available_systems, remove
from benchmarks.workloads import WORKLOADS

__all__ = ["DEFAULTS", "QUICK", "REPEATS", "machine_info", "run_suite"]

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent

#: Sizes of the default run (under 5 minutes on 2 cores).
DEFAULTS: dict[str, Any] = {
    "per_call_ops": 2_000,
    "concurrent_sizes": [4_096, 20_000],
    "bulk_mib": 256,
    "bulk_chunk_kib": 1024,
    "small_chunks": 20_000,
    "small_chunk_kib": 4,
    "random_reads": 1_000,
    "history_chunks": 1_000,
    "history_chunk_kib": 64,
    "history_commits": 100,
    "history_change": 0.01,
    "hierarchy_arrays": 1_000,
    "commit_sizes": [10**3, 10**4, 10**5, 10**6],
    "commit_samples": 20,
    "commit_icechunk_max": 10**5,
    # Untimed one-chunk commits before the samples (0: the samples follow the load).
    "commit_aged": 0,
    # 10^7 is opt-in: --huge-sizes 1e5,1e6,1e7 (about 15 minutes for versionstore alone).
    "huge_sizes": [10**5, 10**6],
    "huge_icechunk_max": 10**6,
    "scale_commits": [100, 10_000],
    "merge_sizes": [10**3, 10**4, 10**5, 10**6],
    "merge_samples": 5,
    "merge_scatter_max": 10**5,
    "gc_sizes": [10**3, 10**4, 10**5],
    "gc_samples": 3,
    "gc_changes": 10,
    "gc_interleave": 0,
    "gc_icechunk_max": 10**5,
    "s3_chunks": 1_000,
    "s3_chunk_kib": 4,
    "s3_concurrency": [10, 64, 128],
    "s3_commit_samples": 10,
}
#: Sizes of ``--quick`` (under a minute).
QUICK: dict[str, Any] = {
    "per_call_ops": 200,
    "concurrent_sizes": [256],
    "bulk_mib": 16,
    "bulk_chunk_kib": 1024,
    "small_chunks": 1_000,
    "small_chunk_kib": 4,
    "random_reads": 300,
    "history_chunks": 100,
    "history_chunk_kib": 64,
    "history_commits": 10,
    "history_change": 0.01,
    "hierarchy_arrays": 50,
    "commit_sizes": [10**3, 10**4],
    "commit_samples": 5,
    "commit_icechunk_max": 10**5,
    "commit_aged": 0,
    "huge_sizes": [10**4],
    "huge_icechunk_max": 10**6,
    "scale_commits": [100, 1_000],
    "merge_sizes": [10**3, 10**4],
    "merge_samples": 3,
    "merge_scatter_max": 10**4,
    "gc_sizes": [10**3, 10**4],
    "gc_samples": 2,
    "gc_changes": 10,
    "gc_interleave": 0,
    "gc_icechunk_max": 10**4,
    "s3_chunks": 200,
    "s3_chunk_kib": 4,
    "s3_concurrency": [10, 64],
    "s3_commit_samples": 5,
}
#: Repetitions per workload (each one a fresh directory and fresh processes).
REPEATS: dict[str, int] = {"percall": 3, "small64": 3, "bulk": 2, "small": 1, "history": 1,
                           "hierarchy": 1, "commit": 1, "huge": 1, "scale": 1, "gc": 1,
                           "s3": 1}
#: The systems each workload runs by default (others may be asked for with ``--systems``).
DEFAULT_SYSTEMS: dict[str, tuple[str, ...]] = {
    # zarr's LocalStore writes a file per chunk (20,000 files: half a minute, and no ceiling
    # to compare with); MemoryStore is the ceiling.
    "small64": ("vs-lmdb", "vs-mem", "icechunk-fs", "icechunk-mem", "zarr-mem", "zs-lmdb"),
    # lmdb-zarr and lmdb-zarr-ordered (benchmarks.lmdb_floor) measure one thing: the
    # per-call floor, without and with the flush that keeps a file whole through a power cut.
    "percall": ("vs-lmdb", "vs-mem", "icechunk-fs", "icechunk-mem", "zarr-local", "zarr-mem",
                "zs-lmdb", "raw-lmdb", "lmdb-zarr", "lmdb-zarr-ordered"),
    "bulk": ("vs-lmdb", "vs-mem", "icechunk-fs", "icechunk-mem", "zarr-local", "zarr-mem",
             "zs-lmdb", "raw-lmdb"),
    "small": ("vs-lmdb", "vs-mem", "icechunk-fs", "icechunk-mem", "zarr-local", "zarr-mem",
              "zs-lmdb", "raw-lmdb"),
    "commit": ("vs-lmdb", "icechunk-fs", "raw-lmdb"),
    "huge": ("vs-lmdb", "icechunk-fs"),
    # zarr's MemoryStore has no history and no commit: it is the floor for zarr's own
    # costs in bulk and small, and adds nothing to these two.
    "history": ("vs-lmdb", "vs-mem", "icechunk-fs", "icechunk-mem", "zarr-local", "raw-lmdb"),
    "hierarchy": ("vs-lmdb", "vs-mem", "icechunk-fs", "icechunk-mem", "zarr-local"),
    "scale": ("vs-lmdb", "vs-mem", "icechunk-fs", "icechunk-mem"),
}
ANCHORS = ("icechunk-fs", "icechunk-s3", "zarr-local", "zarr-mem", "raw-lmdb")


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = int(line.split()[1]) * 1024
    except OSError:
        pass
    versions = {}
    for name in ("versionstore", "zarr", "icechunk", "lmdb", "numpy", "numcodecs"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                                capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu,
        "memory_bytes": memory,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "git_commit": commit,
        "load_average_start": os.getloadavg(),
    }


#: Modules the fork server imports once, so each worker starts in milliseconds instead of
#: the second it takes to import zarr. Not icechunk: importing it starts Rust threads,
#: which must not be forked (workers import it themselves).
PRELOAD = ["numpy", "zarr", "lmdb", "versionstore", "benchmarks.worker", "benchmarks.systems",
           "benchmarks.workloads"]
_context: Any = None


def _fork_server() -> Any:
    global _context
    if _context is None and "forkserver" in multiprocessing.get_all_start_methods():
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _run_worker(job: dict[str, Any], directory: Path, timeout: float) -> dict[str, Any]:
    """Run one job in a new process (forked from the fork server where there is one)."""
    job_path = directory / "job.json"
    job["result"] = str(directory / "result.json")
    Path(job["result"]).unlink(missing_ok=True)
    job_path.write_text(json.dumps(job))
    context = _fork_server()
    if context is not None:
        from benchmarks.worker import main as worker_main

        process = context.Process(target=worker_main, args=(["worker", str(job_path)],))
        process.start()
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
            return {"metrics": {}, "info": {}, "error": f"timed out after {timeout:.0f} s"}
        detail = f"worker exited {process.exitcode}"
    else:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        try:
            proc = subprocess.run([sys.executable, "-m", "benchmarks.worker", str(job_path)],
                                  cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return {"metrics": {}, "info": {}, "error": f"timed out after {timeout:.0f} s"}
        detail = f"worker exited {proc.returncode}: {proc.stderr[-2000:]}"
    try:
        result: dict[str, Any] = json.loads(Path(job["result"]).read_text())
    except (OSError, ValueError):
        result = {"metrics": {}, "info": {}, "error": detail}
    return result


def run_suite(*, workloads: list[str], systems: list[str] | None, params: dict[str, Any],
              repeats: int | None, workdir: Path | None, timeout: float,
              zarr_config: dict[str, Any] | None, quick: bool = False,
              in_process: bool = False, log: Any = sys.stderr) -> dict[str, Any]:
    """Run the suite; return everything the report and the JSON file need.

    ``in_process`` runs the jobs in this process instead of worker processes
    (for the smoke test: the same code, but no per-system RSS or cold process).
    """
    started = time.perf_counter()
    info = machine_info()
    reasons = available_systems()
    skipped = {name: reason for name, reason in reasons.items()
               if reason is not None and (systems is None or name in systems)}
    usable = [name for name in SYSTEMS if reasons[name] is None]
    base = Path(tempfile.mkdtemp(prefix="vs-bench-", dir=workdir))
    fixtures: dict[str, Any] = {}
    results: dict[str, dict[str, Any]] = {}
    cpu_total = 0.0
    try:
        for workload in workloads:
            module = WORKLOADS[workload]
            chosen = [s for s in usable
                      if (systems is None and s in DEFAULT_SYSTEMS.get(workload, SYSTEMS))
                      or (systems is not None and s in systems)]
            # Object-storage systems need the S3 server only an ``OBJECT_STORAGE`` workload starts.
            chosen = [s for s in chosen if module.phases(SYSTEMS[s], params)
                      and SYSTEMS[s].object_storage == getattr(module, "OBJECT_STORAGE", False)
                      and workload in (SYSTEMS[s].only_workloads or (workload,))]
            if not chosen:
                continue
            if hasattr(module, "fixtures"):
                t0 = time.perf_counter()
                fixtures.update(module.fixtures(params, base))
                print(f"[{workload}] fixtures {time.perf_counter() - t0:.1f} s", file=log)
            per_system: dict[str, Any] = {s: {"metrics": {}, "info": {}, "errors": []}
                                          for s in chosen}
            results[workload] = per_system
            count = repeats or (1 if quick else REPEATS.get(workload, 1))
            for rep in range(count):
                order = chosen[rep % len(chosen):] + chosen[:rep % len(chosen)]
                for name in order:
                    root = base / f"{workload}-{name}-{rep}"
                    root.mkdir()
                    for phase in module.phases(SYSTEMS[name], params):
                        # What the previous job left for the disk (pages never flushed, a
                        # directory just deleted) is written now, not during this job.
                        os.sync()
                        t0 = time.perf_counter()
                        job = {"workload": workload, "phase": phase, "system": name,
                               "root": str(root), "params": params, "fixtures": fixtures,
                               "zarr_config": zarr_config}
                        if in_process:
                            from benchmarks.worker import run_job

                            result = run_job(job)
                        else:
                            result = _run_worker(job, base, timeout)
                        _merge(per_system[name], result)
                        status = "ok" if result["error"] is None else "FAILED"
                        print(f"[{workload}] {name} rep {rep + 1}/{count} {phase}: "
                              f"{time.perf_counter() - t0:.1f} s "
                              f"(cpu {result.get('cpu_seconds', 0):.1f} s) {status}", file=log)
                        cpu_total += result.get("cpu_seconds", 0)
                        if result["error"] is not None:
                            print(result["error"], file=log)
                            break
                    remove(root)
    finally:
        remove(base)
    info["load_average_end"] = os.getloadavg()
    info["wall_seconds"] = round(time.perf_counter() - started, 1)
    own = resource.getrusage(resource.RUSAGE_SELF)
    info["cpu_seconds"] = round(cpu_total + own.ru_utime + own.ru_stime, 1)
    return {
        "machine": info,
        "params": params,
        "zarr_config": zarr_config,
        "systems": {name: SYSTEMS[name].description for name in SYSTEMS},
        "skipped_systems": skipped,
        "anchors": list(ANCHORS),
        "results": results,
    }


def _merge(into: dict[str, Any], result: dict[str, Any]) -> None:
    for name, metric in result["metrics"].items():
        target = into["metrics"].setdefault(
            name, {"unit": metric["unit"], "better": metric["better"], "samples": []}
        )
        target["samples"].extend(metric["samples"])
    into["info"].update(result["info"])
    if result["error"] is not None:
        into["errors"].append(result["error"])

"""Smoke test of the benchmark suite at tiny sizes: it runs and reports, nothing is timed.

Benchmarks are not tests: nothing here looks at a duration. This only keeps
``benchmarks/`` from rotting. icechunk is an optional anchor (the ``bench``
extra); CI installs only ``test``, so its systems are skipped when absent.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

# ``benchmarks/`` is a top-level package of the repository, not of the installed distribution.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.__main__ import main
from benchmarks.report import check_targets, format_report, summarise
from benchmarks.suite import run_suite
from benchmarks.systems import SYSTEMS
from benchmarks.workloads import WORKLOADS
from benchmarks.workloads.commit_latency import size_label

TINY = {
    "per_call_ops": 20,
    "concurrent_sizes": [16],
    "bulk_mib": 1,
    "bulk_chunk_kib": 256,
    "small_chunks": 40,
    "small_chunk_kib": 4,
    "random_reads": 20,
    "history_chunks": 20,
    "history_chunk_kib": 16,
    "history_commits": 3,
    "history_change": 0.05,
    "hierarchy_arrays": 5,
    "commit_sizes": [10, 100],
    "commit_samples": 2,
    "commit_aged": 2,
    "huge_sizes": [50],
    "scale_commits": [3, 5],
    "merge_sizes": [200, 400],
    "merge_samples": 1,
    "merge_scatter_max": 200,
    "gc_sizes": [10, 100],
    "gc_samples": 2,
    "gc_changes": 3,
    "gc_interleave": 0,
    "gc_icechunk_max": 100,
    "s3_chunks": 20,
    "s3_chunk_kib": 4,
    "s3_concurrency": [10, 64],
    "s3_commit_samples": 2,
}
HAS_ICECHUNK = importlib.util.find_spec("icechunk") is not None


def _param(name: str) -> object:
    if name.startswith("icechunk") and not HAS_ICECHUNK:
        return pytest.param(name, marks=pytest.mark.skip(
            reason="icechunk is not installed (it is in the 'bench' extra, not 'test')"))
    return name


def _run(systems: list[str], tmp_path: Path, **kwargs: object) -> dict:
    return run_suite(workloads=list(WORKLOADS), systems=systems, params=TINY, repeats=1,
                     workdir=tmp_path, timeout=300, zarr_config=None, **kwargs)


@pytest.mark.parametrize("system", [_param(name) for name in SYSTEMS])
def test_every_workload_runs_on(system: str, tmp_path: Path) -> None:
    run = _run([system], tmp_path, in_process=True)
    assert run["results"], "no workload ran"
    for workload, systems in run["results"].items():
        data = systems[system]
        assert data["errors"] == [], f"{workload}: {data['errors']}"
        assert data["metrics"], f"{workload}: no metrics"
        for name, metric in data["metrics"].items():
            assert metric["samples"], f"{workload}: {name} has no samples"
    assert list(tmp_path.iterdir()) == [], "the suite left files behind"


def test_gc_samples_sizes_in_turn_when_interleaved(tmp_path: Path) -> None:
    run = run_suite(workloads=["gc"], systems=["vs-mem", "vs-lmdb"],
                    params={**TINY, "gc_interleave": 1}, repeats=1, workdir=tmp_path,
                    timeout=300, zarr_config=None, in_process=True)
    for system in ("vs-mem", "vs-lmdb"):
        data = run["results"]["gc"][system]
        assert data["errors"] == []
        for size in map(size_label, TINY["gc_sizes"]):
            samples = data["metrics"][f"gc after small commit ms (N={size})"]["samples"]
            assert len(samples) == TINY["gc_samples"]
            assert data["metrics"][f"full gc s (N={size})"]["samples"]
    assert list(tmp_path.iterdir()) == [], "the suite left files behind"


def test_report_ratios_and_targets(tmp_path: Path) -> None:
    run = _run(["vs-mem", "vs-lmdb", "raw-lmdb", "zarr-local", "zarr-mem"], tmp_path,
               in_process=True)
    summary = summarise(run)
    write = summary["bulk"]["write+commit MiB/s"]
    assert write["zarr-local"]["ratios"]["zarr-local"] == pytest.approx(1.0)
    assert write["raw-lmdb"]["ratios"]["icechunk-fs"] is None  # anchor not in this run
    checks = check_targets(summary, run["params"])
    assert any("raw LMDB" in check["target"] for check in checks)
    issue_13 = {check["target"] for check in checks if check["target"].startswith("#13")}
    assert any("MemoryStore" in target and "16 chunks" in target for target in issue_13)
    assert any("store.set" in target for target in issue_13)
    assert any("store.get" in target for target in issue_13)
    assert summary["small64"]["write+commit s (N=16)"]["zarr-mem"]["ratios"]["zarr-mem"] == (
        pytest.approx(1.0))
    last = size_label(max(TINY["commit_sizes"]))  # type: ignore[call-overload]
    for figure in ("commit fsync ms", "raw same writes + fsync ms"):
        assert summary["commit"][f"{figure} (N={last})"]["vs-lmdb"]["median"] > 0
    text = format_report(run, summary, checks)
    assert "| write+commit MiB/s (MiB/s) | vs-lmdb |" in text
    assert "## Targets" in text


def test_the_bulk_targets_name_both_bounds_measured_in_the_run() -> None:
    """The bulk rows print the computed ceiling and the ordered floor store's own ratio."""
    rates = {"icechunk-fs": 400.0, "vs-lmdb": 360.0, "zarr-mem": 600.0, "raw-lmdb": 500.0,
             "lmdb-zarr-ordered": 380.0}
    summary = {"bulk": {metric: {system: {"median": rate, "better": "higher"}
                                 for system, rate in rates.items()}
                        for metric in ("write+commit MiB/s", "durable write+commit+fsync MiB/s")}}
    checks = {c["target"]: c for c in check_targets(summary, {})}
    bulk = checks["#13 vs-lmdb ≥ 1.0× icechunk-fs: bulk write+commit MiB/s"]
    assert bulk["detail"] == ("0.90× (ceiling for a durable store through zarr here: 1.25×; "
                              "lmdb-zarr-ordered: 0.95×)")


def test_object_storage_systems_only_run_the_s3_workload(tmp_path: Path) -> None:
    systems = ["vs-s3", "vs-mem"] + (["icechunk-s3"] if HAS_ICECHUNK else [])
    run = _run(systems, tmp_path, in_process=True)
    assert set(run["results"]["s3"]) == {s for s in systems if s != "vs-mem"}
    assert all(not {"vs-s3", "icechunk-s3"} & set(by_system)
               for workload, by_system in run["results"].items() if workload != "s3")
    metrics = run["results"]["s3"]["vs-s3"]["metrics"]
    # The proxy counted the write: at least one PUT per chunk, nothing deleted.
    puts = metrics["requests: write+commit (c=10) PUT"]["samples"]
    assert puts[0] >= TINY["s3_chunks"]
    assert metrics["requests: write+commit (c=10) DELETE"]["samples"] == [0]
    summary = summarise(run)
    checks = check_targets(summary, run["params"])
    assert any(check["target"].startswith("#11 vs-s3 requests: write+commit (c=10) writes")
               for check in checks)
    if HAS_ICECHUNK:
        commit = summary["s3"]["1-chunk commit ms"]
        assert commit["icechunk-s3"]["ratios"]["icechunk-s3"] == pytest.approx(1.0)
        assert commit["vs-s3"]["ratios"]["icechunk-s3"] is not None


def test_command_line_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "result.json"
    status = main(["--workloads", "bulk,hierarchy", "--systems", "vs-lmdb,zarr-mem",
                   "--bulk-mib", "1", "--bulk-chunk-kib", "256", "--hierarchy-arrays", "3",
                   "--repeat", "1", "--workdir", str(tmp_path), "--json", str(out)])
    assert status == 0, capsys.readouterr().err
    saved = json.loads(out.read_text())
    assert set(saved["results"]) == {"bulk", "hierarchy"}
    assert saved["machine"]["nproc"] >= 1
    assert "vs-lmdb" in saved["summary"]["bulk"]["read peak RSS"]
    assert "Hierarchy of 1,000 arrays" in capsys.readouterr().out


def test_per_call_layers_runs_at_tiny_sizes(capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    from benchmarks.per_call_layers import GET_LAYERS, SET_LAYERS
    from benchmarks.per_call_layers import main as per_call_layers

    monkeypatch.setenv("VS_BENCH_DIR", str(tmp_path))
    monkeypatch.setattr("sys.argv", ["per_call_layers", "--calls", "600", "--rounds", "1"])
    per_call_layers()
    rows = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and not line.startswith("| layer")]
    assert rows == [*SET_LAYERS, *GET_LAYERS]
    assert list(tmp_path.iterdir()) == []


def test_side_by_side_runs_at_tiny_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    from benchmarks.side_by_side import main as side_by_side

    assert side_by_side(["--commits", "3", "--rounds", "2", "--fresh-rounds", "1", "--checkout",
                         "--checkout-rounds", "1", "--history-chunks", "20",
                         "--history-chunk-kib", "16", "--history-commits", "2",
                         "--workdir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "ancestry of 3 commits" in printed and "vs-lmdb" in printed
    assert "checkout of the first snapshot" in printed
    assert "in a new process each" in printed


def test_instruction_counts_child_writes_each_system_and_the_command_checks_its_arguments(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The counting itself needs valgrind (and minutes); what it runs under it must not rot.
    from benchmarks.instructions import SYSTEMS as COUNTED
    from benchmarks.instructions import main as instructions

    for system in COUNTED:
        (tmp_path / system).mkdir()
        assert instructions(["--child", system, "4", str(tmp_path / system)]) == 0
    import versionstore as vs
    with vs.Repository.open(vs.lmdb_storage(tmp_path / "vs-lmdb" / "repo")) as repo:
        assert len(list(repo.ancestry(branch="main"))) == 2  # the write was committed
    for bad in (["--systems", "nope"], ["--chunks", "0"]):
        with pytest.raises(SystemExit):
            instructions(bad)
    assert "unknown systems" in capsys.readouterr().err


def test_the_commit_replay_is_outside_the_timed_write_and_commit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A clock that jumps while the replay notes the repository before each commit: the
    # jump must show in neither the chunk's write nor the commit (nothing real is timed).
    import time

    from benchmarks.commit_floor import CommitReplay
    from benchmarks.measure import Recorder
    from benchmarks.systems import VersionStoreLMDB
    from benchmarks.workloads import commit_latency

    jump = [0.0]
    clock = time.perf_counter
    before = CommitReplay.before

    def jumping_before(self: CommitReplay) -> None:
        before(self)
        jump[0] += 1000.0

    monkeypatch.setattr(CommitReplay, "before", jumping_before)
    monkeypatch.setattr(commit_latency, "time",
                        type("Clock", (), {"perf_counter": lambda: clock() + jump[0]}))
    params = {**TINY, "commit_sizes": [10]}
    rec = Recorder()
    commit_latency.run("run", VersionStoreLMDB(tmp_path / "vs"), params, rec,
                       commit_latency.fixtures(params, tmp_path))
    assert jump[0] == 1000.0 * TINY["commit_samples"]  # type: ignore[operator]
    for figure in ("write 1 chunk ms", "commit ms"):
        samples = rec.metrics[f"{figure} (N={size_label(10)})"]["samples"]
        assert max(samples) < 1000.0 * 1000, figure
    assert list((tmp_path / "vs").iterdir()) == [], "the workload left files behind"


def test_the_commit_replay_copy_mirrors_the_repository_when_a_commit_starts(
        tmp_path: Path) -> None:
    # The replay writes exactly what the commit writes only if the copy holds what the
    # repository holds as the commit starts: the staged entries and chunks included
    # (else deleting a staged entry is a no-op in the copy).
    import lmdb
    import numpy as np
    import zarr

    from benchmarks.commit_floor import CommitReplay
    from benchmarks.systems import VersionStoreLMDB

    def everything(env: lmdb.Environment, dbs: list[Any]) -> list[dict[bytes, bytes]]:
        with env.begin() as txn:
            return [{bytes(k): bytes(v) for k, v in txn.cursor(db=db)} for db in dbs]

    instance = VersionStoreLMDB(tmp_path / "vs")
    instance.create()
    zarr.create_array(instance.write_store(), name="a", shape=(4, 4096), chunks=(1, 4096),
                      dtype="int32", compressors=None)
    instance.commit("load")
    replay = CommitReplay(instance.repository, tmp_path / "copy")
    handle = instance.repository.backend._handle
    for s in range(3):
        zarr.open_array(instance.write_store(), path="a")[s] = np.arange(4096) * (s + 1)
        replay.before()
        assert everything(replay._env, list(replay._dbs.values())) == everything(
            handle.env, list(handle.databases)), f"commit {s}"
        instance.commit(f"c{s}")
        replay.replay()
    replay.close()
    instance.close()

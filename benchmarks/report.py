"""The report: summaries, ratios against the anchors, target checks, table and JSON.

Every metric is summarised as the median of its samples with min–max and the
sample count. A ratio ``vs X`` is how many times *better* the system is than
anchor X on that metric, whatever the metric's direction: ``2.0`` means twice
the throughput, or half the time / bytes; below 1 means worse. Ratios compare
medians from the same run only.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any

from benchmarks.measure import percentile

__all__ = ["check_targets", "format_report", "summarise", "write_json"]

PAIRS = (("vs-lmdb", "icechunk-fs"), ("vs-mem", "icechunk-mem"), ("vs-s3", "icechunk-s3"))
#: The metrics "at least icechunk's throughput on every workload" is judged on.
HEADLINES = {
    "bulk": ["write+commit MiB/s", "durable write+commit+fsync MiB/s", "zarr read cold MiB/s",
             "zarr read warm MiB/s", "key read cold MiB/s", "key read warm MiB/s"],
    "small": ["zarr write+commit chunks/s", "key write+commit chunks/s",
              "zarr random read ops/s", "key random read ops/s"],
    "history": ["initial + all commits s", "commit ms", "checkout first + read it s",
                "ancestry ms"],
    "hierarchy": ["create+commit s", "list all members s"],
    "commit": ["commit ms (N=*)"],
    "small64": ["write+commit chunks/s (N=*)"],
    "percall": ["set p50 µs", "get p50 µs"],
    "scale": ["ancestry ms (*)"],
    "s3": ["write+commit chunks/s (c=*)", "1-chunk commit ms"],
}


def _summary(metric: dict[str, Any]) -> dict[str, Any]:
    samples = metric["samples"]
    return {
        "unit": metric["unit"],
        "better": metric["better"],
        "n": len(samples),
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "p99": percentile(samples, 99),
    }


def ratio(system: dict[str, Any] | None, anchor: dict[str, Any] | None) -> float | None:
    """How many times better ``system`` is than ``anchor`` (``None`` if not comparable)."""
    if system is None or anchor is None:
        return None
    a, s = anchor["median"], system["median"]
    if system["better"] == "higher":
        return s / a if a > 0 else None
    return a / s if s > 0 else None


def summarise(run: dict[str, Any]) -> dict[str, Any]:
    """Per workload, metric and system: the summary and the ratio against each anchor."""
    out: dict[str, Any] = {}
    for workload, systems in run["results"].items():
        metrics: dict[str, dict[str, Any]] = {}
        for system, data in systems.items():
            for name, metric in data["metrics"].items():
                if metric["samples"]:
                    metrics.setdefault(name, {})[system] = _summary(metric)
        for by_system in metrics.values():
            for summary in by_system.values():
                summary["ratios"] = {
                    anchor: ratio(summary, by_system.get(anchor)) for anchor in run["anchors"]
                }
        out[workload] = metrics
    return out


def _fmt(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _get(summary: dict[str, Any], workload: str, metric: str, system: str
         ) -> dict[str, Any] | None:
    return summary.get(workload, {}).get(metric, {}).get(system)


def check_targets(summary: dict[str, Any], params: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured figure and met / missed / not measured."""
    checks: list[dict[str, Any]] = []

    def add(target: str, value: float | None, threshold: float, detail: str) -> None:
        met = None if value is None else value >= threshold
        checks.append({"target": target, "value": value, "threshold": threshold,
                       "met": met, "detail": detail})

    # 1. At least icechunk's throughput on every workload: each workload's headline metrics.
    for ours, theirs in PAIRS:
        for workload, names in HEADLINES.items():
            for name in names:
                names_here = [name]
                if name.endswith("*)"):
                    names_here = [n for n in summary.get(workload, {})
                                  if n.startswith(name[:-2])]
                for metric in names_here:
                    r = ratio(_get(summary, workload, metric, ours),
                              _get(summary, workload, metric, theirs))
                    if r is not None:
                        add(f"{ours} ≥ {theirs}: {workload} {metric}", r, 1.0, f"{r:.2f}×")
    # 2. Commit of one changed chunk flat (within 2×) from the smallest to the largest array.
    from benchmarks.workloads.commit_latency import size_label

    for system in ("vs-lmdb", "vs-mem", "icechunk-fs", "icechunk-mem"):
        measured = [
            (size, s) for size in params.get("commit_sizes") or []
            if (s := _get(summary, "commit", f"commit ms (N={size_label(size)})", system))
        ]
        if len(measured) >= 2:
            (first, small), (last, large) = measured[0], measured[-1]
            growth = large["median"] / small["median"]
            add(f"{system}: commit latency flat within 2× "
                f"({size_label(first)} → {size_label(last)} chunks)", 2.0 / growth, 1.0,
                f"grows {growth:.2f}× ({small['median']:.2f} → {large['median']:.2f} ms)")
    # 2b. Garbage collection after a small commit: grows < 2× from the smallest to the
    # largest repository (issue 14).
    for system in ("vs-lmdb", "vs-mem", "icechunk-fs", "icechunk-mem"):
        measured = [
            (size, s) for size in params.get("gc_sizes") or []
            if (s := _get(summary, "gc", f"gc after small commit ms (N={size_label(size)})",
                          system))
        ]
        if len(measured) >= 2:
            (first, small), (last, large) = measured[0], measured[-1]
            growth = large["median"] / small["median"]
            cpu = [_get(summary, "gc", f"gc after small commit CPU ms (N={size_label(n)})",
                        system) for n in (first, last)]
            cpu_note = ("" if cpu[0] is None or cpu[1] is None else
                        f"; CPU time grows {cpu[1]['median'] / cpu[0]['median']:.2f}×")
            per = [_get(summary, "gc", f"gc CPU µs per stored object (N={size_label(n)})",
                        system) for n in (first, last)]
            if per[0] is not None and per[1] is not None:
                cpu_note += (f"; CPU per object the commit stored grows "
                             f"{per[1]['median'] / per[0]['median']:.2f}×")
            add(f"{system}: gc after a small commit grows < 2× "
                f"({size_label(first)} → {size_label(last)} chunks)", 2.0 / growth, 1.0,
                f"grows {growth:.2f}× ({small['median']:.2f} → {large['median']:.2f} ms)"
                f"{cpu_note}")
    # 3. At least 5× icechunk on small-chunk write + commit.
    for ours, theirs in PAIRS:
        for name in ("zarr write+commit s", "key write+commit s"):
            r = ratio(_get(summary, "small", name, ours), _get(summary, "small", name, theirs))
            if r is not None:
                add(f"{ours} ≥ 5× {theirs}: small chunks {name}", r, 5.0, f"{r:.2f}×")
    # 4. Disk within 1.2× of logical data for the 1 %-change history.
    for name in ("disk / logical (file size)", "disk / logical (LMDB used pages)"):
        s = _get(summary, "history", name, "vs-lmdb")
        if s is not None:
            add(f"vs-lmdb {name} ≤ 1.2", 1.2 / s["median"], 1.0, f"{s['median']:.3f}×")
    # 5. Random single-chunk reads at least 2× icechunk's ops/s.
    for ours, theirs in PAIRS:
        for name in ("zarr random read ops/s", "key random read ops/s"):
            r = ratio(_get(summary, "small", name, ours), _get(summary, "small", name, theirs))
            if r is not None:
                # zarr's MemoryStore against the same anchor: what no store through zarr passes.
                ceiling = ratio(_get(summary, "small", name, "zarr-mem"),
                                _get(summary, "small", name, theirs))
                at_ceiling = "" if ceiling is None else f" (zarr-mem: {ceiling:.2f}×)"
                add(f"{ours} ≥ 2× {theirs}: {name}", r, 2.0, f"{r:.2f}×{at_ceiling}")
    # 6. Read throughput within 2× of raw LMDB (same bytes, key level).
    for name in ("key read cold MiB/s", "key read warm MiB/s"):
        r = ratio(_get(summary, "bulk", name, "vs-lmdb"), _get(summary, "bulk", name, "raw-lmdb"))
        if r is not None:
            add(f"vs-lmdb {name} within 2× of raw LMDB", r, 0.5, f"{r:.2f}× raw LMDB")
    # 7. Huge commits: peak anonymous RSS of the commit under 300 MiB (10^6), 500 MiB (10^7).
    for size, limit in ((10**6, 300.0), (10**7, 500.0)):
        for system in ("vs-lmdb", "vs-mem"):
            s = _get(summary, "huge", f"commit peak anon MiB (N={size_label(size)})", system)
            if s is not None:
                add(f"{system}: commit of {size_label(size)} chunks under {limit:.0f} MiB "
                    "peak anonymous RSS", limit / s["median"], 1.0, f"{s['median']:.0f} MiB")
    _issue_13(summary, params, add)
    # 8. History at scale (issue 12): ancestry ≥ 5× icechunk at 100 commits, 10^4 commits in
    # under 100 ms, checkout of the first snapshot ≥ 2× icechunk, merge growth < 2×.
    from benchmarks.workloads.history_scale import size_label as scale_label

    for ours, theirs in PAIRS:
        r = ratio(_get(summary, "scale", "ancestry ms (100 commits)", ours),
                  _get(summary, "scale", "ancestry ms (100 commits)", theirs))
        if r is not None:
            add(f"{ours} ≥ 5× {theirs}: ancestry of 100 commits", r, 5.0, f"{r:.2f}×")
        r = ratio(_get(summary, "history", "checkout first ms", ours),
                  _get(summary, "history", "checkout first ms", theirs))
        if r is not None:
            add(f"{ours} ≥ 2× {theirs}: checkout of the first snapshot", r, 2.0, f"{r:.2f}×")
    for system in ("vs-lmdb", "vs-mem"):
        for length in params.get("scale_commits") or []:
            s = _get(summary, "scale", f"ancestry ms ({scale_label(length)} commits)", system)
            if s is not None and length >= 10_000:
                add(f"{system}: ancestry of {scale_label(length)} commits under 100 ms",
                    100 / s["median"], 1.0, f"{s['median']:.1f} ms")
        measured = [
            (size, s) for size in params.get("merge_sizes") or []
            if (s := _get(summary, "scale", f"merge ms (regions, N={scale_label(size)})",
                          system))
        ]
        if len(measured) >= 2:
            (first, small), (last, large) = measured[0], measured[-1]
            growth = large["median"] / small["median"]
            add(f"{system}: merge of two 1 % regions grows < 2× "
                f"({scale_label(first)} → {scale_label(last)} chunks)", 2.0 / growth, 1.0,
                f"grows {growth:.2f}× ({small['median']:.2f} → {large['median']:.2f} ms)")
    # 8. Issue 11: a session of N chunks on S3 costs at most N + N/100 + 20 write requests.
    chunks = params.get("s3_chunks")
    for name in summary.get("s3", {}):
        if chunks and name.startswith("requests: write+commit (c=") and name.endswith(" writes"):
            s = _get(summary, "s3", name, "vs-s3")
            if s is not None:
                limit = chunks + chunks / 100 + 20
                add(f"#11 vs-s3 {name} ≤ N + N/100 + 20 (N={chunks:,})", limit / s["median"],
                    1.0, f"{s['median']:,.0f} requests (limit {limit:,.0f})")
    return checks


#: The per-call floors (``benchmarks.lmdb_floor``): without a flush, and flushing as
#: versionstore does so that a power cut never loses the file.
FLOORS = ("lmdb-zarr", "lmdb-zarr-ordered")


def _bulk_bounds(summary: dict[str, Any], metric: str) -> str:
    """Two bounds for a durable store through zarr against icechunk-fs, measured in this run.

    - The *ceiling*: such a store takes at least as long as zarr's
      ``MemoryStore`` (zarr's own work, nothing stored) and at least as long
      as raw LMDB writing the same bytes durably (``raw-lmdb``'s durable time:
      the disk's share), even if the two overlapped perfectly. icechunk-fs's
      time over the longer of the two bounds the ratio.
    - The *floor store*: ``lmdb-zarr-ordered``, the least an LMDB store through
      zarr does whose file survives a power cut (one flushed transaction per
      ``set``, nothing checked, nothing hashed, no history); zarr's
      ``array[...] = ...`` returns only once each slab's last ``set`` has been
      flushed, so the two do not overlap perfectly.
    """
    durable = "durable write+commit+fsync MiB/s"
    theirs = _get(summary, "bulk", metric, "icechunk-fs")
    if not (theirs and theirs["median"]):
        return ""
    bounds = []
    rates = [_get(summary, "bulk", of, system) for system, of in (
        ("zarr-mem", "write+commit MiB/s"), ("raw-lmdb", durable))]
    if all(rate and rate["median"] for rate in rates):
        memory, disk = (rate["median"] for rate in rates if rate)  # (``if``: for mypy)
        bounds.append(f"ceiling for a durable store through zarr here: "
                      f"{min(memory, disk) / theirs['median']:.2f}×")
    floor = _get(summary, "bulk", metric, "lmdb-zarr-ordered")
    if floor and floor["median"]:
        bounds.append(f"lmdb-zarr-ordered: {floor['median'] / theirs['median']:.2f}×")
    return f" ({'; '.join(bounds)})" if bounds else ""


def _issue_13(summary: dict[str, Any], params: dict[str, Any], add: Any) -> None:
    """The targets of issue 13 (the write path, session reads, durable bulk writes)."""
    from benchmarks.workloads.commit_latency import size_label

    mem = "zarr-mem"
    for n in params.get("concurrent_sizes") or []:
        metric = f"write+commit s (N={n})"
        ours = _get(summary, "small64", metric, "vs-lmdb")
        r = ratio(ours, _get(summary, "small64", metric, mem))
        ice = ratio(ours, _get(summary, "small64", metric, "icechunk-fs"))
        if r is not None:
            against = "" if ice is None else f"; {ice:.2f}× icechunk-fs"
            add(f"#13 vs-lmdb ≥ 0.9× zarr MemoryStore: small chunks through zarr, "
                f"concurrency 64, {n} chunks + commit", r, 0.9, f"{r:.2f}×{against}")
    for op, limit in (("set", 30.0), ("get", 20.0)):
        s = _get(summary, "percall", f"{op} p50 µs", "vs-lmdb")
        if s is not None:
            floors = [f"{name} {floor['median']:.1f} µs" for name in FLOORS
                      if (floor := _get(summary, "percall", f"{op} p50 µs", name))]
            at_floor = (f" (one LMDB transaction through zarr: {', '.join(floors)})"
                        if floors else "")
            add(f"#13 vs-lmdb per-call await store.{op} of 4 KiB ≤ {limit:.0f} µs",
                limit / s["median"], 1.0, f"{s['median']:.1f} µs{at_floor}")
    for metric, threshold in (("write+commit MiB/s", 1.0),
                              ("durable write+commit+fsync MiB/s", 1.5)):
        r = ratio(_get(summary, "bulk", metric, "vs-lmdb"),
                  _get(summary, "bulk", metric, "icechunk-fs"))
        if r is not None:
            add(f"#13 vs-lmdb ≥ {threshold}× icechunk-fs: bulk {metric}", r, threshold,
                f"{r:.2f}×{_bulk_bounds(summary, metric)}")
    for metric in ("key read cold MiB/s", "key read warm MiB/s"):
        r = ratio(_get(summary, "bulk", metric, "vs-lmdb"),
                  _get(summary, "bulk", metric, "raw-lmdb"))
        if r is not None:
            add(f"#13 vs-lmdb ≥ 0.85× raw LMDB: {metric}", r, 0.85, f"{r:.2f}×")
    sizes = params.get("commit_sizes") or []
    if sizes:
        label = size_label(max(sizes))
        s = _get(summary, "commit", f"commit ms (N={label})", "vs-lmdb")
        floor = _get(summary, "commit", f"raw same writes + fsync ms (N={label})", "vs-lmdb")
        at_floor = "" if floor is None else (
            f"; raw LMDB writing the same and fsync: {floor['median']:.2f} ms")
        if s is not None and max(sizes) >= 10**6:
            add(f"#13 vs-lmdb one-chunk commit ≤ 1 ms at {label} chunks",
                1.0 / s["median"], 1.0, f"{s['median']:.2f} ms{at_floor}")


def format_report(run: dict[str, Any], summary: dict[str, Any],
                  checks: list[dict[str, Any]]) -> str:
    """A plain-text (Markdown-friendly) report of one run."""
    from benchmarks.workloads import WORKLOADS

    m = run["machine"]
    lines = [
        f"# versionstore benchmarks — {m['date']}",
        "",
        f"machine: {m['nproc']} CPUs ({m['cpus_usable']} usable), {m['cpu_model']}, "
        f"{(m['memory_bytes'] or 0) / 2**30:.1f} GiB RAM; Python {m['python']}; "
        f"load average {m['load_average_start'][0]:.1f} at start, "
        f"{m.get('load_average_end', [float('nan')])[0]:.1f} at end",
        "versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
        f"git: {m['git_commit']}; wall time {m.get('wall_seconds', '?')} s, "
        f"CPU time {m.get('cpu_seconds', '?')} s (all processes)",
    ]
    if run.get("zarr_config"):
        lines.append(f"zarr config: {run['zarr_config']}")
    for name, reason in run.get("skipped_systems", {}).items():
        lines.append(f"skipped {name}: {reason}")
    lines.append("")
    lines.append("ratios: how many times better than the anchor (>1 = faster / smaller)")
    anchors = run["anchors"]
    for workload, metrics in summary.items():
        module = WORKLOADS[workload]
        lines += ["", f"## {module.TITLE}", ""]
        header = ["metric", "system", "median", "min–max", "n"] + [f"vs {a}" for a in anchors]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        for name, by_system in metrics.items():
            for system in [s for s in run["results"][workload] if s in by_system]:
                s = by_system[system]
                row = [f"{name} ({s['unit']})", system, _fmt(s["median"]),
                       f"{_fmt(s['min'])}–{_fmt(s['max'])}", str(s["n"])]
                row += [_fmt_ratio(s["ratios"][a]) for a in anchors]
                lines.append("| " + " | ".join(row) + " |")
        for system, data in run["results"][workload].items():
            for error in data["errors"]:
                found = [line for line in error.splitlines()
                         if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", line)]
                last = found[-1] if found else (error.strip().splitlines() or ["?"])[-1]
                lines.append(f"\nERROR {system}: {last}")
    if checks:
        lines += ["", "## Targets", ""]
        for check in checks:
            verdict = {True: "met", False: "MISSED", None: "not measured"}[check["met"]]
            lines.append(f"- {verdict}: {check['target']} — {check['detail']}")
    return "\n".join(lines)


def write_json(path: Path, run: dict[str, Any], summary: dict[str, Any],
               checks: list[dict[str, Any]]) -> None:
    """Everything: the run (raw samples), the summaries and the target checks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**run, "summary": summary, "targets": checks}, indent=1,
                               default=str))

"""``python -m benchmarks``: run the suite, print the table, write the JSON."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.report import check_targets, format_report, summarise, write_json
from benchmarks.suite import DEFAULTS, PACKAGE_DIR, QUICK, run_suite
from benchmarks.systems import SYSTEMS
from benchmarks.workloads import WORKLOADS

FUSED = {"codec_pipeline.path": "zarr.core.codec_pipeline.FusedCodecPipeline"}


def _sizes(text: str) -> list[int]:
    return [int(float(part)) for part in text.split(",") if part]


def _count(text: str) -> int:
    return int(float(text))  # accepts 1e5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="versionstore side by side with icechunk, zarr's stores and raw LMDB.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (under a minute)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated subset of: {', '.join(WORKLOADS)}")
    parser.add_argument("--systems", default=None,
                        help=f"comma-separated subset of: {', '.join(SYSTEMS)} "
                             "(default: all installed, except where a system adds nothing: "
                             "commit runs vs-lmdb, icechunk-fs, raw-lmdb; history and "
                             "hierarchy leave out zarr-mem and zs-lmdb; vs-s3 and icechunk-s3 "
                             "run only in s3, which starts their S3 server)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="repetitions of every workload (default: 2 for bulk, 1 for the "
                             "others, whose metrics have many samples each; 1 with --quick)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where repositories are written (a real disk, not tmpfs)")
    parser.add_argument("--json", type=Path, default=None,
                        help="result file (default benchmarks/results/<timestamp>.json)")
    parser.add_argument("--no-json", action="store_true", help="do not write a result file")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per worker job")
    parser.add_argument("--fused-pipeline", action="store_true",
                        help="run zarr with its opt-in FusedCodecPipeline (all systems)")
    sizes = parser.add_argument_group("sizes (defaults: the full run; --quick: smaller)")
    for name, value in DEFAULTS.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, list):
            sizes.add_argument(flag, type=_sizes, default=None,
                               help=f"comma-separated (default {','.join(map(str, value))}; "
                                    f"quick {','.join(map(str, QUICK[name]))})")
        else:
            kind = _count if isinstance(value, int) else type(value)
            sizes.add_argument(flag, type=kind, default=None,
                               help=f"default {value}; quick {QUICK[name]}")
    return parser.parse_args(argv)


def params_of(args: argparse.Namespace) -> dict[str, Any]:
    base = QUICK if args.quick else DEFAULTS
    return {name: getattr(args, name) if getattr(args, name) is not None else value
            for name, value in base.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workloads = [w for w in args.workloads.split(",") if w]
    unknown = [w for w in workloads if w not in WORKLOADS]
    systems = None if args.systems is None else [s for s in args.systems.split(",") if s]
    unknown += [s for s in systems or [] if s not in SYSTEMS]
    if unknown:
        print(f"unknown workload or system: {', '.join(unknown)}", file=sys.stderr)
        return 2
    run = run_suite(workloads=workloads, systems=systems, params=params_of(args),
                    repeats=args.repeat, workdir=args.workdir, timeout=args.timeout,
                    zarr_config=FUSED if args.fused_pipeline else None, quick=args.quick)
    run["command"] = " ".join(["python -m benchmarks", *(argv if argv is not None
                                                         else sys.argv[1:])])
    summary = summarise(run)
    checks = check_targets(summary, run["params"])
    print(format_report(run, summary, checks))
    if not args.no_json:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = args.json or PACKAGE_DIR / "results" / f"{stamp}.json"
        write_json(path, run, summary, checks)
        print(f"\nresults written to {path}")
    failed = any(data["errors"] for systems_ in run["results"].values()
                 for data in systems_.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

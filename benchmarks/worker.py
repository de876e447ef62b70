"""Worker process: run one (workload, phase, system) job and write its result as JSON.

``python -m benchmarks.worker JOB.json``, or ``main`` in a process forked from
the suite's fork server (same thing, without re-importing zarr). The job names the workload, phase,
system, its directory, the parameters and the fixtures; the result (metrics,
notes, or the error's traceback) goes to the job's ``result`` path. One job per
process keeps peak RSS per system and makes "new process" mean what it says.
"""

from __future__ import annotations

import json
import resource
import sys
import traceback
from pathlib import Path
from typing import Any

from benchmarks.measure import Recorder, peak_rss_mib


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run ``job`` in this process; return its JSON-ready result."""
    import zarr

    from benchmarks.systems import SYSTEMS
    from benchmarks.workloads import WORKLOADS

    if job.get("zarr_config"):
        zarr.config.set(job["zarr_config"])
    rec = Recorder()
    cls = SYSTEMS[job["system"]]
    if cls.name.startswith("icechunk"):
        import icechunk

        icechunk.set_logs_filter("error")
    rec.note("rss_after_imports_mib", round(peak_rss_mib(), 1))
    try:
        system = cls(Path(job["root"]))
        WORKLOADS[job["workload"]].run(job["phase"], system, job["params"], rec,
                                       job["fixtures"])
        error = None
    except Exception:  # report it and let the suite go on with the other systems
        error = traceback.format_exc()
    out = rec.to_json()
    out["error"] = error
    return out


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[1]).read_text())
    result = run_job(job)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    Path(job["result"]).write_text(json.dumps(result))
    return 0 if result["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

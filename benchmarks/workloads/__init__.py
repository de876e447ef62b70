"""The workload families; each module has ``NAME``, ``TITLE``, ``phases`` and ``run``.

``phases(system, params)`` lists the worker jobs one repetition needs for a
system, in order, all on the same directory: a persistent system's cold read
runs in a fresh process after the writer has exited. ``run(phase, system,
params, rec, fixtures)`` executes one job inside a worker and records metrics
on ``rec``. ``fixtures(params, directory)`` (optional) prepares shared inputs
once per suite run in the parent (the encoded bytes every system stores).
"""

from benchmarks.workloads import (
    bulk,
    commit_latency,
    gc,
    hierarchy,
    history,
    history_scale,
    huge_commit,
    per_call,
    s3,
    small_chunks,
    small_concurrent,
)

__all__ = ["WORKLOADS"]

WORKLOADS = {
    module.NAME: module
    for module in (per_call, small_concurrent, bulk, small_chunks, history, hierarchy,
                   commit_latency, huge_commit, history_scale, gc, s3)
}

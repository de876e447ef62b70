"""Side-by-side benchmarks: versionstore against icechunk, zarr's own stores and raw LMDB.

Run ``python -m benchmarks`` (or ``scripts/bench``) from the repository root;
``--help`` lists the workloads, systems and size parameters, ``--quick`` is
the one-minute smoke run. Every (workload, system, repetition) runs in its own
worker process (``benchmarks.worker``) so that peak RSS is per system and a
"cold" read really starts with nothing cached in the process. Results print
as a table of medians with min–max and ratios against each anchor, and are
written as JSON under ``benchmarks/results/`` for comparison between runs.

These are measurements, not tests: nothing here asserts on a timing.
"""

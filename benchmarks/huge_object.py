"""``python -m benchmarks.huge_object``: a huge session on object storage (issue 11, memory).

The ``huge`` workload measures LMDB; its values are tiny and inline, which
on object storage stage as log records, not as located writes. Here a
session on object storage (obstore's ``LocalStore`` under a temporary
directory: no server, so the figures are the engine's own) stages N chunks
of 640 bytes — above the 512-byte inline limit, so located writes, as
zarr's chunks are — with ``Session.set_values`` batches of 1,000, then
commits them. Printed per N: the staging and commit times (s) and the peak
anonymous resident memory (``RssAnon``, MiB) while staging and during the
commit. The issue's targets: a commit of 10^6 changed chunks under 300 MiB,
10^7 under 500 MiB. Each N runs in its own process. Nothing asserts a
duration.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

from benchmarks.measure import AnonymousPeak

BATCH = 1000
VALUE_BYTES = 640


def _one(chunks: int) -> str:
    """Stage and commit ``chunks`` located chunks; one line of figures."""
    from obstore.store import LocalStore

    import versionstore as vs

    with tempfile.TemporaryDirectory(prefix="vs-huge-object-") as directory:
        repo = vs.Repository.create(vs.object_storage(LocalStore(directory), "repo"))
        session = repo.writable_session("main")
        start = time.perf_counter()
        with AnonymousPeak() as staging:
            for first in range(0, chunks, BATCH):
                session.set_values([
                    (f"a/c/{i}", i.to_bytes(8, "little") * (VALUE_BYTES // 8))
                    for i in range(first, min(chunks, first + BATCH))
                ])
        staged = time.perf_counter() - start
        start = time.perf_counter()
        with AnonymousPeak() as commit:
            session.commit(f"{chunks} chunks")
        committed = time.perf_counter() - start
        repo.close()
    return (f"N={chunks:,}: stage {staged:.1f} s (peak anon {staging.peak_mib:.0f} MiB), "
            f"commit {committed:.1f} s (peak anon {commit.peak_mib:.0f} MiB)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.huge_object",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="?", default="1e4,1e5",
                        help="comma-separated chunk counts (default 1e4,1e5)")
    parser.add_argument("--one", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        print(_one(int(args.one)), flush=True)
        return
    for size in args.sizes.split(","):
        subprocess.run([sys.executable, "-m", "benchmarks.huge_object", "--one", size],
                       check=True)


if __name__ == "__main__":
    main()

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


def _value(i: int) -> bytes:
    return i.to_bytes(8, "little") * (VALUE_BYTES // 8)


def _stage_directly(directory: str, session: object, chunks: int) -> None:
    """Write the located writes of ``chunks`` keys straight into ``LocalStore``'s directory.

    The same names and frames a ``set`` stores (``versionstore.located``), in
    the session's open epoch, without the per-request cost of obstore: how
    10^6 chunks stage in minutes instead of half an hour on a loaded machine.
    The commit that follows is the one measured, and is exactly the same.
    """
    import os  # noqa: PLC0415 - only for this mode

    from versionstore.codec import encode_chunk  # noqa: PLC0415
    from versionstore.located import located_name, next_stamp  # noqa: PLC0415

    session_id = session.session_id  # type: ignore[attr-defined]
    session.set_values([(f"a/c/{i}", _value(i)) for i in range(5)])  # type: ignore[attr-defined]
    for i in range(5, chunks):
        value = _value(i)
        chunk_id, frame = encode_chunk(value)
        name = located_name(session_id, 0, f"a/c/{i}", next_stamp(), chunk_id, len(value))
        assert name is not None
        path = os.path.join(directory, "repo", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as file:
            file.write(frame)


def _one(chunks: int, *, direct: bool = False) -> str:
    """Stage and commit ``chunks`` located chunks; one line of figures."""
    import shutil  # noqa: PLC0415

    from obstore.store import LocalStore

    import versionstore as vs

    directory = tempfile.mkdtemp(prefix="vs-huge-object-")
    try:
        repo = vs.Repository.create(vs.object_storage(LocalStore(directory), "repo"))
        session = repo.writable_session("main")
        start = time.perf_counter()
        with AnonymousPeak() as staging:
            if direct:
                _stage_directly(directory, session, chunks)
            else:
                for first in range(0, chunks, BATCH):
                    session.set_values([(f"a/c/{i}", _value(i))
                                        for i in range(first, min(chunks, first + BATCH))])
        staged = time.perf_counter() - start
        start = time.perf_counter()
        with AnonymousPeak() as commit:
            session.commit(f"{chunks} chunks")
        committed = time.perf_counter() - start
        view = repo.readonly_session(branch="main")
        assert view.value(f"a/c/{chunks - 1}") == _value(chunks - 1)
        repo.close()
        how = " (staged directly)" if direct else ""
        line = (f"N={chunks:,}: stage{how} {staged:.1f} s (peak anon {staging.peak_mib:.0f} "
                f"MiB), commit {committed:.1f} s (peak anon {commit.peak_mib:.0f} MiB)")
        print(line, flush=True)  # before the clean-up, which takes minutes at 10^6
        return line
    finally:
        # ``rm`` rather than ``shutil.rmtree``, which lists a folder of 10^6 entries
        # into memory and took longer than the run itself.
        if shutil.which("rm"):
            subprocess.run(["rm", "-rf", directory], check=False)
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.huge_object",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="?", default="1e4,1e5",
                        help="comma-separated chunk counts (default 1e4,1e5)")
    parser.add_argument("--direct", action="store_true",
                        help="write the located writes straight into the store's directory "
                        "(same names and frames; only the commit is measured the same way)")
    parser.add_argument("--one", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        _one(int(args.one), direct=args.direct)
        return
    for size in args.sizes.split(","):
        subprocess.run([sys.executable, "-m", "benchmarks.huge_object", "--one", size,
                        *(["--direct"] if args.direct else [])], check=True)


if __name__ == "__main__":
    main()

"""Instructions per chunk of issue 13's small-chunk write, counted by valgrind (callgrind).

The ``small64`` workload's wall time moves with the host and with whatever
else runs (this VM's speed moves by 2x between moments), and through zarr the
process is bound by one core (its event loop and encoder threads share the
GIL), so its time follows the instructions it runs. Counted under
callgrind, those are exact and repeatable: the same code gives the same
count on a busy machine and a quiet one.

For each system, one child process under callgrind writes ``--chunks``
chunks of 4 KiB (float32, zarr's default codecs) with one ``array[:] = data``
at ``async.concurrency`` 64, as ``small64`` does, and a second child does
everything but that (imports, opening the store); their difference over the
chunks is what one chunk costs, zarr's own work included:

- ``zarr-mem``: zarr's ``MemoryStore`` (the ceiling: zarr's work and nothing else);
- ``lmdb-zarr`` / ``lmdb-zarr-ordered``: ``benchmarks.lmdb_floor`` (one
  py-lmdb transaction per ``set``, without and with the flush a repository makes);
- ``vs-lmdb-write``: a writable versionstore session on LMDB, the write alone;
- ``vs-lmdb``: the same, then ``commit`` (the ``small64`` row).

    python -m benchmarks.instructions [--chunks 1024] [--systems ...] [--top 12]

Prints instructions per chunk and the ratio to ``zarr-mem``, then, for each
system, the functions whose instructions per chunk grew most against
``zarr-mem`` (from ``callgrind_annotate``; ``--top 0`` skips them). Needs
valgrind (Debian: ``apt-get install valgrind``); a run of the five systems
at 1,024 chunks takes about ten minutes on two cores. Nothing is written
to the results; ``docs/benchmarks.md`` records the counts.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SYSTEMS = ("zarr-mem", "lmdb-zarr", "lmdb-zarr-ordered", "vs-lmdb-write", "vs-lmdb")
CHUNK_ELEMS = 1024  # 4 KiB of float32, as small64
CONCURRENCY = 64
#: valgrind cannot reserve the floor store's 1 TiB map; 4 GiB holds any run here.
_VALGRIND_MAP = 4 << 30


def _child(system: str, chunks: int, directory: Path) -> None:
    """Open ``system``'s store in ``directory`` and, if ``chunks``, write them (and commit)."""
    import zarr

    from benchmarks.data import normal_block

    session = None
    if system == "zarr-mem":
        from zarr.storage import MemoryStore
        store = MemoryStore()
    elif system.startswith("lmdb-zarr"):
        from benchmarks.lmdb_floor import LMDBFloorStore
        store = LMDBFloorStore(directory / "floor", ordered=system == "lmdb-zarr-ordered",
                               map_size=_VALGRIND_MAP)
    else:
        import versionstore as vs
        repo = vs.Repository.create(vs.lmdb_storage(directory / "repo"))
        session = repo.writable_session("main")
        store = session.store
    if not chunks:
        return
    data = normal_block(chunks * CHUNK_ELEMS, seed=chunks)
    with zarr.config.set({"async.concurrency": CONCURRENCY}):
        array = zarr.create_array(store, name="s", shape=data.shape, chunks=(CHUNK_ELEMS,),
                                  dtype="float32")
        array[:] = data
    if system == "vs-lmdb" and session is not None:
        session.commit(f"{chunks} chunks")


def _count(system: str, chunks: int, work: Path) -> subprocess.Popen[bytes]:
    """Start ``_child(system, chunks)`` under callgrind; its output file is ``_out(...)``."""
    directory = work / f"{system}.{chunks}"
    directory.mkdir()
    env = {**os.environ, "PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={_out(work, system, chunks)}",
         sys.executable, "-m", "benchmarks.instructions", "--child", system, str(chunks),
         str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def _out(work: Path, system: str, chunks: int) -> Path:
    return work / f"{system}.{chunks}.callgrind"


def _total(path: Path) -> int:
    """The instructions a callgrind output file counted (its ``totals:`` line)."""
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def _functions(path: Path) -> dict[str, int]:
    """Instructions per function (self cost), from ``callgrind_annotate``."""
    text = subprocess.run(["callgrind_annotate", "--threshold=100", str(path)],
                          capture_output=True, text=True, check=True).stdout
    found: dict[str, int] = {}
    for line in text.splitlines():
        match = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)", line)
        if match and "PROGRAM TOTALS" not in match.group(2):
            name = re.sub(r"\s*\[.*\]$", "", match.group(2)).strip()
            name = re.sub(r"^.*/(Python|Objects|Modules|Include)/", r"\1/", name)
            found[name] = found.get(name, 0) + int(match.group(1).replace(",", ""))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=1024, help="chunks written (default 1024)")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help=f"comma-separated, of {', '.join(SYSTEMS)}")
    parser.add_argument("--top", type=int, default=12,
                        help="functions listed per system (default 12; 0: none)")
    parser.add_argument("--child", nargs=3, metavar=("SYSTEM", "CHUNKS", "DIR"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child[0], int(args.child[1]), Path(args.child[2]))
        return 0
    systems = [s for s in args.systems.split(",") if s]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown or args.chunks < 1:
        parser.error(f"unknown systems {unknown}" if unknown else "--chunks must be at least 1")
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (Debian: apt-get install valgrind)")
    if "zarr-mem" not in systems:
        systems.insert(0, "zarr-mem")  # every ratio is against it
    work = Path(tempfile.mkdtemp(prefix="vs-instructions-"))
    try:
        per_chunk: dict[str, float] = {}
        functions: dict[str, dict[str, float]] = {}
        for system in systems:
            runs = [_count(system, n, work) for n in (0, args.chunks)]
            for run in runs:
                _, err = run.communicate()
                if run.returncode:
                    raise RuntimeError(f"{system}: {err.decode(errors='replace')[-2000:]}")
            base, full = (_out(work, system, n) for n in (0, args.chunks))
            per_chunk[system] = (_total(full) - _total(base)) / args.chunks
            if args.top:
                before, after = _functions(base), _functions(full)
                functions[system] = {name: (after.get(name, 0) - before.get(name, 0)) / args.chunks
                                     for name in set(before) | set(after)}
            print(f"{system}: {per_chunk[system]:,.0f} instructions per chunk", flush=True)
        ceiling = per_chunk["zarr-mem"]
        print(f"\n{args.chunks} chunks of 4 KiB, async.concurrency {CONCURRENCY}\n")
        print("| system | instructions per chunk | above zarr-mem | zarr-mem / system |")
        print("|---|---|---|---|")
        for system in systems:
            count = per_chunk[system]
            print(f"| {system} | {count:,.0f} | {count - ceiling:+,.0f} | {ceiling / count:.3f}× |")
        for system in systems if args.top else ():
            if system == "zarr-mem":
                continue
            grown = sorted(((cost - functions["zarr-mem"].get(name, 0), name)
                            for name, cost in functions[system].items()), reverse=True)
            print(f"\n{system}: functions grown most against zarr-mem (instructions per chunk)")
            for cost, name in grown[:args.top]:
                print(f"  {cost:9,.0f}  {name[-110:]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The main job: versioned Zarr data on the embedded LMDB default, end to end.

Run with ``scripts/demo [directory]``. It creates a repository, writes an
array through zarr, commits, changes it, commits, branches, prints the log and
a diff, and reads an old version back — the tour a new user takes. The
repository stays where it was made (``directory``, relative to the current
directory, or a new temporary directory), and the tour ends with the commands
that explore it further.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import zarr

import versionstore as vs

__all__ = ["cli_command", "main", "run"]


def run(directory: Path) -> None:
    """Run the tour in ``directory`` (a new repository is created there)."""
    storage = vs.lmdb_storage(directory)
    repo = vs.Repository.create(storage)
    print(f"created repository at {directory}")

    session = repo.writable_session("main")
    temperature = zarr.create_array(
        session.store, name="climate/temperature", shape=(365, 180), chunks=(30, 45),
        dtype="f4", attributes={"units": "degC"},
    )
    baseline = np.linspace(-5, 30, 365 * 180, dtype="f4").reshape(365, 180)
    temperature[:] = baseline
    first = session.commit("baseline temperatures", metadata={"source": "demo", "run": 1})
    print(f"committed {first}: baseline ({baseline.nbytes} bytes in {temperature.nchunks} chunks)")

    session = repo.writable_session("main")
    temperature = zarr.open_array(session.store, path="climate/temperature")
    temperature[100:130, :45] = np.asarray(temperature[100:130, :45]) + 2.5
    print("staged changes:", session.status())
    second = session.commit("heatwave correction for days 100-129", metadata={"run": 2})
    print(f"committed {second}")

    repo.create_branch("experiment", snapshot_id=second)
    trial = repo.writable_session("experiment")
    zarr.open_array(trial.store, path="climate/temperature")[:, 90:] = 0
    zarr.create_array(trial.store, name="climate/mask", shape=(180,), dtype="bool")[:] = True
    trial.commit("zero the eastern half; add a mask")
    repo.create_tag("v1.0", snapshot_id=second)

    print("\nlog of main:")
    for info in repo.ancestry(branch="main"):
        stamp = info.written_at.strftime("%Y-%m-%d %H:%M:%S %Z")
        print(f"  {info.id}  {stamp}  {info.message}  {info.metadata or ''}")

    print("\ndiff main -> experiment:")
    print("  " + str(repo.diff(from_branch="main", to_branch="experiment")).replace("\n", "\n  "))

    old = repo.readonly_session(snapshot_id=first)
    old_values = np.asarray(
        zarr.open_array(old.store, path="climate/temperature", mode="r")[100:130, :45]
    )
    now_values = np.asarray(zarr.open_array(
        repo.readonly_session(tag="v1.0").store, path="climate/temperature", mode="r"
    )[100:130, :45])
    assert np.array_equal(old_values, baseline[100:130, :45])
    assert np.allclose(now_values - old_values, 2.5)
    print(f"\ntime travel: day 100 at {first[:8]}… was {old_values[0, 0]:.3f} degC, "
          f"at v1.0 it is {now_values[0, 0]:.3f} degC")
    print(f"branches: {sorted(repo.list_branches())}, tags: {sorted(repo.list_tags())}")
    repo.close()


def cli_command() -> str:
    """How to call the ``versionstore`` command from this shell, as text to paste.

    ``versionstore`` when it is on ``PATH`` for this interpreter, else the
    script beside the interpreter (a ``.venv`` that is not activated), else
    ``python -m versionstore.cli``.
    """
    beside = Path(sys.executable).parent / "versionstore"
    on_path = shutil.which("versionstore")
    if on_path is not None and Path(on_path).resolve() == beside.resolve():
        return "versionstore"
    if beside.exists():
        return shlex.quote(str(beside))
    return f"{shlex.quote(sys.executable)} -m versionstore.cli"


def _explore(directory: Path) -> None:
    command, where = cli_command(), shlex.quote(str(directory))
    print(f"\nthe demo repository is kept at {directory}")
    print("explore it:")
    for args in ["log", "log --graph", "branch list", "tag list",
                 "diff {where} main experiment", "du", "verify"]:
        line = args.format(where=where) if "{where}" in args else f"{args} {where}"
        print(f"  {command} {line}")
    print(f"  or in Python: vs.Repository.open({str(directory)!r})")
    print(f"remove it with: rm -rf {where}")


def main() -> None:
    """Command-line entry: ``python -m versionstore.demo [directory]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", help="where to create the repository, "
                        "relative to the current directory (default: a new temporary "
                        "directory); it is kept afterwards")
    args = parser.parse_args()
    if args.directory:
        directory = Path(args.directory).absolute()
        storage = vs.lmdb_storage(directory)
        if vs.Repository.exists(storage):
            parser.exit(1, f"versionstore.demo: {directory} already holds a repository; "
                        "give a new directory (or remove that one)\n")
        # A file, or a directory of other files: the message Repository.create gives,
        # as one line rather than a traceback.
        problem = storage.creation_problem()
        if problem is not None:
            parser.exit(1, f"versionstore.demo: {problem}\n")
    else:
        directory = Path(tempfile.mkdtemp(prefix="versionstore-demo-")) / "repo"
    try:
        run(directory)
        _explore(directory)
    except KeyboardInterrupt:
        # One line and 128 + SIGINT, as the versionstore command: what was committed
        # before the interrupt stays in the repository. zarr's coroutine cut short warns
        # that it was never awaited as the interpreter exits: not the user's concern.
        # Nor are the chunk tasks zarr's event loop still held: interrupted during an
        # array write, they are destroyed pending once zarr closes that loop at exit
        # ("Task was destroyed but it is pending!", logged by asyncio) and fail to
        # finish closing ("Exception ignored in: <coroutine ...>": unraisable).
        warnings.simplefilter("ignore", RuntimeWarning)
        logging.getLogger("asyncio").disabled = True
        sys.unraisablehook = lambda _: None
        parser.exit(130, f"versionstore.demo: interrupted; the repository is at {directory}\n")


if __name__ == "__main__":
    main()

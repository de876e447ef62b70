"""The ``versionstore`` command: look after a repository from the shell.

::

    versionstore log REPO [--branch main | --tag T | --snapshot ID] [--limit N] [--graph]
    versionstore branches REPO        versionstore tags REPO
    versionstore merge REPO SOURCE [--into main] [--on-conflict raise|ours|theirs] [--no-ff]
    versionstore cherry-pick REPO SNAPSHOT [--onto main] [--on-conflict ...]
    versionstore revert REPO SNAPSHOT [--branch main] [--on-conflict ...]
    versionstore squash REPO --since SNAPSHOT [--branch main] [--message M]
    versionstore ops-log REPO [--limit N]
    versionstore diff REPO FROM TO    (each a branch, tag or snapshot id)
    versionstore sessions REPO        (writable sessions that can be resumed)
    versionstore verify REPO          versionstore gc REPO [--dry-run]

REPO is an LMDB repository directory. The only module that reads ``sys.argv``.
``versionstore --version`` prints the installed version. Like git, the command
stops quietly when the reader of its output goes away (``versionstore log R |
head -1``): no traceback, exit status 141 (128 + SIGPIPE), as a shell reports
for git.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence

from versionstore import __version__
from versionstore.errors import MergeConflictError, VersionStoreError
from versionstore.history import SnapshotInfo
from versionstore.ids import object_id_from_text
from versionstore.repository import Repository
from versionstore.storage import lmdb_storage

__all__ = ["EXIT_BROKEN_PIPE", "main"]

#: The status git ends with when its reader goes away (killed by SIGPIPE: 128 + 13).
EXIT_BROKEN_PIPE = 141


def _version_args(repo: Repository, name: str, side: str) -> dict[str, str]:
    """Interpret ``name`` as a branch, then a tag, then a snapshot id."""
    if name in repo.list_branches():
        return {f"{side}_branch": name}
    if name in repo.list_tags():
        return {f"{side}_tag": name}
    try:
        object_id_from_text(name)
    except ValueError:
        raise VersionStoreError(f"{name!r} is not a branch, a tag or a snapshot id") from None
    return {f"{side}_snapshot_id": name}


def _describe(info: SnapshotInfo) -> str:
    stamp = info.written_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    metadata = f"  {json.dumps(info.metadata, default=repr)}" if info.metadata else ""
    return f"{info.id}  {stamp}  {info.message}{metadata}"


def _log(repo: Repository, args: argparse.Namespace) -> None:
    history = repo.ancestry(branch=args.branch, tag=args.tag, snapshot_id=args.snapshot,
                            all_parents=args.graph)
    lines = _graph(history) if args.graph else (_describe(info) for info in history)
    for count, line in enumerate(lines):
        if args.limit is not None and count >= args.limit:
            break
        print(line)


def _graph(history: Iterator[SnapshotInfo]) -> Iterator[str]:
    r"""Lines of ``log --graph``: one column per line of descent, as ``git log --graph``.

    ``*`` marks a snapshot, ``|`` a line passing by, ``\`` a merge's second
    parent branching off, ``/`` two lines of descent meeting again.
    """
    columns: list[str] = []
    for info in history:
        if info.id not in columns:
            columns.append(info.id)
        col = columns.index(info.id)
        cells = " ".join("*" if i == col else "|" for i in range(len(columns)))
        yield f"{cells}  {_describe(info)}"
        parents = list(info.parent_ids)
        columns[col:col + 1] = parents[:1]
        if len(parents) > 1:
            columns.insert(col + 1, parents[1])
            yield " ".join("|" for _ in range(col + 1)) + "\\"
        while True:
            seen: dict[str, int] = {}
            duplicate = next((j for j, c in enumerate(columns) if seen.setdefault(c, j) != j),
                             None)
            if duplicate is None:
                break
            del columns[duplicate]
            yield " ".join("|" for _ in range(duplicate)) + "/"


def _print_conflicts(error: MergeConflictError) -> None:
    for conflict in error.conflicts:
        where = f"  {conflict.coordinates}" if conflict.coordinates is not None else ""
        print(f"conflict  {conflict.kind}  {conflict.path}  {conflict.key}{where}",
              file=sys.stderr)


def _ops_log(repo: Repository, args: argparse.Namespace) -> None:
    for count, entry in enumerate(repo.ops_log()):
        if args.limit is not None and count >= args.limit:
            break
        stamp = entry.written_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        message = f"  {entry.message}" if entry.message else ""
        print(f"{stamp}  {entry.kind}  {entry.ref_type} {entry.name}  "
              f"{entry.old or '-'} -> {entry.new or '-'}{message}")


def _edit(repo: Repository, args: argparse.Namespace) -> None:
    if args.command == "merge":
        source = _version_args(repo, args.source, "from")
        tip = repo.merge(source.get("from_branch"), args.into,
                         from_tag=source.get("from_tag"),
                         from_snapshot_id=source.get("from_snapshot_id"), message=args.message,
                         on_conflict=args.on_conflict, fast_forward=not args.no_ff)
    elif args.command == "cherry-pick":
        tip = repo.cherry_pick(args.snapshot, args.onto, message=args.message,
                               on_conflict=args.on_conflict)
    elif args.command == "revert":
        tip = repo.revert(args.snapshot, args.branch, message=args.message,
                          on_conflict=args.on_conflict)
    else:
        tip = repo.squash(args.branch, since_snapshot_id=args.since, message=args.message)
    print(tip)


def _diff(repo: Repository, args: argparse.Namespace) -> None:
    versions = {**_version_args(repo, args.old, "from"), **_version_args(repo, args.new, "to")}
    print(repo.diff(**versions))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="versionstore", description="Inspect and maintain a "
                                     "versionstore repository (an LMDB directory).")
    parser.add_argument("--version", action="version", version=f"versionstore {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    log = commands.add_parser("log", help="snapshots, newest first")
    log.add_argument("repo")
    where = log.add_mutually_exclusive_group()
    where.add_argument("--branch")
    where.add_argument("--tag")
    where.add_argument("--snapshot")
    log.add_argument("--limit", type=int)
    log.add_argument("--graph", action="store_true",
                     help="the whole DAG, merges drawn as a graph (like git log --graph)")

    merge = commands.add_parser("merge", help="three-way merge a branch, tag or snapshot")
    merge.add_argument("repo")
    merge.add_argument("source", help="branch, tag or snapshot id to merge")
    merge.add_argument("--into", default="main", help="the branch to merge into (main)")
    merge.add_argument("--no-ff", action="store_true", help="always make a merge snapshot")
    for name, text, branch_option in [
        ("cherry-pick", "apply one snapshot's change to a branch", "--onto"),
        ("revert", "undo one snapshot's change on a branch", "--branch"),
    ]:
        command = commands.add_parser(name, help=text)
        command.add_argument("repo")
        command.add_argument("snapshot")
        command.add_argument(branch_option, default="main")
        command.add_argument("--on-conflict", default="raise",
                             choices=["raise", "ours", "theirs"])
        command.add_argument("--message")
    merge.add_argument("--on-conflict", default="raise", choices=["raise", "ours", "theirs"])
    merge.add_argument("--message")

    squash = commands.add_parser("squash", help="make the snapshots after one into one")
    squash.add_argument("repo")
    squash.add_argument("--since", required=True, help="the snapshot the squash starts after")
    squash.add_argument("--branch", default="main")
    squash.add_argument("--message")

    ops = commands.add_parser("ops-log", help="every ref change, newest first")
    ops.add_argument("repo")
    ops.add_argument("--limit", type=int)

    for name, text in [("branches", "list branches and their tips"), ("tags", "list tags"),
                       ("sessions", "writable sessions with staged changes"),
                       ("verify", "check every reachable object")]:
        commands.add_parser(name, help=text).add_argument("repo")

    diff = commands.add_parser("diff", help="what changed between two versions")
    diff.add_argument("repo")
    diff.add_argument("old", help="branch, tag or snapshot id")
    diff.add_argument("new", help="branch, tag or snapshot id")

    gc = commands.add_parser("gc", help="delete objects no version can reach")
    gc.add_argument("repo")
    gc.add_argument("--dry-run", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    0 on success, 1 when ``verify`` finds problems, 2 on a versionstore error
    (printed to stderr), 141 when standard output was closed early.
    """
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        status = _run(args)
        sys.stdout.flush()  # a closed pipe shows up here at the latest, not at exit
    except BrokenPipeError:
        # The reader (head, less) has gone: stop like git does, without a traceback.
        # Python would flush stdout again at exit and fail once more, so point it at
        # /dev/null first (the recipe in the signal module's documentation).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return status


def _run(args: argparse.Namespace) -> int:
    try:
        with Repository.open(lmdb_storage(args.repo)) as repo:
            if args.command == "log":
                _log(repo, args)
            elif args.command == "branches":
                for name in sorted(repo.list_branches()):
                    print(f"{name}  {repo.lookup_branch(name)}")
            elif args.command == "tags":
                for name in sorted(repo.list_tags()):
                    print(f"{name}  {repo.lookup_tag(name)}")
            elif args.command == "sessions":
                for session_id, branch in sorted(repo.resumable_sessions().items()):
                    print(f"{session_id}  {branch}")
            elif args.command == "diff":
                _diff(repo, args)
            elif args.command in ("merge", "cherry-pick", "revert", "squash"):
                _edit(repo, args)
            elif args.command == "ops-log":
                _ops_log(repo, args)
            elif args.command == "verify":
                report = repo.verify()
                for problem in report.problems:
                    print(problem)
                print(f"{report.objects_checked} objects checked, "
                      f"{len(report.problems)} problem(s)")
                return 0 if report.ok else 1
            elif args.command == "gc":
                summary = repo.garbage_collect(dry_run=args.dry_run)
                verb = "would delete" if summary.dry_run else "deleted"
                print(f"{summary.reachable} reachable objects; {verb} {summary.deleted}")
    except MergeConflictError as exc:
        print(f"versionstore: {exc}", file=sys.stderr)
        _print_conflicts(exc)
        return 2
    except (VersionStoreError, ValueError) as exc:
        print(f"versionstore: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

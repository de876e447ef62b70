"""The ``versionstore`` command: look after a repository from the shell.

::

    versionstore log REPO [--branch main | --tag T | --snapshot ID] [--limit N]
    versionstore branches REPO        versionstore tags REPO
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
from collections.abc import Sequence

from versionstore import __version__
from versionstore.errors import VersionStoreError
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


def _log(repo: Repository, args: argparse.Namespace) -> None:
    history = repo.ancestry(branch=args.branch, tag=args.tag, snapshot_id=args.snapshot)
    for count, info in enumerate(history):
        if args.limit is not None and count >= args.limit:
            break
        stamp = info.written_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        metadata = f"  {json.dumps(info.metadata, default=repr)}" if info.metadata else ""
        print(f"{info.id}  {stamp}  {info.message}{metadata}")


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
    except VersionStoreError as exc:
        print(f"versionstore: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

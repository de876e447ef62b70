"""The ``versionstore`` command: look after a repository from the shell.

Built on click, with rich tables and progress bars::

    versionstore log REPO [--branch B | --tag T | --snapshot ID] [--limit N] [--json]
    versionstore show REPO SNAPSHOT          versionstore diff REPO FROM TO [--json]
    versionstore status REPO SESSION_ID      versionstore sessions REPO [--discard ID]
    versionstore branch list|create|delete   versionstore tag list|create|delete
    versionstore du REPO [--history]         versionstore expire REPO --older-than 30d
    versionstore gc REPO [--delete]          versionstore compact REPO
    versionstore verify REPO                 versionstore purge REPO PATH --yes
    versionstore merge REPO SOURCE [--into main] [--on-conflict raise|ours|theirs] [--no-ff]
    versionstore cherry-pick REPO SNAPSHOT   versionstore revert REPO SNAPSHOT
    versionstore squash REPO --since SNAPSHOT versionstore ops-log REPO [--limit N] [--json]
    versionstore log REPO --graph
    versionstore clone SRC DST [--branch B]... [--tag T]...
    versionstore push REPO REMOTE [--branch main] [--remote-branch B] [--force]
    versionstore fetch REPO REMOTE [--branch main] [--into origin/main] [--force]

REPO is an LMDB repository directory; clone, push and fetch take repository
URLs (``versionstore.urls``: a directory, ``lmdb://PATH``, ``s3://BUCKET/PREFIX``
with ``--endpoint-url``, ``--region``, ``--anonymous``, ``--allow-http``).
Exit status: 0 success; 1 a user error (one line on stderr naming what was
wrong, no traceback) or ``verify`` finding problems; 2 a usage error (click's
message); 130 on Ctrl-C (one line, ``versionstore: interrupted``, no
traceback); 141 when the reader of the output went away
(``versionstore log R | head -1``), as git. The only module that reads
``sys.argv``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from versionstore import __version__
from versionstore.arguments import looks_like_url
from versionstore.clone import copy_repository
from versionstore.errors import MergeConflictError, SnapshotNotFoundError, VersionStoreError
from versionstore.history import Diff, SnapshotInfo
from versionstore.repository import Repository
from versionstore.storage import RepositoryStorage, lmdb_storage
from versionstore.transfer import TransferSummary
from versionstore.urls import ObjectStorageOptions, storages_from_urls

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_INTERRUPTED", "EXIT_USER_ERROR", "cli", "main"]

#: The status git ends with when its reader goes away (killed by SIGPIPE: 128 + 13).
EXIT_BROKEN_PIPE = 141
#: A user error: a missing repository, an unknown branch, a refused operation.
EXIT_USER_ERROR = 1
#: Ctrl-C (SIGINT), as git and the shells report it: 128 + 2.
EXIT_INTERRUPTED = 130
_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class _UserError(Exception):
    """A one-line message for stderr, exit status 1."""


def _out() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _echo(text: str = "") -> None:
    click.echo(text)


def _json(value: Any) -> None:
    """Print ``value`` as JSON (RFC 8259): a NaN or infinite float is written as a string."""
    click.echo(json.dumps(_finite(value), indent=2, default=str, allow_nan=False))


def _finite(value: Any) -> Any:
    """``value`` with each NaN or infinite float as ``"NaN"`` / ``"Infinity"`` / ``"-Infinity"``.

    Snapshot metadata may hold them (msgpack does); Python's ``json`` would
    write bare ``NaN``, which strict parsers (``JSON.parse``, Go, serde) refuse.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {_key_text(key): _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _key_text(key: Any) -> str:
    """A metadata key as JSON holds it: a str (JSON's own spelling for numbers and constants)."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool | int | float):
        spelled = _finite(key)  # a non-finite float: its name already
        return spelled if isinstance(spelled, str) else json.dumps(spelled)
    return repr(key)  # a tuple, bytes …: msgpack keeps them, JSON has no such key


def _metadata_text(metadata: dict[str, Any]) -> str:
    """Snapshot metadata on one line, for people (``repr`` for what JSON cannot say)."""
    return json.dumps(_finite(metadata), default=repr)


def _when(text: str) -> datetime:
    """``30d``, ``12h``, ``2w`` (that long ago) or an ISO time (UTC unless it says)."""
    match = _DURATION.fullmatch(text.strip())
    if match:
        try:
            amount, unit = int(match.group(1)), match.group(2)
            return datetime.now(UTC) - timedelta(**{_UNITS[unit]: amount})
        except (OverflowError, ValueError):  # ValueError: past Python's int digit limit
            raise click.BadParameter(f"{text!r} reaches back before the year 1") from None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is neither a duration (30d, 12h, 2w) nor an ISO "
                                 "time (2026-01-31T12:00)") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _open(path: str) -> Repository:
    # Taken as a path, "s3://bucket/x" would be reported as a missing "s3:/bucket/x".
    if looks_like_url(path) and not os.path.exists(path):
        raise _UserError(f"{path!r} is a URL; this command takes an LMDB repository "
                         "directory (URLs go to clone, push and fetch: `versionstore clone "
                         f"{path} DIR` copies it to a directory this command reads)")
    if os.path.isfile(path):
        raise _UserError(f"{path!r} is a file, not a repository directory")
    if os.path.isdir(path) and not os.access(path, os.R_OK | os.X_OK):
        raise _UserError(f"cannot read the directory {path!r}: permission denied")
    return Repository.open(lmdb_storage(path))


@contextmanager
def _progress(description: str) -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar on stderr (only on a terminal); yields a ``(phase, done, total)``."""
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}"
                  "/{task.total}"), TimeElapsedColumn(), console=console, transient=True,
                  disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=None)

        def update(phase: str, done: int, total: int) -> None:
            bar.update(task, description=phase, completed=done, total=total)

        yield update


def _version(repo: Repository, name: str, side: str = "") -> dict[str, str]:
    """Interpret ``name`` as a branch, then a tag, then a snapshot id."""
    prefix = f"{side}_" if side else ""
    if name in repo.list_branches():
        return {f"{prefix}branch": name}
    if name in repo.list_tags():
        return {f"{prefix}tag": name}
    try:
        repo.lookup_snapshot(name)  # a full id or a unique prefix of 8+ characters
    except SnapshotNotFoundError as exc:
        raise _UserError(f"{name!r} is not a branch, a tag or a snapshot id ({exc})") from None
    return {f"{prefix}snapshot_id": name}


def _snapshot(repo: Repository, name: str) -> str:
    """The snapshot id ``name`` (a branch, a tag or a snapshot id) stands for."""
    return next(_ancestry(repo, _version(repo, name))).id


def _ancestry(repo: Repository, version: dict[str, str]) -> Iterator[SnapshotInfo]:
    """The ancestry of what ``_version`` found (a branch, tag or snapshot)."""
    return repo.ancestry(branch=version.get("branch"), tag=version.get("tag"),
                         snapshot_id=version.get("snapshot_id"))


def _info(info: SnapshotInfo) -> dict[str, Any]:
    return {"id": info.id, "parent_id": info.parent_id, "parent_ids": list(info.parent_ids),
            "written_at": info.written_at.isoformat(), "message": info.message,
            "metadata": info.metadata}


def _diff_json(diff: Diff) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for name in ("new_groups", "new_arrays", "deleted_groups", "deleted_arrays",
                 "updated_groups", "updated_arrays", "updated_keys"):
        document[name] = sorted(getattr(diff, name))
    document["updated_chunks"] = {path: sorted(list(c) for c in coords)
                                  for path, coords in sorted(diff.updated_chunks.items())}
    document["chunks"] = {}  # per array: which chunks were added, changed, removed
    for path, coords in sorted(diff.updated_chunks.items()):
        added = diff.new_chunks.get(path, frozenset())
        removed = diff.deleted_chunks.get(path, frozenset())
        document["chunks"][path] = {
            "added": sorted(list(c) for c in added),
            "changed": sorted(list(c) for c in coords - added - removed),
            "removed": sorted(list(c) for c in removed)}
    document["virtual_keys"] = sorted(diff.virtual_keys)
    return document


def _diff_table(diff: Diff) -> None:
    if diff.is_empty():
        _echo("(no changes)")
        return
    for name in ("new_groups", "new_arrays", "deleted_groups", "deleted_arrays",
                 "updated_groups", "updated_arrays", "updated_keys"):
        if getattr(diff, name):
            _echo(f"{name}: {', '.join(sorted(getattr(diff, name)))}")
    if diff.updated_chunks:
        table = Table("array", "chunks added", "changed", "removed")
        for path in sorted(diff.updated_chunks):
            table.add_row(path, *map(str, diff.chunk_counts(path)))
        _out().print(table)
    if diff.virtual_keys:
        _echo(f"virtual_keys: {len(diff.virtual_keys)} key(s) now reference external files")


def _size(count: int | None) -> str:
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(count)  # pragma: no cover


# Checked when opened (``_open``): a file or an unreadable directory is a user error
# (status 1, one line) like a missing repository, not a usage error.
repo_argument = click.argument("repo", type=click.Path(readable=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="versionstore",
                      message="%(prog)s %(version)s")
def cli() -> None:
    """Inspect and look after a versionstore repository (an LMDB directory).

    Example: versionstore log my-repo --limit 5
    """


@cli.command()
@repo_argument
@click.option("--branch", help="start from this branch (default main)")
@click.option("--tag", help="start from this tag")
@click.option("--snapshot", help="start from this snapshot id")
@click.option("--limit", type=click.IntRange(min=0), help="show at most N snapshots")
@click.option("--graph", is_flag=True,
              help="every parent (merged branches too), drawn as a graph like git log --graph")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def log(repo: str, branch: str | None, tag: str | None, snapshot: str | None,
        limit: int | None, graph: bool, as_json: bool) -> None:
    """Snapshots, newest first: one line each (id, time, message, metadata).

    Example: versionstore log my-repo --branch dev --limit 10 --graph
    """
    if sum(x is not None for x in (branch, tag, snapshot)) > 1:
        raise click.UsageError("give at most one of --branch, --tag, --snapshot")
    with _open(repo) as opened:
        history = opened.ancestry(branch=branch, tag=tag, snapshot_id=snapshot,
                                  all_parents=graph)
        if as_json:
            _json([_info(i) for i in itertools.islice(history, limit)])
            return
        lines = _graph(history) if graph else (_describe(info) for info in history)
        for line in itertools.islice(lines, limit):
            _echo(line)


def _describe(info: SnapshotInfo) -> str:
    stamp = info.written_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    metadata = f"  {_metadata_text(info.metadata)}" if info.metadata else ""
    return f"{info.id}  {stamp}  {info.message}{metadata}"


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


@cli.command()
@repo_argument
@click.argument("snapshot")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def show(repo: str, snapshot: str, as_json: bool) -> None:
    """One snapshot: id, parent, time, message, metadata and what it changed.

    SNAPSHOT is a snapshot id, a branch or a tag.

    Example: versionstore show my-repo v1
    """
    with _open(repo) as opened:
        version = _version(opened, snapshot)
        info = next(_ancestry(opened, version))
        diff = (opened.diff(from_snapshot_id=info.parent_id, to_snapshot_id=info.id)
                if info.parent_id else Diff())
        if as_json:
            _json({**_info(info), "changes": _diff_json(diff)})
            return
        _echo(f"snapshot  {info.id}")
        _echo(f"parent    {info.parent_id or '(none)'}")
        for merged in info.parent_ids[1:]:  # a merge snapshot: its change is against the first
            _echo(f"merged    {merged}")
        _echo(f"written   {info.written_at.strftime('%Y-%m-%d %H:%M:%S UTC')}")
        _echo(f"message   {info.message}")
        if info.metadata:
            _echo(f"metadata  {_metadata_text(info.metadata)}")
        _echo()
        _diff_table(diff)


@cli.command()
@repo_argument
@click.argument("old", metavar="FROM")
@click.argument("new", metavar="TO")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def diff(repo: str, old: str, new: str, as_json: bool) -> None:
    """What changed from one version to another, per array (chunks added, changed, removed).

    FROM and TO are each a branch, a tag or a snapshot id.

    Example: versionstore diff my-repo v1 main --json
    """
    with _open(repo) as opened:
        versions = {**_version(opened, old, "from"), **_version(opened, new, "to")}
        changes = opened.diff(**versions)
        if as_json:
            _json(_diff_json(changes))
        else:
            _diff_table(changes)


@cli.command()
@repo_argument
@click.argument("session_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def status(repo: str, session_id: str | None, as_json: bool) -> None:
    """The staged changes of a resumable writable session.

    Without SESSION_ID: the one session with staged changes, if there is
    exactly one (else the ids to choose from, as `versionstore sessions`
    lists them).

    Example: versionstore status my-repo 3KQ7…   (ids from `versionstore sessions`)
    """
    with _open(repo) as opened:
        if session_id is None:
            found = sorted(opened.resumable_sessions().items())
            if not found:
                raise _UserError("no writable session has staged changes")
            if len(found) > 1:
                listed = "".join(f"\n  {s}  (branch {b})" for s, b in found)
                raise click.UsageError(
                    f"{len(found)} sessions have staged changes; name one:{listed}")
            session_id = found[0][0]
        changes = opened.writable_session(resume=session_id).status()
        if as_json:
            _json(_diff_json(changes))
        else:
            _diff_table(changes)


@cli.command()
@repo_argument
@click.option("--discard", "discard", metavar="ID", multiple=True,
              help="discard this session's staged changes (repeatable)")
@click.option("--discard-older-than", metavar="WHEN",
              help="discard sessions started before WHEN (30d, 12h, or an ISO time)")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def sessions(repo: str, discard: tuple[str, ...], discard_older_than: str | None,
             as_json: bool) -> None:
    """Writable sessions with staged changes; discard abandoned ones.

    Example: versionstore sessions my-repo --discard-older-than 7d
    """
    with _open(repo) as opened:
        for session_id in discard:
            opened.discard_session(session_id)
            _echo(f"discarded {session_id}")
        if discard_older_than is not None:
            for session_id in opened.discard_sessions(older_than=_when(discard_older_than)):
                _echo(f"discarded {session_id}")
        found = sorted(opened.resumable_sessions().items())
        if as_json:
            _json([{"session_id": s, "branch": b} for s, b in found])
            return
        if not (discard or discard_older_than):
            for session_id, branch in found:
                _echo(f"{session_id}  {branch}")


def _ref_group(kind: str) -> click.Group:
    @click.group(name=kind, invoke_without_command=True)
    @click.pass_context
    def group(ctx: click.Context) -> None:
        if ctx.invoked_subcommand is None:
            click.echo(ctx.get_help())

    group.help = (f"List, create and delete {kind}es." if kind == "branch"
                  else f"List, create and delete {kind}s.") + (
        f"\n\nExample: versionstore {kind} list my-repo")

    @group.command(name="list")
    @repo_argument
    @click.option("--json", "as_json", is_flag=True, help="print JSON")
    def list_refs(repo: str, as_json: bool) -> None:
        with _open(repo) as opened:
            names = sorted(opened.list_branches() if kind == "branch" else opened.list_tags())
            lookup = opened.lookup_branch if kind == "branch" else opened.lookup_tag
            rows = [(name, lookup(name)) for name in names]
        if as_json:
            _json([{"name": n, "snapshot_id": s} for n, s in rows])
        else:
            for name, snapshot in rows:
                _echo(f"{name}  {snapshot}")

    list_refs.help = f"Every {kind} and its snapshot.\n\nExample: versionstore {kind} list my-repo"

    @group.command()
    @repo_argument
    @click.argument("name")
    @click.argument("at", metavar="AT")
    def create(repo: str, name: str, at: str) -> None:
        with _open(repo) as opened:
            version = _version(opened, at)
            snapshot = next(_ancestry(opened, version)).id
            (opened.create_branch if kind == "branch" else opened.create_tag)(name, snapshot)
            _echo(f"{kind} {name} -> {snapshot}")

    example = "dev main" if kind == "branch" else "v2 main"
    create.help = (f"Create {kind} NAME at AT (a branch, tag or snapshot id).\n\n"
                   f"Example: versionstore {kind} create my-repo {example}")

    @group.command()
    @repo_argument
    @click.argument("name")
    def delete(repo: str, name: str) -> None:
        with _open(repo) as opened:
            (opened.delete_branch if kind == "branch" else opened.delete_tag)(name)
            _echo(f"deleted {kind} {name}")

    delete.help = (f"Delete {kind} NAME (its snapshots stay until expired or collected)."
                   f"\n\nExample: versionstore {kind} delete my-repo old")
    if kind == "branch":
        group.add_command(_reset_branch)
    return group


@click.command(name="reset")
@repo_argument
@click.argument("name")
@click.argument("at", metavar="AT")
@click.option("--from", "from_", metavar="SNAPSHOT",
              help="move only if the branch points at this snapshot now")
def _reset_branch(repo: str, name: str, at: str, from_: str | None) -> None:
    """Point branch NAME at AT (a branch, tag or snapshot id), as Repository.reset_branch.

    The snapshots the branch leaves stay until expired or garbage collected.

    Example: versionstore branch reset my-repo main 3KQ7…
    """
    with _open(repo) as opened:
        snapshot = _snapshot(opened, at)
        expected = None if from_ is None else _snapshot(opened, from_)
        opened.reset_branch(name, snapshot, from_snapshot_id=expected)
        _echo(f"branch {name} -> {snapshot}")


cli.add_command(_ref_group("branch"))
cli.add_command(_ref_group("tag"))


@cli.command(hidden=True)
@repo_argument
def branches(repo: str) -> None:
    """Same as `branch list` (kept for older scripts)."""
    with _open(repo) as opened:
        for name in sorted(opened.list_branches()):
            _echo(f"{name}  {opened.lookup_branch(name)}")


@cli.command(hidden=True)
@repo_argument
def tags(repo: str) -> None:
    """Same as `tag list` (kept for older scripts)."""
    with _open(repo) as opened:
        for name in sorted(opened.list_tags()):
            _echo(f"{name}  {opened.lookup_tag(name)}")


@cli.command()
@repo_argument
@click.option("--branch", help="a branch (default main)")
@click.option("--tag", help="a tag")
@click.option("--snapshot", help="a snapshot id")
@click.option("--history", is_flag=True,
              help="per snapshot of the branch: bytes added, bytes only it uses")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def du(repo: str, branch: str | None, tag: str | None, snapshot: str | None, history: bool,
       as_json: bool) -> None:
    """Sizes: of one version per array, or of each snapshot of a branch's history.

    Example: versionstore du my-repo --history --branch main
    """
    with _open(repo) as opened, _progress("sizing"):
        if history:
            rows = opened.du_history(branch or "main")
            if as_json:
                _json([{**_info(r.snapshot), "keys_changed": r.keys_changed,
                        "bytes_added": r.bytes_added, "exclusive_bytes": r.exclusive_bytes}
                       for r in rows])
                return
            table = Table("snapshot", "written", "message", "keys changed", "added",
                          "only here")
            for r in rows:
                table.add_row(r.snapshot.id[:12], r.snapshot.written_at.strftime("%Y-%m-%d %H:%M"),
                              r.snapshot.message, str(r.keys_changed), _size(r.bytes_added),
                              _size(r.exclusive_bytes))
            _out().print(table)
            return
        usage = opened.du(branch, tag=tag, snapshot_id=snapshot)
        if as_json:
            _json({"snapshot_id": usage.snapshot_id, "keys": usage.keys, "chunks": usage.chunks,
                   "objects": usage.objects,
                   "logical_bytes": usage.logical_bytes, "stored_bytes": usage.stored_bytes,
                   "file_bytes": usage.file_bytes, "reclaimable_bytes": usage.reclaimable_bytes,
                   "virtual_chunks": usage.virtual_chunks, "virtual_bytes": usage.virtual_bytes,
                   "arrays": {p: {"keys": a.keys, "chunks": a.chunks,
                                  "logical_bytes": a.logical_bytes,
                                  "stored_bytes": a.stored_bytes,
                                  "virtual_chunks": a.virtual_chunks,
                                  "virtual_bytes": a.virtual_bytes}
                              for p, a in usage.arrays.items()}})
            return
        table = Table("node", "keys", "chunks", "logical", "stored", title=f"snapshot "
                      f"{usage.snapshot_id}")
        for path, a in usage.arrays.items():
            table.add_row(path, str(a.keys), str(a.chunks), _size(a.logical_bytes),
                          _size(a.stored_bytes))
        table.add_row("total", str(usage.keys), str(usage.chunks), _size(usage.logical_bytes),
                      _size(usage.stored_bytes), style="bold")
        _out().print(table)
        if usage.virtual_chunks:
            _echo(f"virtual: {usage.virtual_chunks} chunk(s), {_size(usage.virtual_bytes)} "
                  "referenced in external files (counted as logical, not stored)")
        if usage.file_bytes is not None:
            _echo(f"file {_size(usage.file_bytes)}, reclaimable by `versionstore compact`: "
                  f"{_size(usage.reclaimable_bytes)}")


@cli.command()
@repo_argument
@click.option("--older-than", required=True, metavar="WHEN",
              help="expire snapshots written before WHEN (30d, 12h, or an ISO time)")
@click.option("--delete-expired-branches", is_flag=True,
              help="first delete branches (not main) whose tip is older")
@click.option("--delete-expired-tags", is_flag=True,
              help="first delete tags that are older (not those on a snapshot that stays)")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def expire(repo: str, older_than: str, delete_expired_branches: bool, delete_expired_tags: bool,
           as_json: bool) -> None:
    """Drop old snapshots from every history (tips and tags stay); run gc to free their data.

    Example: versionstore expire my-repo --older-than 90d && versionstore gc my-repo --delete
    """
    with _open(repo) as opened, _progress("expiring") as progress:
        expired = opened.expire_snapshots(_when(older_than),
                                          delete_expired_branches=delete_expired_branches,
                                          delete_expired_tags=delete_expired_tags)
        # What the next collection frees now (a dry run: incremental, so cheap).
        freed = opened.garbage_collect(dry_run=True, progress=progress)
    if as_json:
        _json({"expired": sorted(expired), "gc_would_delete": freed.deleted,
               "gc_would_free_bytes": freed.bytes_freed})
    else:
        _echo(f"expired {len(expired)} snapshot(s); `versionstore gc REPO --delete` now "
              f"frees {freed.deleted} object(s), {_size(freed.bytes_freed)}")


@cli.command()
@repo_argument
@click.option("--delete", is_flag=True, help="really delete (the default is a dry run)")
@click.option("--older-than", metavar="WHEN",
              help="keep unreachable snapshots written after WHEN (a grace period)")
@click.option("--full", is_flag=True,
              help="mark everything and list every object (the default is incremental)")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def gc(repo: str, delete: bool, older_than: str | None, full: bool, as_json: bool) -> None:
    """Garbage-collect: what no branch, tag or session reaches. A dry run unless --delete.

    Incremental: a run costs what changed since the previous one.

    Example: versionstore gc my-repo --delete   (without --delete: what would be freed)
    """
    with _open(repo) as opened, _progress("collecting garbage") as progress:
        summary = opened.garbage_collect(None if older_than is None else _when(older_than),
                                         dry_run=not delete, progress=progress, full=full)
    if as_json:
        _json({"reachable": summary.reachable, "deleted": summary.deleted,
               "bytes_freed": summary.bytes_freed, "dry_run": summary.dry_run})
        return
    verb = "would delete" if summary.dry_run else "deleted"
    _echo(f"{summary.reachable} reachable objects; {verb} {summary.deleted} "
          f"({_size(summary.bytes_freed)})")
    if summary.dry_run and summary.deleted:
        _echo("run again with --delete to delete them")


@cli.command()
@repo_argument
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def compact(repo: str, as_json: bool) -> None:
    """Give freed space back to the file system (LMDB files never shrink by themselves).

    Needs the repository to itself: refuses, naming the process, while others have it open.

    Example: versionstore compact my-repo   (after `versionstore gc my-repo --delete`)
    """
    with _open(repo) as opened, _progress("compacting"):
        report = opened.compact()
    if as_json:
        _json({"bytes_before": report.bytes_before, "bytes_after": report.bytes_after,
               "bytes_freed": report.bytes_freed})
    else:
        _echo(f"{_size(report.bytes_before)} -> {_size(report.bytes_after)} "
              f"({_size(report.bytes_freed)} returned)")


@cli.command()
@repo_argument
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def verify(repo: str, as_json: bool) -> None:
    """Check every ref and every reachable object; exit status 1 if anything is wrong.

    Example: versionstore verify my-repo
    """
    with _open(repo) as opened, _progress("verifying") as progress:
        report = opened.verify(progress=progress)
    if as_json:
        _json({"objects_checked": report.objects_checked, "problems": list(report.problems)})
    else:
        for problem in report.problems:
            _echo(problem)
        _echo(f"{report.objects_checked} objects checked, {len(report.problems)} problem(s)")
    if not report.ok:
        raise SystemExit(1)


@cli.command()
@repo_argument
@click.argument("path")
@click.option("--message", "-m", help="why (kept in the rewritten snapshots' metadata)")
@click.option("--force", is_flag=True, help="discard writable sessions on affected branches")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@click.option("--json", "as_json", is_flag=True,
              help="print JSON: old -> new snapshot ids, and the collection after")
def purge(repo: str, path: str, message: str | None, force: bool, yes: bool,
          as_json: bool) -> None:
    """Erase node PATH (array or group) from every version, branch and tag.

    Rewrites history (snapshot ids change) and then collects garbage; run
    `versionstore compact` afterwards to drop the bytes from the file too.

    Example: versionstore purge my-repo /participants/p042 -m "consent withdrawn" --yes
    """
    if not yes:
        click.confirm(f"Erase {path} from every version of {repo}? This rewrites history",
                      abort=True, err=True)
    with _open(repo) as opened, _progress("purging"):
        result = opened.purge(path, message=message, force=force)
    if as_json:
        _json({"rewritten": dict(sorted(result.rewritten.items())),
               "deleted": result.gc.deleted, "bytes_freed": result.gc.bytes_freed})
    else:
        _echo(f"rewrote {len(result.rewritten)} snapshot(s); deleted {result.gc.deleted} "
              f"objects ({_size(result.gc.bytes_freed)}); run `versionstore compact` to "
              "shrink the file")
    if not result.rewritten:
        # An erase that found nothing is most likely a mistyped path: say so, and fail.
        click.echo(f"versionstore: no snapshot of any branch or tag holds {path}: nothing "
                   "was erased (is the path right? `versionstore du REPO` lists the arrays)",
                   err=True)
        raise SystemExit(1)


_ON_CONFLICT = click.Choice(["raise", "ours", "theirs"])


def _print_conflicts(error: MergeConflictError) -> None:
    for conflict in error.conflicts:
        where = f"  {conflict.coordinates}" if conflict.coordinates is not None else ""
        click.echo(f"conflict  {conflict.kind}  {conflict.path}  {conflict.key}{where}",
                   err=True)


@cli.command()
@repo_argument
@click.argument("source")
@click.option("--into", default="main", show_default=True, help="the branch to merge into")
@click.option("--on-conflict", type=_ON_CONFLICT, default="raise", show_default=True,
              help="on keys both sides changed: refuse, keep the target's, or take the source's")
@click.option("--no-ff", is_flag=True, help="make a merge snapshot even for a fast-forward")
@click.option("-m", "--message", help="the merge snapshot's message")
def merge(repo: str, source: str, into: str, on_conflict: str, no_ff: bool,
          message: str | None) -> None:
    """Three-way merge SOURCE (a branch, tag or snapshot id) into a branch; print its new tip.

    Example: versionstore merge my-repo dev --into main --on-conflict theirs
    """
    with _open(repo) as opened:
        version = _version(opened, source, "from")
        tip = opened.merge(version.get("from_branch"), into,
                           from_tag=version.get("from_tag"),
                           from_snapshot_id=version.get("from_snapshot_id"),
                           message=message, on_conflict=on_conflict, fast_forward=not no_ff)
    _echo(tip)


@cli.command("cherry-pick")
@repo_argument
@click.argument("snapshot")
@click.option("--onto", default="main", show_default=True, help="the branch to apply it to")
@click.option("--on-conflict", type=_ON_CONFLICT, default="raise", show_default=True,
              help="on keys both sides changed: refuse, keep the branch's, or take the pick's")
@click.option("-m", "--message", help="the new snapshot's message")
def cherry_pick(repo: str, snapshot: str, onto: str, on_conflict: str,
                message: str | None) -> None:
    """Apply the change SNAPSHOT made (against its first parent) to a branch.

    SNAPSHOT is a snapshot id, or a branch or tag (its snapshot).

    Example: versionstore cherry-pick my-repo 3F7QXK2A --onto main
    """
    with _open(repo) as opened:
        tip = opened.cherry_pick(_snapshot(opened, snapshot), onto, message=message,
                                 on_conflict=on_conflict)
    _echo(tip)


@cli.command()
@repo_argument
@click.argument("snapshot")
@click.option("--branch", default="main", show_default=True, help="the branch to revert on")
@click.option("--on-conflict", type=_ON_CONFLICT, default="raise", show_default=True,
              help="on keys changed since: refuse, keep the branch's, or take the revert's")
@click.option("-m", "--message", help="the new snapshot's message")
def revert(repo: str, snapshot: str, branch: str, on_conflict: str,
           message: str | None) -> None:
    """Undo the change SNAPSHOT made, as a new snapshot on a branch.

    SNAPSHOT is a snapshot id, or a branch or tag (its snapshot).

    Example: versionstore revert my-repo 3F7QXK2A --branch main
    """
    with _open(repo) as opened:
        tip = opened.revert(_snapshot(opened, snapshot), branch, message=message,
                            on_conflict=on_conflict)
    _echo(tip)


@cli.command()
@repo_argument
@click.option("--since", "since", required=True, metavar="SNAPSHOT",
              help="the snapshot the squashed one is based on (kept): an id, tag or branch")
@click.option("--branch", default="main", show_default=True, help="the branch to squash")
@click.option("-m", "--message", help="the squashed snapshot's message")
def squash(repo: str, since: str, branch: str, message: str | None) -> None:
    """Replace the snapshots after --since on a branch by one.

    Example: versionstore squash my-repo --since 3F7QXK2A -m "ingest 2024"
    """
    with _open(repo) as opened:
        tip = opened.squash(branch, since_snapshot_id=_snapshot(opened, since), message=message)
    _echo(tip)


@cli.command("ops-log")
@repo_argument
@click.option("--limit", type=click.IntRange(min=0), help="show at most N entries")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def ops_log(repo: str, limit: int | None, as_json: bool) -> None:
    """Every ref change ever made, newest first (commits, merges, resets, tags, ...).

    Example: versionstore ops-log my-repo --limit 20
    """
    with _open(repo) as opened:
        entries = list(itertools.islice(opened.ops_log(), limit))
    if as_json:
        _json([{"time": e.written_at.isoformat(), "kind": e.kind, "ref_type": e.ref_type,
                "name": e.name, "old": e.old, "new": e.new, "message": e.message,
                "source": e.source}
               for e in entries])
        return
    for entry in entries:
        stamp = entry.written_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        message = f"  {entry.message}" if entry.message else ""
        ref = f"{entry.ref_type} {entry.name}".rstrip()  # "repository": a gc or expire run
        _echo(f"{stamp}  {entry.kind}  {ref}  {entry.old or '-'} -> {entry.new or '-'}{message}")


# -- between repositories: clone, push, fetch -----------------------------------------------


def _object_storage_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options of ``s3://`` repositories (``versionstore.urls.ObjectStorageOptions``)."""
    for option in reversed([
        click.option("--endpoint-url", metavar="URL",
                     help="s3:// only: an S3-compatible endpoint (MinIO, Ceph, a test server)"),
        click.option("--region", help="s3:// only: the bucket's region"),
        click.option("--anonymous", is_flag=True,
                     help="s3:// only: send no credentials (public buckets)"),
        click.option("--allow-http", is_flag=True,
                     help="s3:// only: allow an http:// (unencrypted) endpoint"),
    ]):
        command = option(command)
    return command


def _storages(urls: Sequence[str], endpoint_url: str | None, region: str | None,
              anonymous: bool, allow_http: bool) -> list[RepositoryStorage]:
    options = ObjectStorageOptions(endpoint_url=endpoint_url, region=region,
                                   anonymous=anonymous, allow_http=allow_http)
    return storages_from_urls(urls, options)


def _short(snapshot: str | None) -> str:
    return "(none)" if snapshot is None else snapshot[:12]


def _report(summary: TransferSummary, as_json: bool, verb: str) -> None:
    if as_json:
        _json({"objects_copied": summary.objects_copied, "bytes_copied": summary.bytes_copied,
               "refs": {name: {"old": old, "new": new}
                        for name, (old, new) in sorted(summary.refs.items())}})
        return
    for name, (old, new) in sorted(summary.refs.items()):
        _echo(f"{name}  {_short(old)} -> {_short(new)}")
    if not summary.refs:
        _echo("already up to date")
    _echo(f"{verb} {summary.objects_copied} object(s), {_size(summary.bytes_copied)}")


@cli.command()
@click.argument("source", metavar="SRC")
@click.argument("target", metavar="DST")
@click.option("--branch", "branches", metavar="NAME", multiple=True,
              help="copy only this branch (repeatable; main always comes along)")
@click.option("--tag", "tags", metavar="NAME", multiple=True,
              help="copy only this tag (repeatable)")
@_object_storage_options
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def clone(source: str, target: str, branches: tuple[str, ...], tags: tuple[str, ...],
          endpoint_url: str | None, region: str | None, anonymous: bool, allow_http: bool,
          as_json: bool) -> None:
    """Copy the repository SRC into DST, which must hold none: history, branches, tags.

    SRC and DST are repository URLs: a directory (./my-repo or lmdb://my-repo)
    or s3://BUCKET/PREFIX. An interrupted clone resumes when run again.

    Example: versionstore clone ./my-repo s3://bucket/repos/my-repo
    """
    src, dst = _storages([source, target], endpoint_url, region, anonymous, allow_http)
    with _progress("cloning") as progress:
        summary = copy_repository(src, dst, branches=list(branches) or None,
                                  tags=list(tags) or None, progress=progress)
    _report(summary, as_json, "copied")


@cli.command()
@click.argument("repo", metavar="REPO")
@click.argument("remote", metavar="REMOTE")
@click.option("--branch", default="main", show_default=True, help="the branch to push")
@click.option("--remote-branch", metavar="NAME",
              help="the branch to move in REMOTE (default: the same name)")
@click.option("--force", is_flag=True,
              help="move it even if that drops snapshots only REMOTE has")
@_object_storage_options
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def push(repo: str, remote: str, branch: str, remote_branch: str | None, force: bool,
         endpoint_url: str | None, region: str | None, anonymous: bool, allow_http: bool,
         as_json: bool) -> None:
    """Copy a branch of REPO to the repository REMOTE and move REMOTE's branch to it.

    Only objects REMOTE lacks are copied. Refused unless a fast-forward (someone
    else pushed first: fetch and merge), or with --force.

    Example: versionstore push ./my-repo s3://bucket/repos/my-repo --branch main
    """
    local_storage, remote_storage = _storages([repo, remote], endpoint_url, region, anonymous,
                                              allow_http)
    with Repository.open(local_storage) as local, Repository.open(remote_storage) as target, \
            _progress("pushing") as progress:
        summary = local.push(target, branch, remote_branch, force=force, progress=progress)
    _report(summary, as_json, "pushed")


@cli.command()
@click.argument("repo", metavar="REPO")
@click.argument("remote", metavar="REMOTE")
@click.option("--branch", default="main", show_default=True, help="REMOTE's branch to fetch")
@click.option("--into", "into", metavar="NAME",
              help="the branch of REPO to move (default: origin/BRANCH)")
@click.option("--force", is_flag=True,
              help="move it even if that drops snapshots only it has")
@_object_storage_options
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def fetch(repo: str, remote: str, branch: str, into: str | None, force: bool,
          endpoint_url: str | None, region: str | None, anonymous: bool, allow_http: bool,
          as_json: bool) -> None:
    """Copy a branch of the repository REMOTE into REPO, as branch origin/BRANCH.

    Then merge it as any branch: versionstore merge REPO origin/main --into main.

    Example: versionstore fetch ./my-repo s3://bucket/repos/my-repo --branch main
    """
    local_storage, remote_storage = _storages([repo, remote], endpoint_url, region, anonymous,
                                              allow_http)
    with Repository.open(local_storage) as local, Repository.open(remote_storage) as source, \
            _progress("fetching") as progress:
        summary = local.fetch(source, branch, into, force=force, progress=progress)
    _report(summary, as_json, "fetched")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see the module docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        try:
            # Not cli.main(): it turns a closed pipe into exit status 1.
            with cli.make_context("versionstore", args) as ctx:
                status = cli.invoke(ctx)
        except click.exceptions.Exit as exc:  # --help, --version
            status = exc.exit_code
        except click.exceptions.Abort:
            click.echo("versionstore: aborted", err=True)
            status = EXIT_USER_ERROR
        except click.ClickException as exc:
            exc.show()
            status = exc.exit_code
        except (VersionStoreError, _UserError, ValueError, TypeError, KeyError) as exc:
            if isinstance(exc, MergeConflictError):  # merge, cherry-pick, revert: each conflict
                _print_conflicts(exc)
            plain_key_error = type(exc) is KeyError and exc.args
            message = exc.args[0] if plain_key_error else exc
            click.echo(f"versionstore: error: {message}", err=True)
            status = EXIT_USER_ERROR
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else EXIT_USER_ERROR
        except KeyboardInterrupt:
            # Ctrl-C: a line, not a traceback, as git. What an interruption leaves
            # is each operation's own matter (docs/cli.md: ref moves are atomic; an
            # interrupted clone, push or fetch copies only what is missing when rerun).
            click.echo("\nversionstore: interrupted", err=True)
            return EXIT_INTERRUPTED
        sys.stdout.flush()  # a closed pipe shows up here at the latest, not at exit
    except BrokenPipeError:
        # The reader (head, less) has gone: stop like git does, without a traceback.
        # Python would flush stdout again at exit and fail once more, so point it at
        # /dev/null first (the recipe in the signal module's documentation).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Every error that versionstore raises, in one place.

The tree::

    VersionStoreError
    ├── RepositoryExistsError        create() on storage that already holds a repository
    ├── RepositoryNotFoundError      open() on storage that holds none
    ├── RefNotFoundError             a branch or tag that does not exist
    │   ├── BranchNotFoundError
    │   └── TagNotFoundError
    ├── RefExistsError               creating a branch or tag whose name is taken
    ├── ImmutableTagError            trying to move, or re-create, a tag
    ├── InvalidRefNameError          (also ValueError)
    ├── ProtectedBranchError         deleting ``main`` (also ValueError)
    ├── SnapshotNotFoundError        a snapshot id that is not in the repository
    │   └── AmbiguousSnapshotIdError a snapshot id prefix that more than one snapshot has
    ├── MissingObjectsError          a write that needed objects no longer stored (gc removed them)
    ├── SessionNotFoundError         resuming a session that was committed or never existed
    ├── ReadOnlySessionError         committing or writing through a read-only session
    ├── NothingToCommitError         commit() with no changes (and allow_empty=False)
    ├── AmendInitialSnapshotError    amend() on a branch whose tip is the initial snapshot
    ├── ConflictError                a commit whose changes overlap the branch's new commits
    │   └── MergeConflictError       a merge, cherry-pick or revert whose sides conflict
    ├── InvalidMoveError             session.move with a missing source, taken destination, …
    ├── CorruptObjectError           a stored object that fails its checksum or cannot decode
    ├── ObjectTooLargeError          a record that would decompress beyond the safety cap
    ├── UnsupportedFormatError       a record written by a newer format version
    ├── RepositoryBusyError          compact() while other processes have the repository open
    ├── PurgeBlockedError            purge() while writable sessions are open on affected branches
    ├── NonFastForwardError          a push or fetch that would drop the target branch's snapshots
    ├── RepositoryURLError           a repository URL that cannot be used (also ValueError)
    ├── VirtualChunkError            a virtual chunk cannot be served as recorded
    │   ├── NoVirtualChunkStoreError  no store given at open serves the location's URL prefix
    │   ├── VirtualSourceMissingError the source is gone, or shorter than the reference
    │   └── VirtualSourceChangedError the source's ETag or modification time is not the recorded one
    └── BackendError                 the storage under the repository failed (I/O)
        ├── ReadOnlyRepositoryError  a write to a repository opened read-only (or on a
        │                            read-only filesystem)
        ├── DiskFullError            the disk under the repository is full
        ├── CorruptRepositoryError   the repository's files are damaged (a truncated data.mdb)
        ├── RepositoryReplacedError  the repository's directory was removed or replaced under it
        ├── StorageNotFoundError     the bucket (or container) does not exist
        ├── StorageAccessDeniedError missing or wrong credentials, or no permission
        ├── StorageUnreachableError  the storage service cannot be reached (refused, DNS, …)
        │   └── StorageTimeoutError  the storage service did not answer in time
        ├── StorageThrottledError    the storage service kept refusing requests as too many
        ├── UnsafeStorageError       the storage cannot write conditionally (no safe commits)
        └── ForkedProcessError       object storage used in a child forked after the parent used it

Errors carry their data (``ConflictError.keys``, ``CorruptObjectError.object_id``)
so callers can act on them without parsing messages.

One warning: ``ShortGracePeriodWarning`` (a ``UserWarning``), a garbage collection
on object storage whose grace period cannot protect writers running meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from zarrstore.errors import rebuild_error

__all__ = [
    "AmbiguousSnapshotIdError",
    "AmendInitialSnapshotError",
    "BackendError",
    "BranchNotFoundError",
    "ConflictError",
    "CorruptObjectError",
    "CorruptRepositoryError",
    "DiskFullError",
    "ForkedProcessError",
    "ImmutableTagError",
    "InvalidMoveError",
    "InvalidRefNameError",
    "MaintenanceConflictError",
    "MergeConflict",
    "MergeConflictError",
    "MissingObjectsError",
    "NoVirtualChunkStoreError",
    "NonFastForwardError",
    "NothingToCommitError",
    "ObjectTooLargeError",
    "ProtectedBranchError",
    "PurgeBlockedError",
    "ReadOnlyRepositoryError",
    "ReadOnlySessionError",
    "RefExistsError",
    "RefNotFoundError",
    "RepositoryBusyError",
    "RepositoryExistsError",
    "RepositoryNotFoundError",
    "RepositoryReplacedError",
    "RepositoryURLError",
    "SessionNotFoundError",
    "ShortGracePeriodWarning",
    "SnapshotCollectedError",
    "SnapshotNotFoundError",
    "StorageAccessDeniedError",
    "StorageNotFoundError",
    "StorageThrottledError",
    "StorageTimeoutError",
    "StorageUnreachableError",
    "TagNotFoundError",
    "UnsafeStorageError",
    "UnsupportedFormatError",
    "VersionStoreError",
    "VirtualChunkError",
    "VirtualSourceChangedError",
    "VirtualSourceMissingError",
]


class VersionStoreError(Exception):
    """Root of every error raised by versionstore.

    Every one pickles with its data (``keys``, ``conflicts``, ``name``, ...):
    an error raised in a dask worker or a ``ProcessPoolExecutor`` task reaches
    the caller as itself. Python's default rebuilds an exception by calling
    its class with ``args`` (the message), which the errors here that take
    their data as arguments would refuse.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return rebuild_error, (type(self), self.args, dict(self.__dict__))


class RepositoryExistsError(VersionStoreError):
    """``Repository.create`` found a repository already there; nothing was changed."""


class RepositoryNotFoundError(VersionStoreError):
    """``Repository.open`` found no repository in the storage."""


class RefNotFoundError(VersionStoreError, KeyError):
    """A branch or tag that does not exist."""

    kind = "ref"

    def __init__(self, name: str, hint: str = "") -> None:
        super().__init__(name)
        self.name = name
        self.hint = hint

    def __str__(self) -> str:
        hint = f"; {self.hint}" if self.hint else ""
        return f"{self.kind} {self.name!r} does not exist{hint}"


class BranchNotFoundError(RefNotFoundError):
    """A branch that does not exist."""

    kind = "branch"


class TagNotFoundError(RefNotFoundError):
    """A tag that does not exist."""

    kind = "tag"


class RefExistsError(VersionStoreError):
    """A branch or tag name that is already taken."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} {name!r} already exists")
        self.kind = kind
        self.name = name


class ImmutableTagError(VersionStoreError):
    """Tags never move: a deleted tag's name cannot be reused either."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"tag {name!r}: {detail}")
        self.name = name


class InvalidRefNameError(VersionStoreError, ValueError):
    """A branch or tag name that is empty or contains forbidden characters."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"invalid ref name {name!r}: {reason}")
        self.name = name


class ProtectedBranchError(VersionStoreError, ValueError):
    """An operation that the branch's role forbids: ``main`` cannot be deleted.

    The name is valid (this is not an ``InvalidRefNameError``); move ``main``
    with ``reset_branch`` instead.
    """

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"branch {name!r}: {detail}")
        self.name = name


class SnapshotNotFoundError(VersionStoreError, KeyError):
    """A snapshot id that is not in the repository (or no snapshot matched ``as_of``)."""

    def __init__(self, snapshot_id: str, detail: str = "") -> None:
        super().__init__(snapshot_id)
        self.snapshot_id = snapshot_id
        self.detail = detail

    def __str__(self) -> str:
        return self.detail or f"snapshot {self.snapshot_id!r} does not exist"


class SnapshotCollectedError(VersionStoreError):
    """The snapshot a session reads was garbage collected after the session opened.

    Its branch was reset (or deleted) and ``garbage_collect`` ran; what the
    session still held in memory may have answered a few reads, the next one
    needing a stored object finds it gone. Deliberately not a ``KeyError``
    (as ``SnapshotNotFoundError`` is): zarr reads a ``KeyError`` from a store
    as "no such node" and would go on as if the data were absent (``require_group``
    creates one). Open a new session on the branch (or ``rebase(keep="ours")`` a
    writable one: its staged changes are kept).
    """

    def __init__(self, snapshot_id: str, detail: str) -> None:
        super().__init__(detail)
        self.snapshot_id = snapshot_id


class AmbiguousSnapshotIdError(SnapshotNotFoundError, ValueError):
    """A snapshot id prefix that names more than one snapshot; give more characters."""

    def __init__(self, prefix: str, matches: Iterable[str]) -> None:
        self.matches = tuple(sorted(matches))
        shown = ", ".join(self.matches[:5])
        super().__init__(prefix, f"snapshot id prefix {prefix!r} is ambiguous: it matches "
                                 f"{shown}; give more characters")


class MissingObjectsError(VersionStoreError):
    """A write required objects that are not stored (garbage collection removed them).

    Raised by ``Backend.write`` for a batch's ``requires``; nothing was written.
    ``Repository`` turns it into ``SnapshotNotFoundError`` where the object is a
    snapshot a ref was to point at.
    """

    def __init__(self, object_ids: Iterable[str]) -> None:
        self.object_ids = tuple(object_ids)
        super().__init__(f"required objects are not stored: {', '.join(self.object_ids)}")


class SessionNotFoundError(VersionStoreError, KeyError):
    """A session id with nothing staged to resume (committed, discarded, or unknown)."""

    def __init__(self, session_id: str) -> None:
        super().__init__(session_id)
        self.session_id = session_id

    def __str__(self) -> str:
        return f"no resumable session {self.session_id!r}"


class ReadOnlySessionError(VersionStoreError):
    """Committing, or writing through, a read-only session."""


class NothingToCommitError(VersionStoreError):
    """``commit`` found no change against the session's base (pass ``allow_empty=True``)."""


class AmendInitialSnapshotError(VersionStoreError):
    """``amend`` refused: the branch's tip is the repository's initial snapshot.

    The initial snapshot (``Repository initialized``, the one with no parents)
    is every branch's first ancestor, so it is never replaced; commit instead.
    icechunk refuses the same amend (its ``NoAmendForInitialCommit``: "the
    first commit in the repository cannot be an amend"). Nothing changed: the
    session keeps its staged changes. ``branch`` and ``snapshot_id`` name the
    tip that was to be amended.
    """

    def __init__(self, branch: str, snapshot_id: str) -> None:
        self.branch = branch
        self.snapshot_id = snapshot_id
        super().__init__(
            f"cannot amend branch {branch!r}: its tip {snapshot_id} is the repository's "
            "initial snapshot, which has no parent to amend onto; commit instead")


class ConflictError(VersionStoreError):
    """The branch moved and its new commits touch keys this session also changed.

    The session keeps its staged changes: resolve (for example re-read, rewrite
    and retry) and commit again.
    """

    def __init__(self, branch: str, keys: Iterable[str], *, hint: str = "") -> None:
        self.branch = branch
        self.keys = frozenset(keys)
        shown = ", ".join(sorted(self.keys)[:10])
        more = f" and {len(self.keys) - 10} more" if len(self.keys) > 10 else ""
        super().__init__(
            f"commit conflicts with new commits on branch {branch!r}: {shown}{more}"
            + (f"; {hint}" if hint else "")
        )


class MaintenanceConflictError(ConflictError):
    """Expiry or purge gave up: the refs its plan depends on changed under every attempt.

    Nothing was changed. Commits that only move other branches never cause
    it (``docs/format.md``, rule M1); run it again once those refs are quiet.
    """

    def __init__(self, operation: str, detail: str) -> None:
        VersionStoreError.__init__(self, f"{operation} gave up after many attempts: {detail}; "
                                         "nothing was changed")
        self.branch = f"({operation})"
        self.keys = frozenset()


#: What a session's ``ConflictError`` says to do (docs/guide.md, "Concurrent
#: writers, conflicts and rebase").
SESSION_CONFLICT_HINT = (
    "the session keeps its staged changes: session.rebase(keep='ours') or keep='theirs', "
    "or re-read and rewrite those keys, then commit again"
)


@attrs.frozen(kw_only=True)
class MergeConflict:
    """One conflict of a 3-way merge (also of a cherry-pick or revert).

    ``path`` is the Zarr node (``"/t"``; ``"/"`` is the root group). ``kind``:

    * ``"chunk"`` — both sides wrote one chunk differently; ``coordinates``
      are its chunk (or shard) indices, read as ``Diff`` reads them;
    * ``"metadata"`` — both sides changed a node's metadata document
      (``zarr.json``, ``.zarray``, ``.zgroup``, ``.zattrs``) differently;
    * ``"deleted-vs-modified"`` — one side (``deleted_by``: ``"ours"`` or
      ``"theirs"``) deleted the node, the other changed something under it;
      ``key`` is the first key the other side changed;
    * ``"redefined-vs-modified"`` — one side (``deleted_by``) redefined the
      node (a new data type, chunk grid, codecs, fill value or a smaller
      shape: its chunks mean something else now), the other wrote under it;
    * ``"key"`` — any other key both sides changed differently.
    """

    path: str
    kind: str
    key: str
    coordinates: tuple[int, ...] | None = None
    deleted_by: str | None = None

    def __str__(self) -> str:
        if self.kind == "chunk":
            return f"chunk {self.coordinates} of {self.path}"
        if self.kind == "deleted-vs-modified":
            other = "theirs" if self.deleted_by == "ours" else "ours"
            return f"{self.path} deleted by {self.deleted_by}, modified by {other} ({self.key})"
        if self.kind == "redefined-vs-modified":
            other = "theirs" if self.deleted_by == "ours" else "ours"
            return f"{self.path} redefined by {self.deleted_by}, written by {other} ({self.key})"
        if self.kind == "metadata":
            return f"metadata of {self.path} ({self.key})"
        return f"key {self.key}"


class MergeConflictError(ConflictError):
    """Both sides of a merge (cherry-pick, revert) changed the same things differently.

    Nothing was changed. ``conflicts`` lists each as a ``MergeConflict``
    (sorted by path, then key); ``keys`` are their keys. Resolve by merging
    with ``on_conflict="ours"`` or ``"theirs"``, or by changing one side.
    """

    def __init__(self, branch: str, conflicts: Sequence[MergeConflict], operation: str = "merge"
                 ) -> None:
        super().__init__(branch, [c.key for c in conflicts])
        self.conflicts = tuple(sorted(conflicts, key=lambda c: (c.path, c.key)))
        shown = "; ".join(str(c) for c in self.conflicts[:5])
        more = f"; and {len(self.conflicts) - 5} more" if len(self.conflicts) > 5 else ""
        self.args = (f"{operation} into branch {branch!r} conflicts: {shown}{more} (nothing "
                     "was changed; pass on_conflict='ours' or 'theirs' to resolve)",)


class InvalidMoveError(VersionStoreError, ValueError):
    """``Session.move`` refused: missing source, existing destination, into itself, the root."""


class CorruptObjectError(VersionStoreError):
    """A stored object failed its checksum, its content hash, or could not be decoded."""

    def __init__(self, object_id: str, detail: str) -> None:
        super().__init__(f"object {object_id} is corrupt: {detail}")
        self.object_id = object_id
        self.detail = detail


class ObjectTooLargeError(CorruptObjectError):
    """A record claims to decompress beyond the safety cap (a decompression bomb)."""


class UnsupportedFormatError(VersionStoreError):
    """A record from a newer format version than this library understands."""

    def __init__(self, kind: str, version: int, supported: int) -> None:
        super().__init__(
            f"{kind} record has format version {version}; this versionstore reads up to "
            f"{supported} — upgrade versionstore to read this repository"
        )
        self.version = version


class BackendError(VersionStoreError, OSError):
    """The storage under the repository failed; the message names the cause."""


class ReadOnlyRepositoryError(BackendError):
    """A write to a repository opened read-only, or lying on a read-only filesystem."""


class DiskFullError(BackendError):
    """The disk under the repository is full: free some space and retry; nothing is lost."""


class CorruptRepositoryError(BackendError):
    """The repository's files are damaged (such as ``data.mdb`` cut short); restore a copy."""


class RepositoryReplacedError(BackendError):
    """The path of a pickled (or forked) copy holds another repository than its original.

    A session, store or repository travels to another process by path and
    opens its repository there again (a forked child reopens it too). If the
    directory was removed and made again, or another repository moved into
    its place, meanwhile, that is not the repository the copy belongs to:
    staging or committing there would write into someone else's history, so
    it is refused, and nothing is written. A repository still open in a
    process while another removes its directory raises it at its next write
    (stage or commit) too: its files are deleted, and a commit into them
    would be lost. ``path`` is the directory. Open the path anew
    (``Repository.open``) if the new repository is meant.
    """

    def __init__(self, path: str) -> None:
        super().__init__(
            f"the repository at {path!r} is not the one this object was opened on: the "
            "directory was removed (and perhaps made again), or another repository replaced "
            "it; nothing was written. Open it anew with vs.Repository.open(path) if the new "
            "repository is meant")
        self.path = path


class StorageNotFoundError(BackendError):
    """The bucket (or container) the repository should live in does not exist."""


class StorageAccessDeniedError(BackendError, PermissionError):
    """The storage refused the request: credentials are missing or wrong, or lack permission."""


class StorageUnreachableError(BackendError, ConnectionError):
    """The storage service cannot be reached (connection refused, unknown host, …)."""


class StorageTimeoutError(StorageUnreachableError, TimeoutError):
    """The storage service did not answer in time (after the client's retries)."""


class StorageThrottledError(BackendError):
    """The storage service kept answering "slow down" (S3's ``503 SlowDown``, a ``429``).

    Raised only once the client's retries (``retry_config``) are spent. What
    was being done either happened whole or not at all: retry it later, or
    give the client more patience (a longer ``retry_timeout``).
    """


class UnsafeStorageError(BackendError):
    """The storage cannot create an object only if it is absent, so commits would race unsafely.

    Refused at ``create``/``open``. ``object_storage(...,
    unsafe_allow_unconditional_writes=True)`` opens it anyway for a single
    writer (see ``docs/guide.md``).
    """


class ForkedProcessError(BackendError):
    """Object storage used in a child made by ``fork`` after its parent had used it.

    The object-storage client (obstore, built on Rust's tokio runtime) does
    not survive ``fork``: its worker threads stay in the parent, so every
    request in the child would wait forever. Raised instead of hanging, at
    the child's first request. Start children with ``spawn`` or
    ``forkserver`` (``multiprocessing.get_context("spawn")``), or fork before
    the parent first touches object storage (``docs/guide.md``).
    """

class RepositoryBusyError(VersionStoreError):
    """An operation that needs a repository to itself (``compact``) found others using it.

    ``pids`` are the processes found holding it open (one is named even when
    several do: the lock probe reports one holder); ``in_this_process`` counts
    other open repository objects of the same path in the calling process,
    ``transactions`` the LMDB transactions other threads of the calling
    process have open on it (a read or commit in progress).
    """

    def __init__(self, path: str, pids: Iterable[int], *, in_this_process: int = 0,
                 transactions: int = 0) -> None:
        self.path = path
        self.pids = tuple(pids)
        self.in_this_process = in_this_process
        self.transactions = transactions
        if in_this_process:
            who = (f"{in_this_process} other open repository object(s) in this process "
                   "(close them first)")
        elif transactions:
            who = (f"{transactions} transaction(s) other threads of this process have open "
                   "(a read or commit in progress; wait for it)")
        elif self.pids:
            who = "process " + ", ".join(str(p) for p in self.pids)
        else:
            who = "another process"
        super().__init__(f"{path} is in use by {who}; compact needs it to itself (close the "
                         "other users and try again)")


class PurgeBlockedError(VersionStoreError):
    """``purge`` refused: writable sessions are open on branches it would rewrite.

    ``sessions`` maps each such session id to its branch. Commit or discard
    them, or pass ``force=True`` (which discards them).
    """

    def __init__(self, path: str, sessions: Mapping[str, str]) -> None:
        self.path = path
        self.sessions = dict(sessions)
        shown = ", ".join(f"{s} (branch {b!r})" for s, b in sorted(self.sessions.items()))
        super().__init__(f"cannot purge {path!r}: writable sessions are open on affected "
                         f"branches: {shown}; commit or discard them, or pass force=True")


class NonFastForwardError(VersionStoreError):
    """A push or fetch refused: the target branch has snapshots the incoming one lacks.

    Moving the branch would drop them from its history. ``branch`` is the
    branch that would have moved (in the remote for a push, here for a
    fetch); ``current`` its snapshot, ``incoming`` the one offered. Nothing
    moved (objects already copied stay: they are shared, and a later push
    reuses them). Fetch and merge first, or pass ``force=True``.
    """

    def __init__(self, operation: str, branch: str, current: str, incoming: str, *,
                 initial: bool = False) -> None:
        self.operation = operation
        self.branch = branch
        self.current = current
        self.incoming = incoming
        self.initial = initial
        where = "the remote's" if operation == "push" else "the"
        advice = ("fetch and merge first" if operation == "push"
                  else "fetch into another branch (into_branch=...) and merge")
        if initial:
            # ``initial``: the branch holds only a new repository's first, empty snapshot
            # (each ``Repository.create`` writes its own): nothing would be lost.
            made = "the remote" if operation == "push" else "this repository"
            advice = (f"{made} is new (Repository.create's empty first snapshot only): "
                      "pass force=True, or make the copy with vs.copy_repository(source, "
                      "target) / `versionstore clone` instead of Repository.create")
            super().__init__(f"{operation} refused: not a fast-forward: {where} branch "
                             f"{branch!r} is at {current}; {advice}")
            return
        super().__init__(
            f"{operation} refused: not a fast-forward: {where} branch {branch!r} is at "
            f"{current}, which is not an ancestor of {incoming}; {advice}, or pass "
            "force=True to move it anyway (the snapshots only it has leave its history)")


class RepositoryURLError(VersionStoreError, ValueError):
    """A repository URL that is malformed, of an unknown scheme, or not usable here."""
class VirtualChunkError(VersionStoreError):
    """A virtual chunk (``VirtualRef``) cannot be served as recorded; ``location`` names it.

    Deliberately not a ``KeyError`` or ``FileNotFoundError``: zarr reads those
    as "chunk not written" and would hand back fill values instead of failing.
    """

    def __init__(self, location: str, message: str) -> None:
        self.location = location
        super().__init__(message)


class NoVirtualChunkStoreError(VirtualChunkError):
    """No store given to ``Repository.open(..., virtual_chunk_stores=...)`` serves ``location``."""

    def __init__(self, location: str, prefixes: Iterable[str]) -> None:
        known = sorted(prefixes)
        shown = ", ".join(repr(p) for p in known) if known else "none"
        super().__init__(location, (
            f"no virtual chunk store serves {location!r} (stores given for: {shown}); open the "
            "repository with virtual_chunk_stores={'<url prefix>': store}"))


class VirtualSourceMissingError(VirtualChunkError):
    """The source of a virtual chunk is gone, or too short for the recorded byte range."""


class VirtualSourceChangedError(VirtualChunkError):
    """The source changed since the reference was recorded: its bytes may not be the chunk's.

    ``expected`` is the recorded checksum (an ETag, or a last-modified time);
    ``found`` is what the source reports now. Reading such a chunk never
    returns the (possibly stale) bytes; ``check_virtual_checksums=False`` at
    open turns the check off for sources that are touched without changing.
    """

    def __init__(self, location: str, expected: object, found: object) -> None:
        self.expected = expected
        self.found = found
        super().__init__(location, (
            f"virtual chunk source {location!r} changed since it was referenced (recorded "
            f"{expected!r}, now {found!r}); re-import the references, or open with "
            "check_virtual_checksums=False if the source is known to be unchanged"))


class ShortGracePeriodWarning(UserWarning):
    """A garbage collection on object storage with a grace period shorter than writers need.

    Object storage has no atomic sweep: gc spares objects younger than its
    ``older_than``, and a writer re-stores an object it re-references only
    when the object is older than an hour (``docs/format.md``, "Garbage
    collection on shared storage"). With a shorter grace period, a writer
    running meanwhile can reference an object the collection deletes. Safe
    when nothing writes to the repository during the collection.
    """

"""``Repository``: the entry point — create or open one, then branch, tag, read and write.

Names follow icechunk (``writable_session``, ``readonly_session``,
``ancestry``, ``diff``, ``*_async`` twins) so code moving from icechunk reads
the same. A repository is a backend plus three rules: objects are immutable,
the initial snapshot exists on ``main`` from ``create``, and refs move only by
compare-and-swap.
"""

from __future__ import annotations

import asyncio
import html
import itertools
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import attrs

from versionstore.arguments import (
    as_storage,
    check_flag,
    check_mapping,
    check_name,
    check_optional_name,
    check_optional_time,
    looks_like_snapshot_id,
)
from versionstore.backend.lmdb import LMDBBackend
from versionstore.backend.protocol import Backend, SessionRule, WriteBatch
from versionstore.codec import (
    KIND_SNAPSHOT,
    decode_repository,
    decode_session,
    encode_ref_target,
    encode_repository,
    encode_session,
    encode_snapshot,
    frame_kind,
)
from versionstore.editing import HistoryEditor
from versionstore.errors import (
    AmbiguousSnapshotIdError,
    BranchNotFoundError,
    ConflictError,
    ReadOnlyRepositoryError,
    RepositoryExistsError,
    RepositoryNotFoundError,
    SessionNotFoundError,
    SnapshotNotFoundError,
    UnsupportedFormatError,
    VersionStoreError,
)
from versionstore.expire import expire_snapshots
from versionstore.gc import GCSummary, Progress, collect_garbage, warn_if_short_grace
from versionstore.grafts import GRAFT_PREFIX, grafts_from_refs
from versionstore.history import (
    Diff,
    History,
    SnapshotInfo,
    ancestry,
    classify_changes,
    first_parent_infos,
    merge_base,
    snapshot_at,
)
from versionstore.ids import (
    MIN_PREFIX,
    ObjectId,
    SessionId,
    SnapshotId,
    new_session_id,
    object_id_from_text,
    object_id_prefix,
    object_id_text,
)
from versionstore.located_staging import LocatedStaging
from versionstore.notebook import ref_labels, repository_html
from versionstore.objects import ObjectReader
from versionstore.opslog import REPOSITORY_OPERATION, OpsLogEntry, read_ops_log, with_operation
from versionstore.progress import ProgressOption, progress_reporter
from versionstore.purge import purge_node
from versionstore.records import (
    REPOSITORY_FORMAT,
    ChunkRef,
    Operation,
    RefTarget,
    RepositoryRecord,
    Sizes,
    Snapshot,
    VirtualRef,
)
from versionstore.refs import MAIN, REPOSITORY_REF, Refs, branch_ref, session_ref, stage_prefix
from versionstore.session import Session
from versionstore.storage import LMDBStorage, RepositoryStorage, StorageLike
from versionstore.transfer import TransferSummary, transfer_branch
from versionstore.tree import changed_entries, lookup
from versionstore.usage import (
    CompactReport,
    SnapshotUsage,
    VersionUsage,
    history_usage,
    version_usage,
)
from versionstore.verify import VerifyReport, verify_repository
from versionstore.virtual import VirtualChunkStores
from zarrstore.adapters.base import StoreLike

__all__ = ["INITIAL_MESSAGE", "PurgeResult", "Repository"]

INITIAL_MESSAGE = "Repository initialized"


@attrs.frozen
class PurgeResult:
    """What ``Repository.purge`` did: old -> new snapshot ids, and the collection after."""

    rewritten: dict[SnapshotId, SnapshotId]
    gc: GCSummary



def _virtual_chunk_stores(stores: object, check_checksums: object) -> VirtualChunkStores:
    """``VirtualChunkStores`` of ``open`` / ``create``'s arguments, checked first.

    Raises:
        TypeError: ``stores`` is not a dict (or ``None``), or ``check_checksums`` not a bool.
    """
    check_mapping(stores, "virtual_chunk_stores")
    checked = check_flag(check_checksums, "check_virtual_checksums")
    return VirtualChunkStores(stores, check_checksums=checked)  # type: ignore[arg-type]



class Repository:
    """A versioned store of Zarr data: snapshots, branches, tags and sessions."""

    def __init__(self, storage: RepositoryStorage, backend: Backend,
                 virtual_chunks: VirtualChunkStores | None = None) -> None:
        self.storage = storage
        self.backend = backend
        #: The stores that serve virtual chunks (given at open; never stored).
        self.virtual_chunks = virtual_chunks or VirtualChunkStores()
        self.reader = ObjectReader(backend)
        self.refs = Refs(backend)
        self.editor = HistoryEditor(self.reader, self.refs)

    def __repr__(self) -> str:
        return f"Repository({self.storage!r})"

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # As a session does (``Session.__reduce__``): the storage description and the
        # virtual chunk stores travel, and the receiving process opens the repository
        # again (a dask task or a ``ProcessPoolExecutor`` job given ``repo``).
        return _reopen_repository, (type(self), self.storage_for_copies(), self.virtual_chunks)

    def storage_for_copies(self) -> RepositoryStorage:
        """``storage`` as a pickled copy reopens it: pinned to this very repository.

        On LMDB the description carries the repository's identity
        (``LMDBStorage.pinned``), so a copy whose directory was removed and
        made again, or taken by another repository, raises
        ``RepositoryReplacedError`` instead of writing there.
        """
        if isinstance(self.storage, LMDBStorage):
            return self.storage.pinned(self.backend)
        return self.storage

    def __str__(self) -> str:
        """Branches, tags, the last few snapshots of ``main``, and uncommitted sessions, as text.

        What ``print(repo)`` shows; the last line, only when there are any, counts
        the writable sessions holding staged changes (``resumable_sessions``).
        """
        try:
            branches = {name: self.lookup_branch(name) for name in self.list_branches()}
            tags = {name: self.lookup_tag(name) for name in self.list_tags()}
            recent = list(itertools.islice(self.ancestry(), 6))
            pending = Counter(self.resumable_sessions().values())
        except VersionStoreError as exc:  # closed, or damaged: say so rather than fail
            return f"{self!r}: {exc}"
        lines = [repr(self)]
        lines += [f"  branch {n}  {i}" for n, i in sorted(branches.items())]
        lines += [f"  tag {n}  {i}" for n, i in sorted(tags.items())]
        lines.append("  recent snapshots on main:")
        lines += [f"    {i.id[:12]}  {i.written_at:%Y-%m-%d %H:%M}  {i.message}"
                  for i in recent[:5]]
        if len(recent) > 5:
            lines.append("    …")
        if pending:
            # Staged but never committed (a kernel restarted, a forgotten commit): the
            # data is not in any snapshot above, and it is not lost either.
            on = ", ".join(f"{count} on {branch}" for branch, count in sorted(pending.items()))
            lines.append(f"  uncommitted: {pending.total()} writable session(s) with staged "
                         f"changes ({on})")
            lines.append("    repo.resumable_sessions() lists them; "
                         "writable_session(resume=id) continues one")
        return "\n".join(lines)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """IPython's plain-text view (a terminal, or a notebook without HTML): ``str(repo)``."""
        printer.text(repr(self) if cycle else str(self))

    def _repr_html_(self) -> str:
        """Branches, tags and the last few snapshots of ``main`` (for notebooks)."""
        try:
            branches = {name: self.lookup_branch(name) for name in self.list_branches()}
            tags = {name: self.lookup_tag(name) for name in self.list_tags()}
            recent = list(itertools.islice(self.ancestry(), 11))
        except VersionStoreError as exc:  # closed, or damaged: say so rather than fail
            return f"<pre>{html.escape(repr(self))}: {html.escape(str(exc))}</pre>"
        rows = [(i.id, [i.parent_id] if i.parent_id else [], i.written_at, i.message)
                for i in recent[:10]]
        return repository_html(repr(self), branches, tags, rows, more=len(recent) > 10)

    # -- opening ----------------------------------------------------------------------

    @classmethod
    def exists(cls, storage: StorageLike) -> bool:
        """Whether ``storage`` holds a repository (creates none).

        An LMDB environment is opened read-only (``LMDBStorage.probe_backend``):
        LMDB makes its ``lock.mdb`` if missing, nothing else is written; one
        holding another program's keys is no repository (``False``), and a
        directory without ``data.mdb``, or with an empty one (a killed
        ``create``), is not opened at all.

        ``storage`` is ``vs.lmdb_storage(path)``, ``vs.in_memory_storage()``, or
        a path (``str`` / ``os.PathLike``) meaning an LMDB directory; anything
        else raises ``TypeError``, and a URL given as a ``str`` (``s3://…``)
        ``ValueError``, as in every constructor below.
        """
        storage = as_storage(storage)
        if not storage.may_hold_repository():
            return False
        try:
            backend = storage.probe_backend()
        except RepositoryNotFoundError:
            return False  # another program's LMDB environment (nothing written to it)
        try:
            return any(v is not None for v in backend.get_refs([REPOSITORY_REF, branch_ref(MAIN)]))
        finally:
            backend.close()

    @classmethod
    def create(cls, storage: StorageLike, *,
               virtual_chunk_stores: Mapping[str, StoreLike] | None = None,
               check_virtual_checksums: bool = True) -> Repository:
        """Create a repository whose ``main`` branch holds an empty initial snapshot.

        ``virtual_chunk_stores`` and ``check_virtual_checksums`` are as for ``open``.

        The format record and ``main`` are written in one atomic step, and only
        into an empty backend: storage that already holds refs or objects —
        another repository, or one whose ``main`` was damaged — is never
        initialised over.

        Raises:
            RepositoryExistsError: if a repository, or anything else, is already
                there (nothing is changed).
            TypeError: if ``storage`` is neither a storage nor a path.
            ValueError: if ``storage`` is a URL (``s3://…``) given as a ``str``.
        """
        storage = as_storage(storage)
        virtual = _virtual_chunk_stores(virtual_chunk_stores, check_virtual_checksums)
        if cls.exists(storage):
            raise RepositoryExistsError(f"a repository already exists in {storage!r}; "
                                        "open it with Repository.open (or open_or_create)")
        problem = storage.creation_problem()
        if problem is not None:
            raise RepositoryExistsError(problem)
        try:
            backend = storage.open_backend()
        except RepositoryNotFoundError as exc:  # another program's LMDB environment
            raise RepositoryExistsError(f"refusing to create a repository in {storage!r}: "
                                        f"{exc}") from None
        try:
            has_refs = bool(backend.list_refs("", limit=1))
            if has_refs or next(backend.iter_object_ids(), None) is not None:
                raise RepositoryExistsError(
                    f"{storage!r} already holds data but no readable repository record; "
                    "refusing to initialise over it (run `versionstore verify` on it, or "
                    "choose an empty location)"
                )
            snapshot = Snapshot(parents=(), tree=None, message=INITIAL_MESSAGE,
                                written_at=datetime.now(UTC), sizes=Sizes(documents={}))
            snapshot_id, frame = encode_snapshot(snapshot)
            record = RepositoryRecord(format_version=REPOSITORY_FORMAT,
                                      created_at=snapshot.written_at)
            main = branch_ref(MAIN)
            created = backend.write(with_operation(WriteBatch(
                objects=[(snapshot_id, frame)],
                expect={REPOSITORY_REF: None, main: None},
                refs={
                    REPOSITORY_REF: encode_repository(record),
                    main: encode_ref_target(main, RefTarget(snapshot=snapshot_id)),
                },
            ), Operation(kind="create_branch", ref=main, old=None, new=snapshot_id,
                         written_at=snapshot.written_at, message=INITIAL_MESSAGE)))
            if not created:
                raise RepositoryExistsError(f"a repository already exists in {storage!r}; "
                                        "open it with Repository.open (or open_or_create)")
            backend.sync()
        except BaseException:
            backend.close()
            raise
        return cls(storage, backend, virtual)

    @classmethod
    def open(cls, storage: StorageLike, *,
             virtual_chunk_stores: Mapping[str, StoreLike] | None = None,
             check_virtual_checksums: bool = True) -> Repository:
        """Open the repository in ``storage`` (a storage, or an LMDB directory path).

        Args:
            storage: where the repository is.
            virtual_chunk_stores: URL prefix → zarrstore store that serves
                virtual chunks under it (``{"file:///data/":
                FilesystemStore("/data"), "s3://bucket/": ObjectStore.s3(...)}``);
                the longest matching prefix wins. Held in memory only: no
                store, URL of a store, or credential is written to the repository.
            check_virtual_checksums: compare each virtual chunk's source with
                the recorded ETag / last-modified time before reading it, and
                raise ``VirtualSourceChangedError`` on a mismatch (the
                default). ``False`` reads sources unchecked.

        Raises:
            RepositoryNotFoundError: if there is none; for an LMDB path the message says
                whether it is missing, a file, empty or a plain Zarr store.
            UnsupportedFormatError: if it was written by a newer versionstore
                (nothing is read further, and nothing is ever collected).
            TypeError: if ``storage`` is neither a storage nor a path.
            ValueError: if ``storage`` is a URL (``s3://…``) given as a ``str``.
        """
        storage = as_storage(storage)
        virtual = _virtual_chunk_stores(virtual_chunk_stores, check_virtual_checksums)
        if not storage.may_hold_repository():
            raise RepositoryNotFoundError(storage.missing_repository_message())
        # One backend, and one read of the format record and ``main`` (what ``exists``
        # reads): opening an LMDB environment, or a round trip to object storage, once.
        backend = storage.open_backend()
        try:
            raw, main = backend.get_refs([REPOSITORY_REF, branch_ref(MAIN)])
            if raw is None and main is None:
                raise RepositoryNotFoundError(storage.missing_repository_message())
            if raw is not None:
                version = decode_repository(REPOSITORY_REF, raw).format_version
                if version > REPOSITORY_FORMAT:
                    raise UnsupportedFormatError("repository", version, REPOSITORY_FORMAT)
        except BaseException:
            backend.close()
            raise
        return cls(storage, backend, virtual)

    @classmethod
    def open_or_create(cls, storage: StorageLike, *,
                       virtual_chunk_stores: Mapping[str, StoreLike] | None = None,
                       check_virtual_checksums: bool = True) -> Repository:
        """Open the repository in ``storage``, creating it if there is none.

        ``virtual_chunk_stores`` and ``check_virtual_checksums`` are as for ``open``.
        """
        storage = as_storage(storage)
        options: dict[str, Any] = {"virtual_chunk_stores": virtual_chunk_stores,
                                   "check_virtual_checksums": check_virtual_checksums}
        try:
            return cls.create(storage, **options)
        except RepositoryExistsError:
            return cls.open(storage, **options)

    @classmethod
    def session_from_state(cls, state: dict[str, Any]) -> Session:
        """Rebuild a pickled session (see ``Session.__reduce__``)."""
        repository = cls.open(state["storage"])
        repository.virtual_chunks = state.get("virtual_chunks") or VirtualChunkStores()
        return Session(
            repository,
            base=state["base"],
            branch=state["branch"],
            read_only=state["read_only"],
            session_id=state["session_id"],
            generation=state.get("generation", 0),
            copy=True,
        )

    def close(self) -> None:
        """Release the backend (sessions of this repository stop working)."""
        self.backend.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sessions ----------------------------------------------------------------------

    def writable_session(self, branch: str | None = None, *, resume: str | None = None
                         ) -> Session:
        """A session that stages writes and commits them to ``branch``.

        Args:
            branch: the branch to commit to; default ``main``, or with
                ``resume`` the resumed session's branch.
            resume: the ``session_id`` of an earlier writable session whose
                staged changes should be picked up (after a crash, or from
                another process). It commits to the branch it was opened on.

        Raises:
            SessionNotFoundError: if ``resume`` names nothing to resume.
            BranchNotFoundError: if ``branch`` does not exist.
            ValueError: ``branch`` is not the branch of the session to resume.
            TypeError: if an argument is not a ``str``.
        """
        check_optional_name(resume, "resume", "a session id")
        if branch is None and resume is None:
            branch = MAIN
        if branch is not None:
            check_name(branch, "branch")
        if getattr(self.backend, "read_only", False):
            if getattr(self.storage, "read_only", False):
                raise ReadOnlyRepositoryError(
                    f"{self.storage!r} is open read-only: use readonly_session, or open it "
                    "without read_only=True")
            raise ReadOnlyRepositoryError(
                f"{self.storage!r} is on a read-only filesystem, or its files cannot be "
                "written: use readonly_session, or copy it to writable storage")
        if branch is not None and looks_like_snapshot_id(branch) \
                and branch not in self.list_branches():
            raise BranchNotFoundError(branch, hint="sessions write to branches: create one at "
                                      "that snapshot with create_branch(name, snapshot_id=...)")
        if resume is not None:
            raw = self.backend.get_ref(session_ref(resume))
            # Like resumable_sessions(): a session with nothing staged (committed or
            # discarded) has nothing to resume, though its record may linger until gc.
            if raw is None or not self._has_staged(resume, raw):
                raise SessionNotFoundError(resume)
            record = decode_session(session_ref(resume), raw)
            if branch is not None and branch not in self.list_branches():
                raise BranchNotFoundError(branch)  # deleted since, perhaps
            if branch is not None and branch != record.branch:
                # Its staged changes were made on that branch's snapshot: committing them
                # elsewhere would silently land them on the other branch (or nowhere).
                raise ValueError(
                    f"session {resume} writes to branch {record.branch!r}, not {branch!r}: "
                    f"resume it with writable_session(resume={resume!r}) and commit there, "
                    "then merge")
            return Session(self, base=record.base, branch=record.branch, read_only=False,
                           session_id=SessionId(resume), generation=record.generation)
        assert branch is not None
        try:
            tip, _ = self.refs.branch_tip(branch)
        except BranchNotFoundError:
            # Listed only once the branch is missing, as readonly_session does.
            if branch in self.list_tags():
                raise BranchNotFoundError(branch, hint=(
                    f"{branch!r} is a tag, and tags do not move: read it with "
                    f"readonly_session(tag={branch!r}), or write from it on a branch made "
                    f"with create_branch(name, repo.lookup_tag({branch!r}))")) from None
            raise
        return Session(self, base=tip, branch=branch, read_only=False,
                       session_id=new_session_id())

    def rearrange_session(self, branch: str = MAIN) -> Session:
        """A writable session, for code coming from icechunk (any writable session can ``move``)."""
        return self.writable_session(branch)

    def resumable_sessions(self) -> dict[SessionId, str]:
        """Writable sessions with staged changes: session id → branch."""
        found: dict[SessionId, str] = {}
        for name, raw in self.backend.list_refs("session/").items():
            session_id = SessionId(name.removeprefix("session/"))
            # A session's record outlives its staged keys when they are all unstaged
            # again (set then erase a new key): such a session has nothing to resume.
            if self._has_staged(session_id, raw):
                found[session_id] = decode_session(name, raw).branch
        return found

    def _has_staged(self, session_id: str, record_raw: bytes) -> bool:
        """Whether the session has staged refs, or located writes not yet absorbed."""
        if self.backend.list_refs(stage_prefix(session_id), limit=1):
            return True
        record = decode_session(session_ref(session_id), record_raw)
        return bool(record.manifests) or (record.epoch is not None
                and LocatedStaging(self.backend, session_id).has_pending(record))

    def readonly_session(
        self,
        branch: str | None = None,
        *,
        tag: str | None = None,
        snapshot_id: str | None = None,
        as_of: datetime | None = None,
    ) -> Session:
        """A read-only view of a branch tip, a tag, a snapshot, or a branch at a time.

        ``as_of`` picks the newest snapshot of ``branch`` (default ``main``)
        written at or before that time.

        Raises:
            BranchNotFoundError, TagNotFoundError, SnapshotNotFoundError: if the
                version does not exist.
            TypeError: if an argument has the wrong type.
        """
        check_optional_name(branch, "branch", "a branch name")
        check_optional_name(tag, "tag", "a tag name")
        check_optional_name(snapshot_id, "snapshot_id", "a snapshot id")
        check_optional_time(as_of)
        try:
            target = self._resolve(branch=branch, tag=tag, snapshot_id=snapshot_id,
                                   default_branch=MAIN)
        except BranchNotFoundError:
            # Looked at only once the branch is missing: listing refs is a round trip
            # on object storage, and opening a branch's session must not pay for it.
            if branch is not None and looks_like_snapshot_id(branch):
                raise BranchNotFoundError(
                    branch, hint=f"did you mean snapshot_id={branch!r}?") from None
            if branch is not None and branch in self.list_tags():
                raise BranchNotFoundError(
                    branch, hint=f"it is a tag: did you mean tag={branch!r}?") from None
            raise
        if as_of is not None:
            if tag is not None or snapshot_id is not None:
                raise ValueError("as_of goes with a branch, not with a tag or snapshot id")
            target = snapshot_at(self.reader, target, as_of, self._grafts())
        return Session(self, base=target, branch=None, read_only=True)

    # -- refs --------------------------------------------------------------------------

    def _named_ref(self, snapshot_id: str) -> str:
        """``SnapshotNotFoundError``'s detail for a branch or tag name given as an id.

        ``create_tag("v2", "main")``, as git would take it, or an id prefix
        shorter than ``MIN_PREFIX``; ``""`` for any other text.
        """
        for kind, names, lookup_call in (("branch", self.list_branches, "lookup_branch"),
                                         ("tag", self.list_tags, "lookup_tag")):
            if snapshot_id in names():
                return (f"snapshot {snapshot_id!r} does not exist: {snapshot_id!r} is a {kind};"
                        f" its snapshot id is repo.{lookup_call}({snapshot_id!r})")
        # git takes 4 characters; ids here are 32, and prefixes of fewer than 8 are not
        # looked up (``object_id_prefix``). Said for what looks copied from ``log``.
        looks_copied = snapshot_id.isupper() or any(c in "234567" for c in snapshot_id)
        if (0 < len(snapshot_id) < MIN_PREFIX and looks_copied
                and set(snapshot_id.upper()) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")):
            return (f"snapshot {snapshot_id!r} does not exist: a snapshot id prefix needs at "
                    f"least {MIN_PREFIX} characters")
        return ""

    def _snapshot_object(self, snapshot_id: str) -> ObjectId:
        """The snapshot a full id, or a unique prefix of at least 8 characters, names.

        Raises:
            SnapshotNotFoundError: no stored snapshot has that id or prefix.
            AmbiguousSnapshotIdError: several do.
        """
        prefix = object_id_prefix(snapshot_id)
        if prefix is not None:
            text = snapshot_id.upper()
            candidates = [i for i in self.backend.iter_object_ids(prefix)
                          if object_id_text(i).startswith(text)]
            stored = self.backend.get_objects(candidates)
            matches = [i for i, data in zip(candidates, stored, strict=True)
                       if data is not None and frame_kind(data) == KIND_SNAPSHOT]
            if len(matches) > 1:
                raise AmbiguousSnapshotIdError(snapshot_id, map(object_id_text, matches))
            if not matches:
                raise SnapshotNotFoundError(snapshot_id, self._named_ref(snapshot_id))
            return matches[0]
        try:
            object_id = object_id_from_text(snapshot_id)
        except ValueError as exc:
            raise SnapshotNotFoundError(str(snapshot_id), self._named_ref(snapshot_id)) from exc
        data = self.backend.get_objects([object_id])[0]
        if data is None or frame_kind(data) != KIND_SNAPSHOT:  # a chunk or tree node's id
            raise SnapshotNotFoundError(snapshot_id)
        self.reader.snapshot_from(object_id, data)  # decoded (and cached) once, not read again
        return object_id

    def _resolve(self, *, branch: str | None, tag: str | None, snapshot_id: str | None,
                 default_branch: str | None = None, prefix: str = "") -> ObjectId:
        """The snapshot one version names.

        ``prefix`` (``"from_"``, ``"to_"``): the caller's parameter names'
        prefix, which the errors name.

        Raises:
            ValueError: if more than one, or none (and no ``default_branch``), is given.
        """
        names = f"{prefix}branch, {prefix}tag or {prefix}snapshot_id"
        given = [x is not None for x in (branch, tag, snapshot_id)]
        if sum(given) > 1:
            raise ValueError(f"give only one of {names}")
        if tag is not None:
            return self.refs.tag_target(tag)
        if snapshot_id is not None:
            return self._snapshot_object(snapshot_id)
        name = branch if branch is not None else default_branch
        if name is None:
            raise ValueError(f"give one of {names}: which version?")
        return self.refs.branch_tip(name)[0]

    def create_branch(self, name: str, snapshot_id: str) -> None:
        """Create branch ``name`` pointing at ``snapshot_id``."""
        check_name(name, "name")
        check_name(snapshot_id, "snapshot_id", "a snapshot id")
        self.refs.create_branch(name, self._snapshot_object(snapshot_id))

    def create_tag(self, name: str, snapshot_id: str) -> None:
        """Create tag ``name`` at ``snapshot_id``; it never moves."""
        check_name(name, "name", "a tag name")
        check_name(snapshot_id, "snapshot_id", "a snapshot id")
        self.refs.create_tag(name, self._snapshot_object(snapshot_id))

    def list_branches(self) -> set[str]:
        """Every branch name."""
        return self.refs.list_branches()

    def list_tags(self) -> set[str]:
        """Every tag name."""
        return self.refs.list_tags()

    def lookup_branch(self, name: str) -> SnapshotId:
        """The snapshot at the tip of branch ``name``."""
        check_name(name, "name")
        return SnapshotId(_text(self.refs.branch_tip(name)[0]))

    def lookup_tag(self, name: str) -> SnapshotId:
        """The snapshot tag ``name`` points at."""
        check_name(name, "name", "a tag name")
        return SnapshotId(_text(self.refs.tag_target(name)))

    def lookup_snapshot(self, snapshot_id: str) -> SnapshotInfo:
        """Message, time, parent and metadata of a snapshot."""
        check_name(snapshot_id, "snapshot_id", "a snapshot id")
        object_id = self._snapshot_object(snapshot_id)
        return SnapshotInfo.of(object_id, self.reader.snapshot(object_id), self._grafts())

    def reset_branch(self, name: str, snapshot_id: str, *,
                     from_snapshot_id: str | None = None) -> None:
        """Point branch ``name`` at ``snapshot_id`` (any snapshot in the repository).

        The snapshot's existence is checked in the same atomic step as the
        move, so a concurrent garbage collection can never leave the branch
        dangling. With ``from_snapshot_id`` (icechunk's guard, its PR 1259)
        the branch moves only if it points there at that moment: the check
        and the move are one compare-and-swap.

        Raises:
            SnapshotNotFoundError: the snapshot (or ``from_snapshot_id``) is
                not stored; nothing moved.
            ConflictError: the branch does not point at ``from_snapshot_id``;
                nothing moved.
        """
        check_name(name, "name")
        check_name(snapshot_id, "snapshot_id", "a snapshot id")
        target = self._snapshot_object(snapshot_id)
        expected = None
        if from_snapshot_id is not None:
            check_name(from_snapshot_id, "from_snapshot_id", "a snapshot id")
            expected = self._snapshot_object(from_snapshot_id)
        while True:
            tip, raw = self.refs.branch_tip(name)
            if expected is not None and tip != expected:
                error = ConflictError(name, [])
                error.args = (f"branch {name!r} points at {object_id_text(tip)}, not "
                              f"{object_id_text(expected)} (from_snapshot_id); nothing moved",)
                raise error
            if self.refs.move_branch(name, raw, target, verify_target=True,
                                     kind="reset_branch"):
                self.backend.sync()
                return

    def delete_branch(self, name: str) -> None:
        """Delete a branch (not ``main``).

        Raises:
            ProtectedBranchError: for ``main`` (move it with ``reset_branch``).
        """
        self.refs.delete_branch(check_name(name, "name"))

    def delete_tag(self, name: str) -> None:
        """Delete a tag; its name can never be used again."""
        check_name(name, "name", "a tag name")
        self.refs.delete_tag(name)

    # -- history -----------------------------------------------------------------------

    def ancestry(self, *, branch: str | None = None, tag: str | None = None,
                 snapshot_id: str | None = None, all_parents: bool = False) -> History:
        """Snapshots from the given version back to the first, newest first.

        First parents only by default (the branch's own line); with
        ``all_parents``, the whole DAG (merged branches too), each snapshot once
        and after all its descendants, newest first among those ready. A lazy
        iterator (``History``) that shows as a table and graph in a notebook.
        """
        history = History(self._ancestry(branch=branch, tag=tag, snapshot_id=snapshot_id,
                                         all_parents=all_parents))
        history._labels = self._ref_labels
        return history

    def _ref_labels(self) -> dict[str, list[str]]:
        """Snapshot id -> branch and tag names at it (the notebook views' refs column)."""
        return ref_labels({n: self.lookup_branch(n) for n in self.list_branches()},
                          {n: self.lookup_tag(n) for n in self.list_tags()})

    def _ancestry(self, *, branch: str | None, tag: str | None,
                  snapshot_id: str | None, all_parents: bool) -> Iterator[SnapshotInfo]:
        check_optional_name(branch, "branch", "a branch name")
        check_optional_name(tag, "tag", "a tag name")
        check_optional_name(snapshot_id, "snapshot_id", "a snapshot id")
        check_flag(all_parents, "all_parents")
        stored = None
        if tag is None and snapshot_id is None:  # a branch: its ref, tip and grafts in one read
            reader = self.reader
            # The tip's bytes come with the ref unless the snapshot, or its whole
            # listing (``first_parent_infos``), is already known.
            start, stored, graft_refs = self.refs.branch_tip_with(
                MAIN if branch is None else branch,
                lambda s: not reader.is_cached(s) and reader.derived_if_cached(s) is None,
                GRAFT_PREFIX)
            grafts = grafts_from_refs(graft_refs)
        else:
            start = self._resolve(branch=branch, tag=tag, snapshot_id=snapshot_id,
                                  default_branch=MAIN)
            grafts = self._grafts()
        if not all_parents and not grafts:  # history pages, decoded only as far as read
            return first_parent_infos(self.reader, start, stored=stored)
        if stored is not None:  # read with the branch: the walk below starts from it
            self.reader.snapshot_from(start, stored)
        return (SnapshotInfo.of(object_id, snapshot, grafts) for object_id, snapshot
                in ancestry(self.reader, start, all_parents=all_parents, grafts=grafts))

    def _grafts(self) -> dict[ObjectId, tuple[ObjectId, ...]]:
        """Where ``expire_snapshots`` cut history (``versionstore.grafts``)."""
        return grafts_from_refs(self.backend.list_refs(GRAFT_PREFIX))

    def merge_base(self, snapshot_id_a: str, snapshot_id_b: str) -> SnapshotId | None:
        """The lowest common ancestor of two snapshots, or ``None`` if they share none.

        Criss-cross histories have several; the newest (then greatest id) is chosen.
        History is followed as ``ancestry`` shows it (expired snapshots skipped).
        """
        check_name(snapshot_id_a, "snapshot_id_a", "a snapshot id")
        check_name(snapshot_id_b, "snapshot_id_b", "a snapshot id")
        found = merge_base(self.reader, self._snapshot_object(snapshot_id_a),
                           self._snapshot_object(snapshot_id_b), self._grafts())
        return None if found is None else SnapshotId(_text(found))

    def merge(self, from_branch: str | None = None, into_branch: str = MAIN, *,
              from_tag: str | None = None, from_snapshot_id: str | None = None,
              message: str | None = None, metadata: dict[str, Any] | None = None,
              on_conflict: str = "raise", fast_forward: bool = True) -> SnapshotId:
        """Three-way merge a branch, tag or snapshot into ``into_branch``; its new tip.

        Keys changed on one side only are taken; keys both sides changed
        differently conflict (``versionstore.merge``). If ``into_branch``'s tip
        is an ancestor of the source, the branch fast-forwards (unless
        ``fast_forward=False``: then a merge snapshot is made); merging an
        ancestor of the tip changes nothing. A merge snapshot's
        ``parent_ids`` are ``(tip, source)``. The branch moves by one
        compare-and-swap that also writes the ops-log entry; if a commit
        lands meanwhile, the merge is redone on the new tip.

        Args:
            from_branch: the branch to merge (or give ``from_tag`` or
                ``from_snapshot_id`` instead).
            into_branch: the branch that moves.
            from_tag: a tag to merge.
            from_snapshot_id: a snapshot to merge.
            message: the merge snapshot's message (default "Merge … into …").
            metadata: the merge snapshot's metadata.
            on_conflict: ``"raise"`` (the default), ``"ours"`` (keep
                ``into_branch``'s value) or ``"theirs"`` (take the source's).
            fast_forward: move the branch to the source when its tip is an
                ancestor of the source, instead of making a merge snapshot.

        Raises:
            MergeConflictError: conflicts and ``on_conflict="raise"``; nothing changed.
            ValueError: an unknown ``on_conflict``, or not exactly one source.
        """
        check_optional_name(from_branch, "from_branch", "a branch name")
        check_optional_name(from_tag, "from_tag", "a tag name")
        check_optional_name(from_snapshot_id, "from_snapshot_id", "a snapshot id")
        check_name(into_branch, "into_branch")
        check_optional_name(message, "message", "a message")
        check_flag(fast_forward, "fast_forward")
        source = self._resolve(branch=from_branch, tag=from_tag, snapshot_id=from_snapshot_id,
                               prefix="from_")
        label = (f"branch {from_branch!r}" if from_branch is not None else
                 f"tag {from_tag!r}" if from_tag is not None else f"snapshot {from_snapshot_id}")
        tip = self.editor.merge(into_branch, source, label=label, message=message,
                                metadata=metadata, on_conflict=on_conflict,
                                fast_forward=fast_forward)
        return SnapshotId(_text(tip))

    def cherry_pick(self, snapshot_id: str, onto_branch: str = MAIN, *,
                    message: str | None = None, metadata: dict[str, Any] | None = None,
                    on_conflict: str = "raise") -> SnapshotId:
        """Apply the change ``snapshot_id`` made (against its first parent) to a branch.

        Uses the merge machinery (same conflicts, same ``on_conflict``); the
        new snapshot has one parent, the branch's tip.

        Raises:
            MergeConflictError: conflicts and ``on_conflict="raise"``; nothing changed.
            NothingToCommitError: the branch already has that change.
        """
        check_name(snapshot_id, "snapshot_id", "a snapshot id")
        check_name(onto_branch, "onto_branch")
        check_optional_name(message, "message", "a message")
        tip = self.editor.apply_snapshot(onto_branch, self._snapshot_object(snapshot_id),
                                         revert=False, message=message, metadata=metadata,
                                         on_conflict=on_conflict)
        return SnapshotId(_text(tip))

    def revert(self, snapshot_id: str, on_branch: str = MAIN, *, message: str | None = None,
               metadata: dict[str, Any] | None = None, on_conflict: str = "raise"
               ) -> SnapshotId:
        """Undo the change ``snapshot_id`` made, as a new snapshot on ``on_branch``.

        Raises:
            MergeConflictError: later snapshots changed the same things and
                ``on_conflict="raise"``; nothing changed.
            NothingToCommitError: the change is not there to undo.
        """
        check_name(snapshot_id, "snapshot_id", "a snapshot id")
        check_name(on_branch, "on_branch")
        check_optional_name(message, "message", "a message")
        tip = self.editor.apply_snapshot(on_branch, self._snapshot_object(snapshot_id),
                                         revert=True, message=message, metadata=metadata,
                                         on_conflict=on_conflict)
        return SnapshotId(_text(tip))

    def squash(self, branch: str = MAIN, *, since_snapshot_id: str,
               message: str | None = None, metadata: dict[str, Any] | None = None
               ) -> SnapshotId:
        """Replace the snapshots after ``since_snapshot_id`` on ``branch`` by one.

        The new snapshot's parent is ``since_snapshot_id`` and its content the
        branch tip's; the message defaults to the squashed messages. The old
        snapshots stay readable by id until garbage collection.

        Raises:
            ValueError: ``since_snapshot_id`` is not an earlier snapshot of the branch.
        """
        check_name(branch, "branch")
        check_name(since_snapshot_id, "since_snapshot_id", "a snapshot id")
        check_optional_name(message, "message", "a message")
        tip = self.editor.squash(branch, self._snapshot_object(since_snapshot_id),
                                 message=message, metadata=metadata)
        return SnapshotId(_text(tip))

    # -- remotes ----------------------------------------------------------------------

    def push(self, remote: Repository, branch: str = MAIN, remote_branch: str | None = None,
             *, force: bool = False, progress: ProgressOption = True) -> TransferSummary:
        """Copy ``branch`` to the repository ``remote`` and move its branch there.

        Only the objects ``remote`` lacks are copied (``versionstore.transfer``),
        children before parents, so an interrupted push resumes where it
        stopped. Then ``remote_branch`` (default: the same name) moves by
        compare-and-swap to this branch's tip, with a ``push`` ops-log entry
        in ``remote``; it is created if missing. Works between any two
        storages (LMDB, memory, object storage).

        Args:
            remote: the repository to push to (``Repository.open(...)``).
            branch: the branch of this repository to push.
            remote_branch: the branch to move in ``remote`` (default ``branch``).
            force: move it even if that drops snapshots only ``remote`` has.
            progress: ``True``: a progress bar on a terminal for a long copy;
                ``False``: none; a callable is told ``(phase, done, total)``.

        Returns:
            ``TransferSummary``: objects and bytes copied, and the ref moved
            (``refs`` is empty when ``remote`` was already up to date).

        Raises:
            NonFastForwardError: ``remote_branch`` has snapshots this branch
                lacks (someone else pushed): fetch and merge first, or ``force``.
            BranchNotFoundError: ``branch`` does not exist here.
        """
        check_name(branch, "branch")
        check_optional_name(remote_branch, "remote_branch", "a branch name")
        check_flag(force, "force")
        _check_repository(remote, "remote")
        with progress_reporter(progress) as report:
            return transfer_branch(self.reader, self.refs, remote.refs, source_branch=branch,
                                   target_branch=remote_branch or branch, force=force,
                                   operation="push", message=f"push of branch {branch!r}",
                                   progress=report)

    def fetch(self, remote: Repository, branch: str = MAIN, into_branch: str | None = None,
              *, force: bool = False, progress: ProgressOption = True) -> TransferSummary:
        """Copy ``remote``'s ``branch`` here as ``into_branch`` (default ``origin/<branch>``).

        The reverse of ``push``: the objects this repository lacks are copied,
        then ``into_branch`` moves (or is created) by compare-and-swap, with a
        ``fetch`` ops-log entry. Merge it like any branch:
        ``repo.merge("origin/main", "main")``.

        Raises:
            NonFastForwardError: ``into_branch`` has snapshots the fetched tip
                lacks; nothing moved (``force=True`` moves it anyway).
            BranchNotFoundError: ``branch`` does not exist in ``remote``.
        """
        check_name(branch, "branch")
        check_optional_name(into_branch, "into_branch", "a branch name")
        check_flag(force, "force")
        _check_repository(remote, "remote")
        with progress_reporter(progress) as report:
            return transfer_branch(remote.reader, remote.refs, self.refs, source_branch=branch,
                                   target_branch=into_branch or f"origin/{branch}",
                                   force=force, operation="fetch",
                                   message=f"fetch of branch {branch!r} from {remote.storage!r}",
                                   progress=report)

    def ops_log(self) -> Iterator[OpsLogEntry]:
        """Every ref change ever made, newest first (``versionstore.opslog``).

        Entries do not keep snapshots alive: an entry may name a snapshot that
        garbage collection has removed.
        """
        yield from read_ops_log(self.backend)

    def diff(
        self,
        *,
        from_branch: str | None = None,
        from_tag: str | None = None,
        from_snapshot_id: str | None = None,
        to_branch: str | None = None,
        to_tag: str | None = None,
        to_snapshot_id: str | None = None,
    ) -> Diff:
        """What changed from one version to another, by Zarr node and chunk.

        Raises:
            TypeError: if a version is not given as a ``str``.
        """
        for parameter, value in [("from_branch", from_branch), ("to_branch", to_branch)]:
            check_optional_name(value, parameter, "a branch name")
        for parameter, value in [("from_tag", from_tag), ("to_tag", to_tag)]:
            check_optional_name(value, parameter, "a tag name")
        for parameter, value in [("from_snapshot_id", from_snapshot_id),
                                 ("to_snapshot_id", to_snapshot_id)]:
            check_optional_name(value, parameter, "a snapshot id")
        old = self._resolve(branch=from_branch, tag=from_tag, snapshot_id=from_snapshot_id,
                            prefix="from_")
        new = self._resolve(branch=to_branch, tag=to_tag, snapshot_id=to_snapshot_id,
                            prefix="to_")
        old_tree = self.reader.snapshot(old).tree
        new_tree = self.reader.snapshot(new).tree
        changed = changed_entries(self.reader.node, old_tree, new_tree)
        keys = {key: (a is not None, b is not None) for key, (a, b) in changed.items()}
        diff = classify_changes(keys, self._tree_reader(old_tree), self._tree_reader(new_tree))
        virtual = frozenset(k for k, (_, b) in changed.items() if isinstance(b, VirtualRef))
        return attrs.evolve(diff, virtual_keys=virtual) if virtual else diff

    def _tree_reader(self, root: ObjectId | None) -> Callable[[str], bytes | None]:
        def read(key: str) -> bytes | None:
            entry = lookup(self.reader.lookup_node, root, key)
            if isinstance(entry, ChunkRef):
                return self.reader.chunks([entry.chunk_id], [entry.location])[0]
            if isinstance(entry, VirtualRef):
                return self.virtual_chunks.read([entry])[0]
            return entry

        return read

    # -- maintenance -------------------------------------------------------------------

    def garbage_collect(self, older_than: datetime | None = None, *, dry_run: bool = False,
                        progress: ProgressOption | None = None, full: bool = False
                        ) -> GCSummary:
        """Delete objects that no branch, tag or session can reach; report bytes freed.

        Snapshots left behind by ``reset_branch`` / ``delete_branch`` /
        ``delete_tag`` or cut out by ``expire_snapshots`` become unreachable
        and are removed with the data only they used. Safe while other
        sessions write (see ``versionstore.gc``). Incremental: a run costs
        in proportion to what changed since the previous one, not to the
        size of the repository (``versionstore.gc_incremental``).

        Args:
            older_than: a grace period: unreachable snapshots written at or
                after this time are kept (with all they reach), so a recent
                reset can still be undone; on object storage, so is every
                object stored at or after it (a writer may have stored it
                and not yet recorded it). ``None``: the storage's default —
                none on LMDB and in memory (their sweep is atomic), one day
                before now on object storage (``docs/format.md``).
            dry_run: only count what would be deleted, and its bytes.
            progress: told ``(phase, done, total)`` as the run advances; or
                ``True`` for a bar on a terminal, ``False`` / ``None`` for nothing
                (as ``push``).
            full: mark everything and list every object instead (what the
                first run on a repository does anyway); deletes the same.

        Returns:
            ``GCSummary`` with ``deleted`` objects and ``bytes_freed`` (their
            stored size). On LMDB the file keeps its size: ``compact()``
            gives the space back to the file system. A run that deleted
            something adds a ``gc`` entry to the ops log.

        Warns:
            ShortGracePeriodWarning: on object storage, ``older_than`` less
                than an hour back (``versionstore.gc.warn_if_short_grace``).
        """
        self._check_gc(older_than, dry_run, full)
        with progress_reporter(progress) as report:
            return self._garbage_collect(older_than, dry_run=dry_run, progress=report, full=full)

    def _check_gc(self, older_than: datetime | None, dry_run: bool, full: bool) -> None:
        """Check ``garbage_collect``'s arguments, and warn its caller of a short grace period."""
        check_flag(dry_run, "dry_run")
        check_flag(full, "full")
        check_optional_time(older_than, "older_than")
        warn_if_short_grace(self.backend, older_than, dry_run=dry_run, stacklevel=3)

    def _garbage_collect(self, older_than: datetime | None, *, dry_run: bool,
                         progress: Progress | None, full: bool) -> GCSummary:
        """``garbage_collect`` once its arguments are checked (and any warning given)."""
        summary = collect_garbage(self.reader, dry_run=dry_run, older_than=older_than,
                                  progress=progress, full=full)
        if summary.deleted and not summary.dry_run:
            # After the sweep, in a step of its own: gc moves no branch or tag, and a
            # crash between the two loses only this note (icechunk's GCRanUpdate).
            self.backend.write(with_operation(WriteBatch(), Operation(
                kind="gc", ref=REPOSITORY_OPERATION, old=None, new=None,
                written_at=datetime.now(UTC),
                message=f"deleted {summary.deleted} object(s), {summary.bytes_freed} bytes")))
            self.backend.sync()
        return summary

    def expire_snapshots(self, older_than: datetime, *, delete_expired_branches: bool = False,
                         delete_expired_tags: bool = False) -> set[SnapshotId]:
        """Remove snapshots written before ``older_than`` from every ancestry.

        Branch tips, tagged snapshots and the first snapshot are never
        expired; no snapshot id changes and no branch or tag moves (see
        ``versionstore.expire``). The data goes at the next
        ``garbage_collect`` — only what no kept snapshot still uses. Safe
        while other processes commit, and not starved by them: a commit,
        reset or tag landing meanwhile lands as if just after the expiry.

        Args:
            older_than: the timezone-aware cut-off.
            delete_expired_branches: first delete branches (not ``main``)
                whose tip is older than the cut-off.
            delete_expired_tags: first delete tags whose snapshot is older.
                Either keeps a branch or tag whose snapshot stays anyway (the
                first snapshot, or the tip of a ref that is kept), as icechunk 2.

        Returns:
            The expired snapshot ids.

        Raises:
            ValueError: if ``older_than`` has no timezone.
            MaintenanceConflictError: the grafts (which other runs of expiry and
                garbage collection change), or the branches and tags it
                deletes, kept changing through many attempts; nothing was
                changed.
        """
        if older_than is None:
            raise TypeError("older_than is required: a timezone-aware datetime")
        check_optional_time(older_than, "older_than")
        check_flag(delete_expired_branches, "delete_expired_branches")
        check_flag(delete_expired_tags, "delete_expired_tags")
        expired = expire_snapshots(self.reader, older_than,
                                   delete_expired_branches=delete_expired_branches,
                                   delete_expired_tags=delete_expired_tags)
        return {SnapshotId(_text(i)) for i in expired}

    def du(self, branch: str | None = None, *, tag: str | None = None,
           snapshot_id: str | None = None) -> VersionUsage:
        """Sizes of one version (default: ``main``): keys, chunks, bytes, per array.

        On LMDB also the data file's size and its reclaimable bytes (free
        pages that ``compact()`` would return to the file system).
        """
        check_optional_name(branch, "branch", "a branch name")
        check_optional_name(tag, "tag", "a tag name")
        check_optional_name(snapshot_id, "snapshot_id", "a snapshot id")
        target = self._resolve(branch=branch, tag=tag, snapshot_id=snapshot_id,
                               default_branch=MAIN)
        usage = version_usage(self.reader, target)
        if isinstance(self.backend, LMDBBackend):
            space = self.backend.space()
            usage = attrs.evolve(usage, file_bytes=space.file_bytes,
                                 reclaimable_bytes=space.reclaimable_bytes)
        return usage

    def du_history(self, branch: str = MAIN) -> list[SnapshotUsage]:
        """Per snapshot of ``branch`` (newest first): keys changed, bytes added, bytes only it uses.

        ``exclusive_bytes`` is what expiring that snapshot alone would free
        (``versionstore.usage``). Cost: the keys each snapshot changed.
        """
        check_name(branch, "branch")
        return history_usage(self.reader, self.refs.branch_tip(branch)[0])

    def compact(self) -> CompactReport:
        """Give the space freed by ``garbage_collect`` back to the file system.

        An LMDB file never shrinks: deleted objects leave free pages that
        later writes reuse. This rewrites the environment with LMDB's
        compacting copy and swaps it in atomically (``backend.lmdb``). It
        needs the repository to itself. In memory and on object storage
        (whose deletions free space at once) there is nothing to do: the
        report says 0 bytes before and after.

        Raises:
            RepositoryBusyError: another process (named by id) or another open
                ``Repository`` of the same directory in this process has it
                open, or another thread is reading or committing through this
                one (not waited for); nothing changed.
            ReadOnlyRepositoryError: the repository is open read-only.
        """
        if not isinstance(self.backend, LMDBBackend):
            return CompactReport(bytes_before=0, bytes_after=0)
        before, after = self.backend.compact()
        self.reader = ObjectReader(self.backend)
        return CompactReport(bytes_before=before, bytes_after=after)

    def purge(self, path: str, *, message: str | None = None, force: bool = False,
              gc_older_than: datetime | None = None) -> PurgeResult:
        """Erase node ``path`` (an array or group) from every version, branch and tag.

        Rewrites history (``versionstore.purge``): snapshot ids change from
        the first snapshot that held the node; branches and tags move to the
        rewritten snapshots. Then collects garbage, so no object holds the
        node's data any more (on LMDB, ``compact()`` also drops the freed
        pages from the file). On object storage that collection keeps its
        default grace period (a day: a writer may have stored objects it has
        not yet recorded), so the node's objects are deleted only by a later
        ``garbage_collect``, or at once with ``gc_older_than=now`` while no
        writer is active. Safe while other processes commit, and not
        starved by commits to branches it does not move; a commit to a
        branch it moves makes it start over (``versionstore.purge``).

        Args:
            path: the node, e.g. ``"/participants/p042"``.
            message: why (kept in each rewritten snapshot's metadata under
                ``"versionstore.purge"``).
            force: discard writable sessions open on affected branches
                instead of refusing.
            gc_older_than: the grace period of the collection that follows
                (``garbage_collect``'s ``older_than``; default: the storage's).

        Returns:
            ``PurgeResult``: ``rewritten`` maps old snapshot ids to new ones
            (empty when no snapshot held the node: nothing changed — check
            the path; the CLI then exits with status 1); ``gc`` is the
            collection that followed.

        Raises:
            PurgeBlockedError: writable sessions are open on affected branches.
            ValueError: ``path`` is the root.
            MaintenanceConflictError: branches it moves kept moving (commits to them)
                through many attempts; nothing was changed.

        Warns:
            ShortGracePeriodWarning: on object storage, ``gc_older_than`` less
                than an hour back (``versionstore.gc.warn_if_short_grace``).
        """
        self._check_purge(message, force, gc_older_than)
        return self._purge(path, message=message, force=force, gc_older_than=gc_older_than)

    def _check_purge(self, message: str | None, force: bool,
                     gc_older_than: datetime | None) -> None:
        """Check ``purge``'s arguments, and warn its caller of a short grace period."""
        check_optional_name(message, "message", "a message")
        check_flag(force, "force")
        check_optional_time(gc_older_than, "gc_older_than")
        warn_if_short_grace(self.backend, gc_older_than, dry_run=False, stacklevel=3)

    def _purge(self, path: str, *, message: str | None, force: bool,
               gc_older_than: datetime | None) -> PurgeResult:
        """``purge`` once its arguments are checked (and any warning given)."""
        mapping = purge_node(self.reader, path, message=message, force=force)
        summary = collect_garbage(self.reader, older_than=gc_older_than)
        return PurgeResult(
            rewritten={SnapshotId(_text(a)): SnapshotId(_text(b)) for a, b in mapping.items()},
            gc=summary,
        )

    def discard_session(self, session_id: str) -> None:
        """Drop a writable session's staged changes (after a crash, say).

        Its data, and its record, become garbage for the next ``garbage_collect``. A write a
        live copy of the session stages at the same moment is kept (with
        its record), exactly as ``Session.discard_changes``.

        Raises:
            SessionNotFoundError: no such session has anything staged.
        """
        check_name(session_id, "session_id", "a session id")
        name = session_ref(session_id)
        while True:
            raw = self.backend.get_ref(name)
            staged = self.backend.list_refs(stage_prefix(session_id))
            record = None if raw is None else decode_session(name, raw)
            if raw is None or record is None or not (staged or record.manifests):
                raise SessionNotFoundError(session_id)
            # The record stays until gc prunes it, so a live copy that stages again
            # still finds it; a staged ref removed meanwhile makes the batch re-read.
            # Its staged manifests (object storage) go with the refs.
            emptied = attrs.evolve(record, manifests=())
            if self.backend.write(WriteBatch(
                expect={name: raw},
                refs={name: encode_session(name, emptied)} if record.manifests else {},
                delete_if_equal=staged,
                session=SessionRule(prefix=stage_prefix(session_id), record=name, value=raw),
            )):
                break
        self.backend.sync()

    def discard_sessions(self, older_than: datetime) -> list[SessionId]:
        """Discard every writable session started (or last committed) before ``older_than``.

        The cleanup for sessions abandoned by kernels that died before
        ``commit``. Returns the discarded ids.
        """
        if older_than is None:
            raise TypeError("older_than is required: a timezone-aware datetime")
        check_optional_time(older_than, "older_than")
        discarded = []
        for name, raw in self.backend.list_refs("session/").items():
            if decode_session(name, raw).created_at < older_than:
                session_id = SessionId(name.removeprefix("session/"))
                try:
                    self.discard_session(session_id)
                except SessionNotFoundError:
                    continue
                discarded.append(session_id)
        return discarded

    def verify(self, progress: ProgressOption | None = None, *,
               check_virtual: bool = False) -> VerifyReport:
        """Check every reachable object deeply (checksums, content hashes, invariants).

        ``progress`` is told ``(phase, done, total)`` as objects are checked
        (``True``: a bar on a terminal; ``False`` / ``None``: nothing, as ``push``).
        With ``check_virtual``, the sources of virtual chunks are checked too
        (one ``stat`` per source file, through ``virtual_chunk_stores``): a
        source that is gone, too short, changed since it was referenced, or
        served by no configured store is a problem.
        """
        check_flag(check_virtual, "check_virtual")
        with progress_reporter(progress) as report:
            return verify_repository(self.reader, report,
                                     self.virtual_chunks if check_virtual else None)

    # -- async twins -------------------------------------------------------------------

    async def writable_session_async(self, branch: str | None = None, *,
                                     resume: str | None = None) -> Session:
        """``writable_session`` without blocking the event loop."""
        return await asyncio.to_thread(self.writable_session, branch, resume=resume)

    async def readonly_session_async(self, branch: str | None = None, *, tag: str | None = None,
                                     snapshot_id: str | None = None,
                                     as_of: datetime | None = None) -> Session:
        """``readonly_session`` without blocking the event loop."""
        return await asyncio.to_thread(self.readonly_session, branch, tag=tag,
                                       snapshot_id=snapshot_id, as_of=as_of)

    async def diff_async(self, **versions: str | None) -> Diff:
        """``diff`` without blocking the event loop."""
        return await asyncio.to_thread(lambda: self.diff(**versions))

    async def ancestry_async(self, *, all_parents: bool = False, **version: str | None
                             ) -> list[SnapshotInfo]:
        """``ancestry`` (as a list) without blocking the event loop."""
        return await asyncio.to_thread(
            lambda: list(self.ancestry(all_parents=all_parents, **version)))

    async def merge_async(self, from_branch: str | None = None, into_branch: str = MAIN,
                          **options: Any) -> SnapshotId:
        """``merge`` without blocking the event loop."""
        return await asyncio.to_thread(lambda: self.merge(from_branch, into_branch, **options))

    async def cherry_pick_async(self, snapshot_id: str, onto_branch: str = MAIN,
                                **options: Any) -> SnapshotId:
        """``cherry_pick`` without blocking the event loop."""
        return await asyncio.to_thread(
            lambda: self.cherry_pick(snapshot_id, onto_branch, **options))

    async def revert_async(self, snapshot_id: str, on_branch: str = MAIN, **options: Any
                           ) -> SnapshotId:
        """``revert`` without blocking the event loop."""
        return await asyncio.to_thread(lambda: self.revert(snapshot_id, on_branch, **options))

    async def squash_async(self, branch: str = MAIN, **options: Any) -> SnapshotId:
        """``squash`` without blocking the event loop."""
        return await asyncio.to_thread(lambda: self.squash(branch, **options))

    async def ops_log_async(self) -> list[OpsLogEntry]:
        """``ops_log`` (as a list) without blocking the event loop."""
        return await asyncio.to_thread(lambda: list(self.ops_log()))

    async def merge_base_async(self, snapshot_id_a: str, snapshot_id_b: str
                               ) -> SnapshotId | None:
        """``merge_base`` without blocking the event loop."""
        return await asyncio.to_thread(self.merge_base, snapshot_id_a, snapshot_id_b)

    async def rearrange_session_async(self, branch: str = MAIN) -> Session:
        """``rearrange_session`` without blocking the event loop."""
        return await asyncio.to_thread(self.rearrange_session, branch)

    async def expire_snapshots_async(self, older_than: datetime, *,
                                     delete_expired_branches: bool = False,
                                     delete_expired_tags: bool = False) -> set[SnapshotId]:
        """``expire_snapshots`` without blocking the event loop."""
        return await asyncio.to_thread(
            lambda: self.expire_snapshots(older_than,
                                          delete_expired_branches=delete_expired_branches,
                                          delete_expired_tags=delete_expired_tags))

    async def garbage_collect_async(self, older_than: datetime | None = None, *,
                                    dry_run: bool = False, full: bool = False) -> GCSummary:
        """``garbage_collect`` without blocking the event loop."""
        self._check_gc(older_than, dry_run, full)
        return await asyncio.to_thread(
            lambda: self._garbage_collect(older_than, dry_run=dry_run, progress=None, full=full))

    async def du_async(self, branch: str | None = None, *, tag: str | None = None,
                       snapshot_id: str | None = None) -> VersionUsage:
        """``du`` without blocking the event loop."""
        return await asyncio.to_thread(lambda: self.du(branch, tag=tag, snapshot_id=snapshot_id))

    async def du_history_async(self, branch: str = MAIN) -> list[SnapshotUsage]:
        """``du_history`` without blocking the event loop."""
        return await asyncio.to_thread(self.du_history, branch)

    async def purge_async(self, path: str, *, message: str | None = None, force: bool = False,
                          gc_older_than: datetime | None = None) -> PurgeResult:
        """``purge`` without blocking the event loop."""
        self._check_purge(message, force, gc_older_than)
        return await asyncio.to_thread(lambda: self._purge(
            path, message=message, force=force, gc_older_than=gc_older_than))

    async def compact_async(self) -> CompactReport:
        """``compact`` without blocking the event loop."""
        return await asyncio.to_thread(self.compact)

    async def verify_async(self, progress: ProgressOption | None = None, *,
                           check_virtual: bool = False) -> VerifyReport:
        """``verify`` without blocking the event loop (``progress`` is called from its thread)."""
        return await asyncio.to_thread(
            lambda: self.verify(progress, check_virtual=check_virtual))


def _check_repository(value: object, parameter: str) -> None:
    if not isinstance(value, Repository):
        raise TypeError(f"{parameter} must be a Repository (vs.Repository.open(storage)); got "
                        f"{type(value).__name__}")


def _text(object_id: ObjectId) -> str:
    return object_id_text(object_id)


def _reopen_repository(cls: type[Repository], storage: RepositoryStorage,
                       virtual_chunks: VirtualChunkStores) -> Repository:
    """Unpickle a ``Repository``: open it again from its storage description."""
    repository = cls.open(storage)
    repository.virtual_chunks = virtual_chunks
    return repository

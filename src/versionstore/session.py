"""Sessions: a view of one version, and the writes staged on top of it.

A read-only session reads one snapshot. A writable session reads its base
snapshot *plus* its staged changes, and ``commit`` turns those into a new
snapshot on its branch. Staged changes live in the backend (``stage/<id>/…``
refs, with large values already stored as chunk objects), not in Python
memory: a kernel that dies before ``commit`` loses nothing, the session is
resumed by id, and a pickled session shipped to dask workers stages into the
same place.

Commit is optimistic. If the branch moved since the session's base, the
commit compares the branch's new changes with its own: disjoint changes are
rebased automatically; overlapping keys (with different values) raise
``ConflictError`` naming them, and the staged changes stay for the user to
resolve. The branch moves by one compare-and-swap that also clears the
staging area, so a commit either happens whole or not at all.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from versionstore.codec import (
    decode_staged,
    encode_chunk,
    encode_session,
    encode_snapshot,
    encode_staged,
    pack_metadata,
)
from versionstore.errors import ConflictError, NothingToCommitError, ReadOnlySessionError
from versionstore.history import Diff, classify_changes
from versionstore.ids import ObjectId, SessionId, SnapshotId, object_id_text
from versionstore.records import (
    TOMBSTONE,
    ChunkRef,
    Entry,
    Node,
    SessionRecord,
    Snapshot,
    Tombstone,
)
from versionstore.refs import session_ref, stage_prefix
from versionstore.session_store import SessionStore
from versionstore.tree import Change, apply_changes, changed_entries, iter_from, lookup

if TYPE_CHECKING:
    from versionstore.repository import Repository

__all__ = ["INLINE_LIMIT", "NothingToCommitError", "Session"]

#: Values up to this size live inline in tree leaves; larger ones are chunk objects.
INLINE_LIMIT = 512
_MAX_COMMIT_ATTEMPTS = 1000


class Session:
    """A view of one version of a repository; writable sessions stage changes on a branch."""

    def __init__(
        self,
        repository: Repository,
        *,
        base: ObjectId,
        branch: str | None,
        read_only: bool,
        session_id: SessionId | None = None,
    ) -> None:
        self._repo = repository
        self._base = base
        self._root = repository.reader.snapshot(base).tree
        self._branch = branch
        self._read_only = read_only
        self._session_id = session_id
        self._recorded = False

    # -- identity -----------------------------------------------------------------------

    @property
    def repository(self) -> Repository:
        """The repository this session reads."""
        return self._repo

    @property
    def snapshot_id(self) -> SnapshotId:
        """The snapshot this session reads (its base, for a writable session)."""
        return SnapshotId(object_id_text(self._base))

    @property
    def branch(self) -> str | None:
        """The branch a writable session commits to (``None`` for snapshot views)."""
        return self._branch

    @property
    def read_only(self) -> bool:
        """Whether this session refuses writes."""
        return self._read_only

    @property
    def session_id(self) -> SessionId | None:
        """The id to resume a writable session with after a crash."""
        return self._session_id

    @property
    def store(self) -> SessionStore:
        """This session as a zarr store: pass it to ``zarr.open_group`` or ``xarray``."""
        return SessionStore(self)

    def __repr__(self) -> str:
        mode = "read-only" if self._read_only else f"writable, session {self._session_id}"
        where = f"branch {self._branch!r}, " if self._branch else ""
        return f"<Session {where}snapshot {self.snapshot_id} ({mode})>"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Session)
            and self._repo.storage == other._repo.storage
            and self._base == other._base
            and self._branch == other._branch
            and self._read_only == other._read_only
            and self._session_id == other._session_id
        )

    def __hash__(self) -> int:
        return hash((self._base, self._session_id))

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        # Reopens the repository from its storage description in the receiving process.
        state = {
            "storage": self._repo.storage,
            "base": self._base,
            "branch": self._branch,
            "read_only": self._read_only,
            "session_id": self._session_id,
        }
        return type(self._repo).session_from_state, (state,)

    # -- reading ------------------------------------------------------------------------

    def _staged_entry(self, key: str) -> Entry | Tombstone | None:
        if self._session_id is None:
            return None
        name = stage_prefix(self._session_id) + key
        raw = self._repo.backend.get_ref(name)
        return None if raw is None else decode_staged(name, raw)

    def entry(self, key: str) -> Entry | None:
        """The entry this session sees at ``key`` (staged changes first)."""
        staged = self._staged_entry(key)
        if staged is not None:
            return None if isinstance(staged, Tombstone) else staged
        return lookup(self._repo.reader.node, self._root, key)

    def read_entries(self, entries: list[Entry | None]) -> list[bytes | None]:
        """Resolve entries to values, fetching all chunk objects in one backend call."""
        refs = [e.chunk_id for e in entries if isinstance(e, ChunkRef)]
        fetched = iter(self._repo.reader.chunks(refs) if refs else [])
        return [
            e if e is None or isinstance(e, bytes) else next(fetched) for e in entries
        ]

    def staged(self, prefix: str = "") -> dict[str, Entry | Tombstone]:
        """Every staged change under ``prefix``, sorted by key."""
        if self._session_id is None:
            return {}
        base = stage_prefix(self._session_id)
        return {
            name[len(base):]: decode_staged(name, raw)
            for name, raw in self._repo.backend.list_refs(base + prefix).items()
        }

    def iter_entries(self, start: str, prefix: str) -> Iterator[tuple[str, Entry]]:
        """``(key, entry)`` pairs with ``key >= start`` under ``prefix``, staged changes applied."""
        staged = self.staged(prefix)
        staged_keys = list(staged)
        position = bisect.bisect_left(staged_keys, start)
        for key, entry in iter_from(self._repo.reader.node, self._root, start):
            if not key.startswith(prefix):
                break
            while position < len(staged_keys) and staged_keys[position] < key:
                pending = staged[staged_keys[position]]
                if not isinstance(pending, Tombstone):
                    yield staged_keys[position], pending
                position += 1
            if position < len(staged_keys) and staged_keys[position] == key:
                pending = staged[key]
                position += 1
                if not isinstance(pending, Tombstone):
                    yield key, pending
                continue
            yield key, entry
        for key in staged_keys[position:]:
            pending = staged[key]
            if not isinstance(pending, Tombstone):
                yield key, pending

    # -- writing ------------------------------------------------------------------------

    def _require_writable(self) -> SessionId:
        if self._read_only or self._session_id is None:
            raise ReadOnlySessionError(
                "this session is read-only; open repo.writable_session(branch) to write"
            )
        return self._session_id

    def _stage(self, objects: list[tuple[ObjectId, bytes]],
               refs: dict[str, bytes | None]) -> None:
        """Write staged changes, carrying the session record until a write has stored it.

        The record is what makes staged keys resumable, so ``_recorded`` flips only
        after a write that carried it returned: a write that failed, or one still
        in flight in another thread, never leaves later staged keys without it.
        """
        if not self._recorded:
            assert self._branch is not None and self._session_id is not None
            record = SessionRecord(branch=self._branch, base=self._base,
                                   created_at=datetime.now(UTC))
            refs = {**refs, session_ref(self._session_id): encode_session(record)}
        self._repo.backend.put_objects(objects, refs)
        self._recorded = True

    def set_values(self, items: list[tuple[str, bytes]]) -> None:
        """Stage ``key = value`` for each item (durably, before returning)."""
        session_id = self._require_writable()
        objects = []
        refs: dict[str, bytes | None] = {}
        prefix = stage_prefix(session_id)
        for key, value in items:
            entry: Entry
            if len(value) <= INLINE_LIMIT:
                entry = value
            else:
                chunk_id, frame = encode_chunk(value)
                objects.append((chunk_id, frame))
                entry = ChunkRef(chunk_id=chunk_id, size=len(value))
            refs[prefix + key] = encode_staged(entry)
        self._stage(objects, refs)

    def erase_keys(self, keys: list[str]) -> None:
        """Stage the deletion of each key (keys that do not exist are ignored)."""
        session_id = self._require_writable()
        prefix = stage_prefix(session_id)
        refs: dict[str, bytes | None] = {}
        for key in keys:
            in_base = lookup(self._repo.reader.node, self._root, key) is not None
            refs[prefix + key] = encode_staged(TOMBSTONE) if in_base else None
        if refs:
            self._stage([], refs)

    @property
    def has_uncommitted_changes(self) -> bool:
        """Whether anything is staged."""
        if self._session_id is None:
            return False
        return bool(self._repo.backend.list_refs(stage_prefix(self._session_id), limit=1))

    def discard_changes(self) -> None:
        """Drop every staged change (the base snapshot is unchanged)."""
        session_id = self._require_writable()
        refs: dict[str, bytes | None] = {
            stage_prefix(session_id) + key: None for key in self.staged()
        }
        refs[session_ref(session_id)] = None
        self._recorded = False
        self._repo.backend.put_objects([], refs)

    def _changes(self) -> list[Change]:
        return [
            (key, None if isinstance(entry, Tombstone) else entry)
            for key, entry in self.staged().items()
        ]

    def status(self) -> Diff:
        """The staged changes, as a ``Diff`` against the base snapshot."""
        changes = self._changes()
        keys = {}
        for key, entry in changes:
            before = lookup(self._repo.reader.node, self._root, key)
            if before != entry:
                keys[key] = (before is not None, entry is not None)
        return classify_changes(keys, self._read_base, self._read_key)

    def _read_key(self, key: str) -> bytes | None:
        return self.read_entries([self.entry(key)])[0]

    def _read_base(self, key: str) -> bytes | None:
        return self.read_entries([lookup(self._repo.reader.node, self._root, key)])[0]

    # -- committing ------------------------------------------------------------------

    def _conflicts(self, base_tree: ObjectId | None, tip_tree: ObjectId | None,
                   changes: list[Change]) -> set[str]:
        theirs = changed_entries(self._repo.reader.node, base_tree, tip_tree)
        return {key for key, entry in changes if key in theirs and theirs[key][1] != entry}

    def rebase(self, *, keep: Literal["raise", "ours", "theirs"] = "raise") -> None:
        """Move the session's base to its branch's tip, keeping the staged changes.

        Args:
            keep: what to do with keys both sides changed: ``"raise"`` a
                ``ConflictError``, keep ``"ours"`` (the staged value), or keep
                ``"theirs"`` (drop our staged change to that key).
        """
        session_id = self._require_writable()
        assert self._branch is not None
        tip, _ = self._repo.refs.branch_tip(self._branch)
        reader = self._repo.reader
        conflicts = self._conflicts(
            self._root, reader.snapshot(tip).tree, self._changes()
        )
        if conflicts and keep == "raise":
            raise ConflictError(self._branch, conflicts)
        refs: dict[str, bytes | None] = {}
        if keep == "theirs":
            refs.update({stage_prefix(session_id) + key: None for key in conflicts})
        self._base, self._root = tip, reader.snapshot(tip).tree
        self._recorded = False
        if self.has_uncommitted_changes or refs:
            self._stage([], refs)

    def commit(self, message: str, metadata: dict[str, Any] | None = None) -> SnapshotId:
        """Record the staged changes as a new snapshot on the branch; return its id.

        Raises:
            ReadOnlySessionError: on a read-only session.
            NothingToCommitError: if nothing is staged.
            ConflictError: if the branch moved and touched the same keys; the
                staged changes are kept.
        """
        session_id = self._require_writable()
        assert self._branch is not None
        metadata = dict(metadata or {})
        pack_metadata(metadata)
        changes = self._changes()
        if not changes:
            raise NothingToCommitError("nothing to commit: no changes are staged")
        repo = self._repo
        cleanup: dict[str, bytes | None] = {stage_prefix(session_id) + k: None for k, _ in changes}
        cleanup[session_ref(session_id)] = None
        for _ in range(_MAX_COMMIT_ATTEMPTS):
            tip, raw_tip = repo.refs.branch_tip(self._branch)
            parent_tree = self._root
            if tip != self._base:
                parent_tree = repo.reader.snapshot(tip).tree
                conflicts = self._conflicts(self._root, parent_tree, changes)
                if conflicts:
                    raise ConflictError(self._branch, conflicts)
            new_nodes: dict[ObjectId, Node] = {}
            root, nodes = apply_changes(repo.reader.node, parent_tree, changes,
                                        decoded=new_nodes)
            snapshot = Snapshot(
                parent=tip, tree=root, message=message,
                written_at=datetime.now(UTC), metadata=metadata,
            )
            snapshot_id, frame = encode_snapshot(snapshot)
            objects = [*nodes.items(), (snapshot_id, frame)]
            if repo.refs.move_branch(self._branch, raw_tip, snapshot_id, cleanup, objects):
                repo.backend.sync()
                repo.reader.remember_nodes(new_nodes)  # the next commit starts from them
                self._base, self._root, self._recorded = snapshot_id, root, False
                return SnapshotId(object_id_text(snapshot_id))
        raise ConflictError(self._branch, [])  # pragma: no cover - endless contention

    async def commit_async(self, message: str, metadata: dict[str, Any] | None = None
                           ) -> SnapshotId:
        """``commit`` without blocking the event loop."""
        return await asyncio.to_thread(self.commit, message, metadata)

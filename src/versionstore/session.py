"""Sessions: a view of one version, and the writes staged on top of it.

A read-only session reads one snapshot. A writable session reads its base
snapshot *plus* its staged changes, and ``commit`` turns those into a new
snapshot on its branch. Staged changes live in the backend (``stage/<id>/…``
refs, with large values already stored as chunk objects), not in Python
memory: a kernel that dies before ``commit`` loses nothing, the session is
resumed by id, and copies of the session — threads sharing it, pickled
copies on dask workers — all stage into the same place.

On object storage a chunk is staged by its own ``PUT`` instead, under a
name that records the session and key (*located staging*,
``versionstore.located_staging``): the commit lists them and turns them
into staged refs first, so everything below holds for them too. Many of
them become a *staged manifest* instead (``versionstore.staged_manifest``):
sorted parts that reads merge with the staged refs and a commit streams.

Every staging write is one atomic ``WriteBatch`` that also keeps the
session's record (branch and base snapshot) in existence exactly while
something is staged, so every staged entry belongs to a resumable,
discardable session. Copies learn the session's current base from that
record, so a copy that keeps writing after another copy committed builds on
the new snapshot.

Commit is optimistic. If the branch moved since the session's base, the
commit compares the branch's new changes with its own: disjoint changes are
rebased automatically; overlapping keys (with different values) raise
``ConflictError`` naming them, and the staged changes stay for the user to
resolve. The branch moves by one compare-and-swap that, in the same atomic
step, clears exactly the staged entries it recorded: a write staged by a copy
while the commit ran is kept for the next commit. The protocol's invariants
are written out in ``docs/format.md``.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import itertools
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import attrs

from versionstore.arguments import check_flag
from versionstore.backend.protocol import Joined, SessionRule, WriteBatch
from versionstore.codec import (
    PreparedChunk,
    checked_metadata,
    decode_session,
    decode_staged,
    encode_session,
    encode_snapshot,
    encode_staged,
    encode_staged_chunk,
    staged_reencodes,
)
from versionstore.commit_stream import ChunkIds, NewObjects, StagedScan
from versionstore.consolidated import moved_view, view_keys
from versionstore.errors import (
    SESSION_CONFLICT_HINT,
    AmendInitialSnapshotError,
    ConflictError,
    CorruptObjectError,
    InvalidMoveError,
    MissingObjectsError,
    NothingToCommitError,
    ReadOnlySessionError,
    SnapshotCollectedError,
    SnapshotNotFoundError,
)
from versionstore.grafts import parents_of
from versionstore.group_stage import GroupStager
from versionstore.history import Diff, KeyLocator, classify_changes, with_history
from versionstore.ids import ObjectId, SessionId, SnapshotId, object_id_text
from versionstore.located_staging import (
    LocatedStaging,
    is_located_key,
    is_located_value,
    newer_than_ref,
)
from versionstore.merge import NODE_DOCUMENTS
from versionstore.node_conflicts import NodeChanges, within
from versionstore.records import (
    DOCUMENT_NAMES,
    TOMBSTONE,
    ChunkRef,
    Entry,
    Node,
    SessionRecord,
    Snapshot,
    StagedManifest,
    Tombstone,
    VirtualRef,
)
from versionstore.refs import branch_ref, session_ref, stage_prefix
from versionstore.session_store import SessionStore, validate_session_key
from versionstore.sizes import SizeTally, sizes_of, with_documents
from versionstore.staged_manifest import ManifestReader, manifest_beats_ref, merge_staged
from versionstore.staged_values import INLINE_LIMIT, StagedValues, as_stored, stored_changes
from versionstore.tree import Change, apply_changes, changed_entries, iter_from, lookup
from zarrstore.values import value_bytes

if TYPE_CHECKING:
    from versionstore.repository import Repository

__all__ = ["INLINE_LIMIT", "NothingToCommitError", "Session"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def _weakly(method: Callable[..., None]) -> Callable[..., None]:
    """``method`` (bound to a session) called through a weak reference to its session."""
    ref = weakref.WeakMethod(method)

    def call(*args: Any) -> None:
        bound = ref()
        if bound is None:  # pragma: no cover - the store holding the session is calling
            raise ReferenceError("the session was garbage collected")
        bound(*args)

    return call

#: A value staged alone (a batch of one key, off object storage) of at most this many bytes
#: is kept inside its staged record instead of as a chunk object: its transaction then
#: writes one LMDB database, not three (chunk, gc journal, staged ref), about half the
#: cost of a lone ``set`` (``docs/benchmarks.md``, "Issue 13, fourth round"). The commit
#: stores it as a chunk object (``as_stored``). Batches keep staged refs small: each
#: listing of staged keys and gc's view of the refs copy what they hold.
STAGED_INLINE_LIMIT = 4096
#: ... until a session object has staged this many bytes of such values since its last
#: commit: then its lone values are chunk objects again, so that garbage collection's view
#: of the refs and listings of staged keys (which copy each staged ref's value) stay
#: within this much per copy of the session, however many values are staged alone.
STAGED_INLINE_BUDGET = 16 << 20
_MAX_COMMIT_ATTEMPTS = 1000
#: New leaves a commit keeps decoded for the next one (``ObjectReader.remember_nodes``
#: keeps no leaves of a commit that made more).
_REMEMBER_LEAVES = 1024
#: ... and at most this many bytes of them, encoded: leaves of located chunks (object
#: storage) hold a location per entry, and 1,024 of them decoded cost about 90 MiB.
_REMEMBER_BYTES = 12 << 20
#: Chunks a session object stages as log records after each commit before it stages
#: located writes (object storage): a commit of this few then costs no absorb (its
#: close, listing and record), and a big one only this many extra write requests.
_LOGGED_FIRST = 4
#: Times a located write is written again into the open epoch after an absorb closed
#: the one it went to (each time the absorb ran between its PUT and its look).
_RELOCATE_ATTEMPTS = 8
#: Seconds a staging ``SessionRule`` is reused (``Session._staging``).
_RULE_REUSE_S = 1.0


#: How many decoded staged records a session remembers (``Session._staged_entry``): zarr
#: reads back what it just wrote, and a commit finds the records this object staged.
_STAGED_DECODED = 16384
#: ... only records of at most this many bytes: looking one up hashes the record, which
#: for a value staged inline (``STAGED_INLINE_LIMIT``) costs as much as decoding it.
_REMEMBER_BELOW = 1024


def _reading_base(read: F) -> F:
    """``read`` (a ``Session`` method), a missing object of a collected base said as such.

    A read needs objects of the base snapshot's tree; after the branch was
    reset and gc ran they are gone, which would otherwise read as damage
    (``CorruptObjectError``): ``Session._raise_if_collected``.
    """
    @functools.wraps(read)
    def checked(self: Session, *args: Any) -> Any:
        try:
            return read(self, *args)
        except CorruptObjectError as exc:
            self._raise_if_collected(exc)
            raise

    return checked  # type: ignore[return-value]


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
        generation: int = 0,
        copy: bool = False,
    ) -> None:
        self._repo = repository
        self._base = base
        self._root = repository.reader.snapshot(base).tree
        self._branch = branch
        self._read_only = read_only
        self._session_id = session_id
        # Ref names of this session's staging (fixed for its life), built once.
        self._stage_names = (
            None if session_id is None else (stage_prefix(session_id), session_ref(session_id))
        )
        #: Staged records already decoded: stored bytes -> (ref name, entry). Decoding is
        #: a pure function of both, so equal bytes under the same name decode the same.
        self._staged_decoded: dict[bytes, tuple[str, Entry | Tombstone]] = {}
        self._record_raw: bytes | None = None
        #: The session record as ``_refresh`` last read it (``None``: absent).
        self._record_read: bytes | None = None
        self._generation = generation
        self._group_stager: GroupStager | None = None
        self._staging_rule: tuple[tuple[ObjectId, int], float, SessionRule] | None = None
        #: Located staging (object storage): the session's located writes, and the record's
        #: epoch and closing epochs as last read (``None``: no located staging seen).
        self._located = (LocatedStaging(repository.backend, session_id)
                         if session_id is not None and not read_only
                         and repository.backend.located_staging() else None)
        self._epochs: tuple[int, tuple[int, ...]] | None = None
        #: The staged manifests of the record as last read (``versionstore.staged_manifest``).
        self._manifests: tuple[StagedManifest, ...] = ()
        self._manifest_reader: ManifestReader | None = None
        #: Chunks this object staged as log records since its last commit (``_LOGGED_FIRST``).
        #: A copy (unpickled: a dask task's) stages located at once: each copy logging its
        #: first chunks would cost every task a log record and an absorb.
        self._logged_chunks = _LOGGED_FIRST if copy else 0
        #: Bytes of values over ``INLINE_LIMIT`` this object staged inline since its last
        #: commit (``STAGED_INLINE_BUDGET``).
        self._inline_bytes = 0

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
    def stages_located(self) -> bool:
        """Whether chunks are staged by located writes (object storage: ``docs/format.md``)."""
        return self._located is not None

    @property
    def session_id(self) -> SessionId | None:
        """The id to resume a writable session with after a crash."""
        return self._session_id

    @property
    def group_stager(self) -> GroupStager:
        """Batches this session's concurrent async writes (``versionstore.group_stage``)."""
        if self._group_stager is None:
            backend = self._repo.backend
            # Weakly: the stager is the session's, and bound methods would make a cycle that
            # keeps the repository's environment open after the last reference is dropped,
            # until the cycle collector runs (its directory could not be made anew meanwhile).
            self._group_stager = GroupStager(_weakly(self.set_values), backend.staging_window(),
                                             write_one=_weakly(self.set_value),
                                             busy=backend.writer_busy)
        return self._group_stager

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
            "storage": self._repo.storage_for_copies(),
            "base": self._base,
            "branch": self._branch,
            "read_only": self._read_only,
            "session_id": self._session_id,
            "generation": self._generation,
            "virtual_chunks": self._repo.virtual_chunks,
        }
        return type(self._repo).session_from_state, (state,)

    # -- reading ------------------------------------------------------------------------

    def _adopt(self, record_raw: bytes | None) -> None:
        """Follow the session record's base, which another copy's commit may have moved.

        Only a newer generation is followed: a record recreated by a copy
        that had not seen the latest commit names an older base.
        """
        if record_raw is None or record_raw == self._record_raw:
            return
        assert self._session_id is not None
        staging = self._staging_rule
        if staging is not None and record_raw == staging[2].value:
            # The record this object's own staging wrote (``_rule``): its base and
            # generation, no epochs, no manifests. Decoding it would say just that.
            self._record_raw, self._epochs, self._manifests = record_raw, None, ()
            return
        record = decode_session(session_ref(self._session_id), record_raw)
        self._record_raw = record_raw
        # A record without epochs was recreated after gc pruned it: the epochs this
        # object knew are gone with it (written back, they would reopen an old epoch).
        self._epochs = None if record.epoch is None else (record.epoch, record.closing)
        self._manifests = record.manifests
        if record.generation > self._generation:
            self._root = self._repo.reader.snapshot(record.base).tree
            self._base, self._generation = record.base, record.generation

    def _refresh(self, *, branch: bool = False) -> bytes | None:
        """Read the session record again; with ``branch``, the branch's ref too, returned raw.

        Both come from one read (one transaction on LMDB).
        """
        names = [] if self._session_id is None else [session_ref(self._session_id)]
        if branch:
            assert self._branch is not None
            names.append(branch_ref(self._branch))
        if not names:
            return None
        raws = self._repo.backend.get_refs(names)
        if self._session_id is not None:
            self._record_read = raws[0]
            self._adopt(raws[0])
        return raws[-1] if branch else None

    def _reader(self) -> ManifestReader:
        """Reads this session's staged manifests (parts cached for single-key lookups)."""
        if self._manifest_reader is None:
            assert self._session_id is not None
            self._manifest_reader = ManifestReader(self._repo.backend, self._session_id)
        return self._manifest_reader

    def _with_manifests(self, staged: Iterator[tuple[str, Entry | Tombstone]], prefix: str = ""
                        ) -> Iterator[tuple[str, Entry | Tombstone]]:
        """Staged refs (sorted by key) merged with the manifests of the record last read."""
        manifests = self._manifests
        if not manifests:
            return staged
        reader = self._reader()
        return ((key, entry) for key, entry, _ in merge_staged(
            staged, [reader.entries(m, prefix) for m in manifests]))

    def _staged_entry(self, name: str, raw: bytes) -> Entry | Tombstone:
        """``decode_staged(name, raw)``, remembered for the last few thousand records read."""
        entry = self._known_staged(name, raw)
        if entry is None:
            entry = decode_staged(name, raw)
            self._remember_staged(name, raw, entry)
        return entry

    def _staged_entry_seen(self, name: str, raw: bytes) -> Entry | Tombstone:
        """``_staged_entry`` that remembers nothing new (for a commit's scan).

        A commit streams every staged record once, and must not grow the
        session's memory with them (``tests/test_tree.py``).
        """
        entry = self._known_staged(name, raw)
        return decode_staged(name, raw) if entry is None else entry

    def _known_staged(self, name: str, raw: bytes) -> Entry | Tombstone | None:
        """The remembered decoding of staged ref ``name`` stored as ``raw``, if any."""
        if len(raw) > _REMEMBER_BELOW:
            return None  # never remembered: looking it up would hash it
        known = self._staged_decoded.get(raw)
        return known[1] if known is not None and known[0] == name else None

    def _remember_staged(self, name: str, raw: bytes, entry: Entry | Tombstone) -> None:
        """Remember that staged ref ``name`` stored as ``raw`` holds ``entry``."""
        if len(raw) > _REMEMBER_BELOW:
            return
        decoded = self._staged_decoded
        if len(decoded) >= _STAGED_DECODED:
            # Forget the older half (insertion order): a commit of the last few thousand
            # writes finds them, even just after the limit was reached.
            try:
                for old in list(itertools.islice(decoded, _STAGED_DECODED // 2)):
                    decoded.pop(old, None)
            except RuntimeError:  # another thread's write changed it meanwhile
                decoded.clear()
        decoded[raw] = (name, entry)

    @_reading_base
    def entry(self, key: str) -> Entry | None:
        """The entry this session sees at ``key`` (staged changes first).

        Raises:
            SnapshotCollectedError: the session's snapshot was garbage collected.
        """
        if self._stage_names is not None:
            prefix, record_name = self._stage_names
            name = prefix + key
            raw, record_raw = self._repo.backend.get_refs([name, record_name])
            self._adopt(record_raw)
            staged = None if raw is None else self._staged_entry(name, raw)
            if self._located is not None and record_raw is not None:
                record = decode_session(record_name, record_raw)
                if record.manifests and is_located_key(key):
                    found = self._reader().lookup(record.manifests, key)
                    if found is not None and (staged is None or manifest_beats_ref(
                            key, found[2], found[3], staged)):
                        staged = found[1]
                if is_located_key(key):
                    write = self._located.pending_key(record, key)
                    if write is not None and newer_than_ref(write, staged):
                        return write
            if staged is not None:
                return None if isinstance(staged, Tombstone) else staged
        return lookup(self._repo.reader.lookup_node, self._root, key)

    @_reading_base
    def value(self, key: str) -> bytes | None:
        """The value this session sees at ``key`` (staged changes first); ``None`` if none.

        A staged value is read in one backend call (staged ref, session record
        and chunk together); otherwise as ``read_entries([entry(key)])``.

        Raises:
            SnapshotCollectedError: the session's snapshot was garbage collected.
        """
        if self._stage_names is None:
            return self._base_value(key)
        if self._located is not None:
            found = self.entry(key)
            if (isinstance(found, ChunkRef) and found.location is None
                    and key.rpartition("/")[2] in DOCUMENT_NAMES):
                return self._repo.reader.small_chunk(found.chunk_id)
            return self.read_entries([found])[0]
        prefix, record_name = self._stage_names
        name = prefix + key
        staged: list[Entry | Tombstone] = []

        def follow(raw: list[bytes | None]) -> Sequence[ObjectId]:
            if raw[0] is None:
                return ()
            staged.append(self._staged_entry(name, raw[0]))
            return [staged[0].chunk_id] if isinstance(staged[0], ChunkRef) else ()

        (_, record_raw), stored = self._repo.backend.get_refs_and_objects(
            [name, record_name], follow)
        self._adopt(record_raw)
        if not staged:
            return self._base_value(key)
        entry = staged[0]
        if isinstance(entry, ChunkRef):
            if stored[0] is None and entry.location is not None:
                return self.read_entries([entry])[0]  # a located chunk: read at its hint
            return self._repo.reader.decode_chunks([entry.chunk_id], stored)[0]
        if isinstance(entry, VirtualRef):
            return self.read_entries([entry])[0]
        return None if isinstance(entry, Tombstone) else entry

    def _base_value(self, key: str) -> bytes | None:
        """The value at ``key`` in the base snapshot (staged changes not considered).

        A metadata document comes from the snapshot itself when it keeps
        them (``Sizes.documents``: exactly the tree's, so one it lacks is
        absent): opening an array reads no tree node. Otherwise from the
        tree, a document stored as a chunk object read alone (without
        readahead, ``ObjectReader.small_chunk``).
        """
        if key.rpartition("/")[2] in DOCUMENT_NAMES:
            sizes = self._repo.reader.snapshot(self._base).sizes
            if sizes is not None and sizes.documents is not None:
                return sizes.documents.get(key)
            found = lookup(self._repo.reader.lookup_node, self._root, key)
            if isinstance(found, ChunkRef) and found.location is None:
                return self._repo.reader.small_chunk(found.chunk_id)
            return self.read_entries([found])[0]
        return self.read_entries([lookup(self._repo.reader.lookup_node, self._root, key)])[0]

    @_reading_base
    def read_entries(self, entries: list[Entry | None]) -> list[bytes | None]:
        """Resolve entries to values, fetching all chunk objects in one backend call.

        Virtual chunks are read from their sources (``versionstore.virtual``).

        Raises:
            SnapshotCollectedError: the session's snapshot was garbage collected.
        """
        chunks = [e for e in entries if isinstance(e, ChunkRef)]
        fetched = iter(self._repo.reader.chunks([e.chunk_id for e in chunks],
                                                [e.location for e in chunks]) if chunks else [])
        virtual = [e for e in entries if isinstance(e, VirtualRef)]
        sourced = iter(self._repo.virtual_chunks.read(virtual) if virtual else [])
        return [
            e if e is None or isinstance(e, bytes)
            else next(sourced) if isinstance(e, VirtualRef) else next(fetched)
            for e in entries
        ]

    def _staged_raw(self, prefix: str = "") -> dict[str, bytes]:
        """Staged refs under ``prefix``: full ref name -> stored value (one consistent read)."""
        if self._session_id is None:
            return {}
        self._refresh()
        return self._repo.backend.list_refs(stage_prefix(self._session_id) + prefix)

    def _decode_staged(self, raw: Mapping[str, bytes]) -> dict[str, Entry | Tombstone]:
        if self._session_id is None:
            return {}
        cut = len(stage_prefix(self._session_id))
        return {name[cut:]: decode_staged(name, value) for name, value in raw.items()}

    def staged(self, prefix: str = "") -> dict[str, Entry | Tombstone]:
        """Every staged change under ``prefix``, sorted by key."""
        staged = self._decode_staged(self._staged_raw(prefix))
        if self._located is not None:
            raw, record = self._located.record()
            self._adopt(raw)
            if record is not None and record.manifests:
                staged = dict(self._with_manifests(iter(staged.items()), prefix))
            if record is not None:
                pending = self._located.pending(record, prefix)
                changed = {k: w for k, w in pending.items() if newer_than_ref(w, staged.get(k))}
                if changed:
                    staged = dict(sorted({**staged, **changed}.items()))
        return staged

    def iter_entries(self, start: str, prefix: str) -> Iterator[tuple[str, Entry]]:
        """``(key, entry)`` pairs with ``key >= start`` under ``prefix``, staged changes applied.

        Raises:
            SnapshotCollectedError: the session's snapshot was garbage collected.
        """
        try:
            yield from self._iter_entries(start, prefix)
        except CorruptObjectError as exc:
            self._raise_if_collected(exc)
            raise

    def _iter_entries(self, start: str, prefix: str) -> Iterator[tuple[str, Entry]]:
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

    def _rule(self, base: ObjectId, generation: int | None = None, *,
              replace: bool = False, staging: bool = True) -> SessionRule:
        """The session-record rule for a batch: the record names ``base``.

        A staging rule (``staging``) requires ``base`` in every batch, record
        written or not (``SessionRule.always_requires``): a write staged on a
        base that garbage collection took could never be committed, so it is
        refused (``SnapshotNotFoundError``) instead. ``discard_changes`` writes
        without it: dropping what was staged needs no base.
        """
        assert self._branch is not None and self._session_id is not None
        name = session_ref(self._session_id)
        epoch, closing = (None, ()) if self._epochs is None or not replace else self._epochs
        record = SessionRecord(
            branch=self._branch, base=base, created_at=datetime.now(UTC),
            generation=self._generation if generation is None else generation,
            epoch=epoch, closing=closing,
        )
        return SessionRule(prefix=stage_prefix(self._session_id), record=name,
                           value=encode_session(name, record), replace=replace,
                           requires=[base], always_requires=staging)

    def _staging(self) -> SessionRule:
        """``_rule(self._base)`` for staging writes, reused for up to ``_RULE_REUSE_S``.

        A staging batch writes the rule's record only when the session has none
        yet, so building it (a timestamp and its encoding) for every ``set`` is
        waste; reused, the record's ``created_at`` is at most that much early.
        """
        now = time.monotonic()
        state = (self._base, self._generation)
        cached = self._staging_rule
        if cached is not None and cached[0] == state and now - cached[1] < _RULE_REUSE_S:
            return cached[2]
        rule = self._rule(self._base)
        self._staging_rule = (state, now, rule)
        return rule

    def _stage(self, batch: WriteBatch) -> bool:
        """Write staged changes together with the session record, in one atomic step.

        Returns ``False`` if one of the batch's conditions failed (the caller
        reads again and retries).

        Raises:
            SnapshotNotFoundError: the session's base snapshot was garbage
                collected (its branch was reset away and ``gc`` ran); nothing
                was staged.
        """
        try:
            return self._repo.backend.write(batch)
        except MissingObjectsError as exc:
            raise self._base_gone() from exc

    def _stage_on_base(self, write: Callable[[SessionRule], T]) -> T:
        """``write(self._staging())``, on the base the session's record names now.

        This copy's base may be older than the record's: another copy committed
        (the record moved on) while this one only wrote, and expire and gc may
        have collected the older base since. The session lives on: its record
        is read again and the write made on the base it names. Only when that
        base is gone too (or there is no record) is the session's base gone.

        Raises:
            SnapshotNotFoundError: the session's base snapshot was garbage
                collected; nothing was staged.
        """
        base = self._base
        try:
            return write(self._staging())
        except MissingObjectsError as exc:
            self._refresh()
            if self._base == base:
                raise self._base_gone() from exc
        try:
            return write(self._staging())
        except MissingObjectsError as exc:
            raise self._base_gone() from exc

    def _stage_refs(self, refs: Mapping[str, bytes | None], rule: SessionRule) -> bool:
        """Stage ``refs`` (staged-ref names to records) under ``rule`` (``_stage_on_base``)."""
        return self._stage(WriteBatch(refs=refs, session=rule))

    def _base_gone(self, *, staged_kept: bool = False) -> SnapshotNotFoundError:
        """What staging (or, ``staged_kept``, a commit) raises once the base was collected."""
        if staged_kept:
            advice = ("the staged changes are kept: rebase(keep='ours') moves them onto the "
                      "branch's tip, discard_changes() drops them")
        else:
            advice = "open a new writable session"
        return SnapshotNotFoundError(
            self.snapshot_id,
            f"this session's base snapshot {self.snapshot_id} no longer exists (garbage "
            f"collected after its branch moved past it: a reset, or expire_snapshots); "
            f"{advice}",
        )

    def _raise_if_collected(self, exc: CorruptObjectError) -> None:
        """Raise ``SnapshotCollectedError`` if ``exc`` (a missing object) is the base collected."""
        if self._base_is_gone():
            advice = ("rebase(keep='ours') moves its staged changes onto the branch's tip"
                      if self._session_id is not None else "open a new session")
            raise SnapshotCollectedError(
                self.snapshot_id,
                f"this session's snapshot {self.snapshot_id} no longer exists (it was "
                f"garbage collected after its branch moved away); {advice}") from exc

    def _base_is_gone(self) -> bool:
        """Whether the session's base snapshot is no longer stored (garbage collected)."""
        return not self._repo.backend.has_objects([self._base])[0]

    def set_values(self, items: Sequence[tuple[str, bytes | PreparedChunk]]) -> None:
        """Stage ``key = value`` for each item (durably, before returning).

        A value may also be a ``codec.PreparedChunk`` (a chunk value already
        hashed and framed in a worker thread: ``SessionStore``), staged as the
        value it holds.

        Raises:
            InvalidKeyError: a key is not a valid store key or is longer than
                ``MAX_KEY_BYTES`` (nothing is staged).
            TypeError: a value is not bytes-like (``zarrstore.values``; nothing
                is staged).
            ReadOnlySessionError: the session is read-only.
        """
        session_id = self._require_writable()
        if self._located is not None:
            plain = [(k, bytes(v.value) if isinstance(v, PreparedChunk) else value_bytes(v))
                     for k, v in items]
            for key, _ in plain:
                validate_session_key(key)
            logged, located = self._split_located(plain)
            if logged:
                self._absorb_first()  # then the log record is newer than every located write
                self._set_logged(session_id, logged)
            if located:
                self._set_located(self._located, located)
            return
        if len(items) == 1 and not isinstance(items[0][1], PreparedChunk):
            self.set_value(*items[0])
            return
        self._set_logged(session_id, items)

    def set_value(self, key: str, value: bytes | PreparedChunk) -> None:
        """``set_values([(key, value)])``: the path of a lone ``await store.set``.

        A value of at most ``STAGED_INLINE_LIMIT`` bytes is staged inside its
        staged record, in a transaction that writes nothing else (LMDB and
        memory; object storage stages as ``set_values`` does).

        Raises:
            As ``set_values``.
        """
        if isinstance(value, PreparedChunk):  # hashed ahead: a chunk, as ``set_values`` stages it
            self.set_values([(key, value)])
            return
        names = self._stage_names
        if names is None or self._read_only or self._located is not None:
            self.set_values([(key, value)])  # refused, or staged as object storage stages
            return
        if type(value) is not bytes:
            # A copy: the staged record and the remembered decoding must not follow a
            # later change of the caller's buffer (``set_values`` copies as well), and
            # the limit counts bytes (a memoryview's ``len`` counts its items).
            value = value_bytes(value)
        size = len(value)
        if size > STAGED_INLINE_LIMIT or (size > INLINE_LIMIT
                                          and self._inline_bytes >= STAGED_INLINE_BUDGET):
            self._set_logged(self._require_writable(), [(key, value)])
            return
        validate_session_key(key)
        name = names[0] + key
        raw = encode_staged(name, value)
        self._remember_staged(name, raw, value)  # read back at once by partial writes
        self._stage_on_base(partial(self._repo.backend.stage, name, raw))
        if size > INLINE_LIMIT:
            self._inline_bytes += size  # by threads too: a bound, not an exact count

    def _set_logged(self, session_id: SessionId,
                    items: Sequence[tuple[str, bytes | PreparedChunk]]) -> None:
        """Stage ``items`` as staged refs in one log record (chunks stored by id first)."""
        objects = []
        refs: dict[str, bytes | None] = {}
        prefix = stage_prefix(session_id) if self._stage_names is None else self._stage_names[0]
        remember = self._remember_staged
        for key, value in items:
            validate_session_key(key)
            name = prefix + key
            entry: Entry
            if type(value) is not bytes and not isinstance(value, PreparedChunk):
                value = value_bytes(value)  # sized in bytes (a memoryview's len counts items)
            if isinstance(value, bytes) and len(value) <= INLINE_LIMIT:
                entry = value
                raw = encode_staged(name, entry)
            else:
                chunk_id, frame, entry, raw = encode_staged_chunk(name, value)
                objects.append((chunk_id, frame))
            refs[name] = raw
            remember(name, raw, entry)  # read back at once by zarr's partial-chunk writes
        self._stage_on_base(
            lambda rule: self._stage(WriteBatch(objects=objects, refs=refs, session=rule)))

    def _split_located(self, items: list[tuple[str, bytes]]
                       ) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        """``items`` to stage as log records, and the chunks to stage by located writes.

        Metadata documents and small values are log records; so are the first
        ``_LOGGED_FIRST`` chunks after each commit (a small commit then needs no
        absorb). A batch that writes one key twice is all log records (in order).
        """
        chunks = [(k, v) for k, v in items if is_located_value(k, v, INLINE_LIMIT)]
        if not chunks or len({k for k, _ in items}) < len(items):
            return items, []
        logged = [(k, v) for k, v in items if not is_located_value(k, v, INLINE_LIMIT)]
        take = max(0, _LOGGED_FIRST - self._logged_chunks)
        if take:
            self._logged_chunks += min(take, len(chunks))
            logged.extend(chunks[:take])
            chunks = chunks[take:]
        return logged, chunks

    def _set_located(self, located: LocatedStaging, chunks: list[tuple[str, bytes]]) -> None:
        """Stage ``chunks`` by located writes (keys too long for a name: as log records).

        Each chunk's ``PUT`` is its durable staged record. One look at the
        session record follows: if an absorb closed the epoch written to
        meanwhile (it may have listed it before the ``PUT`` landed), or gc
        pruned the record, the writes go again into the open epoch, newer
        than every write that returned there (``docs/format.md``).
        """
        epoch = self._open_epoch(located)
        entries, too_long = located.put(epoch, chunks)
        for _ in range(_RELOCATE_ATTEMPTS):
            raw, record = located.record()
            self._adopt(raw)
            if not entries or (record is not None and record.epoch == epoch):
                break
            if record is None or record.epoch is None:
                self._epochs = None  # pruned by gc (idle): open an epoch again
            epoch = self._open_epoch(located)
            entries, _ = located.put(epoch, [(k, v) for k, v in chunks if k in entries])
        else:  # pragma: no cover - an absorb at every look: stage them as refs instead
            staged = located.stage_refs(entries)
            self._stage_on_base(partial(self._stage_refs, staged))
        if too_long:
            self._absorb_first()
            assert self._session_id is not None
            self._set_logged(self._session_id, too_long)

    def _open_epoch(self, located: LocatedStaging) -> int:
        """The epoch this copy writes into: the record's as last read, or one opened now.

        Raises:
            SnapshotNotFoundError: creating the record, the session's base is gone.
        """
        if self._epochs is None:
            assert self._branch is not None
            fresh = SessionRecord(branch=self._branch, base=self._base,
                                  created_at=datetime.now(UTC), generation=self._generation)
            try:
                opened, record = located.open_epoch(fresh)
            except MissingObjectsError as exc:
                raise SnapshotNotFoundError(
                    self.snapshot_id, f"this session's base snapshot {self.snapshot_id} no "
                    "longer exists; open a new writable session") from exc
            self._adopt(opened)
            assert record.epoch is not None
            self._epochs = (record.epoch, record.closing)
            return record.epoch
        return self._epochs[0]

    def _absorb_first(self) -> None:
        """Absorb located writes before a log-recorded write, so that it is the newer."""
        if self._located is None:
            return
        raw, record = self._located.record()
        self._adopt(raw)
        if record is not None and record.epoch is not None:
            self._located.absorb()

    def set_virtual_entries(self, items: list[tuple[str, VirtualRef]]) -> None:
        """Stage ``key -> virtual reference`` for each item, durably, in one atomic step.

        Raises:
            InvalidKeyError: a key is not a valid session key (nothing is staged).
            ReadOnlySessionError: the session is read-only.
        """
        session_id = self._require_writable()
        prefix = stage_prefix(session_id)
        refs: dict[str, bytes | None] = {}
        for key, ref in items:
            validate_session_key(key)
            refs[prefix + key] = encode_staged(prefix + key, ref)
        if refs:
            self._absorb_first()
            self._stage_on_base(partial(self._stage_refs, refs))

    def erase_keys(self, keys: list[str]) -> None:
        """Stage the deletion of each key (keys that do not exist are ignored)."""
        session_id = self._require_writable()
        prefix = stage_prefix(session_id)
        self._absorb_first()
        keys = list(keys)  # read once per attempt below: a generator would be spent
        for key in keys:
            validate_session_key(key)
        while keys:
            refs: dict[str, bytes | None] = {}
            self._refresh()
            record = self._record_read
            # A key a manifest holds is erased by a tombstone: deleting its ref would leave
            # the manifest's write in view (a tombstone of a key the base lacks changes
            # nothing).
            spilled = bool(self._manifests)
            for key in keys:
                in_base = lookup(self._repo.reader.lookup_node, self._root, key) is not None
                name = prefix + key
                refs[name] = encode_staged(name, TOMBSTONE) if in_base or spilled else None
            # The record as read: a commit landing meanwhile moves the base (a key staged
            # only here is then in it and needs a tombstone), so read again and retry.
            if self._stage(WriteBatch(expect={session_ref(session_id): record}, refs=refs,
                                      session=self._rule(self._base))):
                return

    def _read_changes(self) -> tuple[list[Change], Mapping[str, bytes]]:
        """The staged changes, and what each staged ref holds now (for ``delete_if_equal``).

        Read in one consistent view, decoding each staged ref as it streams
        past, so a huge commit holds its changes once: stored bytes are kept
        only for records an older version wrote; the rest are re-encoded on
        demand (``StagedValues``).
        """
        if self._session_id is None:
            return [], {}
        self._refresh()
        prefix = stage_prefix(self._session_id)
        cut = len(prefix)
        changes: list[Change] = []
        kept: dict[str, bytes] = {}
        inline: set[str] = set()

        def visit(name: str, value: bytes) -> None:
            entry = decode_staged(name, value)
            stored = None if isinstance(entry, Tombstone) else as_stored(entry)
            changes.append((name[cut:], stored))
            if stored is not None and stored is not entry:
                inline.add(name)  # listed as the chunk reference a commit records
            elif not staged_reencodes(value) or encode_staged(name, entry) != value:
                kept[name] = value

        self._repo.backend.scan_refs(prefix, visit)
        return changes, StagedValues(prefix, changes, kept, inline, self._repo.backend.get_ref)

    def move(self, from_path: str, to_path: str) -> None:
        """Stage renaming the group or array at ``from_path`` (and all under it) to ``to_path``.

        Paths are absolute node paths as in ``Diff`` (``"/a/b"``). No chunk
        bytes are copied: chunks are content-addressed, so the moved keys
        point at the same objects. The move is staged like any write (one
        atomic step): ``discard_changes`` undoes it, ``commit`` or ``amend``
        records it, and it mixes freely with data writes.

        Groups above the source or the destination whose documents hold a
        consolidated view of their subtree (zarr's consolidated metadata)
        get the moved nodes renamed in it, in the same step, at any depth:
        the view is written back in the flat form zarr writes
        (``versionstore.consolidated``).

        The destination's parent must exist and not be an array: a group, the
        root, or a directory that already holds keys. This follows icechunk's
        ``move``, which refuses a missing parent group and an array parent
        (Zarr v3 has no implicit groups, and nothing lives inside an array);
        a directory of keys without a node document, which icechunk cannot
        hold, is accepted as the implicit group it is in zarr-python.

        Raises:
            InvalidMoveError: the root is moved, the source holds nothing, the
                destination holds something or lies inside the source, or
                the destination's parent does not exist or is an array.
            ReadOnlySessionError: the session is read-only.
        """
        session_id = self._require_writable()
        self._absorb_first()  # located writes under the source move with it
        source, target = _node_directory(from_path), _node_directory(to_path)
        if not source or not target:
            raise InvalidMoveError("the root group cannot be moved (into itself or its own "
                                   "descendant), nor anything moved onto it")
        if target == source or target.startswith(source + "/"):
            raise InvalidMoveError(
                f"cannot move {from_path!r} into itself or its own descendant ({to_path!r})")
        # A commit landing between the reads below and the batch moves the base: a key
        # staged only here would then be in the new base and need a tombstone, so the
        # batch expects the session record as read and the move starts over if it changed.
        while not self._move_once(session_id, from_path, to_path, source, target):
            pass

    def _move_once(self, session_id: SessionId, from_path: str, to_path: str,
                   source: str, target: str) -> bool:
        """One attempt at ``move``: ``False`` if a commit moved the base meanwhile."""
        self._refresh()
        record = self._record_read
        moving = dict(self.iter_entries(source + "/", source + "/"))
        if not moving:
            raise InvalidMoveError(f"nothing to move: node not found at {from_path!r}")
        if next(self.iter_entries(target + "/", target + "/"), None) is not None:
            raise InvalidMoveError(
                f"cannot move onto {to_path!r}: it already exists (would overwrite existing node)")
        parent = target.rpartition("/")[0]
        if parent:
            kind = KeyLocator(self.value).node_type(parent)
            if kind == "array":
                raise InvalidMoveError(
                    f"cannot move into {to_path!r}: '/{parent}' is an array, not a group")
            if kind is None and next(self.iter_entries(parent + "/", parent + "/"),
                                     None) is None:
                raise InvalidMoveError(
                    f"cannot move to {to_path!r}: the destination's parent group "
                    f"'/{parent}' does not exist")
        for key in moving:
            validate_session_key(target + key[len(source):])
        prefix = stage_prefix(session_id)
        refs: dict[str, bytes | None] = {}
        spilled = bool(self._manifests)  # as in erase_keys
        for key in moving:
            in_base = lookup(self._repo.reader.lookup_node, self._root, key) is not None
            refs[prefix + key] = (encode_staged(prefix + key, TOMBSTONE) if in_base or spilled
                                  else None)
        for key, entry in moving.items():
            name = prefix + target + key[len(source):]
            refs[name] = encode_staged(name, entry)
        objects: list[tuple[ObjectId, bytes]] = []
        for key, value in self._moved_views(source, target, moving).items():
            name = prefix + key
            if len(value) <= INLINE_LIMIT:
                refs[name] = encode_staged(name, value)
            else:
                chunk_id, frame, _, refs[name] = encode_staged_chunk(name, value)
                objects.append((chunk_id, frame))
        # By id only where stored by id: a located chunk is kept at its hint (format.md).
        chunks = [e.chunk_id for e in moving.values()
                  if isinstance(e, ChunkRef) and e.location is None]
        return self._stage(WriteBatch(objects=objects, expect={session_ref(session_id): record},
                                      refs=refs, requires=chunks,
                                      session=self._rule(self._base)))

    def _moved_views(self, source: str, target: str, moving: Mapping[str, Entry]
                     ) -> dict[str, bytes]:
        """The group documents above a move whose consolidated view names it, rewritten.

        Each directory above the source or the destination may hold a view
        (``versionstore.consolidated``); the moved documents are read only
        for a view that holds the destination.
        """
        documents: dict[str, bytes] = {}

        def moved_documents() -> dict[str, bytes]:
            if not documents:
                for key in moving:
                    value = (self.value(key) if key.rpartition("/")[2] in DOCUMENT_NAMES
                             else None)
                    if value is not None:
                        documents[target + key[len(source):]] = value
            return documents

        rewritten: dict[str, bytes] = {}
        for key in view_keys(source, target):
            raw = self.value(key)
            changed = None if raw is None else moved_view(key, raw, source, target,
                                                          moved_documents)
            if changed is not None:
                rewritten[key] = changed
        return rewritten

    @property
    def has_uncommitted_changes(self) -> bool:
        """Whether anything staged differs from the base.

        Rewriting a value unchanged is not a change, as for ``status`` and ``commit``.
        """
        if self._session_id is None:
            return False
        load = self._repo.reader.node
        self._refresh()
        if self._located is not None:
            return any(lookup(load, self._root, key) != (
                None if isinstance(entry, Tombstone) else as_stored(entry))
                for key, entry in self.staged().items())
        with StagedScan(self._repo.backend, stage_prefix(self._session_id)) as staged:
            return any(lookup(load, self._root, key) != as_stored(entry)
                       for key, entry in staged.changes())

    def discard_changes(self) -> None:
        """Drop every staged change (the base snapshot is unchanged).

        Only the entries read here are dropped: a write another copy of the
        session stages at the same moment is kept.
        """
        session_id = self._require_writable()
        self._absorb_first()
        while True:
            self._refresh()
            expect, refs = self._dropping_manifests()
            with StagedScan(self._repo.backend, stage_prefix(session_id)) as staged:
                if self._stage(WriteBatch(expect=expect, refs=refs, delete_if_equal=staged.refs,
                                          session=self._rule(self._base, staging=False))):
                    return
            # a commit or another discard removed some of them meanwhile: read again

    def _dropping_manifests(self) -> tuple[dict[str, bytes | None], dict[str, bytes | None]]:
        """``expect`` and ``refs`` for a batch that drops the record's manifests (as last read)."""
        if not self._manifests or self._record_raw is None or self._session_id is None:
            return {}, {}
        name = session_ref(self._session_id)
        record = attrs.evolve(decode_session(name, self._record_raw), manifests=())
        return {name: self._record_raw}, {name: encode_session(name, record)}

    def status(self) -> Diff:
        """The staged changes, as a ``Diff`` against the base snapshot."""
        keys = {}
        virtual: set[str] = set()
        changes = (self._read_changes()[0] if self._located is None else
                   [(k, None if isinstance(e, Tombstone) else as_stored(e))
                    for k, e in self.staged().items()])
        for key, entry in changes:
            before = lookup(self._repo.reader.lookup_node, self._root, key)
            if before != entry:
                keys[key] = (before is not None, entry is not None)
                if isinstance(entry, VirtualRef):
                    virtual.add(key)
        diff = classify_changes(keys, self._read_base, self._read_key)
        return attrs.evolve(diff, virtual_keys=frozenset(virtual)) if virtual else diff

    def _read_key(self, key: str) -> bytes | None:
        return self.read_entries([self.entry(key)])[0]

    def _read_base(self, key: str) -> bytes | None:
        return self.read_entries([lookup(self._repo.reader.lookup_node, self._root, key)])[0]

    # -- committing ------------------------------------------------------------------

    def _against_tip(self, tip_tree: ObjectId | None, changes: list[Change]
                     ) -> tuple[list[Change], set[str], NodeChanges | None]:
        """Staged changes to carry onto a moved branch, the keys that conflict, the nodes.

        A key the branch changed since our base conflicts if we staged a
        different value for it — unless what we staged is what the base
        already held (an identical rewrite is no change of ours, so the
        branch's value simply stands; ``status`` agrees). The last item is
        the branch's changes seen node by node (``NodeChanges``), if it
        changed anything.
        """
        conflicts: set[str] = set()
        nodes: list[NodeChanges] = []
        kept = list(self._carried(tip_tree, iter(changes), conflicts, nodes=nodes))
        return kept, conflicts, nodes[0] if nodes else None

    def _record_state(self) -> bytes | None:
        assert self._session_id is not None
        return self._repo.backend.get_ref(session_ref(self._session_id))

    def rebase(self, *, keep: Literal["raise", "ours", "theirs"] = "raise") -> None:
        """Move the session's base to its branch's tip, keeping the staged changes.

        One atomic step that expects the branch and the session record as read,
        so a commit racing the rebase makes it start over, never go back.

        Args:
            keep: what to do with keys both sides changed: ``"raise"`` a
                ``ConflictError``, keep ``"ours"`` (the staged value), or keep
                ``"theirs"`` (drop our staged change to that key). For a node
                we deleted or redefined while the branch wrote under it, the
                winner's node stands whole: ``"theirs"`` drops all our changes
                under it, ``"ours"`` also deletes what the branch wrote there.
                If the base snapshot was garbage collected, nothing tells the
                branch's changes from ours: ``"ours"`` moves the session to
                the tip with its staged changes as they are; the others raise.

        Raises:
            ConflictError: ``keep="raise"`` and both sides changed a key.
            SnapshotNotFoundError: the base snapshot was garbage collected
                and ``keep`` is not ``"ours"``; the staged changes are kept.
        """
        session_id = self._require_writable()
        if keep not in ("raise", "ours", "theirs"):
            raise ValueError(f"keep must be 'raise', 'ours' or 'theirs', not {keep!r}")
        assert self._branch is not None
        reader = self._repo.reader
        self._absorb_first()
        if self._located is not None:
            self._located.unspill()  # rebase drops staged refs one by one
        for _ in range(_MAX_COMMIT_ATTEMPTS):
            record_raw = self._record_state()
            changes, raw = self._read_changes()
            tip, raw_tip = self._repo.refs.branch_tip(self._branch)
            tip_tree = reader.snapshot(tip).tree
            if not self._base_is_gone():
                kept, conflicts, nodes = self._against_tip(tip_tree, changes)
            elif keep == "ours":
                # No base to tell the branch's changes from ours: ours go onto the tip
                # as they are (each staged value, or deletion, wins over the tip's).
                kept, conflicts, nodes = changes, set(), None
            else:
                raise self._base_gone(staged_kept=True)
            if conflicts and keep == "raise":
                raise ConflictError(self._branch, conflicts, hint=SESSION_CONFLICT_HINT)
            # Identical rewrites of keys the branch changed are no change of ours: dropped,
            # so that on the new base they do not turn into reverts.
            carried = {key for key, _ in kept}
            drop = {key for key, _ in changes if key not in carried}
            prefix = stage_prefix(session_id)
            tombstones: dict[str, bytes | None] = {}
            lost = sorted(nodes.lost) if nodes is not None else []
            if keep == "theirs":
                drop |= conflicts
                # A node we deleted or redefined while the branch wrote under it: the
                # branch's node stands whole, so none of our changes under it remain.
                drop |= {key for key, _ in changes if any(within(key, d) for d in lost)}
            elif lost:
                assert nodes is not None
                # Ours stands whole: what the branch wrote under the node goes with it.
                staged = {key for key, _ in changes}
                for key in nodes.written_under(lost):
                    if key not in staged:
                        tombstones[prefix + key] = encode_staged(prefix + key, TOMBSTONE)
            dropped = {prefix + key: raw[prefix + key] for key in drop}
            generation = self._generation + 1
            if self._move_base(tip, tip_tree, generation, WriteBatch(
                refs=tombstones,
                expect={branch_ref(self._branch): raw_tip,
                        session_ref(session_id): record_raw},
                delete_if_equal=dropped,
            )):
                return
        raise ConflictError(self._branch, [])  # pragma: no cover - endless contention

    def _move_base(self, base: ObjectId, root: ObjectId | None, generation: int,
                   batch: WriteBatch) -> bool:
        """Write ``batch`` with the record moved to ``base``; on success, follow it here too."""
        moved = self._stage(attrs.evolve(
            batch, session=self._rule(base, generation, replace=True)))
        if moved:
            self._base, self._root, self._generation = base, root, generation
        return moved

    def commit(self, message: str, metadata: dict[str, Any] | None = None, *,
               allow_empty: bool = False) -> SnapshotId:
        """Record the staged changes as a new snapshot on the branch; return its id.

        The branch moves by one atomic compare-and-swap that also stores the
        new tree and snapshot, removes exactly the staged entries recorded,
        and moves the session record to the new snapshot (``docs/format.md``).
        Staged values identical to the base are not changes.

        Args:
            message: the commit message (required).
            metadata: msgpack-able values to keep with the snapshot.
            allow_empty: make a snapshot even if nothing changed (as icechunk).

        Raises:
            ReadOnlySessionError: on a read-only session.
            NothingToCommitError: if nothing changed and not ``allow_empty``.
            ConflictError: if the branch moved and touched the same keys; the
                staged changes are kept.
            SnapshotNotFoundError: the session's base snapshot was garbage
                collected (its branch was reset away while a copy of the
                session staged); nothing is written and the staged changes
                are kept: ``rebase(keep="ours")`` moves them onto the tip.
            CorruptObjectError: a staged chunk is missing from the repository.
        """
        if not isinstance(message, str):
            raise TypeError(f"a commit message is required (a str), not {message!r}")
        check_flag(allow_empty, "allow_empty")
        return self._record(message, metadata, allow_empty=allow_empty, amend=False)

    def amend(self, message: str | None = None, metadata: dict[str, Any] | None = None
              ) -> SnapshotId:
        """Replace the branch's tip by a snapshot with its changes *and* the staged ones.

        The new snapshot has the tip's parents; ``message`` and ``metadata``
        default to the tip's, so ``amend("better message")`` with nothing
        staged rewrites only the message. The replaced snapshot stays
        readable by id until garbage collection (and the ops log records the
        amend). Moves (``move``) can be amended like any other change.

        The repository's initial snapshot cannot be amended, as in icechunk:
        on a branch still at it, commit instead.

        Raises:
            ReadOnlySessionError: on a read-only session.
            AmendInitialSnapshotError: the branch's tip is the initial snapshot
                (no parents); nothing changes and the staged changes are kept.
            ConflictError: the branch moved since this session's base and
                touched the same keys; the staged changes are kept.
        """
        if message is not None and not isinstance(message, str):
            raise TypeError(f"message must be a str or None, not {message!r}")
        return self._record(message, metadata, allow_empty=True, amend=True)

    def _record(self, message: str | None, metadata: dict[str, Any] | None, *,
                allow_empty: bool, amend: bool) -> SnapshotId:
        """Commit (or amend) the staged changes by one compare-and-swap of the branch."""
        self._require_writable()
        assert self._branch is not None
        if metadata is not None:
            checked_metadata(metadata)
        repo = self._repo
        missing_in_a_row = 0
        absorbed = self._located is None
        for _ in range(_MAX_COMMIT_ATTEMPTS):
            # One view of the refs per attempt (one look at the object-storage log, not
            # three): the branch moves by compare-and-swap, which fails if it was stale.
            recorded = None
            absorb = False
            try:
                with repo.backend.consistent_reads():
                    # Another copy's commit may have moved the session's base.
                    raw_tip = self._refresh(branch=True)
                    # Located writes (object storage) become staged refs first: the
                    # record read in this view says whether the session has any.
                    open_written = (not absorbed and self._epochs is not None
                                    and self._located is not None
                                    and self._located.pending_in(self._epochs[0], ()))
                    absorb = open_written or (not absorbed and self._epochs is not None
                                              and bool(self._epochs[1]))
                    if not absorb:
                        with StagedScan(repo.backend, stage_prefix(self._require_writable()),
                                        self._staged_entry_seen) as staged:
                            if not len(staged) and not self._manifests and not allow_empty:
                                raise NothingToCommitError(
                                    "nothing to commit: no changes are staged (write "
                                    "through session.store first, or pass "
                                    "allow_empty=True to commit anyway)")
                            try:
                                recorded = self._record_once(
                                    staged, raw_tip, message, metadata,
                                    allow_empty=allow_empty, amend=amend)
                            except (CorruptObjectError, SnapshotCollectedError):
                                # The base's tree is read to build on it: gone with the
                                # base (collected under a copy's staged writes), the
                                # commit writes nothing and the staged changes stay.
                                if self._base_is_gone():
                                    raise self._base_gone(staged_kept=True) from None
                                raise
            except MissingObjectsError as exc:
                if self._base_is_gone():
                    raise self._base_gone(staged_kept=True) from exc
                # A chunk staged here may have been overwritten by a copy and collected
                # since it was read: then re-read the staging area and try again.
                missing_in_a_row += 1
                if missing_in_a_row >= 3:
                    raise CorruptObjectError(
                        ", ".join(exc.object_ids),
                        "a staged chunk is missing from the repository; discard or rewrite "
                        "the keys that reference it") from exc
                continue
            if absorb:
                assert self._located is not None and self._epochs is not None
                self._located.absorb(seen_written=self._epochs[0] if open_written else None)
                absorbed = True
                continue
            missing_in_a_row = 0
            if recorded is not None:
                self._logged_chunks = 0
                self._inline_bytes = 0  # recorded: stored as chunk objects now
                return recorded
        raise ConflictError(self._branch, [])  # pragma: no cover - endless contention

    def _carried(self, tip_tree: ObjectId | None, changes: Iterator[Change],
                 conflicts: set[str], documents: Mapping[ObjectId, bytes] | None = None, *,
                 nodes: list[NodeChanges] | None = None) -> Iterator[Change]:
        """``_against_tip`` as a stream: changes to carry; conflicting keys go to ``conflicts``.

        Only the branch's own changes since our base are held (``theirs``),
        never ours. Besides keys both sides changed, a change conflicts with
        the node it lies under (``NodeChanges``, icechunk's
        ``ChunksUpdatedInDeletedArray`` / ``DeleteOfUpdatedArray`` family):
        chunks written into an array the branch deleted or redefined since our
        base, or an array we deleted or redefined while the branch wrote into
        it, would otherwise be carried as orphans or read with the wrong
        metadata.
        """
        load = self._repo.reader.node
        theirs = changed_entries(load, self._root, tip_tree)
        by_node = NodeChanges(theirs, lambda entry: self._entry_value(entry, documents),
                               lambda key: lookup(load, self._root, key),
                               replaced=self._replaced_node)
        if nodes is not None and theirs:
            nodes.append(by_node)
        for key, entry in changes:
            if key in theirs:
                if lookup(load, self._root, key) == entry:
                    continue
                if theirs[key][1] != entry:
                    conflicts.add(key)
            if theirs and key not in conflicts and by_node.conflicts(key, entry):
                conflicts.add(key)
            yield key, entry

    def _replaced_node(self, directory: str) -> bool:
        """Whether this session deleted the node at ``directory`` and made it anew.

        zarr's ``overwrite=True`` (xarray's ``mode="w"``) erases the node's keys
        and writes its document again, often the same one: no change of the
        document says so, but every key the base had under the node is staged
        (rewritten or deleted), and some are deleted.
        """
        prefix = directory + "/" if directory else ""
        own = {prefix + name for name in (*NODE_DOCUMENTS, ".zattrs")}
        staged: dict[str, Entry | Tombstone] | None = None
        deleted = False
        for key, _ in iter_from(self._repo.reader.node, self._root, prefix):
            if not key.startswith(prefix):
                break
            if key in own:
                continue
            if staged is None:
                staged = self.staged(prefix)
            if key not in staged:
                return False
            deleted = deleted or isinstance(staged[key], Tombstone)
        return deleted

    def _entry_value(self, entry: Entry | None, documents: Mapping[ObjectId, bytes] | None
                     ) -> bytes | None:
        """The bytes of ``entry``: a commit's documents not yet stored come from ``documents``."""
        if isinstance(entry, ChunkRef) and documents and entry.chunk_id in documents:
            return documents[entry.chunk_id]
        return self.read_entries([entry])[0]

    def _record_once(self, staged: StagedScan, raw_tip: bytes | None, message: str | None,
                     metadata: dict[str, Any] | None, *, allow_empty: bool, amend: bool
                     ) -> SnapshotId | None:
        """One attempt at ``_record``: the snapshot id, or ``None`` if the branch moved.

        ``raw_tip`` is the branch's ref as read with the session record.

        The staged changes stream from ``staged`` through the tree into the
        batch: memory does not grow with their number (``commit_stream``).
        """
        assert self._branch is not None
        repo = self._repo
        tip, raw_tip = repo.refs.branch_tip_of(self._branch, raw_tip)
        replaced = repo.reader.snapshot(tip) if amend else None
        if replaced is not None and not parents_of(tip, replaced, repo._grafts()):
            # As icechunk (NoAmendForInitialCommit): the root is every branch's first ancestor.
            raise AmendInitialSnapshotError(self._branch, object_id_text(tip))
        parent_tree = self._root
        changes: Iterator[Change] = staged.changes()
        if self._manifests:  # the record as read in this view: the batch expects it
            changes = ((key, None if isinstance(entry, Tombstone) else entry)
                       for key, entry in self._with_manifests(staged.entries()))
        objects, chunks = NewObjects(), ChunkIds()
        documents: dict[ObjectId, bytes] = {}  # the totals read these before they are stored
        changes = stored_changes(changes, objects, documents)
        conflicts: set[str] = set()
        if tip != self._base:
            parent_tree = repo.reader.snapshot(tip).tree
            changes = self._carried(parent_tree, changes, conflicts, documents)
        try:
            new_nodes: dict[ObjectId, Node] = {}
            remembered = 0

            def keep_leaf(node_id: ObjectId, data: bytes, leaf: Node) -> None:
                nonlocal remembered
                objects.add_leaf(node_id, data)
                if (objects.leaf_count <= _REMEMBER_LEAVES
                        and remembered + len(data) <= _REMEMBER_BYTES):
                    remembered += len(data)
                    new_nodes[node_id] = leaf

            tally = SizeTally()
            root, branches = apply_changes(repo.reader.node, parent_tree, chunks.note(changes),
                                           decoded=new_nodes, emit=keep_leaf,
                                           observe=tally.observe_all)
            if conflicts:
                raise ConflictError(self._branch, conflicts, hint=SESSION_CONFLICT_HINT)
            generation = self._generation + 1
            if root == parent_tree and not allow_empty:
                # Only identical rewrites (or nothing) are staged: clear them, commit
                # nothing, and follow the branch if it moved (what it holds is our view).
                if self._move_base(tip, parent_tree, generation, WriteBatch(
                    expect={branch_ref(self._branch): raw_tip, **self._record_expect()},
                    delete_if_equal=staged.refs,
                )):
                    raise NothingToCommitError(
                        "nothing to commit: no staged change differs from the branch "
                        "(pass allow_empty=True to commit anyway)")
                return None
            # The changes were applied to the tip's tree: its totals are the base.
            def read_chunks(ids: list[ObjectId]) -> list[bytes]:
                stored = iter(repo.reader.chunks([i for i in ids if i not in documents]))
                return [documents[i] if i in documents else next(stored) for i in ids]

            sizes = tally.sizes(repo.reader.node, parent_tree, with_documents(
                repo.reader, sizes_of(repo.reader, repo.reader.snapshot(tip)), parent_tree),
                                read_chunks)
            if replaced is not None:
                # As ancestry shows them: an expired parent may be collected already.
                snapshot = Snapshot(
                    parents=parents_of(tip, replaced, repo._grafts()), tree=root,
                    message=replaced.message if message is None else message,
                    written_at=datetime.now(UTC),
                    metadata=dict(replaced.metadata if metadata is None else metadata),
                    sizes=sizes,
                )
            else:
                assert message is not None
                snapshot = Snapshot(
                    parents=(tip,), tree=root, message=message,
                    written_at=datetime.now(UTC), metadata=dict(metadata or {}), sizes=sizes,
                )
            snapshot, pages = with_history(repo.reader, snapshot)
            snapshot_id, frame = encode_snapshot(snapshot)
            objects.in_memory.extend([*branches.items(), *((i, f) for i, f, _ in pages),
                                      (snapshot_id, frame)])
            batch = WriteBatch(
                objects=objects,
                expect=self._record_expect(),
                # The base too: built on a base gc took (its tree read from a cache),
                # the commit fails as it does when the tree must be read.
                requires=Joined(chunks, (self._base,)),
                delete_if_equal=staged.refs,
                session=self._rule(snapshot_id, generation, replace=True),
            )
            moved = repo.refs.move_branch(self._branch, raw_tip, snapshot_id, batch,
                                          kind="amend" if amend else "commit",
                                          message=snapshot.message)
        finally:
            objects.close()
            chunks.close()
        if not moved:
            return None
        # Follow the new snapshot before anything else can read this session.
        self._base, self._root, self._generation = snapshot_id, root, generation
        self._manifests = ()  # recorded: the record the batch wrote has none
        repo.backend.sync()
        repo.reader.remember_nodes(new_nodes)  # the next commit starts from them
        repo.reader.remember_snapshot(snapshot_id, frame, pages,  # and its history
                                      written=snapshot)
        return SnapshotId(object_id_text(snapshot_id))

    def _record_expect(self) -> dict[str, bytes | None]:
        """With located staging, the record as last refreshed: a batch replacing it keeps epochs.

        A racing absorb changes the record (``closing``), and a copy's first
        located write opens its epoch: the batch then starts over instead of
        dropping an epoch not yet absorbed. Expected even when this object
        has seen no epoch (it may have staged only log records).
        """
        if self._located is None or self._session_id is None:
            return {}
        return {session_ref(self._session_id): self._record_read}

    async def commit_async(self, message: str, metadata: dict[str, Any] | None = None, *,
                           allow_empty: bool = False) -> SnapshotId:
        """``commit`` without blocking the event loop."""
        return await asyncio.to_thread(self.commit, message, metadata, allow_empty=allow_empty)

    async def amend_async(self, message: str | None = None,
                          metadata: dict[str, Any] | None = None) -> SnapshotId:
        """``amend`` without blocking the event loop."""
        return await asyncio.to_thread(self.amend, message, metadata)


def _node_directory(path: str) -> str:
    """The key prefix (without slashes at either end) of node path ``path``."""
    if not isinstance(path, str):
        raise TypeError(f"a node path must be a str such as '/a/b', not {path!r}")
    return path.strip("/")

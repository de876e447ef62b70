"""The records versionstore writes, as small frozen classes.

Objects (immutable, content-addressed):

* chunk bytes — a stored value too large to live inline (no record class:
  the bytes are the object);
* ``Leaf`` — a sorted run of ``key -> entry`` pairs, the bottom of a tree (an
  entry is a value inline, a ``ChunkRef`` to a chunk object, or a
  ``VirtualRef`` to a byte range of a file outside the repository);
* ``Branch`` — a sorted run of ``first key -> child node id`` pairs;
* ``Snapshot`` — one commit: parents, tree root, message, time, metadata;
* ``Sizes`` — a version's running totals (keys, chunks, bytes per array),
  and its Zarr metadata documents while they are small, carried inside its
  ``Snapshot``;
* ``HistoryPage`` — a packed run of a snapshot's first-parent ancestors, by
  columns, so that ancestry reads one object per page instead of one per
  snapshot and decodes only what it shows.

Mutable refs (moved by compare-and-swap):

* ``RefTarget`` — a branch or tag pointing at a snapshot (a deleted tag
  keeps a tombstone so its name is never reused);
* ``SessionRecord`` — a writable session's branch and base snapshot;
* ``RepositoryRecord`` — the repository's format version;
* staged entries — an ``Entry`` or ``TOMBSTONE`` per staged key;
* ``Operation`` — one ops-log entry: a ref change, written with it;
* ``GCLedger`` — incremental garbage collection's summary of its last run
  (kept beside the refs, in the backend's ledger: ``versionstore.backend.ledger``).

Every record class has a ``FORMAT_VERSION``; ``codec`` writes it into every
encoded record and refuses records from newer versions.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar, Final

import attrs

from versionstore.ids import ID_LENGTH, ObjectId, object_id_text

__all__ = [
    "DOCUMENTS_LIMIT",
    "DOCUMENT_NAMES",
    "LOCATION_LIMIT",
    "REPOSITORY_FORMAT",
    "TOMBSTONE",
    "Branch",
    "ChunkRef",
    "Entry",
    "GCLedger",
    "Graft",
    "HistoryPage",
    "Leaf",
    "LocatedChunkRef",
    "Operation",
    "RefTarget",
    "StagedManifest",
    "RepositoryRecord",
    "SessionRecord",
    "SizeRow",
    "Sizes",
    "Snapshot",
    "Tombstone",
    "VirtualRef",
    "is_location",
]


@attrs.frozen(eq=False)
class ChunkRef:
    """A value stored as its own chunk object.

    Two chunk references are equal when they name the same chunk (id and
    size), whatever else they carry: a ``LocatedChunkRef`` equals the plain
    reference to its chunk, so diff, merge and "identical rewrite" compare
    contents, never where they are kept.
    """

    chunk_id: ObjectId
    size: int

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ChunkRef):
            return self.chunk_id == other.chunk_id and self.size == other.size
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.chunk_id, self.size))

    @property
    def location(self) -> str | None:
        """Where an object backend finds the chunk besides ``objects/<id>``; ``None``: nowhere."""
        return None

    def check(self) -> None:
        """Raise ``ValueError`` if the reference is malformed."""
        if len(self.chunk_id) != ID_LENGTH or self.size < 0:
            raise ValueError(f"malformed chunk reference {self!r}")


@attrs.frozen(eq=False)
class LocatedChunkRef(ChunkRef):
    """A chunk reference with a *location hint*: where object storage keeps its frame.

    Identity is the chunk id, as for ``ChunkRef`` (equality ignores the
    location). ``location`` is a path under the repository's prefix (for
    example ``stage/<session>/…``, where a located staging ``PUT`` left the
    chunk) that holds the same frame bytes as ``objects/<id>``. LMDB and
    memory store the frame under its id and ignore the hint; tree nodes keep
    it on every backend, so their ids agree across backends and transfers
    (``docs/format.md``, "Located staging").
    """

    hint: str

    @property
    def location(self) -> str | None:
        """The hint (see the class)."""
        return self.hint

    def check(self) -> None:
        """Raise ``ValueError`` if the reference is malformed."""
        super().check()
        if not is_location(self.hint):
            raise ValueError(f"malformed chunk location {self.hint!r}")


#: Bytes a location hint may have (a located write's name, relative to the repository).
LOCATION_LIMIT = 900


def is_location(text: str) -> bool:
    """Whether ``text`` is a well-formed location hint: a relative path under ``stage/``.

    No empty, ``.`` or ``..`` segment, no NUL and no leading or trailing
    ``/``: a hint names an object inside its repository's prefix, never
    outside it, and never one of the names the format reserves
    (``objects/``, ``log/``, ``checkpoint/``).
    """
    if (not text.startswith("stage/")
            or len(text.encode("utf-8", "surrogatepass")) > LOCATION_LIMIT):
        return False
    parts = text.split("/")
    return all(part not in ("", ".", "..") for part in parts) and "\0" not in text


@attrs.frozen(kw_only=True)
class VirtualRef:
    """A value stored outside the repository: ``length`` bytes at ``offset`` of ``location``.

    ``location`` is a URL (``file://``, ``http(s)://``, ``s3://``, ``gs://``,
    ``az://``, ...) resolved at read time through the stores given to
    ``Repository.open(..., virtual_chunk_stores=...)``; no credentials are
    ever recorded. ``checksum`` pins the source: an ETag (``str``) must match
    the source's current ETag, a last-modified time (``datetime``) must not be
    older than the source's; ``None`` records no check.
    """

    location: str
    offset: int
    length: int
    checksum: str | datetime | None = None

    @property
    def size(self) -> int:
        """The value's length in bytes (as ``ChunkRef.size``)."""
        return self.length

    def check(self) -> None:
        """Raise ``ValueError`` if the reference is malformed."""
        if self.offset < 0 or self.length < 0 or "://" not in self.location:
            raise ValueError(f"malformed virtual reference {self!r}")
        if isinstance(self.checksum, datetime) and self.checksum.tzinfo is None:
            raise ValueError("a virtual reference's last-modified time has no timezone")


#: A value: small ones inline as ``bytes``, large ones by reference, external ones virtual.
Entry = bytes | ChunkRef | VirtualRef


@attrs.frozen
class Tombstone:
    """A staged deletion."""


TOMBSTONE = Tombstone()


@attrs.frozen(kw_only=True)
class Leaf:
    """Tree leaf: ``keys[i]`` holds ``entries[i]``; keys strictly increasing.

    Format 2 exists only for leaves that hold a ``VirtualRef``, format 3 only
    for leaves that hold a ``LocatedChunkRef``: other leaves are still
    written as format 1, byte for byte (and so with the same ids).
    """

    #: 2: virtual references; 3: located chunk references (each written only where present)
    FORMAT_VERSION: ClassVar[int] = 3
    keys: tuple[str, ...]
    entries: tuple[Entry, ...]

    def check(self) -> None:
        """Raise ``ValueError`` if the leaf breaks its invariants."""
        if len(self.keys) != len(self.entries) or not self.keys:
            raise ValueError("leaf keys and entries differ in length, or the leaf is empty")
        if any(a >= b for a, b in zip(self.keys, self.keys[1:], strict=False)):
            raise ValueError("leaf keys are not strictly increasing")
        for entry in self.entries:
            if not isinstance(entry, bytes):
                entry.check()


@attrs.frozen(kw_only=True)
class Branch:
    """Tree interior node: child ``i`` holds keys ``>= keys[i]`` and ``< keys[i + 1]``.

    ``level`` is the height above the leaves (1: the children are leaves).
    """

    FORMAT_VERSION: ClassVar[int] = 1
    level: int
    keys: tuple[str, ...]
    children: tuple[ObjectId, ...]

    def check(self) -> None:
        """Raise ``ValueError`` if the node breaks its invariants."""
        if len(self.keys) != len(self.children) or not self.keys:
            raise ValueError("branch keys and children differ in length, or the node is empty")
        if any(a >= b for a, b in zip(self.keys, self.keys[1:], strict=False)):
            raise ValueError("branch keys are not strictly increasing")
        if self.level < 1:
            raise ValueError("branch level must be at least 1")
        if any(len(child) != ID_LENGTH for child in self.children):
            raise ValueError("malformed child id")


Node = Leaf | Branch


@attrs.frozen(kw_only=True)
class SizeRow:
    """What the keys of one Zarr array (``path``, its directory) hold in a version.

    ``path`` is ``None`` for the keys outside every array. ``chunks`` counts
    the keys that are not metadata documents (Zarr chunks, inline or not),
    ``objects`` the keys stored as chunk objects; ``stored_bytes`` is what
    the backend holds per key (a chunk object's frame, an inline value),
    counted once per key; virtual keys count in ``logical_bytes`` and
    ``virtual_*`` only.
    """

    path: str | None
    keys: int
    chunks: int
    objects: int
    logical_bytes: int
    stored_bytes: int
    virtual_chunks: int = 0
    virtual_bytes: int = 0

    def check(self) -> None:
        """Raise ``ValueError`` if a count is negative or exceeds the keys."""
        counts = (self.keys, self.chunks, self.objects, self.logical_bytes, self.stored_bytes,
                  self.virtual_chunks, self.virtual_bytes)
        if min(counts) < 0 or max(self.chunks, self.objects, self.virtual_chunks) > self.keys:
            raise ValueError(f"malformed size row {self!r}")


#: The Zarr metadata documents a snapshot may carry inline (``Sizes.documents``): what
#: opening an array or group reads, v2's consolidated ``.zmetadata`` included.
DOCUMENT_NAMES: Final = frozenset({"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"})
#: A snapshot carries its tree's documents only while their keys and values total at most
#: this many bytes (every snapshot read, a branch's tip included, decodes them).
DOCUMENTS_LIMIT: Final = 32 << 10


@attrs.frozen(kw_only=True)
class Sizes:
    """A version's running totals, one row per array, and its small metadata documents.

    Computed at commit from the parent's and the changed keys only
    (``versionstore.sizes``), so ``du`` reads the rows instead of walking the
    tree, and opening an array of the version reads its metadata documents
    here instead of from tree nodes. Rows are sorted by path (``None``
    first) and every row has at least one key.

    ``documents`` is every key of the tree whose last part is in
    ``DOCUMENT_NAMES``, with its value, sorted by key — exactly the tree's,
    so a name missing from it is missing from the tree. ``None`` means not
    kept: written by an older versionstore, or more than ``DOCUMENTS_LIMIT``
    bytes (then read the tree).
    """

    FORMAT_VERSION: ClassVar[int] = 1
    rows: tuple[SizeRow, ...] = ()
    documents: Mapping[str, bytes] | None = None

    def check(self) -> None:
        """Raise ``ValueError`` if the rows or documents break their invariants."""
        for row in self.rows:
            row.check()
            if row.keys == 0:
                raise ValueError("size row without keys")
        paths = [(row.path is not None, row.path or "") for row in self.rows]
        if any(a >= b for a, b in zip(paths, paths[1:], strict=False)):
            raise ValueError("size rows are not sorted by path")
        if self.documents is not None:
            # C-level maps: every snapshot read (a branch's tip too) checks its documents.
            keys = list(self.documents)  # a mapping: no key twice
            if keys != sorted(keys):
                raise ValueError("metadata documents are not sorted by key")
            if not DOCUMENT_NAMES.issuperset(map(operator.itemgetter(2), map(
                    operator.methodcaller("rpartition", "/"), keys))):
                raise ValueError("a metadata document's key names no metadata document")


@attrs.frozen(kw_only=True)
class Snapshot:
    """One commit. ``tree`` is ``None`` for an empty store.

    ``parents`` is ``()`` for the initial snapshot, one id for a commit (and a
    cherry-pick, revert, squash or amend), and two for a merge: the target
    branch's tip first, then the merged source. Format 1 stored a single
    ``parent`` (read as a one-element ``parents``); format 2 stores the list.
    """

    FORMAT_VERSION: ClassVar[int] = 2  # 2: a list of parents (merges have two), history
    parents: tuple[ObjectId, ...]
    tree: ObjectId | None
    message: str
    written_at: datetime
    metadata: dict[str, Any] = attrs.field(factory=dict)
    #: The ``HistoryPage`` that starts with this snapshot's first parent (``None``:
    #: no parent, or a parent written before history pages existed).
    history: ObjectId | None = None
    #: The version's running totals (``None``: written before they existed).
    sizes: Sizes | None = None

    @property
    def parent(self) -> ObjectId | None:
        """The first parent (the branch this snapshot was made on), or ``None``."""
        return self.parents[0] if self.parents else None

    def check(self) -> None:
        """Raise ``ValueError`` if the snapshot is malformed."""
        if self.written_at.tzinfo is None:
            raise ValueError("snapshot time has no timezone")
        for object_id in (*self.parents, self.tree, self.history):
            if object_id is not None and len(object_id) != ID_LENGTH:
                raise ValueError("malformed object id in snapshot")
        if len(set(self.parents)) != len(self.parents):
            raise ValueError("snapshot names the same parent twice")
        if self.sizes is not None:
            self.sizes.check()


#: A history page holds at most this many snapshots.
HISTORY_PAGE_SIZE = 64


@attrs.frozen(kw_only=True)
class HistoryPage:
    """A run of first-parent ancestors, newest first, then the page that continues it.

    Stored by columns so that listing a history decodes almost nothing:
    ``ids`` and their user-facing ``texts`` are read eagerly; ``rows`` holds
    each entry's snapshot fields (parents, tree, message, time, metadata;
    not its own ``history``) packed back to back, decoded only when asked
    for (``codec.history_entries``). ``ids[0]`` is the first parent of the
    snapshot that names this page; each entry's first parent is the next
    entry, and the last entry's is ``after`` (``None``: it is the first
    snapshot), which is also ``previous``'s first id when there is a
    ``previous`` page. Pages are immutable and shared: a commit's page is its
    parent plus the parent's page (copied while it has room), else a new
    page pointing at it.
    """

    FORMAT_VERSION: ClassVar[int] = 2  # 2: columns, rows decoded on demand (1: whole snapshots)
    ids: tuple[ObjectId, ...]
    texts: tuple[str, ...]
    rows: bytes
    after: ObjectId | None
    previous: ObjectId | None

    def check(self) -> None:
        """Raise ``ValueError`` if the page's columns break their invariants.

        (``codec.history_entries`` checks the rows against the ids.)
        """
        if not self.ids or len(self.ids) > HISTORY_PAGE_SIZE:
            raise ValueError("history page is empty or too long")
        if len(self.texts) != len(self.ids):
            raise ValueError("history page ids and texts differ in length")
        for object_id, text in zip(self.ids, self.texts, strict=True):
            if len(object_id) != ID_LENGTH or object_id_text(object_id) != text:
                raise ValueError("history page id and its text disagree")
        for link in (self.after, self.previous):
            if link is not None and len(link) != ID_LENGTH:
                raise ValueError("malformed object id in history page")
        if self.previous is not None and self.after is None:
            raise ValueError("history page continues, but its last entry has no parent")


@attrs.frozen(kw_only=True)
class RefTarget:
    """What a branch or tag points at; ``deleted`` marks a tag's tombstone."""

    FORMAT_VERSION: ClassVar[int] = 2  # 2: the record names its ref (under the checksum)
    snapshot: ObjectId | None
    deleted: bool = False


@attrs.frozen(kw_only=True)
class StagedManifest:
    """Located writes one absorb spilled out of the refs: sorted parts, by their first keys.

    Each part is an immutable object (``versionstore.staged_manifest``) holding
    up to ``PART_ENTRIES`` located writes of one session, sorted by key;
    ``first_keys[i]`` is the first key of ``parts[i]``, so one key is found
    by reading one part (``docs/format.md``, "Staged manifests").
    """

    parts: tuple[ObjectId, ...]
    first_keys: tuple[str, ...]

    def check(self) -> None:
        """Raise ``ValueError`` if the parts and keys do not match or are not sorted."""
        if len(self.parts) != len(self.first_keys) or not self.parts:
            raise ValueError("a staged manifest needs one first key per part")
        if any(a >= b for a, b in itertools.pairwise(self.first_keys)):
            raise ValueError("a staged manifest's first keys are not increasing")


@attrs.frozen(kw_only=True)
class SessionRecord:
    """A writable session: the branch it commits to and the snapshot it is based on."""

    #: 2: names its ref, and has a generation; 3: located staging (written only when used);
    #: 4: staged manifests (written only while the session has one)
    FORMAT_VERSION: ClassVar[int] = 4
    branch: str
    base: ObjectId
    created_at: datetime
    #: How many commits the session has made: a copy follows a record's base only
    #: if its generation is newer than what the copy knows, so a copy that was idle
    #: during a commit never drags the session back to an older base.
    generation: int = 0
    #: Located staging (object storage, ``versionstore.located``): the epoch new located
    #: writes go to, and the epochs closed but not yet absorbed into staged refs.
    #: ``None``: the session has never staged a located write (a version-2 record).
    epoch: int | None = None
    closing: tuple[int, ...] = ()
    #: Staged manifests (object storage): absorbed located writes kept out of the refs,
    #: oldest first. A commit records them and empties this.
    manifests: tuple[StagedManifest, ...] = ()


#: The repository format this library writes. 1: no ``repository`` record, refs
#: without names; 2: the ``repository`` record, refs name themselves.
REPOSITORY_FORMAT = 2


@attrs.frozen(kw_only=True)
class RepositoryRecord:
    """The repository as a whole: which format it is written in.

    Stored in the ``repository`` ref by ``Repository.create`` in the same
    atomic step as ``main``. A client refuses to open (and so to garbage
    collect) a repository whose ``format_version`` is newer than it knows;
    repositories from before the record existed are format 1.
    """

    FORMAT_VERSION: ClassVar[int] = 1
    format_version: int
    created_at: datetime


@attrs.frozen(kw_only=True)
class Graft:
    """The parents a snapshot is seen with after ``expire_snapshots`` dropped its own.

    Stored in ref ``graft/<snapshot id>``. Snapshots are content-addressed
    (their parent is part of their id), so expiring an ancestor cannot edit
    them; the graft says "follow these parents instead" (git's grafts). A
    tuple so that multi-parent (merge) snapshots fit unchanged.
    """

    FORMAT_VERSION: ClassVar[int] = 1
    parents: tuple[ObjectId, ...]
#: The kinds of ref change the ops log records.
OPERATION_KINDS = frozenset({
    "commit", "amend", "merge", "cherry_pick", "revert", "squash", "reset_branch",
    "create_branch", "delete_branch", "create_tag", "delete_tag", "push", "fetch",
})


@attrs.frozen(kw_only=True)
class Operation:
    """One entry of the ops log: a ref that changed, and how.

    Written under ``ops/…`` in the same atomic batch as the ref change it
    records. ``ref`` is the backend ref name (``branch/main``, ``tag/v1``);
    ``old``/``new`` the snapshot before and after (``None``: the ref did not
    exist / was deleted). ``source`` is the merged, cherry-picked or reverted
    snapshot, where there is one.
    """

    FORMAT_VERSION: ClassVar[int] = 1
    kind: str
    ref: str
    old: ObjectId | None
    new: ObjectId | None
    written_at: datetime
    message: str | None = None
    source: ObjectId | None = None


@attrs.frozen(kw_only=True)
class GCLedger:
    """What the last incremental garbage collection saw (``versionstore.gc_incremental``).

    Stored as the header of the backend's ledger, beside the per-object
    reference counts it summarises. ``roots`` are the ``(object id, kind,
    count)`` the refs of that run pointed at (kinds as in
    ``versionstore.gc_incremental``), ``grafts`` the parents its grafts gave;
    the next run diffs them with the refs it reads. ``journal`` is the
    position up to which newly stored objects were accounted for, ``live``
    the number of objects with a non-zero count, and ``generation`` grows by
    one per run (two collections racing on one ledger: the second one's
    atomic sweep sees a changed header and starts over).
    """

    FORMAT_VERSION: ClassVar[int] = 1
    generation: int
    journal: int
    live: int
    roots: tuple[tuple[ObjectId, int, int], ...]
    grafts: tuple[tuple[ObjectId, tuple[ObjectId, ...]], ...]

"""Sizes (``du``): what one version holds, and what each snapshot of a history costs.

``version_usage`` reads one version's running totals (``versionstore.sizes``,
kept in every snapshot): keys, Zarr chunks, chunk objects, logical bytes (the values'
lengths) and stored bytes (what the backend keeps for each key: a chunk
object's frame, an inline value), per Zarr array and in total.

``history_usage`` answers "what would expiring this snapshot free?" without
reading any tree whole: each snapshot is compared with its parent
(``tree.changed_entries`` skips every shared subtree), which gives the
``(key, chunk)`` pairs it added. A chunk is referenced *only* by snapshot S
when its single addition anywhere in the repository's history is at S and
every child of S replaces or deletes that key (and no writable session has it
staged); those are S's exclusive bytes. Sizes in history are logical chunk
bytes (``ChunkRef.size``); small values stored inline in tree nodes are
not counted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import attrs

from versionstore.codec import decode_ref_target, decode_session, decode_staged
from versionstore.grafts import grafts_from_refs, parents_of
from versionstore.history import SnapshotInfo, ancestry
from versionstore.ids import ObjectId, SnapshotId, object_id_text
from versionstore.objects import ObjectReader
from versionstore.records import ChunkRef, Entry
from versionstore.sizes import sizes_of
from versionstore.tree import changed_entries

__all__ = ["ArrayUsage", "CompactReport", "SnapshotUsage", "VersionUsage", "history_usage",
           "version_usage"]


@attrs.frozen(kw_only=True)
class ArrayUsage:
    """Sizes of one Zarr array (or, for ``"/"``, of keys outside every array)."""

    path: str
    keys: int
    chunks: int
    logical_bytes: int
    stored_bytes: int
    #: Keys that reference byte ranges of external files, and those ranges' total length.
    virtual_chunks: int = 0
    virtual_bytes: int = 0


@attrs.frozen(kw_only=True)
class VersionUsage:
    """Sizes of one version: totals and per array (``arrays``: path -> usage).

    ``chunks`` counts Zarr chunks (every key but the metadata documents),
    inline or not, in total as per array (the total is the sum of the
    arrays'); ``objects`` counts the keys stored as chunk objects (values
    over 512 bytes, metadata documents included). ``stored_bytes`` is what the backend keeps
    per key: each chunk object's frame (its value and a 13-byte header) and
    the inline values. Identical chunks are stored once (content
    addressing), but counted for every key that holds them: a version whose
    keys share objects uses less than ``stored_bytes``. ``reclaimable_bytes`` is space the backend
    file holds but no longer uses (LMDB; ``Repository.compact`` returns it),
    ``None`` where that does not apply. Virtual chunks (byte ranges of
    external files) count in ``logical_bytes`` and in ``virtual_chunks`` /
    ``virtual_bytes``, never in ``chunks`` or ``stored_bytes``: the
    repository does not hold them.
    """

    snapshot_id: SnapshotId
    keys: int
    chunks: int
    logical_bytes: int
    stored_bytes: int
    arrays: Mapping[str, ArrayUsage]
    file_bytes: int | None = None
    reclaimable_bytes: int | None = None
    virtual_chunks: int = 0
    virtual_bytes: int = 0
    objects: int = 0


@attrs.frozen(kw_only=True)
class CompactReport:
    """What ``Repository.compact`` gave back: the data file's size before and after, in bytes."""

    bytes_before: int
    bytes_after: int

    @property
    def bytes_freed(self) -> int:
        """Bytes returned to the file system."""
        return self.bytes_before - self.bytes_after


@attrs.frozen(kw_only=True)
class SnapshotUsage:
    """One snapshot's cost: keys changed, chunk bytes added, bytes only it references."""

    snapshot: SnapshotInfo
    keys_changed: int
    bytes_added: int
    exclusive_bytes: int


def version_usage(reader: ObjectReader, snapshot_id: ObjectId) -> VersionUsage:
    """Sizes of the version at ``snapshot_id``, from its running totals.

    A snapshot written before totals existed is walked instead
    (``versionstore.sizes``); the numbers are the same either way.
    """
    sizes = sizes_of(reader, reader.snapshot(snapshot_id))
    merged: dict[str, list[int]] = defaultdict(lambda: [0] * 6)
    for row in sizes.rows:
        # Keys outside every array and those of a root array share "/", as they always did.
        counts = merged["/" + (row.path or "")]
        for i, value in enumerate((row.keys, row.chunks, row.logical_bytes, row.stored_bytes,
                                   row.virtual_chunks, row.virtual_bytes)):
            counts[i] += value
    return VersionUsage(
        snapshot_id=SnapshotId(object_id_text(snapshot_id)),
        keys=sum(r.keys for r in sizes.rows),
        chunks=sum(r.chunks for r in sizes.rows),
        objects=sum(r.objects for r in sizes.rows),
        logical_bytes=sum(r.logical_bytes for r in sizes.rows),
        stored_bytes=sum(r.stored_bytes for r in sizes.rows),
        arrays={
            path: ArrayUsage(path=path, keys=c[0], chunks=c[1], logical_bytes=c[2],
                             stored_bytes=c[3], virtual_chunks=c[4], virtual_bytes=c[5])
            for path, c in sorted(merged.items())
        },
        virtual_chunks=sum(r.virtual_chunks for r in sizes.rows),
        virtual_bytes=sum(r.virtual_bytes for r in sizes.rows),
    )


def history_usage(reader: ObjectReader, tip: ObjectId) -> list[SnapshotUsage]:
    """Per snapshot of ``tip``'s history (newest first): keys changed, bytes added, exclusive.

    Compares every snapshot any ref reaches with its parent (cost: the changed
    keys, not the repository's size), to know which chunks other histories share.
    """
    backend = reader.backend
    refs = backend.list_refs("")
    grafts = grafts_from_refs(refs)
    roots: list[ObjectId] = []
    staged: set[ObjectId] = set()
    for name, raw in refs.items():
        if name.startswith(("branch/", "tag/")):
            target = decode_ref_target(name, raw).snapshot
            if target is not None:
                roots.append(target)
        elif name.startswith("session/"):
            roots.append(decode_session(name, raw).base)
        elif name.startswith("stage/"):
            entry = decode_staged(name, raw)
            if isinstance(entry, ChunkRef):
                staged.add(entry.chunk_id)
    roots.append(tip)
    deltas: dict[ObjectId, dict[str, tuple[Entry | None, Entry | None]]] = {}
    children: dict[ObjectId, list[ObjectId]] = defaultdict(list)
    additions: dict[ObjectId, int] = defaultdict(int)
    pending = list(roots)
    while pending:
        snapshot_id = pending.pop()
        if snapshot_id in deltas:
            continue
        snapshot = reader.snapshot(snapshot_id)
        parents = parents_of(snapshot_id, snapshot, grafts)
        parent_tree = reader.snapshot(parents[0]).tree if parents else None
        delta = changed_entries(reader.node, parent_tree, snapshot.tree)
        deltas[snapshot_id] = delta
        for _, new in delta.values():
            if isinstance(new, ChunkRef):
                additions[new.chunk_id] += 1
        for parent in parents:
            children[parent].append(snapshot_id)
        pending.extend(parents)
    rows = []
    for snapshot_id, snapshot in ancestry(reader, tip, grafts=grafts):
        delta = deltas[snapshot_id]
        replaced = {old.chunk_id for old, _ in delta.values() if isinstance(old, ChunkRef)}
        added = {new.chunk_id: new.size for _, new in delta.values()
                 if isinstance(new, ChunkRef) and new.chunk_id not in replaced}
        exclusive = 0
        for key, (_, new) in delta.items():
            if not isinstance(new, ChunkRef) or additions[new.chunk_id] != 1:
                continue
            if new.chunk_id in staged:
                continue
            if all(key in deltas[child] and deltas[child][key][1] != new
                   for child in children.get(snapshot_id, [])):
                exclusive += new.size
        rows.append(SnapshotUsage(
            snapshot=SnapshotInfo.of(snapshot_id, snapshot, grafts),
            keys_changed=len(delta),
            bytes_added=sum(added.values()),
            exclusive_bytes=exclusive,
        ))
    return rows

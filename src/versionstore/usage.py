"""Sizes (``du``): what one version holds, and what each snapshot of a history costs.

``version_usage`` walks one version's tree: keys, chunk objects, logical
bytes (the values' lengths) and stored bytes (what the backend keeps for
them, each chunk object counted once), per Zarr array and in total.

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

import json
from collections import defaultdict
from collections.abc import Mapping

import attrs

from versionstore.codec import decode_ref_target, decode_session, decode_staged
from versionstore.grafts import grafts_from_refs, parents_of
from versionstore.history import SnapshotInfo, ancestry
from versionstore.ids import ObjectId, SnapshotId, object_id_text
from versionstore.objects import ObjectReader
from versionstore.records import ChunkRef, Entry, VirtualRef
from versionstore.tree import changed_entries, iter_from

__all__ = ["ArrayUsage", "CompactReport", "SnapshotUsage", "VersionUsage", "history_usage",
           "version_usage"]

_BATCH = 512


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

    ``chunks`` counts keys stored as chunk objects (values over 512 bytes);
    ``stored_bytes`` counts each chunk object once even if several keys share
    it, plus the inline values. ``reclaimable_bytes`` is space the backend
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


#: Zarr metadata documents (v3 and v2): every other key is a chunk.
_METADATA_NAMES = frozenset({"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"})


def _array_paths(entries: list[tuple[str, Entry]], read: Mapping[str, bytes]) -> list[str]:
    """Directories of the arrays among ``entries`` (longest first)."""
    arrays = []
    for key, _ in entries:
        directory, _, name = key.rpartition("/")
        if name == ".zarray":
            arrays.append(directory)
        elif name == "zarr.json" and key in read:
            try:
                document = json.loads(read[key])
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(document, dict) and document.get("node_type") == "array":
                arrays.append(directory)
    return sorted(arrays, key=len, reverse=True)


def version_usage(reader: ObjectReader, snapshot_id: ObjectId) -> VersionUsage:
    """Sizes of the version at ``snapshot_id`` (reads every node, sizes every chunk object)."""
    root = reader.snapshot(snapshot_id).tree
    entries = list(iter_from(reader.node, root, ""))
    documents = [(key, e) for key, e in entries if key.rpartition("/")[2] == "zarr.json"]
    # An array's zarr.json is often larger than the inline limit: then it is a chunk object.
    large = [e.chunk_id for _, e in documents if isinstance(e, ChunkRef)]
    fetched = dict(zip(large, reader.chunks(large), strict=True)) if large else {}
    metadata = {key: e if isinstance(e, bytes) else fetched[e.chunk_id] for key, e in documents
                if not isinstance(e, VirtualRef)}
    arrays = _array_paths(entries, metadata)
    chunk_ids = sorted({e.chunk_id for _, e in entries if isinstance(e, ChunkRef)})
    stored: dict[ObjectId, int] = {}
    for start in range(0, len(chunk_ids), _BATCH):
        batch = chunk_ids[start : start + _BATCH]
        for chunk_id, data in zip(batch, reader.backend.get_objects(batch), strict=True):
            stored[chunk_id] = 0 if data is None else len(data)
    rows: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    seen: dict[str, set[ObjectId]] = defaultdict(set)
    for key, entry in entries:
        path = next((a for a in arrays if key.startswith(a + "/") or not a), None)
        node = "/" + path if path is not None else "/"
        row = rows[node]
        row["keys"] += 1
        if key.rpartition("/")[2] not in _METADATA_NAMES:
            row["chunks"] += 1
        if isinstance(entry, ChunkRef):
            row["logical"] += entry.size
            if entry.chunk_id not in seen[node]:
                seen[node].add(entry.chunk_id)
                row["stored"] += stored[entry.chunk_id]
        elif isinstance(entry, VirtualRef):
            row["logical"] += entry.length
            row["virtual"] += 1
            row["virtual_bytes"] += entry.length
        else:
            row["logical"] += len(entry)
            row["stored"] += len(entry)
    inline = sum(len(e) for _, e in entries if isinstance(e, bytes))
    return VersionUsage(
        snapshot_id=SnapshotId(object_id_text(snapshot_id)),
        keys=len(entries),
        chunks=sum(1 for _, e in entries if isinstance(e, ChunkRef)),
        logical_bytes=sum(len(e) if isinstance(e, bytes) else e.size for _, e in entries),
        stored_bytes=inline + sum(stored.values()),
        arrays={
            path: ArrayUsage(path=path, keys=row["keys"], chunks=row["chunks"],
                             logical_bytes=row["logical"], stored_bytes=row["stored"],
                             virtual_chunks=row["virtual"],
                             virtual_bytes=row["virtual_bytes"])
            for path, row in sorted(rows.items())
        },
        virtual_chunks=sum(1 for _, e in entries if isinstance(e, VirtualRef)),
        virtual_bytes=sum(e.length for _, e in entries if isinstance(e, VirtualRef)),
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

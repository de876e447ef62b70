"""Running totals of a version's sizes, kept in every snapshot (``records.Sizes``).

``du`` must not read a whole tree: each snapshot carries, per Zarr array,
its keys, Zarr chunks, chunk objects, logical and stored bytes. A writer
computes them from the totals of the snapshot it built on and the keys it
changed, ``O(changed keys)``:

* ``SizeTally`` collects what each changed key contributed before and after
  (``observe(key, old, new)``), summed per directory, and the metadata
  documents (``.zarray``, ``zarr.json``) that changed;
* ``SizeTally.sizes`` adds that to the base totals. Keys belong to the
  longest array directory above them; if the change made a directory an
  array or a group, the base tree's keys under it move between rows (a
  read of that subtree only, which a new array does not have yet).

A base written before totals existed is walked once (``sizes_of``): the
first commit on a branch of an older repository pays for reading its tree,
and its successors carry totals from then on. Stored bytes are per key: a
chunk object's frame (``codec.chunk_frame_size``) or an inline value; a
chunk object that several keys share counts once per key.

The totals also carry the version's Zarr metadata documents
(``Sizes.documents``) while they are small, kept the same way: the base's,
with the changed documents applied (a document stored as a chunk object is
read once, at commit). Opening an array of a snapshot then reads them from
the snapshot alone, not from tree nodes (``Session.value``). A base without
them (an older writer, or over ``DOCUMENTS_LIMIT``) passes on "not kept",
except that a commit on one of at most ``WALK_DOCUMENTS`` keys walks it for
them first (``with_documents``), so a small repository of an older release
gains them at its next commit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

from versionstore.codec import chunk_frame_size
from versionstore.documents import load_document
from versionstore.ids import ObjectId
from versionstore.objects import ObjectReader
from versionstore.records import (
    DOCUMENT_NAMES,
    DOCUMENTS_LIMIT,
    ChunkRef,
    Entry,
    LocatedChunkRef,
    SizeRow,
    Sizes,
    Snapshot,
    VirtualRef,
)
from versionstore.tree import NodeLoader, changed_entries, iter_from, lookup

__all__ = ["METADATA_NAMES", "WALK_DOCUMENTS", "SizeTally", "check_sizes", "sizes_between",
           "sizes_of", "walk_documents", "walk_sizes", "with_documents"]

#: Zarr metadata documents (v3 and v2): every other key is a chunk.
METADATA_NAMES = frozenset({"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"})

#: keys, chunks, objects, logical bytes, stored bytes, virtual chunks, virtual bytes.
_WIDTH = 7
#: What a chunk object's frame adds to its value.
_FRAME = chunk_frame_size(0)
_Counts = list[int]
#: A commit walks a base without documents for them when it holds at most this many keys.
WALK_DOCUMENTS = 4096
#: Reads chunk values (for a ``zarr.json`` stored as a chunk object).
ChunkReader = Callable[[list[ObjectId]], list[bytes]]


def _add(counts: _Counts, key: str, entry: Entry, sign: int, name: str | None = None) -> None:
    """Add (``sign`` 1) or take away (-1) what ``key`` holding ``entry`` contributes.

    Called once or twice per changed key of every commit: kept to plain
    arithmetic (a commit of a million keys pays it a million times).
    """
    counts[0] += sign
    if (key.rpartition("/")[2] if name is None else name) not in METADATA_NAMES:
        counts[1] += sign
    cls = entry.__class__
    if cls is bytes:
        size = len(entry)  # type: ignore[arg-type]
        counts[3] += sign * size
        counts[4] += sign * size
    elif cls is ChunkRef or cls is LocatedChunkRef:
        size = entry.size  # type: ignore[union-attr]
        counts[2] += sign
        counts[3] += sign * size
        counts[4] += sign * chunk_frame_size(size)
    else:
        size = entry.size  # type: ignore[union-attr]
        counts[3] += sign * size
        counts[5] += sign
        counts[6] += sign * size


def _owner(directory: str, arrays: set[str]) -> str | None:
    """The longest array directory that holds keys of ``directory`` (``None``: no array)."""
    path = directory
    while True:
        if path in arrays:
            return path
        if not path:
            return None
        path = path.rpartition("/")[0]


def _is_array_document(entry: Entry | None, read_chunks: ChunkReader) -> bool:
    """Whether ``zarr.json`` entry ``entry`` declares an array (as ``du`` always judged)."""
    if entry is None or isinstance(entry, VirtualRef):
        return False
    data = entry if isinstance(entry, bytes) else read_chunks([entry.chunk_id])[0]
    try:
        document = load_document(data)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(document, dict) and document.get("node_type") == "array"


class SizeTally:
    """The size changes of one new version relative to a base version.

    Feed it every changed key with its entry before and after (in any order,
    each key once); then ``sizes`` gives the new version's totals.
    """

    def __init__(self) -> None:
        self._deltas: dict[str, _Counts] = {}
        #: directory -> {name: new entry} for changed ``.zarray`` / ``zarr.json``.
        self._documents: dict[str, dict[str, Entry | None]] = defaultdict(dict)
        #: key -> new entry for every changed metadata document (``DOCUMENT_NAMES``).
        self._metadata: dict[str, Entry | None] = {}
        self.changed = 0

    def observe(self, key: str, old: Entry | None, new: Entry | None) -> None:
        """Account for ``key`` changing from ``old`` to ``new`` (``None``: absent)."""
        self.observe_all(((key, old, new),))

    def observe_all(self, changes: Iterable[tuple[str, Entry | None, Entry | None]]) -> None:
        """``observe`` each ``(key, old, new)``.

        One tight loop: commits of millions of keys run it once per key, so
        the arithmetic is inlined and consecutive keys of one directory share
        their row lookup.
        """
        deltas, documents, metadata = self._deltas, self._documents, METADATA_NAMES
        kept = self._metadata
        last_directory: str | None = None
        counts: _Counts = []
        changed = 0
        for key, old, new in changes:
            if old is new or (old is not None and new is not None and old == new):
                continue
            changed += 1
            directory, _, name = key.rpartition("/")
            if directory != last_directory:
                found = deltas.get(directory)
                if found is None:
                    found = deltas[directory] = [0] * _WIDTH
                counts, last_directory = found, directory
            chunk = 0 if name in metadata else 1
            if old is not None:
                counts[0] -= 1
                counts[1] -= chunk
                cls = old.__class__
                if cls is bytes:
                    counts[3] -= len(old)  # type: ignore[arg-type]
                    counts[4] -= len(old)  # type: ignore[arg-type]
                elif cls is ChunkRef or cls is LocatedChunkRef:
                    counts[2] -= 1
                    counts[3] -= old.size  # type: ignore[union-attr]
                    counts[4] -= old.size + _FRAME  # type: ignore[union-attr]
                else:
                    counts[3] -= old.size  # type: ignore[union-attr]
                    counts[5] -= 1
                    counts[6] -= old.size  # type: ignore[union-attr]
            if new is not None:
                counts[0] += 1
                counts[1] += chunk
                cls = new.__class__
                if cls is bytes:
                    counts[3] += len(new)  # type: ignore[arg-type]
                    counts[4] += len(new)  # type: ignore[arg-type]
                elif cls is ChunkRef or cls is LocatedChunkRef:
                    counts[2] += 1
                    counts[3] += new.size  # type: ignore[union-attr]
                    counts[4] += new.size + _FRAME  # type: ignore[union-attr]
                else:
                    counts[3] += new.size  # type: ignore[union-attr]
                    counts[5] += 1
                    counts[6] += new.size  # type: ignore[union-attr]
            if chunk == 0:
                if name == ".zarray" or name == "zarr.json":
                    documents[directory][name] = new
                if name in DOCUMENT_NAMES:  # every metadata name, today
                    kept[key] = new
        self.changed += changed

    def sizes(self, load: NodeLoader, base_tree: ObjectId | None, base: Sizes,
              read_chunks: ChunkReader) -> Sizes:
        """The totals of ``base_tree`` (whose totals are ``base``) with the changes applied.

        ``load`` must read ``base_tree``'s nodes; ``read_chunks`` reads a
        changed ``zarr.json`` stored as a chunk object.
        """
        before = {row.path for row in base.rows if row.path is not None}
        after = set(before)
        for directory, names in self._documents.items():
            zarray = names[".zarray"] if ".zarray" in names else lookup(
                load, base_tree, _join(directory, ".zarray"))
            document = names["zarr.json"] if "zarr.json" in names else lookup(
                load, base_tree, _join(directory, "zarr.json"))
            if zarray is not None or _is_array_document(document, read_chunks):
                after.add(directory)
            else:
                after.discard(directory)
        rows: dict[str | None, _Counts] = {
            row.path: [row.keys, row.chunks, row.objects, row.logical_bytes, row.stored_bytes,
                       row.virtual_chunks, row.virtual_bytes]
            for row in base.rows
        }
        flipped = sorted(before ^ after)
        for top in [d for d in flipped if not any(_under(d, o) for o in flipped if o != d)]:
            # Keys under a directory that became (or stopped being) an array change rows.
            prefix = _join(top, "")
            for key, entry in iter_from(load, base_tree, prefix):
                if not key.startswith(prefix):
                    break
                directory = key.rpartition("/")[0]
                old_owner, new_owner = _owner(directory, before), _owner(directory, after)
                if old_owner != new_owner:
                    _add(rows.setdefault(old_owner, [0] * _WIDTH), key, entry, -1)
                    _add(rows.setdefault(new_owner, [0] * _WIDTH), key, entry, 1)
        for directory, delta in self._deltas.items():
            counts = rows.setdefault(_owner(directory, after), [0] * _WIDTH)
            for i, value in enumerate(delta):
                counts[i] += value
        return Sizes(rows=tuple(
            SizeRow(path=path, keys=c[0], chunks=c[1], objects=c[2], logical_bytes=c[3],
                    stored_bytes=c[4], virtual_chunks=c[5], virtual_bytes=c[6])
            for path, c in sorted(rows.items(), key=lambda i: (i[0] is not None, i[0] or ""))
            if c[0] != 0 or any(c)
        ), documents=self._documents_after(base, read_chunks))

    def _documents_after(self, base: Sizes, read_chunks: ChunkReader
                         ) -> dict[str, bytes] | None:
        """The new version's metadata documents: the base's with the changed ones applied.

        ``None`` (not kept) when the base kept none, when a changed document
        is not a value or a plain chunk object, or when they come to more
        than ``DOCUMENTS_LIMIT``.
        """
        before = base.documents
        if before is None:
            return None
        documents = dict(before)
        unread: dict[str, ObjectId] = {}
        for key, entry in self._metadata.items():
            if entry is None:
                documents.pop(key, None)
            elif entry.__class__ is bytes:
                documents[key] = entry
            elif entry.__class__ is ChunkRef:
                unread[key] = entry.chunk_id
            else:
                return None  # a located or virtual metadata document: never written so
        if unread:
            documents.update(zip(unread, read_chunks(list(unread.values())), strict=True))
        return _within_limit(documents)


def _within_limit(documents: dict[str, bytes]) -> dict[str, bytes] | None:
    """``documents`` sorted by key, or ``None`` if they total more than ``DOCUMENTS_LIMIT``."""
    if sum(map(len, documents)) + sum(map(len, documents.values())) > DOCUMENTS_LIMIT:
        return None
    return dict(sorted(documents.items()))


def with_documents(reader: ObjectReader, sizes: Sizes, tree: ObjectId | None) -> Sizes:
    """``sizes`` of ``tree`` as a commit's base: documents walked for if they were not kept.

    Only for a tree of at most ``WALK_DOCUMENTS`` keys (by its rows): a
    larger one is returned as it is, documents not kept. The walked
    documents are not held to ``DOCUMENTS_LIMIT`` (the commit's changes may
    bring them under it; ``SizeTally.sizes`` applies it).
    """
    if sizes.documents is not None or sum(row.keys for row in sizes.rows) > WALK_DOCUMENTS:
        return sizes
    return Sizes(rows=sizes.rows, documents=walk_documents(reader.node, tree, reader.chunks,
                                                           limited=False))


def walk_documents(load: NodeLoader, tree: ObjectId | None, read_chunks: ChunkReader,
                   *, limited: bool = True) -> dict[str, bytes] | None:
    """The metadata documents of ``tree`` by reading all of it.

    ``None`` if one is not a value or a plain chunk object, or, when
    ``limited``, if they total more than ``DOCUMENTS_LIMIT``.
    """
    documents: dict[str, bytes] = {}
    unread: dict[str, ObjectId] = {}
    for key, entry in iter_from(load, tree, ""):
        if key.rpartition("/")[2] in DOCUMENT_NAMES:
            if isinstance(entry, bytes):
                documents[key] = entry
            elif entry.__class__ is ChunkRef:
                unread[key] = entry.chunk_id
            else:
                return None
    if unread:
        documents.update(zip(unread, read_chunks(list(unread.values())), strict=True))
    return _within_limit(documents) if limited else dict(sorted(documents.items()))


def _join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


def _under(directory: str, outer: str) -> bool:
    """Whether ``directory`` lies inside ``outer`` (the root holds everything)."""
    return not outer or directory.startswith(outer + "/")


def walk_sizes(reader: ObjectReader, tree: ObjectId | None) -> Sizes:
    """The totals of ``tree`` by reading all of it (for versions written without totals)."""
    tally = SizeTally()
    tally.observe_all((key, None, entry) for key, entry in iter_from(reader.node, tree, ""))
    return tally.sizes(reader.node, None, Sizes(documents={}), reader.chunks)


def sizes_of(reader: ObjectReader, snapshot: Snapshot) -> Sizes:
    """``snapshot``'s totals: as recorded, else by walking its tree."""
    return snapshot.sizes if snapshot.sizes is not None else walk_sizes(reader, snapshot.tree)


def sizes_between(reader: ObjectReader, base: Snapshot | None, tree: ObjectId | None,
                  load: NodeLoader | None = None, read_chunks: ChunkReader | None = None
                  ) -> Sizes:
    """The totals of ``tree``, from ``base``'s and the keys where the two trees differ.

    ``load`` reads both trees' nodes and ``read_chunks`` chunk values
    (default: the reader; give ones that also know objects not stored yet).
    The cost is the nodes that differ.
    """
    base_tree = None if base is None else base.tree
    base_sizes = Sizes(documents={}) if base is None else sizes_of(reader, base)
    if tree == base_tree:
        return base_sizes
    tally = SizeTally()
    tally.observe_all((key, old, new) for key, (old, new) in
                      changed_entries(load or reader.node, base_tree, tree).items())
    return tally.sizes(reader.node, base_tree, base_sizes, read_chunks or reader.chunks)


def check_sizes(reader: ObjectReader, snapshot_id: ObjectId) -> str | None:
    """What is wrong with a snapshot's recorded totals (``None``: right, or none recorded).

    Recomputed from its first parent's totals and the keys the two trees
    differ in (a walk where the parent has none), so checking every snapshot
    of a history costs its changes; ``verify`` calls it for each.
    """
    snapshot = reader.snapshot(snapshot_id)
    if snapshot.sizes is None:
        return None
    # Asked of the backend, not the reader's cache: an expired parent this process
    # read before garbage collection deleted it stays cached, its tree gone.
    parent = None
    if snapshot.parent is not None and reader.backend.has_objects([snapshot.parent])[0]:
        parent = reader.snapshot_if_stored(snapshot.parent)
    if parent is None and snapshot.parent is not None:
        expected = walk_sizes(reader, snapshot.tree)  # the parent was expired and collected
    else:
        expected = sizes_between(reader, parent, snapshot.tree)
    recorded = snapshot.sizes.documents
    if recorded is not None:
        # "Not kept" is always allowed; kept documents must be exactly the tree's.
        wanted = expected.documents
        if wanted is None:  # the parent kept none: only a walk tells
            wanted = walk_documents(reader.node, snapshot.tree, reader.chunks)
        if wanted != recorded:
            wrong = sorted(key for key in {*recorded, *(wanted or {})}
                           if recorded.get(key) != (wanted or {}).get(key))
            return f"recorded metadata documents differ from its tree (keys {wrong[:5]})"
    if expected.rows == snapshot.sizes.rows:
        return None
    got = {row.path: row for row in snapshot.sizes.rows}
    for row in expected.rows:
        if got.pop(row.path, None) != row:
            return f"recorded sizes of array {row.path!r} differ from its tree ({row})"
    return f"recorded sizes name arrays its tree does not have ({sorted(map(str, got))})"

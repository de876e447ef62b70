"""Typed, cached reads of a repository's immutable objects.

Tree nodes and snapshots never change once written, so they are cached by id
for as long as the process likes (a bounded LRU per reader), as are values
derived from immutable objects alone (``derived``: the infos ``ancestry``
lists from a history page). Those derived values are shared by every reader
of the process: an object id is the hash of the object's content, so
whatever repository holds it, and however often it is opened, the value is
the same — a repository opened again lists the history it listed before
without decoding it again. Refs are never cached (they move). Chunks are not
cached — the backend (LMDB's memory map) already is one. A missing object is
reported as corruption: nothing the engine reaches should ever be absent.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from versionstore.backend.protocol import Backend
from versionstore.codec import (
    KIND_LEAF,
    decode_chunk,
    decode_history_page,
    decode_leaf_lookup,
    decode_node,
    decode_snapshot,
    frame_kind,
    leaf_entry,
)
from versionstore.errors import CorruptObjectError, SnapshotNotFoundError, VersionStoreError
from versionstore.ids import ObjectId, object_id_text
from versionstore.records import Branch, Entry, HistoryPage, Node, Snapshot
from versionstore.tree import LeafIndex

__all__ = ["ObjectReader"]

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")
#: The tree nodes a reader caches, in ``_node_weight`` units (about 200 bytes each): about
#: 100 MiB at most — 2,048 decoded leaves of 256 entries, or 4,096 leaf indexes. Counted in
#: nodes, a walk of every leaf (a first garbage collection, ``verify``) held 8,192 decoded
#: leaves, about 440 MiB, per repository open in the process.
_NODE_CACHE_WEIGHT = 1 << 19
#: ``remember_nodes`` keeps the leaves of commits that created at most this many nodes.
_REMEMBER_LEAVES = 1024


def _decode_chunk(chunk_id: ObjectId, data: bytes | memoryview) -> bytes:
    """``_decode(decode_chunk, ...)`` for a chunk, which may be a view of a memory map."""
    try:
        return decode_chunk("", data)
    except VersionStoreError:
        return decode_chunk(object_id_text(chunk_id), data)


def _decode(decode: Callable[[str, bytes], T], object_id: ObjectId, data: bytes) -> T:
    """Decode ``data``, naming the object only if it turns out to be bad.

    The name (base32 text of the id) is only ever used in error messages, and
    computing it costs more than checking and copying a small chunk, so the
    hot path decodes unnamed; a failure decodes again with the name, which
    raises the same error naming the object.
    """
    try:
        return decode("", data)
    except VersionStoreError:
        return decode(object_id_text(object_id), data)


class _LRU(Generic[K, V]):
    """A thread-safe least-recently-used map holding at most ``capacity`` of weight.

    Each value weighs ``weigh(value)`` (1 by default: ``capacity`` counts
    values); the oldest values go until the rest fit, the newest always stays.
    """

    def __init__(self, capacity: int, weigh: Callable[[V], int] | None = None) -> None:
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._capacity = capacity
        self._weigh = weigh
        self._weight = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: K, value: V) -> None:
        weight = 1 if self._weigh is None else self._weigh(value)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._weight -= old[1]
            self._items[key] = (value, weight)
            self._weight += weight
            while self._weight > self._capacity and len(self._items) > 1:
                self._weight -= self._items.popitem(last=False)[1][1]


def _node_weight(node: Node | LeafIndex) -> int:
    """A cached node's weight: about one per 200 bytes it holds in memory.

    A decoded leaf holds each entry's key, chunk reference and id (about 200
    bytes per entry), a leaf index each key and its share of the leaf's
    bytes (about half that), a branch each child's key and id.
    """
    if isinstance(node, Branch):
        return len(node.children) + 1
    if isinstance(node, LeafIndex):
        return len(node.keys) // 2 + 1
    return len(node.entries) + 1


#: Values derived from immutable objects alone (``ObjectReader.derived``), shared by every
#: reader of the process: keyed by object id, i.e. by content.
_DERIVED: _LRU[ObjectId, object] = _LRU(1024)


class ObjectReader:
    """Reads nodes, snapshots and chunks from a backend."""

    def __init__(self, backend: Backend, *, cache_nodes: int = _NODE_CACHE_WEIGHT) -> None:
        self.backend = backend
        # Leaves read only for lookups are held as their ``LeafIndex`` (``lookup_node``).
        self._nodes: _LRU[ObjectId, Node | LeafIndex] = _LRU(cache_nodes, _node_weight)
        self._snapshots: _LRU[ObjectId, Snapshot] = _LRU(4096)
        self._pages: _LRU[ObjectId, HistoryPage] = _LRU(1024)
        self._derived = _DERIVED

    def node(self, node_id: ObjectId) -> Node:
        """The tree node ``node_id``.

        Raises:
            CorruptObjectError: the node is missing or damaged.
        """
        node = self.node_if_stored(node_id)
        if node is None:
            raise CorruptObjectError(object_id_text(node_id), "tree node is missing")
        return node

    def node_if_stored(self, node_id: ObjectId) -> Node | None:
        """The tree node ``node_id``, or ``None`` if it is not stored."""
        node = self._nodes.get(node_id)
        if node is None or isinstance(node, LeafIndex):
            data = self.backend.get_objects([node_id])[0]
            if data is None:
                return None
            node = _decode(decode_node, node_id, data)
            self._nodes.put(node_id, node)
        return node

    def lookup_node(self, node_id: ObjectId) -> Node | LeafIndex:
        """The tree node ``node_id`` for a point lookup (``tree.lookup``).

        A node already decoded is served as such; a leaf read for the first
        time is decoded as a ``LeafIndex`` only — its keys, verified with the
        whole frame, and each entry built when a lookup finds it — since
        building all of a leaf's hundreds of entries is most of what opening
        an array of an uncached snapshot cost (``docs/benchmarks.md``).

        Raises:
            CorruptObjectError: the node is missing or damaged.
        """
        node = self._nodes.get(node_id)
        if node is not None:
            return node
        data = self.backend.get_objects([node_id])[0]
        if data is None:
            raise CorruptObjectError(object_id_text(node_id), "tree node is missing")
        if frame_kind(data) != KIND_LEAF:
            node = _decode(decode_node, node_id, data)
            self._nodes.put(node_id, node)
            return node
        keys, raw = _decode(decode_leaf_lookup, node_id, data)

        def values() -> list[Any]:
            try:
                return raw()
            except VersionStoreError:  # unnamed on the hot path: decode again, named
                return decode_leaf_lookup(object_id_text(node_id), data)[1]()

        def build(fields: object) -> Entry:
            return _decode(leaf_entry, node_id, fields)  # type: ignore[arg-type]

        index = LeafIndex(keys, values, build)
        self._nodes.put(node_id, index)
        return index

    def remember_nodes(self, nodes: Mapping[ObjectId, Node]) -> None:
        """Cache tree nodes this process has just written.

        A commit creates the nodes the next commit on the branch starts from;
        caching the objects it already holds saves decoding them back (a leaf
        is hundreds of entries). A bulk commit creates more leaves than are
        worth holding in memory: of those, only the branches are kept.
        """
        keep_leaves = len(nodes) <= _REMEMBER_LEAVES
        for node_id, node in nodes.items():
            if keep_leaves or isinstance(node, Branch):
                self._nodes.put(node_id, node)

    def remember_snapshot(self, snapshot_id: ObjectId, frame: bytes,
                          pages: Sequence[tuple[ObjectId, bytes, HistoryPage]] = (), *,
                          written: Snapshot | None = None) -> None:
        """Cache a snapshot this process has just written, and its history pages.

        The next commit on the branch reads both to build its own history
        page: on object storage each would be a round trip. The cache must
        hold exactly what a read returns (metadata normalised to plain values,
        not the caller's objects), so the snapshot is decoded from ``frame`` —
        except that ``written``, the record ``frame`` encodes, is kept as it is
        when it has no metadata. Pages (id, frame, record) are kept as records:
        their fields are bytes, strings and tuples of them, built from records
        read or decoded. Both decode back equal (``tests/test_write_path.py``);
        decoding them cost a one-chunk commit about 0.05 ms each
        (``docs/benchmarks.md``, "Issue 13, sixth round" and "seventh round").
        """
        if written is not None and not written.metadata:
            self._snapshots.put(snapshot_id, written)
        else:
            self._snapshots.put(snapshot_id, _decode(decode_snapshot, snapshot_id, frame))
        for page_id, _, page in pages:
            self._pages.put(page_id, page)

    def snapshot(self, snapshot_id: ObjectId) -> Snapshot:
        """The snapshot ``snapshot_id``.

        Raises:
            SnapshotNotFoundError: if no such snapshot is stored.
        """
        snapshot = self.snapshot_if_stored(snapshot_id)
        if snapshot is None:
            raise SnapshotNotFoundError(object_id_text(snapshot_id))
        return snapshot

    def snapshot_if_stored(self, snapshot_id: ObjectId) -> Snapshot | None:
        """The snapshot ``snapshot_id``, or ``None`` if it is not stored.

        The cache only ever holds snapshots that were stored when read, and is
        never a proof that one still is: anything that moves a ref checks
        existence in the backend, atomically with the move.
        """
        snapshot = self._snapshots.get(snapshot_id)
        if snapshot is None:
            data = self.backend.get_objects([snapshot_id])[0]
            if data is None:
                return None
            snapshot = _decode(decode_snapshot, snapshot_id, data)
            self._snapshots.put(snapshot_id, snapshot)
        return snapshot

    def snapshot_from(self, snapshot_id: ObjectId, data: bytes | None) -> Snapshot:
        """The snapshot ``snapshot_id`` from ``data``, its stored bytes when already read.

        ``data`` ``None`` means it was not read (it was cached): the cache, or
        a read, serves it. Used to read a ref and its snapshot in one backend call.

        Raises:
            SnapshotNotFoundError: if it is neither cached, given, nor stored.
        """
        snapshot = self._snapshots.get(snapshot_id)
        if snapshot is not None:
            return snapshot
        if data is None:
            return self.snapshot(snapshot_id)
        snapshot = _decode(decode_snapshot, snapshot_id, data)
        self._snapshots.put(snapshot_id, snapshot)
        return snapshot

    def is_cached(self, snapshot_id: ObjectId) -> bool:
        """Whether the snapshot ``snapshot_id`` is in the cache (no backend read)."""
        return self._snapshots.get(snapshot_id) is not None

    def derived(self, object_id: ObjectId, make: Callable[[], T]) -> T:
        """``make()``, a value computed from the immutable object ``object_id`` alone, cached.

        One value per object id (callers derive different kinds of value from
        different kinds of object), bounded like the other caches, and shared
        by every reader of the process (the id names the content); ``make``
        may run twice when two threads ask at once. The value must hold no
        backend, reader or repository: it outlives them.
        """
        value = self._derived.get(object_id)
        if value is None:
            value = make()
            self._derived.put(object_id, value)
        return value  # type: ignore[return-value]  # stored by the same caller's make

    def derived_if_cached(self, object_id: ObjectId) -> object | None:
        """The value ``derived`` (or ``remember_derived``) keeps for ``object_id``, if any."""
        return self._derived.get(object_id)

    def remember_derived(self, object_id: ObjectId, value: object) -> None:
        """Keep ``value``, computed from the immutable object ``object_id`` alone."""
        self._derived.put(object_id, value)

    def history_page_if_stored(self, page_id: ObjectId) -> HistoryPage | None:
        """The history page ``page_id``, or ``None`` if it is not stored."""
        page = self._pages.get(page_id)
        if page is None:
            data = self.backend.get_objects([page_id])[0]
            if data is None:
                return None
            page = _decode(decode_history_page, page_id, data)
            self._pages.put(page_id, page)
        return page

    def history_page(self, page_id: ObjectId) -> HistoryPage:
        """The history page ``page_id``.

        Raises:
            CorruptObjectError: the page is missing or damaged.
        """
        page = self.history_page_if_stored(page_id)
        if page is None:
            raise CorruptObjectError(object_id_text(page_id), "history page is missing")
        return page

    def chunks(self, chunk_ids: Sequence[ObjectId],
               locations: Sequence[str | None] | None = None) -> list[bytes]:
        """The values of chunk objects, in order (one backend call, one copy of each value).

        ``locations`` are the chunks' location hints (``ChunkRef.location``),
        where object storage keeps a located chunk; ``None``: none has one.

        Raises:
            CorruptObjectError: a chunk is missing or damaged.
        """
        if locations is not None and any(location is not None for location in locations):
            values = self.backend.get_located(list(zip(chunk_ids, locations, strict=True)),
                                              _decode_chunk)
        else:
            values = self.backend.get_objects_decoded(chunk_ids, _decode_chunk)
        for chunk_id, value in zip(chunk_ids, values, strict=True):
            if value is None:
                raise CorruptObjectError(object_id_text(chunk_id), "chunk is missing")
        return values  # type: ignore[return-value]  # no None left

    def small_chunk(self, chunk_id: ObjectId) -> bytes:
        """The value of one small chunk object (a Zarr metadata document), read as a node is.

        Alone in its backend call, like a tree node or a snapshot: the LMDB
        backend reads such an object without readahead (one page per fault,
        not the device's readahead window: ``zarrstore.lmdb_readahead``).
        Data chunks go through ``chunks``, read with readahead.

        Raises:
            CorruptObjectError: the chunk is missing or damaged.
        """
        return self.decode_chunks([chunk_id], self.backend.get_objects([chunk_id]))[0]

    def decode_chunks(self, chunk_ids: Sequence[ObjectId],
                      stored: Sequence[bytes | None]) -> list[bytes]:
        """The values of chunk objects already read (``stored[i]`` for ``chunk_ids[i]``).

        Raises:
            CorruptObjectError: a chunk is missing or damaged.
        """
        values = []
        for chunk_id, data in zip(chunk_ids, stored, strict=True):
            if data is None:
                raise CorruptObjectError(object_id_text(chunk_id), "chunk is missing")
            values.append(_decode(decode_chunk, chunk_id, data))
        return values

"""Staged manifests: a huge session's absorbed located writes, kept out of the refs.

On object storage every process holds every ref in memory (the replayed
log, ``versionstore.backend.refstate``), so an absorb that turned 10^6
located writes into 10^6 staged refs cost every process — and the commit
reading them — memory in proportion to the session. An absorb of at least
``SPILL_AT`` writes instead writes them as a *staged manifest*: immutable
parts of up to ``PART_ENTRIES`` writes each, sorted by key, stored as
content-addressed objects (frame kind 15), which the session record names
(``SessionRecord.manifests``, record version 4). Reading the session then
merges, in key order:

* the staged refs (few: metadata documents, small values, deletions, the
  first chunks after a commit, writes that raced an absorb);
* each manifest, one part at a time (``ManifestReader``);

and a commit streams that merge into the tree as it streams LMDB's staged
refs, never holding all N (``versionstore.session``). The rules that order
a key's entries from different sources (``merge_staged``), and why they
agree with the order the writes returned in, are in ``docs/format.md``
("Staged manifests").
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from versionstore.codec import ManifestItem, decode_manifest_part, encode_manifest_part
from versionstore.errors import CorruptObjectError
from versionstore.ids import ID_LENGTH, ObjectId, object_id_text
from versionstore.located import located_name, parse_located
from versionstore.records import Entry, LocatedChunkRef, StagedManifest, Tombstone

if TYPE_CHECKING:
    from versionstore.backend.protocol import Backend

__all__ = [
    "PART_ENTRIES",
    "SPILL_AT",
    "ManifestReader",
    "manifest_beats_ref",
    "merge_staged",
    "newest_per_key",
    "pack_write",
    "write_manifest",
]

#: Located writes per manifest part (about 0.5 MiB of record, compressed less).
PART_ENTRIES = 10_000
#: An absorb of at least this many located writes writes a manifest instead of refs.
SPILL_AT = 4096
#: Decoded parts a ``ManifestReader`` keeps for lookups of single keys.
_CACHED_PARTS = 4
_TAIL = struct.Struct(">IQQ")  # epoch, stamp, size; then the chunk id


def pack_write(key: str, epoch: int, stamp: int, chunk_id: ObjectId, size: int) -> bytes:
    """A located write as one byte string that sorts by key, then epoch, then stamp.

    Keys never hold NUL (``zarrstore.keys``), so the NUL after the key ends it
    before any longer key with the same start; UTF-8 sorts as code points do,
    which is how the tree orders keys.
    """
    return (key.encode("utf-8", "surrogatepass") + b"\0" + _TAIL.pack(epoch, stamp, size)
            + chunk_id)


def _unpack_write(record: bytes) -> ManifestItem:
    cut = len(record) - ID_LENGTH - _TAIL.size
    epoch, stamp, size = _TAIL.unpack_from(record, cut)
    return (record[:cut - 1].decode("utf-8", "surrogatepass"), epoch, stamp,
            ObjectId(record[cut + _TAIL.size:]), size)


def newest_per_key(records: Iterable[bytes]) -> Iterator[ManifestItem]:
    """From ``pack_write`` records in sorted order, the newest write of each key."""
    previous: ManifestItem | None = None
    for record in records:
        item = _unpack_write(record)
        if previous is not None and previous[0] != item[0]:
            yield previous
        previous = item  # sorted: a later record of the same key is newer
    if previous is not None:
        yield previous


def write_manifest(backend: Backend, session_id: str, items: Iterable[ManifestItem],
                   part_entries: int | None = None) -> StagedManifest | None:
    """Store ``items`` (sorted by key, one per key) as manifest parts; ``None`` if none.

    Each part is stored as it fills (one object write), so only one part is
    held at a time.
    """
    size = PART_ENTRIES if part_entries is None else part_entries
    parts: list[ObjectId] = []
    first_keys: list[str] = []
    for batch in itertools.batched(items, size):
        part_id, frame = encode_manifest_part(session_id, batch)
        backend.put_objects([(part_id, frame)])
        parts.append(part_id)
        first_keys.append(batch[0][0])
    if not parts:
        return None
    return StagedManifest(parts=tuple(parts), first_keys=tuple(first_keys))


def manifest_beats_ref(key: str, epoch: int, stamp: int, ref: Entry | Tombstone) -> bool:
    """Whether a manifest write of ``key`` (``epoch``, ``stamp``) beats staged ref ``ref``.

    The absorb that wrote the manifest deleted every ref its writes beat, so
    a ref present now is newer — unless it is itself a located write of this
    key (one that raced an absorb, or a small absorb's), which the two
    writes' epochs and stamps order.
    """
    if isinstance(ref, LocatedChunkRef):
        parsed = parse_located(ref.hint)
        if parsed is not None and parsed[2] == key:
            return (epoch, stamp) > (parsed[1], parsed[3])
    return False


#: ``(key, entry, epoch, stamp)`` of one located write of a manifest.
ManifestEntry = tuple[str, LocatedChunkRef, int, int]


def merge_staged(refs: Iterator[tuple[str, Entry | Tombstone]],
                 manifests: Sequence[Iterator[ManifestEntry]]
                 ) -> Iterator[tuple[str, Entry | Tombstone, bool]]:
    """The staged refs and the manifests merged by key: ``(key, entry, from a manifest)``.

    Each input is sorted by key with one entry per key. Of a key's manifest
    writes the newest (epoch, stamp) counts; it beats the key's staged ref as
    ``manifest_beats_ref`` says.
    """
    if not manifests:
        for key, entry in refs:
            yield key, entry, False
        return
    streams: list[Iterator[tuple[str, int, Entry | Tombstone, int, int]]] = [
        ((key, 0, entry, 0, 0) for key, entry in refs)]
    streams.extend(((key, 1, entry, epoch, stamp) for key, entry, epoch, stamp in m)
                   for m in manifests)
    merged = heapq.merge(*streams, key=_first)
    for key, group in itertools.groupby(merged, key=_first):
        ref: Entry | Tombstone | None = None
        best: tuple[int, int, Entry | Tombstone] | None = None
        for _, source, entry, epoch, stamp in group:
            if source == 0:
                ref = entry
            elif best is None or (epoch, stamp) > best[:2]:
                best = (epoch, stamp, entry)
        if best is None:
            assert ref is not None
            yield key, ref, False
        elif ref is None or manifest_beats_ref(key, best[0], best[1], ref):
            yield key, best[2], True
        else:
            yield key, ref, False


def _first(item: tuple[str, int, Entry | Tombstone, int, int]) -> str:
    return item[0]


class ManifestReader:
    """Reads one session's manifest parts: streamed in key order, or one key at a time.

    Args:
        backend: where the parts are stored (by id).
        session_id: the session (rebuilds each write's location hint).
    """

    def __init__(self, backend: Backend, session_id: str) -> None:
        self._backend = backend
        self._session_id = session_id
        self._cached: dict[ObjectId, dict[str, ManifestEntry]] = {}
        # Threads sharing a session look keys up through its one reader (zarr's thread
        # pool reading an array); the part is read and decoded outside the lock.
        self._lock = threading.Lock()

    def _items(self, part_id: ObjectId) -> list[ManifestItem]:
        name = object_id_text(part_id)
        data = self._backend.get_objects([part_id])[0]
        if data is None:
            raise CorruptObjectError(name, "a staged manifest part is missing")
        _, items = decode_manifest_part(name, data)
        return items

    def _entry(self, item: ManifestItem) -> ManifestEntry:
        key, epoch, stamp, chunk_id, size = item
        hint = located_name(self._session_id, epoch, key, stamp, chunk_id, size)
        assert hint is not None  # it was listed under this very name
        return key, LocatedChunkRef(chunk_id=chunk_id, size=size, hint=hint), epoch, stamp

    def entries(self, manifest: StagedManifest, prefix: str = "") -> Iterator[ManifestEntry]:
        """The writes of ``manifest`` under ``prefix``, in key order (one part held at a time)."""
        start = max(0, bisect.bisect_right(manifest.first_keys, prefix) - 1)
        for part_id in manifest.parts[start:]:
            for item in self._items(part_id):
                key = item[0]
                if key < prefix:
                    continue
                if not key.startswith(prefix):
                    return
                yield self._entry(item)

    def lookup(self, manifests: Sequence[StagedManifest], key: str) -> ManifestEntry | None:
        """The newest write of ``key`` among ``manifests`` (one part read per manifest, cached)."""
        best: ManifestEntry | None = None
        for manifest in manifests:
            index = bisect.bisect_right(manifest.first_keys, key) - 1
            if index < 0:
                continue
            found = self._part(manifest.parts[index]).get(key)
            if found is not None and (best is None or found[2:] > best[2:]):
                best = found
        return best

    def _part(self, part_id: ObjectId) -> dict[str, ManifestEntry]:
        """Part ``part_id`` by key, decoded once while among the last ``_CACHED_PARTS`` used.

        The cache is changed under a lock: evicting its oldest part
        (``next(iter(...))`` then ``pop``) while another thread inserted one
        raised "dictionary changed size during iteration" (or ``KeyError``,
        when both evicted the same part) from a plain read of the session.
        """
        with self._lock:
            cached = self._cached.get(part_id)
        if cached is not None:
            return cached
        cached = {item[0]: self._entry(item) for item in self._items(part_id)}
        with self._lock:
            if part_id not in self._cached and len(self._cached) >= _CACHED_PARTS:
                del self._cached[next(iter(self._cached))]
            self._cached[part_id] = cached
        return cached

    def hints(self, manifests: Sequence[StagedManifest], visit: Callable[[str], None]) -> None:
        """Call ``visit`` with the location hint of every write of ``manifests`` (gc)."""
        for manifest in manifests:
            for _, entry, _, _ in self.entries(manifest):
                visit(entry.hint)

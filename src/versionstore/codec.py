"""Bytes on disk: the framing, checksums, compression and msgpack of every record.

Every stored object and ref value is a *frame*::

    b"VS" | frame version (1 byte) | kind (1 byte) | compression (1 byte)
          | xxh3-64 of the stored payload (8 bytes, little endian) | payload

The checksum is verified on every read, so a flipped or truncated byte gives
``CorruptObjectError`` naming the object instead of a wrong answer; xxh3 costs
almost nothing next to the copy. (``verify`` also re-hashes content-addressed
objects with BLAKE3 against their ids.) Records are msgpack arrays whose first
element is the record's format version; payloads over 4 KiB are
zstd-compressed when that helps, and decompression is capped so a corrupt or
hostile record cannot exhaust memory. Chunk payloads are stored raw: Zarr
chunks are usually compressed by their codecs already.

The only module that imports msgpack and zstandard.
"""

from __future__ import annotations

import functools
import itertools
import operator
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import attrs
import msgpack
import xxhash
import zstandard

from versionstore.errors import CorruptObjectError, ObjectTooLargeError, UnsupportedFormatError
from versionstore.ids import ID_LENGTH, ObjectId, hash_object, object_id_text
from versionstore.records import (
    TOMBSTONE,
    Branch,
    ChunkRef,
    Entry,
    GCLedger,
    Graft,
    HistoryPage,
    Leaf,
    LocatedChunkRef,
    Node,
    Operation,
    RefTarget,
    RepositoryRecord,
    SessionRecord,
    SizeRow,
    Sizes,
    Snapshot,
    StagedManifest,
    Tombstone,
    VirtualRef,
    is_location,
)

__all__ = [
    "KIND_BRANCH",
    "KIND_CHUNK",
    "KIND_HISTORY",
    "KIND_LEAF",
    "KIND_MANIFEST_PART",
    "KIND_SNAPSHOT",
    "MAX_DECOMPRESSED",
    "ManifestItem",
    "PreparedChunk",
    "content_id",
    "chunk_frame_size",
    "decode_chunk",
    "decode_gc_ledger",
    "decode_graft",
    "decode_history_page",
    "decode_leaf_lookup",
    "decode_node",
    "decode_operation",
    "decode_ref_checkpoint",
    "decode_ref_log_record",
    "decode_ref_target",
    "decode_repository",
    "decode_manifest_part",
    "decode_session",
    "decode_snapshot",
    "decode_staged",
    "staged_reencodes",
    "encode_chunk",
    "chunk_id_of",
    "encode_gc_ledger",
    "encode_graft",
    "encode_history_page",
    "encode_node",
    "encode_operation",
    "encode_ref_checkpoint",
    "encode_ref_log_record",
    "encode_ref_target",
    "encode_repository",
    "encode_manifest_part",
    "encode_session",
    "encode_snapshot",
    "encode_staged",
    "encode_staged_chunk",
    "frame_kind",
    "history_entries",
    "history_row",
    "snapshot_links",
    "leaf_entry",
    "checked_metadata",
    "pack_metadata",
    "prepare_chunk",
]

FRAME_VERSION: Final = 1
KIND_CHUNK: Final = 1
KIND_LEAF: Final = 2
KIND_BRANCH: Final = 3
KIND_SNAPSHOT: Final = 4
KIND_REF: Final = 5
KIND_SESSION: Final = 6
KIND_STAGED: Final = 7
KIND_REPOSITORY: Final = 8
KIND_GRAFT: Final = 9
KIND_OPERATION: Final = 10
KIND_HISTORY: Final = 11
KIND_REF_LOG: Final = 12
KIND_REF_CHECKPOINT: Final = 13
KIND_GC_LEDGER: Final = 14
KIND_MANIFEST_PART: Final = 15
_KIND_NAMES = {
    1: "chunk", 2: "leaf", 3: "branch", 4: "snapshot", 5: "ref", 6: "session", 7: "staged",
    8: "repository", 9: "graft", 10: "operation", 11: "history page", 12: "ref log record",
    13: "ref checkpoint", 14: "gc ledger", 15: "staged manifest part",
}

_MAGIC: Final = b"VS"
_HEADER: Final = 13
_RAW: Final = 0
_ZSTD: Final = 1
_COMPRESS_ABOVE: Final = 4096
#: The largest record any decoder will inflate (a tree node is far smaller).
MAX_DECOMPRESSED: Final = 64 << 20
#: The cap for ref log records and checkpoints of object storage: they hold whole ref
#: sets (a commit clearing a million staged keys names each of them).
MAX_REF_LOG_DECOMPRESSED: Final = 4 << 30
_TUPLE_EXT: Final = 1
#: The first five bytes of the usual chunk and staged-record frames (raw payloads).
_CHUNK_HEADER: Final = _MAGIC + bytes((FRAME_VERSION, KIND_CHUNK, _RAW))
_STAGED_HEADER: Final = _MAGIC + bytes((FRAME_VERSION, KIND_STAGED, _RAW))
_xxh3_digest = xxhash.xxh3_64_digest

#: zstd for tree leaves: a leaf is a few KiB (at most ``TARGET_LEAF_BYTES``) whose
#: repeats (key prefixes) are near each other. Level 3's tables are sized for larger
#: inputs: resetting them cost a one-leaf commit 50 µs of its ~1 ms, these 30 µs, for
#: the same size within 2 % (measured on leaves of inline values and of references).
_LEAF_COMPRESSION: Final = zstandard.ZstdCompressionParameters(
    compression_level=1, window_log=12, hash_log=10, chain_log=10, write_content_size=True)


# -- frames ---------------------------------------------------------------------------

_packers = threading.local()


def _packb(body: Any) -> bytes:
    """``msgpack.packb(body, use_bin_type=True)``, with this thread's reused ``Packer``.

    ``packb`` builds a new ``Packer`` per call, and each allocates a 256 KiB
    buffer: for the small records written on every ``set`` that was most of
    their cost. A ``Packer`` resets itself after each ``pack`` (also when it
    raises), so one per thread is enough.
    """
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    packed: bytes = packer.pack(body)
    return packed


def _frame(kind: int, payload: bytes | memoryview, compress: bool) -> bytes:
    compression = _RAW
    if compress and len(payload) > _COMPRESS_ABOVE:
        packed = _compressor(kind == KIND_LEAF).compress(payload)
        if len(packed) < len(payload):
            payload, compression = packed, _ZSTD
    header = _MAGIC + bytes((FRAME_VERSION, kind, compression))
    return b"".join((header, xxhash.xxh3_64_digest(payload)[::-1], payload))  # one copy


def content_id(name: str, data: bytes) -> ObjectId:
    """Recompute the content id of a stored object (checksum verified, content re-hashed)."""
    kind = frame_kind(data)
    if kind not in (KIND_CHUNK, KIND_LEAF, KIND_BRANCH, KIND_SNAPSHOT, KIND_HISTORY,
                    KIND_MANIFEST_PART):
        raise CorruptObjectError(name, "not a content-addressed object")
    return hash_object(kind, bytes(_unframe(name, data, kind)))


def frame_kind(data: bytes) -> int | None:
    """The kind byte of a frame, or ``None`` if ``data`` is not a frame."""
    return data[3] if len(data) >= _HEADER and data[:2] == _MAGIC else None


def _unframe(name: str, data: bytes | memoryview, kind: int,
             cap: int = MAX_DECOMPRESSED) -> bytes | memoryview:
    if len(data) < _HEADER or data[:2] != _MAGIC:
        raise CorruptObjectError(name, f"not a versionstore frame ({len(data)} bytes)")
    if data[2] > FRAME_VERSION:
        raise UnsupportedFormatError("frame", data[2], FRAME_VERSION)
    if data[3] != kind:
        got = _KIND_NAMES.get(data[3], str(data[3]))
        raise CorruptObjectError(name, f"expected a {_KIND_NAMES[kind]}, found a {got}")
    payload = memoryview(data)[_HEADER:]
    if xxhash.xxh3_64_digest(payload)[::-1] != bytes(data[5:_HEADER]):
        raise CorruptObjectError(name, "checksum mismatch (truncated or altered bytes)")
    if data[4] == _RAW:
        return payload
    if data[4] != _ZSTD:
        raise CorruptObjectError(name, f"unknown compression {data[4]}")
    try:
        params = zstandard.get_frame_parameters(payload)
    except zstandard.ZstdError as exc:
        raise CorruptObjectError(name, f"bad zstd frame: {exc}") from exc
    if params.content_size > cap:
        raise ObjectTooLargeError(
            name, f"claims {params.content_size} bytes, above the {cap} cap"
        )
    try:
        return _decompressor().decompress(payload, max_output_size=cap)
    except zstandard.ZstdError as exc:
        raise CorruptObjectError(name, f"cannot decompress: {exc}") from exc


_threads = threading.local()


def _compressor(leaf: bool) -> zstandard.ZstdCompressor:
    """This thread's compressor for leaves (``_LEAF_COMPRESSION``) or for other records.

    python-zstandard: "assume that no two methods of ZstdCompressor instances
    can be called from multiple Python threads simultaneously" (its
    ``compress`` releases the GIL). Commits in two threads shared one, and
    crashed the process or raised "Src size is incorrect".
    """
    name = "leaf_compressor" if leaf else "compressor"
    compressor: zstandard.ZstdCompressor | None = getattr(_threads, name, None)
    if compressor is None:
        compressor = (zstandard.ZstdCompressor(compression_params=_LEAF_COMPRESSION) if leaf
                      else zstandard.ZstdCompressor(level=3, write_content_size=True))
        setattr(_threads, name, compressor)
    return compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    """This thread's decompressor: making one costs more than a small frame's decompression.

    (An instance must not be used by two threads at once; one per thread never is.)
    """
    decompressor: zstandard.ZstdDecompressor | None = getattr(_threads, "zstd", None)
    if decompressor is None:
        decompressor = _threads.zstd = zstandard.ZstdDecompressor()
    return decompressor


def _unpack(name: str, payload: bytes | memoryview) -> Any:
    try:
        return msgpack.unpackb(
            payload, raw=False, strict_map_key=False, ext_hook=_ext_hook, timestamp=3
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CorruptObjectError(name, f"cannot decode record: {exc}") from exc


def _guarded(label: str, decode: Callable[[], T], name: str) -> T:
    """Run ``decode``; any malformation it trips over becomes ``CorruptObjectError``.

    A record can pass its checksum and still be wrong (written by a buggy or
    hostile client): wrong field types, short lists, bad ids. Whatever
    Python error that raises while decoding, the caller sees one documented
    error naming the object.
    """
    try:
        return decode()
    except (CorruptObjectError, UnsupportedFormatError):
        raise
    except (TypeError, ValueError, IndexError, KeyError, AttributeError, OverflowError) as exc:
        raise CorruptObjectError(name, f"malformed {label}: {exc}") from exc


def _versioned(name: str, kind: str, fields: Any, supported: int, width: int) -> list[Any]:
    if not isinstance(fields, list) or not fields or not isinstance(fields[0], int):
        raise CorruptObjectError(name, f"malformed {kind} record")
    if fields[0] > supported:
        raise UnsupportedFormatError(kind, fields[0], supported)
    if len(fields) < width:
        raise CorruptObjectError(name, f"{kind} record has {len(fields)} fields, needs {width}")
    return fields


# -- metadata values ----------------------------------------------------------------


def _default(value: Any) -> Any:
    if isinstance(value, tuple):
        return msgpack.ExtType(_TUPLE_EXT, _pack(list(value)))
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise TypeError(
                f"cannot store naive datetime {value!r} in snapshot metadata: datetimes must be "
                "timezone-aware (e.g. datetime.now(UTC)) so that they mean one instant"
            )
        return msgpack.Timestamp.from_datetime(value)
    scalar = _plain_scalar(value)
    if scalar is not None:
        return scalar
    hint = ""
    if getattr(value, "ndim", 0):
        hint = " (store an array's values with .tolist(), or keep arrays in the Zarr store)"
    raise TypeError(f"cannot store {type(value).__name__} {value!r} in snapshot metadata{hint}")


def _plain_scalar(value: Any) -> bool | int | float | str | None:
    """The Python value of a numpy scalar or 0-d array (or another subclass of one).

    ``np.float64(1.5)`` is stored as the float ``1.5``: it reads back as the
    plain value it is. Duck-typed on ``.item()`` so that the codec needs no numpy.
    """
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():
        plain = item()
        return plain if type(plain) in (bool, int, float, str) else None
    for kind in (bool, int, float, str):  # subclasses such as IntEnum
        if isinstance(value, kind):
            return kind(value)
    return None


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _TUPLE_EXT:
        return tuple(_unpack("metadata", data))
    return msgpack.ExtType(code, data)


def _pack(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True, strict_types=True, default=_default)
    return packed


def pack_metadata(metadata: dict[str, Any]) -> bytes:
    """Check that ``metadata`` can be stored exactly; return its encoding.

    Raises:
        TypeError: naming the first value that cannot be stored.
        ValueError: a str in it is not valid Unicode (a lone surrogate).
    """
    if not isinstance(metadata, dict):
        raise TypeError("snapshot metadata must be a dict")
    try:
        return _pack(metadata)
    except OverflowError as exc:  # msgpack holds integers of 64 bits at most
        raise TypeError("cannot store an integer outside [-2**63, 2**64) in snapshot "
                        "metadata (store it as a str)") from exc
    except UnicodeEncodeError as exc:
        raise _not_unicode("snapshot metadata", exc) from None


def checked_metadata(metadata: object) -> dict[str, Any]:
    """A copy of snapshot ``metadata`` (``None``: empty), once it is known to store exactly.

    Raises:
        TypeError: not a dict, a key that is not a str, or a value that
            cannot be stored (``pack_metadata``).
        ValueError: a str in it is not valid Unicode.
    """
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict (str keys), not {type(metadata).__name__}")
    if not all(isinstance(key, str) for key in metadata):
        raise TypeError("metadata keys must be str")
    copy = dict(metadata)
    pack_metadata(copy)
    return copy


def _not_unicode(what: str, exc: UnicodeEncodeError) -> ValueError:
    """The error for text that UTF-8 cannot encode (a lone surrogate such as U+D800)."""
    shown = exc.object[max(0, exc.start - 10):exc.end + 10]
    return ValueError(f"{what} holds text that is not valid Unicode: {shown!r} has a lone "
                      "surrogate (from decoding bytes with errors='surrogateescape'?)")


# -- chunks -------------------------------------------------------------------------


def encode_chunk(value: bytes | memoryview) -> tuple[ObjectId, bytes]:
    """The id and stored frame of a chunk value."""
    return hash_object(KIND_CHUNK, value), _frame(KIND_CHUNK, value, compress=False)


@attrs.frozen
class PreparedChunk:
    """A chunk value with its id and stored frame, encoded before it is staged.

    ``prepare_chunk`` makes one in a worker thread, so that an async ``set``
    of a large value made while the backend is busy hashes (BLAKE3) and
    frames it off the event loop (``SessionStore._store``);
    ``Session.set_values`` then stages it as ``value`` without encoding it
    again. ``len`` is the value's, in bytes, as a batch counts it.
    """

    value: bytes | memoryview
    chunk_id: ObjectId
    frame: bytes

    def __len__(self) -> int:
        return len(self.value)


def prepare_chunk(value: bytes | memoryview) -> PreparedChunk:
    """``value`` with ``encode_chunk(value)``: what ``PreparedChunk`` holds.

    ``value`` may be a flat byte view (``SessionStore.set``: of zarr's buffer),
    kept only as long as the ``PreparedChunk``; the frame is a copy.
    """
    chunk_id, frame = encode_chunk(value)
    return PreparedChunk(value=value, chunk_id=chunk_id, frame=frame)


def chunk_id_of(value: bytes) -> ObjectId:
    """The id ``encode_chunk(value)`` gives, without building the frame."""
    return hash_object(KIND_CHUNK, value)


def decode_chunk(name: str, data: bytes | memoryview) -> bytes:
    """The value stored in a chunk frame (a copy: ``data`` may be a view of a memory map)."""
    if data[:5] == _CHUNK_HEADER and len(data) >= _HEADER:
        # The usual frame (this version, a chunk, stored raw): checked as ``_unframe``
        # checks it, without its dispatch on versions, kinds and compression.
        payload = memoryview(data)[_HEADER:]
        if _xxh3_digest(payload)[::-1] == data[5:_HEADER]:
            return bytes(payload)
    return bytes(_unframe(name, data, KIND_CHUNK))


# -- tree nodes -----------------------------------------------------------------------


def _entry_fields(entry: Entry) -> Any:
    """An entry as msgpack: bytes inline, ``[id, size]``, or ``[url, offset, length, checksum]``.

    A virtual reference's checksum is ``None``, an ETag (str) or a
    last-modified time (msgpack timestamp). Records holding one are written
    at format 2 (leaves) or 3 (staged entries), so a reader from before
    virtual references refuses them as a newer format instead of misreading.
    """
    if isinstance(entry, bytes):
        return entry
    if isinstance(entry, ChunkRef):
        location = entry.location
        if location is not None:
            return [entry.chunk_id, entry.size, location]
        return [entry.chunk_id, entry.size]
    checksum = entry.checksum
    if isinstance(checksum, datetime):
        checksum = msgpack.Timestamp.from_datetime(checksum)
    return [entry.location, entry.offset, entry.length, checksum]


def _object_id(name: str, value: Any) -> ObjectId:
    if not isinstance(value, bytes) or len(value) != ID_LENGTH:
        raise CorruptObjectError(name, f"malformed object id {value!r}")
    return ObjectId(value)


def _entry(name: str, fields: Any) -> Entry:
    if isinstance(fields, bytes):
        return fields
    if isinstance(fields, list) and len(fields) == 4 and isinstance(fields[0], str):
        location, offset, length, checksum = fields
        if not (isinstance(offset, int) and isinstance(length, int)) or offset < 0 or length < 0:
            raise CorruptObjectError(name, "malformed virtual reference range")
        if checksum is not None and not isinstance(checksum, str | datetime):
            raise CorruptObjectError(name, "malformed virtual reference checksum")
        if isinstance(checksum, datetime):
            checksum = checksum.astimezone(UTC)
        return VirtualRef(location=location, offset=offset, length=length, checksum=checksum)
    if isinstance(fields, list) and len(fields) == 2 and isinstance(fields[1], int):
        if fields[1] < 0:
            raise CorruptObjectError(name, "negative chunk size")
        return ChunkRef(chunk_id=_object_id(name, fields[0]), size=fields[1])
    if (isinstance(fields, list) and len(fields) == 3 and isinstance(fields[1], int)
            and isinstance(fields[2], str)):
        if fields[1] < 0:
            raise CorruptObjectError(name, "negative chunk size")
        if not is_location(fields[2]):
            raise CorruptObjectError(name, f"malformed chunk location {fields[2]!r}")
        return LocatedChunkRef(chunk_id=_object_id(name, fields[0]), size=fields[1],
                               hint=fields[2])
    raise CorruptObjectError(name, "malformed entry")


def _children(name: str, raw: Any) -> tuple[ObjectId, ...]:
    children = tuple(raw)
    if children and (set(map(type, children)) != {bytes}
                     or set(map(len, children)) != {ID_LENGTH}):
        raise CorruptObjectError(name, "malformed child id in branch")
    return children


_new_ref = object.__new__
_set_chunk_id = ChunkRef.chunk_id.__set__  # type: ignore[attr-defined]
_set_size = ChunkRef.size.__set__  # type: ignore[attr-defined]


def _leaf_entries(name: str, raw: Any) -> tuple[Entry, ...]:
    """A leaf's entries; chunk references built without ``attrs``' keyword ``__init__``.

    Leaves hold hundreds of entries and are decoded on every tree read, and
    the generated ``__init__`` costs more than the rest of the decoding; the
    fields are checked here instead, exactly as ``_entry`` checks them.
    """
    if set(map(type, raw)) == {bytes}:  # inline values only: nothing to build or check
        return tuple(raw)
    entries: list[Entry] = []
    append = entries.append
    for fields in raw:
        if type(fields) is bytes:
            append(fields)
            continue
        if (type(fields) is not list or len(fields) != 2 or type(fields[0]) is not bytes
                or len(fields[0]) != ID_LENGTH or type(fields[1]) is not int):
            append(_entry(name, fields))  # raises, naming what is wrong (or a subclass)
            continue
        if fields[1] < 0:
            raise CorruptObjectError(name, "negative chunk size")
        ref = _new_ref(ChunkRef)
        _set_chunk_id(ref, fields[0])
        _set_size(ref, fields[1])
        append(ref)
    return tuple(entries)


def _leaf_version(entries: Iterable[Entry]) -> int:
    """1, or 2 with a virtual reference, or 3 with a located chunk reference."""
    version = 1
    for entry in entries:
        if isinstance(entry, LocatedChunkRef):
            return 3
        if isinstance(entry, VirtualRef):
            version = 2
    return version


def _leaf_fields(entries: Sequence[Entry]) -> list[Any]:
    """The msgpack fields of a format-1 leaf's entries, without a dispatch per entry.

    Cut short at the first entry that is neither an inline value nor a plain
    ``ChunkRef``: ``encode_node`` then takes the general path.
    """
    kinds = set(map(type, entries))  # one pass in C for the two common leaves
    if kinds == {bytes}:
        return list(entries)
    if kinds == {ChunkRef}:
        return [[entry.chunk_id, entry.size] for entry in entries]  # type: ignore[union-attr]
    fields: list[Any] = []
    append = fields.append
    for entry in entries:
        kind = entry.__class__
        if kind is bytes:
            append(entry)
        elif kind is ChunkRef:
            append([entry.chunk_id, entry.size])  # type: ignore[union-attr]
        else:
            break
    return fields


def encode_node(node: Node) -> tuple[ObjectId, bytes]:
    """The id and stored frame of a tree node."""
    if isinstance(node, Leaf):
        kind = KIND_LEAF
        fields = _leaf_fields(node.entries)
        version = 1
        if len(fields) != len(node.entries):  # not only inline values and plain references
            version = _leaf_version(node.entries)
            fields = [_entry_fields(e) for e in node.entries]
        body: list[Any] = [version, list(node.keys), fields]
    else:
        kind = KIND_BRANCH
        body = [Branch.FORMAT_VERSION, list(node.keys), list(node.children), node.level]
    payload = _packb(body)
    # A branch is mostly child ids, which do not compress (a fifth saved, for a
    # zstd pass on every commit and a decompression on every read); a leaf's keys
    # and inline values do (4 KiB to 0.8 KiB for a leaf of small chunks).
    return hash_object(kind, payload), _frame(kind, payload, compress=kind == KIND_LEAF)


def decode_node(name: str, data: bytes) -> Node:
    """Decode a leaf or branch frame."""
    return _guarded("tree node", lambda: _decode_node(name, data), name)


def _decode_node(name: str, data: bytes) -> Node:
    kind = frame_kind(data)
    if kind == KIND_LEAF:
        fields = _versioned(name, "leaf", _unpack(name, _unframe(name, data, kind)),
                            Leaf.FORMAT_VERSION, 3)
        keys = tuple(fields[1])
        if keys and set(map(type, keys)) != {str}:
            raise CorruptObjectError(name, "leaf keys are not strings")
        return Leaf(keys=keys, entries=_leaf_entries(name, fields[2]))
    if kind == KIND_BRANCH:
        fields = _versioned(name, "branch", _unpack(name, _unframe(name, data, kind)), 1, 4)
        keys = tuple(fields[1])
        if keys and set(map(type, keys)) != {str}:
            raise CorruptObjectError(name, "branch keys are not strings")
        return Branch(
            level=int(fields[3]),
            keys=keys,
            children=_children(name, fields[2]),
        )
    return _unframe(name, data, KIND_LEAF)  # type: ignore[return-value]  # raises


def decode_leaf_lookup(name: str, data: bytes
                       ) -> tuple[tuple[str, ...], Callable[[], list[Any]]]:
    """A leaf frame's keys, checked, and a function giving its entries as msgpack values.

    Building every entry is most of the cost of ``decode_node`` on a leaf,
    and a point lookup needs one of them — none, when the key is absent. The
    frame is verified here exactly as by ``decode_node`` (checksum, kind,
    format version, key types), so a damaged leaf is detected whichever way
    it is read; the entries are unpacked from the verified payload when the
    function is first called (each one then built by ``leaf_entry``).

    Raises:
        CorruptObjectError: the frame is damaged or not a leaf (the function
            raises it too, for malformed entries).
        UnsupportedFormatError: a newer leaf format.
    """
    return _guarded("tree node", lambda: _decode_leaf_lookup(name, data), name)


def _decode_leaf_lookup(name: str, data: bytes
                        ) -> tuple[tuple[str, ...], Callable[[], list[Any]]]:
    payload = bytes(_unframe(name, data, KIND_LEAF))
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, ext_hook=_ext_hook,
                                timestamp=3, max_buffer_size=max(len(payload), 1))
    unpacker.feed(payload)
    try:
        width = unpacker.read_array_header()
        version = unpacker.unpack() if width else None
        if not isinstance(version, int):
            raise CorruptObjectError(name, "malformed leaf record")
        if version > Leaf.FORMAT_VERSION:
            raise UnsupportedFormatError("leaf", version, Leaf.FORMAT_VERSION)
        if width < 3:
            raise CorruptObjectError(name, f"leaf record has {width} fields, needs 3")
        keys = tuple(unpacker.unpack())
        start = unpacker.tell()
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CorruptObjectError(name, f"cannot decode record: {exc}") from exc
    if keys and set(map(type, keys)) != {str}:
        raise CorruptObjectError(name, "leaf keys are not strings")

    def entries() -> list[Any]:
        def decode() -> list[Any]:
            rest = msgpack.Unpacker(raw=False, strict_map_key=False, ext_hook=_ext_hook,
                                    timestamp=3, max_buffer_size=max(len(payload), 1))
            rest.feed(memoryview(payload)[start:])
            try:
                raw = rest.unpack()
            except (ValueError, TypeError, msgpack.UnpackException) as exc:
                raise CorruptObjectError(name, f"cannot decode record: {exc}") from exc
            if type(raw) is not list or len(raw) != len(keys):
                raise CorruptObjectError(name, "leaf keys and entries differ in length")
            return raw

        return _guarded("tree node", decode, name)

    return keys, entries


def leaf_entry(name: str, fields: Any) -> Entry:
    """One leaf entry from its msgpack value (``decode_leaf_lookup``), checked like ``decode_node``.

    Raises:
        CorruptObjectError: the entry is malformed.
    """
    return _guarded("tree node", lambda: _leaf_entries(name, (fields,))[0], name)


# -- snapshots ------------------------------------------------------------------------


def _row_fields(snapshot: Snapshot) -> list[Any]:
    """Parents, tree, message, time and metadata: a history row, and a snapshot's fields 1-5."""
    return [
        list(snapshot.parents),
        snapshot.tree,
        snapshot.message,
        msgpack.Timestamp.from_datetime(snapshot.written_at),
        msgpack.ExtType(2, pack_metadata(snapshot.metadata)),
    ]


def _snapshot_fields(snapshot: Snapshot) -> list[Any]:
    fields = [Snapshot.FORMAT_VERSION, *_row_fields(snapshot)]
    if snapshot.history is not None or snapshot.sizes is not None:
        fields.append(snapshot.history)
    if snapshot.sizes is not None:
        fields.append(_sizes_fields(snapshot.sizes))
    return fields


def _sizes_fields(sizes: Sizes) -> list[Any]:
    """``[1, [[path|nil, keys, chunks, objects, logical, stored, virtual, virtual bytes]]]``.

    Then ``[[key, value]]``, the metadata documents, when they are kept: an
    optional third element that older readers ignore (without it, the
    record is byte for byte what they wrote).
    """
    fields: list[Any] = [Sizes.FORMAT_VERSION, [
        [r.path, r.keys, r.chunks, r.objects, r.logical_bytes, r.stored_bytes,
         r.virtual_chunks, r.virtual_bytes] for r in sizes.rows
    ]]
    if sizes.documents is not None:
        fields.append([[key, value] for key, value in sizes.documents.items()])
    return fields


def _sizes_from_fields(name: str, payload: Any) -> Sizes | None:
    """The totals of a snapshot's field 7; ``None`` for a newer version than this one reads.

    An older reader ignores the field (it lies past the six it reads), so the
    totals are an optional addition to snapshot version 2; a totals record of
    a newer version is skipped likewise (``du`` falls back to a walk).
    """
    fields = _versioned(name, "sizes", payload, 1 << 30, 2)
    if fields[0] > Sizes.FORMAT_VERSION:
        return None
    listed = fields[1]
    # Checked with C-level maps: every snapshot read (a branch's tip too) decodes its totals,
    # one row per array. msgpack gives exact ``int``s (a ``bool`` is not one) and ``str``s.
    if (not isinstance(listed, list) or set(map(type, listed)) - {list}
            or set(map(len, listed)) - {8}
            or set(map(type, itertools.chain.from_iterable(
                itertools.islice(row, 1, None) for row in listed))) - {int}
            or set(map(type, map(operator.itemgetter(0), listed))) - {str, type(None)}):
        raise CorruptObjectError(name, "malformed size row")
    documents = None
    if len(fields) > 2 and fields[2] is not None:
        pairs = fields[2]
        if (not isinstance(pairs, list) or set(map(type, pairs)) - {list}
                or set(map(len, pairs)) - {2}
                or set(map(type, map(operator.itemgetter(0), pairs))) - {str}
                or set(map(type, map(operator.itemgetter(1), pairs))) - {bytes}):
            raise CorruptObjectError(name, "malformed metadata documents")
        documents = dict(pairs)
        if len(documents) != len(pairs):
            raise CorruptObjectError(name, "metadata documents repeat a key")
    sizes = Sizes(rows=tuple(itertools.starmap(_size_row, listed)), documents=documents)
    try:
        sizes.check()
    except ValueError as exc:
        raise CorruptObjectError(name, str(exc)) from exc
    return sizes


def _size_row(path: str | None, keys: int, chunks: int, objects: int, logical_bytes: int,
              stored_bytes: int, virtual_chunks: int, virtual_bytes: int) -> SizeRow:
    return SizeRow(path=path, keys=keys, chunks=chunks, objects=objects,
                   logical_bytes=logical_bytes, stored_bytes=stored_bytes,
                   virtual_chunks=virtual_chunks, virtual_bytes=virtual_bytes)


def chunk_frame_size(size: int) -> int:
    """The bytes a chunk object of a ``size``-byte value occupies (its frame: never compressed)."""
    return size + _HEADER


def encode_snapshot(snapshot: Snapshot) -> tuple[ObjectId, bytes]:
    """The id and stored frame of a snapshot.

    Raises:
        ValueError: its message or metadata holds text UTF-8 cannot encode.
    """
    try:
        payload = _packb(_snapshot_fields(snapshot))
    except UnicodeEncodeError as exc:
        raise _not_unicode("the snapshot's message or metadata", exc) from None
    return hash_object(KIND_SNAPSHOT, payload), _frame(KIND_SNAPSHOT, payload, compress=True)


def decode_snapshot(name: str, data: bytes) -> Snapshot:
    """Decode a snapshot frame."""
    return _guarded("snapshot", lambda: _decode_snapshot(name, data), name)


def _decode_snapshot(name: str, data: bytes) -> Snapshot:
    payload = _unpack(name, _unframe(name, data, KIND_SNAPSHOT))
    return _snapshot_from_fields(name, payload)


def _snapshot_from_fields(name: str, payload: Any) -> Snapshot:
    fields = _versioned(name, "snapshot", payload, Snapshot.FORMAT_VERSION, 6)
    metadata = fields[5]
    if isinstance(metadata, msgpack.ExtType) and metadata.code == 2:
        metadata = _unpack(name, metadata.data)
    written_at = fields[4]
    if not isinstance(written_at, datetime):
        raise CorruptObjectError(name, "snapshot time is malformed")
    if not isinstance(fields[3], str) or not isinstance(metadata, dict):
        raise CorruptObjectError(name, "snapshot message or metadata is malformed")
    history = None
    sizes = None
    if fields[0] >= 2:  # a list of parents, then optionally the history page and sizes
        if not isinstance(fields[1], list):
            raise CorruptObjectError(name, "snapshot parents are malformed")
        parents = tuple(_object_id(name, p) for p in fields[1])
        if len(fields) > 6 and fields[6] is not None:
            history = _object_id(name, fields[6])
        if len(fields) > 7 and fields[7] is not None:
            sizes = _sizes_from_fields(name, fields[7])
    else:  # format 1: one parent or None
        parents = () if fields[1] is None else (_object_id(name, fields[1]),)
    return Snapshot(
        parents=parents,
        tree=None if fields[2] is None else _object_id(name, fields[2]),
        message=fields[3],
        written_at=written_at.astimezone(UTC),
        metadata=metadata,
        history=history,
        sizes=sizes,
    )


def snapshot_links(name: str, data: bytes) -> tuple[ObjectId | None, ObjectId | None]:
    """A snapshot frame's first parent and history page, without decoding the rest.

    What walking first parents needs of a branch's tip: the frame is verified
    whole (checksum, kind, format version) and only these two fields are
    checked; ``decode_snapshot`` checks the others when they are wanted.

    Raises:
        CorruptObjectError: the frame, or either link, is malformed.
        UnsupportedFormatError: a newer snapshot format.
    """

    def decode() -> tuple[ObjectId | None, ObjectId | None]:
        fields = _versioned(name, "snapshot", _unpack(name, _unframe(name, data, KIND_SNAPSHOT)),
                            Snapshot.FORMAT_VERSION, 6)
        if fields[0] < 2:  # format 1: one parent or None, and no history page
            return None if fields[1] is None else _object_id(name, fields[1]), None
        parents = fields[1]
        if not isinstance(parents, list):
            raise CorruptObjectError(name, "snapshot parents are malformed")
        history = fields[6] if len(fields) > 6 else None
        return (_object_id(name, parents[0]) if parents else None,
                None if history is None else _object_id(name, history))

    return _guarded("snapshot", decode, name)


def history_row(snapshot: Snapshot) -> bytes:
    """One history-page row: ``snapshot``'s fields without its version, page and totals."""
    return _packb(_row_fields(snapshot))


def encode_history_page(page: HistoryPage) -> tuple[ObjectId, bytes]:
    """The id and stored frame of a history page (format 2: by columns)."""
    body = [HistoryPage.FORMAT_VERSION, list(page.ids), list(page.texts), page.rows,
            page.after, page.previous]
    payload = _packb(body)
    # Not compressed: a page is a few KiB of mostly random ids, read on every ancestry.
    return hash_object(KIND_HISTORY, payload), _frame(KIND_HISTORY, payload, compress=False)


def decode_history_page(name: str, data: bytes) -> HistoryPage:
    """Decode a history page frame: its columns; the rows stay packed (``history_entries``).

    Format-1 pages (whole snapshots) are read into the same columns.
    """

    def decode() -> HistoryPage:
        fields = _versioned(name, "history page", _unpack(name, _unframe(name, data,
                                                                         KIND_HISTORY)),
                            HistoryPage.FORMAT_VERSION, 3)
        if fields[0] == 1:
            return _history_page_v1(name, fields)
        if len(fields) < 6:
            raise CorruptObjectError(name, "history page record is too short")
        ids, texts, rows = fields[1], fields[2], fields[3]
        # Checked with C-level maps: this runs for every page an ancestry lists.
        if (not isinstance(ids, list) or not isinstance(texts, list) or len(ids) != len(texts)
                or not ids or not isinstance(rows, bytes)
                or set(map(type, ids)) != {bytes} or set(map(len, ids)) != {ID_LENGTH}
                or set(map(type, texts)) != {str}):
            raise CorruptObjectError(name, "history page columns are malformed")
        return HistoryPage(
            ids=tuple(ids), texts=tuple(texts), rows=rows,
            after=None if fields[4] is None else _object_id(name, fields[4]),
            previous=None if fields[5] is None else _object_id(name, fields[5]))

    return _guarded("history page", decode, name)


def _history_page_v1(name: str, fields: list[Any]) -> HistoryPage:
    entries = [(_object_id(name, item[0]), _snapshot_from_fields(name, item[1]))
               for item in fields[1]]
    if not entries:
        raise CorruptObjectError(name, "history page is empty")
    return HistoryPage(
        ids=tuple(i for i, _ in entries), texts=tuple(object_id_text(i) for i, _ in entries),
        rows=b"".join(history_row(s) for _, s in entries), after=entries[-1][1].parent,
        previous=None if fields[2] is None else _object_id(name, fields[2]))


def _array_header(count: int) -> bytes:
    if count < 16:
        return bytes((0x90 | count,))
    return b"\xdc" + count.to_bytes(2, "big")


def history_entries(name: str, page: HistoryPage) -> tuple[Snapshot, ...]:
    """The snapshots of a history page's rows (without their own ``history``).

    Raises:
        CorruptObjectError: the rows are malformed, or do not follow first
            parents from ``ids[0]`` to ``after``.
    """

    def decode() -> tuple[Snapshot, ...]:
        rows = _unpack(name, _array_header(len(page.ids)) + page.rows)
        snapshots = tuple(_snapshot_from_fields(name, [Snapshot.FORMAT_VERSION, *row])
                          for row in rows)
        parents = (*page.ids[1:], page.after)
        if len(snapshots) != len(page.ids) or any(
                s.parent != p for s, p in zip(snapshots, parents, strict=True)):
            raise CorruptObjectError(name, "history page rows do not follow first parents")
        return snapshots

    return _guarded("history page", decode, name)


# -- refs ------------------------------------------------------------------------------

T = TypeVar("T")


def _encode_small(kind: int, body: list[Any]) -> bytes:
    return _frame(kind, _packb(body), compress=False)


def _decode_small(name: str, data: bytes, kind: int, label: str, width: int, supported: int,
                  build: Callable[[list[Any]], T], named_at: int | None = None) -> T:
    """Decode a ref value; from version 2 on, check that it names the ref it is stored under.

    A ref's name is its key in the backend, outside every checksum; the value
    repeating it (under the checksum) turns a damaged name into an error
    instead of a silently renamed branch, tag, session or staged key.
    """

    def decode() -> T:
        payload = _unpack(name, _unframe(name, data, kind))
        fields = _versioned(name, label, payload, supported, width)
        if named_at is not None and fields[0] >= 2:
            if len(fields) <= named_at or fields[named_at] != name:
                stored = fields[named_at] if len(fields) > named_at else None
                raise CorruptObjectError(
                    name, f"{label} record belongs to {stored!r}: the ref name is damaged"
                )
        return build(fields)

    return _guarded(label, decode, name)


def encode_ref_target(name: str, target: RefTarget) -> bytes:
    """The stored value of branch or tag ref ``name``."""
    return _encode_small(
        KIND_REF, [RefTarget.FORMAT_VERSION, target.snapshot, target.deleted, name]
    )


def decode_ref_target(name: str, data: bytes) -> RefTarget:
    """Decode the value of branch or tag ref ``name``."""
    return _decode_small(
        name, data, KIND_REF, "ref", 3, RefTarget.FORMAT_VERSION,
        lambda f: RefTarget(
            snapshot=None if f[1] is None else _object_id(name, f[1]), deleted=bool(f[2])
        ),
        named_at=3,
    )


def encode_session(name: str, record: SessionRecord) -> bytes:
    """The stored value of a writable session's record (ref ``name``)."""
    stamp = msgpack.Timestamp.from_datetime(record.created_at)
    if record.epoch is None:  # version 2, byte for byte as before located staging
        return _encode_small(KIND_SESSION, [
            2, record.branch, record.base, stamp, name, record.generation
        ])
    if not record.manifests:  # version 3, byte for byte as before staged manifests
        return _encode_small(KIND_SESSION, [
            3, record.branch, record.base, stamp, name, record.generation, record.epoch,
            list(record.closing),
        ])
    return _frame(KIND_SESSION, _packb([
        4, record.branch, record.base, stamp, name, record.generation, record.epoch,
        list(record.closing),
        [[list(m.first_keys), list(m.parts)] for m in record.manifests],
    ]), compress=True)


def _timestamp(name: str, value: Any) -> datetime:
    if not isinstance(value, datetime):
        raise CorruptObjectError(name, "malformed time")
    return value.astimezone(UTC)


def decode_session(name: str, data: bytes) -> SessionRecord:
    """Decode session record ``name``.

    Decodings are kept (``_SESSION_CACHE`` of them, the newest): garbage
    collection reads every record on each run, and a record of a session that
    has committed stays as long as its base (``gc_roots.empty_records``).
    """
    return _decode_session(name, bytes(data))


#: Session records whose decoding ``decode_session`` keeps (a few MiB at most).
_SESSION_CACHE = 1 << 14


@functools.lru_cache(maxsize=_SESSION_CACHE)
def _decode_session(name: str, data: bytes) -> SessionRecord:

    def build(f: list[Any]) -> SessionRecord:
        generation = f[5] if f[0] >= 2 else 0
        if not isinstance(f[1], str) or not isinstance(generation, int):
            raise CorruptObjectError(name, "session branch or generation is malformed")
        epoch: int | None = None
        closing: tuple[int, ...] = ()
        if f[0] >= 3:
            if (len(f) < 8 or not isinstance(f[6], int) or not isinstance(f[7], list)
                    or not all(isinstance(e, int) for e in f[7])):
                raise CorruptObjectError(name, "session epochs are malformed")
            epoch, closing = f[6], tuple(f[7])
        manifests: tuple[StagedManifest, ...] = ()
        if f[0] >= 4:
            if len(f) < 9 or not isinstance(f[8], list):
                raise CorruptObjectError(name, "session manifests are malformed")
            manifests = tuple(_manifest(name, m) for m in f[8])
        return SessionRecord(branch=f[1], base=_object_id(name, f[2]),
                             created_at=_timestamp(name, f[3]), generation=generation,
                             epoch=epoch, closing=closing, manifests=manifests)

    return _decode_small(name, data, KIND_SESSION, "session", 4, SessionRecord.FORMAT_VERSION,
                         build, named_at=4)


def _manifest(name: str, fields: Any) -> StagedManifest:
    if (not isinstance(fields, list) or len(fields) != 2 or not isinstance(fields[0], list)
            or not isinstance(fields[1], list)
            or not all(isinstance(k, str) for k in fields[0])):
        raise CorruptObjectError(name, "a session manifest is malformed")
    manifest = StagedManifest(parts=tuple(_object_id(name, p) for p in fields[1]),
                              first_keys=tuple(fields[0]))
    try:
        manifest.check()
    except ValueError as exc:
        raise CorruptObjectError(name, str(exc)) from exc
    return manifest


#: One located write in a staged manifest part: key, epoch, stamp, chunk id, size.
ManifestItem = tuple[str, int, int, ObjectId, int]


def encode_manifest_part(session_id: str, items: Sequence[ManifestItem]
                         ) -> tuple[ObjectId, bytes]:
    """The id and frame of a staged manifest part: located writes of one session, by key.

    ``[1, session id: str, keys: [str], epochs: [int], stamps: [int], ids: bin, sizes:
    [int]]`` (columns; ``ids`` the 20-byte chunk ids back to back), zstd-compressed.
    """
    payload = _packb([1, session_id, [i[0] for i in items], [i[1] for i in items],
                      [i[2] for i in items], b"".join(i[3] for i in items),
                      [i[4] for i in items]])
    return hash_object(KIND_MANIFEST_PART, payload), _frame(KIND_MANIFEST_PART, payload,
                                                            compress=True)


def decode_manifest_part(name: str, data: bytes | memoryview
                         ) -> tuple[str, list[ManifestItem]]:
    """The session id and the located writes (sorted by key) of a staged manifest part."""

    def decode() -> tuple[str, list[ManifestItem]]:
        fields = _versioned(name, "staged manifest part",
                            _unpack(name, _unframe(name, data, KIND_MANIFEST_PART)), 1, 7)
        session_id, keys, epochs, stamps, ids, sizes = fields[1:7]
        count = len(keys)
        if (not isinstance(session_id, str) or not isinstance(ids, bytes)
                or len(ids) != count * ID_LENGTH
                or not len(epochs) == len(stamps) == len(sizes) == count
                or not all(isinstance(k, str) for k in keys)
                or any(a >= b for a, b in itertools.pairwise(keys))):
            raise CorruptObjectError(name, "malformed staged manifest part")
        items = [(k, int(e), int(s), ObjectId(ids[n * ID_LENGTH:(n + 1) * ID_LENGTH]), int(z))
                 for n, (k, e, s, z) in enumerate(zip(keys, epochs, stamps, sizes, strict=True))]
        return session_id, items

    return _guarded("staged manifest part", decode, name)


def encode_staged(name: str, entry: Entry | Tombstone) -> bytes:
    """The stored value of staged ref ``name``: an entry, or a deletion."""
    if type(entry) is bytes:  # an inline value (a lone ``set``'s): the frame built at once
        payload = _packb([2, entry, name])
        return b"".join((_STAGED_HEADER, _xxh3_digest(payload)[::-1], payload))
    fields = None if isinstance(entry, Tombstone) else _entry_fields(entry)
    # 3: a virtual reference; 4: a located chunk reference
    version = (3 if isinstance(entry, VirtualRef) else
               4 if isinstance(entry, LocatedChunkRef) else 2)
    return _encode_small(KIND_STAGED, [version, fields, name])


def encode_staged_chunk(name: str, value: bytes | PreparedChunk
                        ) -> tuple[ObjectId, bytes, ChunkRef, bytes]:
    """A value staged as a chunk object, all at once: the staging hot path.

    The same as ``chunk_id, frame = encode_chunk(value)``, ``ref =
    ChunkRef(chunk_id=chunk_id, size=len(value))`` and ``encode_staged(name,
    ref)`` (byte for byte: ``tests/test_write_path.py``), without the general
    encoders' dispatch on the kind of entry; the reference is built without
    ``attrs``' keyword ``__init__`` (as leaf decoding does). A
    ``PreparedChunk`` brings its id and frame along.

    Returns:
        The chunk's id, its stored frame, the reference and the staged record.
    """
    if isinstance(value, PreparedChunk):
        chunk_id, frame, size = value.chunk_id, value.frame, len(value.value)
    else:
        chunk_id = hash_object(KIND_CHUNK, value)
        frame = b"".join((_CHUNK_HEADER, _xxh3_digest(value)[::-1], value))
        size = len(value)
    ref = _new_ref(ChunkRef)
    _set_chunk_id(ref, chunk_id)
    _set_size(ref, size)
    payload = _packb([2, [chunk_id, size], name])
    return chunk_id, frame, ref, b"".join((_STAGED_HEADER, _xxh3_digest(payload)[::-1], payload))


def staged_reencodes(data: bytes) -> bool:
    """Whether ``encode_staged`` of the decoded value gives back exactly ``data``.

    True for every staged record this version writes (raw frame, version 2,
    3 for a virtual reference or 4 for a located chunk reference: msgpack is
    deterministic for these fields),
    so a commit can drop the stored bytes and re-encode them when it needs
    them (see ``Session.commit``).
    """
    return (len(data) > _HEADER + 1 and data[4] == _RAW
            and data[_HEADER:_HEADER + 2] in (b"\x93\x02", b"\x93\x03", b"\x93\x04"))


def decode_staged(name: str, data: bytes) -> Entry | Tombstone:
    """Decode staged ref ``name``.

    A value staged inline (a raw version-2 frame holding ``[2, bin, name]``
    with a 16-bit bin length, what ``Session.set_value`` writes) is checked
    and sliced out in one step; everything else, and anything that fails a
    check, goes through the general decoder (which raises what is wrong).
    """
    if (data[:5] == _STAGED_HEADER and data[_HEADER:_HEADER + 3] == b"\x93\x02\xc5"
            and name.isascii()):  # an ASCII name packs without an encoding error
        payload = memoryview(data)[_HEADER:]
        end = 5 + int.from_bytes(payload[3:5], "big")
        if (payload[end:] == _packb(name)
                and _xxh3_digest(payload)[::-1] == data[5:_HEADER]):
            return bytes(payload[5:end])
    return _decode_small(
        name, data, KIND_STAGED, "staged entry", 2, 4,
        lambda f: TOMBSTONE if f[1] is None else _entry(name, f[1]),
        named_at=2,
    )


def encode_repository(record: RepositoryRecord) -> bytes:
    """The stored value of the ``repository`` ref."""
    stamp = msgpack.Timestamp.from_datetime(record.created_at)
    return _encode_small(
        KIND_REPOSITORY, [RepositoryRecord.FORMAT_VERSION, record.format_version, stamp]
    )


def decode_repository(name: str, data: bytes) -> RepositoryRecord:
    """Decode the ``repository`` ref."""

    def build(f: list[Any]) -> RepositoryRecord:
        if not isinstance(f[1], int) or f[1] < 1:
            raise CorruptObjectError(name, "repository format version is malformed")
        return RepositoryRecord(format_version=f[1], created_at=_timestamp(name, f[2]))

    return _decode_small(name, data, KIND_REPOSITORY, "repository", 3,
                         RepositoryRecord.FORMAT_VERSION, build)


def encode_graft(name: str, graft: Graft) -> bytes:
    """The stored value of graft ref ``name`` (a snapshot's parents after expiry)."""
    return _encode_small(KIND_GRAFT, [Graft.FORMAT_VERSION, list(graft.parents), name])


def decode_graft(name: str, data: bytes) -> Graft:
    """Decode graft ref ``name`` (which its value names, under the checksum)."""

    def build(f: list[Any]) -> Graft:
        if f[2] != name:
            raise CorruptObjectError(name, f"graft record belongs to {f[2]!r}: the ref name "
                                     "is damaged")
        if not isinstance(f[1], list):
            raise CorruptObjectError(name, "graft parents are malformed")
        return Graft(parents=tuple(_object_id(name, p) for p in f[1]))

    return _decode_small(name, data, KIND_GRAFT, "graft", 3, Graft.FORMAT_VERSION, build)
def encode_operation(name: str, operation: Operation) -> bytes:
    """The stored value of ops-log ref ``name``."""
    stamp = msgpack.Timestamp.from_datetime(operation.written_at)
    return _encode_small(KIND_OPERATION, [
        Operation.FORMAT_VERSION, operation.kind, operation.ref, operation.old, operation.new,
        stamp, operation.message, operation.source, name,
    ])


def decode_operation(name: str, data: bytes) -> Operation:
    """Decode ops-log ref ``name``."""

    def optional_id(value: Any) -> ObjectId | None:
        return None if value is None else _object_id(name, value)

    def build(f: list[Any]) -> Operation:
        if not isinstance(f[1], str) or not isinstance(f[2], str):
            raise CorruptObjectError(name, "operation kind or ref is malformed")
        if f[6] is not None and not isinstance(f[6], str):
            raise CorruptObjectError(name, "operation message is malformed")
        if f[8] != name:
            raise CorruptObjectError(name, f"operation record belongs to {f[8]!r}: the ref "
                                     "name is damaged")
        return Operation(kind=f[1], ref=f[2], old=optional_id(f[3]), new=optional_id(f[4]),
                         written_at=_timestamp(name, f[5]), message=f[6],
                         source=optional_id(f[7]))

    return _decode_small(name, data, KIND_OPERATION, "operation", 9, Operation.FORMAT_VERSION,
                         build)


# -- the ref log of object storage (``backend.object``) -----------------------------------

#: Format version of ref log records and checkpoints.
REF_LOG_FORMAT_VERSION: Final = 1


def _ref_name_bytes(name: str) -> bytes:
    # surrogateescape: a ref name damaged into invalid UTF-8 round-trips (as on LMDB)
    return name.encode("utf-8", "surrogateescape")


def _ref_pairs(name: str, value: Any, values_optional: bool) -> list[tuple[str, bytes | None]]:
    if not isinstance(value, list):
        raise CorruptObjectError(name, "ref list is malformed")
    pairs: list[tuple[str, bytes | None]] = []
    for pair in value:
        if (not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[0], bytes)
                or not (isinstance(pair[1], bytes) or (values_optional and pair[1] is None))):
            raise CorruptObjectError(name, "ref entry is malformed")
        pairs.append((pair[0].decode("utf-8", "surrogateescape"), pair[1]))
    return pairs


def encode_ref_log_record(seq: int, effect: Mapping[str, bytes | None]) -> bytes:
    """Log record ``seq``: the resolved ref writes of one batch (``None`` deletes)."""
    body = [REF_LOG_FORMAT_VERSION, seq,
            [[_ref_name_bytes(name), value] for name, value in effect.items()]]
    return _frame(KIND_REF_LOG, msgpack.packb(body, use_bin_type=True), compress=True)


def decode_ref_log_record(name: str, data: bytes, seq: int) -> dict[str, bytes | None]:
    """Decode the log record stored as ``name``, which must be record ``seq``."""

    def decode() -> dict[str, bytes | None]:
        payload = _unpack(name, _unframe(name, data, KIND_REF_LOG, MAX_REF_LOG_DECOMPRESSED))
        fields = _versioned(name, "ref log record", payload, REF_LOG_FORMAT_VERSION, 3)
        if fields[1] != seq:
            raise CorruptObjectError(name, f"log record {fields[1]!r} stored as record {seq}")
        return dict(_ref_pairs(name, fields[2], values_optional=True))

    return _guarded("ref log record", decode, name)


def encode_ref_checkpoint(seq: int, refs: Iterable[tuple[str, bytes]]) -> bytes:
    """Every ref as of log record ``seq``."""
    body = [REF_LOG_FORMAT_VERSION, seq, [[_ref_name_bytes(name), value] for name, value in refs]]
    return _frame(KIND_REF_CHECKPOINT, msgpack.packb(body, use_bin_type=True), compress=True)


def decode_ref_checkpoint(name: str, data: bytes, seq: int) -> dict[str, bytes]:
    """Decode the checkpoint stored as ``name``, which must be as of record ``seq``."""

    def decode() -> dict[str, bytes]:
        payload = _unpack(name, _unframe(name, data, KIND_REF_CHECKPOINT,
                                         MAX_REF_LOG_DECOMPRESSED))
        fields = _versioned(name, "ref checkpoint", payload, REF_LOG_FORMAT_VERSION, 3)
        if fields[1] != seq:
            raise CorruptObjectError(name, f"checkpoint {fields[1]!r} stored as {seq}")
        return {key: value for key, value in _ref_pairs(name, fields[2], values_optional=False)
                if value is not None}

    return _guarded("ref checkpoint", decode, name)


def encode_gc_ledger(ledger: GCLedger) -> bytes:
    """The stored header of garbage collection's ledger (compressed when large)."""
    body = [GCLedger.FORMAT_VERSION, ledger.generation, ledger.journal, ledger.live,
            [list(root) for root in ledger.roots],
            [[snapshot, list(parents)] for snapshot, parents in ledger.grafts]]
    return _frame(KIND_GC_LEDGER, msgpack.packb(body, use_bin_type=True), compress=True)


def decode_gc_ledger(data: bytes) -> GCLedger:
    """Decode garbage collection's ledger header."""
    name = "gc ledger"

    def decode() -> GCLedger:
        payload = _unpack(name, _unframe(name, data, KIND_GC_LEDGER))
        f = _versioned(name, name, payload, GCLedger.FORMAT_VERSION, 6)
        if not all(isinstance(v, int) and v >= 0 for v in f[1:4]) or not isinstance(
                f[4], list) or not isinstance(f[5], list):
            raise CorruptObjectError(name, "gc ledger header is malformed")
        roots = []
        for root in f[4]:
            if not (isinstance(root, list) and len(root) == 3 and isinstance(root[1], int)
                    and isinstance(root[2], int) and root[2] > 0):
                raise CorruptObjectError(name, "gc ledger root is malformed")
            roots.append((_object_id(name, root[0]), root[1], root[2]))
        grafts = []
        for graft in f[5]:
            if not (isinstance(graft, list) and len(graft) == 2 and isinstance(graft[1], list)):
                raise CorruptObjectError(name, "gc ledger graft is malformed")
            grafts.append((_object_id(name, graft[0]),
                           tuple(_object_id(name, p) for p in graft[1])))
        return GCLedger(generation=f[1], journal=f[2], live=f[3], roots=tuple(roots),
                        grafts=tuple(grafts))

    return _guarded(name, decode, name)

"""Staged values as a commit records them: inline values over ``INLINE_LIMIT`` become chunks.

A session stages a small value inside its staged record (``STAGED_INLINE_LIMIT``
in ``versionstore.session``); the commit stores every value over
``INLINE_LIMIT`` as a chunk object. Comparisons with the trees (status,
conflicts, identical rewrites) and the staged refs a move rewrites
(``StagedValues``) see them as the commit will record them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from versionstore.codec import chunk_id_of, decode_staged, encode_chunk, encode_staged
from versionstore.commit_stream import NewObjects
from versionstore.ids import ObjectId
from versionstore.records import DOCUMENT_NAMES, TOMBSTONE, ChunkRef, Entry, Tombstone
from versionstore.tree import Change

__all__ = ["INLINE_LIMIT", "StagedValues", "as_stored", "stored_changes"]

#: Values up to this size live inline in tree leaves; larger ones are chunk objects.
INLINE_LIMIT = 512


def as_stored(entry: Entry | None) -> Entry | None:
    """``entry`` as a commit records it: a staged value over ``INLINE_LIMIT`` is a chunk.

    Values staged inline (``STAGED_INLINE_LIMIT``) compare with the trees'
    entries (status, conflicts, identical rewrites) as the chunk reference
    the commit will write.
    """
    if type(entry) is bytes and len(entry) > INLINE_LIMIT:
        return ChunkRef(chunk_id=chunk_id_of(entry), size=len(entry))
    return entry


def stored_changes(changes: Iterator[Change], objects: NewObjects,
                    documents: dict[ObjectId, bytes]) -> Iterator[Change]:
    """``changes`` as a commit records them (``as_stored``), adding the chunks to ``objects``.

    The values of metadata documents among them go to ``documents`` too: the
    snapshot's totals read them before the batch stores them.
    """
    for key, entry in changes:
        if type(entry) is bytes and len(entry) > INLINE_LIMIT:
            chunk_id, frame = encode_chunk(entry)
            objects.add_chunk(chunk_id, frame)
            if key.rpartition("/")[2] in DOCUMENT_NAMES:
                documents[chunk_id] = entry
            entry = ChunkRef(chunk_id=chunk_id, size=len(entry))
        yield key, entry


class StagedValues(Mapping[str, bytes]):
    """``stage/<id>/<key> -> stored bytes`` for a list of changes, encoded on access.

    A value staged inline is listed as the chunk reference its commit records
    (``as_stored``), whose encoding is not what is stored: its bytes are read
    again on access, and stand for the value read only if they hold the same
    content (a newer, different write then keeps its ref, S1). Keeping them
    instead would hold up to ``STAGED_INLINE_LIMIT`` bytes per key.
    """

    def __init__(self, prefix: str, changes: list[Change], kept: dict[str, bytes],
                 inline: set[str], read: Callable[[str], bytes | None]) -> None:
        self._prefix = prefix
        self._changes = changes
        self._kept = kept
        self._inline = inline
        self._read = read
        self._index: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self._changes)

    def __iter__(self) -> Iterator[str]:
        return (self._prefix + key for key, _ in self._changes)

    def items(self) -> Iterator[tuple[str, bytes]]:  # type: ignore[override]
        """``(ref name, stored bytes)`` pairs, in the changes' order, each encoded now."""
        for key, entry in self._changes:
            name = self._prefix + key
            yield name, self._value(name, entry)

    def _value(self, name: str, entry: Entry | None) -> bytes:
        kept = self._kept.get(name)
        if kept is not None:
            return kept
        if name in self._inline:
            now = self._read(name)
            if now is not None:
                staged = decode_staged(name, now)
                if not isinstance(staged, Tombstone) and as_stored(staged) == entry:
                    return now
        return encode_staged(name, TOMBSTONE if entry is None else entry)

    def __getitem__(self, name: str) -> bytes:
        if self._index is None:
            self._index = {key: i for i, (key, _) in enumerate(self._changes)}
        position = self._index.get(name[len(self._prefix):]) if name.startswith(
            self._prefix) else None
        if position is None:
            raise KeyError(name)
        return self._value(name, self._changes[position][1])

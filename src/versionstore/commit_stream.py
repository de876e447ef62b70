"""What one commit streams: the staged refs it read, the leaves it built, the chunks it needs.

A commit reads every staged ref of its session in one consistent view, turns
them into key-sorted changes for ``tree.apply_changes``, and writes the new
tree, the snapshot, the branch move and the removal of exactly the staged
refs it read as one atomic ``WriteBatch`` (``docs/format.md``). Held as
Python objects, a million staged keys cost hundreds of MiB; here each is
kept once, as bytes, in a ``versionstore.spill.Spill`` (memory while small,
a temporary file once large), and the batch gets *views* of the spills that
the backend iterates inside its atomic write:

* ``StagedScan``: the staged refs as read (name and stored bytes), the
  changes they stand for, and ``refs``, the ``delete_if_equal`` view;
* ``NewObjects``: the leaves the tree streamed out plus the few objects
  built in memory (branches, snapshot, history page);
* ``ChunkIds``: the chunk objects the new tree references from staged
  entries (the batch ``requires`` them).

Peak memory of a commit is then about the tree's branches and one leaf run,
whatever the number of changes (``docs/benchmarks.md``, "Huge commits").
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from typing import override

from versionstore.backend.protocol import Backend
from versionstore.codec import decode_staged
from versionstore.ids import ObjectId
from versionstore.records import ChunkRef, Entry, Tombstone
from versionstore.spill import Spill
from versionstore.tree import Change

__all__ = ["ChunkIds", "NewObjects", "StagedRefs", "StagedScan"]


def _text(name: bytes) -> str:
    return name.decode("utf-8", "surrogateescape")


class StagedScan:
    """The staged refs under ``prefix``, read in one consistent view into a spill.

    Call ``close`` (or use it as a context manager) to drop the spill.
    """

    def __init__(self, backend: Backend, prefix: str,
                 decode: Callable[[str, bytes], Entry | Tombstone] = decode_staged) -> None:
        self.prefix = prefix
        #: Decodes one staged record (``decode_staged``, or a session's remembered decodings).
        self._decode = decode
        self._spill = Spill(2)
        append = self._spill.append
        backend.scan_refs(
            prefix, lambda name, value: append(name.encode("utf-8", "surrogateescape"), value))

    def __len__(self) -> int:
        return len(self._spill)

    def __enter__(self) -> StagedScan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the spilled refs."""
        self._spill.close()

    def entries(self) -> Iterator[tuple[str, Entry | Tombstone]]:
        """``(key, entry or tombstone)`` for each staged ref, in key order, decoded as read."""
        cut, decode = len(self.prefix), self._decode
        for raw_name, value in self._spill:
            name = _text(raw_name)
            yield name[cut:], decode(name, value)

    def changes(self) -> Iterator[Change]:
        """``(key, entry or None)`` for each staged ref, in key order, decoded as read."""
        cut, decode = len(self.prefix), self._decode
        for raw_name, value in self._spill:
            name = _text(raw_name)
            entry = decode(name, value)
            yield name[cut:], None if isinstance(entry, Tombstone) else entry

    @property
    def refs(self) -> StagedRefs:
        """Ref name -> stored bytes, as read: the commit's ``delete_if_equal``."""
        return StagedRefs(self._spill)


class StagedRefs(Mapping[str, bytes]):
    """A ``StagedScan``'s refs as a mapping (iteration streams; lookups scan)."""

    def __init__(self, spill: Spill) -> None:
        self._spill = spill

    def __len__(self) -> int:
        return len(self._spill)

    def __iter__(self) -> Iterator[str]:
        return (_text(name) for name, _ in self._spill)

    @override
    def items(self) -> Iterator[tuple[str, bytes]]:  # type: ignore[override]
        return ((_text(name), value) for name, value in self._spill)

    def __getitem__(self, name: str) -> bytes:
        wanted = name.encode("utf-8", "surrogateescape")
        for raw_name, value in self._spill:
            if raw_name == wanted:
                return value
        raise KeyError(name)


class ChunkIds(Collection[ObjectId]):
    """Chunk ids, appended while the changes stream past and iterated by the backend."""

    def __init__(self) -> None:
        self._spill = Spill(1)

    def note(self, changes: Iterator[Change]) -> Iterator[Change]:
        """``changes`` unchanged, noting the chunk each entry references by id alone.

        A located chunk (``LocatedChunkRef``) is not noted: object storage
        keeps it at its hint, not under its id, and what holds it there is
        the session's staging (``docs/format.md``, "Located staging").
        """
        append = self._spill.append
        for change in changes:
            if change[1].__class__ is ChunkRef:
                append(change[1].chunk_id)
            yield change

    def __len__(self) -> int:
        return len(self._spill)

    def __iter__(self) -> Iterator[ObjectId]:
        return (ObjectId(object_id) for object_id, in self._spill)

    def __contains__(self, item: object) -> bool:
        return any(object_id == item for object_id in self)

    def close(self) -> None:
        """Drop the spilled ids."""
        self._spill.close()


class NewObjects(Collection[tuple[ObjectId, bytes]]):
    """The objects a commit writes: streamed leaves, then objects built in memory."""

    def __init__(self) -> None:
        self._leaves = Spill(2)
        #: Chunks of values the session staged inline (``staged_values.as_stored``).
        self._chunks = Spill(2)
        self.in_memory: list[tuple[ObjectId, bytes]] = []

    def add_leaf(self, node_id: ObjectId, data: bytes) -> None:
        """Keep one encoded leaf until the batch is written."""
        self._leaves.append(node_id, data)

    def add_chunk(self, chunk_id: ObjectId, frame: bytes) -> None:
        """Keep one chunk object (a value staged inline) until the batch is written."""
        self._chunks.append(chunk_id, frame)

    @property
    def leaf_count(self) -> int:
        """How many leaves were added."""
        return len(self._leaves)

    def __len__(self) -> int:
        return len(self._chunks) + len(self._leaves) + len(self.in_memory)

    def __iter__(self) -> Iterator[tuple[ObjectId, bytes]]:
        for chunk_id, frame in self._chunks:
            yield ObjectId(chunk_id), frame
        for node_id, data in self._leaves:
            yield ObjectId(node_id), data
        yield from self.in_memory

    def __contains__(self, item: object) -> bool:
        return any(pair == item for pair in self)

    def close(self) -> None:
        """Drop the spilled leaves and chunks."""
        self._leaves.close()
        self._chunks.close()

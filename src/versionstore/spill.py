"""Spills: append-only runs of byte records, in memory while small, on disk once large.

A commit of a million staged keys must not hold a million Python objects at
once (``docs/benchmarks.md``, "Huge commits"): it streams the staged changes
through the tree and into one atomic backend write, and what it must read
more than once — the staged refs it read, the leaves it built, the chunk ids
its tree needs — it appends to a ``Spill``. A spill keeps its records as
Python objects up to about ``memory_bytes``, then moves them to an anonymous
temporary file in ``tempfile.gettempdir()`` (``TMPDIR``; deleted when closed
or collected), so small commits never touch the disk and huge ones cost disk
(about 2 × the staged refs' size), not memory. A temporary directory that is
full or cannot be written stops the operation with ``DiskFullError`` or
``BackendError`` naming it (and ``TMPDIR``), before anything is recorded.

Records are tuples of ``bytes`` fields of a fixed count, written to the file
in pickled blocks (``pickle`` is fast here because it runs in C; the file is
private to this process and already unlinked). A spill can be iterated any
number of times, also by several iterators at once (each keeps its own
position), which is what a backend needs when it replays a write (a grown
LMDB map) or checks a batch before applying it.
"""

from __future__ import annotations

import errno
import pickle
import tempfile
import threading
from collections.abc import Iterator
from typing import IO

from versionstore.errors import BackendError, DiskFullError

__all__ = ["MEMORY_BYTES", "Spill"]

_BLOCK = 1 << 20
#: Default of ``Spill(memory_bytes=...)``: what a spill holds as Python objects.
MEMORY_BYTES = 16 << 20
#: What a record kept in memory costs beyond its bytes (a tuple and its bytes objects).
_OBJECT_COST = 120


class Spill:
    """An append-only sequence of records of ``fields`` byte strings each.

    Args:
        fields: how many byte strings each record has.
        memory_bytes: records are kept as Python objects up to about this
            many bytes (counting each object's overhead); beyond that they go
            to a temporary file in blocks of about ``_BLOCK`` bytes.
    """

    def __init__(self, fields: int, *, memory_bytes: int | None = None) -> None:
        self._fields = fields
        self._memory_bytes = MEMORY_BYTES if memory_bytes is None else memory_bytes
        self._pending: list[tuple[bytes, ...]] = []
        self._pending_bytes = 0
        self._file: IO[bytes] | None = None
        self._blocks: list[tuple[int, int]] = []  # (offset, length) of each pickled block
        self._size = 0
        self._count = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._count

    @property
    def on_disk(self) -> bool:
        """Whether records have moved to a temporary file."""
        return self._file is not None

    def append(self, *record: bytes) -> None:
        """Add one record (exactly ``fields`` byte strings)."""
        if len(record) != self._fields:
            raise ValueError(f"a record has {self._fields} fields, not {len(record)}")
        with self._lock:
            self._count += 1
            self._pending.append(record)
            self._pending_bytes += _OBJECT_COST + sum(map(len, record))
            limit = _BLOCK if self._file is not None else self._memory_bytes
            if self._pending_bytes > limit:
                self._write_block()

    def _write_block(self) -> None:
        # Trusted data: this process wrote the private, already-unlinked file it reads back.
        data = pickle.dumps(self._pending, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            if self._file is None:
                self._file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
            self._file.seek(self._size)
            self._file.write(data)
            self._file.flush()
        except OSError as exc:
            raise _temporary_file_error(exc) from exc
        self._blocks.append((self._size, len(data)))
        self._size += len(data)
        self._pending, self._pending_bytes = [], 0

    def _block(self, index: int) -> list[tuple[bytes, ...]]:
        with self._lock:
            assert self._file is not None
            offset, length = self._blocks[index]
            self._file.seek(offset)
            data = self._file.read(length)
        records: list[tuple[bytes, ...]] = pickle.loads(data)  # noqa: S301 - see _write_block
        return records

    def __iter__(self) -> Iterator[tuple[bytes, ...]]:
        """The records in the order appended (at most one block of them in memory)."""
        with self._lock:
            blocks = len(self._blocks)
            pending = self._pending[:]
        for index in range(blocks):
            yield from self._block(index)
        yield from pending

    def close(self) -> None:
        """Drop the records (and the temporary file)."""
        with self._lock:
            self._pending, self._blocks = [], []
            if self._file is not None:
                self._file.close()


def _temporary_file_error(exc: OSError) -> BackendError:
    """The error for a temporary file that cannot be created or written."""
    where = tempfile.gettempdir()
    why = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"no space left for a temporary file in {where!r} (TMPDIR), where large commits "
            f"and absorbs sort what they read: free space there or set TMPDIR to a larger "
            f"directory ({why})")
    return BackendError(
        f"cannot write a temporary file in {where!r} (TMPDIR), where large commits and "
        f"absorbs sort what they read: set TMPDIR to a writable directory ({why})")

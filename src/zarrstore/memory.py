"""``MemoryStore``: values in a Python dict, for tests and notebooks.

Thread-safe: one lock guards the dict, so concurrent readers and writers from
many threads see each value whole. Nothing persists beyond the process.
Stores made by ``with_read_only`` share the dict and the lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any, override

from zarrstore.protocol import ReadRequest, Storage
from zarrstore.ranges import ByteRange, slice_value
from zarrstore.zarr_bridge import ZarrStore

__all__ = ["MemoryStorage", "MemoryStore"]


class MemoryStorage(Storage):
    """The storage behind ``MemoryStore``: a dict of ``key -> bytes`` under a lock."""

    blocking_io = False

    def __init__(
        self,
        values: dict[str, bytes] | None = None,
        *,
        read_only: bool = False,
        _lock: threading.Lock | None = None,
    ) -> None:
        super().__init__(read_only=read_only)
        self._values: dict[str, bytes] = {} if values is None else values
        self._lock = _lock or threading.Lock()

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, MemoryStorage)
            and self.read_only == other.read_only
            and (self._values is other._values or self._values == other._values)
        )

    def __hash__(self) -> int:
        # Equality compares the values (as zarr's MemoryStore does, so a pickled copy
        # equals its original), which change: only what equal storages share may go in.
        return hash((type(self).__name__, self.read_only))

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "writable"
        return f"MemoryStorage({len(self._values)} keys, {mode})"

    def __getstate__(self) -> dict[str, Any]:
        with self._lock:
            return {"values": dict(self._values), "read_only": self._read_only}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["values"], read_only=state["read_only"])  # type: ignore[misc]

    @override
    def _get(self, key: str, byte_range: ByteRange | None) -> bytes | None:
        value = self._values.get(key)
        return None if value is None else slice_value(value, byte_range)

    @override
    def _get_many(self, requests: Sequence[ReadRequest]) -> list[bytes | None]:
        with self._lock:
            return [self._get(key, byte_range) for key, byte_range in requests]

    @override
    def _set(self, key: str, value: bytes) -> None:
        with self._lock:
            self._values[key] = value

    @override
    def _set_if_absent(self, key: str, value: bytes) -> bool:
        with self._lock:
            if key in self._values:
                return False
            self._values[key] = value
            return True

    @override
    def _erase(self, key: str) -> None:
        with self._lock:
            self._values.pop(key, None)

    @override
    def _erase_prefix(self, prefix: str) -> None:
        with self._lock:
            for key in [k for k in self._values if k.startswith(prefix)]:
                del self._values[key]

    @override
    def _list_prefix(self, prefix: str) -> Iterator[str]:
        with self._lock:
            keys = sorted(k for k in self._values if k.startswith(prefix))
        return iter(keys)

    @override
    def _size(self, key: str) -> int | None:
        value = self._values.get(key)
        return None if value is None else len(value)

    @override
    def _with_read_only(self, read_only: bool) -> MemoryStorage:
        return MemoryStorage(self._values, read_only=read_only, _lock=self._lock)


class MemoryStore(ZarrStore):
    """An in-memory zarr store; pass it as ``store=`` anywhere zarr takes one.

    Args:
        values: an existing ``dict[str, bytes]`` to serve (shared, not copied).
        read_only: refuse every write with ``ReadOnlyError``.
    """

    storage: MemoryStorage

    def __init__(self, values: dict[str, bytes] | None = None, *, read_only: bool = False) -> None:
        super().__init__(MemoryStorage(values, read_only=read_only))



"""A ``MutableMapping[str, bytes]`` view of any synchronous storage.

For code that wants a dict: ``store.mapping()["group/zarr.json"]``. Reads,
writes and deletes go straight to the storage, so the view is always current
and follows the storage's guarantees (atomic writes, read-only refusal).
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping

from zarrstore.protocol import Storage

__all__ = ["StoreMapping"]


class StoreMapping(MutableMapping[str, bytes]):
    """A live dict view of a storage: keys are store keys, values are bytes."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def __getitem__(self, key: str) -> bytes:
        value = self.storage.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: bytes) -> None:
        self.storage.set(key, value)

    def __delitem__(self, key: str) -> None:
        if not self.storage.exists(key):
            raise KeyError(key)
        self.storage.erase(key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.storage.exists(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.storage.list())

    def __len__(self) -> int:
        return sum(1 for _ in self.storage.list())

    def __repr__(self) -> str:
        return f"StoreMapping({self.storage!r})"

"""A ``MutableMapping[str, bytes]`` view of any synchronous storage.

For code that wants a dict: ``store.mapping()["group/zarr.json"]``. Reads,
writes and deletes go straight to the storage, so the view is always current
and follows the storage's guarantees (atomic writes, read-only refusal).
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping

from zarrstore.errors import InvalidKeyError
from zarrstore.protocol import Storage

__all__ = ["StoreMapping"]


class StoreMapping(MutableMapping[str, bytes]):
    """A live dict view of a storage: keys are store keys, values are bytes.

    As a dict: a key that no store could hold (``""``, ``"a/"``, ``"/a"``, a
    lone surrogate, a key over a store's length limit) is simply not there:
    ``in`` answers ``False``, reading or deleting raises ``KeyError`` (so
    ``get(key, default)`` and ``pop(key, default)`` give the default). Only
    storing one raises the store's ``InvalidKeyError``.
    """

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def __getitem__(self, key: str) -> bytes:
        try:
            value = self.storage.get(key)
        except InvalidKeyError as exc:
            raise KeyError(key) from exc
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: bytes) -> None:
        self.storage.set(key, value)

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self.storage.erase(key)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        try:
            return self.storage.exists(key)
        except InvalidKeyError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.storage.list())

    def __len__(self) -> int:
        return sum(1 for _ in self.storage.list())

    def __repr__(self) -> str:
        return f"StoreMapping({self.storage!r})"

"""The wrapping storage: the base every storage adapter builds on.

An adapter is a ``Storage`` that holds another storage, ``inner``, and changes
what some calls do (log them, count them, refuse them). ``WrappingStorage``
forwards every public protocol method to ``inner`` unchanged, so an adapter
overrides only the calls it cares about, and key validation and read-only
refusal stay ``inner``'s own. It forwards the *public* methods rather than the
primitives so that an inner storage that customises a public method (a
versioned session staging its writes, another adapter) is honoured.

``with_read_only`` re-wraps: it asks ``inner`` for a storage with the new
setting and hands it to ``_with_inner``, which by default makes a shallow copy
of the adapter. The copy shares the adapter's state (the usage log's writer,
the metrics' counters), which matters because zarr itself opens a read-only
view (``mode="r"``) of whatever store it is given.

``WrappingStore`` is the matching zarr-python store: the small ``ZarrStore``
subclass users construct. It accepts any ``ZarrStore`` (its ``.storage`` is
used) or a bare storage; an ``AsyncStorage`` is bridged with ``AsyncToSync``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, override

from zarrstore.adapters.sync_async import AsyncToSync
from zarrstore.protocol import AsyncStorage, DirListing, ReadRequest, Storage, ValueInfo
from zarrstore.ranges import ByteRange
from zarrstore.zarr_bridge import ZarrStore

if TYPE_CHECKING:
    from typing import Self

__all__ = ["StoreLike", "WrappingStorage", "WrappingStore", "storage_of"]

#: What an adapter accepts: a zarr store from this package or a bare storage.
StoreLike = ZarrStore | Storage | AsyncStorage


def storage_of(store: StoreLike, read_only: bool | None = None) -> Storage:
    """The synchronous storage behind ``store``, optionally with a new read-only setting.

    Args:
        store: a ``ZarrStore`` (its ``.storage`` is used), a ``Storage``, or an
            ``AsyncStorage`` (wrapped in ``AsyncToSync``).
        read_only: ``None`` keeps the store's setting; ``True`` / ``False`` asks
            the storage for a view with that setting.

    Raises:
        TypeError: for anything that is not one of those.
    """
    storage = store.storage if isinstance(store, ZarrStore) else store
    if isinstance(storage, AsyncStorage):
        storage = AsyncToSync(storage)
    if not isinstance(storage, Storage):
        raise TypeError(f"expected a ZarrStore or a Storage, got {type(store).__name__}")
    if read_only is not None and read_only != storage.read_only:
        storage = storage.with_read_only(read_only)
    return storage


class WrappingStorage(Storage):
    """A storage that forwards every call to ``inner``; adapters subclass it.

    Args:
        inner: the storage to wrap.
    """

    def __init__(self, inner: Storage) -> None:
        super().__init__(read_only=inner.read_only)
        self.inner = inner

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, WrappingStorage)
            and type(other) is type(self)
            and self.inner == other.inner
        )

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.inner))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"

    def _with_inner(self, inner: Storage) -> Self:
        """This adapter over ``inner`` instead, sharing the adapter's state.

        Override when a copy must not share something (the default is a shallow
        copy, so counters, writers and locks are shared).
        """
        clone = copy.copy(self)
        clone.inner = inner
        clone._read_only = inner.read_only
        return clone

    # -- capabilities are inner's ---------------------------------------------------

    @property
    @override
    def blocking_io(self) -> bool:  # type: ignore[override]  # per instance: inner decides
        """Whether calls may block: whatever ``inner`` says."""
        return self.inner.blocking_io

    @property
    @override
    def blocking_reads(self) -> bool:
        """Whether reads may block: whatever ``inner`` says."""
        return self.inner.blocking_reads

    @property
    @override
    def read_only(self) -> bool:
        return self.inner.read_only

    @property
    @override
    def supports_writes(self) -> bool:
        return self.inner.supports_writes

    @property
    @override
    def supports_deletes(self) -> bool:
        return self.inner.supports_deletes

    @property
    @override
    def supports_listing(self) -> bool:
        return self.inner.supports_listing

    # -- primitives, for completeness (the public methods below never reach them) ---

    @override
    def _get(self, key: str, byte_range: ByteRange | None) -> bytes | None:
        return self.get(key, byte_range)

    @override
    def _set(self, key: str, value: bytes) -> None:
        self.set(key, value)

    @override
    def _erase(self, key: str) -> None:
        self.erase(key)

    @override
    def _list_prefix(self, prefix: str) -> Iterator[str]:
        return self.list_prefix(prefix)

    @override
    def _size(self, key: str) -> int | None:
        return self.size(key)

    @override
    def _with_read_only(self, read_only: bool) -> Self:
        return self._with_inner(self.inner.with_read_only(read_only))

    # -- the public protocol, forwarded ------------------------------------------------

    @override
    def get(self, key: str, byte_range: ByteRange | None = None) -> bytes | None:
        return self.inner.get(key, byte_range)

    @override
    def get_many(self, requests: Iterable[ReadRequest]) -> list[bytes | None]:
        return self.inner.get_many(requests)

    @override
    def size(self, key: str) -> int | None:
        return self.inner.size(key)

    @override
    def size_prefix(self, prefix: str) -> int:
        return self.inner.size_prefix(prefix)

    @override
    def stat(self, key: str) -> ValueInfo | None:
        return self.inner.stat(key)

    @override
    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    @override
    def set(self, key: str, value: bytes) -> None:
        self.inner.set(key, value)

    @override
    def set_if_absent(self, key: str, value: bytes) -> bool:
        return self.inner.set_if_absent(key, value)

    @override
    def erase(self, key: str) -> None:
        self.inner.erase(key)

    @override
    def erase_many(self, keys: Iterable[str]) -> None:
        self.inner.erase_many(keys)

    @override
    def erase_prefix(self, prefix: str) -> None:
        self.inner.erase_prefix(prefix)

    @override
    def list_prefix(self, prefix: str) -> Iterator[str]:
        return self.inner.list_prefix(prefix)

    @override
    def list_dir(self, prefix: str) -> DirListing:
        return self.inner.list_dir(prefix)

    @override
    def is_empty(self, prefix: str) -> bool:
        return self.inner.is_empty(prefix)

    @override
    def with_read_only(self, read_only: bool = True) -> Self:
        return self._with_read_only(read_only)

    @override
    def close(self) -> None:
        self.inner.close()


class WrappingStore(ZarrStore):
    """The zarr-python store over a ``WrappingStorage``; each adapter's store subclasses it.

    ``store.inner`` is the wrapped storage, so ``UsageLog(FilesystemStore(p)).inner``
    is the ``FilesystemStorage``.
    """

    storage: WrappingStorage

    def __init__(self, storage: WrappingStorage) -> None:
        super().__init__(storage)

    @property
    def inner(self) -> Storage:
        """The storage this adapter wraps."""
        return self.storage.inner

"""The store protocol: the seed's readable / writable / listable traits, sync and async.

A store is a flat map from string keys to byte values. ``Storage`` is the
synchronous protocol and ``AsyncStorage`` its async twin; both share method
names, so code reads the same either way. Store authors implement a few
primitives (``_get``, ``_set``, ``_erase``, ``_list_prefix``, ``_size``); every
other operation has a derived default that a store may override when its
backing can do better natively.

The public methods are the one place where keys are validated and read-only
stores refuse writes: a primitive never sees a bad key, and no store can forget
the read-only check. Missing keys read as ``None``; they are not errors.

This module knows nothing of zarr-python: ``zarrstore.zarr_bridge`` turns any
storage into a ``zarr.abc.store.Store``.
"""

from __future__ import annotations

import asyncio
import builtins
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import ClassVar

import attrs

from zarrstore.errors import ReadOnlyError, UnsupportedOperationError
from zarrstore.keys import validate_key, validate_prefix
from zarrstore.ranges import ByteRange
from zarrstore.values import value_bytes

__all__ = ["READ_CALLS", "AsyncStorage", "DirListing", "Storage", "ValueInfo", "children_of"]

ReadRequest = tuple[str, ByteRange | None]

#: The calls that only read (``Storage.blocking_reads`` applies to them, ``blocking_io``
#: to every other call).
READ_CALLS = frozenset({"get", "get_many", "exists", "size", "size_prefix", "stat",
                        "list_prefix", "list_dir", "is_empty"})


@attrs.frozen
class DirListing:
    """The direct children of a prefix: whole keys, and sub-prefixes ending in ``"/"``.

    Both are full paths from the store root and sorted.
    """

    keys: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()


@attrs.frozen
class ValueInfo:
    """What a store can tell about a stored value without reading it.

    ``etag`` is an opaque token that changes whenever the value does (an HTTP
    or object-store ETag; on a file system, modification time, size and inode
    together). ``last_modified`` is when the value was last written, timezone
    aware. Either is ``None`` when the backing cannot tell.
    """

    size: int
    etag: str | None = None
    last_modified: datetime | None = None


def children_of(prefix: str, keys: Iterable[str]) -> DirListing:
    """Group sorted ``keys`` under ``prefix`` into direct child keys and sub-prefixes."""
    child_keys: list[str] = []
    child_prefixes: list[str] = []
    start = len(prefix)
    for key in keys:
        cut = key.find("/", start)
        if cut < 0:
            child_keys.append(key)
        else:
            sub = key[: cut + 1]
            if not child_prefixes or child_prefixes[-1] != sub:
                child_prefixes.append(sub)
    return DirListing(keys=tuple(child_keys), prefixes=tuple(sorted(set(child_prefixes))))


class Storage(ABC):
    """Synchronous store protocol (readable, writable, listable).

    Guarantees every implementation gives: keys are validated before any I/O;
    a read-only storage raises ``ReadOnlyError`` on every write path; ``get``
    of a missing key returns ``None``; listings are sorted.
    """

    #: Whether calls may block on I/O, so async callers should run them in a thread.
    blocking_io: ClassVar[bool] = True

    def __init__(self, *, read_only: bool = False) -> None:
        self._read_only = read_only

    @property
    def blocking_reads(self) -> bool:
        """Whether the read calls (``READ_CALLS``) may block; by default ``blocking_io``.

        A storage whose readers never wait for a writer or a network answers
        ``False`` while its writes may block (LMDB: readers take no lock, the
        one writer waits for another process's transaction): async callers
        then run its reads on the event loop and its writes in a thread.
        """
        return self.blocking_io

    @property
    def read_only(self) -> bool:
        """Whether this storage refuses writes."""
        return self._read_only

    @property
    def supports_writes(self) -> bool:
        """Whether the backing can store values at all (an HTTP store cannot)."""
        return True

    @property
    def supports_deletes(self) -> bool:
        """Whether the backing can erase values."""
        return True

    @property
    def supports_listing(self) -> bool:
        """Whether the backing can enumerate its keys."""
        return True

    # -- primitives a store implements --------------------------------------------

    @abstractmethod
    def _get(self, key: str, byte_range: ByteRange | None) -> bytes | None: ...

    @abstractmethod
    def _set(self, key: str, value: bytes) -> None: ...

    @abstractmethod
    def _erase(self, key: str) -> None: ...

    @abstractmethod
    def _list_prefix(self, prefix: str) -> Iterator[str]: ...

    @abstractmethod
    def _size(self, key: str) -> int | None: ...

    @abstractmethod
    def _with_read_only(self, read_only: bool) -> Storage: ...

    # -- derived defaults; override when the backing can do this natively ---------

    def _get_many(self, requests: Sequence[ReadRequest]) -> list[bytes | None]:
        return [self._get(key, byte_range) for key, byte_range in requests]

    def _list_dir(self, prefix: str) -> DirListing:
        return children_of(prefix, self._list_prefix(prefix))

    def _is_empty(self, prefix: str) -> bool:
        # Stops at the first key, but a backing that lists whole may have read them all.
        return next(iter(self._list_prefix(prefix)), None) is None

    def _size_prefix(self, prefix: str) -> int:
        return sum(self._size(key) or 0 for key in list(self._list_prefix(prefix)))

    def _erase_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._erase(key)

    def _erase_prefix(self, prefix: str) -> None:
        self._erase_many(list(self._list_prefix(prefix)))

    def _stat(self, key: str) -> ValueInfo | None:
        # Only the size; override when the backing knows an ETag or a modification time.
        size = self._size(key)
        return None if size is None else ValueInfo(size=size)

    def _set_if_absent(self, key: str, value: bytes) -> bool:
        # Not atomic against other writers; stores with a native primitive override it.
        if self._size(key) is not None:
            return False
        self._set(key, value)
        return True

    # -- the public protocol --------------------------------------------------------

    def _check_writable(self) -> None:
        if self._read_only:
            raise ReadOnlyError()
        if not self.supports_writes:
            raise ReadOnlyError(f"{type(self).__name__} cannot store values")

    def get(self, key: str, byte_range: ByteRange | None = None) -> bytes | None:
        """The value at ``key`` (or the part ``byte_range`` asks for); ``None`` if missing."""
        return self._get(validate_key(key), byte_range)

    def get_many(self, requests: Iterable[ReadRequest]) -> list[bytes | None]:
        """Many reads in one call, results in request order (``None`` for missing keys)."""
        batch = [(validate_key(key), byte_range) for key, byte_range in requests]
        return self._get_many(batch) if batch else []

    def size(self, key: str) -> int | None:
        """The length in bytes of the value at ``key``; ``None`` if missing."""
        return self._size(validate_key(key))

    def size_prefix(self, prefix: str) -> int:
        """Total bytes of all values under ``prefix``."""
        return self._size_prefix(validate_prefix(prefix))

    def stat(self, key: str) -> ValueInfo | None:
        """Size (and ETag, modification time where known) of ``key``; ``None`` if missing."""
        return self._stat(validate_key(key))

    def exists(self, key: str) -> bool:
        """Whether a value is stored at ``key``."""
        return self.size(key) is not None

    def set(self, key: str, value: bytes) -> None:
        """Store ``value`` at ``key``, replacing any previous value atomically."""
        validate_key(key)
        self._check_writable()
        self._set(key, value if type(value) is bytes else value_bytes(value))

    def set_if_absent(self, key: str, value: bytes) -> bool:
        """Store ``value`` only if ``key`` holds nothing; return whether it was stored."""
        validate_key(key)
        self._check_writable()
        return self._set_if_absent(key, value_bytes(value))

    def erase(self, key: str) -> None:
        """Remove ``key``; erasing a missing key is not an error."""
        validate_key(key)
        self._check_writable()
        self._erase(key)

    def erase_many(self, keys: Iterable[str]) -> None:
        """Remove every key in ``keys``."""
        batch = [validate_key(key) for key in keys]
        self._check_writable()
        if batch:
            self._erase_many(batch)

    def erase_prefix(self, prefix: str) -> None:
        """Remove every key under ``prefix`` (``""`` empties the store)."""
        validate_prefix(prefix)
        self._check_writable()
        self._erase_prefix(prefix)

    def list(self) -> Iterator[str]:
        """Every key, sorted."""
        return self.list_prefix("")

    def list_prefix(self, prefix: str) -> Iterator[str]:
        """Every key under ``prefix``, sorted."""
        validate_prefix(prefix)
        if not self.supports_listing:
            raise UnsupportedOperationError(f"{type(self).__name__} cannot list keys")
        return self._list_prefix(prefix)

    def list_dir(self, prefix: str) -> DirListing:
        """The direct children of ``prefix``: keys and sub-prefixes."""
        validate_prefix(prefix)
        if not self.supports_listing:
            raise UnsupportedOperationError(f"{type(self).__name__} cannot list keys")
        return self._list_dir(prefix)

    def is_empty(self, prefix: str) -> bool:
        """Whether no key lies under ``prefix`` (``""``: whether the store holds nothing).

        Stores that can look at one key (``LMDBStorage``) do; the default asks
        ``list_prefix``. zarr's ``Store.is_empty`` comes here through ``ZarrStore``.

        Raises:
            InvalidKeyError: ``prefix`` is not ``""`` or a key followed by ``"/"``.
            UnsupportedOperationError: the store cannot list keys.
        """
        validate_prefix(prefix)
        if not self.supports_listing:
            raise UnsupportedOperationError(f"{type(self).__name__} cannot list keys")
        return self._is_empty(prefix)

    def with_read_only(self, read_only: bool = True) -> Storage:
        """A storage on the same backing with the given read-only setting."""
        return self._with_read_only(read_only)

    def close(self) -> None:  # noqa: B027 - a default, not a primitive
        """Release resources (files, connections); the default holds none."""


class AsyncStorage(ABC):
    """Asynchronous twin of ``Storage``: the same names and guarantees, awaited.

    Used for backings whose clients are async (HTTP, object storage). Sync code
    uses them through ``zarrstore.adapters.AsyncToSync``.
    """

    def __init__(self, *, read_only: bool = False) -> None:
        self._read_only = read_only

    @property
    def read_only(self) -> bool:
        """Whether this storage refuses writes."""
        return self._read_only

    @property
    def supports_writes(self) -> bool:
        """Whether the backing can store values at all."""
        return True

    @property
    def supports_deletes(self) -> bool:
        """Whether the backing can erase values."""
        return True

    @property
    def supports_listing(self) -> bool:
        """Whether the backing can enumerate its keys."""
        return True

    @abstractmethod
    async def _get(self, key: str, byte_range: ByteRange | None) -> bytes | None: ...

    @abstractmethod
    async def _set(self, key: str, value: bytes) -> None: ...

    @abstractmethod
    async def _erase(self, key: str) -> None: ...

    @abstractmethod
    async def _list_prefix(self, prefix: str) -> builtins.list[str]: ...

    @abstractmethod
    async def _size(self, key: str) -> int | None: ...

    @abstractmethod
    def _with_read_only(self, read_only: bool) -> AsyncStorage: ...

    async def _get_many(self, requests: Sequence[ReadRequest]) -> builtins.list[bytes | None]:
        return list(await asyncio.gather(*(self._get(k, r) for k, r in requests)))

    async def _list_dir(self, prefix: str) -> DirListing:
        return children_of(prefix, await self._list_prefix(prefix))

    async def _is_empty(self, prefix: str) -> bool:
        return not await self._list_prefix(prefix)

    async def _size_prefix(self, prefix: str) -> int:
        return sum([(await self._size(key)) or 0 for key in await self._list_prefix(prefix)])

    async def _erase_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            await self._erase(key)

    async def _erase_prefix(self, prefix: str) -> None:
        await self._erase_many(await self._list_prefix(prefix))

    async def _stat(self, key: str) -> ValueInfo | None:
        size = await self._size(key)
        return None if size is None else ValueInfo(size=size)

    async def _set_if_absent(self, key: str, value: bytes) -> bool:
        if await self._size(key) is not None:
            return False
        await self._set(key, value)
        return True

    def _check_writable(self) -> None:
        if self._read_only:
            raise ReadOnlyError()
        if not self.supports_writes:
            raise ReadOnlyError(f"{type(self).__name__} cannot store values")

    async def get(self, key: str, byte_range: ByteRange | None = None) -> bytes | None:
        """The value at ``key`` (or part of it); ``None`` if missing."""
        return await self._get(validate_key(key), byte_range)

    async def get_many(self, requests: Iterable[ReadRequest]) -> builtins.list[bytes | None]:
        """Many reads at once, results in request order."""
        batch = [(validate_key(key), byte_range) for key, byte_range in requests]
        return await self._get_many(batch) if batch else []

    async def size(self, key: str) -> int | None:
        """The length of the value at ``key``; ``None`` if missing."""
        return await self._size(validate_key(key))

    async def size_prefix(self, prefix: str) -> int:
        """Total bytes of all values under ``prefix``."""
        return await self._size_prefix(validate_prefix(prefix))

    async def stat(self, key: str) -> ValueInfo | None:
        """Size (and ETag, modification time where known) of ``key``; ``None`` if missing."""
        return await self._stat(validate_key(key))

    async def exists(self, key: str) -> bool:
        """Whether a value is stored at ``key``."""
        return await self.size(key) is not None

    async def set(self, key: str, value: bytes) -> None:
        """Store ``value`` at ``key``, replacing any previous value atomically."""
        validate_key(key)
        self._check_writable()
        await self._set(key, value if type(value) is bytes else value_bytes(value))

    async def set_if_absent(self, key: str, value: bytes) -> bool:
        """Store ``value`` only if ``key`` holds nothing; return whether it was stored."""
        validate_key(key)
        self._check_writable()
        return await self._set_if_absent(key, value_bytes(value))

    async def erase(self, key: str) -> None:
        """Remove ``key``; erasing a missing key is not an error."""
        validate_key(key)
        self._check_writable()
        await self._erase(key)

    async def erase_many(self, keys: Iterable[str]) -> None:
        """Remove every key in ``keys``."""
        batch = [validate_key(key) for key in keys]
        self._check_writable()
        if batch:
            await self._erase_many(batch)

    async def erase_prefix(self, prefix: str) -> None:
        """Remove every key under ``prefix``."""
        validate_prefix(prefix)
        self._check_writable()
        await self._erase_prefix(prefix)

    async def list(self) -> builtins.list[str]:
        """Every key, sorted."""
        return await self.list_prefix("")

    async def list_prefix(self, prefix: str) -> builtins.list[str]:
        """Every key under ``prefix``, sorted."""
        validate_prefix(prefix)
        if not self.supports_listing:
            raise UnsupportedOperationError(f"{type(self).__name__} cannot list keys")
        return await self._list_prefix(prefix)

    async def list_dir(self, prefix: str) -> DirListing:
        """The direct children of ``prefix``: keys and sub-prefixes."""
        validate_prefix(prefix)
        if not self.supports_listing:
            raise UnsupportedOperationError(f"{type(self).__name__} cannot list keys")
        return await self._list_dir(prefix)

    async def is_empty(self, prefix: str) -> bool:
        """Whether no key lies under ``prefix``; ``Storage.is_empty``'s twin."""
        validate_prefix(prefix)
        if not self.supports_listing:
            raise UnsupportedOperationError(f"{type(self).__name__} cannot list keys")
        return await self._is_empty(prefix)

    def with_read_only(self, read_only: bool = True) -> AsyncStorage:
        """A storage on the same backing with the given read-only setting."""
        return self._with_read_only(read_only)

    async def aclose(self) -> None:  # noqa: B027 - a default, not a primitive
        """Release resources (sessions, connections); the default holds none."""


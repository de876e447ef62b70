"""The bridge that makes any zarrstore storage a zarr-python ``Store``.

zarr-python accepts only instances of its own ``zarr.abc.store.Store`` as
``store=``; ``ZarrStore`` is that class, implemented once over the
``zarrstore.protocol`` storages (sync or async). Every public store and adapter
is a small subclass of it, so all of them pass ``zarr.open_group(store=...)``,
``xarray.open_zarr(...)`` and zarr's ``StoreTests`` in the same way.

It is the only module that imports zarr. It sits below the concrete stores in
the layering (they subclass it), which is the one place where zarr's "must be
an instance of our ABC" rule shapes our layers.

Every read and write path zarr uses — ``get``, ``get_partial_values``,
``get_ranges`` (sharded reads), the ``*_sync`` surface, ``_get_many`` and
``_set_many`` — goes to the storage, so adapters below see every call.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from zarr.abc.store import (
    ByteRequest,
    OffsetByteRequest,
    RangeByteRequest,
    Store,
    SuffixByteRequest,
)
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype

from zarrstore.errors import KeyNotFoundError, ReadOnlyError
from zarrstore.mapping import StoreMapping
from zarrstore.protocol import READ_CALLS, AsyncStorage, DirListing, Storage
from zarrstore.ranges import ByteRange, OffsetRequest, RangeRequest, SuffixRequest

if TYPE_CHECKING:
    from typing import Self

__all__ = ["ZarrStore", "to_byte_range"]

T = TypeVar("T")


def to_byte_range(byte_range: ByteRequest | None) -> ByteRange | None:
    """Translate zarr's ``ByteRequest`` into a zarrstore byte range.

    Raises:
        TypeError: for anything that is not a zarr byte request (zarr's wording).
    """
    if byte_range is None:
        return None
    if isinstance(byte_range, RangeByteRequest):
        return RangeRequest(byte_range.start, byte_range.end)
    if isinstance(byte_range, OffsetByteRequest):
        return OffsetRequest(byte_range.offset)
    if isinstance(byte_range, SuffixByteRequest):
        return SuffixRequest(byte_range.suffix)
    raise TypeError(f"Unexpected byte_range, got {byte_range!r}.")


def _as_prefix(path: str) -> str:
    """Read a zarr directory path as a protocol prefix.

    ``""`` and ``"/"`` are the root (``""``); ``"a/b"`` and ``"a/b/"`` are the
    directory ``"a/b/"``. A path without its trailing ``"/"`` names the
    directory, never a string prefix, so ``"u"`` does not reach ``"u10/..."``:
    zarr's callers (``nchunks_initialized`` lists ``"u"`` and relativizes each
    key to ``"u/"``) need exactly that, and zarr's ``LocalStore`` and obstore
    answer so. Anything else (``"a//"``, ``"/a"``) is left for the protocol's
    validator to refuse with ``InvalidKeyError``.
    """
    if path in ("", "/"):
        return ""
    return path if path.endswith("/") else path + "/"



def flat_view(value: Buffer) -> memoryview | None:
    """A flat byte view of zarr's ``value`` without a copy, or ``None`` if it has none.

    A CPU buffer is a 1-D NumPy byte array (``Buffer.as_buffer_like``); a GPU
    one is copied to the host by it, as ``to_bytes`` would. A strided array
    has no flat view.
    """
    view = memoryview(value.as_buffer_like())
    if not view.c_contiguous:
        return None
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")

class ZarrStore(Store):
    """A zarr-python ``Store`` over a zarrstore ``Storage`` or ``AsyncStorage``.

    Construct it directly to hand any storage to zarr, or use one of the named
    stores (``MemoryStore``, ``FilesystemStore``, ...) that subclass it. The
    wrapped storage is ``store.storage``; ``store.mapping()`` gives a dict view.
    """

    storage: Storage | AsyncStorage

    def __init__(self, storage: Storage | AsyncStorage) -> None:
        super().__init__(read_only=storage.read_only)
        self.storage = storage

    # -- identity -------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ZarrStore) and type(self) is type(other) and (
            self.storage == other.storage
        )

    def __hash__(self) -> int:
        # Equal stores hash alike (a pickled copy, another ``with_read_only`` view):
        # by identity, an equal copy missed a dict or set entry of the original.
        return hash((type(self).__name__, self.storage))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.storage!r})"

    def with_read_only(self, read_only: bool = False) -> Self:
        """A store on the same backing with the given read-only setting (not yet open)."""
        clone = copy.copy(self)
        clone.storage = self.storage.with_read_only(read_only)
        clone._read_only = read_only
        clone._is_open = False
        return clone

    def mapping(self) -> StoreMapping:
        """A ``MutableMapping[str, bytes]`` view of this store."""
        if isinstance(self.storage, AsyncStorage):
            raise TypeError("wrap an async storage in zarrstore.AsyncToSync for a mapping view")
        return StoreMapping(self.storage)

    @property
    def supports_writes(self) -> bool:
        """Whether the backing can store values."""
        return self.storage.supports_writes

    @property
    def supports_deletes(self) -> bool:
        """Whether the backing can erase values."""
        return self.storage.supports_deletes

    @property
    def supports_listing(self) -> bool:
        """Whether the backing can enumerate keys."""
        return self.storage.supports_listing

    @property
    def _supports_sync_io(self) -> bool:
        return isinstance(self.storage, Storage)

    def close(self) -> None:
        """Close the store and release the storage's resources."""
        super().close()
        if isinstance(self.storage, Storage):
            self.storage.close()

    # -- calling the storage --------------------------------------------------------

    async def _call(self, name: str, *args: Any) -> Any:
        method: Callable[..., Any] = getattr(self.storage, name)
        if isinstance(self.storage, AsyncStorage):
            return await method(*args)
        storage = self.storage
        if storage.blocking_reads if name in READ_CALLS else storage.blocking_io:
            return await asyncio.to_thread(method, *args)
        return method(*args)

    def _sync_storage(self) -> Storage:
        if not isinstance(self.storage, Storage):
            raise TypeError(
                f"{type(self).__name__} wraps an async storage; use the async API or AsyncToSync"
            )
        return self.storage

    def _writable(self) -> None:
        if self.read_only:
            raise ReadOnlyError()

    # -- reads ------------------------------------------------------------------------

    async def get(
        self,
        key: str,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        """Read a value or part of it; ``None`` if the key is missing."""
        storage = self.storage
        request = None if byte_range is None else to_byte_range(byte_range)
        if isinstance(storage, Storage) and not storage.blocking_reads:
            value = storage.get(key, request)  # as ``_call`` would, without its dispatch
        else:
            value = await self._call("get", key, request)
        if value is None:
            return None
        return (prototype or default_buffer_prototype()).buffer.from_bytes(value)

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        """Read many (key, range) pairs in one storage call."""
        requests = [(key, to_byte_range(r)) for key, r in key_ranges]
        values = await self._call("get_many", requests)
        return [None if v is None else prototype.buffer.from_bytes(v) for v in values]

    async def _get_many(
        self, requests: Iterable[tuple[str, BufferPrototype, ByteRequest | None]]
    ) -> AsyncGenerator[tuple[str, Buffer | None], None]:
        batch = list(requests)
        values = await self._call("get_many", [(k, to_byte_range(r)) for k, _, r in batch])
        for (key, prototype, _), value in zip(batch, values, strict=True):
            yield key, None if value is None else prototype.buffer.from_bytes(value)

    async def get_ranges(
        self,
        key: str,
        byte_ranges: Sequence[ByteRequest | None],
        *,
        prototype: BufferPrototype,
        max_concurrency: int = 10,
        max_gap_bytes: int = 1 << 20,
        max_coalesced_bytes: int = 16 << 20,
    ) -> AsyncIterator[Sequence[tuple[int, Buffer | None]]]:
        """Read many ranges of one key in a single storage ``get_many`` call."""
        values = await self._call("get_many", [(key, to_byte_range(r)) for r in byte_ranges])
        yield _ranges_result(key, values, prototype)

    def get_ranges_sync(
        self,
        key: str,
        byte_ranges: Sequence[ByteRequest | None],
        *,
        prototype: BufferPrototype,
        max_gap_bytes: int = 1 << 20,
        max_coalesced_bytes: int = 16 << 20,
    ) -> Sequence[tuple[int, Buffer | None]]:
        """Synchronous twin of ``get_ranges``."""
        storage = self._sync_storage()
        values = storage.get_many([(key, to_byte_range(r)) for r in byte_ranges])
        return _ranges_result(key, values, prototype)

    async def exists(self, key: str) -> bool:
        """Whether ``key`` holds a value."""
        return bool(await self._call("exists", key))

    async def getsize(self, key: str) -> int:
        """Size of the value at ``key``; ``FileNotFoundError`` if missing."""
        size = await self._call("size", key)
        if size is None:
            raise KeyNotFoundError(key)
        return int(size)

    async def getsize_prefix(self, prefix: str) -> int:
        """Total bytes under the directory ``prefix``."""
        return int(await self._call("size_prefix", _as_prefix(prefix)))

    # -- writes -------------------------------------------------------------------

    async def set(self, key: str, value: Buffer) -> None:
        """Store ``value`` at ``key``."""
        self._writable()
        if not isinstance(value, Buffer):
            raise TypeError(f"expected Buffer, got {type(value).__name__}")
        if self._view_at_bytes is not None and len(value) >= self._view_at_bytes:
            view = flat_view(value)
            if view is not None and self._store_view(key, view):
                return
        data = value.to_bytes()
        if not self._store_now(key, data):
            await self._store(key, data)

    #: ``set`` offers values of at least this many bytes to ``_store_view`` first; ``None``:
    #: never (the default).
    _view_at_bytes: int | None = None

    def _store_view(self, key: str, value: memoryview) -> bool:
        """Store ``value`` (a view of zarr's buffer) at once, or ``False`` to store a copy.

        For stores that consume a large value before returning (hash it, copy
        it into their own storage): one copy of it fewer than ``to_bytes``. The
        view must not be kept: zarr may reuse its buffer once ``set`` returns.
        """
        return False

    def _store_now(self, key: str, value: bytes) -> bool:
        """Store ``value`` at once if that needs no waiting; ``False``: ``set`` awaits ``_store``.

        A store whose lone writes cost less than a coroutine (an embedded
        backend) overrides it; the default never does.
        """
        return False

    async def _store(self, key: str, value: bytes) -> None:
        """Where ``set`` hands a value to the storage; a store that batches overrides it."""
        await self._call("set", key, value)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        """Store ``value`` only if ``key`` is empty.

        Raises:
            TypeError: ``value`` is not a zarr ``Buffer`` (as ``set``, and zarr's
                ``LocalStore``, say; it was an ``AttributeError``).
        """
        self._writable()
        if not isinstance(value, Buffer):
            raise TypeError(f"expected Buffer, got {type(value).__name__}")
        await self._call("set_if_absent", key, value.to_bytes())

    async def _set_many(self, values: Iterable[tuple[str, Buffer]]) -> None:
        for key, value in values:
            await self.set(key, value)

    async def delete(self, key: str) -> None:
        """Erase ``key`` (missing keys are fine)."""
        self._writable()
        await self._call("erase", key)

    async def delete_dir(self, prefix: str) -> None:
        """Erase everything under the directory ``prefix``."""
        self._writable()
        await self._call("erase_prefix", _as_prefix(prefix))

    # -- listing ------------------------------------------------------------------

    async def _listed(self, prefix: str) -> list[str]:
        if isinstance(self.storage, AsyncStorage):
            return await self.storage.list_prefix(prefix)
        return list(await self._call("list_prefix", prefix))

    async def list(self) -> AsyncIterator[str]:
        """Every key."""
        for key in await self._listed(""):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        """Every key under the directory ``prefix`` (``"a"`` is ``"a/"``; ``"/"`` is the root)."""
        for key in await self._listed(_as_prefix(prefix)):
            yield key

    async def is_empty(self, prefix: str) -> bool:
        """Whether no key lies under the directory ``prefix`` (``""`` or ``"/"``: the store).

        One storage call, ``is_empty``, where zarr's default lists the prefix:
        a store that can look at one key (``LMDBStore``) reads one.

        Raises:
            UnsupportedOperationError: the storage cannot list (a ``NotImplementedError``,
                as zarr raises).
        """
        return bool(await self._call("is_empty", _as_prefix(prefix)))

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        """Names of the direct children of the directory ``prefix``, each once, sorted.

        A name that is both a key and a sub-directory (``g/x`` beside
        ``g/x/zarr.json``) is one child, as in zarr's ``MemoryStore``; an empty
        name (a directory marker object) is never a child.
        """
        base = _as_prefix(prefix)
        listing: DirListing = await self._call("list_dir", base)
        names = {key[len(base) :] for key in listing.keys if key.startswith(base)}
        names.update(sub[len(base) : -1] for sub in listing.prefixes if sub.startswith(base))
        names.discard("")
        for name in sorted(names):
            yield name

    # -- the synchronous surface (zarr >= 3.4 uses it when present) ---------------

    def get_sync(
        self,
        key: str,
        *,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        """Synchronous ``get``."""
        value = self._sync_storage().get(key, to_byte_range(byte_range))
        if value is None:
            return None
        return (prototype or default_buffer_prototype()).buffer.from_bytes(value)

    def set_sync(self, key: str, value: Buffer) -> None:
        """Synchronous ``set``.

        Raises:
            TypeError: ``value`` is not a zarr ``Buffer``.
        """
        self._writable()
        if not isinstance(value, Buffer):
            raise TypeError(f"expected Buffer, got {type(value).__name__}")
        self._sync_storage().set(key, value.to_bytes())

    def delete_sync(self, key: str) -> None:
        """Synchronous ``delete``."""
        self._writable()
        self._sync_storage().erase(key)


def _ranges_result(
    key: str, values: Sequence[bytes | None], prototype: BufferPrototype
) -> list[tuple[int, Buffer | None]]:
    if any(v is None for v in values):
        raise BaseExceptionGroup("chunk read failed", [FileNotFoundError(key)])
    return [(i, prototype.buffer.from_bytes(v)) for i, v in enumerate(values) if v is not None]

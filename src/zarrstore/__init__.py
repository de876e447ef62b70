"""zarrstore: the Zarr store family and its adapters.

Stores: ``MemoryStore``, ``FilesystemStore`` (and, with the ``remote`` extra,
``HTTPStore`` and ``ObjectStore``). Each is a ``zarr.abc.store.Store``: pass it
as ``store=`` to ``zarr.open_group`` or ``xarray.open_zarr``. Underneath, each
speaks the small sync protocol ``zarrstore.protocol.Storage`` (or its async
twin), which the adapters and the versioned engine build on.
"""

from zarrstore.adapters import AsyncToSync, PerformanceMetrics, ReadOnly, SyncToAsync, UsageLog
from zarrstore.errors import (
    InvalidByteRangeError,
    InvalidKeyError,
    KeyNotFoundError,
    ReadOnlyError,
    StorageIOError,
    UnsupportedOperationError,
    ZarrStoreError,
)
from zarrstore.filesystem import FilesystemStorage, FilesystemStore
from zarrstore.mapping import StoreMapping
from zarrstore.memory import MemoryStorage, MemoryStore
from zarrstore.protocol import AsyncStorage, DirListing, Storage
from zarrstore.ranges import ByteRange, OffsetRequest, RangeRequest, SuffixRequest
from zarrstore.zarr_bridge import ZarrStore

__all__ = [
    "AsyncStorage",
    "AsyncToSync",
    "ByteRange",
    "DirListing",
    "FilesystemStorage",
    "FilesystemStore",
    "InvalidByteRangeError",
    "InvalidKeyError",
    "KeyNotFoundError",
    "MemoryStorage",
    "MemoryStore",
    "OffsetRequest",
    "PerformanceMetrics",
    "RangeRequest",
    "ReadOnly",
    "ReadOnlyError",
    "Storage",
    "StorageIOError",
    "StoreMapping",
    "SuffixRequest",
    "SyncToAsync",
    "UnsupportedOperationError",
    "UsageLog",
    "ZarrStore",
    "ZarrStoreError",
]

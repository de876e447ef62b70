"""zarrstore: the Zarr store family and its adapters.

Stores: ``MemoryStore``, ``FilesystemStore``, ``LMDBStore`` (and, with the ``remote``
extra, ``HTTPStore``, ``ObjectStore``, ``OpendalStore`` and ``AsyncOpendalStore``).
Each is a ``zarr.abc.store.Store``: pass it as ``store=`` to
``zarr.open_group`` or ``xarray.open_zarr``. Underneath, each
speaks the small sync protocol ``zarrstore.protocol.Storage`` (or its async
twin), which the adapters and the versioned engine build on.
"""

import importlib
from typing import TYPE_CHECKING

from zarrstore.adapters import AsyncToSync, PerformanceMetrics, ReadOnly, SyncToAsync, UsageLog
from zarrstore.errors import (
    CorruptStorageError,
    ForkedProcessError,
    InvalidByteRangeError,
    InvalidKeyError,
    KeyNotFoundError,
    ReadOnlyError,
    StorageFullError,
    StorageIOError,
    StorageReplacedError,
    StorageTimeoutError,
    UnsupportedOperationError,
    ZarrStoreError,
)
from zarrstore.filesystem import FilesystemStorage, FilesystemStore
from zarrstore.mapping import StoreMapping
from zarrstore.memory import MemoryStorage, MemoryStore
from zarrstore.protocol import AsyncStorage, DirListing, Storage, ValueInfo
from zarrstore.ranges import ByteRange, OffsetRequest, RangeRequest, SuffixRequest
from zarrstore.zarr_bridge import ZarrStore

if TYPE_CHECKING:
    from zarrstore.http import HTTPStorage, HTTPStore
    from zarrstore.lmdb import LMDBStorage, LMDBStore
    from zarrstore.object import ObjectStorage, ObjectStore
    from zarrstore.opendal import (
        AsyncOpendalStorage,
        AsyncOpendalStore,
        OpendalStorage,
        OpendalStore,
    )

__all__ = [
    "AsyncOpendalStorage",
    "AsyncOpendalStore",
    "AsyncStorage",
    "AsyncToSync",
    "ByteRange",
    "CorruptStorageError",
    "DirListing",
    "FilesystemStorage",
    "FilesystemStore",
    "ForkedProcessError",
    "HTTPStorage",
    "HTTPStore",
    "InvalidByteRangeError",
    "InvalidKeyError",
    "KeyNotFoundError",
    "LMDBStorage",
    "LMDBStore",
    "MemoryStorage",
    "MemoryStore",
    "ObjectStorage",
    "ObjectStore",
    "OffsetRequest",
    "OpendalStorage",
    "OpendalStore",
    "PerformanceMetrics",
    "RangeRequest",
    "ReadOnly",
    "ReadOnlyError",
    "Storage",
    "StorageFullError",
    "StorageIOError",
    "StorageReplacedError",
    "StorageTimeoutError",
    "StoreMapping",
    "SuffixRequest",
    "SyncToAsync",
    "UnsupportedOperationError",
    "UsageLog",
    "ValueInfo",
    "ZarrStore",
    "ZarrStoreError",
]

#: Stores imported on first use: the remote ones need the ``remote`` extra
#: (aiohttp, obstore, opendal), so ``import zarrstore`` works without it; the LMDB
#: store loads ``lmdb`` (and its at-fork hook) only for those who use it.
_REMOTE = {
    "LMDBStorage": "zarrstore.lmdb",
    "LMDBStore": "zarrstore.lmdb",
    "HTTPStorage": "zarrstore.http",
    "HTTPStore": "zarrstore.http",
    "ObjectStorage": "zarrstore.object",
    "ObjectStore": "zarrstore.object",
    "OpendalStorage": "zarrstore.opendal",
    "OpendalStore": "zarrstore.opendal",
    "AsyncOpendalStorage": "zarrstore.opendal",
    "AsyncOpendalStore": "zarrstore.opendal",
}


def __getattr__(name: str) -> object:
    """Import a lazily loaded store on first use (remote ones need the ``remote`` extra)."""
    if name not in _REMOTE:
        raise AttributeError(f"module 'zarrstore' has no attribute {name!r}")
    return getattr(importlib.import_module(_REMOTE[name]), name)

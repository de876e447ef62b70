"""Adapters: stores that wrap another store to add one behaviour.

Each adapter is a ``Storage`` that wraps an inner storage (the logic) and a
small zarr store that users construct around any store of this package:

* ``UsageLog`` — one line per storage call, to any text writer or logger;
* ``PerformanceMetrics`` — exact counts of reads, writes, bytes and listings;
* ``ReadOnly`` — refuses every write;
* ``AsyncToSync`` / ``SyncToAsync`` — bridge the sync and async protocols.

Adapters stack in any order: ``PerformanceMetrics(UsageLog(FilesystemStore(p)))``.
"""

from zarrstore.adapters.base import StoreLike, WrappingStorage, WrappingStore, storage_of
from zarrstore.adapters.metrics import (
    Measurement,
    OperationTiming,
    PerformanceMetrics,
    PerformanceMetricsStorage,
)
from zarrstore.adapters.read_only import ReadOnly, ReadOnlyStorage
from zarrstore.adapters.sync_async import AsyncToSync, Runner, SyncToAsync, run_in_background_loop
from zarrstore.adapters.usage_log import UsageLog, UsageLogStorage, utc_timestamp

__all__ = [
    "AsyncToSync",
    "Measurement",
    "OperationTiming",
    "PerformanceMetrics",
    "PerformanceMetricsStorage",
    "ReadOnly",
    "ReadOnlyStorage",
    "Runner",
    "StoreLike",
    "SyncToAsync",
    "UsageLog",
    "UsageLogStorage",
    "WrappingStorage",
    "WrappingStore",
    "run_in_background_loop",
    "storage_of",
    "utc_timestamp",
]

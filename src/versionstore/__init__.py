"""versionstore: git-like history for Zarr data.

Quick start::

    import versionstore as vs, zarr
    repo = vs.Repository.create("my-repo")  # an LMDB directory (or vs.in_memory_storage())
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="t", shape=(100,), dtype="f4")[:] = 1
    snapshot_id = session.commit("first")
"""

import importlib
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _installed_version
from typing import TYPE_CHECKING

from versionstore.clone import copy_repository
from versionstore.errors import (
    AmendInitialSnapshotError,
    BackendError,
    BranchNotFoundError,
    ConflictError,
    CorruptObjectError,
    CorruptRepositoryError,
    DiskFullError,
    ForkedProcessError,
    ImmutableTagError,
    InvalidMoveError,
    InvalidRefNameError,
    MaintenanceConflictError,
    MergeConflict,
    MergeConflictError,
    NonFastForwardError,
    NothingToCommitError,
    NoVirtualChunkStoreError,
    ObjectTooLargeError,
    ProtectedBranchError,
    PurgeBlockedError,
    ReadOnlyRepositoryError,
    ReadOnlySessionError,
    RefExistsError,
    RefNotFoundError,
    RepositoryBusyError,
    RepositoryExistsError,
    RepositoryNotFoundError,
    RepositoryReplacedError,
    RepositoryURLError,
    SessionNotFoundError,
    ShortGracePeriodWarning,
    SnapshotCollectedError,
    SnapshotNotFoundError,
    StorageAccessDeniedError,
    StorageNotFoundError,
    StorageThrottledError,
    StorageTimeoutError,
    StorageUnreachableError,
    TagNotFoundError,
    UnsafeStorageError,
    UnsupportedFormatError,
    VersionStoreError,
    VirtualChunkError,
    VirtualSourceChangedError,
    VirtualSourceMissingError,
)
from versionstore.gc import GCSummary
from versionstore.history import Diff, SnapshotInfo
from versionstore.importing import ImportSummary, import_zarr
from versionstore.kerchunk import KerchunkImport, import_kerchunk
from versionstore.opslog import OpsLogEntry
from versionstore.repository import PurgeResult, Repository
from versionstore.session import Session
from versionstore.session_store import SessionStore
from versionstore.storage import InMemoryStorage, LMDBStorage, in_memory_storage, lmdb_storage
from versionstore.transfer import TransferSummary
from versionstore.usage import ArrayUsage, CompactReport, SnapshotUsage, VersionUsage
from versionstore.virtual import VirtualChunkSpec, VirtualChunkStores

if TYPE_CHECKING:
    from versionstore.cloud import (
        ObjectStorage,
        azure_storage,
        gcs_storage,
        object_storage,
        s3_storage,
    )

try:
    __version__ = _installed_version("versionstore")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AmendInitialSnapshotError",
    "ArrayUsage",
    "BackendError",
    "BranchNotFoundError",
    "CompactReport",
    "ConflictError",
    "CorruptObjectError",
    "CorruptRepositoryError",
    "Diff",
    "DiskFullError",
    "ForkedProcessError",
    "GCSummary",
    "ImmutableTagError",
    "ImportSummary",
    "InMemoryStorage",
    "InvalidMoveError",
    "InvalidRefNameError",
    "KerchunkImport",
    "LMDBStorage",
    "MaintenanceConflictError",
    "MergeConflict",
    "MergeConflictError",
    "NoVirtualChunkStoreError",
    "NonFastForwardError",
    "NothingToCommitError",
    "ObjectStorage",
    "ObjectTooLargeError",
    "OpsLogEntry",
    "ProtectedBranchError",
    "PurgeBlockedError",
    "PurgeResult",
    "ReadOnlyRepositoryError",
    "ReadOnlySessionError",
    "RefExistsError",
    "RefNotFoundError",
    "Repository",
    "RepositoryBusyError",
    "RepositoryExistsError",
    "RepositoryNotFoundError",
    "RepositoryReplacedError",
    "RepositoryURLError",
    "Session",
    "SessionNotFoundError",
    "SessionStore",
    "ShortGracePeriodWarning",
    "SnapshotCollectedError",
    "SnapshotInfo",
    "SnapshotNotFoundError",
    "SnapshotUsage",
    "StorageAccessDeniedError",
    "StorageNotFoundError",
    "StorageThrottledError",
    "StorageTimeoutError",
    "StorageUnreachableError",
    "TagNotFoundError",
    "TransferSummary",
    "UnsafeStorageError",
    "UnsupportedFormatError",
    "VersionStoreError",
    "VersionUsage",
    "VirtualChunkError",
    "VirtualChunkSpec",
    "VirtualChunkStores",
    "VirtualSourceChangedError",
    "VirtualSourceMissingError",
    "azure_storage",
    "copy_repository",
    "gcs_storage",
    "import_kerchunk",
    "import_zarr",
    "in_memory_storage",
    "lmdb_storage",
    "object_storage",
    "s3_storage",
]

#: Object storage needs obstore (the ``remote`` extra): imported on first use, so
#: ``import versionstore`` works without it.
_LAZY = {name: "versionstore.cloud" for name in (
    "ObjectStorage", "azure_storage", "gcs_storage", "object_storage", "s3_storage")}


#: icechunk names with no versionstore namesake, and what to use instead
#: (docs/icechunk.md): said in the ``AttributeError``, for someone porting a script.
_ICECHUNK_NAMES = {
    "local_filesystem_storage": "vs.lmdb_storage(path), or just the path",
    "RepositoryConfig": "nothing to configure; Repository.create / open take "
                        "virtual_chunk_stores= and check_virtual_checksums=",
    "VirtualChunkContainer": "Repository.open(storage, virtual_chunk_stores={url_prefix: store})",
    "IcechunkError": "vs.VersionStoreError",
}


def __getattr__(name: str) -> object:
    """Import the object-storage constructors on first use (they need obstore).

    Raises:
        AttributeError: for any other missing name; an icechunk name says what
            to use instead.
    """
    if name in _ICECHUNK_NAMES:
        raise AttributeError(f"module 'versionstore' has no attribute {name!r} (an icechunk "
                             f"name: use {_ICECHUNK_NAMES[name]}; see docs/icechunk.md)")
    if name not in _LAZY:
        raise AttributeError(f"module 'versionstore' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)

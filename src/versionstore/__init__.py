"""versionstore: git-like history for Zarr data.

Quick start::

    import versionstore as vs, zarr
    repo = vs.Repository.create("my-repo")  # an LMDB directory (or vs.in_memory_storage())
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="t", shape=(100,), dtype="f4")[:] = 1
    snapshot_id = session.commit("first")
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _installed_version

from versionstore.errors import (
    BackendError,
    BranchNotFoundError,
    ConflictError,
    CorruptObjectError,
    ImmutableTagError,
    InvalidMoveError,
    InvalidRefNameError,
    MergeConflict,
    MergeConflictError,
    NothingToCommitError,
    ObjectTooLargeError,
    ProtectedBranchError,
    ReadOnlySessionError,
    RefExistsError,
    RefNotFoundError,
    RepositoryExistsError,
    RepositoryNotFoundError,
    SessionNotFoundError,
    SnapshotNotFoundError,
    TagNotFoundError,
    UnsupportedFormatError,
    VersionStoreError,
)
from versionstore.history import Diff, SnapshotInfo
from versionstore.importing import ImportSummary, import_zarr
from versionstore.opslog import OpsLogEntry
from versionstore.repository import Repository
from versionstore.session import Session
from versionstore.session_store import SessionStore
from versionstore.storage import InMemoryStorage, LMDBStorage, in_memory_storage, lmdb_storage

try:
    __version__ = _installed_version("versionstore")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "BackendError",
    "BranchNotFoundError",
    "ConflictError",
    "CorruptObjectError",
    "Diff",
    "ImmutableTagError",
    "ImportSummary",
    "InMemoryStorage",
    "InvalidMoveError",
    "InvalidRefNameError",
    "LMDBStorage",
    "MergeConflict",
    "MergeConflictError",
    "NothingToCommitError",
    "ObjectTooLargeError",
    "OpsLogEntry",
    "ProtectedBranchError",
    "ReadOnlySessionError",
    "RefExistsError",
    "RefNotFoundError",
    "Repository",
    "RepositoryExistsError",
    "RepositoryNotFoundError",
    "Session",
    "SessionNotFoundError",
    "SessionStore",
    "SnapshotInfo",
    "SnapshotNotFoundError",
    "TagNotFoundError",
    "UnsupportedFormatError",
    "VersionStoreError",
    "import_zarr",
    "in_memory_storage",
    "lmdb_storage",
]

"""versionstore: git-like history for Zarr data.

Quick start::

    import versionstore as vs, zarr
    repo = vs.Repository.create(vs.lmdb_storage("my-repo"))
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="t", shape=(100,), dtype="f4")[:] = 1
    snapshot_id = session.commit("first")
"""

from versionstore.errors import (
    BackendError,
    BranchNotFoundError,
    ConflictError,
    CorruptObjectError,
    CorruptRepositoryError,
    DiskFullError,
    ImmutableTagError,
    InvalidRefNameError,
    ObjectTooLargeError,
    ReadOnlyRepositoryError,
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
from versionstore.repository import Repository
from versionstore.session import NothingToCommitError, Session
from versionstore.session_store import SessionStore
from versionstore.storage import InMemoryStorage, LMDBStorage, in_memory_storage, lmdb_storage

__all__ = [
    "BackendError",
    "BranchNotFoundError",
    "ConflictError",
    "CorruptObjectError",
    "CorruptRepositoryError",
    "Diff",
    "DiskFullError",
    "ImmutableTagError",
    "InMemoryStorage",
    "InvalidRefNameError",
    "LMDBStorage",
    "NothingToCommitError",
    "ObjectTooLargeError",
    "ReadOnlyRepositoryError",
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
    "in_memory_storage",
    "lmdb_storage",
]

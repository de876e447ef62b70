"""Backends: where a repository's objects and refs live."""

from versionstore.backend.lmdb import LMDBBackend
from versionstore.backend.memory import MemoryBackend
from versionstore.backend.protocol import Backend

__all__ = ["Backend", "LMDBBackend", "MemoryBackend"]

"""Where a repository lives: the embedded LMDB default, or process memory.

``lmdb_storage(path)`` and ``in_memory_storage()`` describe a location; a
``Repository`` opens a backend on it. Descriptions are small and picklable,
which is how sessions travel to other processes (dask workers) and reopen the
same repository there.
"""

from __future__ import annotations

import os
from typing import Protocol

import attrs

from versionstore.backend.lmdb import LMDBBackend, has_lmdb_environment
from versionstore.backend.memory import MemoryBackend
from versionstore.backend.protocol import Backend

__all__ = ["InMemoryStorage", "LMDBStorage", "RepositoryStorage", "in_memory_storage",
           "lmdb_storage"]


class RepositoryStorage(Protocol):
    """A place a repository can live."""

    def open_backend(self) -> Backend:
        """Open (or create) the backend at this location."""
        ...

    def may_hold_repository(self) -> bool:
        """Cheap check: could a repository be here (without creating anything)?"""
        ...


def _absolute(path: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.fspath(path))


@attrs.frozen
class LMDBStorage:
    """An LMDB environment in the directory ``path`` (created on first use)."""

    path: str = attrs.field(converter=_absolute)
    durable: bool = False
    read_only: bool = False

    def open_backend(self) -> Backend:
        """Open the LMDB environment."""
        return LMDBBackend(self.path, durable=self.durable, read_only=self.read_only)

    def may_hold_repository(self) -> bool:
        """Whether the directory already holds an LMDB environment."""
        return has_lmdb_environment(self.path)


@attrs.frozen
class InMemoryStorage:
    """Process memory: every repository opened on one description shares it."""

    backend: MemoryBackend = attrs.field(factory=MemoryBackend, eq=False, repr=False)

    def open_backend(self) -> Backend:
        """The shared in-memory backend."""
        return self.backend

    def may_hold_repository(self) -> bool:
        """Memory may always hold one."""
        return True


def lmdb_storage(path: str | os.PathLike[str], *, durable: bool = False,
                 read_only: bool = False) -> LMDBStorage:
    """The embedded default: a repository in an LMDB directory at ``path``.

    Args:
        path: the directory (created if missing).
        durable: fsync every write, not only every commit (slower; see docs).
        read_only: open without writing anything (writes raise
            ``ReadOnlyRepositoryError``); a read-only filesystem gives this anyway.
    """
    return LMDBStorage(path, durable, read_only)


def in_memory_storage() -> InMemoryStorage:
    """A repository in process memory, for tests and notebooks."""
    return InMemoryStorage()

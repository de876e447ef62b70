"""Where a repository lives: the embedded LMDB default, or process memory.

``lmdb_storage(path)`` and ``in_memory_storage()`` describe a location; a
``Repository`` opens a backend on it. Descriptions are small and picklable,
which is how sessions travel to other processes (dask workers) and reopen the
same repository there.
"""

from __future__ import annotations

import os
import reprlib
from typing import TYPE_CHECKING, Protocol

import attrs

from versionstore.backend.lmdb import LMDBBackend, has_lmdb_environment
from versionstore.backend.memory import MemoryBackend
from versionstore.backend.protocol import Backend

if TYPE_CHECKING:
    from zarrstore.lmdb_environment import EnvironmentIdentity

__all__ = ["InMemoryStorage", "LMDBStorage", "RepositoryStorage", "StorageLike",
           "in_memory_storage", "lmdb_storage"]


class RepositoryStorage(Protocol):
    """A place a repository can live."""

    def open_backend(self) -> Backend:
        """Open (or create) the backend at this location."""
        ...

    def may_hold_repository(self) -> bool:
        """Cheap check: could a repository be here (without creating anything)?"""
        ...

    def probe_backend(self) -> Backend:
        """Open the backend only to look: nothing is created or changed (``Repository.exists``)."""
        ...

    def creation_problem(self) -> str | None:
        """Why a new repository must not be created here, or ``None`` if it may be."""
        ...

    def missing_repository_message(self) -> str:
        """``RepositoryNotFoundError``'s message when no repository is here."""
        ...


#: What ``Repository.create`` / ``open`` / ``open_or_create`` / ``exists`` accept:
#: a storage description, or the path of an LMDB directory.
StorageLike = RepositoryStorage | str | os.PathLike[str]


def _absolute(path: str | os.PathLike[str]) -> str:
    text = os.fspath(path) if isinstance(path, str | os.PathLike) else None
    if not isinstance(text, str):
        raise TypeError(
            "an LMDB repository path must be a str or os.PathLike[str] naming a directory; "
            f"got {type(path).__name__} {reprlib.repr(path)}"
        )
    if not text:  # os.path.abspath("") is the working directory: surely not what was meant
        raise ValueError("an LMDB repository path must not be empty; give a directory "
                         "(\".\" for the working directory)")
    return os.path.abspath(text)


@attrs.frozen
class LMDBStorage:
    """An LMDB environment in the directory ``path`` (created on first use).

    ``identity`` pins the description to one repository (``pinned``): the
    description a pickled repository or session carries, so that the copy
    opens that repository or raises ``RepositoryReplacedError``, never
    another one made at the same path since. It takes no part in equality.
    """

    path: str = attrs.field(converter=_absolute)
    durable: bool = False
    read_only: bool = False
    identity: EnvironmentIdentity | None = attrs.field(default=None, eq=False, repr=False)

    def open_backend(self) -> Backend:
        """Open the LMDB environment."""
        return LMDBBackend(self.path, durable=self.durable, read_only=self.read_only,
                           identity=self.identity)

    def pinned(self, backend: Backend) -> LMDBStorage:
        """This description, pinned to the repository ``backend`` opened (for copies)."""
        if not isinstance(backend, LMDBBackend) or self.identity is not None:
            return self
        return attrs.evolve(self, identity=backend.identity)

    def probe_backend(self) -> Backend:
        """The environment opened read-only: its files are neither padded nor given a lock file."""
        return LMDBBackend(self.path, read_only=True)

    def may_hold_repository(self) -> bool:
        """Whether the directory already holds an LMDB environment (an empty file is none).

        A killed ``create`` can leave an empty ``data.mdb``: nothing is in it to read.
        """
        if not has_lmdb_environment(self.path):
            return False
        data = os.path.join(self.path, "data.mdb")
        return os.path.islink(data) or not os.path.isfile(data) or os.path.getsize(data) > 0

    def missing_repository_message(self) -> str:
        """Why ``Repository.open`` finds no repository here, and what to do instead.

        Tells apart a missing path, a file, an empty directory, a plain Zarr
        store (``zarr.json``, or v2's ``.zgroup`` / ``.zarray``) and an icechunk
        repository on local disk (``snapshots/`` beside ``manifests/`` or
        ``refs/``), which users coming from zarr-python, xarray or icechunk pass
        most often; nothing is created.
        """
        where = f"no repository in {self.path!r}"
        if not os.path.lexists(self.path):
            return f"{where}: the directory does not exist (Repository.create makes one)"
        if not os.path.isdir(self.path):
            return f"{where}: it is a file, not a repository directory"
        try:
            names = set(os.listdir(self.path))
        except OSError as exc:
            return f"{where}: cannot list the directory ({exc.strerror})"
        if not names:
            return f"{where}: the directory is empty (Repository.create makes a repository there)"
        if names & {"zarr.json", ".zgroup", ".zarray", ".zmetadata"}:
            return (f"{where}: it is a plain Zarr store, not a versionstore repository; "
                    "create a repository in another directory and copy the store in with "
                    "vs.import_zarr(path, session) (docs/recipes.md)")
        if {"snapshots", "manifests"} <= names or {"snapshots", "refs"} <= names:
            return (f"{where}: it looks like an icechunk repository, whose format versionstore "
                    "does not read; copy a version in with vs.import_zarr(icechunk_repo"
                    ".readonly_session('main').store, session) (docs/icechunk.md)")
        if "data.mdb" in names:
            return f"{where}: its LMDB environment holds no repository (no refs)"
        return f"{where}: the directory holds no LMDB environment (data.mdb)"

    def creation_problem(self) -> str | None:
        """Refuse a plain file, and a directory holding anything but an LMDB environment.

        LMDB puts ``data.mdb`` and ``lock.mdb`` into the directory it is given:
        among unrelated files they would be easy to delete or copy half of.
        """
        if os.path.lexists(self.path) and not os.path.isdir(self.path):
            return f"{self.path!r} is a file, not a directory; give a new or empty directory"
        if os.path.isdir(self.path):
            others = sorted(set(os.listdir(self.path)) - {"data.mdb", "lock.mdb"})
            if others:
                shown = ", ".join(others[:3]) + (" …" if len(others) > 3 else "")
                return (f"directory {self.path!r} already holds other files ({shown}); "
                        "give a new or empty directory for the repository")
        return None


@attrs.frozen
class InMemoryStorage:
    """Process memory: every repository opened on one description shares it.

    Two descriptions are equal when they hold the same repository (the same
    backend object), as two ``LMDBStorage`` are when they name one directory.
    A pickled copy unpickled in the same process is equal to the original.
    """

    # Compared (and hashed) by identity: MemoryBackend has no value equality.
    backend: MemoryBackend = attrs.field(factory=MemoryBackend, eq=id, repr=False)

    def __repr__(self) -> str:
        return f"InMemoryStorage(<repository {id(self.backend):#x}>)"

    def open_backend(self) -> Backend:
        """The shared in-memory backend."""
        return self.backend

    def probe_backend(self) -> Backend:
        """The shared in-memory backend (looking changes nothing)."""
        return self.backend

    def may_hold_repository(self) -> bool:
        """Memory may always hold one."""
        return True

    def creation_problem(self) -> str | None:
        """Memory is always a fine place (``create`` still refuses a non-empty backend)."""
        return None

    def missing_repository_message(self) -> str:
        """Nothing created here yet."""
        return f"no repository in {self!r}"


def lmdb_storage(path: str | os.PathLike[str], *, durable: bool = False,
                 read_only: bool = False) -> LMDBStorage:
    """The embedded default: a repository in an LMDB directory at ``path``.

    Args:
        path: the directory (created if missing).
        durable: fsync every write, not only every commit (slower; see docs).
        read_only: open without writing anything (writes raise
            ``ReadOnlyRepositoryError``); a read-only filesystem gives this anyway.

    Raises:
        TypeError: if ``path`` is not a ``str`` or ``os.PathLike[str]``.
        ValueError: if ``path`` is empty.
    """
    for name, flag in (("durable", durable), ("read_only", read_only)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False; got {type(flag).__name__}")
    return LMDBStorage(path, durable, read_only)


def in_memory_storage() -> InMemoryStorage:
    """A repository in process memory, for tests and notebooks."""
    return InMemoryStorage()

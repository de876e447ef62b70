"""The repository under a test, on both backends: in memory or in an LMDB directory.

The state machines of gc, the ledger, the lifecycle and the protocol each run
on both backends; ``OnEitherBackend`` makes (``create_repository``) and
releases (``close_repository``) the repository they drive. Directed tests use
the ``repo`` fixture (import ``either_repo_fixture``) and ``commit_values``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest

import versionstore as vs

__all__ = ["OnEitherBackend", "commit_values", "either_repo_fixture"]


class OnEitherBackend:
    """Mixin for a state machine: ``self.repo`` on ``backend`` (``"memory"`` or ``"lmdb"``)."""

    backend = "memory"
    repo: vs.Repository

    def create_repository(self) -> vs.Repository:
        """A new, empty repository on this machine's backend, as ``self.repo``."""
        storage: Any
        if self.backend == "memory":
            storage = vs.in_memory_storage()
        else:
            self._dir = tempfile.TemporaryDirectory()
            storage = vs.lmdb_storage(self._dir.name)
        self.repo = vs.Repository.create(storage)
        return self.repo

    def close_repository(self) -> None:
        """Close the repository and remove its directory, if any."""
        if hasattr(self, "repo"):
            self.repo.close()
        if hasattr(self, "_dir"):
            self._dir.cleanup()


@pytest.fixture(params=["memory", "lmdb"], name="repo")
def either_repo_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> vs.Repository:
    """A new repository in memory, then in an LMDB directory."""
    storage: Any = (vs.in_memory_storage() if request.param == "memory"
                    else vs.lmdb_storage(tmp_path / "repo"))
    return vs.Repository.create(storage)


def commit_values(repo: vs.Repository, branch: str = "main", **values: bytes) -> str:
    """Commit ``values`` (key = value) on ``branch``; the new snapshot's id."""
    session = repo.writable_session(branch)
    for key, value in values.items():
        session.store.storage.set(key, value)
    return session.commit("c")

"""The repository under a stateful test: in memory or in a temporary LMDB directory.

The state machines of gc, the ledger, the lifecycle and the protocol each run
on both backends; ``OnEitherBackend`` makes (``create_repository``) and
releases (``close_repository``) the repository they drive.
"""

from __future__ import annotations

import tempfile
from typing import Any

import versionstore as vs

__all__ = ["OnEitherBackend"]


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

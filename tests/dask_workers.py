"""Code the dask tests run *inside* the ``distributed`` worker processes.

``count_session_writes`` wraps ``Session.set_values`` in the process it runs
in, so every value a worker stages through the real session store is noted
(key and process id) before it is staged; ``session_writes`` hands the notes
back. The dask tests install it on every worker with ``client.run`` and in the
client process itself, which is how they prove that each chunk was written
exactly once, and by a worker rather than by the client.
"""

from __future__ import annotations

import os
from typing import Any

from versionstore.session import Session

_WRITES: list[tuple[str, int]] = []
_ORIGINAL = Session.set_values


def _counting_set_values(self: Session, items: list[tuple[str, bytes]]) -> None:
    _ORIGINAL(self, items)
    _WRITES.extend((key, os.getpid()) for key, _ in items)


def count_session_writes() -> int:
    """Start noting every staged write in this process (again from nothing); return its pid."""
    _WRITES.clear()
    Session.set_values = _counting_set_values  # type: ignore[method-assign]
    return os.getpid()


def session_writes() -> list[tuple[str, int]]:
    """The ``(key, pid)`` of every value staged in this process since ``count_session_writes``."""
    return list(_WRITES)


def stop_counting() -> Any:
    """Restore ``Session.set_values`` in this process."""
    Session.set_values = _ORIGINAL  # type: ignore[method-assign]
    _WRITES.clear()

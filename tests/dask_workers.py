"""Code the dask tests run *inside* the ``distributed`` worker processes.

``count_session_writes`` wraps ``Session.set_values`` and ``Session.set_value``
(a lone write's path) in the process it runs in, so every value a worker
stages through the real session store is noted (key and process id) once,
after it is staged; ``session_writes`` hands the notes back. The dask tests
install it on every worker with ``client.run`` and in the client process
itself, which is how they prove that each chunk was written exactly once, and
by a worker rather than by the client.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from versionstore.session import Session

_WRITES: list[tuple[str, int]] = []
_ORIGINAL = Session.set_values
_ORIGINAL_ONE = Session.set_value
#: Per thread, how deep in the wrappers: ``set_values`` of one item hands it to
#: ``set_value`` (and back on object storage); only the outermost call notes the keys.
_DEPTH = threading.local()


def _noting(keys: list[str], stage: Any) -> None:
    depth = getattr(_DEPTH, "n", 0)
    _DEPTH.n = depth + 1
    try:
        stage()
    finally:
        _DEPTH.n = depth
    if depth == 0:
        _WRITES.extend((key, os.getpid()) for key in keys)


def _counting_set_values(self: Session, items: list[tuple[str, bytes]]) -> None:
    _noting([key for key, _ in items], lambda: _ORIGINAL(self, items))


def _counting_set_value(self: Session, key: str, value: bytes) -> None:
    _noting([key], lambda: _ORIGINAL_ONE(self, key, value))


def count_session_writes() -> int:
    """Start noting every staged write in this process (again from nothing); return its pid."""
    _WRITES.clear()
    Session.set_values = _counting_set_values  # type: ignore[method-assign]
    Session.set_value = _counting_set_value  # type: ignore[method-assign]
    return os.getpid()


def session_writes() -> list[tuple[str, int]]:
    """The ``(key, pid)`` of every value staged in this process since ``count_session_writes``."""
    return list(_WRITES)


def stop_counting() -> Any:
    """Restore ``Session.set_values`` and ``Session.set_value`` in this process."""
    Session.set_values = _ORIGINAL  # type: ignore[method-assign]
    Session.set_value = _ORIGINAL_ONE  # type: ignore[method-assign]
    _WRITES.clear()

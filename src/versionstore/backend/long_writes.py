"""Long write transactions, announced so that event loops do not wait behind them (LMDB).

LMDB has one writer at a time, across processes. A session stages a lone
``set`` on zarr's event loop, where a write costs a tenth of a hop to a worker
thread (``docs/benchmarks.md``, "Issue 13"). Behind another writer's long
transaction — a commit of a million chunks, a garbage collection — that
write would wait on the loop for as long, and every zarr store of the
process, its reads included, would wait with it.

So a long write transaction announces itself: for its whole duration it
holds a shared ``flock`` on the environment's ``data.mdb``, through a file
description of its own. Before writing on the loop, a stager looks
(``LongWrites.busy``: one non-blocking exclusive ``flock`` and, when that
succeeds, its release); while any process, this one included, holds the
announcement, the write runs in a worker thread instead and only its own
caller waits.

The announcement is a hint for latency, never for correctness: LMDB's own
lock still orders every writer. The kernel drops a ``flock`` when its
holder exits or is killed. A writer that does not announce (an older
release, another LMDB tool) is not seen, and a transaction that starts
between a look and the write it allowed is waited for on the loop, as
before. LMDB takes no ``flock`` of its own on ``data.mdb`` (its locks are
POSIX record locks on ``lock.mdb``), so the two never meet.
"""

from __future__ import annotations

import fcntl
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["LongWrites"]


class LongWrites:
    """Announcements of long write transactions on the environment in ``path``.

    Args:
        path: the environment's directory (``data.mdb`` is locked).
    """

    def __init__(self, path: str) -> None:
        self._path = os.path.join(path, "data.mdb")
        self._lock = threading.Lock()
        #: The description ``busy`` locks through, and the process that opened it.
        self._probe: tuple[int, int] | None = None
        self._finalizer: weakref.finalize[[int], LongWrites] | None = None

    @contextmanager
    def announced(self) -> Iterator[None]:
        """Hold the announcement while the block runs (a long write transaction).

        Each call locks through a description of its own, so announcements of
        several threads never release each other's. If ``data.mdb`` cannot be
        opened the block runs unannounced.
        """
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            yield
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)  # waits only for a look in progress (µs)
            except OSError:
                pass  # a filesystem without flock: unannounced
            yield
        finally:
            os.close(fd)  # releases the lock

    def busy(self) -> bool:
        """Whether a long write transaction is announced, by any process.

        Two system calls when none is (about 1–2 µs). ``False`` when
        ``data.mdb`` cannot be opened or locked.
        """
        fd = self._probe_fd()
        if fd is None:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False

    def _probe_fd(self) -> int | None:
        pid = os.getpid()
        probe = self._probe
        if probe is not None and probe[1] == pid:
            return probe[0]
        with self._lock:
            if self._probe is not None and self._probe[1] == pid:
                return self._probe[0]
            try:
                fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
            if self._finalizer is not None:
                # Opened by the parent before a fork: close this process's copy (the
                # parent's description and any lock through it stay the parent's).
                self._finalizer()
            self._finalizer = weakref.finalize(self, os.close, fd)
            self._probe = (fd, pid)
            return fd

    def close(self) -> None:
        """Close the look's file description (announcements need none)."""
        with self._lock:
            if self._finalizer is not None and self._probe is not None \
                    and self._probe[1] == os.getpid():
                self._finalizer()
            self._probe = None

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
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["LongWrites"]

#: Times an announcement tries for its shared lock while a look holds it (an
#: exclusive lock held for about a microsecond), ``_RETRY_S`` apart, before the
#: write goes ahead unannounced: a lock someone else holds for long (a tool
#: ``flock``-ing the file) must never hold up a commit.
_ATTEMPTS = 20
_RETRY_S = 0.0001


class LongWrites:
    """Announcements of long write transactions on the environment in ``path``.

    Args:
        path: the environment's directory (``data.mdb`` is locked).
    """

    def __init__(self, path: str) -> None:
        self._path = os.path.join(path, "data.mdb")
        self._lock = threading.Lock()
        #: The descriptor ``busy`` locks through, and the process that opened it.
        self._probe: tuple[int, int] | None = None
        self._finalizer: weakref.finalize[[int, int], LongWrites] | None = None

    @contextmanager
    def announced(self) -> Iterator[None]:
        """Hold the announcement while the block runs (a long write transaction).

        Each call locks through a description of its own, so announcements of
        several threads never release each other's. If ``data.mdb`` cannot be
        opened or locked the block runs unannounced; it never waits more than
        about 2 ms for the lock.
        """
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            yield
            return
        try:
            for _ in range(_ATTEMPTS):
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    time.sleep(_RETRY_S)  # a look in progress
                except OSError:
                    break  # a filesystem without flock: unannounced
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
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            pass  # the descriptor was closed meanwhile (``close``): nothing is held
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
                # Opened by the parent before a fork: this process's copy is left open
                # (closed at exit or exec). The child may have closed the number and
                # reused it for a file of its own, even this one: never ours to close.
                self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _close_owned, fd, pid)
            self._finalizer.atexit = False  # the process's exit closes it
            self._probe = (fd, pid)
            return fd

    def close(self) -> None:
        """Close the look's file descriptor, if this process opened it."""
        with self._lock:
            if self._finalizer is not None:
                self._finalizer()
            self._probe = None


def _close_owned(fd: int, pid: int) -> None:
    """Close ``fd`` in the process ``pid`` that opened it; in a forked child, leave it.

    A child may have closed the descriptors it inherited and reused the number
    for a file of its own (even this one): that is not ours to close. The copy
    the child inherited closes with the child.
    """
    if os.getpid() == pid:
        try:
            os.close(fd)
        except OSError:
            pass


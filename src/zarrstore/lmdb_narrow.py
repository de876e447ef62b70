"""Narrow reads: readahead off over an LMDB map while a few small, scattered values are read.

A page fault in a file's memory map makes Linux read a window around the
faulting page, the block device's readahead size (``read_ahead_kb``: 128 KiB
by default, 8 MiB on some virtual disks). That suits a large value — a chunk
of contiguous overflow pages, copied whole — and wastes I/O on a small one:
opening an old snapshot of a versioned repository touches about eight
scattered pages (B-tree pages, the snapshot record, tree nodes), and on such
a disk each fault read 8 MiB (``docs/benchmarks.md``, "Ancestry and
checkout"). LMDB's own switch (``MDB_NORDAHEAD``) is all or nothing: with it,
a large value — which py-lmdb's ``get`` touches page by page before returning
it — is read in as many synchronous 4 KiB requests, several times slower cold.

``Narrow`` gives each kind of read its own policy. The map keeps LMDB's
default advice (readahead on); while a ``window()`` is open — around the read
of one tree node, snapshot or history page — it is advised ``MADV_RANDOM``,
so each fault reads the one page it needs. Windows nest and overlap across
threads (a count); the advice is one ``madvise`` call over the whole map at
each end (about 4 µs each here). Only a hint changes: whatever the advice,
every read returns the same bytes; a large read that runs in another thread
while a window is open is merely read page by page.

The map is found in ``/proc/self/maps`` by the data file's device and inode;
``supported()`` is false where that or ``madvise`` is unavailable, and then no
window changes anything.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["Narrow", "supported"]

_MAPS = "/proc/self/maps"


def _madvise_function() -> Callable[[int, int, int], int] | None:
    if not (hasattr(mmap, "MADV_NORMAL") and hasattr(mmap, "MADV_RANDOM")):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    function.restype = ctypes.c_int
    advise: Callable[[int, int, int], int] = function
    return advise


_madvise = _madvise_function()


def supported() -> bool:
    """Whether this platform lets ``Narrow`` find and advise a map (Linux)."""
    return _madvise is not None and os.path.exists(_MAPS)


def mapped_range(path: str) -> tuple[int, int] | None:
    """``(start, length)`` in bytes of this process's mapping of the file ``path``, or ``None``."""
    try:
        stat = os.stat(path)
        with open(_MAPS, encoding="ascii", errors="replace") as maps:
            lines = maps.read().splitlines()
    except OSError:
        return None
    device = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}"
    start = end = None
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 5 or fields[4] != str(stat.st_ino) or fields[3] != device:
            continue
        low, high = (int(part, 16) for part in fields[0].split("-"))
        start = low if start is None else min(start, low)
        end = high if end is None else max(end, high)
    if start is None or end is None:
        return None
    return start, end - start


class Narrow:
    """Narrow-read windows over the memory map of one LMDB data file (see the module).

    Args:
        data_path: the environment's ``data.mdb``.

    Call ``forget()`` whenever the environment is (re)mapped — opened, grown,
    adopting another process's size, closed — while no window is open: the
    map is looked up again at the next window.
    """

    def __init__(self, data_path: str) -> None:
        self.data_path = data_path
        self._lock = threading.Lock()
        self._depth = 0
        self._range: tuple[int, int] | None = None
        self._known = False

    def forget(self) -> None:
        """The map moved or changed size: find it again before the next advice."""
        with self._lock:
            self._known = False
            self._range = None

    def _advise(self, advice: int) -> None:
        if not self._known:
            self._range = mapped_range(self.data_path) if supported() else None
            self._known = True
        if self._range is not None and _madvise is not None:
            _madvise(self._range[0], self._range[1], advice)  # a hint: failure changes nothing

    @contextmanager
    def window(self) -> Iterator[None]:
        """Readahead off over the map while the block runs (``MADV_RANDOM``), then on again."""
        with self._lock:
            if self._depth == 0:
                self._advise(mmap.MADV_RANDOM)
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    self._advise(mmap.MADV_NORMAL)

"""The readahead switch: readahead over an LMDB map set by the kind of read, not once for all.

A page fault in a file's memory map makes Linux read a window around the
faulting page, the block device's readahead size (``read_ahead_kb``: 128 KiB
by default, 8 MiB on some virtual disks). That suits a large value — a chunk
of contiguous overflow pages, copied whole — and wastes I/O on a small one:
opening an old snapshot of a versioned repository touches about eight
scattered pages (B-tree pages, the snapshot record, tree nodes), and on such
a disk each fault read 8 MiB (``docs/benchmarks.md``, "Ancestry and
checkout"). LMDB's own switch (``MDB_NORDAHEAD``) is set once for the whole
map: with it, a large value — which py-lmdb's ``get`` touches page by page
before returning it — is read in as many synchronous 4 KiB requests, several
times slower cold.

``ReadaheadSwitch`` sets the advice of the whole map before each read that
asks: ``off()`` (``MADV_RANDOM``: a fault reads its one page) before reading a
tree node or a snapshot, ``on()`` (``MADV_NORMAL``, LMDB's default) before
reading chunks. Only a change costs a ``madvise`` call (about 4 µs here):
reads of one kind in a row cost an attribute check, so a warm read path,
which keeps reading chunks, pays nothing. Reads that do not ask leave the
advice as it is. Only a hint changes: whatever the advice, every read
returns the same bytes; threads reading both kinds at once merely get the
advice of the one that asked last.

The map is found in ``/proc/self/maps`` by the data file's device and inode;
``supported()`` is false where that or ``madvise`` is unavailable, and then
the environment keeps LMDB's default.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import threading
from collections.abc import Callable

__all__ = ["ReadaheadSwitch", "mapped_range", "supported"]

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
    """Whether this platform lets ``ReadaheadSwitch`` find and advise a map (Linux)."""
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


class ReadaheadSwitch:
    """The readahead advice over the memory map of one LMDB data file (see the module).

    Args:
        data_path: the environment's ``data.mdb``.

    Call ``forget()`` whenever the environment is (re)mapped — opened, grown,
    adopting another process's size, closed — while no read is running: LMDB
    maps anew with readahead on, and the map is looked up again at the next
    change.
    """

    def __init__(self, data_path: str) -> None:
        self.data_path = data_path
        self._lock = threading.Lock()
        self._off = False
        self._range: tuple[int, int] | None = None
        self._known = False

    def forget(self) -> None:
        """The map was made anew (readahead on): find it again before the next change."""
        with self._lock:
            self._known = False
            self._range = None
            self._off = False

    def _advise(self, advice: int) -> None:
        if not self._known:
            self._range = mapped_range(self.data_path) if supported() else None
            self._known = True
        if self._range is not None and _madvise is not None:
            _madvise(self._range[0], self._range[1], advice)  # a hint: failure changes nothing

    def off(self) -> None:
        """Before reading a few small values at scattered places: a fault reads its page."""
        if not self._off:
            with self._lock:
                if not self._off:
                    self._advise(mmap.MADV_RANDOM)
                    self._off = True

    def on(self) -> None:
        """Before reading large values: a fault reads the window around it (the default)."""
        if self._off:
            with self._lock:
                if self._off:
                    self._advise(mmap.MADV_NORMAL)
                    self._off = False

    @property
    def is_off(self) -> bool:
        """Whether the last change turned readahead off."""
        return self._off

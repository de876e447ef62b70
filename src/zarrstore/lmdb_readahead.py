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
advice of the one that asked last. A map that starts with readahead off
(``starts_off``: LMDB's ``MDB_NORDAHEAD``) makes small reads free from the
first one on.

The map is found once per mapping, at the first change. Given an address
inside it (``locate``: the environment hands one out, a value read from the
map), one ``PROCMAP_QUERY`` ioctl on ``/proc/self/maps`` (Linux 6.11 and
later) names the mapping that holds it, and its inode is checked against the
data file's: about 20 µs. Otherwise ``/proc/self/maps`` is read whole and
searched for the data file's device and inode, which costs as much as the
kernel takes to print every mapping of the process (0.1–1 ms, paid by each
environment opened: ``docs/benchmarks.md``, "History at scale").
``supported()`` is false where ``/proc/self/maps`` or ``madvise`` is
unavailable, and then the environment keeps LMDB's default.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import mmap
import os
import struct
import threading
from collections.abc import Callable

__all__ = ["ReadaheadSwitch", "buffer_address", "mapped_range", "supported",
           "view_address_offset"]

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


class _Buffer(ctypes.Structure):
    """CPython's ``Py_buffer`` (the buffer protocol's view of an object's memory)."""

    _fields_ = (("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int),
                ("ndim", ctypes.c_int), ("format", ctypes.c_char_p),
                ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p))


def _buffer_functions() -> tuple[Callable[..., int], Callable[..., None]] | None:
    api = getattr(ctypes, "pythonapi", None)  # CPython only
    try:
        get, release = api.PyObject_GetBuffer, api.PyBuffer_Release  # type: ignore[union-attr]
    except AttributeError:
        return None
    get.argtypes = (ctypes.py_object, ctypes.POINTER(_Buffer), ctypes.c_int)
    get.restype = ctypes.c_int
    release.argtypes = (ctypes.POINTER(_Buffer),)
    release.restype = None
    return get, release


_buffer_api = _buffer_functions()


def view_address_offset() -> int | None:
    """Where in a ``memoryview`` object its first byte's address lies (``None``: unknown).

    Found by looking, for two views of known memory, rather than assumed from
    CPython's headers: reading it costs one ``ctypes`` load (0.2 µs), where
    ``PyObject_GetBuffer`` through ``ctypes`` costs 1.7 µs, on every read that
    checks a value (``zarrstore.lmdb_environment``). CPython only (``id`` is
    the object's address there).
    """
    import sys

    if sys.implementation.name != "cpython":  # pragma: no cover - other interpreters
        return None
    found: set[int] | None = None
    for size in (16, 48):
        memory = bytearray(size)
        view = memoryview(memory)[1:]
        address = ctypes.addressof(ctypes.c_char.from_buffer(memory)) + 1
        here = {offset for offset in range(0, 256, ctypes.sizeof(ctypes.c_void_p))
                if ctypes.c_void_p.from_address(id(view) + offset).value == address}
        found = here if found is None else found & here
    return min(found) if found else None


_view_offset = view_address_offset()
_pointer_at = ctypes.c_void_p.from_address


def buffer_address(view: memoryview) -> int | None:
    """The address of the first byte ``view`` shows, or ``None`` where it cannot be known."""
    if _view_offset is not None and type(view) is memoryview:
        pointer: int | None = _pointer_at(id(view) + _view_offset).value
        return pointer
    if _buffer_api is None:
        return None
    get, release = _buffer_api
    buffer = _Buffer()
    if get(view, ctypes.byref(buffer), 0) != 0:  # pragma: no cover - a memoryview always gives
        return None
    try:
        address: int | None = buffer.buf
        return address
    finally:
        release(ctypes.byref(buffer))


# ``struct procmap_query`` (linux/fs.h): size, flags, address; start, end, flags, page size,
# offset, inode, device major and minor, name and build-id sizes and buffers.
_QUERY = struct.Struct("=QQQQQQQQQIIIIQQ")
_PROCMAP_QUERY = 0xC0000000 | (_QUERY.size << 16) | (ord("f") << 8) | 17  # _IOWR('f', 17, …)
_COVERING_OR_NEXT = 0x10
#: Whether this kernel answers ``PROCMAP_QUERY`` (unknown until first asked).
_query_works: bool | None = None


def _queried_range(address: int, stat: os.stat_result) -> tuple[int, int] | None:
    """The range of the mapping of ``stat``'s file holding ``address``, by ``PROCMAP_QUERY``.

    ``None`` when the kernel lacks the ioctl or ``address`` is not in a mapping of that
    file. Neighbouring mappings of the same file (a map split by differing advice) join it.
    """
    global _query_works
    if _query_works is False:
        return None
    device = (os.major(stat.st_dev), os.minor(stat.st_dev))
    try:
        fd = os.open(_MAPS, os.O_RDONLY)
    except OSError:
        return None
    try:

        def query(at: int, flags: int) -> tuple[int, int] | None:
            answer = bytearray(_QUERY.pack(_QUERY.size, flags, at, *([0] * 12)))
            try:
                fcntl.ioctl(fd, _PROCMAP_QUERY, answer, True)
            except OSError:  # ENOENT: nothing there; ENOTTY / EINVAL: an older kernel
                return None
            fields = _QUERY.unpack(answer)
            if fields[8] != stat.st_ino or (fields[9], fields[10]) != device:
                return None
            return fields[3], fields[4]

        found = query(address, 0)
        if found is None:
            if _query_works is None:  # a kernel without the ioctl: never ask again
                probe = bytearray(_QUERY.pack(_QUERY.size, _COVERING_OR_NEXT, 0, *([0] * 12)))
                try:
                    fcntl.ioctl(fd, _PROCMAP_QUERY, probe, True)
                    _query_works = True
                except OSError:
                    _query_works = False
            return None
        _query_works = True
        start, end = found
        while start > 0 and (before := query(start - 1, 0)) is not None and before[1] == start:
            start = before[0]
        while (after := query(end, 0)) is not None and after[0] == end:
            end = after[1]
        return start, end - start
    finally:
        os.close(fd)


def mapped_range(path: str, address: int | None = None) -> tuple[int, int] | None:
    """``(start, length)`` in bytes of this process's mapping of the file ``path``, or ``None``.

    ``address``, if known, is any address inside the mapping: the kernel is
    then asked about that one mapping (``PROCMAP_QUERY``) instead of every
    mapping of the process being read and searched.
    """
    try:
        stat = os.stat(path)
    except OSError:
        return None
    if address is not None:
        found = _queried_range(address, stat)
        if found is not None:
            return found
    try:
        with open(_MAPS, "rb") as maps:
            text = maps.read()
    except OSError:
        return None
    device = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}".encode()
    inode = str(stat.st_ino).encode()
    start = end = None
    at = text.find(b" " + inode)
    while at >= 0:  # only the lines naming the inode are split
        line_start = text.rfind(b"\n", 0, at) + 1
        line_end = text.find(b"\n", at)
        fields = text[line_start:len(text) if line_end < 0 else line_end].split(maxsplit=5)
        if len(fields) >= 5 and fields[4] == inode and fields[3] == device:
            low, high = (int(part, 16) for part in fields[0].split(b"-"))
            start = low if start is None else min(start, low)
            end = high if end is None else max(end, high)
        at = text.find(b" " + inode, at + 1)
    if start is None or end is None:
        return None
    return start, end - start


class ReadaheadSwitch:
    """The readahead advice over the memory map of one LMDB data file (see the module).

    Args:
        data_path: the environment's ``data.mdb``.
        locate: gives an address inside the map (or ``None``), so that the
            map is found by one question to the kernel (``mapped_range``);
            called, at most once per mapping, while a read is about to start
            and the environment is open.

        starts_off: the environment was opened with ``MDB_NORDAHEAD``, so
            every map LMDB makes starts with readahead off: small reads
            then never change the advice, and the map is looked up only when
            a read of large values first turns readahead on.

    Call ``forget()`` whenever the environment is (re)mapped — opened, grown,
    adopting another process's size, closed — while no read is running: LMDB
    maps anew with readahead on (off with ``starts_off``), and the map is
    looked up again at the next change.
    """

    def __init__(self, data_path: str, locate: Callable[[], int | None] | None = None, *,
                 starts_off: bool = False) -> None:
        self.data_path = data_path
        self.locate = locate
        #: Whether a map made anew has readahead off (LMDB's ``MDB_NORDAHEAD`` advises
        #: ``MADV_RANDOM`` itself whenever it maps the file).
        self.starts_off = starts_off
        self._lock = threading.Lock()
        self._off = starts_off
        self._range: tuple[int, int] | None = None
        self._known = False

    def forget(self) -> None:
        """The map was made anew (as ``starts_off`` says): find it again before the next change."""
        with self._lock:
            self._known = False
            self._range = None
            self._off = self.starts_off

    def _advise(self, advice: int) -> None:
        if not self._known:
            if supported():
                address = self.locate() if self.locate is not None else None
                self._range = mapped_range(self.data_path, address)
            else:
                self._range = None
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

"""``UsageLog``: one line per storage call, to reveal how a store is used.

The seed's ``UsageLogStorageAdapter``, in the adapter layer: a
``WrappingStorage`` that writes a line for every call it forwards, so that a
slow notebook or a surprising access pattern can be read off the log.

The line format is stable (tools may parse it)::

    <prefix><operation> <arguments> -> <result>

* ``<prefix>`` is whatever the ``prefix`` callable returns, taken when the
  call starts; the default is a UTC timestamp and a space,
  ``2025-01-31T12:00:00.123456Z ``.
* ``<operation>`` is the protocol method: ``get``, ``get_many``, ``size``,
  ``size_prefix``, ``exists``, ``set``, ``set_if_absent``, ``erase``,
  ``erase_many``, ``erase_prefix``, ``list_prefix`` (``list()`` is
  ``list_prefix ""``), ``list_dir``, ``is_empty`` or ``close``.
* ``<arguments>`` are space-separated: a key or prefix as a JSON string; a byte
  range written straight after its key in Python slice notation
  (``"c/0"[0:100]``, ``"c/0"[100:]``, ``"c/0"[-16:]``); a value as ``len=N``
  (never its bytes); a batch as ``n=N`` followed by its items.
* ``<result>`` is ``len=N`` or ``None`` for a read (a list of them for
  ``get_many``), ``size=N`` or ``None``, ``True`` / ``False``, ``keys=N``
  (with ``prefixes=N`` for ``list_dir``), ``ok`` for a write, or
  ``error=TypeName`` when the call raised (the error still propagates).

Lines are written whole, under a lock shared by every ``UsageLog`` writing to
the same writer, so lines from many threads never interleave. A line the
writer's encoding cannot hold (a refused key's lone surrogate, ``"é"`` in an
ASCII file) is written with backslash escapes instead. The line is
written when the call ends, so under concurrency lines are in completion order.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar, override

from zarrstore.adapters.base import StoreLike, WrappingStorage, WrappingStore, storage_of
from zarrstore.protocol import DirListing, ReadRequest, Storage
from zarrstore.ranges import ByteRange, OffsetRequest, RangeRequest, SuffixRequest

__all__ = [
    "TextWriter",
    "UsageLog",
    "UsageLogStorage",
    "format_byte_range",
    "utc_timestamp",
]

T = TypeVar("T")


class TextWriter(Protocol):
    """Anything with a text ``write`` method: ``sys.stdout``, an open file, ``io.StringIO``."""

    def write(self, text: str, /) -> int:
        """Write ``text``; return the number of characters written."""
        ...


def utc_timestamp() -> str:
    """The default prefix: the current UTC time in ISO 8601 with microseconds, and a space."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ ")


def format_byte_range(byte_range: ByteRange | None) -> str:
    """A byte range in slice notation: ``[0:100]``, ``[100:]``, ``[-16:]`` (``""`` for none)."""
    if byte_range is None:
        return ""
    if isinstance(byte_range, RangeRequest):
        return f"[{byte_range.start}:{byte_range.end}]"
    if isinstance(byte_range, OffsetRequest):
        return f"[{byte_range.offset}:]"
    if isinstance(byte_range, SuffixRequest):
        return f"[-{byte_range.suffix}:]"
    return f"[{byte_range!r}]"


def _text(name: object) -> str:
    # JSON keeps one call on one line whatever the key holds (newlines, quotes, NUL).
    return json.dumps(name if isinstance(name, str) else repr(name), ensure_ascii=False)


def _request(key: object, byte_range: ByteRange | None) -> str:
    return _text(key) + format_byte_range(byte_range)


def _read(value: bytes | None) -> str:
    return "None" if value is None else f"len={len(value)}"


def _size(value: int | None) -> str:
    return "None" if value is None else f"size={value}"


def _ok(_: object) -> str:
    return "ok"


_WRITER_LOCKS: weakref.WeakKeyDictionary[object, threading.Lock] = weakref.WeakKeyDictionary()
_WRITER_LOCKS_GUARD = threading.Lock()


def _lock_for(writer: object) -> threading.Lock:
    """One lock per writer, so several logs sharing a file never interleave lines."""
    with _WRITER_LOCKS_GUARD:
        try:
            return _WRITER_LOCKS.setdefault(writer, threading.Lock())
        except TypeError:  # the writer cannot be weakly referenced
            return threading.Lock()


_STANDARD_STREAMS = {"stdout", "stderr"}


class UsageLogStorage(WrappingStorage):
    """The storage behind ``UsageLog``: logs each call to ``inner``.

    Args:
        inner: the storage whose calls are logged.
        writer: a text writer or a ``logging.Logger``; ``None`` means ``sys.stdout``.
        prefix: called once per line; its result starts the line.
        level: the level used when ``writer`` is a logger.
    """

    def __init__(
        self,
        inner: Storage,
        writer: TextWriter | logging.Logger | None = None,
        prefix: Callable[[], str] = utc_timestamp,
        *,
        level: int = logging.INFO,
    ) -> None:
        super().__init__(inner)
        self.writer: TextWriter | logging.Logger = sys.stdout if writer is None else writer
        self.prefix = prefix
        self.level = level
        self._lock = _lock_for(self.writer)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_lock"]
        for name in _STANDARD_STREAMS:
            if state["writer"] is getattr(sys, name):
                state["writer"] = name  # the process's own stream, found again on load
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["writer"], str) and state["writer"] in _STANDARD_STREAMS:
            state["writer"] = getattr(sys, state["writer"])
        self.__dict__.update(state)
        self._lock = _lock_for(self.writer)

    @property
    @override
    def blocking_io(self) -> bool:  # type: ignore[override]
        return True  # writing the line is I/O too, whatever the inner storage is

    @property
    @override
    def blocking_reads(self) -> bool:
        return True  # a read writes its line too

    def _write(self, line: str) -> None:
        with self._lock:
            if isinstance(self.writer, logging.Logger):
                self.writer.log(self.level, line)
                return
            try:
                self.writer.write(line + "\n")
            except UnicodeEncodeError:
                # The writer's encoding cannot hold the line: a lone surrogate of a
                # refused key (no UTF-8 file takes one), "é" in an ASCII file. Escaped,
                # so that the call's own outcome, not the log's, reaches the caller.
                self.writer.write(line.encode("ascii", "backslashreplace").decode("ascii") + "\n")
            flush = getattr(self.writer, "flush", None)
            if flush is not None:
                flush()

    def _logged(
        self,
        operation: str,
        arguments: str,
        call: Callable[[], T],
        describe: Callable[[T], str],
    ) -> T:
        """Run ``call`` and write its line, naming ``operation`` explicitly."""
        start = self.prefix()
        head = f"{start}{operation} {arguments}" if arguments else f"{start}{operation}"
        try:
            result = call()
        except BaseException as exc:
            self._write(f"{head} -> error={type(exc).__name__}")
            raise
        self._write(f"{head} -> {describe(result)}")
        return result

    # -- reads --------------------------------------------------------------------

    @override
    def get(self, key: str, byte_range: ByteRange | None = None) -> bytes | None:
        return self._logged(
            "get", _request(key, byte_range), lambda: self.inner.get(key, byte_range), _read
        )

    @override
    def get_many(self, requests: Iterable[ReadRequest]) -> list[bytes | None]:
        batch = list(requests)
        arguments = " ".join([f"n={len(batch)}", *(_request(k, r) for k, r in batch)])
        return self._logged(
            "get_many",
            arguments,
            lambda: self.inner.get_many(batch),
            lambda values: "[" + ", ".join(_read(v) for v in values) + "]",
        )

    @override
    def size(self, key: str) -> int | None:
        return self._logged("size", _text(key), lambda: self.inner.size(key), _size)

    @override
    def size_prefix(self, prefix: str) -> int:
        return self._logged(
            "size_prefix", _text(prefix), lambda: self.inner.size_prefix(prefix), _size
        )

    @override
    def exists(self, key: str) -> bool:
        return self._logged("exists", _text(key), lambda: self.inner.exists(key), str)

    # -- writes -------------------------------------------------------------------

    @override
    def set(self, key: str, value: bytes) -> None:
        arguments = f"{_text(key)} len={memoryview(value).nbytes}"
        self._logged("set", arguments, lambda: self.inner.set(key, value), _ok)

    @override
    def set_if_absent(self, key: str, value: bytes) -> bool:
        arguments = f"{_text(key)} len={memoryview(value).nbytes}"
        return self._logged(
            "set_if_absent", arguments, lambda: self.inner.set_if_absent(key, value), str
        )

    @override
    def erase(self, key: str) -> None:
        self._logged("erase", _text(key), lambda: self.inner.erase(key), _ok)

    @override
    def erase_many(self, keys: Iterable[str]) -> None:
        batch = list(keys)
        arguments = " ".join([f"n={len(batch)}", *map(_text, batch)])
        self._logged("erase_many", arguments, lambda: self.inner.erase_many(batch), _ok)

    @override
    def erase_prefix(self, prefix: str) -> None:
        self._logged("erase_prefix", _text(prefix), lambda: self.inner.erase_prefix(prefix), _ok)

    # -- listing --------------------------------------------------------------------

    @override
    def list_prefix(self, prefix: str) -> Iterator[str]:
        keys = self._logged(
            "list_prefix",
            _text(prefix),
            lambda: list(self.inner.list_prefix(prefix)),
            lambda listed: f"keys={len(listed)}",
        )
        return iter(keys)

    @override
    def list_dir(self, prefix: str) -> DirListing:
        return self._logged(
            "list_dir",
            _text(prefix),
            lambda: self.inner.list_dir(prefix),
            lambda d: f"keys={len(d.keys)} prefixes={len(d.prefixes)}",
        )

    @override
    def is_empty(self, prefix: str) -> bool:
        return self._logged("is_empty", _text(prefix), lambda: self.inner.is_empty(prefix), str)

    @override
    def close(self) -> None:
        self._logged("close", "", self.inner.close, _ok)


class UsageLog(WrappingStore):
    """A zarr store that logs every storage call of ``store``, one line each.

    Example::

        store = UsageLog(FilesystemStore("data.zarr"), sys.stderr)
        xr.open_zarr(store).temperature.isel(time=0).load()

    Args:
        store: any zarr store from this package, or a bare storage.
        writer: a text writer (``sys.stdout`` by default, a file, ``io.StringIO``)
            or a ``logging.Logger``.
        prefix: called once per line; its result starts the line (the default is
            a UTC timestamp and a space).
        level: the logging level, when ``writer`` is a logger.
        read_only: ``None`` keeps ``store``'s setting; ``True`` / ``False`` changes it.
    """

    storage: UsageLogStorage

    def __init__(
        self,
        store: StoreLike,
        writer: TextWriter | logging.Logger | None = None,
        prefix: Callable[[], str] = utc_timestamp,
        *,
        level: int = logging.INFO,
        read_only: bool | None = None,
    ) -> None:
        super().__init__(UsageLogStorage(storage_of(store, read_only), writer, prefix, level=level))

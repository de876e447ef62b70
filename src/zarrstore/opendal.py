"""``OpendalStore`` and ``AsyncOpendalStore``: any Apache OpenDAL service as a zarr store.

The seed's OpenDAL blocking and async stores, over the ``opendal`` Python
binding: ``OpendalStorage`` wraps a blocking ``opendal.Operator`` and
``AsyncOpendalStorage`` an ``opendal.AsyncOperator``. One binding reaches the
local filesystem (``fs``), memory, FTP, WebDAV, HDFS, S3, GCS, Azure and the
rest of the services compiled into the wheel; ``from_scheme(scheme, **options)``
builds the operator from the service's own option names.

What is taken from the service, not assumed:

* **Capabilities.** ``supports_writes``, ``supports_deletes`` and
  ``supports_listing`` come from ``operator.capability()``, so a service that
  cannot list says so and listing raises ``UnsupportedOperationError``.
  ``supports_empty_values`` is false where the service cannot store an empty
  value (FTP): there ``set(key, b"")`` raises instead of silently storing
  nothing, which is what the service itself would do.
* **Conditional writes.** ``set_if_absent`` is the service's atomic create
  (``if_not_exists``) where it has one (``fs``, memory, S3); elsewhere it is
  the protocol's check-then-write default, which is not atomic.
* **Directories.** Services with real directories (those that cannot list
  recursively by themselves: ``fs``, FTP, WebDAV, ...) keep a directory after
  its last key is gone; erasing prunes the empty parents, as
  ``FilesystemStore`` does, so ``list_dir`` never shows an empty prefix.

Byte ranges are read as one ``stat`` (for the size, which clips the range and
resolves suffixes) and one ranged ``read``: services disagree on a range that
runs past the end (memory refuses it, FTP fails), so the store never asks one.

This is the one module that imports opendal; its errors become zarrstore
errors here (``NotFound`` on a read is a missing key; ``Unsupported`` is
``UnsupportedOperationError``; the rest are ``StorageIOError``). Sync listing
goes through the operator's async twin on a private event loop, because the
binding's blocking lister times out on FTP (opendal 0.47).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Self, TypeVar, override

import opendal
from opendal import exceptions as opendal_errors

from zarrstore.errors import StorageIOError, StorageTimeoutError, UnsupportedOperationError
from zarrstore.protocol import AsyncStorage, DirListing, Storage
from zarrstore.ranges import ByteRange, OffsetRequest, resolve
from zarrstore.zarr_bridge import ZarrStore

__all__ = ["AsyncOpendalStorage", "AsyncOpendalStore", "OpendalStorage", "OpendalStore"]

T = TypeVar("T")
Option = str | os.PathLike[str] | bool | int

#: Every error the binding raises (its exception classes share no base of their own).
_ERRORS: tuple[type[Exception], ...] = tuple(
    value
    for value in vars(opendal_errors).values()
    if isinstance(value, type) and issubclass(value, Exception)
)
_TAKEN = (opendal_errors.AlreadyExists, opendal_errors.ConditionNotMatch)
_MISSING = (opendal_errors.NotFound,)

#: Services whose ranged reads must run to the end of the value. opendal's FTP
#: service (0.47) hands a connection back to its pool while a partial transfer
#: is still open, and the next command on it fails ("Data connection is already
#: open"); a read to the end closes the transfer cleanly.
_READS_TO_END = frozenset({"ftp"})


def _brief(exc: BaseException) -> str:
    """An opendal error's headline and its source, without the context and backtrace."""
    sections = str(exc).split("\n\n")
    text = sections[0]
    for section in sections[1:]:
        head, _, body = section.partition("\n")
        if head.strip() == "Source:":
            text += ": " + " ".join(line.strip() for line in body.splitlines())
    return text


def _operator_options(options: dict[str, Option]) -> dict[str, str]:
    def text(value: Option) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        return os.fspath(value) if isinstance(value, os.PathLike) else str(value)

    return {name: text(value) for name, value in options.items()}


def _open(kind: Callable[..., T], scheme: str, options: dict[str, Option]) -> T:
    """``opendal.Operator(scheme, **options)`` (or the async one), its errors translated."""
    try:
        return kind(scheme, **_operator_options(options))
    except opendal_errors.Unsupported as exc:
        raise UnsupportedOperationError(
            f"opendal cannot open {scheme!r} here: {str(exc).split(chr(10))[0]}"
            f" ({_services_line(exc)})"
        ) from exc
    except opendal_errors.ConfigInvalid as exc:
        raise ValueError(f"invalid options for opendal {scheme!r}: {_brief(exc)}") from exc


def _services_line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        if line.strip().startswith("available:"):
            return line.strip()
    return "see the opendal docs for the services in this build"


def _identity(operator: opendal.Operator | opendal.AsyncOperator) -> tuple[object, ...]:
    """What makes two operators the same backing: scheme and options (memory: the object)."""
    scheme, options = operator.__reduce__()[1]
    if scheme == "memory":  # each memory operator is its own store
        return (scheme, id(operator))
    return (scheme, tuple(sorted(options.items())))


def _span(byte_range: ByteRange | None, size: int) -> tuple[int, int]:
    start, stop = resolve(byte_range, size)
    return start, stop - start


def _needs_size(byte_range: ByteRange | None) -> bool:
    return byte_range is not None and not (
        isinstance(byte_range, OffsetRequest) and byte_range.offset == 0
    )


def _parents(keys: Sequence[str]) -> list[str]:
    """Every directory holding one of ``keys`` (below the root), deepest first."""
    found: set[str] = set()
    for key in keys:
        cut = key.rfind("/")
        while cut > 0:
            found.add(key[: cut + 1])
            cut = key.rfind("/", 0, cut)
    return sorted(found, key=lambda d: (-d.count("/"), d))


def _run_in_thread(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on a fresh event loop in a worker thread, even inside a running loop."""
    box: dict[str, Any] = {}

    def main() -> None:
        try:
            box["value"] = asyncio.run(coroutine)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=main, name="zarrstore-opendal-list", daemon=True)
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


class _Features:
    """The parts of ``operator.capability()`` the protocol needs, read once."""

    def __init__(self, operator: opendal.Operator | opendal.AsyncOperator) -> None:
        capability = operator.capability()
        scheme = operator.__reduce__()[1][0]
        self.writes = bool(capability.write)
        self.deletes = bool(capability.delete)
        self.listing = bool(capability.list)
        self.empty_values = bool(capability.write_can_empty)
        self.atomic_create = bool(capability.write_with_if_not_exists)
        self.real_directories = not bool(capability.list_with_recursive)
        self.reads_to_end = scheme in _READS_TO_END


class _Boundary:
    """Shared by both storages: identity, capabilities and the error boundary."""

    _operator: opendal.Operator | opendal.AsyncOperator
    _features: _Features
    read_only: bool

    def __eq__(self, other: object) -> bool:
        return (
            type(self) is type(other)
            and isinstance(other, _Boundary)
            and self.read_only == other.read_only
            and _identity(self._operator) == _identity(other._operator)
        )

    def __hash__(self) -> int:
        return hash(_identity(self._operator))

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "writable"
        return f"{type(self).__name__}({self._operator!r}, {mode})"

    def __getstate__(self) -> dict[str, Any]:
        return {"operator": self._operator, "read_only": self.read_only}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["operator"], read_only=state["read_only"])  # type: ignore[misc]

    @property
    def supports_writes(self) -> bool:
        """Whether the service can store values (``capability().write``)."""
        return self._features.writes

    @property
    def supports_deletes(self) -> bool:
        """Whether the service can erase values (``capability().delete``)."""
        return self._features.deletes

    @property
    def supports_listing(self) -> bool:
        """Whether the service can enumerate keys (``capability().list``)."""
        return self._features.listing

    @property
    def supports_empty_values(self) -> bool:
        """Whether the service can store a zero-length value (not FTP)."""
        return self._features.empty_values

    @contextmanager
    def _translated(
        self, operation: str, key: str, *, let_through: tuple[type[Exception], ...] = ()
    ) -> Iterator[None]:
        """Turn opendal's errors into zarrstore's, at the boundary.

        Args:
            operation: what was attempted, for the message.
            key: the key (or prefix) it was attempted on.
            let_through: opendal errors the caller handles itself (``NotFound``
                read as a missing key, ``AlreadyExists`` as a lost create).
        """
        try:
            yield
        except let_through:
            raise
        except opendal_errors.Unsupported as exc:
            raise UnsupportedOperationError(
                f"{operation} {key!r} is not supported by {self!r}: {_brief(exc)}"
            ) from exc
        except _ERRORS as exc:
            message = f"{operation} {key!r} on {self!r}: {_brief(exc)}"
            if "timeout" in message.partition(": ")[2].lower():
                raise StorageTimeoutError(message) from exc
            raise StorageIOError(message) from exc

    def _refuse_empty(self, key: str, value: bytes) -> None:
        if not value and not self._features.empty_values:
            raise UnsupportedOperationError(
                f"set {key!r} on {self!r}: this service cannot store an empty value "
                "(opendal's capability write_can_empty is false)"
            )


class OpendalStorage(_Boundary, Storage):
    """The storage behind ``OpendalStore``: a blocking ``opendal.Operator``, keys as paths.

    Args:
        operator: the operator to use; ``from_scheme`` builds one.
        read_only: refuse every write with ``ReadOnlyError``.
    """

    def __init__(self, operator: opendal.Operator, *, read_only: bool = False) -> None:
        Storage.__init__(self, read_only=read_only)
        self._operator: opendal.Operator = operator
        self._features = _Features(operator)
        self._lister: opendal.AsyncOperator | None = None

    @classmethod
    def from_scheme(cls, scheme: str, *, read_only: bool = False, **options: Option) -> Self:
        """A storage on ``opendal.Operator(scheme, **options)``.

        Raises:
            UnsupportedOperationError: the service is not compiled into this wheel.
            ValueError: the options do not configure the service.
        """
        return cls(_open(opendal.Operator, scheme, options), read_only=read_only)

    @property
    def operator(self) -> opendal.Operator:
        """The opendal operator underneath."""
        return self._operator

    # -- reads --------------------------------------------------------------------

    def _stat_size(self, key: str) -> int | None:
        try:
            with self._translated("stat", key, let_through=_MISSING):
                meta = self._operator.stat(key)
        except opendal_errors.NotFound:
            return None
        return int(meta.content_length) if meta.is_file else None

    @override
    def _size(self, key: str) -> int | None:
        return self._stat_size(key)

    @override
    def _get(self, key: str, byte_range: ByteRange | None) -> bytes | None:
        offset, length = 0, None
        if _needs_size(byte_range):
            size = self._stat_size(key)
            if size is None:
                return None
            offset, length = _span(byte_range, size)
            if length == 0:
                return b""
        try:
            with self._translated("read", key, let_through=_MISSING):
                if length is None:
                    return bytes(self._operator.read(key))
                if self._features.reads_to_end:
                    return bytes(self._operator.read(key, offset=offset))[:length]
                return bytes(self._operator.read(key, offset=offset, size=length))
        except opendal_errors.NotFound:
            return None
        except StorageIOError:
            if self._stat_size(key) is None:  # a directory: no value here
                return None
            raise

    # -- listing ------------------------------------------------------------------

    def _async_twin(self) -> opendal.AsyncOperator:
        if self._lister is None:
            self._lister = self._operator.to_async_operator()
        return self._lister

    @override
    def _list_prefix(self, prefix: str) -> Iterator[str]:
        twin = self._async_twin()
        return iter(_run_in_thread(_async_keys(self, twin, prefix)))

    @override
    def _list_dir(self, prefix: str) -> DirListing:
        return _run_in_thread(_async_dir(self, self._async_twin(), prefix))

    # -- writes -------------------------------------------------------------------

    @override
    def _set(self, key: str, value: bytes) -> None:
        self._refuse_empty(key, value)
        with self._translated("write", key):
            self._operator.write(key, value)

    @override
    def _set_if_absent(self, key: str, value: bytes) -> bool:
        if not self._features.atomic_create:
            return super()._set_if_absent(key, value)
        self._refuse_empty(key, value)
        try:
            with self._translated("write (if not exists)", key, let_through=_TAKEN):
                self._operator.write(key, value, if_not_exists=True)
        except _TAKEN:
            return False
        return True

    @override
    def _erase(self, key: str) -> None:
        self._erase_many([key])

    @override
    def _erase_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            with self._translated("delete", key):
                self._operator.delete(key)
        self._prune(keys)

    @override
    def _erase_prefix(self, prefix: str) -> None:
        self._erase_many(list(self._list_prefix(prefix)))

    def _prune(self, keys: Sequence[str]) -> None:
        """Remove directories left empty by erasing ``keys`` (services with real directories)."""
        if not self._features.real_directories:
            return
        for directory in _parents(keys):
            try:  # a directory that still holds something stays: the service refuses
                self._operator.delete(directory)
            except _ERRORS:
                pass

    @override
    def _with_read_only(self, read_only: bool) -> OpendalStorage:
        return type(self)(self._operator, read_only=read_only)


class AsyncOpendalStorage(_Boundary, AsyncStorage):
    """The storage behind ``AsyncOpendalStore``: an ``opendal.AsyncOperator``, keys as paths.

    Args:
        operator: the operator to use; ``from_scheme`` builds one.
        read_only: refuse every write with ``ReadOnlyError``.
    """

    def __init__(self, operator: opendal.AsyncOperator, *, read_only: bool = False) -> None:
        AsyncStorage.__init__(self, read_only=read_only)
        self._operator: opendal.AsyncOperator = operator
        self._features = _Features(operator)

    @classmethod
    def from_scheme(cls, scheme: str, *, read_only: bool = False, **options: Option) -> Self:
        """A storage on ``opendal.AsyncOperator(scheme, **options)``.

        Raises:
            UnsupportedOperationError: the service is not compiled into this wheel.
            ValueError: the options do not configure the service.
        """
        return cls(_open(opendal.AsyncOperator, scheme, options), read_only=read_only)

    @property
    def operator(self) -> opendal.AsyncOperator:
        """The opendal operator underneath."""
        return self._operator

    async def _stat_size(self, key: str) -> int | None:
        try:
            with self._translated("stat", key, let_through=_MISSING):
                meta = await self._operator.stat(key)
        except opendal_errors.NotFound:
            return None
        return int(meta.content_length) if meta.is_file else None

    @override
    async def _size(self, key: str) -> int | None:
        return await self._stat_size(key)

    @override
    async def _get(self, key: str, byte_range: ByteRange | None) -> bytes | None:
        offset, length = 0, None
        if _needs_size(byte_range):
            size = await self._stat_size(key)
            if size is None:
                return None
            offset, length = _span(byte_range, size)
            if length == 0:
                return b""
        try:
            with self._translated("read", key, let_through=_MISSING):
                if length is None:
                    return bytes(await self._operator.read(key))
                if self._features.reads_to_end:
                    return bytes(await self._operator.read(key, offset=offset))[:length]
                return bytes(await self._operator.read(key, offset=offset, size=length))
        except opendal_errors.NotFound:
            return None
        except StorageIOError:
            if await self._stat_size(key) is None:  # a directory: no value here
                return None
            raise

    @override
    async def _list_prefix(self, prefix: str) -> list[str]:
        return await _async_keys(self, self._operator, prefix)

    @override
    async def _list_dir(self, prefix: str) -> DirListing:
        return await _async_dir(self, self._operator, prefix)

    @override
    async def _set(self, key: str, value: bytes) -> None:
        self._refuse_empty(key, value)
        with self._translated("write", key):
            await self._operator.write(key, value)

    @override
    async def _set_if_absent(self, key: str, value: bytes) -> bool:
        if not self._features.atomic_create:
            return await super()._set_if_absent(key, value)
        self._refuse_empty(key, value)
        try:
            with self._translated("write (if not exists)", key, let_through=_TAKEN):
                await self._operator.write(key, value, if_not_exists=True)
        except _TAKEN:
            return False
        return True

    @override
    async def _erase(self, key: str) -> None:
        await self._erase_many([key])

    @override
    async def _erase_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            with self._translated("delete", key):
                await self._operator.delete(key)
        await self._prune(keys)

    @override
    async def _erase_prefix(self, prefix: str) -> None:
        await self._erase_many(await self._list_prefix(prefix))

    async def _prune(self, keys: Sequence[str]) -> None:
        """Remove directories left empty by erasing ``keys`` (services with real directories)."""
        if not self._features.real_directories:
            return
        for directory in _parents(keys):
            try:  # a directory that still holds something stays: the service refuses
                await self._operator.delete(directory)
            except _ERRORS:
                pass

    @override
    def _with_read_only(self, read_only: bool) -> AsyncOpendalStorage:
        return type(self)(self._operator, read_only=read_only)


async def _entries(
    storage: _Boundary, operator: opendal.AsyncOperator, prefix: str
) -> list[tuple[str, bool]]:
    """``(path, is_directory)`` of each direct child of ``prefix``; a missing prefix is empty."""
    try:
        with storage._translated("list", prefix, let_through=_MISSING):
            lister = await operator.list(prefix or "/")
            found = [(entry.path, entry.path.endswith("/")) async for entry in lister]
    except opendal_errors.NotFound:
        return []
    return [(path, is_dir) for path, is_dir in found if path not in (prefix, "/")]


async def _async_keys(
    storage: _Boundary, operator: opendal.AsyncOperator, prefix: str
) -> list[str]:
    """Every key under ``prefix``, sorted.

    Services that list recursively by themselves (object stores) are asked
    once. Directory services are walked here, one listing per directory and a
    level at a time: opendal's own emulated recursive listing never returns
    for a missing directory on FTP (opendal 0.47).
    """
    if not storage._features.real_directories:
        try:
            with storage._translated("list", prefix, let_through=_MISSING):
                lister = await operator.list(prefix or "/", recursive=True)
                return sorted([e.path async for e in lister if not e.path.endswith("/")])
        except opendal_errors.NotFound:
            return []
    keys: list[str] = []
    level = [prefix]
    while level:
        listings = await asyncio.gather(*(_entries(storage, operator, d) for d in level))
        level = []
        for entries in listings:
            for path, is_dir in entries:
                (level if is_dir else keys).append(path)
    return sorted(keys)


async def _async_dir(
    storage: _Boundary, operator: opendal.AsyncOperator, prefix: str
) -> DirListing:
    entries = await _entries(storage, operator, prefix)
    return DirListing(
        keys=tuple(sorted(path for path, is_dir in entries if not is_dir)),
        prefixes=tuple(sorted(path for path, is_dir in entries if is_dir)),
    )


class OpendalStore(ZarrStore):
    """A zarr store over a blocking ``opendal.Operator``; or build one with ``from_scheme``.

    Args:
        operator: any blocking operator (``opendal.Operator("fs", root=...)``).
        read_only: refuse every write with ``ReadOnlyError``.
    """

    storage: OpendalStorage

    def __init__(self, operator: opendal.Operator, *, read_only: bool = False) -> None:
        super().__init__(OpendalStorage(operator, read_only=read_only))

    @classmethod
    def from_scheme(cls, scheme: str, *, read_only: bool = False, **options: Option) -> Self:
        """A store on ``opendal.Operator(scheme, **options)``: ``from_scheme("fs", root=...)``.

        Raises:
            UnsupportedOperationError: the service is not compiled into this wheel.
            ValueError: the options do not configure the service.
        """
        return cls(_open(opendal.Operator, scheme, options), read_only=read_only)

    @property
    def operator(self) -> opendal.Operator:
        """The opendal operator underneath."""
        return self.storage.operator


class AsyncOpendalStore(ZarrStore):
    """A zarr store over an ``opendal.AsyncOperator``; or build one with ``from_scheme``.

    Args:
        operator: any async operator (``opendal.AsyncOperator("memory")``).
        read_only: refuse every write with ``ReadOnlyError``.
    """

    storage: AsyncOpendalStorage

    def __init__(self, operator: opendal.AsyncOperator, *, read_only: bool = False) -> None:
        super().__init__(AsyncOpendalStorage(operator, read_only=read_only))

    @classmethod
    def from_scheme(cls, scheme: str, *, read_only: bool = False, **options: Option) -> Self:
        """A store on ``opendal.AsyncOperator(scheme, **options)``.

        Raises:
            UnsupportedOperationError: the service is not compiled into this wheel.
            ValueError: the options do not configure the service.
        """
        return cls(_open(opendal.AsyncOperator, scheme, options), read_only=read_only)

    @property
    def operator(self) -> opendal.AsyncOperator:
        """The opendal operator underneath."""
        return self.storage.operator

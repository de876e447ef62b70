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
  (``if_not_exists``) where it has one (memory, S3, ``fs`` without
  ``atomic_write_dir``); elsewhere it is the protocol's check-then-write
  default, which is not atomic across processes. Within one storage, racing
  ``set_if_absent`` calls of one key take turns, so exactly one stores.
* **Directories.** Services with real directories (those that cannot list
  recursively by themselves: ``fs``, FTP, WebDAV, ...) keep a directory after
  its last key is gone; erasing prunes the empty parents, as
  ``FilesystemStore`` does, so ``list_dir`` never shows an empty prefix. A
  store never prunes a directory under one of its own writes in flight, and a
  write whose directory was pruned elsewhere is tried again. There a key
  cannot sit beside keys under it (``g/x`` and ``g/x/zarr.json``): that write
  raises ``StorageIOError``.
* **Impossible keys.** A key that names a directory or runs through a value
  (``arr/c/0/0`` under ``arr/c/0``) holds nothing: reads give ``None``,
  erases do nothing (docs/protocol.md).

Byte ranges are read as one ``stat`` (for the size, which clips the range and
resolves suffixes) and one ranged ``read``: services disagree on a range that
runs past the end (memory refuses it, FTP fails), so the store never asks one.

Only this module and ``zarrstore.opendal_boundary`` (what both storages share:
capabilities, the error boundary, listings) import opendal. Its errors become
zarrstore errors there: ``NotFound`` on a read is a missing key, and so
are the service's "Not a directory" / "Is a directory" answers (a no-op on
erase),
``Unsupported`` is ``UnsupportedOperationError``, the rest ``StorageIOError``.
Sync listing goes through the operator's async twin on a private event loop,
because the binding's blocking lister times out on FTP (opendal 0.47), and
ranged reads on FTP run to the end of the value (a partial transfer spoils
the binding's pooled FTP connection).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import suppress
from typing import Self, override

import opendal

from zarrstore.errors import StorageIOError
from zarrstore.opendal_boundary import (
    ERRORS,
    MISSING,
    PRUNED_RETRIES,
    TAKEN,
    DirectoryGate,
    DirectoryPruned,
    Features,
    OpendalBoundary,
    Option,
    has_keys,
    list_children,
    list_keys,
    needs_size,
    open_operator,
    parents,
    reopening,
    run_in_thread,
    span,
)
from zarrstore.protocol import AsyncStorage, DirListing, Storage
from zarrstore.ranges import ByteRange
from zarrstore.rust_runtimes import OPENDAL
from zarrstore.zarr_bridge import ZarrStore

__all__ = ["AsyncOpendalStorage", "AsyncOpendalStore", "OpendalStorage", "OpendalStore"]


class OpendalStorage(OpendalBoundary, Storage):
    """The storage behind ``OpendalStore``: a blocking ``opendal.Operator``, keys as paths.

    Args:
        operator: the operator to use; ``from_scheme`` builds one.
        read_only: refuse every write with ``ReadOnlyError``.
    """

    def __init__(self, operator: opendal.Operator, *, read_only: bool = False) -> None:
        Storage.__init__(self, read_only=read_only)
        OPENDAL.note_use()  # a blocking operator has started the runtime (rust_runtimes)
        self._operator: opendal.Operator = operator
        self._reopen = reopening(operator)
        self._features = Features.of(operator)
        self._gate = DirectoryGate()
        self._lister: opendal.AsyncOperator | None = None

    @classmethod
    def from_scheme(cls, scheme: str, *, read_only: bool = False, **options: Option) -> Self:
        """A storage on ``opendal.Operator(scheme, **options)``.

        Options are the service's own (``root``, ``endpoint``, ``bucket``, ...);
        for ``fs`` give ``atomic_write_dir`` too, or writes happen in place and a
        concurrent reader can see a torn value.

        Raises:
            UnsupportedOperationError: the service is not compiled into this wheel.
            ValueError: the options do not configure the service.
        """
        return cls(open_operator(opendal.Operator, scheme, options), read_only=read_only)

    @property
    def operator(self) -> opendal.Operator:
        """The opendal operator underneath."""
        return self._operator

    # -- reads --------------------------------------------------------------------

    def _stat_size(self, key: str) -> int | None:
        try:
            with self._translated("stat", key, let_through=MISSING):
                meta = self._operator.stat(key)
                parent = self._parent_to_confirm(key) if meta.is_file else None
                if parent is not None:  # NotFound when the parent is a file, not a directory
                    self._operator.stat(parent)
        except MISSING:
            return None
        return int(meta.content_length) if meta.is_file else None

    @override
    def _size(self, key: str) -> int | None:
        return self._stat_size(key)

    @override
    def _get(self, key: str, byte_range: ByteRange | None) -> bytes | None:
        offset, length = 0, None
        if needs_size(byte_range):
            size = self._stat_size(key)
            if size is None:
                return None
            offset, length = span(byte_range, size)
            if length == 0:
                return b""
        try:
            with self._translated("read", key, let_through=MISSING):
                if length is None:
                    return bytes(self._operator.read(key))
                if self._features.reads_to_end:
                    return bytes(self._operator.read(key, offset=offset))[:length]
                return bytes(self._operator.read(key, offset=offset, size=length))
        except MISSING:
            return None
        except StorageIOError:
            with suppress(StorageIOError):  # if the stat fails too, the read's error stands
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
        return iter(run_in_thread(list_keys(self, twin, prefix)))

    @override
    def _list_dir(self, prefix: str) -> DirListing:
        return run_in_thread(list_children(self, self._async_twin(), prefix))

    @override
    def _is_empty(self, prefix: str) -> bool:
        return not run_in_thread(has_keys(self, self._async_twin(), prefix))

    # -- writes -------------------------------------------------------------------

    @override
    def _set(self, key: str, value: bytes) -> None:
        self._refuse_empty(key, value)
        for _ in range(PRUNED_RETRIES):
            try:
                with (
                    self._gate.writing(key),
                    self._translated("write", key, let_through=(DirectoryPruned,)),
                ):
                    self._operator.write(key, value)
                return
            except DirectoryPruned:  # a concurrent erase removed the directory: again
                continue
        raise StorageIOError(f"cannot store {key!r} on {self!r}: its directory keeps being removed")

    @override
    def _set_if_absent(self, key: str, value: bytes) -> bool:
        with self._gate.creating(key):
            return self._create(key, value)

    def _create(self, key: str, value: bytes) -> bool:
        if not self._features.atomic_create:
            return super()._set_if_absent(key, value)
        self._refuse_empty(key, value)
        for _ in range(PRUNED_RETRIES):
            try:
                with (
                    self._gate.writing(key),
                    self._translated(
                        "write (if not exists)", key, let_through=(*TAKEN, DirectoryPruned)
                    ),
                ):
                    self._operator.write(key, value, if_not_exists=True)
            except TAKEN:
                return False
            except DirectoryPruned:  # a concurrent erase removed the directory: again
                continue
            return True
        raise StorageIOError(f"cannot store {key!r} on {self!r}: its directory keeps being removed")

    @override
    def _erase(self, key: str) -> None:
        self._erase_many([key])

    @override
    def _erase_many(self, keys: Sequence[str]) -> None:
        erased = []
        for key in keys:
            try:
                with self._translated("delete", key, let_through=MISSING):
                    self._operator.delete(key)
            except MISSING:  # a path through a value, or a directory: nothing to erase
                continue
            erased.append(key)
        self._prune(erased)

    @override
    def _erase_prefix(self, prefix: str) -> None:
        self._erase_many(list(self._list_prefix(prefix)))

    def _prune(self, keys: Sequence[str]) -> None:
        """Remove directories left empty by erasing ``keys`` (services with real directories)."""
        if not self._features.real_directories:
            return
        for directory in parents(keys):
            if not self._gate.begin_prune(directory):  # a write under it is in flight
                continue
            try:  # a directory that still holds something stays: the service refuses
                self._operator.delete(directory)
            except ERRORS:
                pass
            finally:
                self._gate.end_prune(directory)

    @override
    def _with_read_only(self, read_only: bool) -> OpendalStorage:
        return type(self)(self._operator, read_only=read_only)


class AsyncOpendalStorage(OpendalBoundary, AsyncStorage):
    """The storage behind ``AsyncOpendalStore``: an ``opendal.AsyncOperator``, keys as paths.

    Args:
        operator: the operator to use; ``from_scheme`` builds one.
        read_only: refuse every write with ``ReadOnlyError``.
    """

    def __init__(self, operator: opendal.AsyncOperator, *, read_only: bool = False) -> None:
        AsyncStorage.__init__(self, read_only=read_only)
        self._operator: opendal.AsyncOperator = operator
        self._reopen = reopening(operator)
        self._features = Features.of(operator)
        self._gate = DirectoryGate()

    @classmethod
    def from_scheme(cls, scheme: str, *, read_only: bool = False, **options: Option) -> Self:
        """A storage on ``opendal.AsyncOperator(scheme, **options)``.

        Raises:
            UnsupportedOperationError: the service is not compiled into this wheel.
            ValueError: the options do not configure the service.
        """
        return cls(open_operator(opendal.AsyncOperator, scheme, options), read_only=read_only)

    @property
    def operator(self) -> opendal.AsyncOperator:
        """The opendal operator underneath."""
        return self._operator

    async def _stat_size(self, key: str) -> int | None:
        try:
            with self._translated("stat", key, let_through=MISSING):
                meta = await self._operator.stat(key)
                parent = self._parent_to_confirm(key) if meta.is_file else None
                if parent is not None:  # NotFound when the parent is a file, not a directory
                    await self._operator.stat(parent)
        except MISSING:
            return None
        return int(meta.content_length) if meta.is_file else None

    @override
    async def _size(self, key: str) -> int | None:
        return await self._stat_size(key)

    @override
    async def _get(self, key: str, byte_range: ByteRange | None) -> bytes | None:
        offset, length = 0, None
        if needs_size(byte_range):
            size = await self._stat_size(key)
            if size is None:
                return None
            offset, length = span(byte_range, size)
            if length == 0:
                return b""
        try:
            with self._translated("read", key, let_through=MISSING):
                if length is None:
                    return bytes(await self._operator.read(key))
                if self._features.reads_to_end:
                    return bytes(await self._operator.read(key, offset=offset))[:length]
                return bytes(await self._operator.read(key, offset=offset, size=length))
        except MISSING:
            return None
        except StorageIOError:
            with suppress(StorageIOError):  # if the stat fails too, the read's error stands
                if await self._stat_size(key) is None:  # a directory: no value here
                    return None
            raise

    @override
    async def _list_prefix(self, prefix: str) -> list[str]:
        return await list_keys(self, self._operator, prefix)

    @override
    async def _list_dir(self, prefix: str) -> DirListing:
        return await list_children(self, self._operator, prefix)

    @override
    async def _is_empty(self, prefix: str) -> bool:
        return not await has_keys(self, self._operator, prefix)

    @override
    async def _set(self, key: str, value: bytes) -> None:
        self._refuse_empty(key, value)
        for _ in range(PRUNED_RETRIES):
            try:
                async with self._gate.writing_async(key):
                    with self._translated("write", key, let_through=(DirectoryPruned,)):
                        await self._operator.write(key, value)
                return
            except DirectoryPruned:  # a concurrent erase removed the directory: again
                continue
        raise StorageIOError(f"cannot store {key!r} on {self!r}: its directory keeps being removed")

    @override
    async def _set_if_absent(self, key: str, value: bytes) -> bool:
        async with self._gate.creating_async(key):
            return await self._create(key, value)

    async def _create(self, key: str, value: bytes) -> bool:
        if not self._features.atomic_create:
            return await super()._set_if_absent(key, value)
        self._refuse_empty(key, value)
        for _ in range(PRUNED_RETRIES):
            try:
                async with self._gate.writing_async(key):
                    with self._translated(
                        "write (if not exists)", key, let_through=(*TAKEN, DirectoryPruned)
                    ):
                        await self._operator.write(key, value, if_not_exists=True)
            except TAKEN:
                return False
            except DirectoryPruned:  # a concurrent erase removed the directory: again
                continue
            return True
        raise StorageIOError(f"cannot store {key!r} on {self!r}: its directory keeps being removed")

    @override
    async def _erase(self, key: str) -> None:
        await self._erase_many([key])

    @override
    async def _erase_many(self, keys: Sequence[str]) -> None:
        erased = []
        for key in keys:
            try:
                with self._translated("delete", key, let_through=MISSING):
                    await self._operator.delete(key)
            except MISSING:  # a path through a value, or a directory: nothing to erase
                continue
            erased.append(key)
        await self._prune(erased)

    @override
    async def _erase_prefix(self, prefix: str) -> None:
        await self._erase_many(await self._list_prefix(prefix))

    async def _prune(self, keys: Sequence[str]) -> None:
        """Remove directories left empty by erasing ``keys`` (services with real directories)."""
        if not self._features.real_directories:
            return
        for directory in parents(keys):
            if not self._gate.begin_prune(directory):  # a write under it is in flight
                continue
            try:  # a directory that still holds something stays: the service refuses
                await self._operator.delete(directory)
            except ERRORS:
                pass
            finally:
                self._gate.end_prune(directory)

    @override
    def _with_read_only(self, read_only: bool) -> AsyncOpendalStorage:
        return type(self)(self._operator, read_only=read_only)


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

        Options are the service's own; for ``fs`` give ``atomic_write_dir`` too,
        or writes happen in place and a concurrent reader can see a torn value.

        Raises:
            UnsupportedOperationError: the service is not compiled into this wheel.
            ValueError: the options do not configure the service.
        """
        return cls(open_operator(opendal.Operator, scheme, options), read_only=read_only)

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
        return cls(open_operator(opendal.AsyncOperator, scheme, options), read_only=read_only)

    @property
    def operator(self) -> opendal.AsyncOperator:
        """The opendal operator underneath."""
        return self.storage.operator

"""Bridges between the sync and async store protocols: ``AsyncToSync`` and ``SyncToAsync``.

This is the seed's ``AsyncToSyncStorageAdapter`` and its reverse, in the
adapter layer above ``zarrstore.protocol``.

``AsyncToSync(async_storage)`` is a synchronous ``Storage`` over an
``AsyncStorage``: each call builds the coroutine and hands it to a *runner*,
a callable that drives a coroutine to completion and returns its result (the
seed's ``block_on``). The default runner submits every coroutine to one
process-wide event loop that lives in a daemon thread, so it works

* inside a running event loop (Jupyter, an ``async def`` test), where
  ``asyncio.run`` would refuse to start;
* from many threads at once, since the calling threads only wait on futures;
* with async clients that bind to the loop they were first used on (an
  ``aiohttp`` session), because every call runs on the same loop.

``SyncToAsync(storage)`` is an ``AsyncStorage`` over a synchronous
``Storage``: each blocking call runs in a worker thread with
``asyncio.to_thread``, so the caller's event loop keeps serving other tasks
while the storage waits on a disk or a network. Storages that declare
``blocking_io = False`` (``MemoryStorage``) are called directly, and so are
the reads of those whose ``blocking_reads`` is false (``LMDBStorage``).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator
from concurrent.futures import Future
from typing import Any, ParamSpec, Protocol, TypeVar, override

from zarrstore.protocol import AsyncStorage, DirListing, ReadRequest, Storage, ValueInfo
from zarrstore.ranges import ByteRange
from zarrstore.zarr_bridge import ZarrStore

__all__ = ["AsyncToSync", "Runner", "SyncToAsync", "run_in_background_loop"]

T = TypeVar("T")
P = ParamSpec("P")


class Runner(Protocol):
    """Drives one coroutine to completion and returns its result (the seed's ``block_on``)."""

    def __call__(self, coroutine: Coroutine[Any, Any, T], /) -> T:
        """Run ``coroutine`` to completion; return its result or raise its exception."""
        ...


class _BackgroundLoop:
    """One event loop in a daemon thread, started on first use and after a fork."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def loop(self) -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
        with self._lock:
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="zarrstore-async-to-sync", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop, self._thread

    def forget(self) -> None:
        # In a forked child the thread is gone; the lock may even be held by it.
        self._lock = threading.Lock()
        self._loop = None
        self._thread = None


_BACKGROUND = _BackgroundLoop()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_BACKGROUND.forget)


def run_in_background_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on the process-wide background event loop and wait for it.

    The default runner of ``AsyncToSync``. Safe from any thread and from inside
    a running event loop, because the caller only blocks on a future while the
    coroutine runs on a loop of its own.

    Raises:
        RuntimeError: when called from the background loop itself, which would
            wait forever on its own work (call the async storage directly there).
    """
    loop, thread = _BACKGROUND.loop()
    if threading.current_thread() is thread:
        coroutine.close()
        raise RuntimeError(
            "AsyncToSync was called from its own background event loop; "
            "await the async storage directly instead"
        )
    future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, loop)
    try:
        return future.result()
    except BaseException:
        # Interrupted while waiting (KeyboardInterrupt): do not leave the work running.
        future.cancel()
        raise


def _async_storage_of(store: AsyncStorage | ZarrStore) -> AsyncStorage:
    storage = store.storage if isinstance(store, ZarrStore) else store
    if not isinstance(storage, AsyncStorage):
        raise TypeError(f"AsyncToSync needs an AsyncStorage, got {type(storage).__name__}")
    return storage


def _sync_storage_of(store: Storage | ZarrStore) -> Storage:
    storage = store.storage if isinstance(store, ZarrStore) else store
    if not isinstance(storage, Storage):
        raise TypeError(f"SyncToAsync needs a Storage, got {type(storage).__name__}")
    return storage


class AsyncToSync(Storage):
    """A synchronous storage over an async one.

    Every call, public or primitive, forwards to the same-named method of
    ``inner`` and runs it with ``runner``; results and exceptions come back
    unchanged. Key validation and read-only refusal are ``inner``'s own.

    Args:
        inner: the async storage (or a ``ZarrStore`` over one).
        runner: drives a coroutine to completion; defaults to
            ``run_in_background_loop``. ``asyncio.run`` also works where no
            loop is running, at the cost of a fresh loop per call.
    """

    def __init__(
        self,
        inner: AsyncStorage | ZarrStore,
        runner: Runner = run_in_background_loop,
    ) -> None:
        self.inner = _async_storage_of(inner)
        self.runner = runner
        super().__init__(read_only=self.inner.read_only)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, AsyncToSync)
            and type(other) is type(self)
            and self.inner == other.inner
        )

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.inner))  # as equality: by inner

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"

    @property
    @override
    def read_only(self) -> bool:
        return self.inner.read_only

    @property
    @override
    def supports_writes(self) -> bool:
        return self.inner.supports_writes

    @property
    @override
    def supports_deletes(self) -> bool:
        return self.inner.supports_deletes

    @property
    @override
    def supports_listing(self) -> bool:
        return self.inner.supports_listing

    # -- primitives (reached only through Storage's own defaults) -------------------

    @override
    def _get(self, key: str, byte_range: ByteRange | None) -> bytes | None:
        return self.runner(self.inner.get(key, byte_range))

    @override
    def _set(self, key: str, value: bytes) -> None:
        self.runner(self.inner.set(key, value))

    @override
    def _erase(self, key: str) -> None:
        self.runner(self.inner.erase(key))

    @override
    def _list_prefix(self, prefix: str) -> Iterator[str]:
        return iter(self.runner(self.inner.list_prefix(prefix)))

    @override
    def _size(self, key: str) -> int | None:
        return self.runner(self.inner.size(key))

    @override
    def _with_read_only(self, read_only: bool) -> AsyncToSync:
        return type(self)(self.inner.with_read_only(read_only), self.runner)

    # -- the public protocol, forwarded whole ---------------------------------------

    @override
    def get(self, key: str, byte_range: ByteRange | None = None) -> bytes | None:
        return self.runner(self.inner.get(key, byte_range))

    @override
    def get_many(self, requests: Iterable[ReadRequest]) -> list[bytes | None]:
        return self.runner(self.inner.get_many(list(requests)))

    @override
    def size(self, key: str) -> int | None:
        return self.runner(self.inner.size(key))

    @override
    def size_prefix(self, prefix: str) -> int:
        return self.runner(self.inner.size_prefix(prefix))

    @override
    def stat(self, key: str) -> ValueInfo | None:
        return self.runner(self.inner.stat(key))

    @override
    def exists(self, key: str) -> bool:
        return self.runner(self.inner.exists(key))

    @override
    def set(self, key: str, value: bytes) -> None:
        self.runner(self.inner.set(key, value))

    @override
    def set_if_absent(self, key: str, value: bytes) -> bool:
        return self.runner(self.inner.set_if_absent(key, value))

    @override
    def erase(self, key: str) -> None:
        self.runner(self.inner.erase(key))

    @override
    def erase_many(self, keys: Iterable[str]) -> None:
        self.runner(self.inner.erase_many(list(keys)))

    @override
    def erase_prefix(self, prefix: str) -> None:
        self.runner(self.inner.erase_prefix(prefix))

    @override
    def list_prefix(self, prefix: str) -> Iterator[str]:
        return iter(self.runner(self.inner.list_prefix(prefix)))

    @override
    def list_dir(self, prefix: str) -> DirListing:
        return self.runner(self.inner.list_dir(prefix))

    @override
    def is_empty(self, prefix: str) -> bool:
        return self.runner(self.inner.is_empty(prefix))

    @override
    def close(self) -> None:
        self.runner(self.inner.aclose())


async def _in_thread_if(blocking: bool, function: Callable[P, T], *args: P.args,
                        **kwargs: P.kwargs) -> T:
    """``function(*args, **kwargs)``, in a worker thread if ``blocking``."""
    if blocking:
        return await asyncio.to_thread(function, *args, **kwargs)
    return function(*args, **kwargs)


class SyncToAsync(AsyncStorage):
    """An async storage over a synchronous one, never blocking the event loop.

    Each call forwards to the same-named method of ``inner``; when
    ``inner.blocking_io`` is true (``inner.blocking_reads`` for a read) it
    runs in a worker thread (``asyncio.to_thread``), so other tasks keep
    running meanwhile.

    Args:
        inner: the synchronous storage (or a ``ZarrStore`` over one).
    """

    def __init__(self, inner: Storage | ZarrStore) -> None:
        self.inner = _sync_storage_of(inner)
        super().__init__(read_only=self.inner.read_only)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SyncToAsync)
            and type(other) is type(self)
            and self.inner == other.inner
        )

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.inner))  # as equality: by inner

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"

    async def _run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await _in_thread_if(self.inner.blocking_io, function, *args, **kwargs)

    async def _read(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``_run`` for a read call: in a thread only if ``inner.blocking_reads``."""
        return await _in_thread_if(self.inner.blocking_reads, function, *args, **kwargs)

    @property
    @override
    def read_only(self) -> bool:
        return self.inner.read_only

    @property
    @override
    def supports_writes(self) -> bool:
        return self.inner.supports_writes

    @property
    @override
    def supports_deletes(self) -> bool:
        return self.inner.supports_deletes

    @property
    @override
    def supports_listing(self) -> bool:
        return self.inner.supports_listing

    # -- primitives (reached only through AsyncStorage's own defaults) ---------------

    @override
    async def _get(self, key: str, byte_range: ByteRange | None) -> bytes | None:
        return await self.get(key, byte_range)

    @override
    async def _set(self, key: str, value: bytes) -> None:
        await self.set(key, value)

    @override
    async def _erase(self, key: str) -> None:
        await self.erase(key)

    @override
    async def _list_prefix(self, prefix: str) -> list[str]:
        return await self.list_prefix(prefix)

    @override
    async def _size(self, key: str) -> int | None:
        return await self.size(key)

    @override
    def _with_read_only(self, read_only: bool) -> SyncToAsync:
        return type(self)(self.inner.with_read_only(read_only))

    # -- the public protocol, forwarded whole ---------------------------------------

    @override
    async def get(self, key: str, byte_range: ByteRange | None = None) -> bytes | None:
        return await self._read(self.inner.get, key, byte_range)

    @override
    async def get_many(self, requests: Iterable[ReadRequest]) -> list[bytes | None]:
        return await self._read(self.inner.get_many, list(requests))

    @override
    async def size(self, key: str) -> int | None:
        return await self._read(self.inner.size, key)

    @override
    async def size_prefix(self, prefix: str) -> int:
        return await self._read(self.inner.size_prefix, prefix)

    @override
    async def stat(self, key: str) -> ValueInfo | None:
        return await self._read(self.inner.stat, key)

    @override
    async def exists(self, key: str) -> bool:
        return await self._read(self.inner.exists, key)

    @override
    async def set(self, key: str, value: bytes) -> None:
        await self._run(self.inner.set, key, value)

    @override
    async def set_if_absent(self, key: str, value: bytes) -> bool:
        return await self._run(self.inner.set_if_absent, key, value)

    @override
    async def erase(self, key: str) -> None:
        await self._run(self.inner.erase, key)

    @override
    async def erase_many(self, keys: Iterable[str]) -> None:
        await self._run(self.inner.erase_many, list(keys))

    @override
    async def erase_prefix(self, prefix: str) -> None:
        await self._run(self.inner.erase_prefix, prefix)

    @override
    async def list_prefix(self, prefix: str) -> list[str]:
        # Materialised in one call: iterating lazily would do I/O on the loop.
        return await self._read(_listed, self.inner, prefix)

    @override
    async def list_dir(self, prefix: str) -> DirListing:
        return await self._read(self.inner.list_dir, prefix)

    @override
    async def is_empty(self, prefix: str) -> bool:
        return await self._read(self.inner.is_empty, prefix)

    @override
    async def aclose(self) -> None:
        await self._run(self.inner.close)


def _listed(storage: Storage, prefix: str) -> list[str]:
    return list(storage.list_prefix(prefix))

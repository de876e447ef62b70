"""The obstore boundary of the object-storage backend: requests, concurrency and errors.

``ObjectIO`` is the few requests ``backend.object`` makes — plain and
create-if-absent ``PUT``, ``GET``, ``HEAD``, ``LIST`` after a key, bulk
``DELETE`` — on paths under one prefix of any obstore store (S3, GCS, Azure,
local files, memory). Batches run concurrently (bounded) on one background
event loop per process, so callers can be plain synchronous code, including
code running on some other event loop's thread (zarr's). Every obstore error
becomes a versionstore error here, and nowhere else: a missing bucket,
refused credentials, an unreachable or silent service each get their own
typed error with a message a user can act on.

This is the only module of versionstore that makes obstore requests
(``versionstore.cloud`` only builds stores).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple, override

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    NotFoundError,
    NotSupportedError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import LocalStore, MemoryStore

from versionstore.errors import (
    BackendError,
    ForkedProcessError,
    StorageAccessDeniedError,
    StorageNotFoundError,
    StorageThrottledError,
    StorageTimeoutError,
    StorageUnreachableError,
)
from zarrstore.rust_runtimes import OBSTORE

if TYPE_CHECKING:
    import contextvars

    from obstore.store import ObjectStore

__all__ = ["Listed", "ObjectIO", "check_not_forked", "gather_bounded", "is_picklable_store",
           "translate", "translated"]

T = TypeVar("T")
_Ts = TypeVarTuple("_Ts")
#: Requests in flight at once for one batch (puts, gets, heads).
_CONCURRENCY = 64
#: Seconds an exiting process waits for its requests still running (``_Loop.settle``).
_EXIT_WAIT = 10.0

#: ``(path relative to the prefix, last modified)`` of a listed object.
Listed = tuple[str, datetime]


def is_picklable_store(store: ObjectStore) -> bool:
    """Whether ``store`` survives pickling (obstore's memory store lives in one process)."""
    return not isinstance(store, MemoryStore)


def check_not_forked() -> None:
    """Raise ``ForkedProcessError`` in a ``fork`` child of a process that used obstore.

    obstore's runtime does not survive ``fork`` (``zarrstore.rust_runtimes``):
    in such a child a request never completes. The process that made the first
    request is shared with zarrstore's ``ObjectStore``, so a parent that used
    object storage through either package is known.
    """
    pid = OBSTORE.forked_from()
    if pid is not None:
        raise ForkedProcessError(
            f"object storage cannot be used in this process ({os.getpid()}): it was forked "
            f"from process {pid} after that process had used object storage, and "
            + OBSTORE.advice)


class _CountingLoop(asyncio.SelectorEventLoop):
    """An event loop that knows how many threads are inside ``call_soon_threadsafe``.

    obstore hands each result to the loop from one of its Rust threads, through
    ``call_soon_threadsafe``, which releases the GIL to wake the loop. The
    waiting caller may get the result and the interpreter start to exit before
    that thread takes the GIL back; Python 3.13 then ends the thread with
    ``pthread_exit``, which aborts the process from inside Rust (SIGABRT at exit,
    after everything succeeded). ``_Loop.settle`` waits for such threads.
    """

    def __init__(self) -> None:
        super().__init__()
        self.inside = 0
        self._inside_lock = threading.Lock()

    @override
    def call_soon_threadsafe(self, callback: Callable[[*_Ts], object],
                             *args: *_Ts, context: contextvars.Context | None = None
                             ) -> asyncio.Handle:
        with self._inside_lock:
            self.inside += 1
        try:
            return super().call_soon_threadsafe(callback, *args, context=context)
        finally:
            with self._inside_lock:
                self.inside -= 1


class _Loop:
    """One event loop in a daemon thread, per process (never used in a forked child).

    At interpreter exit (``atexit``) it lets the requests still running finish
    and obstore's threads leave the loop (``settle``), bounded by ``_EXIT_WAIT``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: _CountingLoop | None = None
        self._pid = 0

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        try:
            check_not_forked()  # before the lock: a fork may have copied it held
        except ForkedProcessError:
            coroutine.close()
            raise
        OBSTORE.note_use()
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = _CountingLoop()
                thread = threading.Thread(target=loop.run_forever, name="versionstore-object-io",
                                          daemon=True)
                thread.start()
                if self._loop is None:
                    atexit.register(self.settle)
                self._loop, self._pid = loop, os.getpid()
            loop = self._loop
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

    def settle(self, timeout: float | None = None) -> None:
        """Wait (at most ``timeout`` s) for requests left running and for obstore's threads.

        Requests are left running when a batch failed early (``asyncio.gather``
        leaves the others going); their results would arrive during the exit.
        """
        loop = self._loop
        if loop is None or self._pid != os.getpid() or not loop.is_running():
            return
        deadline = time.monotonic() + (_EXIT_WAIT if timeout is None else timeout)
        with suppress(Exception):
            asyncio.run_coroutine_threadsafe(_finish_tasks(), loop).result(
                max(0.0, deadline - time.monotonic()))
        while loop.inside and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.005)  # the last thread out returns to Rust and lets go of the GIL


async def _finish_tasks() -> None:
    others = asyncio.all_tasks() - {asyncio.current_task()}
    if others:
        await asyncio.wait(others)


_LOOP = _Loop()


def _brief(exc: BaseException) -> str:
    """An obstore error's message, without the debug dump after its first blank line."""
    return " ".join(str(exc).split("\n\n", 1)[0].split())


def translate(exc: BaseException, action: str, where: str) -> BackendError:
    """The versionstore error for an obstore (or OS) error raised while ``action``."""
    text = str(exc)
    brief = _brief(exc)
    if "NoSuchBucket" in text or "ContainerNotFound" in text or (
        "bucket" in text.lower() and "not found" in text.lower() and "NoSuchKey" not in text
    ):
        return StorageNotFoundError(f"{where}: the bucket does not exist ({action}): {brief}")
    denied = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken",
              "403 Forbidden", "401 Unauthorized", "status 403", "status 401",
              "credentials")
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError | PermissionError) or any(
        word in text for word in denied
    ):
        return StorageAccessDeniedError(
            f"{where}: access denied while {action} — check the credentials (access key, "
            f"secret, session token) and the bucket's permissions: {brief}")
    if any(word in text for word in ("SlowDown", "503 Service Unavailable", "status 503",
                                     "429 Too Many Requests", "status 429",
                                     "TooManyRequests", "RequestLimitExceeded")):
        return StorageThrottledError(
            f"{where}: the storage service kept asking to slow down while {action} (after "
            f"the client's retries); try again later, or allow the client a longer "
            f"retry_timeout: {brief}")
    # obstore's message names the cause only in its debug dump (reqwest's error kind).
    if any(word in text for word in ("kind: Timeout", "TimedOut", "timed out",
                                     "deadline has elapsed")):
        return StorageTimeoutError(
            f"{where}: the storage service did not answer in time while {action} "
            f"(after the client's retries): {brief}")
    if any(word in text for word in ("kind: Connect", "ConnectionRefused", "Connection refused",
                                     "dns error", "error sending request")):
        return StorageUnreachableError(
            f"{where}: cannot reach the storage service while {action} — check the endpoint "
            f"URL and the network: {brief}")
    return BackendError(f"{where}: object storage failed while {action}: {brief}")


@contextmanager
def translated(action: str, where: str) -> Iterator[None]:
    """Turn obstore's errors into versionstore's (``translate``), at the boundary."""
    try:
        yield
    except BackendError:
        raise
    except (BaseError, OSError) as exc:
        raise translate(exc, action, where) from exc


def _missing(exc: BaseException) -> bool:
    """Whether ``exc`` says an *object* is missing (not the bucket)."""
    return isinstance(exc, NotFoundError | FileNotFoundError) and "NoSuchBucket" not in str(exc)


class ObjectIO:
    """Requests on paths under ``prefix`` of an obstore ``store``; every call blocks.

    Args:
        store: any obstore store.
        prefix: a path prefix inside it (``""``: the store's root).
        where: how messages name the location (``repr`` of the storage).
    """

    def __init__(self, store: ObjectStore, prefix: str, where: str) -> None:
        self.store = store
        self.root = prefix.strip("/")
        self.where = where

    def path(self, relative: str) -> str:
        """The store path of ``relative`` (under the prefix)."""
        return f"{self.root}/{relative}" if self.root else relative

    def _relative(self, path: str) -> str:
        return path[len(self.root) + 1:] if self.root else path

    def run(self, action: str, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the I/O loop; obstore errors become versionstore errors."""
        with translated(action, self.where):
            return _LOOP.run(coroutine)

    # -- coroutines (run with ``run``) ------------------------------------------------------

    async def put(self, relative: str, data: bytes) -> None:
        """Store ``data`` (replacing any object there)."""
        await obstore.put_async(self.store, self.path(relative), data, use_multipart=False)

    async def put_if_absent(self, relative: str, data: bytes) -> bool:
        """Create the object only if absent; ``False`` if it already exists."""
        try:
            await obstore.put_async(self.store, self.path(relative), data, mode="create",
                                    use_multipart=False)
        except (AlreadyExistsError, PreconditionError):
            return False
        return True

    async def get(self, relative: str) -> bytes | None:
        """The object's bytes, or ``None`` if missing."""
        try:
            result = await obstore.get_async(self.store, self.path(relative))
            return bytes(await result.bytes_async())
        except (NotFoundError, FileNotFoundError) as exc:
            if not _missing(exc):
                raise
            return None

    async def head(self, relative: str) -> datetime | None:
        """The object's last-modified time, or ``None`` if missing."""
        try:
            meta = await obstore.head_async(self.store, self.path(relative))
        except (NotFoundError, FileNotFoundError) as exc:
            if not _missing(exc):
                raise
            return None
        return meta["last_modified"]

    async def list_after(self, folder: str, after: str | None = None, *,
                         stop_prefix: str | None = None) -> list[Listed]:
        """Objects in ``folder`` (relative, no trailing slash), sorted, after path ``after``.

        With ``stop_prefix``, only paths starting with it are wanted: where the
        service lists in order (all but local files), listing stops past them.
        """
        found: list[Listed] = []
        stream = obstore.list(self.store, self.path(folder),
                              offset=None if after is None else self.path(after),
                              chunk_size=1000)
        ordered = not isinstance(self.store, LocalStore)
        try:
            async for chunk in stream:
                found.extend((self._relative(meta["path"]), meta["last_modified"])
                             for meta in chunk)
                last = found[-1][0] if found else ""
                if (stop_prefix is not None and ordered and last > stop_prefix
                        and not last.startswith(stop_prefix)):
                    break
        except (NotFoundError, FileNotFoundError) as exc:  # a local store without the folder
            if not _missing(exc):
                raise
        found.sort()
        return found

    async def visit_pages(self, folder: str, visit: Callable[[list[str]], None]) -> None:
        """Call ``visit`` with each page of the names in ``folder`` (unsorted; none held).

        Only the listing's own "not found" means an empty folder: an error
        ``visit`` raises (its temporary file, say) ends the scan with that error,
        never as if the folder had ended there.
        """
        stream = obstore.list(self.store, self.path(folder), chunk_size=1000)
        while True:
            try:
                chunk = await anext(stream)
            except StopAsyncIteration:
                return
            except (NotFoundError, FileNotFoundError) as exc:  # a local store without it
                if not _missing(exc):
                    raise
                return
            if chunk:
                visit([self._relative(meta["path"]) for meta in chunk])

    async def any_under(self, folder: str) -> bool:
        """Whether any object lies in ``folder`` (relative, no trailing slash): one short page."""
        stream = obstore.list(self.store, self.path(folder), chunk_size=1)
        try:
            async for chunk in stream:
                if chunk:
                    return True
        except (NotFoundError, FileNotFoundError) as exc:  # a local store without the folder
            if not _missing(exc):
                raise
        return False

    async def folders(self, folder: str = "") -> list[str]:
        """The names directly under the prefix (or its ``folder``): one delimiter listing.

        Names are relative to the prefix (``folder``'s own path included).
        """
        where = self.path(folder) if folder else self.root or None
        try:
            listing = await obstore.list_with_delimiter_async(self.store, where)
        except (NotFoundError, FileNotFoundError) as exc:
            if not _missing(exc):
                raise
            return []
        names = [self._relative(p) for p in listing["common_prefixes"]]
        names += [self._relative(meta["path"]) for meta in listing["objects"]]
        return sorted(name for name in names if name)

    async def delete(self, relatives: Sequence[str]) -> None:
        """Delete these objects (bulk where the service has it); missing ones are fine."""
        if not relatives:
            return
        paths = [self.path(r) for r in relatives]
        try:
            await obstore.delete_async(self.store, paths)
        except (NotFoundError, FileNotFoundError):
            await gather_bounded([self._delete_one(path) for path in paths])

    async def _delete_one(self, path: str) -> None:
        try:
            await obstore.delete_async(self.store, path)
        except (NotFoundError, FileNotFoundError):
            pass

    async def service_time(self) -> datetime:
        """The service's clock: the last-modified time of an object stored now (then deleted).

        ``probe/clock-<random>``, empty; three requests (``PUT``, ``HEAD``,
        ``DELETE``). Object times come from the service's clock, so a cut-off
        compared with them must be on that clock too (``ObjectBackend``).
        """
        probe = f"probe/clock-{os.urandom(8).hex()}"
        await self.put(probe, b"")
        try:
            meta = await obstore.head_async(self.store, self.path(probe))
        finally:
            await self.delete([probe])
        return meta["last_modified"]

    async def supports_conditional_create(self) -> bool:
        """Probe: does a second create-if-absent of one object fail? (deletes the probe)."""
        probe = f"probe/{os.urandom(8).hex()}"
        try:
            if not await self.put_if_absent(probe, b"probe"):
                return False
            return not await self.put_if_absent(probe, b"probe")
        except NotSupportedError:
            return False
        finally:
            await self.delete([probe])


async def gather_bounded(awaitables: Sequence[Awaitable[T]],
                         limit: int = _CONCURRENCY) -> list[T]:
    """Await all, at most ``limit`` at once; results in order."""
    if len(awaitables) <= 1:
        return [await a for a in awaitables]
    gate = asyncio.Semaphore(limit)

    async def one(awaitable: Awaitable[T]) -> T:
        async with gate:
            return await awaitable

    return list(await asyncio.gather(*(one(a) for a in awaitables)))


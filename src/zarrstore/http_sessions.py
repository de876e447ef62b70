"""aiohttp client sessions, one per event loop, each closed along with its loop.

Part of the HTTP store (``zarrstore.http``), apart because it is its own
problem: an aiohttp session belongs to the event loop that made it, yet one
storage is used from several loops — zarr's I/O thread, ``AsyncToSync``'s
thread, a caller's own ``asyncio.run``. ``SessionPool`` keeps one pooled
session per running loop, so connections are reused within a loop and never
shared across loops, and closes each one on its own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, Callable, Mapping

import aiohttp

__all__ = ["SessionPool", "new_session"]


def new_session(
    headers: Mapping[str, str], timeout: float, max_connections: int
) -> aiohttp.ClientSession:
    """A session sending ``headers``, allowing ``timeout`` seconds a request."""
    return aiohttp.ClientSession(
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=timeout),
        connector=aiohttp.TCPConnector(limit=max_connections),
    )


_Entry = tuple[aiohttp.ClientSession, AsyncGenerator[None, None]]


class SessionPool:
    """One aiohttp session per event loop, each closed along with its loop.

    aiohttp binds a session to the loop that made it, and one storage may be
    used from several loops. Each session is paired with a suspended async
    generator on its loop whose ``finally`` closes the session: ``asyncio.run``
    (and every ``asyncio.Runner``) finalizes a loop's async generators before
    closing it, which is the one hook a loop offers for "I am shutting down".
    """

    def __init__(self, new_session: Callable[[], aiohttp.ClientSession]) -> None:
        self._new_session = new_session
        self._entries: dict[asyncio.AbstractEventLoop, _Entry] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    async def session(self) -> aiohttp.ClientSession:
        """The running loop's session, made on first use."""
        loop = asyncio.get_running_loop()
        with self._lock:
            self._release_dead_loops()
            entry = self._entries.get(loop)
            if entry is not None and not entry[0].closed:
                return entry[0]
            session = self._new_session()
            closer = _closed_with_loop(session)
            self._entries[loop] = (session, closer)
        await anext(closer)  # now registered with the loop, which will finalize it
        return session

    async def aclose(self) -> None:
        """Close the running loop's session."""
        with self._lock:
            entry = self._entries.pop(asyncio.get_running_loop(), None)
            self._release_dead_loops()
        if entry is not None:
            await entry[1].aclose()

    def close(self, *, wait: float) -> None:
        """Close every session from synchronous code, each on its own loop.

        Args:
            wait: seconds to wait for a session on a loop in another thread.
        """
        with self._lock:
            entries = list(self._entries.items())
            self._entries.clear()
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, (session, closer) in entries:
            if loop is current:
                _closing_tasks.add(task := loop.create_task(_finish(closer)))
                task.add_done_callback(_closing_tasks.discard)
            elif loop.is_running():
                future = asyncio.run_coroutine_threadsafe(_finish(closer), loop)
                with contextlib.suppress(TimeoutError):
                    future.result(wait)
            else:
                _abandon(session)

    def _release_dead_loops(self) -> None:
        for loop in [loop for loop in self._entries if loop.is_closed()]:
            _abandon(self._entries.pop(loop)[0])


#: Tasks closing sessions for synchronous ``close`` calls, kept alive until done.
_closing_tasks: set[asyncio.Task[None]] = set()


async def _closed_with_loop(session: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await session.close()


async def _finish(closer: AsyncGenerator[None, None]) -> None:
    await closer.aclose()


def _abandon(session: aiohttp.ClientSession) -> None:
    """Release a session whose loop stopped without finalizing it (a bare ``loop.close()``).

    Its sockets belong to the dead loop, so the session cannot be awaited any
    more; dropping the connector's pool (as fsspec's HTTP filesystem does) is
    the clean-up left, and detaching stops aiohttp warning about the session.
    """
    if session.closed:
        return
    connector = session.connector
    session.detach()
    if connector is not None:
        connector._close()



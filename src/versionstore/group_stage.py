"""Group staging: concurrent async writes on one event loop share one staging batch.

zarr writes an array by starting one coroutine per chunk (up to
``async.concurrency`` at once) and awaiting ``store.set`` in each. Staged one
by one, every chunk would cost its own backend write (one LMDB write
transaction, with its page writes and meta-page update). Here each ``set``
joins the batch of the current event-loop turn, the batch is written as one
``Session.set_values`` call (one atomic ``WriteBatch``) when the loop gets to
it, and every caller resumes only after that write returned — so a ``set``
still returns only once its value is staged durably (the group commit of
databases: the same guarantee, one transaction for many writers).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

__all__ = ["GroupStager"]

_Pending = list[tuple[str, bytes, "asyncio.Future[None]"]]


class GroupStager:
    """Coalesces ``await stage(key, value)`` calls per event loop into one ``write(items)``.

    Args:
        write: stages a list of ``(key, value)`` pairs in one atomic step
            (``Session.set_values``); called on the event loop's thread.
    """

    def __init__(self, write: Callable[[list[tuple[str, bytes]]], None]) -> None:
        self._write = write
        self._pending: dict[asyncio.AbstractEventLoop, _Pending] = {}
        self._lock = threading.Lock()  # several threads may each run a loop on one session

    async def stage(self, key: str, value: bytes) -> None:
        """Stage ``key = value`` with whatever else this loop stages now; return once written.

        Raises:
            Whatever the batch's write raised (every caller in the batch sees it).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            batch = self._pending.get(loop)
            if batch is None:
                batch = self._pending[loop] = []
                loop.call_soon(self._flush, loop)
            batch.append((key, value, future))
        await future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            batch = self._pending.pop(loop, [])
        try:
            self._write([(key, value) for key, value, _ in batch])
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for _, _, future in batch:
            if not future.done():
                future.set_result(None)

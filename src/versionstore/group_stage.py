"""Group staging: concurrent async writes on one event loop share one staging batch.

zarr writes an array by starting one coroutine per chunk (up to
``async.concurrency`` at once) and awaiting ``store.set`` in each. Staged one
by one, every chunk would cost its own backend write (one LMDB write
transaction, with its page writes and meta-page update). Here each ``set``
joins the batch of the current event-loop turn, the batch is written as one
``Session.set_values`` call (one atomic ``WriteBatch``) by its first caller
once every task scheduled in that turn has joined, and every caller resumes
only after that write returned — so a ``set``
still returns only once its value is staged durably (the group commit of
databases: the same guarantee, one transaction for many writers).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

__all__ = ["GroupStager"]

_Pending = list[tuple[str, bytes, "asyncio.Future[None]"]]


def _others_ready(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether anything else is scheduled to run in this loop turn (so might join a batch).

    asyncio's own loops keep their runnable callbacks in ``_ready``; when it is
    empty no other task can run before this one writes, and yielding would
    only cost a turn (a lone ``await store.set``). Other loops (uvloop): assume yes.
    """
    ready = getattr(loop, "_ready", None)
    return ready is None or len(ready) > 0


class GroupStager:
    """Coalesces ``await stage(key, value)`` calls per event loop into one ``write(items)``.

    The first caller of an event-loop turn opens the batch and, if other
    tasks are scheduled, yields once (``asyncio.sleep(0)``): every task
    already scheduled in that turn runs meanwhile and joins the batch; then
    the first caller writes the batch itself and wakes the others. A lone
    ``set`` (nothing else runnable) writes at once, without a loop turn.

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
        future: asyncio.Future[None] | None = None
        with self._lock:
            batch = self._pending.get(loop)
            if batch is None:
                self._pending[loop] = []
            else:
                future = loop.create_future()
                batch.append((key, value, future))
        if future is not None:
            await future
            return
        # This caller leads the batch: let this turn's other callers join, then write.
        try:
            if _others_ready(loop):
                await asyncio.sleep(0)
        finally:
            # Written even if the leader was cancelled meanwhile: the others wait on it.
            self._flush(loop, key, value)

    def _flush(self, loop: asyncio.AbstractEventLoop, key: str, value: bytes) -> None:
        with self._lock:
            batch = self._pending.pop(loop, [])
        try:
            self._write([(key, value), *((k, v) for k, v, _ in batch)])
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            raise
        for _, _, future in batch:
            if not future.done():
                future.set_result(None)

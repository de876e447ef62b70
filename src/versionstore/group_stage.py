"""Group staging: concurrent async writes on one event loop share one staging batch.

zarr writes an array by starting one coroutine per chunk (up to
``async.concurrency`` at once) and awaiting ``store.set`` in each. Staged one
by one, every chunk would cost its own backend write (one LMDB write
transaction, with its page writes and meta-page update). Here each ``set``
joins the batch of the current event-loop turn, the batch is written as one
``Session.set_values`` call (one atomic ``WriteBatch``) by its first caller
once every task scheduled in that turn has joined — or, while each turn
brings more writers (zarr's encoders handing chunks over), after up to
``_TURNS`` turns — and every caller resumes
only after that write returned — so a ``set``
still returns only once its value is staged durably (the group commit of
databases: the same guarantee, one transaction for many writers).

On a backend where every write is a paid round trip (object storage: one
log record per batch of what is not staged by located writes — metadata,
small values, a commit's first few chunks), one loop turn is too short: zarr's encoders (zstd in
threads) hand chunks over a few milliseconds apart, and each would write its
own record. There the backend's ``StagingWindow`` keeps a batch open longer
(``_Window``): the leader waits up to ``seconds`` for more writers, closing
early once the batch holds as many as the largest batch of the current
stream of writes (then, likely, every write zarr has in flight has joined;
a batch the window closes short of that size lowers it) or reaches
``max_keys`` / ``max_bytes``. No ``set`` returns before its batch
is written, so the guarantee is unchanged; only when a write starts moves.

A batch is written on the event loop's thread, where it costs least, unless
the backend says a write would wait long for another writer
(``Backend.writer_busy``: on LMDB, another process's commit of many
objects or its garbage collection). Then it is written in a worker thread,
so the loop goes on serving every other store of the process; until that
write returns, every later batch of the same loop follows it there, in
order, and a delete through the session's store waits for it
(``threaded_written``), so writes still land in the order they were made.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from versionstore.backend.protocol import StagingWindow

__all__ = ["GroupStager"]

_Pending = list[tuple[str, bytes, "asyncio.Future[None]"]]

#: A stream of writes (for the early close of windowed batches) ends after this idle time (s).
_STREAM_IDLE = 1.0
#: A windowed batch as large as its stream's largest waits this long (s) for one more writer.
_GRACE = 0.002
#: Loop turns a batch stays open at most while each turn brings more writers.
_TURNS = 4


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
    tasks are scheduled, yields (``asyncio.sleep(0)``): every task already
    scheduled in that turn runs meanwhile and joins the batch. It yields
    again while the last turn brought someone and others are still
    runnable, up to ``_TURNS`` turns (with zarr's 64 writes in flight that
    made batches of about 14 chunks instead of 5: fewer LMDB transactions,
    ``docs/benchmarks.md``); then the first caller writes the batch itself
    and wakes the others. A lone ``set`` (nothing else runnable) writes at
    once, without a loop turn.

    With a ``window`` (the backend's ``staging_window()``), a batch stays
    open up to the window's ``seconds`` instead (``_Window``).

    A caller cancelled while its value waits in a batch not yet written is
    taken out of it (``_withdraw``), so nothing it asked for lands after
    its ``set`` raised; a cancelled leader still writes the batch, whose
    other callers wait on it.

    Args:
        write: stages a list of ``(key, value)`` pairs in one atomic step
            (``Session.set_values``); called on the event loop's thread.
        window: how long a batch waits for more writers; ``None``: one loop turn.
        write_one: stages one ``(key, value)``, as ``write([(key, value)])``
            (``Session.set_value``): a lone ``set``; default ``write``.
        busy: whether a write now would wait long for another writer
            (``Backend.writer_busy``); then batches are written in a worker
            thread. Default: never.
    """

    def __init__(self, write: Callable[[list[tuple[str, bytes]]], None],
                 window: StagingWindow | None = None, *,
                 write_one: Callable[[str, bytes], None] | None = None,
                 busy: Callable[[], bool] | None = None) -> None:
        self._write = write
        self._write_one = write_one or (lambda key, value: write([(key, value)]))
        self._busy = busy or (lambda: False)
        #: Per loop: the last batch handed to a worker thread, while it is being written.
        self._threaded: dict[asyncio.AbstractEventLoop, asyncio.Future[None]] = {}
        self._pending: dict[asyncio.AbstractEventLoop, _Pending] = {}
        self._lock = threading.Lock()  # several threads may each run a loop on one session
        self._window = window
        self._open: dict[asyncio.AbstractEventLoop, _Window] = {}
        #: Per loop: when its last windowed batch was written, and its stream's largest batch
        #: (weakly: a session outlives the loops of many ``asyncio.run`` calls).
        self._streams: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[float, int]] = (
            weakref.WeakKeyDictionary())

    def stage_alone(self, key: str, value: bytes) -> bool:
        """Write ``key = value`` at once if it is a lone set; ``False``: ``await stage`` it.

        A lone set (no window, no batch open on this loop, nothing else
        runnable) cannot be joined by anyone before it writes, so it writes
        at once, as the batch of itself, without a coroutine of its own.
        Called from a coroutine on the running loop.

        Raises:
            Whatever the write raised.
        """
        if self._window is not None:
            return False
        loop = asyncio.get_running_loop()
        if loop in self._pending or loop in self._threaded or _others_ready(loop) \
                or self._busy():
            return False
        self._write_one(key, value)
        return True

    def stage_now(self, key: str, value: bytes) -> bool:
        """Write ``key = value`` at once, alone, unless writes here go to a thread.

        For values whose write costs about as much alone as in a batch (a
        chunk of a MiB or more: its pages and their flush are most of its
        transaction), waiting for others to join only delays the ``set``,
        and zarr starts its next chunk only once a ``set`` returns
        (``async.concurrency`` chunks in flight). ``False`` when there is a
        window (object storage), a threaded write of this loop is pending, or
        the backend is busy: then ``await stage`` it. A value of the same key
        waiting in this loop's open batch is another caller's concurrent
        ``set`` (one cancelled while waiting was taken out: ``_withdraw``), so
        either may land last, as with zarr's own stores.

        Raises:
            Whatever the write raised.
        """
        if not self.stages_now():
            return False
        self._write_one(key, value)
        return True

    def stages_now(self) -> bool:
        """Whether ``stage_now`` would write now (called on the running loop).

        What a caller asks before preparing a value only ``stage_now`` takes
        (``SessionStore.set``: a chunk hashed from a view of zarr's buffer).
        """
        if self._window is not None:
            return False
        return asyncio.get_running_loop() not in self._threaded and not self._busy()

    async def stage(self, key: str, value: bytes) -> None:
        """Stage ``key = value`` with whatever else this loop stages now; return once written.

        Raises:
            Whatever the batch's write raised (every caller in the batch sees it).
        """
        if self._window is not None:
            await self._stage_windowed(self._window, key, value)
            return
        if self.stage_alone(key, value):
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] | None = None
        joined: _Pending = []
        with self._lock:
            batch = self._pending.get(loop)
            if batch is None:
                self._pending[loop] = joined
            else:
                future = loop.create_future()
                batch.append((key, value, future))
        if future is not None:
            try:
                await future
            except asyncio.CancelledError:
                self._withdraw(loop, future)
                raise
            return
        # This caller leads the batch: let the other callers join while they come, then write.
        try:
            turns = 0
            while turns < _TURNS and _others_ready(loop):
                before = len(joined)
                await asyncio.sleep(0)
                turns += 1
                if len(joined) == before:
                    break  # nobody joined during that turn: write now
        finally:
            # Written even if the leader was cancelled meanwhile: the others wait on it.
            with self._lock:
                batch = self._pending.pop(loop, [])
            items = [(key, value), *((k, v) for k, v, _ in batch)]
            futures = [future for _, _, future in batch]
            written: asyncio.Future[None] | None = None
            if loop in self._threaded or self._busy():
                written = self._write_in_thread(loop, items, futures)
            else:
                self._flush(items, futures)
        if written is not None:
            await asyncio.shield(written)

    async def threaded_written(self) -> None:
        """Return once every batch this loop handed to a worker thread is written (or failed).

        A change that does not go through the stager (a delete) waits here, so
        it lands after the sets made before it, as a later set does (queued
        behind them): a set cancelled while its batch was being written in a
        thread was not taken out of it, and its value lands when that write
        returns. Nothing to wait for (no batch in a thread): returns at once.
        """
        loop = asyncio.get_running_loop()
        last = self._threaded.get(loop)  # each starts once the one before it finished
        if last is not None:
            await asyncio.wait({last})  # its failure is its own callers'

    def _withdraw(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
        """Take a cancelled caller's value out of this loop's batch, if it is not written yet.

        Its ``set`` raised ``CancelledError``, so its caller may go on to set or
        delete the key again; the value, written later by the batch's leader,
        would then land over that newer change.
        """
        with self._lock:
            batch = self._pending.get(loop)
            if batch is not None:
                batch[:] = [item for item in batch if item[2] is not future]

    def _flush(self, items: list[tuple[str, bytes]],
               futures: list[asyncio.Future[None]]) -> None:
        """Write ``items`` here and now; settle the futures of the callers who joined."""
        try:
            self._write(items)
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller
            _settle(futures, exc)
            raise
        _settle(futures, None)

    def _write_in_thread(self, loop: asyncio.AbstractEventLoop, items: list[tuple[str, bytes]],
                         futures: list[asyncio.Future[None]]) -> asyncio.Future[None]:
        """Write ``items`` in a worker thread, after the loop's previous such write.

        Started from callbacks, not from the leader's coroutine, so a leader
        cancelled meanwhile still leaves the batch written and every caller
        settled. Returns the leader's own outcome.
        """
        before = self._threaded.get(loop)
        done: asyncio.Future[None] = loop.create_future()
        # Its failure is the leader's to raise; a leader cancelled meanwhile never
        # looks, and asyncio would log "exception was never retrieved".
        done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._threaded[loop] = done

        def finished(written: asyncio.Future[None]) -> None:
            exc = asyncio.CancelledError() if written.cancelled() else written.exception()
            _settle(futures, exc)
            _settle([done], exc)
            if self._threaded.get(loop) is done:
                del self._threaded[loop]

        def start(_: object = None) -> None:
            try:
                written = loop.run_in_executor(None, self._write, items)
            except BaseException as exc:  # noqa: BLE001 - a closing loop: every caller hears it
                _settle(futures, exc)
                _settle([done], exc)
                if self._threaded.get(loop) is done:
                    del self._threaded[loop]
                return
            written.add_done_callback(finished)

        if before is None or before.done():
            start()
        else:
            before.add_done_callback(start)
        return done

    # -- windowed batches (object storage) ------------------------------------------------

    async def _stage_windowed(self, window: StagingWindow, key: str, value: bytes) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] | None = None
        with self._lock:
            batch = self._open.get(loop)
            if batch is not None:
                future = batch.join(loop, key, value, window)
                if batch.full:  # whoever comes next starts the next batch
                    del self._open[loop]
            else:
                batch = self._open[loop] = _Window(key, value)
        if future is not None:
            try:
                await future
            except asyncio.CancelledError:
                with self._lock:  # taken out unless its batch is being written
                    if not batch.closed:
                        batch.withdraw(future)
                raise
            return
        # This caller leads the batch: hold it open for the window, then write it.
        try:
            await self._hold_open(loop, batch, window)
        finally:
            # Written even if the leader was cancelled meanwhile: the others wait on it.
            with self._lock:
                if self._open.get(loop) is batch:
                    del self._open[loop]
                batch.closed = True
            self._write_window(loop, batch)

    async def _hold_open(self, loop: asyncio.AbstractEventLoop, batch: _Window,
                         window: StagingWindow) -> None:
        """Wait until ``batch`` should close (the window, its stream's size, or full)."""
        with self._lock:
            last, largest = self._streams.get(loop, (-math.inf, 0))
        opened = time.monotonic()
        if opened - last > _STREAM_IDLE:
            # Not in a stream of writes (a lone set, or the first of many): one loop turn.
            if _others_ready(loop):
                await asyncio.sleep(0)
            return
        deadline = opened + window.seconds
        while True:
            with self._lock:
                if batch.full:
                    return
                until = deadline
                if largest and len(batch.items) >= largest:
                    until = min(deadline, batch.joined_at + _GRACE)
                remaining = until - time.monotonic()
                if remaining <= 0:
                    # Closed by the window itself, short of the stream's largest batch:
                    # fewer writes are in flight now, so expect this many next time.
                    batch.short = until == deadline and len(batch.items) < largest
                    return
                batch.wake = wake = loop.create_future()
            await asyncio.wait({wake}, timeout=remaining)

    def _write_window(self, loop: asyncio.AbstractEventLoop, batch: _Window) -> None:
        try:
            self._write([(key, value) for key, value, _ in batch.items])
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller
            for _, _, future in batch.items:
                if future is not None and not future.done():
                    future.set_exception(exc)
            raise
        finally:
            with self._lock:
                _, largest = self._streams.get(loop, (-math.inf, 0))
                size = len(batch.items) if batch.short else max(largest, len(batch.items))
                self._streams[loop] = (time.monotonic(), size)
        for _, _, future in batch.items:
            if future is not None and not future.done():
                future.set_result(None)


def _settle(futures: list[asyncio.Future[None]], exc: BaseException | None) -> None:
    """Resolve each future not done yet with ``exc`` (``None``: success; cancelled: cancel).

    A future whose event loop is closed is left alone: nobody can await it, and
    resolving it would raise ``RuntimeError: Event loop is closed``. That is the
    state at interpreter exit after Ctrl-C in a large zarr write, when a leader's
    coroutine is closed and its ``finally`` still writes its batch (seen as an
    "Exception ignored" traceback on top of zarr's own shutdown messages).
    """
    for future in futures:
        if not future.done() and not future.get_loop().is_closed():
            if exc is None:
                future.set_result(None)
            elif isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)


class _Window:
    """One open windowed batch: its items, the leader's first (it has no future)."""

    def __init__(self, key: str, value: bytes) -> None:
        self.items: list[tuple[str, bytes, asyncio.Future[None] | None]] = [(key, value, None)]
        self.nbytes = len(value)
        self.joined_at = time.monotonic()
        self.full = False
        #: The window ran out before the batch reached its stream's largest size.
        self.short = False
        #: Its leader is writing it: nobody joins or leaves any more.
        self.closed = False
        self.wake: asyncio.Future[None] | None = None

    def join(self, loop: asyncio.AbstractEventLoop, key: str, value: bytes,
             window: StagingWindow) -> asyncio.Future[None]:
        """Add ``key = value`` (under the stager's lock) and wake the leader to look again."""
        future: asyncio.Future[None] = loop.create_future()
        self.items.append((key, value, future))
        self.nbytes += len(value)
        self.joined_at = time.monotonic()
        self.full = len(self.items) >= window.max_keys or self.nbytes >= window.max_bytes
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)
        return future

    def withdraw(self, future: asyncio.Future[None]) -> None:
        """Take out the item of a caller cancelled while it waited (under the stager's lock)."""
        kept = [item for item in self.items if item[2] is not future]
        self.nbytes -= sum(len(value) for _, value, f in self.items if f is future)
        self.items = kept

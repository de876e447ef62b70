"""Group staging: zarr's concurrent ``set`` calls share one staging write, each still durable."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.core.buffer import cpu

import versionstore as vs
from versionstore.backend.protocol import StagingWindow, WriteBatch
from versionstore.group_stage import GroupStager
from versionstore.session import Session
from zarrstore.errors import InvalidKeyError


@pytest.fixture(params=["memory", "lmdb"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> vs.Repository:
    storage: Any = (vs.in_memory_storage() if request.param == "memory"
                    else vs.lmdb_storage(tmp_path / "repo"))
    return vs.Repository.create(storage)


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each staging batch (``set_values``; a lone write goes to ``set_value``)."""
    sizes: list[int] = []
    original, original_one = Session.set_values, Session.set_value

    def counting(self: Session, items: list[tuple[str, bytes]]) -> None:
        if len(items) != 1:  # one item is handed on to ``set_value``, counted there
            sizes.append(len(items))
        original(self, items)

    def counting_one(self: Session, key: str, value: bytes) -> None:
        sizes.append(1)
        original_one(self, key, value)

    monkeypatch.setattr(Session, "set_values", counting)
    monkeypatch.setattr(Session, "set_value", counting_one)
    return sizes


def test_a_zarr_array_write_is_staged_in_few_batches(
    repo: vs.Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = _counting(monkeypatch)
    session = repo.writable_session("main")
    data = np.arange(256 * 64, dtype="i4")
    with zarr.config.set({"async.concurrency": 32}):
        array = zarr.create_array(session.store, name="x", shape=data.shape, chunks=(64,),
                                  dtype="i4", compressors=None)
        array[:] = data
    assert sum(sizes) == 256 + 2  # every chunk and both metadata documents, each once
    assert len(sizes) < 256 // 4  # batched: concurrent chunks share a write
    session.commit("x")
    assert (zarr.open_array(repo.readonly_session("main").store, path="x")[:] == data).all()


def test_each_set_returns_only_once_staged(repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    store = session.store

    async def write() -> None:
        await asyncio.gather(*(store.set(f"k{i}", cpu.Buffer.from_bytes(b"v" * i))
                               for i in range(20)))
        # Returned: a fresh view of the session (another process, say) sees every value.
        other = repo.writable_session(resume=str(session.session_id))
        assert [other.store.storage.get(f"k{i}") for i in range(20)] == [
            b"v" * i for i in range(20)]

    asyncio.run(write())


def test_a_bad_key_fails_only_its_own_caller(repo: vs.Repository) -> None:
    store = repo.writable_session("main").store

    async def write() -> list[Any]:
        return await asyncio.gather(
            store.set("good", cpu.Buffer.from_bytes(b"1")),
            store.set("k" * 500, cpu.Buffer.from_bytes(b"2")),
            store.set("also/good", cpu.Buffer.from_bytes(b"3")),
            return_exceptions=True,
        )

    results = asyncio.run(write())
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], InvalidKeyError)
    assert store.storage.get("good") == b"1" and store.storage.get("also/good") == b"3"


def test_a_failed_batch_fails_every_caller_in_it() -> None:
    def failing(items: list[tuple[str, bytes]]) -> None:
        raise vs.BackendError(f"disk full while staging {len(items)} values")

    stager = GroupStager(failing)

    async def write() -> list[Any]:
        return await asyncio.gather(*(stager.stage(f"k{i}", b"v") for i in range(5)),
                                    return_exceptions=True)

    results = asyncio.run(write())
    assert all(isinstance(r, vs.BackendError) and "5 values" in str(r) for r in results)


def test_threads_each_running_a_loop_share_one_session(repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    store = session.store

    def worker(n: int) -> None:
        async def write() -> None:
            await asyncio.gather(*(store.set(f"t{n}/k{i}", cpu.Buffer.from_bytes(bytes([n, i])))
                                   for i in range(50)))
        asyncio.run(write())

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    session.commit("threads")
    view = repo.readonly_session("main").store.storage
    assert all(view.get(f"t{n}/k{i}") == bytes([n, i]) for n in range(4) for i in range(50))


def test_lone_sets_are_each_staged_before_they_return(
    repo: vs.Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = _counting(monkeypatch)
    session = repo.writable_session("main")
    store = session.store

    async def write() -> None:
        for i in range(5):  # one at a time: nothing to batch with, nothing to wait for
            await store.set(f"k{i}", cpu.Buffer.from_bytes(bytes([i])))
            assert session.value(f"k{i}") == bytes([i])

    asyncio.run(write())
    assert sizes == [1] * 5


async def _leader_and_followers(stager: GroupStager
                                ) -> tuple[asyncio.Future[None], list[asyncio.Future[None]]]:
    """A leader's open batch with three followers in it (not written yet)."""
    leader = asyncio.ensure_future(stager.stage("lead", b"1"))
    followers = [asyncio.ensure_future(stager.stage(f"f{i}", b"2")) for i in range(3)]
    await asyncio.sleep(0)  # the leader runs and yields; the followers join
    return leader, followers


def test_a_cancelled_leader_still_writes_its_batch() -> None:
    written: list[list[tuple[str, bytes]]] = []
    stager = GroupStager(written.append)

    async def write() -> list[Any]:
        leader, followers = await _leader_and_followers(stager)
        leader.cancel()
        return await asyncio.gather(leader, *followers, return_exceptions=True)

    results = asyncio.run(write())
    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1:] == [None, None, None]
    assert written == [[("lead", b"1"), ("f0", b"2"), ("f1", b"2"), ("f2", b"2")]]


def test_a_follower_cancelled_before_its_batch_is_written_is_taken_out() -> None:
    written: list[list[tuple[str, bytes]]] = []
    stager = GroupStager(written.append)

    async def write() -> list[Any]:
        leader, followers = await _leader_and_followers(stager)
        followers[1].cancel()
        late = [asyncio.ensure_future(stager.stage(f"l{i}", b"3")) for i in range(2)]
        return await asyncio.gather(leader, *followers, *late, return_exceptions=True)

    results = asyncio.run(write())
    assert isinstance(results[2], asyncio.CancelledError)
    assert [r for i, r in enumerate(results) if i != 2] == [None] * 5
    assert [k for batch in written for k, _ in batch] == ["lead", "f0", "f2", "l0", "l1"]


async def _cancel_a_joined_set(store: Any, key: str) -> list[asyncio.Future[None]]:
    """Set ``key`` in an open batch and cancel that set; the batch is not written yet.

    Returns the batch's other writers, to await once the caller has gone on.
    """
    leader = asyncio.ensure_future(store.set("b", cpu.Buffer.from_bytes(b"b")))
    joiner = asyncio.ensure_future(store.set(key, cpu.Buffer.from_bytes(b"old")))
    await asyncio.sleep(0)  # the leader opens a batch and yields; the joiner joins it
    joiner.cancel()
    others = [asyncio.ensure_future(store.set(f"o{i}", cpu.Buffer.from_bytes(b"o")))
              for i in range(2)]  # more writers: the batch stays open a turn longer
    with pytest.raises(asyncio.CancelledError):
        await joiner
    return [leader, *others]


def test_a_delete_after_a_cancelled_set_of_its_key_stays_deleted(repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    store = session.store

    async def retry() -> None:
        others = await _cancel_a_joined_set(store, "a/c/0")
        await store.delete("a/c/0")  # the caller changed its mind
        await asyncio.gather(*others)

    asyncio.run(retry())
    assert session.entry("a/c/0") is None
    assert session.value("b") == b"b"


# -- a staging window (object storage) ----------------------------------------------------


def test_a_window_gathers_sets_that_arrive_milliseconds_apart() -> None:
    written: list[list[str]] = []
    stager = GroupStager(lambda items: written.append([k for k, _ in items]),
                         StagingWindow(seconds=30.0))

    async def later(key: str, delay: float) -> None:
        await asyncio.sleep(delay)  # an encoder handing its chunk over a few ms after the last
        await stager.stage(key, b"v")
        assert any(key in batch for batch in written)  # returned only once written

    async def write() -> None:
        # A first round in one loop turn starts a stream of writes with batches of 6.
        await asyncio.gather(*(stager.stage(f"a{i}", b"v") for i in range(6)))
        # The next round trickles in over ~15 ms: one loop turn would write each alone.
        await asyncio.gather(*(later(f"b{i}", 0.003 * i) for i in range(6)))

    asyncio.run(write())
    assert written == [[f"a{i}" for i in range(6)], [f"b{i}" for i in range(6)]]


def test_a_window_closes_at_its_key_limit() -> None:
    written: list[list[str]] = []
    stager = GroupStager(lambda items: written.append([k for k, _ in items]),
                         StagingWindow(seconds=30.0, max_keys=3))

    async def write() -> None:
        await stager.stage("first", b"v")  # starts the stream
        await asyncio.gather(*(stager.stage(f"k{i}", b"v") for i in range(7)))

    asyncio.run(write())
    assert written[0] == ["first"]
    assert [len(batch) for batch in written[1:]] == [3, 3, 1]
    assert sorted(k for batch in written[1:] for k in batch) == [f"k{i}" for i in range(7)]


def test_a_caller_cancelled_in_an_open_window_is_taken_out() -> None:
    written: list[list[str]] = []
    stager = GroupStager(lambda items: written.append([k for k, _ in items]),
                         StagingWindow(seconds=0.05))

    async def write() -> list[Any]:
        await stager.stage("first", b"v")  # starts the stream: later batches wait
        tasks = [asyncio.ensure_future(stager.stage(f"k{i}", b"v")) for i in range(3)]
        await asyncio.sleep(0)  # all three in the open window (it closes 2 ms after the last)
        tasks[1].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(write())
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], asyncio.CancelledError)
    assert written == [["first"], ["k0", "k2"]]


def test_a_failed_windowed_batch_fails_every_caller_in_it() -> None:
    calls: list[int] = []

    def failing_second(items: list[tuple[str, bytes]]) -> None:
        calls.append(len(items))
        if len(calls) == 2:
            raise vs.BackendError(f"bucket gone while staging {len(items)} values")

    stager = GroupStager(failing_second, StagingWindow(seconds=30.0))

    async def write() -> list[Any]:
        await stager.stage("first", b"v")
        return await asyncio.gather(*(stager.stage(f"k{i}", b"v") for i in range(4)),
                                    return_exceptions=True)

    results = asyncio.run(write())
    assert calls == [1, 4]
    assert all(isinstance(r, vs.BackendError) and "4 values" in str(r) for r in results)


def test_a_cancelled_windowed_leader_still_writes_its_batch() -> None:
    written: list[list[str]] = []
    stager = GroupStager(lambda items: written.append([k for k, _ in items]),
                         StagingWindow(seconds=30.0))

    async def write() -> list[Any]:
        await stager.stage("first", b"v")
        leader = asyncio.ensure_future(stager.stage("lead", b"1"))
        await asyncio.sleep(0)  # the leader holds its batch open
        followers = [asyncio.ensure_future(stager.stage(f"f{i}", b"2")) for i in range(3)]
        await asyncio.sleep(0)  # the followers join
        leader.cancel()
        return await asyncio.gather(leader, *followers, return_exceptions=True)

    results = asyncio.run(write())
    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1:] == [None, None, None]
    assert written == [["first"], ["lead", "f0", "f1", "f2"]]


def test_a_stream_whose_writes_thin_out_stops_waiting_for_the_old_size() -> None:
    written: list[list[str]] = []
    stager = GroupStager(lambda items: written.append([k for k, _ in items]),
                         StagingWindow(seconds=0.05))

    async def later(key: str) -> None:
        await asyncio.sleep(0.01)  # well after the 2 ms grace, well within the window
        await stager.stage(key, b"v")

    async def write() -> None:
        await asyncio.gather(*(stager.stage(f"a{i}", b"v") for i in range(8)))  # size 8
        await stager.stage("lone", b"v")  # waits out the window: 8 never come
        # Expecting one write now, the next batch closes 2 ms after its first
        # instead of waiting the window for a second; ``b1`` makes its own.
        await asyncio.gather(stager.stage("b0", b"v"), later("b1"))

    asyncio.run(write())
    assert written == [[f"a{i}" for i in range(8)], ["lone"], ["b0"], ["b1"]]


# -- group staging over several loop turns ------------------------------------------------


def test_writers_arriving_over_several_turns_share_a_batch_and_return_once_staged(
        repo: vs.Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = _counting(monkeypatch)
    session = repo.writable_session("main")
    store = session.store
    assert session.session_id is not None
    seen: list[bytes | None] = []

    async def writer(i: int) -> None:
        for _ in range(i % 3):  # arrive one or two loop turns after the first
            await asyncio.sleep(0)
        await store.set(f"k/{i}", cpu.Buffer.from_bytes(bytes([i]) * 600))
        # Staged when it returns: a resumed copy (another object) reads it.
        copy = repo.writable_session("main", resume=session.session_id)
        seen.append(copy.value(f"k/{i}"))

    async def main() -> None:
        await asyncio.gather(*(writer(i) for i in range(12)))

    asyncio.run(main())
    assert seen and all(value is not None for value in seen)
    assert sum(sizes) == 12
    assert len(sizes) < 12  # shared batches
    assert max(sizes) > 4  # later turns joined the first one's batch


# -- large values: staged at once, alone; hashed off the loop when the backend is busy ------


def _recording_prepare(monkeypatch: pytest.MonkeyPatch,
                       gate: threading.Event | None = None) -> list[threading.Thread]:
    """The threads ``SessionStore`` hashed large values in ahead (``codec.prepare_chunk``)."""
    from versionstore import session_store

    threads: list[threading.Thread] = []
    real = session_store.prepare_chunk

    def recording(value: bytes) -> Any:
        threads.append(threading.current_thread())
        if gate is not None:
            gate.wait(10)
        return real(value)

    monkeypatch.setattr(session_store, "prepare_chunk", recording)
    return threads


def _large_values() -> dict[str, bytes]:
    from versionstore.session_store import PREPARE_AT_BYTES

    values = {f"a/c/{n}": np.random.default_rng(n).bytes(PREPARE_AT_BYTES + n) for n in range(6)}
    values["a/c/small"] = b"s" * 5000
    values["a/c/edge"] = b"e" * (PREPARE_AT_BYTES - 1)
    return values


def test_large_values_are_staged_at_once_each_alone_as_any_other(
        repo: vs.Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    """Values of ``PREPARE_AT_BYTES`` and more: one transaction each, on the loop's thread."""
    threads = _recording_prepare(monkeypatch)
    values = _large_values()
    session = repo.writable_session("main")
    batches: list[tuple[threading.Thread, list[str]]] = []
    write = repo.backend.write

    def recording(batch: WriteBatch) -> bool:
        keys = [name.rpartition("/a/c/")[2] for name in batch.refs if "/a/c/" in name]
        batches.append((threading.current_thread(), keys))
        return write(batch)

    monkeypatch.setattr(repo.backend, "write", recording)

    async def write_all() -> threading.Thread:
        store = session.store
        await asyncio.gather(*(store.set(k, cpu.Buffer.from_bytes(v)) for k, v in values.items()))
        await store.set("a/c/0", cpu.Buffer.from_bytes(values["a/c/0"]))  # a lone set, too
        return threading.current_thread()

    loop_thread = asyncio.run(write_all())
    assert set(threads) == {loop_thread}  # hashed where staged: nothing handed to a thread
    large = [keys for _, keys in batches if any(k.isdigit() for k in keys)]
    assert sorted(large) == [[str(n)] for n in (0, 0, 1, 2, 3, 4, 5)]  # each alone
    assert {thread for thread, _ in batches} == {loop_thread}
    plain = repo.writable_session("main")
    plain.set_values(list(values.items()))  # staged in one batch: the reference
    for key in values:
        assert session.entry(key) == plain.entry(key), key
    session.commit("large values")
    read = repo.readonly_session("main")
    assert {key: read.value(key) for key in values} == values


def test_large_values_are_hashed_and_written_off_the_loop_while_the_backend_is_busy(
        repo: vs.Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another writer holds LMDB's lock for long: the loop must not wait for it."""
    threads = _recording_prepare(monkeypatch)
    values = _large_values()
    session = repo.writable_session("main")
    monkeypatch.setattr(session.group_stager, "_busy", lambda: True)

    async def write_all() -> threading.Thread:
        await asyncio.gather(*(session.store.set(k, cpu.Buffer.from_bytes(v))
                               for k, v in values.items()))
        return threading.current_thread()

    loop_thread = asyncio.run(write_all())
    assert len(threads) == 6 and loop_thread not in threads
    session.commit("large values, busy")
    read = repo.readonly_session("main")
    assert {key: read.value(key) for key in values} == values


def test_a_set_cancelled_while_its_value_is_hashed_stages_nothing(
        repo: vs.Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    from versionstore.session_store import PREPARE_AT_BYTES

    gate = threading.Event()
    threads = _recording_prepare(monkeypatch, gate)
    session = repo.writable_session("main")
    monkeypatch.setattr(session.group_stager, "_busy", lambda: True)  # hashed in a thread
    big = b"b" * PREPARE_AT_BYTES

    async def cancel() -> None:
        task = asyncio.ensure_future(session.store.set("a/c/0", cpu.Buffer.from_bytes(big)))
        while not threads:
            await asyncio.sleep(0.001)
        task.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        await session.store.set("a/c/1", cpu.Buffer.from_bytes(big))

    asyncio.run(cancel())
    assert session.entry("a/c/0") is None
    assert session.value("a/c/1") == big


def test_a_large_value_set_after_a_cancelled_set_of_its_key_is_the_one_that_stays(
        repo: vs.Repository) -> None:
    """A large value is staged at once, while the batch a cancelled set of its key
    waited in is still open: that older value must not land after it."""
    from versionstore.session_store import PREPARE_AT_BYTES

    session = repo.writable_session("main")
    store = session.store
    new = b"n" * PREPARE_AT_BYTES

    async def retry() -> None:
        others = await _cancel_a_joined_set(store, "a/c/0")
        await store.set("a/c/0", cpu.Buffer.from_bytes(new))  # the caller's retry
        await asyncio.gather(*others)

    asyncio.run(retry())
    assert session.value("a/c/0") == new


def test_a_read_only_store_refuses_a_large_value_without_hashing_it(
        repo: vs.Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    from versionstore.session_store import PREPARE_AT_BYTES

    threads = _recording_prepare(monkeypatch)
    store = repo.readonly_session("main").store
    with pytest.raises(Exception, match="read-only"):
        asyncio.run(store.set("a/c/0", cpu.Buffer.from_bytes(b"r" * PREPARE_AT_BYTES)))
    assert threads == []


def test_object_storage_sessions_stage_large_values_by_located_writes_unhashed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On object storage a chunk's located write is its staged record: nothing to prepare."""
    from obstore.store import LocalStore

    from versionstore.session_store import PREPARE_AT_BYTES

    threads = _recording_prepare(monkeypatch)
    repo = vs.Repository.create(vs.object_storage(LocalStore(str(tmp_path), mkdir=True), "r"))
    session = repo.writable_session("main")
    values = {f"a/c/{n}": bytes([n]) * PREPARE_AT_BYTES for n in range(8)}

    async def write() -> None:
        await asyncio.gather(*(session.store.set(k, cpu.Buffer.from_bytes(v))
                               for k, v in values.items()))

    asyncio.run(write())
    session.commit("located")
    assert threads == []
    read = repo.readonly_session("main")
    assert {key: read.value(key) for key in values} == values


def test_settling_a_batch_whose_loop_closed_raises_nothing() -> None:
    # At interpreter exit after Ctrl-C in a large write, zarr's event loop is closed
    # and a batch leader's coroutine is closed: its ``finally`` still writes the
    # batch and settles the joined callers' futures, which must not raise
    # "Event loop is closed" (an "Exception ignored" traceback at exit).
    from versionstore.group_stage import _settle

    loop = asyncio.new_event_loop()
    waiting = [loop.create_future(), loop.create_future()]
    loop.close()
    _settle(waiting, None)
    _settle(waiting, OSError("disk full"))
    assert not any(future.done() for future in waiting)


def test_a_delete_after_a_set_cancelled_while_written_in_a_thread_stays_deleted(
        repo: vs.Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the backend is busy a batch is written in a worker thread; a set cancelled
    then cannot be taken out of it, and its value lands when that write returns. A
    delete of the key made after the cancellation must land after it (as later sets
    do, queued behind it), not at once: the older value reappeared over the delete,
    and a commit made meanwhile left it staged for the next one."""
    session = repo.writable_session("main")
    store = session.store
    stager = session.group_stager
    monkeypatch.setattr(stager, "_busy", lambda: True)
    gate, started = threading.Event(), threading.Event()
    write = stager._write

    def slow(items: list[tuple[str, bytes]]) -> None:
        started.set()
        assert gate.wait(30)
        write(items)

    monkeypatch.setattr(stager, "_write", slow)

    async def retry() -> None:
        task = asyncio.ensure_future(store.set("a/c/0", cpu.Buffer.from_bytes(b"old")))
        while not started.is_set():
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        asyncio.get_running_loop().call_later(0.05, gate.set)
        await store.delete("a/c/0")  # the caller changed its mind

    asyncio.run(retry())
    assert session.entry("a/c/0") is None


def test_a_large_value_is_staged_from_zarrs_buffer_and_keeps_its_bytes(
        repo: vs.Repository) -> None:
    """Staged from a view of zarr's buffer (no copy): what was staged is the value as it was
    when ``set`` returned, whatever the buffer holds afterwards; a buffer with no flat view
    (strided) is staged as its bytes."""
    from versionstore.session_store import PREPARE_AT_BYTES

    session = repo.writable_session("main")
    data = np.random.default_rng(7).integers(0, 256, PREPARE_AT_BYTES * 2, dtype=np.uint8)
    flat = data[:PREPARE_AT_BYTES].copy()
    strided = data[::2]  # a 1-D byte array that is not contiguous
    expected = {"a/c/0": flat.tobytes(), "a/c/1": strided.tobytes()}

    async def write() -> None:
        await session.store.set("a/c/0", cpu.Buffer(flat))
        await session.store.set("a/c/1", cpu.Buffer(strided))
        flat[:] = 0  # the caller reuses its buffers after the sets returned
        data[:] = 0

    asyncio.run(write())
    assert {key: session.value(key) for key in expected} == expected
    session.commit("from views")
    read = repo.readonly_session("main")
    assert {key: read.value(key) for key in expected} == expected

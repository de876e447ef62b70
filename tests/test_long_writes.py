"""Long write transactions are announced, and staging steps out of the event loop's way.

LMDB has one writer across processes. A session stages on zarr's event loop;
behind another process's long transaction (a big commit, garbage collection)
that would stall the loop, and every zarr store of the process with it
(``versionstore.backend.long_writes``, ``versionstore.group_stage``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import versionstore as vs
from versionstore.backend.lmdb import LMDBBackend
from versionstore.group_stage import GroupStager

SRC = str(Path(__file__).resolve().parents[1] / "src")
WAIT = 120

#: Holds an announced write transaction on the repository at argv[1] until told.
HOLDER = """
    import sys
    from versionstore.backend.lmdb import LMDBBackend

    backend = LMDBBackend(sys.argv[1])

    def work(txn):
        print("holding", flush=True)
        sys.stdin.readline()
        return True

    backend._write("holding the writer lock", work, long=True)
    print("released", flush=True)
"""


def _holder(path: Path) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([SRC, env.get("PYTHONPATH", "")])
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLDER), str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "holding"
    return holder


def _release(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    holder.stdin.write("go\n")
    holder.stdin.flush()
    assert holder.wait(WAIT) == 0


def test_a_long_write_is_seen_by_other_processes_only_while_it_runs(tmp_path: Path) -> None:
    vs.Repository.create(vs.lmdb_storage(tmp_path / "r")).close()
    backend = LMDBBackend(tmp_path / "r")
    assert not backend.writer_busy()
    holder = _holder(tmp_path / "r")
    try:
        assert backend.writer_busy()
        assert backend.writer_busy()  # a look takes nothing away
    finally:
        _release(holder)
    assert not backend.writer_busy()
    backend.close()


def test_a_killed_long_writer_leaves_no_announcement(tmp_path: Path) -> None:
    vs.Repository.create(vs.lmdb_storage(tmp_path / "r")).close()
    backend = LMDBBackend(tmp_path / "r")
    holder = _holder(tmp_path / "r")
    assert backend.writer_busy()
    holder.send_signal(signal.SIGKILL)
    holder.wait(WAIT)
    assert not backend.writer_busy()
    backend.close()


def test_a_long_write_in_another_thread_is_seen(tmp_path: Path) -> None:
    with vs.Repository.create(vs.lmdb_storage(tmp_path / "r")) as repo:
        backend = repo.backend
        assert isinstance(backend, LMDBBackend)
        inside, leave = threading.Event(), threading.Event()

        def work(txn: object) -> bool:
            inside.set()
            leave.wait(WAIT)
            return True

        writer = threading.Thread(
            target=lambda: backend._write("holding", work, long=True), daemon=True)
        writer.start()
        assert inside.wait(WAIT)
        try:
            assert backend.writer_busy()
        finally:
            leave.set()
            writer.join(WAIT)
        assert not backend.writer_busy()


def test_big_batches_announce_themselves_and_staging_batches_do_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with vs.Repository.create(vs.lmdb_storage(tmp_path / "r")) as repo:
        backend = repo.backend
        assert isinstance(backend, LMDBBackend)
        seen: list[bool] = []
        write = backend._handle.write

        def looking(action: str, work: object) -> object:
            seen.append(backend.writer_busy())
            return write(action, work)  # type: ignore[arg-type]

        monkeypatch.setattr(backend._handle, "write", looking)
        session = repo.writable_session("main")
        session.set_values([(f"a/c/{i}", bytes([i % 256]) * 600) for i in range(64)])
        assert seen and not any(seen)
        seen.clear()
        session.set_values([(f"b/c/{i}", bytes([i % 256]) * 600) for i in range(2000)])
        assert seen == [True]
        seen.clear()
        session.commit("many")
        assert True in seen


def test_staging_behind_a_long_transaction_leaves_the_event_loop_serving(
        tmp_path: Path) -> None:
    # A write through zarr waits for the other process's transaction in a worker
    # thread; meanwhile zarr's loop answers reads of any store, this repository's too.
    path = tmp_path / "r"
    repo = vs.Repository.create(vs.lmdb_storage(path))
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="x", shape=(64,), chunks=(4,), dtype="i4")[:] = 7
    session.commit("sevens")
    elsewhere = zarr.create_array(zarr.storage.MemoryStore(), name="m", shape=(4,),
                                  chunks=(2,), dtype="i4")
    elsewhere[:] = 5
    writing = repo.writable_session("main")
    holder = _holder(path)
    wrote_one, wrote_all, read = threading.Event(), threading.Event(), threading.Event()

    def write() -> None:
        array = zarr.open_array(writing.store, path="x")
        array[0] = 8  # a lone set
        wrote_one.set()
        array[:] = np.arange(64, dtype="i4")  # zarr's concurrent sets: batches
        wrote_all.set()

    def read_back() -> None:
        assert list(zarr.open_array(elsewhere.store, path="m", mode="r")[:]) == [5] * 4
        view = repo.readonly_session("main")
        assert list(zarr.open_array(view.store, path="x", mode="r")[:4]) == [7] * 4
        read.set()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    time.sleep(0.5)  # the write reaches LMDB's writer lock, in its worker thread
    reader = threading.Thread(target=read_back, daemon=True)
    reader.start()
    answered = read.wait(30)
    written_meanwhile = wrote_one.is_set()
    _release(holder)
    writer.join(WAIT)
    assert not written_meanwhile, "the write did not wait for the other process's"
    assert answered, "zarr's loop waited with the write for the other process's transaction"
    assert wrote_all.is_set()
    writing.commit("numbers")
    view = repo.readonly_session("main")
    assert list(zarr.open_array(view.store, path="x", mode="r")[:]) == list(range(64))
    repo.close()


async def test_batches_written_in_threads_land_in_the_order_they_were_made() -> None:
    written: list[tuple[str, bytes]] = []
    lock = threading.Lock()

    def write(items: list[tuple[str, bytes]]) -> None:
        time.sleep(0.01)  # long enough for the loop to start more batches meanwhile
        with lock:
            written.extend(items)

    stager = GroupStager(write, busy=lambda: True)
    made: list[tuple[str, bytes]] = []
    for round_ in range(5):
        tasks = []
        for n in range(7):
            key, value = f"k{n % 3}", bytes([round_, n])
            made.append((key, value))
            tasks.append(asyncio.create_task(stager.stage(key, value)))
        if round_ % 2:
            await asyncio.gather(*tasks)  # sometimes the next round starts meanwhile
        else:
            await asyncio.sleep(0)
    await asyncio.sleep(0.5)
    while stager._threaded:
        await asyncio.sleep(0.01)
    assert written == made


async def test_a_cancelled_leader_still_writes_its_threaded_batch() -> None:
    written: list[tuple[str, bytes]] = []
    release = threading.Event()

    def write(items: list[tuple[str, bytes]]) -> None:
        release.wait(WAIT)
        written.extend(items)

    stager = GroupStager(write, busy=lambda: True)
    leader = asyncio.create_task(stager.stage("a", b"1"))
    follower = asyncio.create_task(stager.stage("b", b"2"))
    await asyncio.sleep(0.05)
    leader.cancel()
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.wait_for(follower, WAIT)
    assert written == [("a", b"1"), ("b", b"2")]
    with pytest.raises(asyncio.CancelledError):
        await leader


async def test_a_failed_threaded_batch_reaches_every_caller_in_it() -> None:
    def write(items: list[tuple[str, bytes]]) -> None:
        raise OSError("disk gone")

    stager = GroupStager(write, busy=lambda: True)
    results = await asyncio.gather(stager.stage("a", b"1"), stager.stage("b", b"2"),
                                   return_exceptions=True)
    assert all(isinstance(r, OSError) for r in results)
    assert not stager._threaded


def test_a_file_lock_held_by_someone_else_never_holds_up_a_commit(tmp_path: Path) -> None:
    # Another tool's exclusive flock on data.mdb (a backup, say): announcing gives up
    # after a couple of milliseconds and the long write goes ahead unannounced.
    import fcntl

    with vs.Repository.create(vs.lmdb_storage(tmp_path / "r")) as repo:
        fd = os.open(tmp_path / "r" / "data.mdb", os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            session = repo.writable_session("main")
            session.set_values([(f"c/{i}", bytes([i % 256]) * 600) for i in range(2000)])
            session.commit("under someone else's lock")
        finally:
            os.close(fd)
        view = repo.readonly_session("main")
        assert view.value("c/1999") == bytes([1999 % 256]) * 600


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_looks_through_a_descriptor_of_its_own(tmp_path: Path) -> None:
    vs.Repository.create(vs.lmdb_storage(tmp_path / "r")).close()
    backend = LMDBBackend(tmp_path / "r")
    assert not backend.writer_busy()  # the parent's look is open
    parent_fd = backend._long_writes._probe
    holder = _holder(tmp_path / "r")
    try:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: sees the holder, through a descriptor it opened
            try:
                seen = backend.writer_busy() and backend._long_writes._probe != parent_fd
                os.write(write, b"1" if seen else b"0")
            finally:
                os._exit(0)
        os.close(write)
        assert os.read(read, 1) == b"1"
        os.close(read)
        os.waitpid(pid, 0)
        assert backend.writer_busy()  # the parent's look still works
    finally:
        _release(holder)
    assert not backend.writer_busy()
    backend.close()


async def test_a_failed_threaded_batch_of_a_cancelled_leader_logs_nothing() -> None:
    import gc

    release = threading.Event()

    def write(items: list[tuple[str, bytes]]) -> None:
        release.wait(WAIT)
        raise OSError("disk gone")

    reported: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    stager = GroupStager(write, busy=lambda: True)
    leader = asyncio.create_task(stager.stage("a", b"1"))
    follower = asyncio.create_task(stager.stage("b", b"2"))
    await asyncio.sleep(0.05)
    leader.cancel()
    release.set()
    with pytest.raises(OSError):
        await asyncio.wait_for(follower, WAIT)
    with pytest.raises(asyncio.CancelledError):
        await leader
    del leader, follower
    gc.collect()
    await asyncio.sleep(0)
    assert not reported, reported

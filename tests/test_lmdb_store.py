"""``LMDBStore`` (issue 15): conformance, zarr's suites, processes, crashes, growth, read-only."""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import numpy as np
import pytest
import zarr
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test
from hypothesis_budget import fewer_examples
from zarr.core.buffer import Buffer, cpu
from zarr.testing.stateful import ZarrHierarchyStateMachine, ZarrStoreStateMachine
from zarr.testing.store import StoreTests

from zarrstore import (
    InvalidKeyError,
    LMDBStorage,
    LMDBStore,
    PerformanceMetrics,
    ReadOnlyError,
    SyncToAsync,
    UsageLog,
)
from zarrstore.lmdb_environment import INITIAL_MAP_SIZE
from zarrstore.protocol import DirListing
from zarrstore.testing import StoreConformance, storage_state_machine
from zarrstore.zarr_bridge import ZarrStore

SRC = str(Path(__file__).resolve().parents[1] / "src")
TESTS = str(Path(__file__).resolve().parent)
WAIT = 120
T = TypeVar("T")


class LMDBBackdoor:
    # A second environment on the same files in this process is forbidden, so the
    # backdoor uses the store's own environment, bypassing the store's methods.
    def raw_get(self, storage: LMDBStorage, key: str) -> bytes | None:
        handle = storage._environment()
        if handle is None:
            return None
        with handle.env.begin() as txn:
            value = txn.get(key.encode())
        return None if value is None else bytes(value)

    def raw_set(self, storage: LMDBStorage, key: str, value: bytes) -> None:
        handle = storage._environment()
        assert handle is not None
        with handle.env.begin(write=True) as txn:
            txn.put(key.encode(), value)


class TestLMDBConformance(LMDBBackdoor, StoreConformance):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> LMDBStorage:
        return LMDBStorage(tmp_path / "env")


class TestLMDBStoreWithZarr(StoreTests[LMDBStore, cpu.Buffer]):
    store_cls = LMDBStore
    buffer_cls = cpu.Buffer

    async def set(self, store: LMDBStore, key: str, value: Buffer) -> None:
        LMDBBackdoor().raw_set(store.storage, key, value.to_bytes())

    async def get(self, store: LMDBStore, key: str) -> Buffer:
        raw = LMDBBackdoor().raw_get(store.storage, key)
        assert raw is not None
        return self.buffer_cls.from_bytes(raw)

    @pytest.fixture
    def store_kwargs(self, tmp_path: Path) -> dict[str, Any]:
        return {"path": tmp_path / "zarr.lmdb"}

    def test_store_repr(self, store: LMDBStore) -> None:
        assert repr(store) == f"LMDBStore(LMDBStorage({store.path!r}, writable))"

    def test_store_supports_writes(self, store: LMDBStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: LMDBStore) -> None:
        assert store.supports_listing


def test_state_machine_against_dict_model(tmp_path: Path) -> None:
    counter = iter(range(10**6))
    run_state_machine_as_test(
        storage_state_machine(lambda: LMDBStorage(tmp_path / f"s{next(counter)}")),
        settings=fewer_examples(),
    )


def test_zarr_store_state_machine(tmp_path: Path) -> None:
    counter = iter(range(10**6))
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        lambda: ZarrStoreStateMachine(LMDBStore(tmp_path / f"z{next(counter)}")),
        settings=fewer_examples(8),
    )


def test_zarr_hierarchy_state_machine(tmp_path: Path) -> None:
    counter = iter(range(10**6))
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        lambda: ZarrHierarchyStateMachine(LMDBStore(tmp_path / f"h{next(counter)}")),
        settings=fewer_examples(8),
    )


# -- listing: seeks, not scans --------------------------------------------------------


class CursorSteps:
    """Counts every position a real LMDB cursor takes: each seek, step and item iterated."""

    def __init__(self) -> None:
        self.steps = 0

    def transaction(self, txn: lmdb.Transaction) -> Any:
        counter = self

        class Transaction:
            def __getattr__(self, name: str) -> Any:
                return getattr(txn, name)

            def cursor(self, *args: Any, **kwargs: Any) -> Any:
                return counter.cursor(txn.cursor(*args, **kwargs))

        return Transaction()

    def cursor(self, cursor: lmdb.Cursor) -> Any:
        counter = self

        class Cursor:
            def __getattr__(self, name: str) -> Any:
                return getattr(cursor, name)

            def _moved(self, found: bool) -> bool:
                counter.steps += 1
                return found

            def set_range(self, key: bytes) -> bool:
                return self._moved(cursor.set_range(key))

            def set_key(self, key: bytes) -> bool:
                return self._moved(cursor.set_key(key))

            def first(self) -> bool:
                return self._moved(cursor.first())

            def next(self) -> bool:
                return self._moved(cursor.next())

            def iternext(self, keys: bool = True, values: bool = True) -> Iterator[Any]:
                for item in cursor.iternext(keys, values):
                    counter.steps += 1
                    yield item

            def __iter__(self) -> Iterator[Any]:
                return self.iternext()

        return Cursor()


class CountingLMDBStorage(LMDBStorage):
    """A real ``LMDBStorage`` whose read transactions count their cursor steps."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.counter = CursorSteps()

    def _read(self, action: str, work: Callable[[lmdb.Transaction], T], empty: T) -> T:
        return super()._read(action, lambda txn: work(self.counter.transaction(txn)), empty)

    def steps_of(self, call: Callable[[], Any]) -> tuple[Any, int]:
        before = self.counter.steps
        result = call()
        return result, self.counter.steps - before


def test_list_dir_and_is_empty_seek_past_an_array_of_many_chunks(tmp_path: Path) -> None:
    """``list_dir("")`` over one array of 2,000 chunks reads its 2 children, not 2,002 keys.

    xarray and zarr list groups with ``list_dir`` when metadata is not
    consolidated; it walked every key under the prefix. ``is_empty`` listed
    every key too, through zarr's default.
    """
    storage = CountingLMDBStorage(tmp_path / "env")
    store = ZarrStore(storage)
    zarr.create_group(store)
    array = zarr.create_array(store, name="a", shape=(2000,), chunks=(1,), dtype="i1",
                              fill_value=-1)
    array[:] = np.zeros(2000, dtype="i1")
    assert len(list(storage.list_prefix("a/c/"))) == 2000

    listing, steps = storage.steps_of(lambda: storage.list_dir(""))
    assert listing == DirListing(keys=("zarr.json",), prefixes=("a/",))
    assert steps <= 3  # a seek per child, and one that finds the end
    names, steps = storage.steps_of(lambda: _names(store.list_dir("/")))
    assert names == ["a", "zarr.json"] and steps <= 3
    listing, steps = storage.steps_of(lambda: storage.list_dir("a/"))
    assert listing == DirListing(keys=("a/zarr.json",), prefixes=("a/c/",)) and steps <= 3
    for prefix, empty in [("", False), ("a/", False), ("a/c/", False), ("b/", True)]:
        answer, steps = storage.steps_of(lambda prefix=prefix: storage.is_empty(prefix))
        assert answer is empty and steps == 1, prefix
        answer, steps = storage.steps_of(
            lambda prefix=prefix: asyncio.run(store.is_empty(prefix)))
        assert answer is empty and steps == 1, prefix
    group = zarr.open_group(store, mode="r")
    members, steps = storage.steps_of(lambda: [name for name, _ in group.members()])
    assert members == ["a"] and steps < 20


def _names(names: AsyncIterator[str]) -> list[str]:
    async def collect() -> list[str]:
        return [name async for name in names]

    return asyncio.run(collect())


#: Segments from characters that sort below ``"/"`` (``-``, ``.``) and just above it
#: (``0``, ``1``), so a listing that seeks past a directory meets every awkward neighbour.
_HOSTILE_SEGMENTS = st.text(alphabet="-.01a~\u00e9", min_size=1, max_size=3).filter(
    lambda segment: segment not in (".", ".."))
_HOSTILE_KEYS = st.lists(_HOSTILE_SEGMENTS, min_size=1, max_size=4).map("/".join)


@given(keys=st.sets(_HOSTILE_KEYS, max_size=25))
@fewer_examples(2)
def test_list_dir_and_is_empty_match_a_model_with_hostile_sort_orders(keys: set[str]) -> None:
    """Every directory's listing equals the one a dict model gives, whatever sorts near ``/``."""
    directories = {""} | {key[: i + 1] for key in keys for i, c in enumerate(key) if c == "/"}
    directories |= {key + "/" for key in keys} | {"-/", "a/", "a0/", "a-/"}
    with tempfile.TemporaryDirectory() as path:
        storage = LMDBStorage(Path(path) / "env")
        try:
            storage.set_many([(key, b"v") for key in keys])
            for prefix in sorted(directories):
                rests = sorted(key[len(prefix):] for key in keys if key.startswith(prefix))
                want = DirListing(
                    keys=tuple(prefix + rest for rest in rests if "/" not in rest),
                    prefixes=tuple(sorted({prefix + rest.split("/")[0] + "/"
                                           for rest in rests if "/" in rest})),
                )
                assert storage.list_dir(prefix) == want, prefix
                assert storage.is_empty(prefix) is (not rests), prefix
        finally:
            storage.close()


# -- round trips --------------------------------------------------------------------


def test_zarr_round_trip_and_reopen(tmp_path: Path) -> None:
    data = np.arange(10_000, dtype="f8").reshape(100, 100)
    with LMDBStore(tmp_path / "z") as store:
        array = zarr.create_array(store, name="a", shape=data.shape, chunks=(10, 10), dtype="f8")
        array[:] = data
    with LMDBStore(tmp_path / "z", read_only=True) as store:
        np.testing.assert_array_equal(zarr.open_array(store, path="a", mode="r")[:], data)


def test_xarray_round_trip(tmp_path: Path) -> None:
    xr = pytest.importorskip("xarray")
    dataset = xr.Dataset(
        {"t": (("x", "y"), np.random.default_rng(0).random((20, 30)))},
        coords={"x": np.arange(20), "y": np.arange(30) * 0.5},
    )
    dataset.to_zarr(LMDBStore(tmp_path / "x"), zarr_format=3, consolidated=False)
    again = xr.open_zarr(LMDBStore(tmp_path / "x", read_only=True), consolidated=False)
    xr.testing.assert_identical(again.load(), dataset)


def test_pickled_store_reopens_by_path(tmp_path: Path) -> None:
    store = LMDBStore(tmp_path / "p")
    store.storage.set("k", b"v")
    copy = pickle.loads(pickle.dumps(store))
    assert copy.storage.get("k") == b"v" and copy == store
    copy.storage.set("k2", b"w")
    assert store.storage.get("k2") == b"w"


def test_set_many_is_one_transaction(tmp_path: Path) -> None:
    storage = LMDBStorage(tmp_path / "b")
    storage.set_many([("a", b"1"), ("b/c", b"2")])
    assert list(storage.list()) == ["a", "b/c"]
    with pytest.raises(InvalidKeyError):  # one bad key: nothing is written
        storage.set_many([("d", b"3"), ("x" * 600, b"4")])
    assert storage.get("d") is None


async def test_zarr_batches_arrive_as_one_transaction(tmp_path: Path) -> None:
    # zarr hands a batch through Store._set_many: it becomes one set_many call.
    store = LMDBStore(tmp_path / "h")
    batches: list[list[str]] = []
    set_many = store.storage.set_many

    def recording(items: list[tuple[str, bytes]]) -> None:
        batches.append([key for key, _ in items])
        set_many(items)

    store.storage.set_many = recording  # type: ignore[method-assign]
    await store._set_many([("a/zarr.json", cpu.Buffer.from_bytes(b"{}")),
                           ("b", cpu.Buffer.from_bytes(b"2"))])
    assert batches == [["a/zarr.json", "b"]]
    assert store.storage.get("b") == b"2"


def _recording_threads(storage: LMDBStorage) -> list[tuple[str, int]]:
    """Patch ``storage`` to record which thread runs each ``_get`` and ``_set``."""
    import threading

    calls: list[tuple[str, int]] = []
    get, put = storage._get, storage._set

    def recording_get(key: str, byte_range: Any) -> bytes | None:
        calls.append(("get", threading.get_ident()))
        return get(key, byte_range)

    def recording_set(key: str, value: bytes) -> None:
        calls.append(("set", threading.get_ident()))
        put(key, value)

    storage._get, storage._set = recording_get, recording_set  # type: ignore[method-assign]
    return calls


_WRAPPERS: dict[str, Any] = {
    "LMDBStore": lambda store: store,
    "PerformanceMetrics": PerformanceMetrics,
    "UsageLog": lambda store: UsageLog(store, io.StringIO()),
}


@pytest.mark.parametrize("wrap", list(_WRAPPERS))
@pytest.mark.parametrize("durable", [False, True], ids=["page-cache", "durable"])
async def test_reads_run_on_the_loop_and_writes_in_a_thread(tmp_path: Path, durable: bool,
                                                            wrap: str) -> None:
    # ``Storage.blocking_reads``: an adapter over an LMDB store keeps its reads on the
    # loop (a usage log writes a line per read: I/O, so in a thread as well).
    import threading

    inner = LMDBStore(tmp_path / "t", durable=durable)
    calls = _recording_threads(inner.storage)
    store = _WRAPPERS[wrap](inner)
    await store.set("a", cpu.Buffer.from_bytes(b"1"))
    value = await store.get("a", cpu.buffer_prototype)
    assert value is not None and value.to_bytes() == b"1"
    loop = threading.get_ident()
    assert [name for name, _ in calls] == ["set", "get"]
    assert calls[0][1] != loop, "a write ran on the event loop"
    assert (calls[1][1] == loop) == (wrap != "UsageLog")
    inner.close()


async def test_sync_to_async_reads_an_lmdb_storage_on_the_loop(tmp_path: Path) -> None:
    import threading

    storage = LMDBStorage(tmp_path / "s")
    calls = _recording_threads(storage)
    wrapped = SyncToAsync(storage)
    await wrapped.set("a", b"1")
    assert await wrapped.get("a") == b"1"
    assert [name for name, _ in calls] == ["set", "get"]
    assert calls[0][1] != threading.get_ident() and calls[1][1] == threading.get_ident()
    storage.close()


def test_blocking_reads_follows_blocking_io_unless_a_storage_says_otherwise(
        tmp_path: Path) -> None:
    from zarrstore import FilesystemStorage, MemoryStorage

    assert FilesystemStorage(tmp_path / "f").blocking_reads is True
    assert MemoryStorage().blocking_reads is False
    lmdb_storage = LMDBStorage(tmp_path / "l")
    assert lmdb_storage.blocking_io is True and lmdb_storage.blocking_reads is False
    lmdb_storage.close()


HOLDER = """
    import sys
    import lmdb
    env = lmdb.open(sys.argv[1])
    with env.begin(write=True) as txn:  # LMDB's writer lock, held until told
        txn.put(b"holder", b"1")
        print("holding", flush=True)
        sys.stdin.readline()
"""


def test_a_write_waiting_for_another_process_leaves_reads_answering(tmp_path: Path) -> None:
    # LMDB has one writer across processes: this process's write waits for the
    # other's transaction, but its readers, and zarr's loop, must not wait with it.
    import threading

    path = tmp_path / "w"
    store = LMDBStore(path)
    zarr.create_array(store, name="x", shape=(4,), chunks=(2,), dtype="i4")[:] = 7
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLDER), str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=_child_env())
    assert holder.stdin is not None and holder.stdout is not None
    assert holder.stdout.readline().strip() == "holding"
    wrote, read = threading.Event(), threading.Event()

    def write() -> None:
        zarr.open_array(store, path="x")[0] = 8
        wrote.set()

    def read_back() -> None:
        assert list(zarr.open_array(store, path="x", mode="r")[:]) == [7, 7, 7, 7]
        read.set()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    time.sleep(0.5)  # the write reaches LMDB's writer lock
    reader = threading.Thread(target=read_back, daemon=True)
    reader.start()
    answered = read.wait(30)
    written_meanwhile = wrote.is_set()
    holder.stdin.write("done\n")
    holder.stdin.flush()
    assert holder.wait(WAIT) == 0
    writer.join(WAIT)
    assert not written_meanwhile, "the write did not wait for the other process's"
    assert answered, "the read waited with the write for the other process's transaction"
    assert wrote.is_set() and zarr.open_array(store, path="x")[0] == 8
    store.close()


# -- map growth -----------------------------------------------------------------------


def test_a_large_write_grows_the_map(tmp_path: Path) -> None:
    store = LMDBStore(tmp_path / "g", map_size=1 << 20)
    assert store.storage._environment().map_size() == 1 << 20
    big = np.random.default_rng(1).integers(0, 255, size=(48, 1 << 20), dtype="u1")
    array = zarr.create_array(store, name="big", shape=big.shape, chunks=(8, 1 << 20),
                              dtype="u1", compressors=None)
    array[:] = big  # 48 MiB through a 1 MiB map
    assert store.storage._environment().map_size() >= 48 << 20
    np.testing.assert_array_equal(zarr.open_array(store, path="big")[:], big)
    value = os.urandom(3 * INITIAL_MAP_SIZE)  # one value bigger than the default map
    store.storage.set("huge", value)
    assert store.storage.get("huge") == value


# -- read-only ---------------------------------------------------------------------------


def test_read_only_store_refuses_writes(tmp_path: Path) -> None:
    LMDBStore(tmp_path / "r").storage.set("k", b"v")
    store = LMDBStore(tmp_path / "r", readonly=True)
    assert store.read_only and store.storage.get("k") == b"v"
    for write in (lambda: store.storage.set("k", b"x"), lambda: store.storage.erase("k"),
                  lambda: store.storage.set_many([("k", b"x")]),
                  lambda: store.storage.erase_prefix("")):
        with pytest.raises(ReadOnlyError):
            write()
    with pytest.raises(ValueError, match="read-only"):
        zarr.create_array(store, name="a", shape=(2,), dtype="i1")
    assert store.storage.get("k") == b"v"
    writable = store.with_read_only(False)
    writable.storage.set("k", b"w")
    assert store.storage.get("k") == b"w"


def test_read_only_store_creates_nothing(tmp_path: Path) -> None:
    store = LMDBStore(tmp_path / "missing", read_only=True)
    assert store.storage.get("k") is None and list(store.storage.list()) == []
    assert not (tmp_path / "missing").exists()
    LMDBStore(tmp_path / "missing").storage.set("k", b"v")  # a writer creates it later
    assert store.storage.get("k") == b"v"


# -- processes ---------------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([SRC, TESTS, env.get("PYTHONPATH", "")])
    return env


def _read_consistently(path: str, rounds: int) -> int:
    """Read every key many times; each snapshot must hold one round's values throughout."""
    store = LMDBStorage(path, read_only=True)
    checked = 0
    for _ in range(rounds):
        values = store.get_many([(f"k{i}", None) for i in range(20)])
        present = [v for v in values if v is not None]
        assert len({v for v in present}) <= 1, "a reader saw a torn batch"
        checked += 1
    store.close()
    return checked


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_many_readers_while_one_writes(tmp_path: Path, method: str) -> None:
    path = str(tmp_path / "m")
    store = LMDBStore(path)
    store.storage.set_many([(f"k{i}", b"round 0") for i in range(20)])
    context = multiprocessing.get_context(method)
    with context.Pool(3) as pool:
        readers = [pool.apply_async(_read_consistently, (path, 300)) for _ in range(3)]
        for n in range(1, 100):  # the parent writes whole batches meanwhile
            store.storage.set_many([(f"k{i}", f"round {n}".encode()) for i in range(20)])
        assert [r.get(WAIT) for r in readers] == [300, 300, 300]
    assert store.storage.get("k19") == b"round 99"
    store.close()


WRITER = """
    import sys
    from zarrstore import LMDBStorage
    storage = LMDBStorage(sys.argv[1])
    print("ready", flush=True)
    n = 0
    while True:
        n += 1
        storage.set_many([(f"k{i}", (f"batch {n} " * 2000).encode()) for i in range(50)])
"""


def test_writer_killed_mid_batch_leaves_old_or_new_values(tmp_path: Path) -> None:
    path = tmp_path / "k"
    LMDBStorage(path).set_many([(f"k{i}", b"batch 0 ") for i in range(50)])
    for trial in range(5):
        writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(WRITER), str(path)],
                                  stdout=subprocess.PIPE, text=True, env=_child_env())
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        time.sleep(0.05 + 0.07 * trial)  # somewhere inside one of its batches
        writer.send_signal(signal.SIGKILL)
        writer.wait(WAIT)
        storage = LMDBStorage(path)
        values = storage.get_many([(f"k{i}", None) for i in range(50)])
        assert all(v is not None for v in values)
        assert len(set(values)) == 1, "every key holds the same batch: old or new, not mixed"
        storage.set("after", b"writable after the kill")  # the dead writer's lock was freed
        storage.close()


# -- the docs -------------------------------------------------------------------------------

DOC = Path(__file__).resolve().parents[1] / "docs" / "stores.md"


def test_the_docs_section_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    section = DOC.read_text().partition("\n## LMDBStore\n")[2].partition("\n## ")[0]
    blocks = re.findall(r"^```python\n(.*?)^```", section, flags=re.DOTALL | re.MULTILINE)
    assert blocks
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "docs"}
    for number, block in enumerate(blocks):
        exec(compile(block, f"stores.md LMDBStore[{number}]", "exec"), namespace)
    assert (tmp_path / "data.lmdb" / "data.mdb").is_file()


@pytest.mark.parametrize("call", ["get", "set", "list_dir"])
def test_a_call_beginning_as_another_thread_closes_the_store_is_made(tmp_path: Path,
                                                                     call: str) -> None:
    """``close()`` lands after a call took the store's handle, before its transaction.

    The store "stays usable: its next call opens the environment again", but
    this call raised ``StorageIOError`` ("the LMDB environment ... is closed")
    from the handle ``close()`` had just closed. It now reopens and is made.
    The thread is held where the interleaving happens (at its call of
    ``EnvironmentHandle.read`` / ``write``) by a trace function, so the
    order is certain.
    """
    import threading

    from zarrstore import lmdb_environment

    storage = LMDBStorage(tmp_path / "s")
    storage.set("a/b", b"1")
    held, release = threading.Event(), threading.Event()
    code = {lmdb_environment.EnvironmentHandle.read.__code__,
            lmdb_environment.EnvironmentHandle.write.__code__}
    results: list[object] = []

    def trace(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code in code and not held.is_set():
            held.set()
            assert release.wait(120)

    def run() -> None:
        sys.settrace(trace)
        try:
            if call == "get":
                results.append(storage.get("a/b"))
            elif call == "set":
                storage.set("a/c", b"2")
                results.append("set")
            else:
                results.append(storage.list_dir(""))
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
            results.append(exc)
        finally:
            sys.settrace(None)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert held.wait(120)
        storage.close()  # the call already holds the handle this closes
    finally:
        release.set()
        thread.join(120)
    expected = {"get": b"1", "set": "set", "list_dir": DirListing(prefixes=("a/",))}[call]
    assert results == [expected]
    if call == "set":
        assert storage.get("a/c") == b"2"
    storage.close()

"""``PerformanceMetrics``: conformance, the counting rules, and exact figures through zarr.

The zarr figures are computed from each array's layout (shape, chunking, dtype,
no compression), never copied from a run.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from adapter_support import FEWER_EXAMPLES, InnermostBackdoor, ZarrBackdoor, raw_get
from hypothesis.stateful import run_state_machine_as_test
from hypothesis_budget import hierarchy_examples
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import cpu, default_buffer_prototype
from zarr.testing.stateful import ZarrHierarchyStateMachine
from zarr.testing.store import StoreTests

from zarrstore import (
    FilesystemStorage,
    FilesystemStore,
    InvalidKeyError,
    MemoryStorage,
    MemoryStore,
    PerformanceMetrics,
    RangeRequest,
    SuffixRequest,
    SyncToAsync,
    ZarrStore,
)
from zarrstore.adapters import PerformanceMetricsStorage
from zarrstore.adapters.metrics import COUNTERS
from zarrstore.testing import StoreConformance, storage_state_machine

# -- conformance ---------------------------------------------------------------------


class TestMetricsOverMemory(InnermostBackdoor, StoreConformance):
    @pytest.fixture
    def storage(self) -> PerformanceMetricsStorage:
        return PerformanceMetricsStorage(MemoryStorage())


class TestMetricsOverFilesystem(InnermostBackdoor, StoreConformance):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> PerformanceMetricsStorage:
        return PerformanceMetricsStorage(FilesystemStorage(tmp_path / "store"))


class TestMetricsWithZarrOverMemory(ZarrBackdoor, StoreTests[PerformanceMetrics, cpu.Buffer]):
    store_cls = PerformanceMetrics
    buffer_cls = cpu.Buffer

    @pytest.fixture
    def store_kwargs(self) -> dict[str, Any]:
        return {"store": MemoryStore()}

    def test_store_repr(self, store: PerformanceMetrics) -> None:
        expected = "PerformanceMetrics(PerformanceMetricsStorage(MemoryStorage(0 keys, writable)))"
        assert repr(store) == expected


class TestMetricsWithZarrOverFilesystem(ZarrBackdoor, StoreTests[PerformanceMetrics, cpu.Buffer]):
    store_cls = PerformanceMetrics
    buffer_cls = cpu.Buffer

    @pytest.fixture
    def store_kwargs(self, tmp_path: Path) -> dict[str, Any]:
        return {"store": FilesystemStore(tmp_path / "zarr")}

    def test_store_repr(self, store: PerformanceMetrics) -> None:
        assert repr(store).startswith("PerformanceMetrics(PerformanceMetricsStorage(Filesystem")


def test_state_machine_over_memory() -> None:
    machine = storage_state_machine(lambda: PerformanceMetricsStorage(MemoryStorage()))
    run_state_machine_as_test(machine, settings=FEWER_EXAMPLES)


def test_state_machine_over_filesystem(tmp_path: Path) -> None:
    counter = itertools.count()

    def make() -> PerformanceMetricsStorage:
        return PerformanceMetricsStorage(FilesystemStorage(tmp_path / f"s{next(counter)}"))

    run_state_machine_as_test(storage_state_machine(make), settings=FEWER_EXAMPLES)


def test_zarr_hierarchy_state_machine_over_memory() -> None:
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        lambda: ZarrHierarchyStateMachine(PerformanceMetrics(MemoryStore())),
        settings=hierarchy_examples(),
    )


# -- the counting rules --------------------------------------------------------------


def counts(**nonzero: int) -> dict[str, int]:
    return {name: nonzero.get(name, 0) for name in COUNTERS}


@pytest.fixture
def metrics() -> PerformanceMetricsStorage:
    storage = PerformanceMetricsStorage(MemoryStorage())
    storage.inner.set("a/b", b"0123456789")
    storage.inner.set("a/c", b"xyz")
    return storage


def test_reads_count_the_bytes_returned(metrics: PerformanceMetricsStorage) -> None:
    metrics.get("a/b")
    metrics.get("a/b", RangeRequest(2, 5))  # a partial read counts the range
    metrics.get("a/b", SuffixRequest(50))  # clipped to the value: 10 bytes
    metrics.get("missing")  # a read of 0 bytes
    assert metrics.as_dict() == counts(reads=4, bytes_read=10 + 3 + 10 + 0)


def test_a_batch_counts_each_item(metrics: PerformanceMetricsStorage) -> None:
    metrics.get_many([("a/b", None), ("a/c", RangeRequest(0, 1)), ("nope", None)])
    metrics.get_many([])
    assert metrics.as_dict() == counts(reads=3, bytes_read=10 + 1)
    metrics.erase_many(["a/b", "never"])
    assert metrics.keys_erased == 2


def test_writes_erases_and_listings(metrics: PerformanceMetricsStorage) -> None:
    metrics.set("x/y", b"12345")
    assert metrics.set_if_absent("x/z", b"12")
    assert not metrics.set_if_absent("x/z", b"123")  # stored nothing, counts nothing
    metrics.erase("x/y")
    metrics.erase_prefix("x/")
    assert list(metrics.list()) == ["a/b", "a/c"]
    metrics.list_dir("")  # one prefix entry: "a/"
    metrics.size("a/b")
    metrics.exists("a/b")
    metrics.size_prefix("a/")
    assert metrics.as_dict() == counts(
        writes=2, bytes_written=5 + 2, keys_erased=1, prefixes_erased=1, lists=2, keys_listed=3
    )
    assert {op: t.calls for op, t in metrics.timings().items()} == {
        "erase": 1,
        "erase_prefix": 1,
        "exists": 1,
        "list_dir": 1,
        "list_prefix": 1,
        "set": 1,
        "set_if_absent": 2,
        "size": 1,
        "size_prefix": 1,
    }
    assert all(t.nanoseconds >= 0 for t in metrics.timings().values())


def test_failed_calls_count_only_their_timing(metrics: PerformanceMetricsStorage) -> None:
    with pytest.raises(InvalidKeyError):
        metrics.get("../x")
    with pytest.raises(InvalidKeyError):
        metrics.set("a//b", b"1")
    assert metrics.as_dict() == counts()
    assert {op: t.calls for op, t in metrics.timings().items()} == {"get": 1, "set": 1}


def test_reset_and_measure(metrics: PerformanceMetricsStorage) -> None:
    metrics.get("a/b")
    metrics.reset()
    assert metrics.as_dict() == counts() and metrics.timings() == {}
    metrics.get("a/c")
    with metrics.measure() as block:
        metrics.get("a/b", RangeRequest(0, 4))
        metrics.set("n", b"12")
    assert block.as_dict() == counts(reads=1, bytes_read=4, writes=1, bytes_written=2)
    assert block.seconds >= 0
    assert metrics.reads == 2 and metrics.bytes_read == 3 + 4


def test_counts_from_eight_threads_are_exact() -> None:
    metrics = PerformanceMetricsStorage(MemoryStorage())
    start = threading.Barrier(8)

    def work(n: int) -> None:
        start.wait()
        for i in range(200):
            metrics.set(f"t{n}/{i}", b"abc")
            metrics.get(f"t{n}/{i}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert metrics.as_dict() == counts(writes=1600, bytes_written=4800, reads=1600, bytes_read=4800)


# -- exact figures through zarr ------------------------------------------------------

# A 12 x 8 uint8 array in 4 x 4 chunks, no compression: every chunk is 16 bytes, and
# the array is 3 x 2 chunks. Values start at 1, so no chunk equals the fill value
# (zarr does not store chunks that do).
SHAPE, CHUNK = (12, 8), (4, 4)
CHUNK_BYTES = CHUNK[0] * CHUNK[1] * np.dtype("u1").itemsize
GRID = (SHAPE[0] // CHUNK[0], SHAPE[1] // CHUNK[1])
DATA = (np.arange(SHAPE[0] * SHAPE[1]) % 250 + 1).astype("u1").reshape(SHAPE)


@pytest.fixture(params=["memory", "filesystem"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> ZarrStore:
    return MemoryStore() if request.param == "memory" else FilesystemStore(tmp_path / "fs")


def test_chunked_array_write_and_read(base: ZarrStore) -> None:
    store = PerformanceMetrics(base)
    array = zarr.create_array(
        store, name="a", shape=SHAPE, chunks=CHUNK, dtype="u1", compressors=None, fill_value=0
    )
    store.reset()
    array[:] = DATA  # whole chunks: written, never read
    chunks = GRID[0] * GRID[1]
    assert store.as_dict() == counts(writes=chunks, bytes_written=chunks * CHUNK_BYTES)

    store.reset()
    reopened = zarr.open_array(store, path="a", mode="r")  # a read-only view: same counters
    metadata = raw_get(store.storage, "a/zarr.json")
    assert metadata is not None
    assert store.bytes_read == len(metadata)

    store.reset()
    np.testing.assert_array_equal(reopened[1:6, 5:7], DATA[1:6, 5:7])
    # Rows 1..5 span chunk rows 0 and 1; columns 5..6 lie in chunk column 1.
    assert store.as_dict() == counts(reads=2, bytes_read=2 * CHUNK_BYTES)

    store.reset()
    np.testing.assert_array_equal(reopened[:], DATA)
    assert store.as_dict() == counts(reads=chunks, bytes_read=chunks * CHUNK_BYTES)


def test_partial_chunk_write_reads_then_writes_one_chunk(base: ZarrStore) -> None:
    store = PerformanceMetrics(base)
    array = zarr.create_array(
        store, name="a", shape=SHAPE, chunks=CHUNK, dtype="u1", compressors=None, fill_value=0
    )
    array[:] = DATA
    store.reset()
    array[0:2, 0:2] = 7  # inside chunk (0, 0): read it, merge, write it back
    assert store.as_dict() == counts(
        reads=1, bytes_read=CHUNK_BYTES, writes=1, bytes_written=CHUNK_BYTES
    )


def test_missing_chunks_are_reads_of_zero_bytes(base: ZarrStore) -> None:
    store = PerformanceMetrics(base)
    array = zarr.create_array(
        store, name="a", shape=SHAPE, chunks=CHUNK, dtype="u1", compressors=None, fill_value=0
    )
    store.reset()
    assert not array[0:8, :].any()  # 2 x 2 chunks, none written
    assert store.as_dict() == counts(reads=4, bytes_read=0)


# A 16 x 16 uint8 array in 8 x 8 shards of 4 x 4 inner chunks, no compression. Each
# shard holds 4 inner chunks of 16 bytes and, at its end, an index of two uint64
# (offset, length) per inner chunk plus a 4-byte crc32c.
S_SHAPE, S_SHARD, S_CHUNK = (16, 16), (8, 8), (4, 4)
S_CHUNK_BYTES = S_CHUNK[0] * S_CHUNK[1]
S_CHUNKS_PER_SHARD = (S_SHARD[0] // S_CHUNK[0]) * (S_SHARD[1] // S_CHUNK[1])
S_INDEX_BYTES = S_CHUNKS_PER_SHARD * 2 * 8 + 4
S_SHARD_BYTES = S_CHUNKS_PER_SHARD * S_CHUNK_BYTES + S_INDEX_BYTES
S_SHARDS = (S_SHAPE[0] // S_SHARD[0]) * (S_SHAPE[1] // S_SHARD[1])
S_DATA = (np.arange(256) % 200 + 1).astype("u1").reshape(S_SHAPE)


def _sharded(store: Any) -> zarr.Array:
    return zarr.create_array(
        store,
        name="s",
        shape=S_SHAPE,
        chunks=S_CHUNK,
        shards=S_SHARD,
        dtype="u1",
        compressors=None,
        fill_value=0,
    )


def test_sharded_array_write_and_range_reads(base: ZarrStore) -> None:
    store = PerformanceMetrics(base)
    array = _sharded(store)
    store.reset()
    array[:] = S_DATA
    assert store.as_dict() == counts(writes=S_SHARDS, bytes_written=S_SHARDS * S_SHARD_BYTES)

    reopened = zarr.open_array(store, path="s", mode="r")
    store.reset()
    np.testing.assert_array_equal(reopened[0:4, 0:4], S_DATA[0:4, 0:4])
    # One inner chunk: the shard's index (a suffix read), then the chunk's byte range
    # through Store.get_ranges -- both counted.
    assert store.as_dict() == counts(reads=2, bytes_read=S_INDEX_BYTES + S_CHUNK_BYTES)
    assert store.timings()["get_many"].calls == 1

    store.reset()
    np.testing.assert_array_equal(reopened[0:4, 0:8], S_DATA[0:4, 0:8])
    assert store.as_dict() == counts(reads=3, bytes_read=S_INDEX_BYTES + 2 * S_CHUNK_BYTES)


def test_sharded_read_through_the_async_path_is_counted() -> None:
    metrics = PerformanceMetricsStorage(MemoryStorage())
    store = ZarrStore(SyncToAsync(metrics))  # async storage: zarr awaits get_ranges
    assert not store._supports_sync_io
    _sharded(store)[:] = S_DATA
    reopened = zarr.open_array(store, path="s", mode="r")
    metrics.reset()
    np.testing.assert_array_equal(reopened[8:12, 12:16], S_DATA[8:12, 12:16])
    assert metrics.as_dict() == counts(reads=2, bytes_read=S_INDEX_BYTES + S_CHUNK_BYTES)


async def test_every_bridge_read_path_is_counted() -> None:
    store = PerformanceMetrics(MemoryStore())
    store.inner.set("k", b"0123456789")
    proto = default_buffer_prototype()
    with store.measure() as block:
        await store.get("k", proto)
        await store.get("k", proto, RangeByteRequest(0, 4))
        store.get_sync("k", byte_range=OffsetByteRequest(8))
        await store.get_partial_values(proto, [("k", SuffixByteRequest(3)), ("gone", None)])
        [item async for item in store._get_many([("k", proto, None)])]
        [g async for g in store.get_ranges("k", [RangeByteRequest(1, 3)], prototype=proto)]
        store.get_ranges_sync("k", [RangeByteRequest(0, 5), None], prototype=proto)
    assert block.as_dict() == counts(reads=9, bytes_read=10 + 4 + 2 + 3 + 0 + 10 + 2 + 5 + 10)


def test_bytes_written_are_bytes_not_items() -> None:
    """A ``memoryview`` of 4-byte items stored 16 bytes but was counted as 4."""
    store = PerformanceMetrics(MemoryStore())
    wide = memoryview(bytes(range(16))).cast("i")
    store.storage.set("a", wide)  # type: ignore[arg-type]
    assert store.storage.set_if_absent("b", wide)  # type: ignore[arg-type]
    assert store.bytes_written == 32 and store.writes == 2

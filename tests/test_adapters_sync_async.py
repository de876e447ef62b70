"""``AsyncToSync`` and ``SyncToAsync``: conformance, running loops, threads, responsiveness."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import zarr
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test
from hypothesis_budget import hierarchy_examples
from zarr.core.buffer import Buffer, cpu
from zarr.testing.stateful import ZarrHierarchyStateMachine
from zarr.testing.store import StoreTests

from zarrstore import FilesystemStorage, MemoryStorage, Storage, ZarrStore
from zarrstore.adapters import AsyncToSync, SyncToAsync
from zarrstore.protocol import AsyncStorage
from zarrstore.ranges import ByteRange
from zarrstore.testing import (
    FILES_CANNOT_BE_DIRECTORIES,
    StoreConformance,
    storage_state_machine,
)

T = TypeVar("T")

# The adapters are thin; a quarter of the profile's examples (each a full random
# program) covers them, and keeps the whole module to a few seconds.
FEWER_EXAMPLES = settings(settings(), max_examples=max(10, settings().max_examples // 4))


def round_trip(inner: MemoryStorage | FilesystemStorage) -> AsyncToSync:
    return AsyncToSync(SyncToAsync(inner))


# -- conformance of the round trip, over memory and filesystem ----------------------


class TestRoundTripOverMemory(StoreConformance):
    @pytest.fixture
    def storage(self) -> AsyncToSync:
        return round_trip(MemoryStorage())

    def raw_get(self, storage: AsyncToSync, key: str) -> bytes | None:  # type: ignore[override]
        return storage.inner.inner._values.get(key)  # type: ignore[attr-defined]

    def raw_set(self, storage: AsyncToSync, key: str, value: bytes) -> None:  # type: ignore[override]
        storage.inner.inner._values[key] = value  # type: ignore[attr-defined]


class TestRoundTripOverFilesystem(StoreConformance):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> AsyncToSync:
        return round_trip(FilesystemStorage(tmp_path / "store"))

    def why_not_a_key_and_keys_under_it(self, storage: Storage) -> str | None:
        return FILES_CANNOT_BE_DIRECTORIES

    def raw_get(self, storage: AsyncToSync, key: str) -> bytes | None:  # type: ignore[override]
        path = storage.inner.inner.root / key  # type: ignore[attr-defined]
        return path.read_bytes() if path.is_file() else None

    def raw_set(self, storage: AsyncToSync, key: str, value: bytes) -> None:  # type: ignore[override]
        path = storage.inner.inner.root / key  # type: ignore[attr-defined]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(value)


def test_state_machine_over_memory() -> None:
    run_state_machine_as_test(
        storage_state_machine(lambda: round_trip(MemoryStorage())), settings=FEWER_EXAMPLES
    )


def test_state_machine_over_filesystem(tmp_path: Path) -> None:
    counter = iter(range(10**6))
    run_state_machine_as_test(
        storage_state_machine(
            lambda: round_trip(FilesystemStorage(tmp_path / f"s{next(counter)}"))
        ),
        settings=FEWER_EXAMPLES,
    )


# -- zarr's StoreTests: the round trip (sync surface) and SyncToAsync alone (async) --


class RoundTripStore(ZarrStore):
    """A zarr store over ``AsyncToSync(SyncToAsync(MemoryStorage(values)))``."""

    def __init__(self, values: dict[str, bytes], *, read_only: bool = False) -> None:
        super().__init__(round_trip(MemoryStorage(values, read_only=read_only)))


class AsyncOnlyStore(ZarrStore):
    """A zarr store over ``SyncToAsync(MemoryStorage(values))``: zarr awaits every call."""

    def __init__(self, values: dict[str, bytes], *, read_only: bool = False) -> None:
        super().__init__(SyncToAsync(MemoryStorage(values, read_only=read_only)))


def test_zarr_hierarchy_state_machine_over_the_round_trip() -> None:
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        lambda: ZarrHierarchyStateMachine(RoundTripStore({})), settings=hierarchy_examples()
    )


def test_zarr_hierarchy_state_machine_over_sync_to_async() -> None:
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        lambda: ZarrHierarchyStateMachine(AsyncOnlyStore({})), settings=hierarchy_examples()
    )


class _DictBackdoor:
    async def set(self, store: ZarrStore, key: str, value: Buffer) -> None:
        self.values(store)[key] = value.to_bytes()

    async def get(self, store: ZarrStore, key: str) -> Buffer:
        return cpu.Buffer.from_bytes(self.values(store)[key])

    def values(self, store: ZarrStore) -> dict[str, bytes]:
        storage: Any = store.storage
        while not isinstance(storage, MemoryStorage):
            storage = storage.inner
        return storage._values

    @pytest.fixture
    def store_kwargs(self) -> dict[str, Any]:
        return {"values": {}}

    def test_store_supports_writes(self, store: ZarrStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: ZarrStore) -> None:
        assert store.supports_listing


class TestRoundTripWithZarr(_DictBackdoor, StoreTests[RoundTripStore, cpu.Buffer]):
    store_cls = RoundTripStore
    buffer_cls = cpu.Buffer

    def test_store_repr(self, store: RoundTripStore) -> None:
        assert repr(store) == (
            "RoundTripStore(AsyncToSync(SyncToAsync(MemoryStorage(0 keys, writable))))"
        )


_NO_SYNC_SURFACE = (
    "a ZarrStore over an async storage has no sync surface: it reports "
    "_supports_sync_io = False, so zarr never calls the *_sync methods"
)


class TestSyncToAsyncWithZarr(_DictBackdoor, StoreTests[AsyncOnlyStore, cpu.Buffer]):
    store_cls = AsyncOnlyStore
    buffer_cls = cpu.Buffer

    def test_store_repr(self, store: AsyncOnlyStore) -> None:
        assert repr(store) == "AsyncOnlyStore(SyncToAsync(MemoryStorage(0 keys, writable)))"

    def test_reports_no_sync_io(self, store: AsyncOnlyStore) -> None:
        assert not store._supports_sync_io

    @pytest.fixture(autouse=True)
    def _skip_sync_surface(self, request: pytest.FixtureRequest) -> None:
        name = request.node.originalname
        if "sync" in name and name != "test_reports_no_sync_io":
            pytest.skip(_NO_SYNC_SURFACE)


def test_zarr_array_through_both_bridges() -> None:
    data = np.arange(100, dtype="i4").reshape(10, 10)
    for store in (ZarrStore(round_trip(MemoryStorage())), ZarrStore(SyncToAsync(MemoryStorage()))):
        zarr.create_array(store, name="a", shape=data.shape, chunks=(3, 4), dtype="i4")[:] = data
        np.testing.assert_array_equal(zarr.open_array(store, path="a", mode="r")[:], data)


# -- AsyncToSync where users are: inside a running loop, from many threads ----------


class LoopBoundStorage(AsyncStorage):
    """An async storage that, like an aiohttp session, must always run on one loop."""

    def __init__(self, *, read_only: bool = False) -> None:
        super().__init__(read_only=read_only)
        self.values: dict[str, bytes] = {}
        self.loops: set[int] = set()

    async def _touch(self) -> None:
        self.loops.add(id(asyncio.get_running_loop()))
        await asyncio.sleep(0)

    async def _get(self, key: str, byte_range: ByteRange | None) -> bytes | None:
        await self._touch()
        return self.values.get(key)

    async def _set(self, key: str, value: bytes) -> None:
        await self._touch()
        self.values[key] = value

    async def _erase(self, key: str) -> None:
        await self._touch()
        self.values.pop(key, None)

    async def _list_prefix(self, prefix: str) -> list[str]:
        await self._touch()
        return sorted(k for k in self.values if k.startswith(prefix))

    async def _size(self, key: str) -> int | None:
        await self._touch()
        value = self.values.get(key)
        return None if value is None else len(value)

    def _with_read_only(self, read_only: bool) -> LoopBoundStorage:
        return self


async def test_async_to_sync_inside_a_running_loop() -> None:
    inner = LoopBoundStorage()
    storage = AsyncToSync(inner)
    storage.set("a/b", b"123")
    assert storage.get("a/b") == b"123"
    assert list(storage.list()) == ["a/b"]
    assert storage.size_prefix("a/") == 3
    # The caller's loop kept running and the storage always ran on one other loop.
    here = id(asyncio.get_running_loop())
    assert len(inner.loops) == 1 and here not in inner.loops
    await asyncio.sleep(0)


def test_async_to_sync_from_eight_threads_at_once() -> None:
    inner = LoopBoundStorage()
    storage = AsyncToSync(inner)
    start = threading.Barrier(8)

    def work(n: int) -> list[bytes | None]:
        start.wait()
        for i in range(40):
            storage.set(f"t{n}/{i}", f"{n}:{i}".encode())
        return storage.get_many([(f"t{n}/{i}", None) for i in range(40)])

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    for n, got in enumerate(results):
        assert got == [f"{n}:{i}".encode() for i in range(40)]
    assert len(list(storage.list())) == 8 * 40
    assert len(inner.loops) == 1


def test_custom_runner_is_used() -> None:
    calls: list[str] = []

    def runner(coroutine: Coroutine[Any, Any, T]) -> T:
        calls.append(coroutine.__qualname__)
        return asyncio.run(coroutine)

    storage = AsyncToSync(SyncToAsync(MemoryStorage()), runner=runner)
    storage.set("k", b"v")
    assert storage.get("k") == b"v"
    assert calls == ["SyncToAsync.set", "SyncToAsync.get"]
    assert storage.with_read_only(True).runner is runner


def test_calling_back_into_the_background_loop_is_a_clear_error() -> None:
    class Reentrant(LoopBoundStorage):
        async def _get(self, key: str, byte_range: ByteRange | None) -> bytes | None:
            return AsyncToSync(LoopBoundStorage()).get(key)

    with pytest.raises(RuntimeError, match="its own background event loop"):
        AsyncToSync(Reentrant()).get("k")


def test_errors_come_back_unchanged() -> None:
    storage = AsyncToSync(SyncToAsync(MemoryStorage(read_only=True)))
    from zarrstore import InvalidKeyError, ReadOnlyError

    with pytest.raises(ReadOnlyError):
        storage.set("k", b"v")
    with pytest.raises(InvalidKeyError):
        storage.get("../k")


# -- SyncToAsync keeps the event loop responsive -------------------------------------


class GatedStorage(MemoryStorage):
    """A blocking storage whose ``get`` waits until something else sets ``gate``.

    A ticker task on the event loop sets the gate after ten ticks, so the call
    returns only if the loop kept running while it was blocked. No assertion
    depends on how fast the machine is.
    """

    blocking_io = True

    def __init__(self, wait: float) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.wait = wait
        self.opened = False

    def _get(self, key: str, byte_range: ByteRange | None) -> bytes | None:
        time.sleep(0.05)
        self.opened = self.gate.wait(self.wait)
        return super()._get(key, byte_range)


async def _ticks_during(call: Coroutine[Any, Any, Any], gated: GatedStorage) -> int:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1
            if ticks == 10:
                gated.gate.set()

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    try:
        await call
        return ticks
    finally:
        task.cancel()


async def test_sync_to_async_keeps_the_loop_responsive() -> None:
    gated = GatedStorage(wait=60)
    gated.set("k", b"v")
    ticks = await _ticks_during(SyncToAsync(gated).get("k"), gated)
    assert gated.opened, "the storage call was released by the ticker, so the loop kept running"
    assert ticks >= 10


async def test_without_sync_to_async_the_loop_is_blocked() -> None:
    """The control: the same call made on the loop starves the ticker."""
    gated = GatedStorage(wait=0.3)
    gated.set("k", b"v")

    async def blocking_call() -> bytes | None:
        return gated.get("k")

    ticks = await _ticks_during(blocking_call(), gated)
    assert not gated.opened and ticks == 0

"""``ReadOnly``: every write refused, every read passed through, over memory and filesystem.

zarr's ``StoreTests`` assume a writable store. Its tests that write through the
store under test are run here *expecting* the first write to be refused with
``ReadOnlyError`` (zarr's read-only wording), which is exactly ``ReadOnly``'s
promise; its read tests run unchanged, seeding data through the backdoor.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from adapter_support import FEWER_EXAMPLES, InnermostBackdoor, ZarrBackdoor, raw_get, raw_set
from hypothesis.stateful import run_state_machine_as_test
from hypothesis_budget import hierarchy_examples
from zarr.core.buffer import cpu, default_buffer_prototype
from zarr.testing.stateful import ZarrHierarchyStateMachine
from zarr.testing.store import StoreTests

from zarrstore import (
    FilesystemStorage,
    FilesystemStore,
    MemoryStorage,
    MemoryStore,
    ReadOnly,
    ReadOnlyError,
    Storage,
    ZarrStore,
)
from zarrstore.adapters import ReadOnlyStorage, WrappingStorage
from zarrstore.testing import StoreConformance, storage_state_machine

ZARR_WORDING = "store was opened in read-only mode and does not support writing"

# -- conformance (its write tests skip themselves: writable = False) ------------------


class TestReadOnlyOverMemory(InnermostBackdoor, StoreConformance):
    writable = False

    @pytest.fixture
    def storage(self) -> ReadOnlyStorage:
        return ReadOnlyStorage(MemoryStorage())


class TestReadOnlyOverFilesystem(InnermostBackdoor, StoreConformance):
    writable = False

    @pytest.fixture
    def storage(self, tmp_path: Path) -> ReadOnlyStorage:
        return ReadOnlyStorage(FilesystemStorage(tmp_path / "store"))


class RefusedThenWritten(WrappingStorage):
    """Reads go through the guard; each write must be refused by it, then is made below.

    So the dict-model state machine checks both halves of the promise: every
    write the machine tries is refused, and every read agrees with the model.
    """

    def __init__(self, backing: Storage) -> None:
        super().__init__(ReadOnlyStorage(backing))
        self.backing = backing

    def _refused_then(self, write: Callable[[Storage], Any]) -> Any:
        with pytest.raises(ReadOnlyError, match=ZARR_WORDING):
            write(self.inner)
        return write(self.backing)

    def set(self, key: str, value: bytes) -> None:
        self._refused_then(lambda s: s.set(key, value))

    def set_if_absent(self, key: str, value: bytes) -> bool:
        return bool(self._refused_then(lambda s: s.set_if_absent(key, value)))

    def erase(self, key: str) -> None:
        self._refused_then(lambda s: s.erase(key))

    def erase_prefix(self, prefix: str) -> None:
        self._refused_then(lambda s: s.erase_prefix(prefix))


def test_state_machine_over_memory() -> None:
    machine = storage_state_machine(lambda: RefusedThenWritten(MemoryStorage()))
    run_state_machine_as_test(machine, settings=FEWER_EXAMPLES)


def test_state_machine_over_filesystem(tmp_path: Path) -> None:
    counter = itertools.count()

    def make() -> RefusedThenWritten:
        return RefusedThenWritten(FilesystemStorage(tmp_path / f"s{next(counter)}"))

    run_state_machine_as_test(storage_state_machine(make), settings=FEWER_EXAMPLES)


class RefusedThenWrittenStore(ZarrStore):
    """zarr over ``RefusedThenWritten``: zarr writes, ``ReadOnly`` refuses each, it is made below.

    The store itself reads as writable, so zarr tries its writes (a ``ReadOnly`` store
    would be refused by zarr before any reached the adapter).
    """

    def __init__(self) -> None:
        super().__init__(RefusedThenWritten(MemoryStorage()))
        self._read_only = False


def test_zarr_hierarchy_state_machine_over_memory() -> None:
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        lambda: ZarrHierarchyStateMachine(RefusedThenWrittenStore()),
        settings=hierarchy_examples(),
    )


# -- zarr's StoreTests ----------------------------------------------------------------

# zarr's tests that write through the store under test; each must be refused with
# zarr's read-only wording (a ValueError: ReadOnlyError, or zarr's own check in clear).
WRITING_TESTS = [
    "test_getsize_prefix", "test_set_not_open", "test_set_many", "test_exists",
    "test_delete", "test_delete_dir", "test_delete_nonexistent_key_does_not_raise",
    "test_clear", "test_list", "test_list_prefix", "test_list_empty_path", "test_list_dir",
    "test_set_if_not_exists", "test_set_sync", "test_delete_sync", "test_delete_sync_missing",
    "test_sync_async_set_get_parity", "test_delete_sync_visible_to_async_get",
    "test_get_sync_byte_range_parity",
]  # fmt: skip


def _expect_refusal(test: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(test):

        @functools.wraps(test)
        async def refused_async(*args: Any, **kwargs: Any) -> None:
            with pytest.raises(ValueError, match=ZARR_WORDING):
                await test(*args, **kwargs)

        return refused_async

    @functools.wraps(test)
    def refused(*args: Any, **kwargs: Any) -> None:
        with pytest.raises(ValueError, match=ZARR_WORDING):
            test(*args, **kwargs)

    return refused


class _ReadOnlyStoreTests(ZarrBackdoor, StoreTests[ReadOnly, cpu.Buffer]):
    store_cls = ReadOnly
    buffer_cls = cpu.Buffer

    def test_store_supports_writes(self, store: ReadOnly) -> None:
        assert store.supports_writes  # the backing can; this guard refuses (read_only)

    def test_store_read_only(self, store: ReadOnly) -> None:
        assert store.read_only
        with pytest.raises(AttributeError):
            store.read_only = False  # type: ignore[misc]

    @pytest.mark.parametrize("read_only", [True, False])
    async def test_store_open_read_only(self, open_kwargs: dict[str, Any], read_only: bool) -> None:
        inner = open_kwargs["store"].with_read_only(read_only)
        store = await ReadOnly.open(store=inner)
        assert store._is_open and store.read_only  # whatever the wrapped store says

    @pytest.mark.parametrize("key", ["zarr.json", "c/0", "foo/c/0.0"])
    async def test_set(self, store: ReadOnly, key: str) -> None:
        assert store.read_only
        with pytest.raises(ReadOnlyError, match=ZARR_WORDING):
            await store.set(key, cpu.Buffer.from_bytes(b"\x01"))
        assert raw_get(store.storage, key) is None

    async def test_read_only_store_raises(self, store: ReadOnly) -> None:
        with pytest.raises(ReadOnlyError, match=ZARR_WORDING):
            await store.set("foo", cpu.Buffer.from_bytes(b"bar"))
        with pytest.raises(ReadOnlyError, match=ZARR_WORDING):
            await store.delete("foo")
        with pytest.raises(ReadOnlyError, match=ZARR_WORDING):
            await store.delete_dir("foo")

    async def test_with_read_only_store(self, store: ReadOnly) -> None:
        reader = store.with_read_only(True)
        assert reader.read_only and not reader._is_open
        with pytest.raises(ReadOnlyError, match=ZARR_WORDING):
            await reader.set("foo", cpu.Buffer.from_bytes(b"bar"))
        with pytest.raises(ReadOnlyError, match="cannot be made writable"):
            store.with_read_only(False)

    async def test_serializable_store(self, store: ReadOnly) -> None:
        await self.set(store, "foo", cpu.Buffer.from_bytes(b"\x01\x02"))
        clone = pickle.loads(pickle.dumps(store))
        assert clone == store and clone.read_only
        observed = await clone.get("foo", prototype=default_buffer_prototype())
        assert observed is not None and observed.to_bytes() == b"\x01\x02"


for _name in WRITING_TESTS:
    setattr(_ReadOnlyStoreTests, _name, _expect_refusal(getattr(StoreTests, _name)))


class TestReadOnlyWithZarrOverMemory(_ReadOnlyStoreTests):
    @pytest.fixture
    def store_kwargs(self) -> dict[str, Any]:
        return {"store": MemoryStore()}

    def test_store_repr(self, store: ReadOnly) -> None:
        assert repr(store) == "ReadOnly(ReadOnlyStorage(MemoryStorage(0 keys, writable)))"


class TestReadOnlyWithZarrOverFilesystem(_ReadOnlyStoreTests):
    @pytest.fixture
    def store_kwargs(self, tmp_path: Path) -> dict[str, Any]:
        return {"store": FilesystemStore(tmp_path / "zarr")}

    def test_store_repr(self, store: ReadOnly) -> None:
        assert repr(store).startswith("ReadOnly(ReadOnlyStorage(FilesystemStorage(")


# -- the guard ------------------------------------------------------------------------


@pytest.fixture(params=["memory", "filesystem"])
def guarded(request: pytest.FixtureRequest, tmp_path: Path) -> ReadOnlyStorage:
    inner: Storage = (
        MemoryStorage() if request.param == "memory" else FilesystemStorage(tmp_path / "fs")
    )
    inner.set("keep", b"safe")
    return ReadOnlyStorage(inner)


def test_every_write_is_refused_before_the_inner_storage(guarded: ReadOnlyStorage) -> None:
    writes: list[Callable[[], Any]] = [
        lambda: guarded.set("keep", b"lost"),
        lambda: guarded.set_if_absent("new", b"x"),
        lambda: guarded.erase("keep"),
        lambda: guarded.erase_many(["keep"]),
        lambda: guarded.erase_prefix(""),
    ]
    for write in writes:
        with pytest.raises(ReadOnlyError, match=ZARR_WORDING):
            write()
    assert raw_get(guarded, "keep") == b"safe" and raw_get(guarded, "new") is None
    assert guarded.read_only and not guarded.inner.read_only


def test_zarr_reads_through_and_cannot_write(tmp_path: Path) -> None:
    base = FilesystemStore(tmp_path / "data")
    zarr.create_array(base, name="a", shape=(6,), chunks=(4,), dtype="i2")[:] = np.arange(6)
    published = ReadOnly(base)
    np.testing.assert_array_equal(zarr.open_array(published, path="a")[:], np.arange(6))
    with pytest.raises(ValueError, match="read-only"):
        zarr.open_group(published, mode="a")
    array = zarr.open_array(published, path="a", mode="r")
    with pytest.raises(ReadOnlyError):
        array[:] = 0
    np.testing.assert_array_equal(zarr.open_array(base, path="a")[:], np.arange(6))


def test_guard_survives_stacking_and_views() -> None:
    from zarrstore import PerformanceMetrics, UsageLog

    store = PerformanceMetrics(UsageLog(ReadOnly(MemoryStore()), writer=_Sink()))
    assert store.read_only and store.with_read_only(True).read_only
    with pytest.raises(ReadOnlyError):
        store.with_read_only(False)
    with pytest.raises(ReadOnlyError):
        store.storage.set("k", b"v")
    raw_set(store.storage, "k", b"v")
    assert store.storage.get("k") == b"v"


class _Sink:
    def __init__(self) -> None:
        self.lines = itertools.count()

    def write(self, text: str) -> int:
        next(self.lines)
        return len(text)

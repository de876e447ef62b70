from __future__ import annotations

from typing import Any

import pytest
from hypothesis.stateful import run_state_machine_as_test
from hypothesis_budget import hierarchy_examples
from zarr.core.buffer import Buffer, cpu
from zarr.testing.stateful import ZarrHierarchyStateMachine, ZarrStoreStateMachine
from zarr.testing.store import StoreTests

from zarrstore import MemoryStorage, MemoryStore
from zarrstore.testing import StoreConformance, storage_state_machine


class TestMemoryConformance(StoreConformance):
    @pytest.fixture
    def storage(self) -> MemoryStorage:
        return MemoryStorage()

    def raw_get(self, storage: MemoryStorage, key: str) -> bytes | None:  # type: ignore[override]
        return storage._values.get(key)

    def raw_set(self, storage: MemoryStorage, key: str, value: bytes) -> None:  # type: ignore[override]
        storage._values[key] = value


class TestMemoryStoreWithZarr(StoreTests[MemoryStore, cpu.Buffer]):
    store_cls = MemoryStore
    buffer_cls = cpu.Buffer

    async def set(self, store: MemoryStore, key: str, value: Buffer) -> None:
        store.storage._values[key] = value.to_bytes()

    async def get(self, store: MemoryStore, key: str) -> Buffer:
        return self.buffer_cls.from_bytes(store.storage._values[key])

    @pytest.fixture
    def store_kwargs(self) -> dict[str, Any]:
        return {"values": {}}

    def test_store_repr(self, store: MemoryStore) -> None:
        assert repr(store) == "MemoryStore(MemoryStorage(0 keys, writable))"

    def test_store_supports_writes(self, store: MemoryStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: MemoryStore) -> None:
        assert store.supports_listing


def test_state_machine_against_dict_model() -> None:
    run_state_machine_as_test(storage_state_machine(MemoryStorage))


def test_zarr_store_state_machine() -> None:
    run_state_machine_as_test(lambda: ZarrStoreStateMachine(MemoryStore()))  # type: ignore[no-untyped-call]


def test_zarr_hierarchy_state_machine() -> None:
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        lambda: ZarrHierarchyStateMachine(MemoryStore()), settings=hierarchy_examples()
    )

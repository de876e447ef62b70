"""Shared pieces for the adapter test modules (``test_adapters_*.py``).

Every adapter is tested wrapped around a ``MemoryStorage`` and around a
``FilesystemStorage``. The conformance suites need backdoors that bypass the
storage under test; for an adapter (or a stack of them) the backdoor is the
innermost storage, reached by following ``.inner``.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings
from zarr.core.buffer import Buffer, cpu

from zarrstore import FilesystemStorage, MemoryStorage, Storage, ZarrStore
from zarrstore.testing import FILES_CANNOT_BE_DIRECTORIES

__all__ = [
    "FEWER_EXAMPLES",
    "InnermostBackdoor",
    "ZarrBackdoor",
    "innermost",
    "raw_get",
    "raw_set",
]

# The adapters are thin; a quarter of the profile's examples (each a whole random
# program) covers them and keeps every adapter's module to a few seconds.
FEWER_EXAMPLES = settings(settings(), max_examples=max(10, settings().max_examples // 4))


def innermost(storage: Any) -> Storage:
    """The storage at the bottom of a stack of adapters."""
    while hasattr(storage, "inner"):
        storage = storage.inner
    assert isinstance(storage, Storage)
    return storage


def raw_get(storage: Any, key: str) -> bytes | None:
    """Read ``key`` from the bottom of ``storage``'s stack, bypassing every adapter."""
    bottom = innermost(storage)
    if isinstance(bottom, MemoryStorage):
        return bottom._values.get(key)
    assert isinstance(bottom, FilesystemStorage)
    path = bottom.root / key
    return path.read_bytes() if path.is_file() else None


def raw_set(storage: Any, key: str, value: bytes) -> None:
    """Write ``key`` at the bottom of ``storage``'s stack, bypassing every adapter."""
    bottom = innermost(storage)
    if isinstance(bottom, MemoryStorage):
        bottom._values[key] = value
        return
    assert isinstance(bottom, FilesystemStorage)
    path = bottom.root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(value)


class InnermostBackdoor:
    """``raw_get`` / ``raw_set`` for ``StoreConformance`` over any adapter stack."""

    def why_not_a_key_and_keys_under_it(self, storage: Storage) -> str | None:
        bottom = innermost(storage)
        return FILES_CANNOT_BE_DIRECTORIES if isinstance(bottom, FilesystemStorage) else None

    def raw_get(self, storage: Storage, key: str) -> bytes | None:
        return raw_get(storage, key)

    def raw_set(self, storage: Storage, key: str, value: bytes) -> None:
        raw_set(storage, key, value)


class ZarrBackdoor:
    """``set`` / ``get`` backdoors and the capability checks for zarr's ``StoreTests``."""

    async def set(self, store: ZarrStore, key: str, value: Buffer) -> None:
        raw_set(store.storage, key, value.to_bytes())

    async def get(self, store: ZarrStore, key: str) -> Buffer:
        value = raw_get(store.storage, key)
        if value is None:
            raise FileNotFoundError(key)
        return cpu.Buffer.from_bytes(value)

    def test_store_supports_writes(self, store: ZarrStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: ZarrStore) -> None:
        assert store.supports_listing


@pytest.fixture(params=["memory", "filesystem"])
def inner_kind(request: pytest.FixtureRequest) -> str:
    """Which storage an adapter wraps: ``"memory"`` or ``"filesystem"``."""
    return str(request.param)

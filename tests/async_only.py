"""A mixin for zarr's ``StoreTests`` over stores that wrap an async storage.

zarr >= 3.4 has an optional synchronous store surface (``get_sync`` and
friends). ``ZarrStore`` turns it off for async storages through
``_supports_sync_io``, so zarr takes its async path for them; sync code wraps
such a storage in ``zarrstore.adapters.AsyncToSync`` instead. zarr's sync-
surface tests are therefore skipped, with that reason, and one test here
checks that the surface really is off.
"""

from __future__ import annotations

from typing import NoReturn

import pytest
from zarr.abc.store import Store, _store_supports_sync_io

__all__ = ["ASYNC_ONLY", "AsyncOnlyStoreTests"]

ASYNC_ONLY = (
    "async storage: zarr uses the store's async path (_supports_sync_io is False); "
    "sync callers wrap the storage in AsyncToSync"
)


class AsyncOnlyStoreTests:
    """Skip zarr's sync-surface tests with a reason, and prove the surface is off."""

    @staticmethod
    def _require_get_sync(store: Store) -> NoReturn:
        pytest.skip(ASYNC_ONLY)

    @staticmethod
    def _require_set_sync(store: Store) -> NoReturn:
        pytest.skip(ASYNC_ONLY)

    @staticmethod
    def _require_delete_sync(store: Store) -> NoReturn:
        pytest.skip(ASYNC_ONLY)

    def test_sync_surface_is_off(self, store: Store) -> None:
        assert not _store_supports_sync_io(store)

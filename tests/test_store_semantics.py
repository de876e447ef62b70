"""Issue 10's store faults, each with the exact input that showed it, on every writable store.

Each store is reached as zarr reaches it (``zarr.abc.store.Store``): memory,
filesystem, object storage (obstore's memory and local files), versioned
sessions (in memory and LMDB) and every adapter over ``MemoryStore``. The
general cases live in the shared conformance base (``zarrstore.testing``);
these pin down the reports.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.core.buffer import cpu

import versionstore as vs
from zarrstore import (
    FilesystemStore,
    InvalidKeyError,
    MemoryStore,
    PerformanceMetrics,
    StorageIOError,
    UsageLog,
    ZarrStore,
)
from zarrstore.adapters import AsyncToSync, SyncToAsync
from zarrstore.lmdb import LMDBStore
from zarrstore.object import ObjectStore

Factory = Callable[[Path], Any]

STORES: dict[str, Factory] = {
    "memory": lambda tmp: MemoryStore(),
    "filesystem": lambda tmp: FilesystemStore(tmp / "fs"),
    "object-memory": lambda tmp: ObjectStore.in_memory(),
    "object-local": lambda tmp: ObjectStore.local(tmp / "obj"),
    "lmdb": lambda tmp: LMDBStore(tmp / "lmdb"),
    "session-memory": lambda tmp: vs.Repository.create(vs.in_memory_storage()),
    "session-lmdb": lambda tmp: vs.Repository.create(vs.lmdb_storage(tmp / "repo")),
    "usage-log": lambda tmp: UsageLog(MemoryStore(), io.StringIO()),
    "metrics": lambda tmp: PerformanceMetrics(MemoryStore()),
    "async-round-trip": lambda tmp: ZarrStore(AsyncToSync(SyncToAsync(MemoryStore().storage))),
}
#: Stores whose backing is files: a key cannot sit beside keys under it ("g/x", "g/x/y").
FILE_BACKED = {"filesystem", "object-local"}


@pytest.fixture(params=sorted(STORES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ZarrStore]:
    made = STORES[request.param](tmp_path)
    if isinstance(made, vs.Repository):
        yield made.writable_session("main").store
        made.close()
        return
    yield made


def _names(listing: AsyncIterator[str]) -> list[str]:
    async def collect() -> list[str]:
        return [name async for name in listing]

    return asyncio.run(collect())


def _buffer(value: bytes) -> cpu.Buffer:
    return cpu.Buffer.from_bytes(value)


def test_a_lone_surrogate_is_an_invalid_key(store: ZarrStore) -> None:
    """``"a/\\ud800"`` raised ``UnicodeEncodeError``; every store refuses it as a key."""
    key = "a/\ud800"
    for call in [
        lambda: store.storage.get(key),
        lambda: store.storage.set(key, b"x"),
        lambda: store.storage.erase(key),
    ]:
        with pytest.raises(InvalidKeyError, match="surrogate"):
            result = call()
            if asyncio.iscoroutine(result):
                asyncio.run(result)
    with pytest.raises(InvalidKeyError, match="surrogate"):
        asyncio.run(store.set(key, _buffer(b"x")))
    with pytest.raises(InvalidKeyError, match="surrogate"):
        asyncio.run(store.get(key))
    with pytest.raises(InvalidKeyError, match="surrogate"):
        _names(store.list_prefix("a/\ud800/"))


def test_is_empty_slash_after_clear(store: ZarrStore) -> None:
    """zarr's hierarchy machine asks ``is_empty("/")`` after ``clear()``; it was refused."""
    zarr.create_group(store, path="g")
    assert not asyncio.run(store.is_empty("/"))
    asyncio.run(store.clear())
    assert asyncio.run(store.is_empty("/"))
    assert _names(store.list_dir("/")) == []


@pytest.mark.parametrize(("first", "second"), [("u", "u10"), ("t", "t2m")])
def test_siblings_whose_names_share_a_prefix(store: ZarrStore, first: str, second: str) -> None:
    """``nchunks_initialized`` of ``u`` beside ``u10`` raised ``ValueError``."""
    zarr.create_array(store, name=first, shape=(4,), chunks=(2,), dtype="i4")[:] = 1
    zarr.create_array(store, name=second, shape=(6,), chunks=(2,), dtype="i4")[:] = 2
    assert zarr.open_array(store, path=first).nchunks_initialized == 2
    assert zarr.open_array(store, path=second).nchunks_initialized == 3
    keys = _names(store.list_prefix(first))
    assert sorted(keys) == [f"{first}/c/0", f"{first}/c/1", f"{first}/zarr.json"]
    group = zarr.open_group(store, mode="r")
    assert sorted(name for name, _ in group.members()) == [first, second]


def test_a_key_beside_a_directory_of_the_same_name_is_one_child(
    store: ZarrStore, request: pytest.FixtureRequest
) -> None:
    """``list_dir("g")`` with ``g/zarr.json``, ``g/x``, ``g/x/zarr.json`` named ``x`` twice."""
    if request.node.callspec.params["store"] in FILE_BACKED:
        with pytest.raises(StorageIOError):
            zarr.create_group(store, path="g/x")
            asyncio.run(store.set("g/x", _buffer(b"stray")))
        return
    zarr.create_group(store, path="g")
    zarr.create_group(store, path="g/x")
    asyncio.run(store.set("g/x", _buffer(b"stray")))
    assert sorted(_names(store.list_dir("g"))) == ["x", "zarr.json"]
    assert sorted(_names(store.list_dir("g/"))) == ["x", "zarr.json"]
    members = zarr.open_group(store, path="g", mode="r").members()
    assert [name for name, _ in members] == ["x"]


def test_keys_through_a_chunk_or_naming_a_directory_hold_nothing(store: ZarrStore) -> None:
    """With chunks ``arr/c/0`` and ``arr/c/1`` written, ``arr/c/0/0`` and ``arr/c`` are no keys.

    On ``ObjectStore.local`` deleting them raised ``StorageIOError`` (Not a
    directory / Is a directory) and reading ``arr/c/0/0`` raised too.
    """
    array = zarr.create_array(store, name="arr", shape=(4,), chunks=(2,), dtype="i4")
    array[:] = np.arange(4, dtype="i4")
    for key in ["arr/c/0/0", "arr/c"]:
        assert asyncio.run(store.get(key)) is None, key
        assert not asyncio.run(store.exists(key)), key
        asyncio.run(store.delete(key))
    asyncio.run(store.delete_dir("arr/c/0"))
    assert _names(store.list_dir("arr/c/0")) == []
    np.testing.assert_array_equal(zarr.open_array(store, path="arr")[:], np.arange(4))


def test_an_array_written_in_a_with_block_reads_after_it(store: ZarrStore) -> None:
    """zarr's stores reopen after ``close()``; ``LMDBStore`` raised ``StorageIOError``."""
    with store:
        zarr.create_array(store, name="ctx", shape=(4,), chunks=(2,), dtype="i4")[:] = 4
    np.testing.assert_array_equal(zarr.open_array(store, path="ctx")[:], [4, 4, 4, 4])
    store.close()
    zarr.open_array(store, path="ctx")[2:] = 7
    np.testing.assert_array_equal(zarr.open_array(store, path="ctx")[:], [4, 4, 7, 7])


def test_equal_stores_hash_alike(store: ZarrStore) -> None:
    """``store == copy`` held while ``hash(store) != hash(copy)``: dicts missed equal stores."""
    first, second = store.with_read_only(True), store.with_read_only(True)
    assert first == second
    assert hash(first) == hash(second)
    assert {first: "found"}.get(second) == "found"


def test_every_write_path_wants_a_buffer(store: ZarrStore) -> None:
    """``set_if_not_exists(key, b"raw")`` raised ``AttributeError``; ``set`` says ``TypeError``."""
    with pytest.raises(TypeError, match="Buffer"):
        asyncio.run(store.set("k", b"raw"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Buffer"):
        asyncio.run(store.set_if_not_exists("k", b"raw"))  # type: ignore[arg-type]
    if store._supports_sync_io:
        with pytest.raises(TypeError, match="Buffer"):
            store.set_sync("k", b"raw")  # type: ignore[arg-type]
    assert asyncio.run(store.get("k")) is None

"""ObjectStore over obstore: a real S3 server (moto, on 127.0.0.1), local files and memory.

Every backing runs the shared conformance base (through ``AsyncToSync``),
zarr's ``StoreTests``, the dict-model state machine, and zarr and xarray
round trips; then partial reads, credentials and errors. The backdoors write
with boto3, the filesystem or obstore directly, never through the storage
under test. Conditional writes are in ``test_object_conditional.py``.
"""

from __future__ import annotations

import pickle
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import obstore
import pytest
import xarray as xr
import zarr
from async_only import AsyncOnlyStoreTests
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test
from hypothesis_budget import hierarchy_examples
from object_support import (  # the session fixtures are imported to be used here
    BUCKET,
    MOTO_RACE,
    NOT_PICKLABLE,
    Backdoor,
    Fresh,
    InMemory,
    OnLocalFiles,
    OnS3,
    S3Server,
    any_fresh_fixture,  # noqa: F401
    aws_env_fixture,  # noqa: F401
    local_fresh,
    run,
    s3_fixture,  # noqa: F401
)
from obstore.store import MemoryStore as ObstoreMemory
from zarr.core.buffer import Buffer, cpu
from zarr.testing.stateful import ZarrHierarchyStateMachine, ZarrStoreStateMachine
from zarr.testing.store import StoreTests

from zarrstore import AsyncToSync, DirListing, RangeRequest, StorageIOError, SuffixRequest
from zarrstore.object import ObjectStorage, ObjectStore
from zarrstore.protocol import Storage
from zarrstore.testing import (
    FILES_CANNOT_BE_DIRECTORIES,
    StoreConformance,
    storage_state_machine,
)

# -- the shared conformance base, through AsyncToSync ------------------------------------


class ObjectConformance(StoreConformance):
    backdoor: Backdoor

    @pytest.fixture
    def storage(self, fresh: Fresh) -> Storage:
        self.backdoor = fresh.backdoor
        return AsyncToSync(ObjectStorage(fresh.backing))

    def raw_get(self, storage: Storage, key: str) -> bytes | None:
        return self.backdoor.get(key)

    def raw_set(self, storage: Storage, key: str, value: bytes) -> None:
        self.backdoor.put(key, value)


class TestS3Conformance(OnS3, ObjectConformance):
    @pytest.mark.skip(reason=MOTO_RACE)
    def test_set_if_absent_has_one_winner(self, storage: Storage) -> None: ...


class TestLocalConformance(OnLocalFiles, ObjectConformance):
    def why_not_a_key_and_keys_under_it(self, storage: Storage) -> str | None:
        return FILES_CANNOT_BE_DIRECTORIES


class TestMemoryConformance(InMemory, ObjectConformance):
    picklable = False
    not_picklable_reason = NOT_PICKLABLE


# -- zarr's own store test-suite ---------------------------------------------------------


class ObjectStoreTests(AsyncOnlyStoreTests, StoreTests[ObjectStore, cpu.Buffer]):
    store_cls = ObjectStore
    buffer_cls = cpu.Buffer
    backdoor: Backdoor

    @pytest.fixture
    def store_kwargs(self, fresh: Fresh) -> dict[str, Any]:
        self.backdoor = fresh.backdoor
        return {"backing": fresh.backing}

    async def set(self, store: ObjectStore, key: str, value: Buffer) -> None:
        self.backdoor.put(key, value.to_bytes())

    async def get(self, store: ObjectStore, key: str) -> Buffer:
        value = self.backdoor.get(key)
        assert value is not None, key
        return self.buffer_cls.from_bytes(value)

    def test_store_repr(self, store: ObjectStore) -> None:
        name = type(store.storage.backing).__name__
        assert repr(store).startswith(f"ObjectStore(ObjectStorage({name}(")
        assert repr(store).endswith(", writable))")

    def test_store_supports_writes(self, store: ObjectStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: ObjectStore) -> None:
        assert store.supports_listing


class TestS3StoreWithZarr(OnS3, ObjectStoreTests):
    pass


class TestLocalStoreWithZarr(OnLocalFiles, ObjectStoreTests):
    pass


class TestMemoryStoreWithZarr(InMemory, ObjectStoreTests):
    async def test_serializable_store(self, store: ObjectStore) -> None:
        pytest.skip(NOT_PICKLABLE)


# -- state machines against a dict model -------------------------------------------------

# Fixed, modest runs: every step is real I/O (HTTP to moto, files, obstore's runtime),
# and the suite must stay fast whichever hypothesis profile is loaded.
ON_S3 = settings(settings(), max_examples=8, stateful_step_count=15)
ON_LOCAL_FILES = settings(settings(), max_examples=15, stateful_step_count=20)
IN_MEMORY = settings(settings(), max_examples=25, stateful_step_count=25)


def test_state_machine_on_s3(s3: S3Server) -> None:
    run_state_machine_as_test(
        storage_state_machine(lambda: AsyncToSync(ObjectStorage(s3.fresh().backing))),
        settings=ON_S3,
    )


def test_state_machine_on_local_files(tmp_path: Path) -> None:
    run_state_machine_as_test(
        storage_state_machine(lambda: AsyncToSync(ObjectStorage(local_fresh(tmp_path).backing))),
        settings=ON_LOCAL_FILES,
    )


def test_state_machine_in_memory() -> None:
    run_state_machine_as_test(
        storage_state_machine(lambda: AsyncToSync(ObjectStorage.in_memory())), settings=IN_MEMORY
    )


def test_zarr_store_state_machine_in_memory() -> None:
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        lambda: ZarrStoreStateMachine(ObjectStore.in_memory()), settings=IN_MEMORY
    )


def test_zarr_store_state_machine_on_s3(s3: S3Server) -> None:
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        lambda: ZarrStoreStateMachine(ObjectStore(s3.fresh().backing)), settings=ON_S3
    )


def test_zarr_hierarchy_state_machine_in_memory() -> None:
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        lambda: ZarrHierarchyStateMachine(ObjectStore.in_memory()), settings=hierarchy_examples()
    )


def test_zarr_hierarchy_state_machine_on_local_files(tmp_path: Path) -> None:
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        lambda: ZarrHierarchyStateMachine(ObjectStore(local_fresh(tmp_path).backing)),
        settings=hierarchy_examples(),
    )


# -- partial reads, listing, credentials, errors -----------------------------------------


def test_ranges_of_one_object_are_one_coalescing_call(any_fresh: Fresh,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = obstore.get_ranges_async

    async def spy(store: Any, path: str, **kwargs: Any) -> Any:
        calls.append(path)
        return await real(store, path, **kwargs)

    monkeypatch.setattr(obstore, "get_ranges_async", spy)
    payload = bytes(range(256)) * 40
    any_fresh.backdoor.put("shard", payload)
    storage = ObjectStorage(any_fresh.backing)
    ranges = [RangeRequest(0, 16), RangeRequest(5000, 5100), SuffixRequest(16),
              RangeRequest(10_230, 10_300), RangeRequest(20_000, 20_010), RangeRequest(7, 7)]
    got = run(storage.get_many([("shard", r) for r in ranges] + [("missing", RangeRequest(0, 1))]))
    assert got == [payload[:16], payload[5000:5100], payload[-16:], payload[10_230:],
                   b"", b"", None]
    assert calls == ["shard"]


def test_credentials_from_environment_or_arguments(s3: S3Server) -> None:
    from_env = ObjectStorage.s3(BUCKET, prefix="env", endpoint=s3.endpoint)
    assert "access_key_id" not in from_env.backing.config  # obstore reads AWS_* itself
    run(from_env.set("k", b"signed with the environment's key"))
    given = ObjectStorage.s3(BUCKET, prefix="p", endpoint=s3.endpoint, access_key_id="given",
                             secret_access_key="given-secret", region="us-east-1")
    assert given.backing.config["access_key_id"] == "given"
    assert given.backing.prefix == "p"
    run(given.set("k", b"v"))
    assert s3.client.get_object(Bucket=BUCKET, Key="p/k")["Body"].read() == b"v"


def test_missing_bucket_is_an_error_not_a_missing_key(s3: S3Server) -> None:
    storage = ObjectStorage.s3("no-such-bucket", endpoint=s3.endpoint)
    for call in (storage.get("k"), storage.set("k", b"v"), storage.list()):
        with pytest.raises(StorageIOError, match="no-such-bucket"):
            run(call)


async def _collect(names: AsyncIterator[str]) -> list[str]:
    return [name async for name in names]


def _hierarchy_with_markers(store: ObjectStore) -> None:
    zarr.create_group(store)
    zarr.create_group(store, path="g")
    zarr.create_array(store, name="g/a", shape=(4,), chunks=(2,), dtype="i4")[:] = 7


def _check_markers_are_no_children(store: ObjectStore) -> None:
    storage = AsyncToSync(store.storage)
    for prefix in ["", "g/", "g/a/", "g/a/c/"]:
        keys = list(storage.list_prefix(prefix))
        listing = storage.list_dir(prefix)
        for key in [*keys, *listing.keys]:
            assert key.startswith(prefix) and key != prefix and not key.endswith("/"), key
        assert "" not in keys and prefix[:-1] not in keys
    root = zarr.open_group(store, mode="r")
    assert [name for name, _ in root.members()] == ["g"]
    assert [name for name, _ in root["g"].members()] == ["a"]  # type: ignore[union-attr]
    assert zarr.open_array(store, path="g/a").nchunks_initialized == 2
    np.testing.assert_array_equal(zarr.open_array(store, path="g/a")[:], [7, 7, 7, 7])


def test_directory_markers_in_memory_name_each_child_once() -> None:
    """obstore stores a marker ``"g/"`` as the empty value ``"g"``: a key, named once."""
    backing = ObstoreMemory()
    store = ObjectStore(backing)
    _hierarchy_with_markers(store)
    for marker in ["g/", "g/a/"]:
        obstore.put(backing, marker, b"")  # as consoles and tools write them
    storage = AsyncToSync(store.storage)
    assert storage.list_dir("") == DirListing(keys=("g", "zarr.json"), prefixes=("g/",))
    assert run(_collect(store.list_dir(""))) == ["g", "zarr.json"]
    assert run(_collect(store.list_dir("g/"))) == ["a", "zarr.json"]
    _check_markers_are_no_children(store)


def test_directory_markers_on_s3_are_not_keys(s3: S3Server) -> None:
    """Zero-byte objects named ``"dir/"`` (S3 consoles make them) are never listed."""
    fresh = s3.fresh()
    store = ObjectStore(fresh.backing)
    _hierarchy_with_markers(store)
    prefix = fresh.backing.prefix
    for marker in ["", "g/", "g/a/", "g/a/c/", "g/empty-folder/"]:
        s3.client.put_object(Bucket=BUCKET, Key=f"{prefix}/{marker}", Body=b"")
    storage = AsyncToSync(store.storage)
    assert storage.list_dir("") == DirListing(keys=("zarr.json",), prefixes=("g/",))
    # A lone marker is a folder someone made, with no keys in it: like an empty
    # directory on disk it may show as a sub-prefix, but never as a key.
    assert storage.list_dir("g/") == DirListing(
        keys=("g/zarr.json",), prefixes=("g/a/", "g/empty-folder/")
    )
    assert list(storage.list_prefix("g/")) == ["g/a/c/0", "g/a/c/1", "g/a/zarr.json",
                                               "g/zarr.json"]
    assert list(storage.list_prefix("g/empty-folder/")) == []
    assert run(_collect(store.list_dir(""))) == ["g", "zarr.json"]
    assert run(_collect(store.list_dir("g"))) == ["a", "empty-folder", "zarr.json"]
    with pytest.warns(UserWarning, match="empty-folder is not recognized"):  # zarr says so
        _check_markers_are_no_children(store)
    run(store.clear())
    assert run(store.is_empty("/"))
    marker = s3.client.get_object(Bucket=BUCKET, Key=f"{prefix}/g/")  # not ours: left alone
    assert marker["Body"].read() == b""


def test_is_empty_reads_one_page_of_a_long_listing(monkeypatch: pytest.MonkeyPatch) -> None:
    """``is_empty`` stops at the first key: it used to list every object under the prefix."""
    backing = ObstoreMemory()
    for i in range(600):
        obstore.put(backing, f"a/c/{i}", b"v")
    obstore.put(backing, "b/", b"")  # a directory marker: not a key
    pages: list[int] = []
    listing = obstore.list

    class Counted:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._stream = listing(*args, **kwargs)

        async def __anext__(self) -> Any:
            page = await self._stream.__anext__()
            pages.append(len(page))
            return page

    monkeypatch.setattr(obstore, "list", Counted)
    storage = AsyncToSync(ObjectStore(backing).storage)
    assert not storage.is_empty("a/") and not storage.is_empty("")
    assert len(pages) == 2 and max(pages) < 600  # one page each
    assert storage.is_empty("b/") and storage.is_empty("a/c/0/") and storage.is_empty("z/")


def test_impossible_keys_on_local_files_hold_nothing(tmp_path: Path) -> None:
    """``delete("arr/c/0/0")`` raised ``StorageIOError … Not a directory``; now a no-op."""
    store = ObjectStore.local(tmp_path / "l")
    zarr.create_array(store, name="arr", shape=(4,), chunks=(2,), dtype="i4")[:] = 5
    run(store.delete("arr/c/0/0"))
    run(store.delete("arr/c"))
    assert run(store.get("arr/c/0/0")) is None and not run(store.exists("arr/c/0/0"))
    assert run(store.get("arr/c")) is None and not run(store.exists("arr/c"))
    assert run(_collect(store.list_prefix("arr/c/0/0"))) == []
    np.testing.assert_array_equal(zarr.open_array(store, path="arr")[:], [5, 5, 5, 5])
    with pytest.raises(StorageIOError, match="already a directory"):
        run(store.storage.set_if_absent("arr/c", b"x"))


def test_local_files_cannot_hold_a_key_and_its_directory(tmp_path: Path) -> None:
    storage = ObjectStorage.local(tmp_path / "l")
    run(storage.set("a/b", b"1"))
    with pytest.raises(StorageIOError, match="put 'a'"):
        run(storage.set("a", b"2"))


# -- zarr and xarray ---------------------------------------------------------------------


def test_zarr_round_trip_with_sharding(any_fresh: Fresh) -> None:
    store = ObjectStore(any_fresh.backing)
    data = np.arange(48 * 48, dtype="i4").reshape(48, 48)
    array = zarr.create_array(store, name="a", shape=data.shape, chunks=(8, 8),
                              shards=(24, 24), dtype="i4", attributes={"units": "m"})
    array[:] = data
    reopened = zarr.open_array(ObjectStore(any_fresh.backing, read_only=True), path="a")
    np.testing.assert_array_equal(reopened[:], data)
    np.testing.assert_array_equal(reopened[5:30, 17:41], data[5:30, 17:41])
    assert reopened.attrs["units"] == "m"
    assert any_fresh.backdoor.get("a/zarr.json") is not None


def test_xarray_round_trip(any_fresh: Fresh) -> None:
    ds = xr.Dataset(
        {"temp": (("time", "x"), np.random.default_rng(3).random((6, 5)).astype("f4"))},
        coords={"time": np.arange(6), "x": np.linspace(0, 1, 5)},
        attrs={"source": "object storage"},
    )
    ds.to_zarr(ObjectStore(any_fresh.backing), mode="w", consolidated=True,
               encoding={"temp": {"chunks": (2, 5)}})
    back = xr.open_zarr(ObjectStore(any_fresh.backing, read_only=True), consolidated=True)
    xr.testing.assert_identical(back.load(), ds)


def test_sync_form_through_async_to_sync(s3: S3Server) -> None:
    storage = AsyncToSync(ObjectStorage.s3(BUCKET, prefix=f"sync-{uuid.uuid4().hex[:8]}",
                                           endpoint=s3.endpoint))
    storage.set("g/zarr.json", b"{}")
    assert storage.get("g/zarr.json", RangeRequest(0, 1)) == b"{"
    assert list(storage.list()) == ["g/zarr.json"]


def test_pickled_s3_storage_reads_the_same_bucket(s3: S3Server) -> None:
    fresh = s3.fresh()
    fresh.backdoor.put("k", b"v")
    clone = pickle.loads(pickle.dumps(ObjectStore(fresh.backing)))
    assert clone == ObjectStore(fresh.backing)
    assert run(clone.storage.get("k")) == b"v"

"""HTTPStore against a real aiohttp server on 127.0.0.1 (see ``tests/servers.py``).

The server publishes directories written by ``FilesystemStore``; every test
reads them back over HTTP: exact bytes, ranges at the edges, 404s, dropped
connections (retries), a slow server (timeouts), auth headers, and zarr and
xarray opening a hierarchy through its consolidated metadata.
"""

from __future__ import annotations

import asyncio
import pickle
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr
from async_only import AsyncOnlyStoreTests
from servers import AUTH_TOKEN, HTTPServer, serve_http
from zarr.core.buffer import Buffer, cpu
from zarr.testing.store import StoreTests

from zarrstore import (
    FilesystemStore,
    OffsetRequest,
    RangeRequest,
    ReadOnlyError,
    StorageIOError,
    SuffixRequest,
    UnsupportedOperationError,
)
from zarrstore.http import HTTPStorage, HTTPStore

READ_ONLY = "HTTPStore is read-only: every write is refused (see test_read_only_store_raises)"
NO_LISTING = "HTTP cannot list keys; hierarchies open by consolidated metadata (test_listing_*)"


@pytest.fixture(scope="session")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HTTPServer]:
    with serve_http(tmp_path_factory.mktemp("served")) as server:
        yield server


@pytest.fixture
def served_dir(http_server: HTTPServer) -> tuple[Path, str]:
    """A fresh served directory for one test, and its base URL."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    (http_server.root / name).mkdir()
    return http_server.root / name, f"{http_server.url}/data/{name}"


@pytest.fixture(scope="session")
def published(http_server: HTTPServer) -> tuple[Path, xr.Dataset]:
    """A hierarchy written by FilesystemStore with consolidated metadata, served over HTTP."""
    ds = xr.Dataset(
        {"temp": (("time", "x"), np.random.default_rng(7).random((12, 10)).astype("f4"))},
        coords={"time": np.arange(12), "x": np.linspace(0, 1, 10)},
        attrs={"title": "published"},
    )
    root = http_server.root / "published"
    ds.to_zarr(FilesystemStore(root), mode="w", consolidated=True,
               encoding={"temp": {"chunks": (4, 5)}})
    group = zarr.open_group(FilesystemStore(root), mode="a").create_group("extra")
    sharded = group.create_array("sharded", shape=(64,), chunks=(8,), shards=(32,), dtype="u2")
    sharded[:] = np.arange(64, dtype="u2")
    zarr.consolidate_metadata(FilesystemStore(root))
    return root, ds


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def skipped(reason: str) -> Any:
    """An inherited test replaced by a skip that says why it cannot apply."""

    @pytest.mark.skip(reason=reason)
    def test(self: object) -> None: ...

    return test


# -- zarr's own store test-suite, read-only parts --------------------------------------


class TestHTTPStoreWithZarr(AsyncOnlyStoreTests, StoreTests[HTTPStore, cpu.Buffer]):
    store_cls = HTTPStore
    buffer_cls = cpu.Buffer

    @pytest.fixture(autouse=True)
    def _served(self, served_dir: tuple[Path, str]) -> None:
        self.directory, self.url = served_dir

    async def set(self, store: HTTPStore, key: str, value: Buffer) -> None:
        path = self.directory / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(value.to_bytes())

    async def get(self, store: HTTPStore, key: str) -> Buffer:
        return self.buffer_cls.from_bytes((self.directory / key).read_bytes())

    @pytest.fixture
    def store_kwargs(self) -> dict[str, Any]:
        return {"url": self.url, "retries": 0}

    @pytest.fixture
    async def store(self, open_kwargs: dict[str, Any]) -> Any:
        store = await HTTPStore.open(**open_kwargs)
        yield store
        await store.storage.aclose()

    def test_store_repr(self, store: HTTPStore) -> None:
        assert repr(store) == f"HTTPStore(HTTPStorage({self.url!r}))"

    def test_store_supports_writes(self, store: HTTPStore) -> None:
        assert not store.supports_writes

    def test_store_supports_listing(self, store: HTTPStore) -> None:
        assert not store.supports_listing

    def test_store_read_only(self, store: HTTPStore) -> None:
        assert store.read_only
        with pytest.raises(AttributeError):
            store.read_only = False  # type: ignore[misc]

    @pytest.mark.parametrize("read_only", [True, False])
    async def test_store_open_read_only(self, open_kwargs: dict[str, Any], read_only: bool) -> None:
        if not read_only:
            with pytest.raises(UnsupportedOperationError, match="read-only"):
                await HTTPStore.open(**open_kwargs, read_only=False)
            return
        store = await HTTPStore.open(**open_kwargs, read_only=True)
        assert store._is_open and store.read_only

    async def test_serializable_store(self, store: HTTPStore) -> None:
        await self.set(store, "foo", self.buffer_cls.from_bytes(b"\x01\x02\x03\x04"))
        clone = pickle.loads(pickle.dumps(store))
        assert clone == store and clone.read_only
        observed = await clone.get("foo")
        assert observed is not None and observed.to_bytes() == b"\x01\x02\x03\x04"
        await clone.storage.aclose()

    async def test_exists(self, store: HTTPStore) -> None:
        assert not await store.exists("foo")
        await self.set(store, "foo/zarr.json", self.buffer_cls.from_bytes(b"bar"))
        assert await store.exists("foo/zarr.json")

    async def test_getsize_prefix(self, store: HTTPStore) -> None:
        with pytest.raises(NotImplementedError, match="cannot list"):
            await store.getsize_prefix("c")

    async def test_is_empty(self, store: HTTPStore) -> None:
        with pytest.raises(NotImplementedError):  # zarr's own check, on supports_listing
            await store.is_empty("")

    test_set = skipped(READ_ONLY)
    test_set_not_open = skipped(READ_ONLY)
    test_set_many = skipped(READ_ONLY)
    test_set_if_not_exists = skipped(READ_ONLY)
    test_clear = skipped(READ_ONLY)
    test_list = skipped(NO_LISTING)
    test_list_prefix = skipped(NO_LISTING)
    test_list_empty_path = skipped(NO_LISTING)
    test_list_dir = skipped(NO_LISTING)


# -- reading a published hierarchy -----------------------------------------------------


def test_published_files_read_back_exactly(published: tuple[Path, xr.Dataset],
                                           http_server: HTTPServer) -> None:
    root, _ = published
    storage = HTTPStorage(f"{http_server.url}/data/published")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    keys = [p.relative_to(root).as_posix() for p in files]
    assert "zarr.json" in keys and any("/c/" in k for k in keys)

    async def read_all() -> tuple[list[bytes | None], list[int | None]]:
        values = await storage.get_many([(k, None) for k in keys])
        sizes = [await storage.size(k) for k in keys]
        await storage.aclose()
        return values, sizes

    values, sizes = run(read_all())
    assert values == [p.read_bytes() for p in files]
    assert sizes == [p.stat().st_size for p in files]


@pytest.mark.parametrize("byte_range", [
    RangeRequest(0, 1), RangeRequest(0, 10), RangeRequest(9, 10), RangeRequest(9, 11),
    RangeRequest(10, 11), RangeRequest(10, 10), RangeRequest(3, 3), OffsetRequest(0),
    OffsetRequest(9), OffsetRequest(10), OffsetRequest(11), SuffixRequest(0), SuffixRequest(1),
    SuffixRequest(10), SuffixRequest(11),
])
def test_byte_ranges_at_the_edges(served_dir: tuple[Path, str], byte_range: Any) -> None:
    directory, url = served_dir
    (directory / "v").write_bytes(b"0123456789")
    (directory / "empty").write_bytes(b"")
    from zarrstore.ranges import slice_value

    async def read() -> tuple[bytes | None, bytes | None]:
        storage = HTTPStorage(url)
        try:
            return await storage.get("v", byte_range), await storage.get("empty", byte_range)
        finally:
            await storage.aclose()

    assert run(read()) == (slice_value(b"0123456789", byte_range), b"")


def test_missing_keys_are_none(served_dir: tuple[Path, str]) -> None:
    _, url = served_dir

    async def probe() -> list[object]:
        storage = HTTPStorage(url)
        try:
            return [await storage.get("nope"), await storage.get("a/b/c", RangeRequest(0, 4)),
                    await storage.get("nope", SuffixRequest(0)), await storage.size("nope"),
                    await storage.exists("nope")]
        finally:
            await storage.aclose()

    assert run(probe()) == [None, None, None, None, False]


# -- failures: statuses, dropped connections, timeouts -----------------------------------


def _requests_to(server: HTTPServer, fragment: str) -> int:
    return sum(fragment in path for _, path, _ in server.requests)


@pytest.mark.parametrize("status", [401, 403, 410, 418])
def test_other_statuses_raise_with_url_and_status(http_server: HTTPServer, status: int) -> None:
    token = uuid.uuid4().hex
    storage = HTTPStorage(f"{http_server.url}/status/{status}/{token}", retries=3, backoff=0.01)
    with pytest.raises(StorageIOError, match=f"GET {http_server.url}/status/{status}/{token}/k "
                                             f"answered HTTP {status}"):
        run(_get_and_close(storage, "k"))
    assert _requests_to(http_server, token) == 1, "a client error is not retried"


def test_server_errors_are_retried_then_raised(http_server: HTTPServer) -> None:
    token = uuid.uuid4().hex
    storage = HTTPStorage(f"{http_server.url}/status/503/{token}", retries=2, backoff=0.01)
    with pytest.raises(StorageIOError, match="answered HTTP 503"):
        run(_get_and_close(storage, "k"))
    assert _requests_to(http_server, token) == 3
    with pytest.raises(StorageIOError, match=f"HEAD .*{token}/k answered HTTP 503"):
        run(_size_and_close(storage, "k"))


def test_dropped_connections_are_retried(published: tuple[Path, xr.Dataset],
                                         http_server: HTTPServer) -> None:
    root, _ = published
    token = uuid.uuid4().hex
    storage = HTTPStorage(f"{http_server.url}/flaky/{token}/2/published", retries=3, backoff=0.01)
    assert run(_get_and_close(storage, "zarr.json")) == (root / "zarr.json").read_bytes()
    assert http_server.drops[token] == 2


def test_dropped_connections_give_up_after_the_retries(http_server: HTTPServer) -> None:
    token = uuid.uuid4().hex
    url = f"{http_server.url}/flaky/{token}/100/published"
    storage = HTTPStorage(url, retries=1, backoff=0.01)
    with pytest.raises(StorageIOError, match=f"GET {url}/zarr.json failed after 2 attempts"):
        run(_get_and_close(storage, "zarr.json"))


def test_slow_server_times_out(http_server: HTTPServer) -> None:
    # The server sleeps 5 s; the client allows 0.5 s, so the margin is ten-fold.
    storage = HTTPStorage(f"{http_server.url}/slow/published", timeout=0.5, retries=3)
    with pytest.raises(StorageIOError, match="timed out after 0.5 s") as caught:
        run(_get_and_close(storage, "zarr.json"))
    assert isinstance(caught.value.__cause__, TimeoutError)


def test_custom_headers_carry_the_token(published: tuple[Path, xr.Dataset],
                                        http_server: HTTPServer) -> None:
    root, _ = published
    anonymous = HTTPStorage(f"{http_server.url}/auth/published")
    with pytest.raises(StorageIOError, match="answered HTTP 401"):
        run(_get_and_close(anonymous, "zarr.json"))
    signed = HTTPStorage(f"{http_server.url}/auth/published", headers={"Authorization": AUTH_TOKEN})
    assert run(_get_and_close(signed, "zarr.json")) == (root / "zarr.json").read_bytes()


async def _get_and_close(storage: HTTPStorage, key: str) -> bytes | None:
    try:
        return await storage.get(key)
    finally:
        await storage.aclose()


async def _size_and_close(storage: HTTPStorage, key: str) -> int | None:
    try:
        return await storage.size(key)
    finally:
        await storage.aclose()


# -- connections and event loops ---------------------------------------------------------


def test_connections_are_reused(published: tuple[Path, xr.Dataset],
                                http_server: HTTPServer) -> None:
    token = uuid.uuid4().hex
    storage = HTTPStorage(f"{http_server.url}/flaky/{token}/0/published")

    async def many() -> None:
        for _ in range(10):
            assert await storage.get("zarr.json") is not None
        await storage.aclose()

    run(many())
    peers = {peer for _, path, peer in http_server.requests if token in path}
    assert len(peers) == 1, f"ten sequential reads used {len(peers)} connections"


def test_one_storage_serves_many_event_loops(published: tuple[Path, xr.Dataset],
                                            http_server: HTTPServer) -> None:
    root, _ = published
    expected = (root / "zarr.json").read_bytes()
    storage = HTTPStorage(f"{http_server.url}/data/published")
    assert asyncio.run(storage.get("zarr.json")) == expected
    assert asyncio.run(storage.get("zarr.json")) == expected  # the first loop is closed now
    results: list[bytes | None] = []
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    results.append(asyncio.run_coroutine_threadsafe(storage.get("zarr.json"), loop).result(30))
    storage.close()  # closes the session on the running loop in the other thread
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)
    loop.close()
    assert results == [expected]
    assert not len(storage._sessions)


# -- what HTTP cannot do ---------------------------------------------------------------


def test_listing_is_unsupported_and_says_why(served_dir: tuple[Path, str]) -> None:
    _, url = served_dir
    storage = HTTPStorage(url)
    assert not storage.supports_listing
    for call in (storage.list(), storage.list_prefix("a/"), storage.list_dir(""),
                 storage.size_prefix("")):
        with pytest.raises(UnsupportedOperationError, match="cannot list"):
            run(call)


def test_writes_raise_the_read_only_error(served_dir: tuple[Path, str]) -> None:
    directory, url = served_dir
    storage = HTTPStorage(url)
    assert storage.read_only and not storage.supports_writes and not storage.supports_deletes
    for call in (storage.set("k", b"v"), storage.set_if_absent("k", b"v"), storage.erase("k"),
                 storage.erase_many(["k"]), storage.erase_prefix("")):
        with pytest.raises(ReadOnlyError, match="read-only mode"):
            run(call)
    with pytest.raises(UnsupportedOperationError, match="read-only"):
        storage.with_read_only(False)
    assert storage.with_read_only(True) is storage
    assert not list(directory.iterdir())


def test_url_must_be_http(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        HTTPStorage(f"file://{tmp_path}")


# -- zarr and xarray over HTTP ---------------------------------------------------------


def test_zarr_opens_the_hierarchy_by_consolidated_metadata(
    published: tuple[Path, xr.Dataset], http_server: HTTPServer
) -> None:
    _, ds = published
    store = HTTPStore(f"{http_server.url}/data/published")
    group = zarr.open_consolidated(store, mode="r")
    assert sorted(group.array_keys()) == ["temp", "time", "x"]
    np.testing.assert_array_equal(group["temp"][:], ds["temp"].values)
    np.testing.assert_array_equal(group["extra/sharded"][5:40], np.arange(5, 40, dtype="u2"))
    assert zarr.open_group(store, mode="r").attrs["title"] == "published"
    store.close()


def test_xarray_open_zarr_over_http(published: tuple[Path, xr.Dataset],
                                    http_server: HTTPServer) -> None:
    _, ds = published
    store = HTTPStore(f"{http_server.url}/data/published")
    opened = xr.open_zarr(store, consolidated=True)
    xr.testing.assert_identical(opened.load(), ds)
    store.close()

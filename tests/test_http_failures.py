"""HTTPStore when things go wrong, against the real test server on 127.0.0.1.

Other statuses raise with the URL and the status; ``5xx`` answers and dropped
connections are retried with backoff, then raise; a slow server times out;
headers carry credentials; connections are reused within an event loop and
one storage serves many loops; listing and writes are refused clearly.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path

import pytest
import xarray as xr
from http_support import (  # the fixtures are imported to be used here
    get_and_close,
    http_server_fixture,  # noqa: F401
    published_fixture,  # noqa: F401
    run,
    served_dir_fixture,  # noqa: F401
    size_and_close,
)
from servers import AUTH_TOKEN, HTTPServer

from zarrstore import ReadOnlyError, StorageIOError, StorageTimeoutError, UnsupportedOperationError
from zarrstore.http import HTTPStorage


def _requests_to(server: HTTPServer, fragment: str) -> int:
    return sum(fragment in path for _, path, _ in server.requests)


@pytest.mark.parametrize("status", [401, 403, 410, 418])
def test_other_statuses_raise_with_url_and_status(http_server: HTTPServer, status: int) -> None:
    token = uuid.uuid4().hex
    storage = HTTPStorage(f"{http_server.url}/status/{status}/{token}", retries=3, backoff=0.01)
    with pytest.raises(StorageIOError, match=f"GET {http_server.url}/status/{status}/{token}/k "
                                             f"answered HTTP {status}"):
        run(get_and_close(storage, "k"))
    assert _requests_to(http_server, token) == 1, "a client error is not retried"


def test_server_errors_are_retried_then_raised(http_server: HTTPServer) -> None:
    token = uuid.uuid4().hex
    storage = HTTPStorage(f"{http_server.url}/status/503/{token}", retries=2, backoff=0.01)
    with pytest.raises(StorageIOError, match="answered HTTP 503"):
        run(get_and_close(storage, "k"))
    assert _requests_to(http_server, token) == 3
    with pytest.raises(StorageIOError, match=f"HEAD .*{token}/k answered HTTP 503"):
        run(size_and_close(storage, "k"))


def test_dropped_connections_are_retried(published: tuple[Path, xr.Dataset],
                                         http_server: HTTPServer) -> None:
    root, _ = published
    token = uuid.uuid4().hex
    storage = HTTPStorage(f"{http_server.url}/flaky/{token}/2/published", retries=3, backoff=0.01)
    assert run(get_and_close(storage, "zarr.json")) == (root / "zarr.json").read_bytes()
    assert http_server.drops[token] == 2


def test_dropped_connections_give_up_after_the_retries(http_server: HTTPServer) -> None:
    token = uuid.uuid4().hex
    url = f"{http_server.url}/flaky/{token}/100/published"
    storage = HTTPStorage(url, retries=1, backoff=0.01)
    with pytest.raises(StorageIOError, match=f"GET {url}/zarr.json failed after 2 attempts"):
        run(get_and_close(storage, "zarr.json"))


def test_slow_server_times_out(http_server: HTTPServer) -> None:
    # The server sleeps 5 s; the client allows 0.5 s, so the margin is ten-fold.
    storage = HTTPStorage(f"{http_server.url}/slow/published", timeout=0.5, retries=3)
    with pytest.raises(StorageIOError, match="timed out after 0.5 s") as caught:
        run(get_and_close(storage, "zarr.json"))
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert isinstance(caught.value, StorageTimeoutError) and isinstance(caught.value, TimeoutError)


def test_custom_headers_carry_the_token(published: tuple[Path, xr.Dataset],
                                        http_server: HTTPServer) -> None:
    root, _ = published
    anonymous = HTTPStorage(f"{http_server.url}/auth/published")
    with pytest.raises(StorageIOError, match="answered HTTP 401"):
        run(get_and_close(anonymous, "zarr.json"))
    signed = HTTPStorage(f"{http_server.url}/auth/published", headers={"Authorization": AUTH_TOKEN})
    assert run(get_and_close(signed, "zarr.json")) == (root / "zarr.json").read_bytes()


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


"""Shared pieces for the HTTP tests (``test_http*.py``): the server and what it serves.

``http_server`` runs the test server of ``servers.serve_http`` for the
session; ``served_dir`` is a fresh directory it serves, for one test (its
backdoor is plain file writes); ``published`` is a hierarchy written by
``FilesystemStore`` with consolidated metadata, as a data provider would
publish one.

Test modules import the ``*_fixture`` functions to use the fixtures they
define: pytest has no other way to share fixtures between two modules short
of ``conftest.py``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr
from servers import HTTPServer, serve_http

from zarrstore import FilesystemStore
from zarrstore.http import HTTPStorage

__all__ = [
    "get_and_close",
    "http_server_fixture",
    "published_fixture",
    "run",
    "served_dir_fixture",
    "size_and_close",
    "skipped",
]


@pytest.fixture(scope="session", name="http_server")
def http_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HTTPServer]:
    with serve_http(tmp_path_factory.mktemp("served")) as server:
        yield server


@pytest.fixture(name="served_dir")
def served_dir_fixture(http_server: HTTPServer) -> tuple[Path, str]:
    """A fresh served directory for one test, and its base URL."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    (http_server.root / name).mkdir()
    return http_server.root / name, f"{http_server.url}/data/{name}"


@pytest.fixture(scope="session", name="published")
def published_fixture(http_server: HTTPServer) -> tuple[Path, xr.Dataset]:
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



async def get_and_close(storage: HTTPStorage, key: str) -> bytes | None:
    try:
        return await storage.get(key)
    finally:
        await storage.aclose()


async def size_and_close(storage: HTTPStorage, key: str) -> int | None:
    try:
        return await storage.size(key)
    finally:
        await storage.aclose()

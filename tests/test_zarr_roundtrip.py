"""Round trips through zarr-python and xarray, over every store in ``store_factory``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.abc.store import Store

from zarrstore import FilesystemStore, MemoryStore

StoreFactory = Callable[[Path], Store]

FACTORIES: dict[str, StoreFactory] = {
    "memory": lambda tmp: MemoryStore(),
    "filesystem": lambda tmp: FilesystemStore(tmp / "fs"),
    "filesystem-direct-io": lambda tmp: FilesystemStore(tmp / "fsd", direct_io=True),
}


@pytest.fixture(params=sorted(FACTORIES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return FACTORIES[request.param](tmp_path)


DTYPES = ["int8", "uint16", "int32", "int64", "float32", "float64", "bool", "complex64",
          "complex128"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_numeric_dtypes(store: Store, dtype: str) -> None:
    rng = np.random.default_rng(0)
    data = (rng.random((17, 9)) * 100).astype(dtype)
    zarr.create_array(store, name="a", shape=data.shape, chunks=(5, 4), dtype=dtype)[:] = data
    np.testing.assert_array_equal(zarr.open_array(store, path="a", mode="r")[:], data)


def test_fixed_and_variable_length_strings(store: Store) -> None:
    fixed = np.array(["ab", "cde", "", "z"], dtype="<U3")
    variable = np.array(["short", "a much longer string", "", "ünïcødé"], dtype=object)
    zarr.create_array(store, name="fixed", shape=(4,), chunks=(2,), dtype=fixed.dtype)[:] = fixed
    zarr.create_array(store, name="var", shape=(4,), chunks=(3,), dtype=str)[:] = variable
    group = zarr.open_group(store, mode="r")
    np.testing.assert_array_equal(group["fixed"][:], fixed)
    assert list(group["var"][:]) == list(variable)


@pytest.mark.parametrize(("shape", "chunks"), [((), ()), ((1,), (1,)), ((100,), (7,)),
                                                ((4, 5, 6), (2, 5, 3)), ((0, 3), (1, 3))])
def test_shapes_and_chunkings(
    store: Store, shape: tuple[int, ...], chunks: tuple[int, ...]
) -> None:
    data = np.arange(int(np.prod(shape)), dtype="i4").reshape(shape)
    array = zarr.create_array(store, name="s", shape=shape, chunks=chunks or "auto", dtype="i4")
    array[...] = data
    np.testing.assert_array_equal(zarr.open_array(store, path="s")[...], data)


def test_groups_and_attributes(store: Store) -> None:
    root = zarr.open_group(store, mode="w", attributes={"title": "t"})
    sub = root.create_group("a/b", attributes={"n": 3, "nested": {"x": [1, 2]}})
    sub.create_array("x", shape=(2,), dtype="f8")
    reopened = zarr.open_group(store, mode="r")
    assert reopened.attrs["title"] == "t"
    assert dict(reopened["a/b"].attrs) == {"n": 3, "nested": {"x": [1, 2]}}
    assert sorted(name for name, _ in reopened["a"].members()) == ["b"]


def test_sharding_codec(store: Store) -> None:
    data = np.arange(64 * 64, dtype="u2").reshape(64, 64)
    array = zarr.create_array(store, name="sh", shape=data.shape, chunks=(8, 8),
                              shards=(32, 32), dtype="u2")
    array[:] = data
    reopened = zarr.open_array(store, path="sh", mode="r")
    np.testing.assert_array_equal(reopened[:], data)
    np.testing.assert_array_equal(reopened[3:11, 40:60], data[3:11, 40:60])


def test_resize_and_delete(store: Store) -> None:
    array = zarr.create_array(store, name="r", shape=(10,), chunks=(4,), dtype="i2")
    array[:] = np.arange(10)
    array.resize((6,))
    np.testing.assert_array_equal(zarr.open_array(store, path="r")[:], np.arange(6))
    group = zarr.open_group(store)
    del group["r"]
    assert "r" not in zarr.open_group(store)
    assert not [k for k in zarr.open_group(store).array_keys()]


def test_consolidated_metadata(store: Store) -> None:
    root = zarr.open_group(store, mode="w")
    root.create_array("a", shape=(3,), dtype="i1")
    root.create_group("g").create_array("b", shape=(2, 2), dtype="f4")
    zarr.consolidate_metadata(store)
    opened = zarr.open_consolidated(store)
    assert opened.metadata.consolidated_metadata is not None
    assert sorted(opened.metadata.consolidated_metadata.flattened_metadata) == ["a", "g", "g/b"]


def test_xarray_round_trip(store: Store) -> None:
    ds = xr.Dataset(
        {"temp": (("time", "x"), np.random.default_rng(1).random((6, 5)).astype("f4"))},
        coords={"time": np.arange(6), "x": np.linspace(0, 1, 5)},
        attrs={"source": "test"},
    )
    ds.to_zarr(store, mode="w", consolidated=True, encoding={"temp": {"chunks": (2, 5)}})
    back = xr.open_zarr(store, consolidated=True)
    xr.testing.assert_identical(back.load(), ds)
    assert back.attrs["source"] == "test"

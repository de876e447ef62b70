"""Time travel end to end: zarr and xarray write, commit, overwrite, and read every version back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

import versionstore as vs
from zarrstore import MemoryStore


@pytest.fixture(params=["memory", "lmdb"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> vs.Repository:
    if request.param == "memory":
        return vs.Repository.create(vs.in_memory_storage())
    return vs.Repository.create(vs.lmdb_storage(tmp_path / "repo"))


def test_zarr_versions_read_back_exactly(repo: vs.Repository) -> None:
    rng = np.random.default_rng(7)
    versions: list[tuple[str, np.ndarray]] = []
    session = repo.writable_session("main")
    array = zarr.create_array(session.store, name="g/t", shape=(40, 30), chunks=(8, 8),
                              dtype="f8", attributes={"units": "K"})
    data = rng.random((40, 30))
    array[:] = data
    versions.append((session.commit("v0"), data.copy()))
    for step in range(1, 6):
        session = repo.writable_session("main")
        array = zarr.open_array(session.store, path="g/t")
        rows = slice(step * 5, step * 5 + 7)
        data[rows, 3:20] = step
        array[rows, 3:20] = step
        versions.append((session.commit(f"v{step}"), data.copy()))
    for snapshot_id, expected in versions:
        view = repo.readonly_session(snapshot_id=snapshot_id)
        got = zarr.open_array(view.store, path="g/t", mode="r")
        np.testing.assert_array_equal(got[:], expected)
        assert got.attrs["units"] == "K"


def test_branch_to_experiment(repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="x", shape=(10,), chunks=(5,), dtype="i4")[:] = 1
    base = session.commit("base")
    repo.create_branch("experiment", snapshot_id=base)
    trial = repo.writable_session("experiment")
    zarr.open_array(trial.store, path="x")[:5] = 99
    trial.commit("try something")
    main = zarr.open_array(repo.readonly_session("main").store, path="x", mode="r")[:]
    experiment = zarr.open_array(repo.readonly_session("experiment").store, path="x", mode="r")[:]
    assert main.tolist() == [1] * 10
    assert experiment.tolist() == [99] * 5 + [1] * 5
    diff = repo.diff(from_branch="main", to_branch="experiment")
    assert dict(diff.updated_chunks) == {"/x": {(0,)}}


def test_xarray_time_travel(repo: vs.Repository) -> None:
    ds = xr.Dataset(
        {"temp": (("time", "x"), np.zeros((4, 6), dtype="f4"))},
        coords={"time": np.arange(4), "x": np.arange(6)},
    )
    session = repo.writable_session("main")
    ds.to_zarr(session.store, mode="w", consolidated=False)
    first = session.commit("zeros")
    session = repo.writable_session("main")
    ds2 = ds.copy(deep=True)
    ds2["temp"][:] = 5
    ds2.to_zarr(session.store, mode="a", consolidated=False)
    second = session.commit("fives")
    session = repo.writable_session("main")
    extra = ds2.isel(time=[0]).assign_coords(time=[4])
    extra.to_zarr(session.store, append_dim="time", consolidated=False)
    third = session.commit("append a step")

    def opened(snapshot: str) -> xr.Dataset:
        view = repo.readonly_session(snapshot_id=snapshot)
        return xr.open_zarr(view.store, consolidated=False).load()

    xr.testing.assert_identical(opened(first), ds)
    xr.testing.assert_identical(opened(second), ds2)
    assert opened(third).sizes["time"] == 5
    assert float(opened(third)["temp"].sum()) == 5 * 5 * 6


def test_consolidated_metadata_in_a_session(repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="w")
    root.create_array("a", shape=(3,), dtype="i1")
    zarr.consolidate_metadata(session.store)
    snapshot = session.commit("consolidated")
    opened = zarr.open_consolidated(repo.readonly_session(snapshot_id=snapshot).store, mode="r")
    assert list(opened.array_keys()) == ["a"]


def test_zarr_v2_layout(repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    array = zarr.create_array(session.store, name="v2", shape=(6,), chunks=(2,), dtype="i2",
                              zarr_format=2)
    array[:] = np.arange(6)
    first = session.commit("v2 array")
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="v2", zarr_format=2)[4:] = -1
    session.commit("update")
    diff = repo.diff(from_snapshot_id=first, to_branch="main")
    assert dict(diff.updated_chunks) == {"/v2": {(2,)}}
    back = zarr.open_array(repo.readonly_session(snapshot_id=first).store, path="v2", mode="r")
    np.testing.assert_array_equal(back[:], np.arange(6))


def test_copy_a_version_out_to_another_store(repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="t", shape=(4,), dtype="u1")[:] = 7
    snapshot = session.commit("seven")
    target = MemoryStore()
    source = repo.readonly_session(snapshot_id=snapshot).store.storage
    for key in source.list():
        target.storage.set(key, source.get(key) or b"")
    assert zarr.open_array(target, path="t", mode="r")[:].tolist() == [7] * 4

"""import_zarr: an existing Zarr dataset (a directory or any store) comes under version control."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

import versionstore as vs
from zarrstore import FilesystemStorage, MemoryStorage, ZarrStore


def _dataset(store: object) -> np.ndarray:
    """A small hierarchy: a group with attributes, two arrays, a nested group."""
    root = zarr.open_group(store, mode="w", attributes={"title": "survey"})
    values = np.arange(60, dtype="f8").reshape(6, 10)
    root.create_array("temperature", shape=(6, 10), chunks=(2, 5), dtype="f8")[:] = values
    root.create_group("raw").create_array("counts", shape=(4,), dtype="i4")[:] = [1, 2, 3, 4]
    return values


def _check(store: object, values: np.ndarray, path: str = "") -> None:
    group = zarr.open_group(store, path=path, mode="r")
    assert group.attrs["title"] == "survey"
    assert np.array_equal(group["temperature"][:], values)
    assert list(group["raw/counts"][:]) == [1, 2, 3, 4]


@pytest.fixture
def repo() -> vs.Repository:
    return vs.Repository.create(vs.in_memory_storage())


def test_a_directory_dataset(tmp_path: Path, repo: vs.Repository) -> None:
    values = _dataset(zarr.storage.LocalStore(tmp_path / "data.zarr"))
    session = repo.writable_session("main")
    summary = vs.import_zarr(tmp_path / "data.zarr", session)
    on_disk = sorted(p for p in (tmp_path / "data.zarr").rglob("*") if p.is_file())
    assert summary.keys == len(on_disk) and summary.path == "" and summary.parents == ()
    assert summary.bytes == sum(p.stat().st_size for p in on_disk)
    snapshot = session.commit("import data.zarr")
    _check(repo.readonly_session(snapshot_id=snapshot).store, values)
    # Byte for byte: every key reads back exactly as the file.
    storage = repo.readonly_session().store.storage
    for file in on_disk:
        assert storage.get(file.relative_to(tmp_path / "data.zarr").as_posix()) == \
            file.read_bytes()


def test_a_memory_store_under_a_path(repo: vs.Repository) -> None:
    source = zarr.storage.MemoryStore()
    values = _dataset(source)
    session = repo.writable_session("main")
    summary = vs.import_zarr(source, session, path="/surveys/2024/")
    assert summary.path == "surveys/2024"
    assert summary.parents == ("surveys/zarr.json", "zarr.json")
    session.commit("import")
    store = repo.readonly_session().store
    _check(store, values, path="surveys/2024")
    # The parents make it reachable from the root, as zarr expects.
    assert np.array_equal(zarr.open_group(store, mode="r")["surveys/2024/temperature"][:],
                          values)


@pytest.mark.parametrize("kind", ["memory", "filesystem"])
def test_a_zarrstore_storage(kind: str, tmp_path: Path, repo: vs.Repository) -> None:
    storage = MemoryStorage() if kind == "memory" else FilesystemStorage(tmp_path / "fs")
    values = _dataset(ZarrStore(storage))
    session = repo.writable_session("main")
    vs.import_zarr(storage, session)
    session.commit("import")
    _check(repo.readonly_session().store, values)


def test_a_zarr_v2_dataset(tmp_path: Path, repo: vs.Repository) -> None:
    source = zarr.storage.LocalStore(tmp_path / "v2.zarr")
    array = zarr.create_array(source, name="a", shape=(5,), dtype="i2", zarr_format=2)
    array[:] = [5, 4, 3, 2, 1]
    zarr.open_group(source, zarr_format=2, mode="a")  # the root group document
    session = repo.writable_session("main")
    summary = vs.import_zarr(tmp_path / "v2.zarr", session, path="legacy")
    assert summary.parents == (".zgroup",)
    session.commit("v2")
    read = zarr.open_array(repo.readonly_session().store, path="legacy/a", mode="r",
                           zarr_format=2)
    assert list(read[:]) == [5, 4, 3, 2, 1]


def test_reimport_records_only_what_changed(tmp_path: Path, repo: vs.Repository) -> None:
    location = tmp_path / "data.zarr"
    values = _dataset(zarr.storage.LocalStore(location))
    session = repo.writable_session("main")
    vs.import_zarr(location, session)
    first = session.commit("v1")
    # The dataset changes outside versionstore: one chunk rewritten, one array removed.
    group = zarr.open_group(zarr.storage.LocalStore(location), mode="a")
    group["temperature"][0:2, 0:5] = -1
    del group["raw"]
    session = repo.writable_session("main")
    with pytest.raises(ValueError, match="replace=True"):
        vs.import_zarr(location, session)
    summary = vs.import_zarr(location, session, replace=True)
    assert summary.erased == 3  # raw/zarr.json, raw/counts/zarr.json, raw/counts/c/0
    second = session.commit("v2")
    diff = repo.diff(from_snapshot_id=first, to_snapshot_id=second)
    assert diff.updated_chunks == {"/temperature": frozenset({(0, 0)})}
    assert diff.deleted_groups == {"/raw"} and diff.deleted_arrays == {"/raw/counts"}
    assert not diff.new_arrays and not diff.updated_arrays
    values[0:2, 0:5] = -1
    new = zarr.open_group(repo.readonly_session().store, mode="r")
    assert np.array_equal(new["temperature"][:], values) and "raw" not in new


def test_refusals(tmp_path: Path, repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    with pytest.raises(FileNotFoundError):
        vs.import_zarr(tmp_path / "missing", session)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no Zarr dataset"):
        vs.import_zarr(tmp_path / "empty", session)
    with pytest.raises(TypeError, match="source must be a Zarr dataset"):
        vs.import_zarr(42, session)
    with pytest.raises(TypeError, match="session must be a versionstore Session"):
        vs.import_zarr(tmp_path, repo)  # type: ignore[arg-type]
    source = zarr.storage.MemoryStore()
    _dataset(source)
    with pytest.raises(vs.ReadOnlySessionError):
        vs.import_zarr(source, repo.readonly_session())
    with pytest.raises(ValueError, match=r"'\.\.'"):
        vs.import_zarr(source, session, path="../up")
    assert not session.has_uncommitted_changes

"""Distributed writes: one writable session, pickled to dask workers in other processes.

A real ``distributed.LocalCluster`` with four worker processes (spawned, one
thread each) writes dask-backed ``xarray`` datasets through
``session.store``; the client commits. Every chunk must be written exactly
once, by a worker, and the commit must record all of them — for a new
dataset, an append along a dimension and a region write. Each written
snapshot is read back with xarray and compared with the data written.

The tests run over every storage ``storage_factory`` yields: LMDB, and S3 (moto
behind the serialising proxy; workers reopen it from the pickled description).
zarrstore's unversioned ``LMDBStore`` is pickled to the same workers, which
write a dask array into it while its map grows.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import dask_workers
import numpy as np
import pytest
from object_repo_support import S3Repos, aws_env_fixture, s3_fixture, s3_repos_fixture

import versionstore as vs
from versionstore.storage import RepositoryStorage

da = pytest.importorskip("dask.array", reason="the dask tests need dask[array]")
xr = pytest.importorskip("xarray", reason="the dask tests need xarray")
distributed = pytest.importorskip("distributed", reason="the dask tests need dask.distributed")

StorageFactory = Callable[[Path], RepositoryStorage]

__all__ = ["aws_env_fixture", "s3_fixture", "s3_repos_fixture"]

pytestmark = pytest.mark.timeout(300)

ROWS, COLUMNS = 40, 12
CHUNKS = (5, 4)


def _lmdb(request: pytest.FixtureRequest) -> StorageFactory:
    return lambda where: vs.lmdb_storage(where / "repo")


def _s3(request: pytest.FixtureRequest) -> StorageFactory:
    """A fresh prefix on moto's S3 server (behind the serialising proxy) per repository."""
    s3_repos: S3Repos = request.getfixturevalue("s3_repos")
    return lambda where: s3_repos.storage()


#: Storage name -> (the test's request -> a factory of fresh storages). A storage whose
#: server is a fixture gets it with ``request.getfixturevalue``; its description must
#: pickle, which is all a worker needs to reopen the repository.
STORAGES: dict[str, Callable[[pytest.FixtureRequest], StorageFactory]] = {
    "lmdb": _lmdb, "s3": _s3}


@pytest.fixture(params=sorted(STORAGES))
def storage_factory(request: pytest.FixtureRequest) -> StorageFactory:
    """Makes a fresh storage for one test's repository, for each storage in ``STORAGES``."""
    return STORAGES[request.param](request)


@pytest.fixture(scope="module")
def cluster() -> Iterator[distributed.LocalCluster]:
    """Four worker processes, one thread each, no dashboard (started once per module)."""
    with distributed.LocalCluster(
        n_workers=4, processes=True, threads_per_worker=1, dashboard_address=None,
        worker_dashboard_address=None,
    ) as local:
        yield local


@pytest.fixture
def client(cluster: distributed.LocalCluster) -> Iterator[distributed.Client]:
    """A client on the cluster, counting every staged write in its workers and itself."""
    with distributed.Client(cluster, set_as_default=True) as connected:
        connected.run(dask_workers.count_session_writes)
        dask_workers.count_session_writes()
        yield connected
        connected.run(dask_workers.stop_counting)
        dask_workers.stop_counting()


def _writes(client: distributed.Client) -> tuple[Counter[str], set[int]]:
    """Staged chunk writes since the last call: key -> count, and the pids that wrote chunks."""
    per_worker = client.run(dask_workers.session_writes)
    client.run(dask_workers.count_session_writes)
    counts: Counter[str] = Counter()
    pids: set[int] = set()
    for writes in per_worker.values():
        for key, pid in writes:
            if key.startswith("t/c/"):
                counts[key] += 1
                pids.add(pid)
    local = [key for key, _ in dask_workers.session_writes() if key.startswith("t/c/")]
    assert local == [], f"the client wrote data chunks itself: {local[:5]}"
    dask_workers.count_session_writes()
    return counts, pids


def _chunk_keys(name: str, rows: range, columns: int) -> set[str]:
    return {f"{name}/c/{i}/{j}" for i in rows for j in range(-(-columns // CHUNKS[1]))}


def _dataset(values: np.ndarray, first_row: int) -> xr.Dataset:
    rows = values.shape[0]
    return xr.Dataset(
        {"t": (("time", "x"), da.from_array(values, chunks=CHUNKS))},
        coords={"time": np.arange(first_row, first_row + rows), "x": np.arange(COLUMNS)},
    )


def _read(repo: vs.Repository, snapshot: str) -> xr.Dataset:
    store = repo.readonly_session(snapshot_id=snapshot).store
    return xr.open_zarr(store, consolidated=False, chunks=None).load()


def _committed_chunks(repo: vs.Repository, snapshot: str) -> set[str]:
    store = repo.readonly_session(snapshot_id=snapshot).store
    return {key for key in store.storage.list_prefix("t/c/")}


def test_to_zarr_append_and_region_through_worker_processes(
    storage_factory: StorageFactory, tmp_path: Path, client: distributed.Client,
) -> None:
    repo = vs.Repository.create(storage_factory(tmp_path))
    first = np.arange(ROWS * COLUMNS, dtype="f8").reshape(ROWS, COLUMNS)

    # A new dataset: the client writes metadata and coordinates, workers every chunk.
    session = repo.writable_session("main")
    _dataset(first, 0).to_zarr(session.store, mode="w", consolidated=False)
    counts, pids = _writes(client)
    expected = _chunk_keys("t", range(ROWS // CHUNKS[0]), COLUMNS)
    assert set(counts) == expected and set(counts.values()) == {1}
    assert os.getpid() not in pids and len(pids) >= 2
    created = session.commit("dataset")
    assert _committed_chunks(repo, created) == expected
    read = _read(repo, created)
    np.testing.assert_array_equal(read["t"].values, first)
    np.testing.assert_array_equal(read["time"].values, np.arange(ROWS))

    # Append along time: only the new chunks are written, once each.
    more = 1000 + np.arange(10 * COLUMNS, dtype="f8").reshape(10, COLUMNS)
    session = repo.writable_session("main")
    _dataset(more, ROWS).to_zarr(session.store, append_dim="time", consolidated=False)
    counts, _ = _writes(client)
    appended = _chunk_keys("t", range(ROWS // CHUNKS[0], (ROWS + 10) // CHUNKS[0]), COLUMNS)
    assert set(counts) == appended and set(counts.values()) == {1}
    grown = session.commit("append")
    read = _read(repo, grown)
    np.testing.assert_array_equal(read["t"].values, np.concatenate([first, more]))
    np.testing.assert_array_equal(read["time"].values, np.arange(ROWS + 10))

    # A region write replaces rows 10..19: exactly the chunks of those rows.
    patch = -np.ones((10, COLUMNS))
    session = repo.writable_session("main")
    region = xr.Dataset({"t": (("time", "x"), da.from_array(patch, chunks=CHUNKS))})
    region.to_zarr(session.store, region={"time": slice(10, 20)}, consolidated=False)
    counts, _ = _writes(client)
    assert set(counts) == _chunk_keys("t", range(2, 4), COLUMNS)
    assert set(counts.values()) == {1}
    patched = session.commit("region")
    read = _read(repo, patched)
    want = np.concatenate([first, more])
    want[10:20] = -1
    np.testing.assert_array_equal(read["t"].values, want)

    # Earlier snapshots are unchanged; the history has the three commits.
    np.testing.assert_array_equal(_read(repo, created)["t"].values, first)
    messages = [info.message for info in repo.ancestry(branch="main")]
    assert messages[:3] == ["region", "append", "dataset"]


def test_workers_writing_while_the_client_commits_lose_nothing(
    storage_factory: StorageFactory, tmp_path: Path, client: distributed.Client,
) -> None:
    """A commit racing the workers' writes records what was staged; the rest stays staged."""
    repo = vs.Repository.create(storage_factory(tmp_path))
    session = repo.writable_session("main")
    values = np.arange(ROWS * COLUMNS, dtype="f8").reshape(ROWS, COLUMNS)
    dataset = _dataset(values, 0)
    delayed = dataset.to_zarr(session.store, mode="w", consolidated=False, compute=False)
    future = client.compute(delayed)
    snapshots = []
    while not future.done():
        try:
            snapshots.append(session.commit("while writing"))
        except vs.NothingToCommitError:
            pass
    future.result()
    try:
        snapshots.append(session.commit("the rest"))
    except vs.NothingToCommitError:
        pass  # the last commit in the loop already had every chunk
    read = _read(repo, snapshots[-1])
    np.testing.assert_array_equal(read["t"].values, values)
    assert not session.has_uncommitted_changes


def test_lmdb_store_pickled_to_worker_processes_keeps_every_chunk(
        client: distributed.Client, tmp_path: Path) -> None:
    # zarrstore's unversioned LMDBStore: each worker process reopens it by path and
    # writes its chunks, the environment's map growing meanwhile (it starts at 1 MiB).
    import zarr

    from zarrstore import LMDBStore

    values = np.random.default_rng(7).random((600, 300))
    store = LMDBStore(tmp_path / "plain", map_size=1 << 20)
    da.from_array(values, chunks=(50, 60)).to_zarr(store, component="t", compute=True)
    assert np.array_equal(zarr.open_array(store, path="t", mode="r")[:], values)
    assert os.path.getsize(tmp_path / "plain" / "data.mdb") > 1 << 20  # the map grew
    store.close()

"""Repositories on object storage: S3 (moto behind the serialising proxy), end to end.

Create, open and commit; zarr's ``StoreTests`` and the store conformance suite
on a writable session over S3; processes racing commits on one branch;
exact request counts for a session of N chunks; garbage collection's grace
period; and the bad inputs a user meets first (wrong bucket, no or wrong
credentials, an endpoint that refuses connections, a server that never
answers), each a typed error with nothing half-written.
"""

from __future__ import annotations

import multiprocessing
import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np
import object_workers
import pytest
import test_session_store as session_store_tests
import zarr
from object_repo_support import S3Repos, aws_env_fixture, s3_fixture, s3_repos_fixture

import versionstore as vs

__all__ = ["aws_env_fixture", "s3_fixture", "s3_repos_fixture"]


@pytest.fixture
def repo(s3_repos: S3Repos) -> Iterator[vs.Repository]:
    repository = vs.Repository.create(s3_repos.storage())
    yield repository
    repository.close()


# -- create, open, commit ---------------------------------------------------------------


def test_create_open_commit_and_read_back(s3_repos: S3Repos) -> None:
    storage = s3_repos.storage()
    assert not vs.Repository.exists(storage)
    repo = vs.Repository.create(storage)
    assert vs.Repository.exists(storage)
    session = repo.writable_session("main")
    array = zarr.create_array(session.store, name="t", shape=(20,), chunks=(5,), dtype="i4")
    array[:] = np.arange(20)
    first = session.commit("first")
    reopened = vs.Repository.open(pickle.loads(pickle.dumps(storage)))
    view = reopened.readonly_session(branch="main")
    assert view.snapshot_id == first
    np.testing.assert_array_equal(zarr.open_array(view.store, path="t")[:], np.arange(20))
    with pytest.raises(vs.RepositoryExistsError):
        vs.Repository.create(storage)
    assert reopened.verify().ok


def test_create_refuses_a_prefix_holding_other_objects(s3_repos: S3Repos) -> None:
    storage = s3_repos.storage()
    s3_repos.server.client.put_object(Bucket="zarrstore-test", Key=f"{storage.prefix}/x.txt",
                                      Body=b"not ours")
    with pytest.raises(vs.RepositoryExistsError, match="already holds other objects"):
        vs.Repository.create(storage)


# -- zarr's StoreTests and the store conformance suite on a session over S3 ------------------


class TestWritableSessionOnS3WithZarr(session_store_tests.TestWritableSessionStoreWithZarr):
    pass


class TestWritableSessionOnS3Conformance(session_store_tests.TestWritableSessionConformance):
    pass


# -- processes racing commits -------------------------------------------------------------


@pytest.mark.slow  # four processes, ~30 s on two shared cores
def test_processes_racing_commits_on_one_branch_lose_nothing(s3_repos: S3Repos) -> None:
    storage = s3_repos.storage()
    repo = vs.Repository.create(storage)
    workers, commits = 4, 6
    context = multiprocessing.get_context("spawn")
    start, out = context.Event(), context.Queue()
    processes = [context.Process(target=object_workers.commit_loop,
                                 args=(storage, n, commits, start, out)) for n in range(workers)]
    for process in processes:
        process.start()
    start.set()
    results = dict(out.get(timeout=300) for _ in processes)
    for process in processes:
        process.join(60)
    failures = {n: r for n, r in results.items() if isinstance(r, str)}
    assert not failures, failures
    returned = {snapshot for ids in results.values() for snapshot in ids}
    assert len(returned) == workers * commits
    history = list(repo.ancestry(branch="main"))
    assert len(history) == workers * commits + 1  # linear: every commit, then the first
    assert {info.id for info in history} >= returned
    assert all(len(info.parent_ids) == 1 for info in history[:-1])
    assert all(len(info.parent_ids) <= 1 for info in history)
    view = repo.readonly_session(branch="main")
    for n in range(workers):
        for c in range(commits):
            key = f"w{n}/{c}"
            assert view.read_entries([view.entry(key)])[0] == key.encode().ljust(700, b".")


# -- request economy ----------------------------------------------------------------------


def _session_requests(s3_repos: S3Repos, chunks: int, concurrency: int) -> dict[str, int]:
    """HTTP requests of a session writing ``chunks`` chunks (1 KiB each) and committing."""
    repo = vs.Repository.create(s3_repos.storage())
    proxy = s3_repos.proxy
    proxy.reset_counts()
    session = repo.writable_session("main")
    with zarr.config.set({"async.concurrency": concurrency}):
        array = zarr.create_array(session.store, name="t", shape=(chunks * 128,), chunks=(128,),
                                  dtype="f8", compressors=None, fill_value=-1)
        array[:] = np.arange(chunks * 128, dtype="f8")
    session.commit("n chunks")
    counts = dict(proxy.counts)
    counts["writes"] = proxy.writes
    view = repo.readonly_session(branch="main")
    np.testing.assert_array_equal(zarr.open_array(view.store, path="t")[-128:],
                                  np.arange((chunks - 1) * 128, chunks * 128, dtype="f8"))
    return counts


def test_a_session_of_n_chunks_costs_about_n_writes(s3_repos: S3Repos) -> None:
    # What object-storage users set (docs/guide.md): zarr then stages up to 128
    # chunks per event-loop turn, and each turn is one log record.
    n = 1000
    counts = _session_requests(s3_repos, n, concurrency=128)
    assert counts["writes"] <= n + n // 100 + 20, counts
    assert counts.get("list", 0) <= 1 + n // 1000, counts
    assert counts.get("delete", 0) == 0


def test_with_zarrs_default_concurrency_a_record_per_ten_chunks(s3_repos: S3Repos) -> None:
    # zarr's default async.concurrency is 10: a staging batch (one log record) holds
    # at most 10 chunks, so the overhead is N/10 records (docs/format.md's formula).
    n = 300
    counts = _session_requests(s3_repos, n, concurrency=10)
    assert n + n // 10 <= counts["writes"] <= n + n // 10 + 20, counts
    assert counts.get("list", 0) <= 1, counts

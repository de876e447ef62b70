"""Repositories on object storage: S3 (moto behind the serialising proxy), end to end.

Create, open and commit; zarr's ``StoreTests`` and the store conformance suite
on a writable session over S3; processes racing commits on one branch;
exact request counts for a session of N chunks; garbage collection's grace
period; and the bad inputs a user meets first (wrong bucket, no or wrong
credentials, an endpoint that refuses connections, a server that never
answers), each a typed error with nothing half-written.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import queue
import re
import signal
import socket
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import object_workers
import pytest
import test_session_store as session_store_tests
import zarr
from hypothesis.stateful import run_state_machine_as_test
from hypothesis_budget import hierarchy_examples
from object_repo_support import (
    S3Repos,
    aws_env_fixture,
    collect_mid_write,
    s3_fixture,
    s3_repos_fixture,
)
from obstore.store import LocalStore
from zarr.core.buffer import cpu
from zarr.testing.stateful import ZarrStoreStateMachine

import versionstore as vs
import versionstore.session as session_module

__all__ = ["aws_env_fixture", "s3_fixture", "s3_repos_fixture"]

#: The delimiter listing that opens a session's first epoch past any old one
#: (``LocatedStaging.first_epoch``): one per session record created.
_OPEN_LISTS = 1


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


def test_zarr_store_state_machine_on_a_session_over_s3(repo: vs.Repository) -> None:
    # Every step is a few HTTP round trips through moto: the smaller hierarchy budget.
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        lambda: ZarrStoreStateMachine(repo.writable_session("main").store),
        settings=hierarchy_examples(),
    )


def test_zarr_hierarchy_state_machine_on_a_session_over_s3(repo: vs.Repository) -> None:
    session_store_tests.test_zarr_hierarchy_state_machine_on_a_session(repo)


# -- processes racing commits -------------------------------------------------------------


@pytest.mark.slow  # four processes, ~30 s on two shared cores
@pytest.mark.parametrize("where", ["s3", "local files"])
def test_processes_racing_commits_on_one_branch_lose_nothing(
    s3_repos: S3Repos, tmp_path: Path, where: str,
) -> None:
    """On S3 and on obstore's ``LocalStore`` alike (icechunk #804: local-filesystem
    storage let two processes clobber each other's commits)."""
    storage = (s3_repos.storage() if where == "s3" else
               vs.object_storage(LocalStore(str(tmp_path / "repo"), mkdir=True)))
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
    # zarr keeping 128 chunks in flight, as docs/guide.md once advised.
    n = 1000
    counts = _session_requests(s3_repos, n, concurrency=128)
    assert counts["writes"] <= n + n // 100 + 20, counts
    assert counts.get("list", 0) <= _OPEN_LISTS + 2 + 2 * (n // 1000), counts
    assert counts.get("delete", 0) == 0


def test_with_zarrs_default_concurrency_n_chunks_cost_n_writes(s3_repos: S3Repos) -> None:
    # zarr's default async.concurrency is 10. Each chunk's own PUT is its durable staged
    # record (located staging, docs/format.md): issue #11's budget holds at any concurrency.
    n = 300
    counts = _session_requests(s3_repos, n, concurrency=10)
    assert counts["writes"] <= n + n // 100 + 20, counts
    assert counts.get("list", 0) <= _OPEN_LISTS + 2 + 2 * (n // 1000), counts
    assert counts.get("delete", 0) == 0


def test_sequential_sets_cost_one_write_each(s3_repos: S3Repos) -> None:
    # One ``await store.set`` at a time: each returns only once its chunk is durable, and
    # that PUT is the only write it makes.
    repo = vs.Repository.create(s3_repos.storage())
    session = repo.writable_session("main")
    store = session.store
    n = 150
    values = {f"seq/c/{i}": bytes([i % 251]) * 1500 for i in range(n)}
    proxy = s3_repos.proxy
    proxy.reset_counts()

    async def write() -> None:
        for key, value in values.items():
            await store.set(key, cpu.Buffer.from_bytes(value))

    asyncio.run(write())
    session.commit("sequential")
    counts = dict(proxy.counts)
    assert proxy.writes <= n + n // 100 + 20, counts
    assert counts.get("list", 0) <= _OPEN_LISTS + 2, counts
    view = repo.readonly_session(branch="main")
    keys = sorted(values)
    assert view.read_entries([view.entry(k) for k in keys]) == [values[k] for k in keys]


@pytest.mark.slow  # a spawned writer, killed mid-stream, then a commit
def test_every_set_that_returned_survives_a_killed_writer(s3_repos: S3Repos) -> None:
    storage = s3_repos.storage()
    repo = vs.Repository.create(storage)
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    writer = context.Process(target=object_workers.store_until_killed, args=(storage, out))
    writer.start()
    returned: list[str] = []
    try:
        session_id = out.get(timeout=120)
        while len(returned) < 40:
            returned.append(out.get(timeout=120))
    finally:
        os.kill(writer.pid, signal.SIGKILL)  # type: ignore[arg-type]
        writer.join(60)
    while True:  # keys reported between the last read and the kill
        try:
            returned.append(out.get(timeout=1))
        except queue.Empty:
            break
    assert writer.exitcode == -signal.SIGKILL
    assert session_id in repo.resumable_sessions()
    resumed = repo.writable_session("main", resume=session_id)
    resumed.commit("what the killed writer stored")
    view = repo.readonly_session(branch="main")
    stored = view.read_entries([view.entry(key) for key in returned])
    assert stored == [object_workers._chunk(key) for key in returned]
    assert repo.verify().ok


def _zstd_session_requests(s3_repos: S3Repos, chunks: int, concurrency: int
                           ) -> tuple[dict[str, int], dict[str, int]]:
    """Requests of a session writing ``chunks`` 4 KiB chunks with zarr's default codecs (zstd).

    Returns the counts by kind (and ``writes``) of the write and the commit
    together, and the ``PUT`` count of each ``objects/`` path the write stored.
    """
    repo = vs.Repository.create(s3_repos.storage())
    session = repo.writable_session("main")
    elements = 1024
    data = np.random.default_rng(7).normal(size=chunks * elements).astype("f4")
    array = zarr.create_array(session.store, name="t", shape=(chunks * elements,),
                              chunks=(elements,), dtype="f4")
    assert array.compressors  # zarr's default (zstd): chunks reach the store loop turns apart
    proxy = s3_repos.proxy
    proxy.reset_counts()
    with zarr.config.set({"async.concurrency": concurrency}):
        array[:] = data
    # Chunks: located writes under stage/, but the first few of a commit are stored
    # under objects/ and named by a log record (session._LOGGED_FIRST).
    puts = {path: n for path, n in proxy.requests.items()
            if path.startswith("PUT ") and ("/stage/" in path or "/objects/" in path)}
    session.commit("n compressed chunks")
    counts = dict(proxy.counts)
    counts["writes"] = proxy.writes
    view = repo.readonly_session(branch="main")
    np.testing.assert_array_equal(zarr.open_array(view.store, path="t")[:], data)
    return counts, puts


@pytest.mark.parametrize("concurrency", [10, 64])
def test_compressed_chunks_cost_one_write_each(s3_repos: S3Repos, concurrency: int) -> None:
    # With zstd, zarr's encoders hand chunks to the store a few ms apart. Each chunk's
    # PUT (under stage/, located staging) is its staged record: N writes at any
    # concurrency, plus the session record, the absorb's two records and the commit's.
    n = 500
    counts, puts = _zstd_session_requests(s3_repos, n, concurrency)
    assert len(puts) == n and set(puts.values()) == {1}  # each chunk stored once, no retries
    assert counts["writes"] <= n + n // 100 + 20, counts
    assert counts.get("list", 0) <= _OPEN_LISTS + 2 + 2 * (n // 1000), counts
    assert counts.get("delete", 0) == 0


# -- garbage collection's grace period ------------------------------------------------------


def test_gc_spares_what_a_writer_stored_but_has_not_referenced_yet(
        s3_repos: S3Repos, monkeypatch: pytest.MonkeyPatch) -> None:
    def collect(collector: vs.Repository) -> list[vs.GCSummary]:
        no_grace = datetime.now(UTC) + timedelta(seconds=5)
        return [collector.garbage_collect(no_grace, dry_run=True),
                collector.garbage_collect()]  # the default grace period

    # A metadata document above the inline limit: a chunk object named by a log record
    # (chunks proper are located writes, below).
    without_grace, with_grace = collect_mid_write(
        s3_repos, s3_repos.storage(), monkeypatch, hook="_put_objects", key="a/zarr.json",
        value=b"v" * 2000, collect=collect)
    assert without_grace.deleted == 1  # unreferenced: garbage, but for the grace period
    assert with_grace.deleted == 0


def test_gc_spares_a_located_write_whatever_its_age(
        s3_repos: S3Repos, monkeypatch: pytest.MonkeyPatch) -> None:
    # A located write lands in its session's open epoch, which the record names
    # before the write: even a collection without grace period keeps it.
    def collect(collector: vs.Repository) -> list[vs.GCSummary]:
        return [collector.garbage_collect(datetime.now(UTC) + timedelta(days=1))]

    monkeypatch.setattr(session_module, "_LOGGED_FIRST", 0)  # the chunk: a located write
    summaries = collect_mid_write(s3_repos, s3_repos.storage(), monkeypatch, hook="put_located",
                                  key="a/c/0", value=b"w" * 2000, collect=collect)
    assert [s.deleted for s in summaries] == [0]


def test_gc_on_object_storage_keeps_a_day_by_default(s3_repos: S3Repos) -> None:
    repo = vs.Repository.create(s3_repos.storage())
    first = repo.lookup_branch("main")
    session = repo.writable_session("main")
    session.set_values([("staged", b"s" * 2000)])
    other = repo.writable_session("main")
    other.set_values([("k", b"k" * 2000)])
    other.commit("to be reset away")
    repo.reset_branch("main", first)
    assert repo.garbage_collect().deleted == 0  # everything is younger than a day
    later = datetime.now(UTC) + timedelta(seconds=5)
    summary = repo.garbage_collect(later)
    assert summary.deleted >= 3  # the reset-away snapshot, its tree, its chunk
    assert session.read_entries([session.entry("staged")]) == [b"s" * 2000]  # staged: kept
    session.commit("staged survives")
    assert repo.verify().ok


def test_gc_with_a_grace_period_shorter_than_writers_need_warns(tmp_path: Path) -> None:
    """Writers re-store objects they re-reference only after an hour: a shorter grace warns.

    (An adversary's run: gc with ``older_than=now - 2 s`` beside committing writers
    and ``expire_snapshots`` lost objects in 4 of 6 runs.)
    """
    repo = vs.Repository.create(vs.object_storage(LocalStore(str(tmp_path)), "repo"))
    now = datetime.now(UTC)
    for short in (now, now - timedelta(minutes=59)):
        with pytest.warns(vs.ShortGracePeriodWarning, match="while nothing writes") as caught:
            repo.garbage_collect(short)
        with pytest.warns(vs.ShortGracePeriodWarning) as caught_too:
            repo.purge("nothing/here", force=True, gc_older_than=short)
        with pytest.warns(vs.ShortGracePeriodWarning) as caught_async:
            asyncio.run(repo.garbage_collect_async(short))
        with pytest.warns(vs.ShortGracePeriodWarning) as caught_async_too:
            asyncio.run(repo.purge_async("nothing/here", force=True, gc_older_than=short))
        for warned in (caught, caught_too, caught_async, caught_async_too):
            assert len(warned) == 1
        for warned in (caught, caught_too):  # the warning names the caller's line
            assert warned[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        repo.garbage_collect(now - timedelta(hours=1, minutes=1))
        repo.garbage_collect()  # the default, a day
        repo.garbage_collect(now, dry_run=True)  # deletes nothing
        local = vs.Repository.create(vs.lmdb_storage(tmp_path / "lmdb"))
        local.garbage_collect(now)  # an atomic sweep: any grace is safe


# -- bad input --------------------------------------------------------------------------------


def _fast_failing() -> dict[str, Any]:
    return {"client_options": {"timeout": "1s", "connect_timeout": "1s"},
            "retry_config": {"max_retries": 0, "retry_timeout": timedelta(seconds=1)}}


def test_a_bucket_that_does_not_exist(s3_repos: S3Repos) -> None:
    storage = s3_repos.storage(bucket="no-such-bucket")
    with pytest.raises(vs.StorageNotFoundError, match="bucket does not exist"):
        vs.Repository.create(storage)
    with pytest.raises(vs.StorageNotFoundError):
        vs.Repository.open(storage)


def test_missing_credentials(s3_repos: S3Repos) -> None:
    with pytest.raises(vs.StorageAccessDeniedError, match="no credentials"):
        vs.s3_storage(bucket="zarrstore-test", endpoint_url=s3_repos.proxy.endpoint,
                      allow_http=True, from_env=False)


def test_wrong_credentials(s3_repos: S3Repos) -> None:
    storage = s3_repos.storage(access_key_id="AKIAWRONG", **_fast_failing())
    with pytest.raises(vs.StorageAccessDeniedError, match="access denied"):
        vs.Repository.create(storage)


def test_an_endpoint_that_refuses_connections(s3_repos: S3Repos) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    storage = s3_repos.storage(endpoint_url=f"http://127.0.0.1:{port}", **_fast_failing())
    with pytest.raises(vs.StorageUnreachableError, match="cannot reach"):
        vs.Repository.create(storage)


def test_a_server_that_never_answers(s3_repos: S3Repos) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # connections are accepted by the kernel, never answered
        storage = s3_repos.storage(endpoint_url=f"http://127.0.0.1:{silent.getsockname()[1]}",
                                   **_fast_failing())
        with pytest.raises(vs.StorageTimeoutError, match="did not answer in time"):
            vs.Repository.create(storage)


def test_a_commit_cut_off_by_a_timeout_is_all_or_nothing(s3_repos: S3Repos) -> None:
    storage = s3_repos.storage()
    repo = vs.Repository.create(storage)
    before = repo.lookup_branch("main")
    impatient = vs.Repository.open(s3_repos.storage(storage.prefix, **_fast_failing()))
    session = impatient.writable_session("main")
    session.set_values([("a", b"a" * 2000)])
    s3_repos.proxy.stall_matching = re.compile(r"^PUT .*/log/")
    try:
        with pytest.raises(vs.StorageTimeoutError):
            session.commit("cut off")
    finally:
        s3_repos.proxy.stall_matching = None
    reader = vs.Repository.open(storage)
    assert reader.lookup_branch("main") == before  # the record was never created
    assert reader.verify().ok
    committed = session.commit("again")  # the session is intact and commits now
    assert vs.Repository.open(storage).lookup_branch("main") == committed


@pytest.mark.parametrize("lost", [1, 2])
def test_a_log_record_whose_answer_was_lost_counts_once(s3_repos: S3Repos, lost: int) -> None:
    """The service stored the record but its answer never came (ClickHouse #115390's fault).

    The client may retry and find its own record "already there": the outcome
    is read back, never inferred from the error, so neither the staged batch
    nor the commit is reported failed, repeated or lost.
    """
    storage = s3_repos.storage()
    repo = vs.Repository.create(storage)
    session = repo.writable_session("main")
    proxy = s3_repos.proxy
    before = proxy.answers_lost
    proxy.lose_answers = (re.compile(r"^PUT .*/log/"), lost)
    try:
        session.set_values([("a", b"a" * 2000)])  # the staged refs' record
        proxy.lose_answers = (re.compile(r"^PUT .*/log/"), lost)
        committed = session.commit("answer lost")  # the branch's record
    finally:
        proxy.lose_answers = None
    assert proxy.answers_lost - before == 2 * lost
    reader = vs.Repository.open(storage)
    assert reader.lookup_branch("main") == committed
    assert [info.message for info in reader.ancestry(branch="main")] == [
        "answer lost", "Repository initialized"]
    assert reader.readonly_session(branch="main").value("a") == b"a" * 2000
    assert reader.verify().ok


def test_a_checkpoint_that_cannot_be_written_fails_no_batch(s3_repos: S3Repos) -> None:
    """A checkpoint is a shortcut for readers; the record before it already landed."""
    storage = s3_repos.storage()
    vs.Repository.create(storage)
    impatient = vs.Repository.open(s3_repos.storage(storage.prefix, **_fast_failing()))
    session = impatient.writable_session("main")
    s3_repos.proxy.stall_matching = re.compile(r"^PUT .*/checkpoint/")
    try:
        for n in range(110):  # record 100 is followed by a checkpoint (stalled: times out)
            session.set_values([(f"k{n}", b"v" * 100)])
    finally:
        s3_repos.proxy.stall_matching = None
    committed = session.commit("past a missing checkpoint")
    reader = vs.Repository.open(storage)
    assert reader.lookup_branch("main") == committed
    view = reader.readonly_session(branch="main")
    assert all(view.value(f"k{n}") == b"v" * 100 for n in range(110))


def test_a_service_without_conditional_writes_is_refused(s3_repos: S3Repos) -> None:
    storage = s3_repos.storage(client_options={"timeout": "31s"})  # not probed before
    s3_repos.proxy.ignore_conditions = True
    try:
        with pytest.raises(vs.UnsafeStorageError, match="cannot create an object only if"):
            vs.Repository.create(storage)
        unsafe = vs.object_storage(storage.store, storage.prefix,
                                   unsafe_allow_unconditional_writes=True)
        repo = vs.Repository.create(unsafe)  # one writer, at its own risk
        session = repo.writable_session("main")
        session.set_values([("k", b"v")])
        session.commit("single writer")
    finally:
        s3_repos.proxy.ignore_conditions = False
    assert vs.Repository.open(storage).readonly_session(branch="main").entry("k") == b"v"

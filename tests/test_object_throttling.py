"""A throttled or slow S3: ``503 SlowDown`` storms and timeouts mid-commit and mid-gc.

The proxy's ``throttle`` switch answers matching requests ``503 SlowDown``
without forwarding them (what S3 says when a prefix takes more requests than
it will serve), ``stall_matching`` never answers them. A short storm is
ridden out by the client's retries; a storm longer than they last is a
typed error naming what was being done; either way a commit lands whole or
not at all, a session keeps its staged writes and commits once the service
recovers, a collection deletes all of a batch or none of it, and ``verify``
passes throughout.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from object_repo_support import S3Repos, aws_env_fixture, s3_fixture, s3_repos_fixture

import versionstore as vs

__all__ = ["aws_env_fixture", "s3_fixture", "s3_repos_fixture"]

#: Retries that give up within seconds (the default rides out three minutes of storm).
_IMPATIENT = {"retry_config": {"max_retries": 2, "backoff": {"init_backoff": timedelta(
    milliseconds=50), "max_backoff": timedelta(milliseconds=200), "base": 2},
    "retry_timeout": timedelta(seconds=2)}}


@pytest.fixture
def proxy(s3_repos: S3Repos) -> Iterator[Any]:
    yield s3_repos.proxy
    s3_repos.proxy.throttle = None
    s3_repos.proxy.stall_matching = None


def _staged(repo: vs.Repository, n: int) -> vs.Session:
    session = repo.writable_session("main")
    session.set_values([(f"k/{i}", bytes([i]) * 700) for i in range(n)])
    return session


def _read_back(repo: vs.Repository, snapshot: str, n: int) -> None:
    view = repo.readonly_session(snapshot_id=snapshot)
    assert view.read_entries([view.entry(f"k/{i}") for i in range(n)]) == [
        bytes([i]) * 700 for i in range(n)]


@pytest.mark.parametrize("what", [r"PUT .*/log/", r"PUT .*/objects/", r"GET .*/log/"])
def test_a_short_storm_mid_commit_is_ridden_out(s3_repos: S3Repos, proxy: Any,
                                                 what: str) -> None:
    repo = vs.Repository.create(s3_repos.storage())
    session = _staged(repo, 5)
    proxy.throttled = 0
    proxy.throttle = (re.compile(what), 3)
    snapshot = session.commit("through the storm")
    assert proxy.throttled == 3
    assert repo.lookup_branch("main") == snapshot
    _read_back(repo, snapshot, 5)
    assert repo.verify().ok


@pytest.mark.parametrize("what", [r"PUT .*/log/", r"PUT .*/objects/", r"GET .*/log/"])
def test_a_long_storm_mid_commit_is_a_typed_error_and_nothing_half_done(
        s3_repos: S3Repos, proxy: Any, what: str) -> None:
    storage = s3_repos.storage(**_IMPATIENT)
    repo = vs.Repository.create(storage)
    before = repo.lookup_branch("main")
    session = _staged(repo, 5)
    proxy.throttle = (re.compile(what), None)
    with pytest.raises(vs.BackendError, match="throttl|SlowDown|503") as raised:
        session.commit("into the storm")
    assert isinstance(raised.value, vs.StorageThrottledError), raised.value
    proxy.throttle = None
    other = vs.Repository.open(s3_repos.storage(storage.prefix))
    assert other.lookup_branch("main") == before  # not half-landed: not landed
    assert other.verify().ok
    snapshot = session.commit("after the storm")  # the staged writes are still there
    _read_back(other, snapshot, 5)
    assert other.lookup_branch("main") == snapshot
    assert other.verify().ok


def test_a_storm_mid_staging_keeps_every_write_that_returned(s3_repos: S3Repos,
                                                             proxy: Any) -> None:
    repo = vs.Repository.create(s3_repos.storage(**_IMPATIENT))
    session = _staged(repo, 3)
    proxy.throttle = (re.compile(r"PUT .*/log/"), None)
    with pytest.raises(vs.StorageThrottledError):
        session.set_values([("late", b"l" * 700)])
    proxy.throttle = None
    assert session.read_entries([session.entry(f"k/{i}") for i in range(3)]) == [
        bytes([i]) * 700 for i in range(3)]
    resumed = vs.Repository.open(repo.storage).writable_session("main",
                                                                resume=session.session_id)
    snapshot = resumed.commit("resumed after the storm")
    _read_back(repo, snapshot, 3)
    assert repo.verify().ok


def _garbage(repo: vs.Repository) -> None:
    first = repo.lookup_branch("main")
    for n in range(3):
        session = repo.writable_session("main")
        session.set_values([(f"g/{n}", b"g" * 700)])
        session.commit(f"garbage {n}")
    repo.reset_branch("main", first)


@pytest.mark.parametrize("what", [r"POST ", r"GET /[^/]+$", r"GET .*/log/"])
def test_a_storm_mid_gc_is_a_typed_error_and_the_next_gc_finishes(
        s3_repos: S3Repos, proxy: Any, what: str) -> None:
    # POST: the bulk delete; GET of the bucket: a listing; GET of log/: the re-read
    # of the log before a delete.
    storage = s3_repos.storage(**_IMPATIENT)
    repo = vs.Repository.create(storage)
    _garbage(repo)
    session = _staged(repo, 4)  # a live writer's staged chunks, which gc must keep
    everything = datetime.now(UTC) + timedelta(seconds=5)
    proxy.throttle = (re.compile(what), None)
    with pytest.raises(vs.StorageThrottledError):
        repo.garbage_collect(everything)
    proxy.throttle = None
    assert repo.verify().ok
    summary = repo.garbage_collect(everything)
    assert summary.deleted >= 6
    assert repo.verify().ok
    snapshot = session.commit("staged through a collection")
    _read_back(repo, snapshot, 4)


def test_a_stalled_log_write_mid_commit_times_out_and_nothing_half_done(
        s3_repos: S3Repos, proxy: Any) -> None:
    storage = s3_repos.storage(client_options={"timeout": "1s", "connect_timeout": "1s"},
                               **_IMPATIENT)
    repo = vs.Repository.create(storage)
    before = repo.lookup_branch("main")
    session = _staged(repo, 2)
    proxy.stall_matching = re.compile(r"PUT .*/log/")
    with pytest.raises(vs.StorageTimeoutError):
        session.commit("stalled")
    proxy.stall_matching = None
    assert vs.Repository.open(s3_repos.storage(storage.prefix)).lookup_branch("main") == before
    snapshot = session.commit("after the stall")
    _read_back(repo, snapshot, 2)
    assert repo.verify().ok

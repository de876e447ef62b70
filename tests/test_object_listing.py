"""A ``LIST`` that omits the newest log record, on S3 (moto behind the proxy).

AWS S3 lists strongly consistently, but not every S3-compatible service
does, and a paginated listing racing a writer may end before the writer's
record lands. The proxy's ``omit_newest_listed`` switch leaves the last
entry out of matching listings. A reader that lists the log (on opening, or
with a view older than ``_STALE_AFTER``) then stopped one record short and
served the refs from before a commit it had seen return; it now confirms
the end of a listing by asking for the record after it (one ``GET``). A
writer never takes a used number either way: its record is created only if
absent, and one that exists is read back.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from object_repo_support import S3Repos, aws_env_fixture, s3_fixture, s3_repos_fixture

import versionstore as vs
from versionstore.backend import object as object_backend

__all__ = ["aws_env_fixture", "s3_fixture", "s3_repos_fixture"]

#: Listings of the log (the prefix is URL-encoded or not, depending on the client).
_LOG_LISTINGS = re.compile(r"prefix=[^&]*log(/|%2F)")


@pytest.fixture
def proxy(s3_repos: S3Repos) -> Iterator[Any]:
    yield s3_repos.proxy
    s3_repos.proxy.omit_newest_listed = None


def _own_client(s3_repos: S3Repos, prefix: str, n: int) -> vs.Repository:
    """The repository with a client of its own (as another machine: nothing shared)."""
    return vs.Repository.open(s3_repos.storage(prefix, client_options={"timeout": f"{60 + n}s"}))


def _commit(repo: vs.Repository, key: str) -> str:
    session = repo.writable_session("main")
    session.set_values([(key, key.encode().ljust(700, b"."))])
    return session.commit(key)


def test_opening_after_a_commit_returned_sees_it(s3_repos: S3Repos, proxy: Any) -> None:
    storage = s3_repos.storage()
    writer = vs.Repository.create(storage)
    tip = _commit(writer, "a")
    proxy.omitted = 0
    proxy.omit_newest_listed = _LOG_LISTINGS
    reader = _own_client(s3_repos, storage.prefix, 1)
    assert reader.lookup_branch("main") == tip
    assert proxy.omitted >= 1  # the listing did leave the record out


def test_a_stale_view_that_lists_sees_a_commit_that_returned(
        s3_repos: S3Repos, proxy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = s3_repos.storage()
    writer = vs.Repository.create(storage)
    reader = _own_client(s3_repos, storage.prefix, 2)
    reader.lookup_branch("main")
    monkeypatch.setattr(object_backend, "_STALE_AFTER", 0.0)  # every view lists the log
    tips = []
    proxy.omit_newest_listed = _LOG_LISTINGS
    for n in range(3):
        tips.append(_commit(writer, f"w{n}"))
        assert reader.lookup_branch("main") == tips[-1]


def test_a_writer_whose_listing_is_short_takes_no_used_number(
        s3_repos: S3Repos, proxy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = s3_repos.storage()
    first = vs.Repository.create(storage)
    second = _own_client(s3_repos, storage.prefix, 3)
    second.lookup_branch("main")
    monkeypatch.setattr(object_backend, "_STALE_AFTER", 0.0)
    proxy.omit_newest_listed = _LOG_LISTINGS
    returned = []
    for n in range(4):
        returned.append(_commit(first, f"a{n}"))
        returned.append(_commit(second, f"b{n}"))
    proxy.omit_newest_listed = None
    fresh = _own_client(s3_repos, storage.prefix, 4)
    history = [info.id for info in fresh.ancestry(branch="main")]
    assert history[0] == returned[-1]
    assert set(returned) <= set(history)
    session = fresh.readonly_session(branch="main")
    keys = [f"{w}{n}" for n in range(4) for w in "ab"]
    assert session.read_entries([session.entry(k) for k in keys]) == [
        k.encode().ljust(700, b".") for k in keys]
    assert fresh.verify().ok

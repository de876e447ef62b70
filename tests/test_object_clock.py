"""Clock skew on object storage: a client whose clock is hours off the service's.

Garbage collection's grace period, log retention and the "re-store an object
older than an hour" rule all compare an object's ``Last-Modified`` (the
*service's* clock) with a cut-off. A cut-off computed on the client's clock
moves with the client's error: a collector whose clock ran seven hours ahead
deleted what a live writer had stored a moment before (with the guide's own
``older_than=now - 6 h``), and log records a reader had not read yet.
``ObjectBackend`` now measures the service's clock (docs/format.md, "Clocks")
and these tests hold. The client's clock is skewed by replacing the
``datetime`` the backend and gc read it from; the service's "past" by the
proxy's ``age_matching`` switch (objects answered as stored that long ago).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from object_repo_support import (
    S3Repos,
    aws_env_fixture,
    collect_mid_write,
    s3_fixture,
    s3_repos_fixture,
)

import versionstore as vs
from versionstore import gc as gc_module
from versionstore import session as session_module
from versionstore.backend import object as object_backend
from versionstore.ids import object_id_from_text

__all__ = ["aws_env_fixture", "s3_fixture", "s3_repos_fixture"]


def _skew(monkeypatch: pytest.MonkeyPatch, by: timedelta) -> None:
    """Make this process's clock (as gc and the object backend read it) run ``by`` off."""

    class Skewed(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return datetime.now(tz) + by

    monkeypatch.setattr(gc_module, "datetime", Skewed)
    monkeypatch.setattr(object_backend, "datetime", Skewed)


@pytest.fixture
def storage(s3_repos: S3Repos) -> Iterator[Any]:
    yield s3_repos.storage()
    s3_repos.proxy.age_matching = None
    s3_repos.proxy.deny_matching = None


def _collect_while_a_writer_pauses(s3_repos: S3Repos, storage: Any,
                                   monkeypatch: pytest.MonkeyPatch, ahead: timedelta,
                                   older_than: timedelta | None) -> vs.GCSummary:
    """A writer stores a chunk; before its record, a collector with a fast clock runs."""
    def collect(collector: vs.Repository) -> list[vs.GCSummary]:
        with monkeypatch.context() as patch:
            _skew(patch, ahead)
            cutoff = None if older_than is None else datetime.now(UTC) + ahead - older_than
            return [collector.garbage_collect(cutoff)]

    return collect_mid_write(s3_repos, storage, monkeypatch, hook="_put_objects", key="a/0",
                             value=b"v" * 2000, collect=collect)[0]


def test_a_fast_clock_with_the_guides_six_hours_spares_a_writers_young_chunk(
        s3_repos: S3Repos, storage: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = _collect_while_a_writer_pauses(s3_repos, storage, monkeypatch,
                                             timedelta(hours=7), timedelta(hours=6))
    assert summary.deleted == 0


def test_a_clock_a_day_fast_with_the_default_grace_spares_a_writers_young_chunk(
        s3_repos: S3Repos, storage: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = _collect_while_a_writer_pauses(s3_repos, storage, monkeypatch,
                                             timedelta(hours=25), None)
    assert summary.deleted == 0


def test_a_fast_clock_still_collects_what_its_cutoff_names(
        s3_repos: S3Repos, storage: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # The measured offset moves the cut-off onto the service's clock; it does not
    # turn collection off: "everything unreachable until now" still goes.
    repo = vs.Repository.create(storage)
    first = repo.lookup_branch("main")
    other = repo.writable_session("main")
    other.set_values([("k", b"k" * 2000)])
    other.commit("to be reset away")
    repo.reset_branch("main", first)
    _skew(monkeypatch, timedelta(hours=7))
    this_machines_now = gc_module.datetime.now(UTC)  # seven hours fast
    summary = repo.garbage_collect(this_machines_now + timedelta(seconds=5))
    assert summary.deleted >= 3
    assert repo.verify().ok


def test_a_fast_clock_does_not_compact_young_log_records(
        s3_repos: S3Repos, storage: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Records a newer checkpoint covers are deleted once a day old. Deleted young,
    # a reader whose view is minutes old asks for its next record, finds none and
    # serves old refs; its next commit takes that free number and is lost.
    monkeypatch.setattr(object_backend, "CHECKPOINT_EVERY", 4)
    writer = vs.Repository.create(storage)
    reader = vs.Repository.open(s3_repos.storage(storage.prefix,
                                                 client_options={"timeout": "61s"}))
    collector = vs.Repository.open(s3_repos.storage(storage.prefix,
                                                    client_options={"timeout": "62s"}))
    assert reader.lookup_branch("main") == writer.lookup_branch("main")  # a fresh view
    tips = []
    for n in range(9):
        session = writer.writable_session("main")
        session.set_values([(f"k{n}", bytes([n]) * 700)])
        tips.append(session.commit(f"c{n}"))
    writer.reset_branch("main", tips[-2])  # garbage, so gc deletes (and then compacts)
    writer.reset_branch("main", tips[-1])
    with monkeypatch.context() as patch:
        _skew(patch, timedelta(hours=25))
        collector.garbage_collect(datetime.now(UTC) + timedelta(hours=25, seconds=5))
    assert reader.lookup_branch("main") == tips[-1]  # a commit that returned is seen
    session = reader.writable_session("main")
    session.set_values([("late", b"l" * 700)])
    late = session.commit("after the collection")
    fresh = vs.Repository.open(storage)
    assert fresh.lookup_branch("main") == late
    ancestry = [s.id for s in fresh.ancestry(branch="main")]
    assert set(tips) <= set(ancestry)
    assert fresh.verify().ok


def test_a_slow_clock_still_restores_an_hour_old_object_it_references(
        s3_repos: S3Repos, storage: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # A writer re-referencing an object it did not store asks for it (HEAD) and
    # stores it again if it is older than an hour, so a collection running now
    # finds it young. A client two hours slow took a 90-minute-old object for new.
    repo = vs.Repository.create(storage)
    session = repo.writable_session("main")
    session.set_values([("k", b"k" * 700)])
    base = session.commit("base")
    proxy = s3_repos.proxy
    proxy.age_matching = (re.compile(r"/objects/"), timedelta(minutes=90))
    _skew(monkeypatch, -timedelta(hours=2))
    other = vs.Repository.open(s3_repos.storage(storage.prefix,
                                                client_options={"timeout": "63s"}))
    proxy.reset_counts()
    session = other.writable_session("main")
    session.set_values([("j", b"j" * 700)])
    session.commit("on an old base")
    base_path = f"/{storage.prefix}/objects/{object_id_from_text(base).hex()}"
    puts = [n for path, n in proxy.requests.items()
            if path.startswith("PUT ") and path.endswith(base_path)]
    assert puts == [1], dict(proxy.requests)


def test_read_only_credentials_still_dry_run_a_collection(
        s3_repos: S3Repos, storage: Any) -> None:
    # Reading the service's clock stores a probe object: credentials that may only
    # read use this machine's clock instead (they cannot delete anything either).
    repo = vs.Repository.create(storage)
    first = repo.lookup_branch("main")
    other = repo.writable_session("main")
    other.set_values([("k", b"k" * 2000)])
    other.commit("to be reset away")
    repo.reset_branch("main", first)
    reader = vs.Repository.open(s3_repos.storage(storage.prefix,
                                                 client_options={"timeout": "64s"}))
    s3_repos.proxy.deny_matching = re.compile(r"^(PUT|POST|DELETE) ")
    later = datetime.now(UTC) + timedelta(seconds=5)
    assert reader.garbage_collect(later, dry_run=True).deleted >= 3
    with pytest.raises(vs.StorageAccessDeniedError):
        reader.garbage_collect(later)
    s3_repos.proxy.deny_matching = None
    assert repo.verify().ok


def test_a_fast_clock_keeps_the_grace_period_of_located_writes(
        s3_repos: S3Repos, storage: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Located writes (a chunk's own PUT under stage/, docs/format.md "Located
    # staging") are listed with the service's Last-Modified: the backend moves
    # those times onto this machine's clock, so a collector a day fast still
    # sees a write made a moment ago as young, and a session idle only a moment.
    monkeypatch.setattr(session_module, "_LOGGED_FIRST", 0)  # every chunk located
    repo = vs.Repository.create(storage)
    session = repo.writable_session("main")
    session.set_values([("p/c/0", b"1" * 1000)])
    session.commit("one")
    discarded = repo.writable_session("main")
    discarded.set_values([("p/c/1", b"2" * 1000)])
    discarded.discard_changes()
    collector = vs.Repository.open(s3_repos.storage(storage.prefix,
                                                    client_options={"timeout": "65s"}))
    with monkeypatch.context() as patch:
        _skew(patch, timedelta(hours=25))
        listed = collector.backend.list_located_written()
        skewed_now = object_backend.datetime.now(UTC)
        assert listed and all(abs(skewed_now - when) < timedelta(minutes=5)
                              for _, when in listed)
        assert collector.garbage_collect().deleted == 0  # the default grace: one day
    assert session.session_id in {n.removeprefix("session/")
                                  for n in repo.backend.list_refs("session/")}
    assert repo.verify().ok

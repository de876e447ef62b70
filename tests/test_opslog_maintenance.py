"""The ops log records purge, expire and gc, as it records every other ref change; async twins.

A purge moves branches *and tags*: one ``purge`` entry per moved ref, written
in the same atomic step. ``expire_snapshots`` records its run (a
``repository`` entry) and each branch or tag it deleted; ``garbage_collect``
records a run that deleted something (icechunk's ``ExpirationRanUpdate`` and
``GCRanUpdate``). A refused purge and a dry run record nothing. On both
backends.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

import versionstore as vs


@pytest.fixture(params=["memory", "lmdb"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> vs.Repository:
    storage = vs.in_memory_storage() if request.param == "memory" else vs.lmdb_storage(
        tmp_path / "repo")
    return vs.Repository.create(storage)


def _commit(repo: vs.Repository, branch: str = "main", **values: bytes) -> str:
    session = repo.writable_session(branch)
    for key, value in values.items():
        session.store.storage.set(key.replace("__", "/"), value)
    return session.commit("change")


def _chains(repo: vs.Repository) -> None:
    """Oldest first, each ref's entries chain up to its current value."""
    seen: dict[tuple[str, str], str | None] = {}
    for entry in reversed(list(repo.ops_log())):
        if entry.ref_type == "repository":
            continue
        key = (entry.ref_type, entry.name)
        if key in seen:
            assert entry.old == seen[key], entry
        seen[key] = entry.new
    for name in repo.list_branches():
        assert seen[("branch", name)] == repo.lookup_branch(name)
    for name in repo.list_tags():
        assert seen[("tag", name)] == repo.lookup_tag(name)


def test_purge_records_every_moved_branch_and_tag(repo: vs.Repository) -> None:
    first = _commit(repo, p__c__0=b"secret" * 100, keep=b"k" * 900)
    repo.create_tag("v1", first)
    repo.create_branch("dev", first)
    _commit(repo, "dev", other=b"o" * 900)
    before = len(list(repo.ops_log()))
    result = repo.purge("/p", message="consent withdrawn")
    entries = list(repo.ops_log())
    purged = [e for e in entries[: len(entries) - before]]
    assert {(e.kind, e.ref_type, e.name) for e in purged} == {
        ("purge", "branch", "main"), ("purge", "branch", "dev"), ("purge", "tag", "v1")}
    for entry in purged:
        assert entry.old is not None and result.rewritten[entry.old] == entry.new
        assert entry.message == "purged /p: consent withdrawn"
    assert repo.lookup_tag("v1") == result.rewritten[first]
    _chains(repo)


def test_a_refused_purge_records_nothing(repo: vs.Repository) -> None:
    _commit(repo, p__c__0=b"secret" * 100)
    open_session = repo.writable_session()
    open_session.store.storage.set("draft", b"d" * 900)
    before = list(repo.ops_log())
    with pytest.raises(vs.PurgeBlockedError):
        repo.purge("/p")
    assert list(repo.ops_log()) == before


def test_expire_records_its_run_and_the_refs_it_deleted(repo: vs.Repository) -> None:
    old = _commit(repo, a=b"1" * 900)
    repo.create_branch("stale", old)
    repo.create_tag("old", old)
    _commit(repo, a=b"2" * 900)
    time.sleep(0.01)
    cutoff = datetime.now(UTC)
    _commit(repo, a=b"3" * 900)
    expired = repo.expire_snapshots(cutoff, delete_expired_branches=True,
                                    delete_expired_tags=True)
    assert len(expired) == 2
    entries = [e for e in repo.ops_log() if e.kind == "expire"]
    assert {(e.ref_type, e.name, e.old, e.new) for e in entries} == {
        ("branch", "stale", old, None), ("tag", "old", old, None), ("repository", "", None, None)}
    run = next(e for e in entries if e.ref_type == "repository")
    assert run.message is not None and run.message.startswith("expired 2 snapshot(s)")
    _chains(repo)
    # Nothing left to expire: nothing recorded.
    count = len(list(repo.ops_log()))
    assert repo.expire_snapshots(cutoff) == set()
    assert len(list(repo.ops_log())) == count


def test_gc_records_a_run_that_deleted_something(repo: vs.Repository) -> None:
    _commit(repo, a=b"1" * 900)
    repo.create_branch("tmp", repo.lookup_branch("main"))
    _commit(repo, "tmp", b=b"2" * 900)
    repo.delete_branch("tmp")
    count = len(list(repo.ops_log()))
    assert repo.garbage_collect(dry_run=True).deleted > 0
    assert len(list(repo.ops_log())) == count  # a dry run changes nothing
    summary = repo.garbage_collect()
    assert summary.bytes_deleted == summary.bytes_freed > 0  # icechunk's name too
    entry = next(repo.ops_log())
    assert (entry.kind, entry.ref_type, entry.name) == ("gc", "repository", "")
    assert entry.message == (f"deleted {summary.deleted} object(s), "
                             f"{summary.bytes_freed} bytes")
    assert repo.garbage_collect().deleted == 0
    assert len(list(repo.ops_log())) == count + 1  # nothing deleted: nothing recorded
    assert repo.verify().ok


def test_maintenance_async_twins(repo: vs.Repository) -> None:
    import asyncio

    old = _commit(repo, p__c__0=b"secret" * 200, a=b"1" * 900)
    repo.create_branch("dev", old)
    _commit(repo, "dev", a=b"2" * 900)
    time.sleep(0.01)
    cutoff = datetime.now(UTC)
    tip = _commit(repo, a=b"3" * 900)

    async def run() -> None:
        assert await repo.merge_base_async(tip, repo.lookup_branch("dev")) == old
        session = await repo.rearrange_session_async("main")
        assert session.branch == "main" and not session.read_only
        assert (await repo.du_async()).keys == repo.du().keys
        assert [r.snapshot.id for r in await repo.du_history_async()] == [
            r.snapshot.id for r in repo.du_history()]
        expired = await repo.expire_snapshots_async(cutoff, delete_expired_branches=True)
        assert old in expired and "dev" not in repo.list_branches()
        assert (await repo.garbage_collect_async(dry_run=True)).dry_run
        assert (await repo.garbage_collect_async()).deleted > 0
        purged = await repo.purge_async("/p", message="why")
        assert tip in purged.rewritten
        report = await repo.compact_async()
        assert report.bytes_after <= report.bytes_before
        phases: list[str] = []
        assert (await repo.verify_async(lambda phase, done, total: phases.append(phase))).ok
        assert phases  # told as verify's progress is

    asyncio.run(run())

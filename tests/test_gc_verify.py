"""Garbage collection and verification."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from machine_support import commit_values, either_repo_fixture

import versionstore as vs
from versionstore.ids import ObjectId, object_id_text
from versionstore.records import ChunkRef

__all__ = ["either_repo_fixture"]  # the ``repo`` fixture


def test_gc_keeps_everything_reachable(repo: vs.Repository) -> None:
    first = commit_values(repo, a=b"A" * 2000)
    commit_values(repo, a=b"B" * 2000)
    repo.create_tag("t", snapshot_id=first)
    summary = repo.garbage_collect()
    assert summary.deleted == 0
    assert repo.readonly_session(tag="t").store.storage.get("a") == b"A" * 2000
    assert repo.verify().ok


def test_gc_removes_what_reset_left_behind(repo: vs.Repository) -> None:
    first = commit_values(repo, a=b"A" * 2000)
    commit_values(repo, a=b"B" * 2000, b=b"C" * 3000)
    repo.reset_branch("main", first)
    assert repo.garbage_collect(dry_run=True).deleted > 0
    summary = repo.garbage_collect()
    assert summary.deleted >= 3  # the snapshot, its tree, and two chunks
    assert repo.garbage_collect().deleted == 0
    assert repo.readonly_session("main").store.storage.get("a") == b"A" * 2000
    assert repo.verify().ok


def test_gc_spares_staged_chunks_and_session_bases(repo: vs.Repository) -> None:
    base = commit_values(repo, a=b"A" * 2000)
    session = repo.writable_session("main")
    session.store.storage.set("staged", b"S" * 5000)
    repo.reset_branch("main", repo.lookup_snapshot(base).parent_id or base)
    repo.garbage_collect()
    assert session.store.storage.get("staged") == b"S" * 5000
    assert session.store.storage.get("a") == b"A" * 2000


def test_gc_alongside_a_writer(repo: vs.Repository) -> None:
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for n in range(150):
                commit_values(repo, **{f"k{n % 5}": bytes([n % 256]) * 1000})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    collections = 0
    while thread.is_alive() and collections < 50:
        try:
            repo.garbage_collect()
        except vs.VersionStoreError:
            pass  # gave up under constant change: allowed, never harmful
        collections += 1
    thread.join(120)
    assert not thread.is_alive() and not errors
    repo.garbage_collect()  # with the writer done it must succeed
    assert repo.verify().ok
    assert len(list(repo.ancestry(branch="main"))) == 151


def test_verify_finds_corruption(repo: vs.Repository) -> None:
    commit_values(repo, a=b"A" * 2000, b=b"tiny")
    entry = repo.readonly_session("main").entry("a")
    assert isinstance(entry, ChunkRef)
    data = repo.backend.get_objects([entry.chunk_id])[0]
    assert data is not None
    repo.backend.delete_objects([entry.chunk_id])
    repo.backend.put_objects([(ObjectId(entry.chunk_id), data[:-1] + b"!")])
    report = repo.verify()
    assert not report.ok and len(report.problems) == 1
    assert "checksum" in report.problems[0]
    repo.backend.delete_objects([entry.chunk_id])
    assert "missing" in repo.verify().problems[0]


def test_verify_says_when_the_refs_never_stood_still(repo: vs.Repository,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Missing objects seen while other processes keep moving refs are not a verdict."""
    commit_values(repo, a=b"A" * 2000)
    entry = repo.readonly_session("main").entry("a")
    assert isinstance(entry, ChunkRef)
    repo.backend.delete_objects([entry.chunk_id])
    real = repo.backend.list_refs
    calls = iter(range(1_000))

    def moving(prefix: str, limit: int | None = None) -> dict[str, bytes]:
        refs = dict(real(prefix, limit))
        if prefix == "" and next(calls) % 2:  # every other look differs: refs keep moving
            refs.pop("branch/main")
        return refs

    monkeypatch.setattr(repo.backend, "list_refs", moving)
    report = repo.verify()
    assert not report.ok
    assert any("missing" in problem for problem in report.problems)
    assert "moved during every check" in report.problems[-1]
    monkeypatch.undo()
    settled = repo.verify()  # nothing moves: the missing chunk is a plain verdict
    assert not any("moved" in problem for problem in settled.problems)
    assert "missing" in settled.problems[0]


def test_verify_after_expire_and_gc_in_the_same_repository_object(tmp_path: Path) -> None:
    """``verify`` right after ``expire_snapshots`` and ``garbage_collect`` of the same object.

    Expiring read the snapshots it cut out into the repository's cache; the
    collection then deleted them, and ``verify`` recomputed the tip's
    recorded sizes from its (cached) expired parent, whose tree was gone:
    "cannot check recorded sizes: ... tree node is missing", on a healthy
    repository that a fresh ``Repository.open`` verified clean. The parent's
    existence is now asked of the storage.
    """
    path = tmp_path / "repo"
    vs.Repository.create(vs.lmdb_storage(path)).close()
    for number in range(3):  # written by another repository object: nothing cached here
        with vs.Repository.open(vs.lmdb_storage(path)) as writer:
            session = writer.writable_session("main")
            session.set_values([("k/x", bytes([number]) * 8)])
            session.commit(f"commit {number}")
    with vs.Repository.open(vs.lmdb_storage(path)) as repo:
        repo.expire_snapshots(datetime.now(UTC))
        repo.garbage_collect(datetime.now(UTC))
        report = repo.verify()
        assert report.ok, report.problems
        assert [info.message for info in repo.ancestry(branch="main")] == [
            "commit 2", "Repository initialized"]


def test_verify_reports_damaged_pages_instead_of_raising(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A damaged page of ``data.mdb`` under a chunk or the gc ledger is a problem, not a raise.

    Garbage written over such pages made ``verify()`` (and ``versionstore verify``)
    stop at the first with ``CorruptRepositoryError`` or ``BackendError``
    ("MDB_BAD_TXN"), reporting nothing else; history it cannot walk was
    already a problem. Reads of the damaged pages are simulated here.
    """
    repo = vs.Repository.create(vs.lmdb_storage(tmp_path / "repo"))
    commit_values(repo, a=b"A" * 2000, b=b"B" * 3000)
    repo.garbage_collect()  # so that the ledger has a header, and is checked
    entry = repo.readonly_session("main").entry("a")
    assert isinstance(entry, ChunkRef)
    damaged = ObjectId(entry.chunk_id)
    real = repo.backend.get_objects

    def get_objects(ids: list[ObjectId]) -> list[bytes | None]:
        if damaged in ids:
            raise vs.CorruptRepositoryError("mdb_get: MDB_CORRUPTED: Located page was wrong type")
        return real(ids)

    def ledger_contents() -> None:
        raise vs.BackendError("mdb_cursor_get: MDB_BAD_TXN: Transaction must abort")

    monkeypatch.setattr(repo.backend, "get_objects", get_objects)
    monkeypatch.setattr(repo.backend, "ledger_contents", ledger_contents)
    report = repo.verify()
    assert not report.ok
    unreadable = [p for p in report.problems if "cannot be read" in p]
    assert len(unreadable) == 1 and "MDB_CORRUPTED" in unreadable[0], report.problems
    assert unreadable[0].startswith(object_id_text(damaged))
    assert any("cannot check the gc ledger" in p and "MDB_BAD_TXN" in p
               for p in report.problems), report.problems
    assert report.objects_checked > 2  # the readable ones were checked


def test_verify_raises_when_the_store_cannot_be_asked(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """An unreachable store says nothing about the objects: ``verify`` raises, reports nothing.

    Only a read that fails on the objects themselves (a damaged page) becomes
    a problem; a network outage must not list every object as unreadable.
    """
    repo = vs.Repository.create(vs.lmdb_storage(tmp_path / "repo"))
    commit_values(repo, a=b"A" * 2000)

    def get_objects(ids: list[ObjectId]) -> list[bytes | None]:
        raise vs.StorageUnreachableError("connection refused")

    monkeypatch.setattr(repo.backend, "get_objects", get_objects)
    with pytest.raises(vs.StorageUnreachableError, match="connection refused"):
        repo.verify()


def test_refs_that_cannot_be_read_are_reported_kind_by_kind(
        repo: vs.Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    # A damaged page under the tags (say): the one read of every ref fails, and verify
    # used to raise that one opaque error. It reads the refs kind by kind instead,
    # reports the kinds it cannot read, and checks what the others reach.
    commit_values(repo, "main", a=b"1" * 5000)
    repo.create_tag("v1", repo.lookup_branch("main"))
    backend = type(repo.backend)
    list_refs = backend.list_refs

    def damaged(self: object, prefix: str, limit: int | None = None) -> dict[str, bytes]:
        if prefix in ("", "tag/"):
            raise vs.CorruptRepositoryError(f"data.mdb is damaged while listing {prefix!r}")
        return list_refs(self, prefix, limit)  # type: ignore[arg-type]

    monkeypatch.setattr(backend, "list_refs", damaged)
    report = repo.verify()
    assert [p for p in report.problems if p.startswith("refs ")] == [
        "refs 'tag': cannot be read: data.mdb is damaged while listing 'tag/'"]
    assert report.objects_checked > 0  # main's snapshots and the chunk were checked

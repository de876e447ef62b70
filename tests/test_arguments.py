"""Every public entry point checks its arguments: a clear TypeError, never an AttributeError.

Also: a plain path opens an LMDB repository, a snapshot id passed where a branch
goes gets a hint, ``main`` is protected (not an invalid name), and two in-memory
storages are equal only when they are one repository.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import zarr

import versionstore as vs
from versionstore import errors


@pytest.fixture
def repo() -> Iterator[vs.Repository]:
    repository = vs.Repository.create(vs.in_memory_storage())
    yield repository
    repository.close()


@pytest.mark.parametrize("as_path", [str, Path, os.fsencode], ids=["str", "Path", "bytes"])
def test_a_path_means_an_lmdb_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        as_path: Callable[[str], Any]) -> None:
    monkeypatch.chdir(tmp_path)
    if as_path is os.fsencode:  # bytes paths are refused by name, not half-accepted
        with pytest.raises(TypeError, match="lmdb_storage"):
            vs.Repository.create(as_path("repo"))
        return
    assert not vs.Repository.exists(as_path("repo"))
    with vs.Repository.create(as_path("repo")) as repo:
        assert repo.storage == vs.lmdb_storage(tmp_path / "repo")
        session = repo.writable_session("main")
        zarr.create_array(session.store, name="a", shape=(3,), dtype="i4")[:] = 7
        session.commit("first")
    assert vs.Repository.exists(as_path("repo"))
    with vs.Repository.open(as_path("repo")) as repo:
        array = zarr.open_array(repo.readonly_session().store, path="a", mode="r")
        assert list(array[:]) == [7] * 3
    with vs.Repository.open_or_create(as_path("repo")) as repo:
        assert len(list(repo.ancestry())) == 2
    with vs.Repository.open_or_create(as_path("other")) as repo:
        assert len(list(repo.ancestry())) == 1
    assert (tmp_path / "other" / "data.mdb").exists()


@pytest.mark.parametrize("method", ["create", "open", "open_or_create", "exists"])
@pytest.mark.parametrize("bad", [3, None, {"path": "x"}, zarr.storage.MemoryStore()],
                         ids=["int", "None", "dict", "zarr-store"])
def test_constructors_refuse_other_types_by_name(method: str, bad: object) -> None:
    with pytest.raises(TypeError, match=r"storage must be a repository storage.*"
                                        r"vs\.lmdb_storage\(path\), vs\.in_memory_storage\(\)"):
        getattr(vs.Repository, method)(bad)


def test_a_zarr_store_gets_a_pointer_to_session_store() -> None:
    with pytest.raises(TypeError, match=r"write to session\.store"):
        vs.Repository.create(zarr.storage.MemoryStore())


@pytest.mark.parametrize("bad", [3, None, b"repo", ["repo"]])
def test_lmdb_storage_refuses_non_paths(bad: object) -> None:
    with pytest.raises(TypeError, match=r"str or os\.PathLike"):
        vs.lmdb_storage(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="durable must be True or False"):
        vs.lmdb_storage("repo", durable="yes")  # type: ignore[arg-type]


def test_an_empty_repository_path_is_refused_not_taken_as_the_working_directory() -> None:
    for make in (vs.lmdb_storage, vs.Repository.create, vs.Repository.open):
        with pytest.raises(ValueError, match="must not be empty"):
            make("")  # type: ignore[operator]


def _calls(repo: vs.Repository, snapshot: str, info: vs.SnapshotInfo
           ) -> dict[str, tuple[Callable[[], object], str]]:
    """Each public entry point with one wrong-type argument, and the parameter it names."""
    return {
        "writable_session(branch)": (lambda: repo.writable_session(3), "branch"),  # type: ignore[arg-type]
        "writable_session(resume)": (lambda: repo.writable_session(resume=1), "resume"),  # type: ignore[arg-type]
        "readonly_session(branch)": (lambda: repo.readonly_session(3), "branch"),  # type: ignore[arg-type]
        "readonly_session(tag)": (lambda: repo.readonly_session(tag=3), "tag"),  # type: ignore[arg-type]
        "readonly_session(snapshot_id)": (
            lambda: repo.readonly_session(snapshot_id=info), "snapshot_id"),  # type: ignore[arg-type]
        "readonly_session(as_of)": (
            lambda: repo.readonly_session(as_of="2024-01-01"), "as_of"),  # type: ignore[arg-type]
        "create_branch(name)": (lambda: repo.create_branch(None, snapshot), "name"),  # type: ignore[arg-type]
        "create_branch(snapshot_id)": (
            lambda: repo.create_branch("dev", snapshot_id=info), "snapshot_id"),  # type: ignore[arg-type]
        "create_tag(name)": (lambda: repo.create_tag(1.5, snapshot), "name"),  # type: ignore[arg-type]
        "create_tag(snapshot_id)": (
            lambda: repo.create_tag("v1", snapshot_id=b"x"), "snapshot_id"),  # type: ignore[arg-type]
        "reset_branch(name)": (lambda: repo.reset_branch(["main"], snapshot), "name"),  # type: ignore[arg-type]
        "reset_branch(snapshot_id)": (
            lambda: repo.reset_branch("main", snapshot_id=None), "snapshot_id"),  # type: ignore[arg-type]
        "delete_branch(name)": (lambda: repo.delete_branch(0), "name"),  # type: ignore[arg-type]
        "delete_tag(name)": (lambda: repo.delete_tag(0), "name"),  # type: ignore[arg-type]
        "lookup_branch(name)": (lambda: repo.lookup_branch(0), "name"),  # type: ignore[arg-type]
        "lookup_tag(name)": (lambda: repo.lookup_tag(0), "name"),  # type: ignore[arg-type]
        "lookup_snapshot(snapshot_id)": (lambda: repo.lookup_snapshot(info), "snapshot_id"),  # type: ignore[arg-type]
        "ancestry(branch)": (lambda: list(repo.ancestry(branch=1)), "branch"),  # type: ignore[arg-type]
        "ancestry(tag)": (lambda: list(repo.ancestry(tag=1)), "tag"),  # type: ignore[arg-type]
        "ancestry(snapshot_id)": (lambda: list(repo.ancestry(snapshot_id=1)), "snapshot_id"),  # type: ignore[arg-type]
        "diff(from_branch)": (lambda: repo.diff(from_branch=1, to_branch="main"), "from_branch"),  # type: ignore[arg-type]
        "diff(to_tag)": (lambda: repo.diff(from_branch="main", to_tag=1), "to_tag"),  # type: ignore[arg-type]
        "diff(from_snapshot_id)": (
            lambda: repo.diff(from_snapshot_id=info, to_branch="main"), "from_snapshot_id"),  # type: ignore[arg-type]
        "diff(to_snapshot_id)": (
            lambda: repo.diff(from_branch="main", to_snapshot_id=2), "to_snapshot_id"),  # type: ignore[arg-type]
        "garbage_collect(dry_run)": (lambda: repo.garbage_collect(dry_run="no"), "dry_run"),  # type: ignore[arg-type]
        "garbage_collect(progress)": (lambda: repo.garbage_collect(progress=3), "progress"),  # type: ignore[arg-type]
        "verify(progress)": (lambda: repo.verify(progress=3), "progress"),  # type: ignore[arg-type]
        "commit(allow_empty)": (  # a str such as "no" would have recorded an empty snapshot
            lambda: repo.writable_session("main").commit("c", allow_empty="no"), "allow_empty"),  # type: ignore[arg-type]
        "open(virtual_chunk_stores)": (
            lambda: vs.Repository.open(repo.storage, virtual_chunk_stores=3),  # type: ignore[arg-type]
            "virtual_chunk_stores"),
        "create(virtual_chunk_stores)": (
            lambda: vs.Repository.create(vs.in_memory_storage(), virtual_chunk_stores=["x"]),  # type: ignore[arg-type]
            "virtual_chunk_stores"),
        "open(check_virtual_checksums)": (
            lambda: vs.Repository.open(repo.storage, check_virtual_checksums="no"),  # type: ignore[arg-type]
            "check_virtual_checksums"),
    }


def test_every_entry_point_names_the_wrong_argument(repo: vs.Repository) -> None:
    snapshot = repo.lookup_branch("main")
    info = repo.lookup_snapshot(snapshot)
    for name, (call, parameter) in _calls(repo, snapshot, info).items():
        with pytest.raises(TypeError) as caught:
            call()
        assert str(caught.value).startswith(f"{parameter} must be"), (name, caught.value)
    # Nothing was changed by the refused calls.
    assert repo.list_branches() == {"main"} and repo.list_tags() == set()
    assert [i.id for i in repo.ancestry()] == [snapshot]


def test_a_snapshot_info_gets_a_hint_to_its_id(repo: vs.Repository) -> None:
    info = repo.lookup_snapshot(repo.lookup_branch("main"))
    with pytest.raises(TypeError, match=rf"did you mean its \.id, '{info.id}'"):
        repo.create_tag("v1", snapshot_id=info)  # type: ignore[arg-type]
    session = repo.readonly_session()
    with pytest.raises(TypeError, match=r"did you mean its \.snapshot_id"):
        repo.create_tag("v1", snapshot_id=session)  # type: ignore[arg-type]


def test_naive_as_of_says_timezone_aware(repo: vs.Repository) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        repo.readonly_session("main", as_of=datetime(2024, 1, 1))


def test_a_positional_snapshot_id_suggests_snapshot_id(repo: vs.Repository) -> None:
    snapshot = repo.lookup_branch("main")
    with pytest.raises(vs.BranchNotFoundError,
                       match=rf"did you mean snapshot_id='{snapshot}'\?") as caught:
        repo.readonly_session(snapshot)
    assert caught.value.name == snapshot
    assert repo.readonly_session(snapshot_id=snapshot).snapshot_id == snapshot
    with pytest.raises(vs.BranchNotFoundError, match=r"create_branch\(name, snapshot_id=\.\.\.\)"):
        repo.writable_session(snapshot)
    # A plain missing branch gets no such hint, and a branch that happens to look
    # like an id is still a branch.
    with pytest.raises(vs.BranchNotFoundError) as plain:
        repo.readonly_session("nope")
    assert str(plain.value) == "branch 'nope' does not exist"
    lookalike = "A" * 32
    repo.create_branch(lookalike, snapshot_id=snapshot)
    assert repo.readonly_session(lookalike).snapshot_id == snapshot


def test_main_is_protected_not_invalid(repo: vs.Repository) -> None:
    with pytest.raises(vs.ProtectedBranchError, match="main branch cannot be deleted") as caught:
        repo.delete_branch("main")
    assert not isinstance(caught.value, vs.InvalidRefNameError)
    assert isinstance(caught.value, ValueError) and caught.value.name == "main"
    assert "main" in repo.list_branches()


def test_nothing_to_commit_lives_in_errors(repo: vs.Repository) -> None:
    assert vs.NothingToCommitError is errors.NothingToCommitError
    with pytest.raises(errors.NothingToCommitError):
        repo.writable_session("main").commit("empty")


def test_in_memory_storages_are_equal_only_when_one_repository() -> None:
    first, second = vs.in_memory_storage(), vs.in_memory_storage()
    assert first != second and hash(first) != hash(second)
    assert first == first and len({first, second, first}) == 2
    copy = pickle.loads(pickle.dumps(first))
    assert copy == first and hash(copy) == hash(first) and copy != second
    repo = vs.Repository.create(first)
    assert vs.Repository.exists(copy) and not vs.Repository.exists(second)
    session = pickle.loads(pickle.dumps(repo.writable_session("main")))
    assert session.repository.storage == first


def test_metadata_and_messages_that_cannot_be_stored_are_named(repo: vs.Repository) -> None:
    # merge(metadata=[1]) failed inside dict(); a lone surrogate (text decoded with
    # errors="surrogateescape") surfaced as a raw UnicodeEncodeError from msgpack.
    first = repo.lookup_branch("main")
    repo.create_branch("dev", first)
    session = repo.writable_session("dev")
    session.set_values([("k", b"v")])
    session.commit("on dev")
    with pytest.raises(TypeError, match="metadata must be a dict"):
        repo.merge("dev", "main", metadata=[1])  # type: ignore[arg-type]
    for message, metadata in (("bad \ud800", None), ("ok", {"a": "\udc80"}),
                              ("ok", {"\udc80": 1})):
        session = repo.writable_session("main")
        session.set_values([("x", b"1")])
        with pytest.raises(ValueError, match="not valid Unicode"):
            session.commit(message, metadata=metadata)
        assert session.staged("") != {}  # kept for a commit with a better message
    assert repo.lookup_branch("main") == first


def test_progress_is_asked_for_alike_everywhere(repo: vs.Repository) -> None:
    # verify(progress=False) was a TypeError while push/fetch/clone take False.
    seen: list[tuple[str, int, int]] = []
    for progress in (None, False, True, lambda *step: seen.append(step)):
        assert repo.verify(progress=progress).ok
        assert repo.garbage_collect(progress=progress).deleted == 0
    assert seen  # the callable was told

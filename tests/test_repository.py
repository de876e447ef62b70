"""Repository and session semantics through the public API, on both backends."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import versionstore as vs

BACKENDS: dict[str, Callable[[Path], Any]] = {
    "memory": lambda tmp: vs.in_memory_storage(),
    "lmdb": lambda tmp: vs.lmdb_storage(tmp / "repo"),
}


@pytest.fixture(params=sorted(BACKENDS))
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    return BACKENDS[request.param](tmp_path)


@pytest.fixture
def repo(storage: Any) -> Iterator[vs.Repository]:
    repository = vs.Repository.create(storage)
    yield repository
    repository.close()


def commit(repo: vs.Repository, values: dict[str, bytes], message: str = "c",
           branch: str = "main", **metadata: Any) -> str:
    session = repo.writable_session(branch)
    for key, value in values.items():
        session.store.storage.set(key, value)
    return session.commit(message, metadata=metadata)


def content(session: vs.Session) -> dict[str, bytes | None]:
    storage = session.store.storage
    return {key: storage.get(key) for key in storage.list()}


# -- creating and opening ------------------------------------------------------------------


def test_initial_snapshot_on_main(repo: vs.Repository) -> None:
    assert repo.list_branches() == {"main"}
    [initial] = list(repo.ancestry(branch="main"))
    assert initial.parent_id is None and initial.message == "Repository initialized"
    assert repo.lookup_branch("main") == initial.id
    assert content(repo.readonly_session("main")) == {}


def test_create_twice_raises_and_touches_nothing(storage: Any) -> None:
    repo = vs.Repository.create(storage)
    first = commit(repo, {"k": b"v"})
    with pytest.raises(vs.RepositoryExistsError):
        vs.Repository.create(storage)
    assert repo.lookup_branch("main") == first
    assert vs.Repository.exists(storage)
    again = vs.Repository.open_or_create(storage)
    assert again.lookup_branch("main") == first


def test_open_missing_repository(tmp_path: Path) -> None:
    storage = vs.lmdb_storage(tmp_path / "nothing")
    assert not vs.Repository.exists(storage)
    assert not (tmp_path / "nothing").exists(), "exists() must not create files"
    with pytest.raises(vs.RepositoryNotFoundError):
        vs.Repository.open(storage)


def test_open_says_what_the_path_is_when_it_holds_no_repository(tmp_path: Path) -> None:
    # A new user opens the wrong thing: a missing path, a file, an empty directory,
    # or the plain Zarr store they meant to version. The message tells them apart
    # and names the way on, and nothing is created in any of them.
    import zarr

    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    zarr.create_array(str(tmp_path / "plain.zarr"), shape=(3,), dtype="i4")
    expected = {
        "missing": "does not exist",
        "notes.txt": "is a file",
        "empty": "directory is empty",
        "plain.zarr": r"plain Zarr store.*vs\.import_zarr",
    }
    for name, message in expected.items():
        before = sorted(p.name for p in tmp_path.rglob("*"))
        with pytest.raises(vs.RepositoryNotFoundError, match=f"no repository in .*{message}"):
            vs.Repository.open(tmp_path / name)
        assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_open_on_an_icechunk_repository_says_so_and_how_to_copy_it(tmp_path: Path) -> None:
    # Someone coming from icechunk points Repository.open at their repository.
    icechunk = pytest.importorskip(
        "icechunk", reason="icechunk is only in the bench extra; this checks its on-disk layout")
    import zarr

    ice = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "ice")))
    session = ice.writable_session("main")
    zarr.create_array(session.store, name="t", shape=(3,), dtype="f4")[:] = 1
    session.commit("icechunk data")
    with pytest.raises(vs.RepositoryNotFoundError,
                       match=r"looks like an icechunk repository.*vs\.import_zarr"):
        vs.Repository.open(tmp_path / "ice")
    # ... and the way the message gives works.
    repo = vs.Repository.create(tmp_path / "repo")
    copy = repo.writable_session("main")
    vs.import_zarr(ice.readonly_session("main").store, copy)
    copy.commit("from icechunk")
    assert zarr.open_array(repo.readonly_session().store, path="t", mode="r")[2] == 1


def test_create_on_an_existing_repository_says_to_open_it(tmp_path: Path) -> None:
    vs.Repository.create(tmp_path / "repo").close()
    with pytest.raises(vs.RepositoryExistsError, match=r"open it with Repository\.open"):
        vs.Repository.create(tmp_path / "repo")


def test_a_session_used_after_close_says_how_to_get_back(tmp_path: Path) -> None:
    # Sessions keep their repository's backend: after ``repo.close()`` each use
    # says what happened and how to reopen, and the staged writes survive for it.
    import zarr

    repo = vs.Repository.create(tmp_path / "repo")
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="t", shape=(2,), dtype="i4")[:] = 7
    repo.close()
    for use in (lambda: zarr.open_array(session.store, path="t")[0],
                lambda: session.commit("after close")):
        with pytest.raises(vs.BackendError, match=r"is closed \(repo\.close\(\) was called\); "
                           r"reopen it with vs\.Repository\.open\("):
            use()
    again = vs.Repository.open(tmp_path / "repo")
    resumed = again.writable_session("main", resume=session.session_id)
    resumed.commit("resumed")
    assert zarr.open_array(again.readonly_session().store, path="t", mode="r")[1] == 7


def test_version_mistakes_name_the_parameters_to_use() -> None:
    # A tag given where a branch goes, and diff without (or with two) versions on a
    # side: the message names the parameters of the call that was made.
    repo = vs.Repository.create(vs.in_memory_storage())
    repo.create_tag("v1", snapshot_id=repo.lookup_branch("main"))
    with pytest.raises(vs.BranchNotFoundError, match=r"it is a tag: did you mean tag='v1'\?"):
        repo.readonly_session("v1")
    with pytest.raises(ValueError, match="give one of from_branch, from_tag or from_snapshot_id"):
        repo.diff(to_branch="main")
    with pytest.raises(ValueError, match="give only one of to_branch, to_tag or to_snapshot_id"):
        repo.diff(from_tag="v1", to_branch="main", to_tag="v1")
    with pytest.raises(ValueError, match="give only one of branch, tag or snapshot_id"):
        repo.readonly_session("main", tag="v1")
    assert not repo.diff(from_tag="v1", to_branch="main").updated_chunks


def test_a_url_given_as_a_path_is_refused_naming_the_object_storages(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As a path, "s3://bucket/x" would be the local directory "s3:/bucket/x".
    monkeypatch.chdir(tmp_path)
    for call in (vs.Repository.open, vs.Repository.create, vs.Repository.exists):
        with pytest.raises(ValueError, match=r"'s3://bucket/era5' looks like a URL.*s3_storage"):
            call("s3://bucket/era5")
    assert not list(tmp_path.iterdir())
    vs.Repository.create("./odd://name").close()  # a directory so named, said explicitly
    assert vs.Repository.exists(tmp_path / "odd:" / "name")


def test_a_branch_or_tag_given_as_a_snapshot_id_says_how_to_get_its_id() -> None:
    # git takes a branch where a commit goes; here a snapshot id is asked for.
    # "experiment" is also a valid id prefix (base32 letters): the same hint.
    repo = vs.Repository.create(vs.in_memory_storage())
    tip = repo.lookup_branch("main")
    repo.create_tag("v1", snapshot_id=tip)
    repo.create_branch("experiment", snapshot_id=tip)
    for call, message in [
        (lambda: repo.create_tag("v2", "main"), r"'main' is a branch; .*lookup_branch\('main'\)"),
        (lambda: repo.create_branch("b", "v1"), r"'v1' is a tag; .*lookup_tag\('v1'\)"),
        (lambda: repo.readonly_session(snapshot_id="experiment"), r"lookup_branch\('experiment'"),
    ]:
        with pytest.raises(vs.SnapshotNotFoundError, match=message):
            call()
    with pytest.raises(vs.SnapshotNotFoundError, match=r"^snapshot 'nope' does not exist$"):
        repo.readonly_session(snapshot_id="nope")
    # A git-length prefix copied from ``log`` (ids are 32 characters; prefixes need 8).
    with pytest.raises(vs.SnapshotNotFoundError, match="prefix needs at least 8 characters"):
        repo.readonly_session(snapshot_id=tip[:4])
    assert repo.readonly_session(snapshot_id=tip[:8]).snapshot_id == tip


def test_open_finds_no_repository_in_an_environment_without_one(tmp_path: Path) -> None:
    # ``open`` reads the format record and ``main`` on the one backend it opens: an
    # LMDB environment holding neither is no repository, and is released again.
    import gc

    from zarrstore import lmdb_environment
    from zarrstore.lmdb_environment import EnvironmentHandle

    handle = EnvironmentHandle(tmp_path / "env", databases=(b"objects", b"refs", b"gc"))
    handle.close()
    with pytest.raises(vs.RepositoryNotFoundError, match="holds no repository"):
        vs.Repository.open(vs.lmdb_storage(tmp_path / "env"))
    gc.collect()
    assert str((tmp_path / "env").resolve()) not in lmdb_environment._registry
    with pytest.raises(vs.RepositoryNotFoundError):
        vs.Repository.open(vs.in_memory_storage())


def test_several_repository_objects_share_one_directory(tmp_path: Path) -> None:
    storage = vs.lmdb_storage(tmp_path / "repo")
    a = vs.Repository.create(storage)
    b = vs.Repository.open(storage)
    snapshot = commit(a, {"x": b"1"})
    assert b.lookup_branch("main") == snapshot
    a.close()
    assert content(b.readonly_session("main")) == {"x": b"1"}


# -- snapshots and metadata ---------------------------------------------------------------


def test_commit_records_message_time_and_exact_metadata(repo: vs.Repository) -> None:
    metadata = {"run": 3, "tags": ["a", "b"], "pair": (1, 2), "nested": {"x": None, "y": 1.5},
                "raw": b"\x00\x01", "when": datetime(2020, 1, 2, tzinfo=UTC)}
    before = datetime.now(UTC)
    snapshot = commit(repo, {"k": b"v"}, "first", **metadata)
    info = repo.lookup_snapshot(snapshot)
    assert info.message == "first" and info.metadata == metadata
    assert info.written_at.tzinfo is not None and info.written_at.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= info.written_at <= datetime.now(UTC)
    assert isinstance(info.metadata["pair"], tuple)


def test_unstorable_metadata_is_refused_before_anything_changes(repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    session.store.storage.set("k", b"v")
    with pytest.raises(TypeError, match="cannot store"):
        session.commit("bad", metadata={"x": object()})
    assert session.has_uncommitted_changes
    assert len(list(repo.ancestry(branch="main"))) == 1


def test_nothing_to_commit(repo: vs.Repository) -> None:
    # The message says what to do: write first, or commit an empty snapshot on purpose.
    with pytest.raises(vs.NothingToCommitError,
                       match=r"no changes are staged \(write through session\.store first, "
                             r"or pass allow_empty=True"):
        repo.writable_session("main").commit("empty")
    assert repo.writable_session("main").commit("empty", allow_empty=True)


def test_snapshots_are_immutable_time_travel(repo: vs.Repository) -> None:
    first = commit(repo, {"a": b"1", "big": b"x" * 5000})
    second = commit(repo, {"a": b"2", "b": b"new"})
    session = repo.writable_session("main")
    session.store.storage.erase("big")
    third = session.commit("erase")
    assert content(repo.readonly_session(snapshot_id=first)) == {"a": b"1", "big": b"x" * 5000}
    assert content(repo.readonly_session(snapshot_id=second)) == {
        "a": b"2", "b": b"new", "big": b"x" * 5000}
    assert content(repo.readonly_session(snapshot_id=third)) == {"a": b"2", "b": b"new"}
    assert [i.id for i in repo.ancestry(branch="main")][:3] == [third, second, first]


def test_as_of_picks_newest_snapshot_at_or_before(repo: vs.Repository) -> None:
    first = commit(repo, {"v": b"1"})
    second = commit(repo, {"v": b"2"})
    t1 = repo.lookup_snapshot(first).written_at
    t2 = repo.lookup_snapshot(second).written_at
    assert repo.readonly_session("main", as_of=t1).snapshot_id == first
    assert repo.readonly_session("main", as_of=t2).snapshot_id == second
    tokyo = timezone(timedelta(hours=9))
    assert repo.readonly_session("main", as_of=t1.astimezone(tokyo)).snapshot_id == first
    with pytest.raises(vs.SnapshotNotFoundError):
        repo.readonly_session("main", as_of=t1 - timedelta(days=365))
    with pytest.raises(ValueError, match="timezone-aware"):
        repo.readonly_session("main", as_of=datetime(2020, 1, 1))


# -- branches and tags -----------------------------------------------------------------------


def test_branches_move_only_by_commit_or_reset(repo: vs.Repository) -> None:
    first = commit(repo, {"k": b"1"})
    repo.create_branch("dev", snapshot_id=first)
    dev = commit(repo, {"k": b"dev"}, branch="dev")
    assert repo.lookup_branch("dev") == dev and repo.lookup_branch("main") == first
    assert content(repo.readonly_session("main")) == {"k": b"1"}
    repo.reset_branch("main", dev)
    assert repo.lookup_branch("main") == dev
    repo.reset_branch("main", first)
    assert content(repo.readonly_session("main")) == {"k": b"1"}
    repo.delete_branch("dev")
    assert repo.list_branches() == {"main"}
    with pytest.raises(vs.BranchNotFoundError):
        repo.lookup_branch("dev")
    assert repo.lookup_snapshot(dev).message == "c", "deleted branches keep their snapshots"


def test_branch_errors(repo: vs.Repository) -> None:
    first = repo.lookup_branch("main")
    with pytest.raises(vs.RefExistsError):
        repo.create_branch("main", snapshot_id=first)
    with pytest.raises(vs.InvalidRefNameError):
        repo.create_branch("../evil", snapshot_id=first)
    with pytest.raises(vs.ProtectedBranchError):
        repo.delete_branch("main")
    with pytest.raises(vs.SnapshotNotFoundError):
        repo.create_branch("x", snapshot_id="A" * 32)
    with pytest.raises(vs.SnapshotNotFoundError):
        repo.create_branch("x", snapshot_id="not-an-id")
    with pytest.raises(vs.BranchNotFoundError):
        repo.writable_session("nope")


def test_tags_never_move(repo: vs.Repository) -> None:
    first = commit(repo, {"k": b"1"})
    second = commit(repo, {"k": b"2"})
    repo.create_tag("v1", snapshot_id=first)
    assert repo.lookup_tag("v1") == first and repo.list_tags() == {"v1"}
    with pytest.raises(vs.RefExistsError):
        repo.create_tag("v1", snapshot_id=second)
    assert content(repo.readonly_session(tag="v1")) == {"k": b"1"}
    repo.delete_tag("v1")
    assert repo.list_tags() == set()
    with pytest.raises(vs.TagNotFoundError):
        repo.lookup_tag("v1")
    with pytest.raises(vs.ImmutableTagError):
        repo.create_tag("v1", snapshot_id=second)
    with pytest.raises(vs.TagNotFoundError):
        repo.delete_tag("v1")


# -- sessions ------------------------------------------------------------------------------


def test_read_only_sessions_refuse_commits_and_writes(repo: vs.Repository) -> None:
    session = repo.readonly_session("main")
    assert session.read_only and session.branch is None
    with pytest.raises(vs.ReadOnlySessionError):
        session.commit("no")
    with pytest.raises(ValueError, match="read-only"):
        session.store.storage.set("k", b"v")


def test_status_and_discard(repo: vs.Repository) -> None:
    commit(repo, {"keep": b"1", "gone": b"2"})
    session = repo.writable_session("main")
    assert not session.has_uncommitted_changes and session.status().is_empty()
    session.store.storage.set("new", b"3")
    session.store.storage.erase("gone")
    session.store.storage.erase("never-existed")
    assert session.status().updated_keys == {"new", "gone"}
    session.discard_changes()
    assert not session.has_uncommitted_changes
    assert content(session) == {"keep": b"1", "gone": b"2"}


def test_staged_writes_are_durable_and_resumable(storage: Any) -> None:
    repo = vs.Repository.create(storage)
    session = repo.writable_session("main")
    session.store.storage.set("small", b"s")
    session.store.storage.set("large", b"L" * 10_000)
    session_id = session.session_id
    assert session_id is not None
    del session
    again = vs.Repository.open(storage)  # as a new kernel would
    assert again.resumable_sessions() == {session_id: "main"}
    resumed = again.writable_session("main", resume=session_id)
    assert resumed.store.storage.get("large") == b"L" * 10_000
    resumed.commit("resumed")
    assert again.resumable_sessions() == {}
    with pytest.raises(vs.SessionNotFoundError):
        again.writable_session("main", resume=session_id)
    assert content(again.readonly_session("main")) == {"small": b"s", "large": b"L" * 10_000}


def test_a_resumed_session_commits_to_its_own_branch(repo: vs.Repository) -> None:
    # writable_session("dev", resume=id) used to return the session on main, and its
    # commit landed there; a branch that does not exist was not noticed either.
    first = repo.lookup_branch("main")
    repo.create_branch("dev", first)
    session = repo.writable_session("dev")
    session.store.storage.set("k", b"staged on dev")
    session_id = session.session_id
    assert session_id is not None
    with pytest.raises(ValueError, match="writes to branch 'dev', not 'main'"):
        repo.writable_session("main", resume=session_id)
    with pytest.raises(vs.BranchNotFoundError):
        repo.writable_session("no-such-branch", resume=session_id)
    resumed = repo.writable_session(resume=session_id)  # the branch it was opened on
    assert resumed.branch == "dev"
    assert repo.writable_session("dev", resume=session_id).branch == "dev"
    snapshot = resumed.commit("on dev")
    assert repo.lookup_branch("dev") == snapshot and repo.lookup_branch("main") == first
    assert repo.writable_session().branch == "main"  # the default without resume
    again = repo.writable_session("dev")
    again.store.storage.set("k2", b"staged on dev again")
    repo.delete_branch("dev")
    assert again.session_id is not None
    with pytest.raises(vs.BranchNotFoundError):  # named, it must exist (deleted since)
        repo.writable_session("dev", resume=again.session_id)
    repo.writable_session(resume=again.session_id).discard_changes()  # still reachable


def test_disjoint_commits_rebase_automatically(repo: vs.Repository) -> None:
    commit(repo, {"a": b"0", "b": b"0"})
    one, two = repo.writable_session("main"), repo.writable_session("main")
    one.store.storage.set("a", b"1")
    two.store.storage.set("b", b"2")
    first = one.commit("one")
    second = two.commit("two")
    assert repo.lookup_snapshot(second).parent_id == first
    assert content(repo.readonly_session("main")) == {"a": b"1", "b": b"2"}


def test_overlapping_commits_conflict_and_keep_changes(repo: vs.Repository) -> None:
    commit(repo, {"a": b"0"})
    one, two = repo.writable_session("main"), repo.writable_session("main")
    one.store.storage.set("a", b"1")
    two.store.storage.set("a", b"2")
    two.store.storage.set("b", b"2")
    one.commit("one")
    # The message names the keys and what to do (the session keeps its changes).
    with pytest.raises(vs.ConflictError, match=r"branch 'main': a; the session keeps its "
                       r"staged changes: session\.rebase\(keep='ours'\)") as info:
        two.commit("two")
    assert info.value.keys == {"a"} and info.value.branch == "main"
    assert two.has_uncommitted_changes
    with pytest.raises(vs.ConflictError, match=r"session\.rebase\(keep='ours'\)"):
        two.rebase()
    two.rebase(keep="ours")
    two.commit("two, ours")
    assert content(repo.readonly_session("main")) == {"a": b"2", "b": b"2"}


def test_identical_concurrent_writes_do_not_conflict(repo: vs.Repository) -> None:
    one, two = repo.writable_session("main"), repo.writable_session("main")
    one.store.storage.set("a", b"same")
    two.store.storage.set("a", b"same")
    two.store.storage.set("b", b"x")
    one.commit("one")
    two.commit("two")
    assert content(repo.readonly_session("main")) == {"a": b"same", "b": b"x"}


def test_rebase_keep_theirs_drops_our_conflicting_keys(repo: vs.Repository) -> None:
    one, two = repo.writable_session("main"), repo.writable_session("main")
    one.store.storage.set("a", b"theirs")
    two.store.storage.set("a", b"ours")
    two.store.storage.set("c", b"ours too")
    one.commit("one")
    two.rebase(keep="theirs")
    two.commit("two")
    assert content(repo.readonly_session("main")) == {"a": b"theirs", "c": b"ours too"}


def test_async_twins(repo: vs.Repository) -> None:
    async def main() -> None:
        session = await repo.writable_session_async("main")
        session.store.storage.set("k", b"v")
        snapshot = await session.commit_async("async")
        reader = await repo.readonly_session_async(snapshot_id=snapshot)
        assert reader.store.storage.get("k") == b"v"
        history = await repo.ancestry_async(branch="main")
        assert history[0].id == snapshot
        diff = await repo.diff_async(from_snapshot_id=history[1].id, to_branch="main")
        assert diff.updated_keys == {"k"}

    asyncio.run(main())


def test_another_programs_lmdb_environment_is_no_repository_and_is_not_written(
        tmp_path: Path) -> None:
    # exists(), open() and create() opened it writable and added the named databases
    # (gc, objects, refs) and a repository id to its main database: keys in another
    # program's data (a zarrstore LMDBStore's main database holds the user's keys).
    import lmdb  # noqa: PLC0415 - only to make the other program's environment

    path = tmp_path / "plain"
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"a/zarr.json", b"{}")
    env.close()
    assert not vs.Repository.exists(path)
    with pytest.raises(vs.RepositoryNotFoundError, match="LMDB environment of something else"):
        vs.Repository.open(path)
    with pytest.raises(vs.RepositoryExistsError, match="something else"):
        vs.Repository.create(path)
    with pytest.raises(vs.RepositoryNotFoundError):
        vs.Repository.open_or_create(path)
    env = lmdb.open(str(path), map_size=1 << 24, readonly=True)
    with env.begin() as txn:
        assert [bytes(k) for k, _ in txn.cursor()] == [b"a/zarr.json"]
    env.close()


def test_looking_for_a_repository_writes_nothing(tmp_path: Path) -> None:
    # exists() (and a read-only storage) opened the environment writable: it padded the
    # data file with its slack, and added the named databases to an empty environment
    # (a zarrstore LMDBStore made but not yet written then listed them as keys).
    import lmdb  # noqa: PLC0415 - only to make the other program's environments

    from zarrstore.lmdb import LMDBStore  # noqa: PLC0415

    plain, empty = tmp_path / "plain", tmp_path / "empty"
    env = lmdb.open(str(plain), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v")
    env.close()
    store = LMDBStore(str(empty))
    store.storage.list_prefix("")  # opened: its environment exists, with nothing in it
    store.close()
    before = {p: ((p / "data.mdb").stat().st_size, (p / "data.mdb").read_bytes())
              for p in (plain, empty)}
    for path in (plain, empty):
        assert not vs.Repository.exists(path)
        assert not vs.Repository.exists(vs.lmdb_storage(path, read_only=True))
        with pytest.raises(vs.RepositoryNotFoundError):
            vs.Repository.open(vs.lmdb_storage(path, read_only=True))
        assert ((path / "data.mdb").stat().st_size, (path / "data.mdb").read_bytes()) == (
            before[path])
    assert list(LMDBStore(str(empty)).storage.list_prefix("")) == []


def test_exists_leaves_an_empty_data_file_alone(tmp_path: Path) -> None:
    # A killed create can leave an empty data.mdb: exists() wrote an environment into it.
    path = tmp_path / "crashed"
    path.mkdir()
    (path / "data.mdb").touch()
    assert not vs.Repository.exists(path)
    assert sorted(p.name for p in path.iterdir()) == ["data.mdb"]
    assert (path / "data.mdb").stat().st_size == 0
    with vs.Repository.create(path) as repo:  # and create still makes one there
        assert repo.list_branches() == {"main"}

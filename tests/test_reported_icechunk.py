"""Faults reported against icechunk, replayed against versionstore (both local backends).

Each test names the kind of report it comes from. The oracle is icechunk's
documented behaviour where ours follows it (``docs/icechunk.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from object_repo_support import S3Repos, aws_env_fixture, s3_fixture, s3_repos_fixture

import versionstore as vs

__all__ = ["aws_env_fixture", "s3_fixture", "s3_repos_fixture"]

BACKENDS: dict[str, Callable[[Path], Any]] = {
    "memory": lambda tmp: vs.in_memory_storage(),
    "lmdb": lambda tmp: vs.lmdb_storage(tmp / "repo"),
}


@pytest.fixture(params=[*sorted(BACKENDS), "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Each test on both local backends, and on object storage (moto's S3 on 127.0.0.1)."""
    if request.param == "s3":
        s3_repos: S3Repos = request.getfixturevalue("s3_repos")
        return s3_repos.storage()
    return BACKENDS[request.param](tmp_path)


@pytest.fixture
def repo(storage: Any) -> Iterator[vs.Repository]:
    repository = vs.Repository.create(storage)
    yield repository
    repository.close()


def _array(repo: vs.Repository, *, dtype: str = "i4", fill: int = 0) -> None:
    session = repo.writable_session("main")
    zarr.open_group(session.store, mode="a")
    zarr.create_array(session.store, name="a", shape=(4,), chunks=(1,), dtype=dtype,
                      fill_value=fill)[:2] = 1  # chunks 2 and 3 are never written
    session.commit("array a")


def _keys(session: vs.Session) -> list[str]:
    return sorted(session.store.storage.list_prefix(""))


# -- icechunk's ConflictDetector node cases: ChunksUpdatedInDeletedArray and friends --------


def test_chunks_written_into_an_array_the_branch_deleted_conflict(repo: vs.Repository) -> None:
    _array(repo)
    writer = repo.writable_session("main")
    zarr.open_array(writer.store, path="a")[3] = 5  # a chunk the branch never held
    deleter = repo.writable_session("main")
    del zarr.open_group(deleter.store)["a"]
    deleter.commit("delete a")
    with pytest.raises(vs.ConflictError) as raised:
        writer.commit("write a")
    assert raised.value.keys == {"a/c/3"}
    assert writer.has_uncommitted_changes  # the staged changes are kept
    assert _keys(repo.readonly_session("main")) == ["zarr.json"]  # no orphan chunks
    with pytest.raises(vs.ConflictError):
        writer.rebase()
    writer.rebase(keep="theirs")
    assert not writer.has_uncommitted_changes


def test_chunks_written_before_a_reset_that_drops_the_array_conflict(
        repo: vs.Repository) -> None:
    initial = repo.lookup_branch("main")
    _array(repo)
    writer = repo.writable_session("main")
    zarr.open_array(writer.store, path="a")[3] = 5
    repo.reset_branch("main", initial)
    with pytest.raises(vs.ConflictError):
        writer.commit("write a")
    assert _keys(repo.readonly_session("main")) == []


def test_chunks_written_into_an_array_redefined_by_the_branch_conflict(
        repo: vs.Repository) -> None:
    _array(repo, dtype="i4")
    writer = repo.writable_session("main")
    zarr.open_array(writer.store, path="a")[3] = 5
    other = repo.writable_session("main")
    zarr.create_array(other.store, name="a", shape=(4,), chunks=(1,), dtype="f8",
                      fill_value=0, overwrite=True)
    other.commit("a is float now")
    with pytest.raises(vs.ConflictError):  # our int32 bytes must not be read as float64
        writer.commit("write a")


def _deleting_a_while_the_branch_writes_into_it(repo: vs.Repository) -> vs.Session:
    """A session that deleted array ``a``, staged while the branch committed chunk 3 into it."""
    _array(repo)
    deleter = repo.writable_session("main")
    del zarr.open_group(deleter.store)["a"]
    writer = repo.writable_session("main")
    zarr.open_array(writer.store, path="a")[3] = 9
    writer.commit("chunk 3")
    return deleter


def test_deleting_an_array_the_branch_wrote_a_new_chunk_into_conflicts(
        repo: vs.Repository) -> None:
    deleter = _deleting_a_while_the_branch_writes_into_it(repo)
    with pytest.raises(vs.ConflictError):
        deleter.commit("delete a")
    assert "a/c/3" in _keys(repo.readonly_session("main"))
    assert "a/zarr.json" in _keys(repo.readonly_session("main"))


def test_deleting_a_group_the_branch_added_an_array_to_conflicts(repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    zarr.open_group(session.store, mode="a").create_group("g")
    session.commit("group g")
    deleter = repo.writable_session("main")
    del zarr.open_group(deleter.store)["g"]
    writer = repo.writable_session("main")
    zarr.open_group(writer.store, path="g").create_array("x", shape=(2,), dtype="i4")
    writer.commit("g/x")
    with pytest.raises(vs.ConflictError):
        deleter.commit("delete g")


def test_node_changes_that_keep_chunks_meaningful_still_rebase(repo: vs.Repository) -> None:
    """Appends, attribute edits and identical creations by the branch are not conflicts."""
    _array(repo)
    writer = repo.writable_session("main")
    zarr.open_array(writer.store, path="a")[0] = 7
    other = repo.writable_session("main")
    grown = zarr.open_array(other.store, path="a")
    grown.resize((6,))
    grown[4:] = 3
    grown.attrs["units"] = "m"
    zarr.create_array(other.store, name="b", shape=(2,), chunks=(1,), dtype="i4")[:] = 2
    other.commit("append, attributes, new array b")
    zarr.create_array(writer.store, name="b", shape=(2,), chunks=(1,), dtype="i4",
                      overwrite=False)  # the same definition as theirs
    writer.commit("chunk 0 of a")
    final = zarr.open_array(repo.readonly_session("main").store, path="a", mode="r")
    np.testing.assert_array_equal(final[:], [7, 1, 0, 0, 3, 3])
    assert final.attrs["units"] == "m"
    b = zarr.open_array(repo.readonly_session("main").store, path="b", mode="r")
    np.testing.assert_array_equal(b[:], [2, 2])


def test_merge_of_a_redefined_array_with_chunks_written_on_the_other_side_conflicts(
        repo: vs.Repository) -> None:
    _array(repo, dtype="i4")
    repo.create_branch("dev", repo.lookup_branch("main"))
    dev = repo.writable_session("dev")
    zarr.create_array(dev.store, name="a", shape=(4,), chunks=(1,), dtype="f8", fill_value=0,
                      overwrite=True)
    dev.commit("a is float now")
    main = repo.writable_session("main")
    zarr.open_array(main.store, path="a")[3] = 5  # int32 bytes
    main.commit("chunk 3")
    tip = repo.lookup_branch("main")
    with pytest.raises(vs.MergeConflictError) as raised:
        repo.merge("dev", "main")
    [conflict] = raised.value.conflicts
    assert (conflict.path, conflict.kind, conflict.key, conflict.deleted_by) == (
        "/a", "redefined-vs-modified", "a/c/3", "theirs")
    assert repo.lookup_branch("main") == tip
    repo.merge("dev", "main", on_conflict="theirs")  # dev's float array, whole
    merged = zarr.open_array(repo.readonly_session("main").store, path="a", mode="r")
    assert merged.dtype == np.float64
    np.testing.assert_array_equal(merged[:], [0, 0, 0, 0])


def test_merge_keeps_an_append_and_chunks_written_on_the_other_side(
        repo: vs.Repository) -> None:
    _array(repo)
    repo.create_branch("dev", repo.lookup_branch("main"))
    dev = repo.writable_session("dev")
    grown = zarr.open_array(dev.store, path="a")
    grown.resize((6,))
    grown[4:] = 4
    dev.commit("append")
    main = repo.writable_session("main")
    zarr.open_array(main.store, path="a")[3] = 3
    main.commit("chunk 3")
    repo.merge("dev", "main")
    merged = zarr.open_array(repo.readonly_session("main").store, path="a", mode="r")
    np.testing.assert_array_equal(merged[:], [1, 1, 0, 3, 4, 4])


def test_a_move_and_a_write_under_the_moved_node_conflict_in_either_order(
        repo: vs.Repository) -> None:
    """icechunk's test_doesnt_rebase: a move does not silently rebase over writes it moves."""
    _array(repo)
    mover = repo.writable_session("main")
    mover.move("/a", "/b")
    writer = repo.writable_session("main")
    zarr.open_array(writer.store, path="a")[3] = 3
    mover.commit("a -> b")
    with pytest.raises(vs.ConflictError):  # chunk 3 would be an orphan under /a
        writer.commit("chunk 3 of a")
    mover = repo.writable_session("main")
    mover.move("/b", "/c")
    writer = repo.writable_session("main")
    zarr.open_array(writer.store, path="b")[3] = 4
    writer.commit("chunk 3 of b")
    with pytest.raises(vs.ConflictError):  # chunk 3 would stay behind under /b
        mover.commit("b -> c")
    assert sorted(repo.readonly_session("main").store.storage.list_prefix("")) == [
        "b/c/0", "b/c/1", "b/c/3", "b/zarr.json", "zarr.json"]


def test_an_empty_virtual_chunk_is_refused_when_staged(storage: Any, tmp_path: Path) -> None:
    """icechunk issue 2328: a zero-length ref was accepted, and every read of it failed."""
    from zarrstore import FilesystemStore

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.bin").write_bytes(np.arange(4, dtype="i4").tobytes())
    prefix = (tmp_path / "src").as_uri() + "/"
    repo = vs.Repository.create(storage, virtual_chunk_stores={prefix: FilesystemStore(
        tmp_path / "src")})
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="a", shape=(4,), chunks=(2,), dtype="i4",
                      fill_value=-1, compressors=None)
    with pytest.raises(ValueError, match="length 0"):
        session.store.set_virtual_ref("a/c/0", prefix + "a.bin", offset=0, length=0)
    with pytest.raises(ValueError, match="length 0"):
        session.store.set_virtual_refs("/a", [vs.VirtualChunkSpec(
            index=(1,), location=prefix + "a.bin", offset=8, length=0)])
    assert session.store.storage.get("a/c/0") is None  # nothing staged
    session.store.set_virtual_ref("a/c/1", prefix + "a.bin", offset=8, length=8)
    array = zarr.open_array(session.store, path="a", mode="r")
    np.testing.assert_array_equal(array[:], [-1, -1, 2, 3])


def test_merge_of_different_attributes_next_to_a_nan_attribute(repo: vs.Repository) -> None:
    """A NaN attribute neither side touched must not make a field-by-field merge clash."""
    session = repo.writable_session("main")
    array = zarr.create_array(session.store, name="a", shape=(2,), dtype="f4",
                              fill_value=np.nan)
    array.attrs.update({"missing_value": float("nan"), "b": 1})
    repo.create_branch("dev", session.commit("a"))
    dev = repo.writable_session("dev")
    zarr.open_array(dev.store, path="a").attrs["c"] = 3
    dev.commit("c")
    main = repo.writable_session("main")
    zarr.open_array(main.store, path="a").attrs["b"] = 2
    main.commit("b")
    repo.merge("dev", "main")
    attributes = dict(zarr.open_array(repo.readonly_session("main").store, path="a",
                                      mode="r").attrs)
    assert np.isnan(attributes.pop("missing_value"))
    assert attributes == {"b": 2, "c": 3}


@pytest.mark.parametrize("keep", ["ours", "theirs"])
def test_rebase_resolves_a_deleted_node_the_branch_wrote_under_whole(
        repo: vs.Repository, keep: str) -> None:
    """Whichever side wins keeps its whole node: no orphan chunk, no half-deleted array."""
    deleter = _deleting_a_while_the_branch_writes_into_it(repo)
    deleter.rebase(keep="ours" if keep == "ours" else "theirs")
    if keep == "theirs":
        assert not deleter.has_uncommitted_changes
        array = zarr.open_array(deleter.store, path="a", mode="r")
        np.testing.assert_array_equal(array[:], [1, 1, 0, 9])
    else:
        deleter.commit("delete a")
        assert _keys(repo.readonly_session("main")) == ["zarr.json"]


def test_reset_branch_with_from_snapshot_id_moves_only_from_there(repo: vs.Repository) -> None:
    """icechunk PR 1259 (``test_branch_reset``): the guarded reset is one compare-and-swap."""
    initial = repo.lookup_branch("main")
    session = repo.writable_session("main")
    zarr.open_group(session.store, mode="a").create_group("a")
    first = session.commit("group a")
    session = repo.writable_session("main")
    zarr.open_group(session.store, mode="a").create_group("b")
    last = session.commit("group b")
    with pytest.raises(vs.ConflictError, match="nothing moved"):
        repo.reset_branch("main", first, from_snapshot_id=initial)
    assert repo.lookup_branch("main") == last
    repo.reset_branch("main", first, from_snapshot_id=last)
    assert repo.lookup_branch("main") == first
    assert _keys(repo.readonly_session("main")) == ["a/zarr.json", "zarr.json"]
    with pytest.raises(vs.SnapshotNotFoundError):
        repo.reset_branch("main", last, from_snapshot_id="Z" * 32)
    assert repo.lookup_branch("main") == first


def test_expire_counts_what_only_a_deleted_expired_branch_reached(repo: vs.Repository) -> None:
    """icechunk's test_gc_deletes_only_unreferenced_expired_tx_logs: 5 expired, not 3."""
    def add_group(branch: str, name: str) -> str:
        session = repo.writable_session(branch)
        zarr.open_group(session.store, mode="a").create_group(name)
        return session.commit(f"add {name} on {branch}")

    session = repo.writable_session("main")
    zarr.open_group(session.store, mode="a")
    root = session.commit("root group")
    a = add_group("main", "a")
    b = add_group("main", "b")
    repo.create_branch("doomed", b)
    d = add_group("doomed", "d")
    e = add_group("doomed", "e")
    c = add_group("main", "c")
    cutoff = repo.lookup_snapshot(c).written_at  # c is kept: not written before it
    expired = repo.expire_snapshots(cutoff, delete_expired_branches=True)
    assert expired == {root, a, b, d, e}
    assert repo.list_branches() == {"main"}
    assert [info.id for info in repo.ancestry(branch="main")][0] == c
    repo.garbage_collect(datetime.now(UTC) + timedelta(days=1))  # no grace: nothing in flight
    for snapshot_id in expired:
        with pytest.raises(vs.SnapshotNotFoundError):
            repo.lookup_snapshot(snapshot_id)
    assert sorted(zarr.open_group(repo.readonly_session("main").store, mode="r").group_keys()
                  ) == ["a", "b", "c"]


def _commit_into_a_deleted_array(path: str) -> str:
    """In a worker process: stage a chunk of ``a``, let another session delete ``a``, commit."""
    repo = vs.Repository.open(path)
    writer = repo.writable_session("main")
    zarr.open_array(writer.store, path="a")[3] = 5
    deleter = repo.writable_session("main")
    del zarr.open_group(deleter.store)["a"]
    deleter.commit("delete a")
    return writer.commit("write a")


def _branches(repo: vs.Repository) -> set[str]:
    return repo.list_branches()


def test_errors_and_repositories_cross_process_boundaries(tmp_path: Path) -> None:
    """A worker's ConflictError reaches the caller as itself; a Repository pickles."""
    import multiprocessing
    import pickle
    from concurrent.futures import ProcessPoolExecutor

    from zarrstore.errors import InvalidKeyError

    path = str(tmp_path / "repo")
    repo = vs.Repository.create(path)
    _array(repo)
    repo.create_branch("dev", repo.lookup_branch("main"))
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        with pytest.raises(vs.ConflictError) as raised:
            pool.submit(_commit_into_a_deleted_array, path).result()
        assert raised.value.branch == "main"
        assert raised.value.keys == {"a/c/3"}
        assert pool.submit(_branches, repo).result() == {"main", "dev"}
    for error in (vs.MergeConflictError("main", [vs.MergeConflict(
                      path="/a", kind="chunk", key="a/c/0", coordinates=(0,))]),
                  vs.VirtualSourceMissingError("file:///x", "gone"),
                  vs.BranchNotFoundError("nope"),
                  InvalidKeyError("a//b", "empty segment")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert copy.__dict__ == error.__dict__


def test_consolidating_the_root_group_does_not_conflict_with_chunk_writes(
        repo: vs.Repository) -> None:
    """xarray consolidates by default: a new root zarr.json is not a redefined hierarchy."""
    import warnings

    _array(repo)
    writer = repo.writable_session("main")
    zarr.open_array(writer.store, path="a")[3] = 3
    other = repo.writable_session("main")
    zarr.create_array(other.store, name="b", shape=(2,), dtype="i4")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr: consolidated metadata is not in the v3 spec
        zarr.consolidate_metadata(other.store)
    other.commit("b, consolidated")
    writer.commit("chunk 3 of a")
    np.testing.assert_array_equal(
        zarr.open_array(repo.readonly_session("main").store, path="a", mode="r")[:],
        [1, 1, 0, 3])


def test_commit_metadata_with_an_integer_msgpack_cannot_hold_is_a_clear_type_error(
        repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    for value in (2**64, -(2**63) - 1, [1, 2**70]):
        with pytest.raises(TypeError, match="integer outside"):
            session.commit("big", metadata={"n": value}, allow_empty=True)
    snapshot = session.commit("fits", metadata={"n": 2**64 - 1, "m": -(2**63)},
                              allow_empty=True)
    assert repo.lookup_snapshot(snapshot).metadata == {"n": 2**64 - 1, "m": -(2**63)}


def test_an_array_overwritten_while_the_branch_wrote_into_it_conflicts(
        repo: vs.Repository) -> None:
    """zarr's ``overwrite=True`` (xarray's ``mode="w"``) made anew what the branch wrote into.

    The new array had the same metadata, so no document change said it was
    replaced: the commit succeeded and the branch's chunk 3 survived inside
    the array our session had replaced ([7, 0, 0, 3], not [7, 0, 0, 0]).
    """
    _array(repo)
    writer = repo.writable_session("main")
    zarr.open_array(writer.store, path="a")[3] = 3
    replacer = repo.writable_session("main")
    zarr.create_array(replacer.store, name="a", shape=(4,), chunks=(1,), dtype="i4",
                      fill_value=0, overwrite=True)[0] = 7
    writer.commit("chunk 3 of a")
    with pytest.raises(vs.ConflictError, match="a/zarr.json"):
        replacer.commit("a, made anew")
    replacer.rebase(keep="ours")  # ours stands whole: the branch's chunk 3 goes with it
    replacer.commit("a, made anew")
    np.testing.assert_array_equal(
        zarr.open_array(repo.readonly_session("main").store, path="a", mode="r")[:], [7, 0, 0, 0])


def test_move_refuses_a_destination_inside_an_array_or_under_a_missing_group(
        repo: vs.Repository) -> None:
    """icechunk's own move tests: ``move('/src', '/arr/x')`` and a move under a vanished group.

    Both moves were accepted: the first put a node inside an array, the second
    (``/0 -> /00``, ``/00/0 -> /000``, ``/00 -> /0/0``) a node under a group
    that no longer existed. icechunk refuses both, and so does versionstore now,
    staging nothing.
    """
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="a")
    for name in ("arr", "src"):
        root.create_array(name, shape=(1,), dtype="i4")
    root.create_group("0").create_array("0", shape=(1,), dtype="i4")[:] = 5
    session.commit("arr, src, 0/0")
    mover = repo.rearrange_session("main")
    with pytest.raises(vs.InvalidMoveError, match="is an array, not a group"):
        mover.move("/src", "/arr/x")
    assert not mover.has_uncommitted_changes
    mover.move("/0", "/00")
    mover.move("/00/0", "/000")
    with pytest.raises(vs.InvalidMoveError, match="parent group '/0' does not exist"):
        mover.move("/00", "/0/0")
    mover.move("/00", "/src2")  # the refused move staged nothing; a valid one still works
    mover.commit("moves")
    tree = zarr.open_group(repo.readonly_session("main").store, mode="r")
    assert sorted(tree.group_keys()) == ["src2"]
    assert sorted(tree.array_keys()) == ["000", "arr", "src"]
    assert tree["000"][:].tolist() == [5]

"""Merges: structured conflicts of every kind, resolutions, fast-forwards and the merge base.

Each conflict test builds a base, changes it differently on ``main`` (ours)
and ``dev`` (theirs), and asserts the exact ``MergeConflict`` records —
node path, kind, key, chunk coordinates — and that a refused merge changes
nothing (refs, ops log). Resolutions are checked through zarr.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

import versionstore as vs


@pytest.fixture(params=["memory", "lmdb"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> vs.Repository:
    storage = vs.in_memory_storage() if request.param == "memory" else vs.lmdb_storage(
        tmp_path / "repo")
    return vs.Repository.create(storage)


def _commit(repo: vs.Repository, branch: str, write: Callable[[zarr.Group], object],
            message: str = "change") -> str:
    session = repo.writable_session(branch)
    write(zarr.open_group(session.store))
    return session.commit(message)


def _read(repo: vs.Repository, path: str, branch: str = "main") -> np.ndarray:
    return zarr.open_array(repo.readonly_session(branch).store, path=path)[...]


def _fork(repo: vs.Repository, write: Callable[[zarr.Group], object]) -> str:
    base = _commit(repo, "main", write, "base")
    repo.create_branch("dev", base)
    return base


def _state(repo: vs.Repository) -> tuple[dict[str, str], list[str]]:
    branches = {name: repo.lookup_branch(name) for name in repo.list_branches()}
    return branches, [entry.id for entry in repo.ops_log()]


def _refused(repo: vs.Repository, **options: object) -> vs.MergeConflictError:
    before = _state(repo)
    with pytest.raises(vs.MergeConflictError) as caught:
        repo.merge("dev", "main", **options)  # type: ignore[arg-type]
    assert _state(repo) == before
    assert isinstance(caught.value, vs.ConflictError)
    return caught.value


def _array(group: zarr.Group, name: str = "t", **options: object) -> None:
    settings: dict[str, object] = {"shape": (4, 4), "chunks": (2, 2), "dtype": "i4",
                                   "fill_value": 0}
    settings.update(options)
    group.create_array(name, **settings)[:] = 0  # type: ignore[arg-type]


# -- conflicts, exactly -----------------------------------------------------------------


def test_chunk_conflict_names_array_and_coordinates(repo: vs.Repository) -> None:
    _fork(repo, _array)
    _commit(repo, "main", lambda g: g["t"].__setitem__((slice(2, 4), slice(0, 2)), 1))
    _commit(repo, "dev", lambda g: g["t"].__setitem__((slice(2, 4), slice(0, 2)), 2))
    error = _refused(repo)
    assert error.conflicts == (
        vs.MergeConflict(path="/t", kind="chunk", key="t/c/1/0", coordinates=(1, 0)),
    )
    assert error.keys == {"t/c/1/0"}
    assert "chunk (1, 0) of /t" in str(error)


def test_chunk_conflicts_in_a_v2_array_and_a_nested_group(repo: vs.Repository) -> None:
    def make(group: zarr.Group) -> None:
        sub = group.create_group("g")
        _array(sub, "a", chunk_key_encoding={"name": "v2", "separator": "."})

    _fork(repo, make)
    _commit(repo, "main", lambda g: g["g/a"].__setitem__((slice(0, 4), 3), 1))
    _commit(repo, "dev", lambda g: g["g/a"].__setitem__((slice(0, 2), slice(2, 4)), 2))
    error = _refused(repo)
    assert error.conflicts == (
        vs.MergeConflict(path="/g/a", kind="chunk", key="g/a/0.1", coordinates=(0, 1)),
    )


def test_chunk_conflicts_in_a_sharded_array_name_shards(repo: vs.Repository) -> None:
    _fork(repo, lambda g: _array(g, shape=(8,), chunks=(2,), shards=(4,)))
    _commit(repo, "main", lambda g: g["t"].__setitem__(slice(4, 5), 1))
    _commit(repo, "dev", lambda g: g["t"].__setitem__(slice(6, 8), 2))
    error = _refused(repo)
    assert error.conflicts == (
        vs.MergeConflict(path="/t", kind="chunk", key="t/c/1", coordinates=(1,)),
    )


def test_metadata_conflict(repo: vs.Repository) -> None:
    _fork(repo, _array)
    _commit(repo, "main", lambda g: g["t"].attrs.update(units="K"))
    _commit(repo, "dev", lambda g: g["t"].attrs.update(units="C"))
    error = _refused(repo)
    assert error.conflicts == (vs.MergeConflict(path="/t", kind="metadata", key="t/zarr.json"),)


def test_key_conflict_outside_zarr(repo: vs.Repository) -> None:
    def write(value: bytes) -> Callable[[zarr.Group], object]:
        def go(group: zarr.Group) -> None:
            asyncio.run(group.store.set("notes/readme.txt",
                                        zarr.core.buffer.cpu.Buffer.from_bytes(value)))
        return go

    _fork(repo, write(b"base"))
    _commit(repo, "main", write(b"ours"))
    _commit(repo, "dev", write(b"theirs"))
    error = _refused(repo)
    assert error.conflicts == (
        vs.MergeConflict(path="/notes", kind="key", key="notes/readme.txt"),
    )


@pytest.mark.parametrize("deleter", ["main", "dev"])
def test_deleted_vs_modified(repo: vs.Repository, deleter: str) -> None:
    _fork(repo, lambda g: (_array(g), _array(g, "keep")))
    modifier = "dev" if deleter == "main" else "main"
    _commit(repo, deleter, lambda g: g.__delitem__("t"))
    _commit(repo, modifier, lambda g: g["t"].__setitem__((0, 0), 7))
    error = _refused(repo)
    assert error.conflicts == (vs.MergeConflict(
        path="/t", kind="deleted-vs-modified", key="t/c/0/0",
        deleted_by="ours" if deleter == "main" else "theirs"),)


@pytest.mark.parametrize("deleter", ["main", "dev"])
@pytest.mark.parametrize("winner", ["ours", "theirs"])
def test_deleted_vs_modified_resolves_whole_nodes(repo: vs.Repository, deleter: str,
                                                  winner: str) -> None:
    _fork(repo, lambda g: (_array(g), _array(g, "keep")))
    modifier = "dev" if deleter == "main" else "main"
    _commit(repo, deleter, lambda g: g.__delitem__("t"))

    def modify(group: zarr.Group) -> None:
        group["t"][0, 0] = 7
        group["t"][3, 3] = 9
        group["keep"][1, 1] = 5

    _commit(repo, modifier, modify)
    repo.merge("dev", "main", on_conflict=winner)
    winner_branch = "main" if winner == "ours" else "dev"
    keys = {key for key, _ in repo.readonly_session("main").iter_entries("", "")}
    if winner_branch == deleter:
        assert not any(key.startswith("t/") for key in keys)  # no orphan chunk
        with pytest.raises(KeyError):
            zarr.open_group(repo.readonly_session("main").store, mode="r")["t"]
    else:
        expected = np.zeros((4, 4), dtype="i4")
        expected[0, 0], expected[3, 3] = 7, 9
        np.testing.assert_array_equal(_read(repo, "t"), expected)
    assert _read(repo, "keep")[1, 1] == 5  # the other array merged either way
    assert repo.verify().ok


@pytest.mark.parametrize("side", ["ours", "theirs"])
def test_conflicts_resolved_by_side(repo: vs.Repository, side: str) -> None:
    _fork(repo, _array)
    _commit(repo, "main", lambda g: g["t"].__setitem__((slice(0, 2), slice(0, 2)), 1))
    _commit(repo, "main", lambda g: g["t"].__setitem__((slice(2, 4), slice(2, 4)), 3))
    _commit(repo, "dev", lambda g: g["t"].__setitem__((slice(0, 2), slice(0, 2)), 2))
    _commit(repo, "dev", lambda g: g["t"].__setitem__((slice(2, 4), slice(0, 2)), 4))
    tip = repo.merge("dev", "main", on_conflict=side)
    expected = np.zeros((4, 4), dtype="i4")
    expected[0:2, 0:2] = 1 if side == "ours" else 2
    expected[2:4, 2:4] = 3
    expected[2:4, 0:2] = 4
    np.testing.assert_array_equal(_read(repo, "t"), expected)
    info = repo.lookup_snapshot(tip)
    assert info.parent_ids == (info.parent_id, repo.lookup_branch("dev"))


def test_same_change_on_both_sides_is_no_conflict(repo: vs.Repository) -> None:
    _fork(repo, _array)
    _commit(repo, "main", lambda g: g["t"].__setitem__((0, 0), 1))
    _commit(repo, "dev", lambda g: g["t"].__setitem__((0, 0), 1))
    repo.merge("dev", "main")
    assert _read(repo, "t")[0, 0] == 1


def test_unknown_on_conflict_and_missing_source_are_refused(repo: vs.Repository) -> None:
    _fork(repo, _array)
    before = _state(repo)
    with pytest.raises(ValueError, match="on_conflict"):
        repo.merge("dev", "main", on_conflict="mine")
    with pytest.raises(ValueError, match="from_branch"):
        repo.merge(into_branch="main")
    with pytest.raises(vs.BranchNotFoundError):
        repo.merge("nope", "main")
    assert _state(repo) == before


# -- fast-forwards, no-ops, the DAG -------------------------------------------------------


def test_fast_forward_and_no_op(repo: vs.Repository) -> None:
    base = _fork(repo, _array)
    ahead = _commit(repo, "dev", lambda g: g["t"].__setitem__((0, 0), 1))
    entries = len(list(repo.ops_log()))
    assert repo.merge("dev", "main") == ahead  # fast-forward: no new snapshot
    last = next(repo.ops_log())
    assert (last.kind, last.name, last.old, last.new, last.source) == (
        "merge", "main", base, ahead, ahead)
    assert len(list(repo.ops_log())) == entries + 1
    # Merging an ancestor (the tip itself included) changes nothing, even without ff.
    assert repo.merge("dev", "main", fast_forward=False) == ahead
    assert repo.merge(from_snapshot_id=base, into_branch="main", fast_forward=False) == ahead
    assert len(list(repo.ops_log())) == entries + 1


def test_no_fast_forward_makes_a_merge_snapshot(repo: vs.Repository) -> None:
    base = _fork(repo, _array)
    ahead = _commit(repo, "dev", lambda g: g["t"].__setitem__((0, 0), 1))
    tip = repo.merge("dev", "main", fast_forward=False, message="merge dev",
                     metadata={"by": "test"})
    info = repo.lookup_snapshot(tip)
    assert info.parent_ids == (base, ahead) and info.message == "merge dev"
    assert info.metadata == {"by": "test"}
    assert _read(repo, "t")[0, 0] == 1


def test_ancestry_all_parents_is_topological(repo: vs.Repository) -> None:
    base = _fork(repo, _array)
    d1 = _commit(repo, "dev", lambda g: g["t"].__setitem__((0, 0), 1), "d1")
    m1 = _commit(repo, "main", lambda g: g["t"].__setitem__((3, 3), 1), "m1")
    merged = repo.merge("dev", "main")
    first = [info.id for info in repo.ancestry(branch="main")]
    assert first[:3] == [merged, m1, base]
    full = [info.id for info in repo.ancestry(branch="main", all_parents=True)]
    assert full[0] == merged and set(full[1:3]) == {m1, d1} and full[3] == base
    position = {snapshot: i for i, snapshot in enumerate(full)}
    for info in repo.ancestry(branch="main", all_parents=True):
        assert all(position[parent] > position[info.id] for parent in info.parent_ids)
    assert asyncio.run(repo.ancestry_async(branch="main", all_parents=True))[0].id == merged


def test_merge_base_including_criss_cross(repo: vs.Repository) -> None:
    base = _fork(repo, _array)
    a = _commit(repo, "main", lambda g: g["t"].__setitem__((0, 0), 1))
    b = _commit(repo, "dev", lambda g: g["t"].__setitem__((3, 3), 2))
    assert repo.merge_base(a, b) == base
    assert repo.merge_base(a, base) == base
    # Criss-cross: each branch merges the other's tip.
    repo.create_branch("x", a)
    main_merge = repo.merge("dev", "main", fast_forward=False)
    dev_merge = repo.merge(from_branch="x", into_branch="dev", fast_forward=False)
    assert repo.lookup_snapshot(dev_merge).parent_ids == (b, a)
    found = repo.merge_base(main_merge, dev_merge)
    assert found in {a, b}
    assert all(repo.merge_base(main_merge, dev_merge) == found for _ in range(3))
    assert repo.merge_base(dev_merge, main_merge) == found  # symmetric choice
    repo.merge("dev", "main")  # a criss-cross merge still merges
    assert _read(repo, "t")[3, 3] == 2 and _read(repo, "t")[0, 0] == 1


def test_unrelated_histories_merge_against_an_empty_base(repo: vs.Repository) -> None:
    # Another repository's history shares no snapshot with this one's, not even the root
    # (the initial snapshot cannot be amended into a second root: AmendInitialSnapshotError).
    with vs.Repository.create(vs.in_memory_storage()) as other:
        session = other.writable_session("main")
        _array(zarr.open_group(session.store), "u")
        session.commit("u, elsewhere")
        repo.fetch(other, "main", into_branch="dev", progress=False)
    root = repo.lookup_branch("dev")
    assert [i.message for i in repo.ancestry(branch="dev")][-1] == "Repository initialized"
    assert repo.lookup_snapshot(repo.lookup_branch("main")).id not in {
        i.id for i in repo.ancestry(branch="dev")}
    _commit(repo, "main", _array)
    assert repo.merge_base(repo.lookup_branch("main"), root) is None
    repo.merge("dev", "main")
    group = zarr.open_group(repo.readonly_session("main").store, mode="r")
    assert sorted(group.array_keys()) == ["t", "u"]


# -- round trips through zarr and xarray ------------------------------------------------------


def test_xarray_reads_merged_branches(repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    xr.Dataset({"temp": (("x", "y"), np.zeros((4, 4)))}).to_zarr(
        session.store, mode="w", consolidated=False,
        encoding={"temp": {"chunks": (2, 4)}})  # one chunk per job
    repo.create_branch("dev", session.commit("base"))
    repo.create_branch("job2", repo.lookup_branch("main"))
    for branch, rows, value in [("dev", slice(0, 2), 1.0), ("job2", slice(2, 4), 2.0)]:
        session = repo.writable_session(branch)
        dataset = xr.open_zarr(session.store, consolidated=False).load()
        dataset["temp"][rows, :] = value
        dataset.to_zarr(session.store, mode="r+", consolidated=False)
        session.commit(f"{branch} result")
    repo.merge("dev", "main")
    repo.merge("job2", "main")
    merged = xr.open_zarr(repo.readonly_session("main").store, consolidated=False)
    expected = np.zeros((4, 4))
    expected[0:2], expected[2:4] = 1.0, 2.0
    np.testing.assert_array_equal(merged["temp"].values, expected)


def test_async_merge(repo: vs.Repository) -> None:
    _fork(repo, _array)
    _commit(repo, "dev", lambda g: g["t"].__setitem__((0, 0), 1))
    _commit(repo, "main", lambda g: g["t"].__setitem__((3, 3), 1))
    tip = asyncio.run(repo.merge_async("dev", "main"))
    assert len(repo.lookup_snapshot(tip).parent_ids) == 2
    assert asyncio.run(repo.ops_log_async())[0].kind == "merge"


def test_attribute_changes_to_different_attributes_merge(repo: vs.Repository) -> None:
    _fork(repo, lambda g: (_array(g), g["t"].attrs.update(source="model", version=1)))
    _commit(repo, "main", lambda g: g["t"].attrs.update(units="K", version=2))
    _commit(repo, "dev", lambda g: (g["t"].attrs.update(long_name="temperature"),
                                    g["t"].attrs.__delitem__("source")))
    repo.merge("dev", "main")
    array = zarr.open_array(repo.readonly_session("main").store, path="t", mode="r")
    assert dict(array.attrs) == {"version": 2, "units": "K", "long_name": "temperature"}
    assert array.shape == (4, 4)


def test_v2_attributes_merge_per_attribute(repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    group = zarr.open_group(session.store, zarr_format=2)
    group.attrs.update(a=1)
    repo.create_branch("dev", session.commit("base"))
    _commit(repo, "main", lambda g: g.attrs.update(b=2))
    _commit(repo, "dev", lambda g: g.attrs.update(c=3))
    repo.merge("dev", "main")
    merged = zarr.open_group(repo.readonly_session("main").store, mode="r", zarr_format=2)
    assert dict(merged.attrs) == {"a": 1, "b": 2, "c": 3}
    _commit(repo, "main", lambda g: g.attrs.update(a="ours"))
    _commit(repo, "dev", lambda g: g.attrs.update(a="theirs"))
    error = _refused(repo)
    assert error.conflicts == (vs.MergeConflict(path="/", kind="metadata", key=".zattrs"),)

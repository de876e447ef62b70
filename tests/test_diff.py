"""Zarr-aware ``diff`` and ``status`` with real zarr-python hierarchies.

Every change here is made through zarr-python on a session store, so the keys
are exactly what zarr writes: v3 (``zarr.json``, ``c/…`` chunk keys with either
separator, ``chunk_key_encoding`` ``"v2"``), v2 (``.zarray``/``.zgroup``/``.zattrs``,
``dimension_separator`` ``"."`` and ``"/"``) and sharded arrays. Node paths follow
icechunk: ``"/"`` is the root group, ``"/t"`` an array, ``"/g/a"`` a nested one.

``commit_and_diff`` is the common check: the session's ``status()`` before the
commit equals ``repo.diff`` between the parent and the new snapshot, so every
test below checks staged and committed diffs at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

import versionstore as vs

Coordinates = tuple[int, ...]

_PROFILE = settings()
#: Each example builds a repository and writes through zarr: half the profile.
FEWER_EXAMPLES = settings(_PROFILE, max_examples=max(10, _PROFILE.max_examples // 2))


def expect(
    *,
    new_groups: Iterable[str] = (),
    new_arrays: Iterable[str] = (),
    deleted_groups: Iterable[str] = (),
    deleted_arrays: Iterable[str] = (),
    updated_groups: Iterable[str] = (),
    updated_arrays: Iterable[str] = (),
    updated_chunks: dict[str, Iterable[Coordinates]] | None = None,
    updated_keys: Iterable[str] = (),
) -> vs.Diff:
    """A ``Diff`` from plain iterables (frozensets inside, as the engine builds them)."""
    return vs.Diff(
        new_groups=frozenset(new_groups),
        new_arrays=frozenset(new_arrays),
        deleted_groups=frozenset(deleted_groups),
        deleted_arrays=frozenset(deleted_arrays),
        updated_groups=frozenset(updated_groups),
        updated_arrays=frozenset(updated_arrays),
        updated_chunks={path: frozenset(c) for path, c in (updated_chunks or {}).items()},
        updated_keys=frozenset(updated_keys),
    )


def commit_and_diff(session: vs.Session, message: str = "change") -> vs.Diff:
    """Commit ``session``; check that its status before equals the committed diff."""
    repo = session.repository
    status = session.status()
    parent = session.snapshot_id
    snapshot = session.commit(message, allow_empty=True)  # a property draw may change nothing
    diff = repo.diff(from_snapshot_id=parent, to_snapshot_id=snapshot)
    assert status == diff
    assert session.status().is_empty()
    return diff


def all_chunks(*counts: int) -> set[Coordinates]:
    return {tuple(int(i) for i in index) for index in np.ndindex(*counts)}


@pytest.fixture(params=["memory", "lmdb"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> vs.Repository:
    storage: Any
    if request.param == "lmdb":
        storage = vs.lmdb_storage(tmp_path / "repo")
    else:
        storage = vs.in_memory_storage()
    repository = vs.Repository.create(storage)
    request.addfinalizer(repository.close)
    return repository


@pytest.fixture
def memory_repo() -> vs.Repository:
    return vs.Repository.create(vs.in_memory_storage())


# -- Zarr v3 ----------------------------------------------------------------------------


def test_new_hierarchy_reports_nodes_and_every_written_chunk(repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="w")
    root.create_array("t", shape=(10, 10), chunks=(5, 5), dtype="i4", fill_value=0)[:] = 1
    group = root.create_group("g")
    group.create_array("a", shape=(4,), chunks=(2,), dtype="f8", fill_value=0)[:] = 2.5
    root.create_array("z", shape=(), dtype="i4", fill_value=0)[...] = 7

    assert commit_and_diff(session) == expect(
        new_groups={"/", "/g"},
        new_arrays={"/t", "/g/a", "/z"},
        updated_chunks={"/t": all_chunks(2, 2), "/g/a": {(0,), (1,)}, "/z": {()}},
    )


def test_chunk_writes_report_exact_coordinates(repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="w")
    root.create_array("t", shape=(10, 10), chunks=(5, 5), dtype="i4", fill_value=0)[:] = 1
    root.create_array("v", shape=(9,), chunks=(2,), dtype="i4", fill_value=0)[:] = 1
    commit_and_diff(session)

    session = repo.writable_session("main")
    root = zarr.open_group(session.store)
    root["t"][0:5, 5:] = 2  # exactly chunk (0, 1)
    root["v"][8] = 3  # the last, partial chunk
    assert commit_and_diff(session) == expect(updated_chunks={"/t": {(0, 1)}, "/v": {(4,)}})

    session = repo.writable_session("main")
    root = zarr.open_group(session.store)
    root["t"][4:6, 4:6] = 3  # straddles all four chunks
    root["v"][1:4] = 4  # chunks 0 and 1
    assert commit_and_diff(session) == expect(
        updated_chunks={"/t": all_chunks(2, 2), "/v": {(0,), (1,)}}
    )


def test_writing_the_same_values_again_is_no_change(memory_repo: vs.Repository) -> None:
    session = memory_repo.writable_session("main")
    array = zarr.create_array(session.store, name="t", shape=(4,), chunks=(2,), dtype="i4",
                              fill_value=0)
    array[:] = 5
    first = session.commit("first")

    session = memory_repo.writable_session("main")
    zarr.open_array(session.store, path="t")[:] = 5  # same bytes: staged, but no change
    assert not session.has_uncommitted_changes  # the three agree: no change
    assert session.status().is_empty()
    with pytest.raises(vs.NothingToCommitError):
        session.commit("same again")
    second = session.commit("same again", allow_empty=True)
    diff = memory_repo.diff(from_snapshot_id=first, to_snapshot_id=second)
    assert diff.is_empty() and diff == vs.Diff()


@pytest.mark.parametrize(
    ("encoding", "shape", "chunks", "region", "keys", "coordinates"),
    [
        # default encoding, "/" separator (zarr's default)
        (None, (6, 4), (2, 2), np.s_[2:4, 2:], ["t/c/1/1"], {(1, 1)}),
        (None, (5,), (2,), np.s_[:], ["t/c/0", "t/c/1", "t/c/2"], {(0,), (1,), (2,)}),
        (None, (), (), np.s_[...], ["t/c"], {()}),
        # default encoding, "." separator
        ({"name": "default", "separator": "."}, (6, 4), (2, 2), np.s_[4:, :2],
         ["t/c.2.0"], {(2, 0)}),
        ({"name": "default", "separator": "."}, (5,), (2,), np.s_[4], ["t/c.2"], {(2,)}),
        ({"name": "default", "separator": "."}, (), (), np.s_[...], ["t/c"], {()}),
        # the "v2" encoding inside a v3 array, both separators
        ({"name": "v2", "separator": "."}, (6, 4), (2, 2), np.s_[0:2, 0:4],
         ["t/0.0", "t/0.1"], {(0, 0), (0, 1)}),
        ({"name": "v2", "separator": "/"}, (6, 4), (2, 2), np.s_[5, 3], ["t/2/1"], {(2, 1)}),
        ({"name": "v2", "separator": "."}, (5,), (2,), np.s_[0], ["t/0"], {(0,)}),
        ({"name": "v2", "separator": "."}, (), (), np.s_[...], ["t/0"], {()}),
        # three dimensions
        (None, (4, 4, 4), (2, 2, 2), np.s_[3, 0, 2], ["t/c/1/0/1"], {(1, 0, 1)}),
    ],
)
def test_chunk_key_encodings(
    memory_repo: vs.Repository,
    encoding: dict[str, str] | None,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    region: Any,
    keys: list[str],
    coordinates: set[Coordinates],
) -> None:
    session = memory_repo.writable_session("main")
    options: dict[str, Any] = {} if encoding is None else {"chunk_key_encoding": encoding}
    if chunks:
        options["chunks"] = chunks
    array = zarr.create_array(session.store, name="t", shape=shape, dtype="i2", fill_value=0,
                              **options)
    commit_and_diff(session, "empty array")

    session = memory_repo.writable_session("main")
    zarr.open_array(session.store, path="t")[region] = 9
    stored = sorted(k for k in session.store.storage.list() if not k.endswith("zarr.json"))
    assert stored == sorted(keys)  # the layout under test really is the one zarr wrote
    assert commit_and_diff(session) == expect(updated_chunks={"/t": coordinates})
    del array


def test_array_at_the_root(memory_repo: vs.Repository) -> None:
    session = memory_repo.writable_session("main")
    array = zarr.create_array(session.store, shape=(4, 4), chunks=(2, 2), dtype="u1",
                              fill_value=0)
    array[:2, 2:] = 1
    assert commit_and_diff(session) == expect(new_arrays={"/"}, updated_chunks={"/": {(0, 1)}})


def test_sharded_arrays_report_shard_coordinates(repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="w")
    array = root.create_array("s", shape=(8, 8), chunks=(2, 2), shards=(4, 4), dtype="i4",
                              fill_value=0)
    array[0:2, 0:2] = 1  # one inner chunk of shard (0, 0)
    array[5, 7] = 1  # shard (1, 1)
    assert commit_and_diff(session) == expect(
        new_groups={"/"}, new_arrays={"/s"}, updated_chunks={"/s": {(0, 0), (1, 1)}}
    )

    session = repo.writable_session("main")
    zarr.open_array(session.store, path="s")[3:5, 0] = 2  # shards (0, 0) and (1, 0)
    assert commit_and_diff(session) == expect(updated_chunks={"/s": {(0, 0), (1, 0)}})


@st.composite
def array_writes(draw: st.DrawFn) -> tuple[dict[str, Any], list[tuple[Any, int]]]:
    """An array's creation options, and a few region writes to it."""
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=ndim, max_size=ndim)))
    chunks = tuple(draw(st.integers(1, n)) for n in shape)
    zarr_format = draw(st.sampled_from([2, 3]))
    names = ["v2"] if zarr_format == 2 else ["default", "v2"]
    encoding = {"name": draw(st.sampled_from(names)), "separator": draw(st.sampled_from("./"))}
    options: dict[str, Any] = {"shape": shape, "dtype": "i2", "fill_value": 0,
                               "zarr_format": zarr_format, "chunk_key_encoding": encoding}
    if ndim:
        options["chunks"] = chunks
    writes = []
    for _ in range(draw(st.integers(1, 3))):
        region = []
        for n in shape:
            start = draw(st.integers(0, n - 1))
            region.append(slice(start, draw(st.integers(start + 1, n))))
        writes.append((tuple(region) if region else ..., draw(st.integers(0, 3))))
    return options, writes


@FEWER_EXAMPLES
@given(case=array_writes())
def test_updated_chunks_are_exactly_the_chunks_whose_bytes_changed(
    case: tuple[dict[str, Any], list[tuple[Any, int]]],
) -> None:
    # The expectation comes from zarr's own chunk grid and key encoding, not from the
    # engine's key parser: every chunk whose stored bytes differ, and no other.
    options, writes = case
    repo = vs.Repository.create(vs.in_memory_storage())
    session = repo.writable_session("main")
    array = zarr.create_array(session.store, name="g/t", **options)
    array[...] = 1
    commit_and_diff(session, "fill")
    session = repo.writable_session("main")
    array = zarr.open_array(session.store, path="g/t", zarr_format=options["zarr_format"])
    before = {key: session.store.storage.get(key) for key in session.store.storage.list()}
    for region, value in writes:
        array[region] = value  # 0 is the fill value: such chunks are erased, not written
    storage = session.store.storage
    changed = {
        coords
        for coords in np.ndindex(*array.cdata_shape)
        if storage.get(key := "g/t/" + array.metadata.encode_chunk_key(coords)) != before.get(key)
    }
    expected = expect(updated_chunks={"/g/t": changed} if changed else {})
    assert commit_and_diff(session) == expected


# -- metadata changes -------------------------------------------------------------------


def test_attribute_updates_are_node_updates(repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="w")
    root.create_group("g").create_array("a", shape=(2,), dtype="i4", fill_value=0)
    commit_and_diff(session)

    session = repo.writable_session("main")
    root = zarr.open_group(session.store)
    root["g"].attrs["title"] = "ocean"
    assert commit_and_diff(session) == expect(updated_groups={"/g"})

    session = repo.writable_session("main")
    root = zarr.open_group(session.store)
    root["g/a"].attrs.update({"units": "K"})
    root.attrs["history"] = "regridded"
    assert commit_and_diff(session) == expect(updated_groups={"/"}, updated_arrays={"/g/a"})


def test_resize(memory_repo: vs.Repository) -> None:
    session = memory_repo.writable_session("main")
    array = zarr.create_array(session.store, name="t", shape=(10,), chunks=(2,), dtype="i4",
                              fill_value=0)
    array[:] = np.arange(1, 11)
    commit_and_diff(session)

    session = memory_repo.writable_session("main")
    zarr.open_array(session.store, path="t").resize((20,))
    assert commit_and_diff(session, "grow") == expect(updated_arrays={"/t"})

    session = memory_repo.writable_session("main")
    zarr.open_array(session.store, path="t").resize((5,))
    # Chunks 3.. lie wholly outside the new shape (they were written up to index 9): deleted.
    assert commit_and_diff(session, "shrink") == expect(
        updated_arrays={"/t"}, updated_chunks={"/t": {(3,), (4,)}}
    )


def test_deleting_nodes(repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="w")
    root.create_array("t", shape=(4, 4), chunks=(2, 2), dtype="i4", fill_value=0)[:] = 1
    group = root.create_group("g")
    group.create_array("a", shape=(4,), chunks=(2,), dtype="i4", fill_value=0)[:] = 1
    root.create_array("keep", shape=(2,), dtype="i4", fill_value=0)[:] = 1
    commit_and_diff(session)

    session = repo.writable_session("main")
    root = zarr.open_group(session.store)
    del root["t"]
    assert sorted(session.store.storage.list_prefix("t/")) == []
    # A deleted array's chunks went with it: they are not "updated chunks" of anything.
    assert commit_and_diff(session, "delete an array") == expect(deleted_arrays={"/t"})

    session = repo.writable_session("main")
    del zarr.open_group(session.store)["g"]
    assert commit_and_diff(session, "delete a group") == expect(
        deleted_groups={"/g"}, deleted_arrays={"/g/a"}
    )


def test_node_type_change_is_a_delete_and_a_create(memory_repo: vs.Repository) -> None:
    session = memory_repo.writable_session("main")
    root = zarr.open_group(session.store, mode="w")
    root.create_group("x")
    commit_and_diff(session)

    session = memory_repo.writable_session("main")
    root = zarr.open_group(session.store)
    root.create_array("x", shape=(2,), dtype="i4", fill_value=0, overwrite=True)[:] = 3
    assert commit_and_diff(session) == expect(
        deleted_groups={"/x"}, new_arrays={"/x"}, updated_chunks={"/x": {(0,)}}
    )


# -- Zarr v2 ----------------------------------------------------------------------------


@pytest.mark.parametrize(("separator", "chunk_key"), [(".", "t/1.0"), ("/", "t/1/0")])
def test_zarr_v2_layouts(repo: vs.Repository, separator: str, chunk_key: str) -> None:
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="w", zarr_format=2)
    encoding = {"name": "v2", "separator": separator}
    root.create_array("t", shape=(4, 4), chunks=(2, 2), dtype="i4", fill_value=0,
                      chunk_key_encoding=encoding)[:] = 1
    group = root.create_group("g")
    group.create_array("a", shape=(5,), chunks=(2,), dtype="i4", fill_value=0,
                       chunk_key_encoding=encoding)[:] = 1
    root.create_array("z", shape=(), dtype="i4", fill_value=0)[...] = 1
    assert chunk_key in set(session.store.storage.list())
    assert ".zgroup" in set(session.store.storage.list())
    assert commit_and_diff(session) == expect(
        new_groups={"/", "/g"},
        new_arrays={"/t", "/g/a", "/z"},
        updated_chunks={"/t": all_chunks(2, 2), "/g/a": {(0,), (1,), (2,)}, "/z": {()}},
    )

    session = repo.writable_session("main")
    root = zarr.open_group(session.store, zarr_format=2)
    root["t"][2:, :2] = 5
    root["t"].attrs["units"] = "m"  # .zattrs of an array
    root["g"].attrs["title"] = "v2"  # .zattrs of a group
    assert commit_and_diff(session) == expect(
        updated_arrays={"/t"}, updated_groups={"/g"}, updated_chunks={"/t": {(1, 0)}}
    )

    session = repo.writable_session("main")
    root = zarr.open_group(session.store, zarr_format=2)
    root["g/a"].resize((3,))
    assert commit_and_diff(session) == expect(
        updated_arrays={"/g/a"}, updated_chunks={"/g/a": {(2,)}}
    )

    session = repo.writable_session("main")
    root = zarr.open_group(session.store, zarr_format=2)
    del root["t"]
    del root["g"]
    assert commit_and_diff(session) == expect(
        deleted_arrays={"/t", "/g/a"}, deleted_groups={"/g"}
    )


def test_zarr_v2_array_without_attributes_file(memory_repo: vs.Repository) -> None:
    # Writers other than zarr-python may leave out .zattrs; adding one updates the node.
    session = memory_repo.writable_session("main")
    # No dimension_separator either: "." is the default.
    meta = {"zarr_format": 2, "shape": [4, 4], "chunks": [2, 2], "dtype": "<i4",
            "compressor": None, "fill_value": 0, "order": "C", "filters": None}
    session.store.storage.set(".zgroup", json.dumps({"zarr_format": 2}).encode())
    session.store.storage.set("t/.zarray", json.dumps(meta).encode())
    session.store.storage.set("t/1.0", np.arange(4, dtype="<i4").tobytes())
    assert commit_and_diff(session) == expect(
        new_groups={"/"}, new_arrays={"/t"}, updated_chunks={"/t": {(1, 0)}}
    )
    assert zarr.open_array(session.store, path="t", mode="r")[2:, :2].tolist() == [[0, 1], [2, 3]]
    session = memory_repo.writable_session("main")
    session.store.storage.set("t/.zattrs", b'{"a": 1}')
    assert commit_and_diff(session) == expect(updated_arrays={"/t"})


# -- keys that are not Zarr's -----------------------------------------------------------


def test_plain_keys_fall_back_to_updated_keys(memory_repo: vs.Repository) -> None:
    session = memory_repo.writable_session("main")
    root = zarr.open_group(session.store, mode="w")
    root.create_array("t", shape=(4, 4), chunks=(2, 2), dtype="i4", fill_value=0)
    storage = session.store.storage
    storage.set("README.txt", b"hello")
    storage.set("raw/data.bin", b"\x00" * 600)  # a chunk object, not an inline value
    storage.set("t/notes", b"not a chunk key")
    storage.set("t/c/0", b"wrong number of dimensions")
    storage.set("t/c/0/x", b"not a coordinate")
    storage.set("t/c/0/0", b"a real chunk key")
    storage.set("other/zarr.json", b"not json")  # a metadata name that is not metadata
    storage.set("other/more/zarr.json", b'{"node_type": "banana"}')
    plain = {"README.txt", "raw/data.bin", "t/notes", "t/c/0", "t/c/0/x", "other/zarr.json",
             "other/more/zarr.json"}
    assert commit_and_diff(session) == expect(
        new_groups={"/"}, new_arrays={"/t"}, updated_chunks={"/t": {(0, 0)}},
        updated_keys=plain,
    )

    session = memory_repo.writable_session("main")
    session.store.storage.erase("README.txt")
    session.store.storage.set("raw/data.bin", b"\x01" * 600)
    assert commit_and_diff(session) == expect(updated_keys={"README.txt", "raw/data.bin"})


def test_keys_that_only_look_like_chunk_keys(memory_repo: vs.Repository) -> None:
    # Regression: "²".isdigit() is true, so this key used to crash status() and diff()
    # in int(); "01" would have aliased chunk 1. Neither is a key zarr writes.
    session = memory_repo.writable_session("main")
    zarr.create_array(session.store, name="t", shape=(4,), chunks=(2,), dtype="i4",
                      fill_value=0)
    commit_and_diff(session)
    session = memory_repo.writable_session("main")
    for key in ("t/c/\u00b2", "t/c/01", "t/c/\u0661", "t/c/-1", "t/c/1"):
        session.store.storage.set(key, b"x")
    assert commit_and_diff(session) == expect(
        updated_chunks={"/t": {(1,)}},
        updated_keys={"t/c/\u00b2", "t/c/01", "t/c/\u0661", "t/c/-1"},
    )


@pytest.mark.parametrize(
    ("encoding", "chunk_key"),
    [({"name": "v2"}, "t/1.0"), ({"name": "default"}, "t/c/1/0"), (None, "t/c/1/0")],
)
def test_chunk_key_encoding_without_configuration(
    memory_repo: vs.Repository, encoding: dict[str, str] | None, chunk_key: str
) -> None:
    # Regression: with no "configuration", the "v2" encoding's separator is "." (the
    # spec's default), not the default encoding's "/". zarr-python always writes the
    # configuration; other writers need not, and a missing encoding means "default".
    session = memory_repo.writable_session("main")
    zarr.create_array(session.store, name="t", shape=(4, 4), chunks=(2, 2), dtype="i4",
                      fill_value=0)
    metadata = json.loads(session.store.storage.get("t/zarr.json") or b"")
    if encoding is None:
        del metadata["chunk_key_encoding"]
    else:
        metadata["chunk_key_encoding"] = encoding
    session.store.storage.set("t/zarr.json", json.dumps(metadata).encode())
    commit_and_diff(session)

    session = memory_repo.writable_session("main")
    session.store.storage.set(chunk_key, b"chunk")
    assert commit_and_diff(session) == expect(updated_chunks={"/t": {(1, 0)}})


def test_is_empty(memory_repo: vs.Repository) -> None:
    session = memory_repo.writable_session("main")
    assert session.status().is_empty()
    assert session.status() == vs.Diff()
    head = memory_repo.lookup_branch("main")
    assert memory_repo.diff(from_branch="main", to_snapshot_id=head).is_empty()

    zarr.open_group(session.store, mode="w").attrs["a"] = 1
    assert not session.status().is_empty()
    session.discard_changes()
    assert session.status().is_empty()
    session.store.storage.set("only/a/key", b"x")
    assert not session.status().is_empty()
    assert session.status() == expect(updated_keys={"only/a/key"})


# -- between refs -----------------------------------------------------------------------


def test_diff_between_branches_and_tags(repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="w")
    root.create_array("t", shape=(4,), chunks=(2,), dtype="i4", fill_value=0)[:] = 1
    base = session.commit("base")
    repo.create_tag("v1", base)
    repo.create_branch("dev", base)

    dev = repo.writable_session("dev")
    root = zarr.open_group(dev.store)
    root["t"][0] = 9
    root.create_group("new")
    dev.commit("on dev")

    main = repo.writable_session("main")
    zarr.open_group(main.store)["t"][3] = 7
    main.commit("on main")

    on_dev = expect(new_groups={"/new"}, updated_chunks={"/t": {(0,)}})
    assert repo.diff(from_tag="v1", to_branch="dev") == on_dev
    assert repo.diff(from_snapshot_id=base, to_branch="dev") == on_dev
    # Backwards, creations become deletions; chunk coordinates stay.
    assert repo.diff(from_branch="dev", to_tag="v1") == expect(
        deleted_groups={"/new"}, updated_chunks={"/t": {(0,)}}
    )
    # Between two branches: everything either side changed since they parted.
    assert repo.diff(from_branch="main", to_branch="dev") == expect(
        new_groups={"/new"}, updated_chunks={"/t": {(0,), (1,)}}
    )
    assert repo.diff(from_tag="v1", to_tag="v1").is_empty()
    with pytest.raises(vs.TagNotFoundError):
        repo.diff(from_tag="nope", to_branch="main")
    with pytest.raises(vs.BranchNotFoundError):
        repo.diff(from_tag="v1", to_branch="nope")
    with pytest.raises(vs.SnapshotNotFoundError):
        repo.diff(from_snapshot_id="NOT-A-SNAPSHOT", to_branch="main")
    with pytest.raises(ValueError, match="one of"):
        repo.diff(from_tag="v1", from_branch="main", to_branch="dev")


def test_status_before_commit_equals_diff_after(repo: vs.Repository) -> None:
    """Spelled out once (``commit_and_diff`` does it everywhere): staged == committed."""
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="w")
    root.create_array("t", shape=(6,), chunks=(3,), dtype="i4", fill_value=0)[:] = 1
    first = session.commit("first")

    session = repo.writable_session("main")
    root = zarr.open_group(session.store)
    root["t"][4] = 2
    root.create_group("g").attrs["k"] = "v"
    session.store.storage.set("side/file", b"x")
    staged = session.status()
    assert staged == expect(new_groups={"/g"}, updated_chunks={"/t": {(1,)}},
                            updated_keys={"side/file"})
    second = session.commit("second")
    assert repo.diff(from_snapshot_id=first, to_snapshot_id=second) == staged
    assert repo.diff(from_snapshot_id=first, to_branch="main") == staged


def test_chunks_added_changed_and_removed_per_array() -> None:
    repo = vs.Repository.create(vs.in_memory_storage())
    session = repo.writable_session()
    zarr.create_array(session.store, name="t", shape=(40,), chunks=(10,), dtype="i4",
                      fill_value=0)[:30] = 1
    before = session.commit("chunks 0-2")
    session = repo.writable_session()
    array = zarr.open_array(session.store, path="t")
    array[:10] = 2     # changed
    array[10:20] = 0   # the fill value: the chunk is erased
    array[30:] = 5     # a chunk that did not exist
    staged = session.status()
    session.commit("edit")
    diff = repo.diff(from_snapshot_id=before, to_branch="main")
    for changes in (staged, diff):
        assert changes.updated_chunks == {"/t": frozenset({(0,), (1,), (3,)})}
        assert changes.new_chunks == {"/t": frozenset({(3,)})}
        assert changes.deleted_chunks == {"/t": frozenset({(1,)})}
        assert changes.chunk_counts("/t") == (1, 1, 1)
    assert diff.chunk_counts("/nothing") == (0, 0, 0)
    # A new array's chunks are all added; a deleted array lists no chunks.
    created = repo.diff(from_snapshot_id=repo.lookup_snapshot(before).parent_id or "",
                        to_snapshot_id=before)
    assert created.chunk_counts("/t") == (3, 0, 0)

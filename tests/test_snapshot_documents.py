"""Metadata documents carried in the snapshot (``Sizes.documents``): right, versioned, fast.

A snapshot keeps its tree's Zarr metadata documents (``zarr.json``,
``.zarray``, ``.zgroup``, ``.zattrs``) while they are small, so opening an
array of any version reads the snapshot and nothing else. They must be
exactly the tree's — a document missing from them is missing from the tree —
after every kind of writer (the state machine of ``tests/test_sizes.py``
checks them against a walk after commits, merges, squashes, purges), and a
repository written before they existed must read, extend and verify as
before. ``tests/data/previous_release.msgpack`` is such a repository: the
objects and refs that versionstore at git ``b41b546`` wrote (the script is
``_PREVIOUS_RELEASE_SCRIPT`` below).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import msgpack
import numpy as np
import pytest
import zarr

import versionstore as vs
from versionstore.backend.protocol import WriteBatch
from versionstore.codec import encode_snapshot
from versionstore.errors import CorruptObjectError
from versionstore.ids import ObjectId, object_id_from_text, object_id_text
from versionstore.records import DOCUMENTS_LIMIT, Sizes
from versionstore.sizes import WALK_DOCUMENTS, walk_documents

_DATA = Path(__file__).parent / "data" / "previous_release.msgpack"

_PREVIOUS_RELEASE_SCRIPT = """
repo = vs.Repository.create(vs.in_memory_storage())
s = repo.writable_session("main")
root = zarr.open_group(s.store, mode="w", attributes={"title": "previous release"})
t = root.create_array("temp", shape=(6, 4), chunks=(2, 4), dtype="float32",
                      attributes={"units": "K", "long_name": "x" * 300})
t[:] = np.arange(24, dtype="float32").reshape(6, 4)
v2 = zarr.create_array(s.store, name="old", shape=(4,), chunks=(2,), dtype="int16",
                       zarr_format=2)
v2[:] = [1, 2, 3, 4]
v2.attrs["kind"] = "v2"
first = s.commit("first")
s = repo.writable_session("main")
t = zarr.open_array(s.store, path="temp")
t[0:2] = -1
t.attrs["units"] = "degC"
second = s.commit("second")
repo.create_tag("v1", first)
# then every object (iter_object_ids, get_objects) and ref (list_refs("")), msgpack'd
"""


@pytest.fixture(params=["memory", "lmdb"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    return (vs.in_memory_storage() if request.param == "memory"
            else vs.lmdb_storage(tmp_path / "repo"))


def _snapshot(repo: vs.Repository, snapshot_id: str) -> Any:
    return repo.reader.snapshot(object_id_from_text(snapshot_id))


def _tree_documents(repo: vs.Repository, snapshot_id: str) -> dict[str, bytes] | None:
    return walk_documents(repo.reader.node, _snapshot(repo, snapshot_id).tree, repo.reader.chunks)


def _counting_reads(repo: vs.Repository) -> list[int]:
    """Count the objects the backend is asked for from now on (one entry per call)."""
    calls: list[int] = []
    original = repo.backend.get_objects

    def counting(ids: Any) -> Any:
        calls.append(len(ids))
        return original(ids)

    repo.backend.get_objects = counting  # type: ignore[method-assign]
    return calls


def _build(repo: vs.Repository) -> tuple[str, str]:
    session = repo.writable_session("main")
    group = zarr.open_group(session.store, mode="w", attributes={"title": "t"})
    array = group.create_array("hist", shape=(4000,), chunks=(4,), dtype="float32",
                               attributes={"units": "m", "note": "n" * 600})
    array[:] = np.arange(4000, dtype="float32")
    v2 = zarr.create_array(session.store, name="old", shape=(8,), chunks=(4,), dtype="int8",
                           zarr_format=2)
    v2[:] = np.arange(8, dtype="int8")
    v2.attrs["kind"] = "v2"
    first = session.commit("first")
    for step in range(3):
        session = repo.writable_session("main")
        array = zarr.open_array(session.store, path="hist")
        array[step * 4:(step + 1) * 4] = -1
        session.commit(f"change {step}")
    return first, repo.lookup_branch("main")


@pytest.mark.filterwarnings("ignore:Both zarr.json")  # the v2 array added a root .zgroup
def test_opening_an_array_of_an_old_snapshot_reads_the_snapshot_only(storage: Any) -> None:
    repo = vs.Repository.create(storage)
    first, _ = _build(repo)
    repo.close()
    repo = vs.Repository.open(storage)  # nothing cached
    calls = _counting_reads(repo)
    session = repo.readonly_session(snapshot_id=first)
    array = zarr.open_array(session.store, path="hist", mode="r")
    old = zarr.open_array(session.store, path="old", mode="r")
    group = zarr.open_group(session.store, mode="r")
    assert calls == [1]  # the snapshot: no tree node, no chunk object
    assert array.attrs["units"] == "m" and old.attrs["kind"] == "v2"
    assert group.attrs["title"] == "t"
    np.testing.assert_array_equal(array[:8], np.arange(8, dtype="float32"))
    np.testing.assert_array_equal(old[:], np.arange(8, dtype="int8"))


def test_documents_are_exactly_the_trees(storage: Any) -> None:
    repo = vs.Repository.create(storage)
    first, tip = _build(repo)
    for snapshot_id in (first, tip):
        documents = _snapshot(repo, snapshot_id).sizes.documents
        assert documents is not None
        assert documents == _tree_documents(repo, snapshot_id)
        assert set(documents) == {"zarr.json", ".zgroup", ".zattrs", "hist/zarr.json",
                                  "old/.zarray", "old/.zattrs"}
    # Deleting an array and moving one take their documents along.
    session = repo.writable_session("main")
    session.store.storage.erase_prefix("old/")
    session.move("/hist", "/renamed")
    moved = session.commit("delete and move")
    documents = _snapshot(repo, moved).sizes.documents
    assert set(documents) == {"zarr.json", ".zgroup", ".zattrs", "renamed/zarr.json"}
    assert documents == _tree_documents(repo, moved)
    read = repo.readonly_session(snapshot_id=moved).store.storage
    assert read.get("old/.zarray") is None and read.get("hist/zarr.json") is None
    assert json.loads(read.get("renamed/zarr.json"))["attributes"]["units"] == "m"
    assert repo.verify().ok


def test_a_writable_session_sees_its_staged_documents_first(storage: Any) -> None:
    repo = vs.Repository.create(storage)
    _build(repo)
    session = repo.writable_session("main")
    store = session.store.storage
    before = store.get("hist/zarr.json")
    assert before is not None and json.loads(before)["attributes"]["units"] == "m"
    zarr.open_array(session.store, path="hist").attrs["units"] = "km"
    assert json.loads(store.get("hist/zarr.json"))["attributes"]["units"] == "km"
    store.erase("old/.zattrs")
    assert store.get("old/.zattrs") is None
    session.discard_changes()
    assert store.get("hist/zarr.json") == before
    assert store.get("old/.zattrs") is not None


def test_documents_over_the_limit_are_not_kept_and_read_from_the_tree(storage: Any) -> None:
    repo = vs.Repository.create(storage)
    session = repo.writable_session("main")
    group = zarr.open_group(session.store, mode="w")
    for i in range(DOCUMENTS_LIMIT // 1000 + 2):
        group.create_array(f"a{i}", shape=(2,), chunks=(2,), dtype="int8",
                           attributes={"pad": "p" * 1000})
    tip = session.commit("many documents")
    assert _snapshot(repo, tip).sizes.documents is None
    read = repo.readonly_session(snapshot_id=tip)
    assert zarr.open_array(read.store, path="a3", mode="r").attrs["pad"] == "p" * 1000
    # Shrinking back under the limit: a commit on a small tree walks for them again.
    session = repo.writable_session("main")
    for i in range(DOCUMENTS_LIMIT // 1000 + 2):
        session.store.storage.erase_prefix(f"a{i}/")
    zarr.create_array(session.store, name="small", shape=(2,), chunks=(2,), dtype="int8")
    small = session.commit("few documents")
    assert set(_snapshot(repo, small).sizes.documents) == {"zarr.json", "small/zarr.json"}
    assert repo.verify().ok
    assert repo.verify().ok


def test_verify_reports_documents_that_differ_from_the_tree(storage: Any) -> None:
    repo = vs.Repository.create(storage)
    _, tip = _build(repo)
    snapshot = _snapshot(repo, tip)
    documents = dict(snapshot.sizes.documents)
    documents["hist/zarr.json"] = b"{}"
    bad = attrs.evolve(snapshot, sizes=attrs.evolve(snapshot.sizes, documents=documents))
    bad_id, frame = encode_snapshot(bad)
    assert repo.backend.write(WriteBatch(objects=[(bad_id, frame)]))
    repo.reset_branch("main", object_id_text(bad_id))
    problems = repo.verify().problems
    assert len(problems) == 1 and "recorded metadata documents differ" in problems[0]
    assert "hist/zarr.json" in problems[0]


def test_malformed_documents_are_corruption(storage: Any) -> None:
    repo = vs.Repository.create(storage)
    _, tip = _build(repo)
    snapshot = _snapshot(repo, tip)
    # Unsorted keys are refused when the record is built, and when it is read.
    with pytest.raises(ValueError, match="sorted"):
        attrs.evolve(snapshot.sizes, documents={"b/zarr.json": b"", "a/zarr.json": b""}).check()
    with pytest.raises(ValueError, match="names no metadata document"):
        attrs.evolve(snapshot.sizes, documents={"a/c/0": b""}).check()
    bad_id, frame = encode_snapshot(attrs.evolve(snapshot, sizes=attrs.evolve(
        snapshot.sizes, documents={"b/zarr.json": b"", "a/zarr.json": b""})))
    assert repo.backend.write(WriteBatch(objects=[(bad_id, frame)]))
    with pytest.raises(CorruptObjectError):
        vs.Repository.open(storage).reader.snapshot(bad_id)


def _stored_sizes_fields(repo: vs.Repository, snapshot_id: str) -> list[Any]:
    """The raw ``sizes`` field of a stored snapshot (its eighth)."""
    from versionstore.codec import KIND_SNAPSHOT, _unframe, _unpack  # the record as stored

    object_id = object_id_from_text(snapshot_id)
    data = repo.backend.get_objects([object_id])[0]
    assert data is not None
    fields: list[Any] = _unpack("", _unframe("", data, KIND_SNAPSHOT))[7]
    return fields


def _load_previous_release(storage: Any) -> dict[str, Any]:
    dump = msgpack.unpackb(_DATA.read_bytes(), raw=False)
    backend = storage.open_backend()
    assert backend.write(WriteBatch(objects=[(ObjectId(i), d) for i, d in dump["objects"]],
                                    refs=dict(dump["refs"])))
    backend.close()
    return dump  # type: ignore[no-any-return]


@pytest.mark.filterwarnings("ignore:Both zarr.json")  # its v2 array added a root .zgroup
def test_a_repository_written_by_the_previous_release(storage: Any) -> None:
    dump = _load_previous_release(storage)
    repo = vs.Repository.open(storage)
    for snapshot_id in (dump["first"], dump["second"]):
        sizes = _snapshot(repo, snapshot_id).sizes
        assert sizes is not None and sizes.documents is None  # it kept none
        assert len(_stored_sizes_fields(repo, snapshot_id)) == 2
    # Read from the tree, as before.
    old = repo.readonly_session(tag="v1")
    temp = zarr.open_array(old.store, path="temp", mode="r")
    assert temp.attrs["units"] == "K" and len(temp.attrs["long_name"]) == 300
    np.testing.assert_array_equal(temp[:], np.arange(24, dtype="float32").reshape(6, 4))
    v2 = zarr.open_array(old.store, path="old", mode="r")
    assert v2.attrs["kind"] == "v2" and list(v2[:]) == [1, 2, 3, 4]
    tip = repo.readonly_session("main")
    assert zarr.open_array(tip.store, path="temp", mode="r").attrs["units"] == "degC"
    assert zarr.open_group(tip.store, mode="r").attrs["title"] == "previous release"
    assert repo.verify().ok
    # Extended: the next commit (a small tree) gains the documents; the old ones stay.
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="temp").attrs["units"] = "F"
    new = session.commit("third")
    documents = _snapshot(repo, new).sizes.documents
    assert documents == _tree_documents(repo, new)
    assert set(documents) == {"zarr.json", ".zgroup", ".zattrs", "temp/zarr.json", "old/.zarray",
                              "old/.zattrs"}
    assert json.loads(documents["temp/zarr.json"])["attributes"]["units"] == "F"
    assert len(_stored_sizes_fields(repo, new)) == 3
    assert _snapshot(repo, dump["second"]).sizes.documents is None
    merged = repo.merge(from_tag="v1", into_branch="main", on_conflict="ours",
                        fast_forward=False)
    assert _snapshot(repo, merged).sizes.documents == _tree_documents(repo, merged)
    report = repo.verify()
    assert report.ok, report.problems
    assert repo.garbage_collect().deleted == 0


def test_a_large_tree_without_documents_is_not_walked_at_commit(storage: Any) -> None:
    """Over ``WALK_DOCUMENTS`` keys, a base without documents passes on "not kept"."""
    repo = vs.Repository.create(storage)
    session = repo.writable_session("main")
    session.set_values([(f"k/{i}", b"v") for i in range(WALK_DOCUMENTS + 1)])
    zarr.create_array(session.store, name="a", shape=(2,), chunks=(2,), dtype="int8")
    tip = session.commit("big")
    snapshot = _snapshot(repo, tip)
    assert snapshot.sizes.documents is not None
    # Store it again as the previous release wrote it (no documents) and build on it.
    old = attrs.evolve(snapshot, sizes=Sizes(rows=snapshot.sizes.rows))
    old_id, frame = encode_snapshot(old)
    assert repo.backend.write(WriteBatch(objects=[(old_id, frame)]))
    repo.reset_branch("main", object_id_text(old_id))
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="a").attrs["x"] = 1
    new = session.commit("on the old one")
    assert _snapshot(repo, new).sizes.documents is None
    read = repo.readonly_session(snapshot_id=new)
    assert zarr.open_array(read.store, path="a", mode="r").attrs["x"] == 1
    assert repo.verify().ok


@pytest.mark.parametrize("name", ["deep/zarr.json", "deep/.zattrs"])
def test_a_document_nested_too_deeply_to_parse_is_not_a_document(name: str) -> None:
    # json.loads raises RecursionError past a few thousand levels: status, commit, du,
    # merges and moves read documents, and every one of them then failed, so none of the
    # session's other staged writes could be committed.
    repo = vs.Repository.create(vs.in_memory_storage())
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="t", shape=(10,), chunks=(5,), dtype="i4")[:] = 1
    depth = 10_000
    deep = (b'{"zarr_format": 3, "node_type": "group", "attributes": '
            + b'{"a":' * depth + b"1" + b"}" * depth + b"}")
    session.store.storage.set(name, deep)
    assert name in session.status().updated_keys
    snapshot = session.commit("deep attributes")
    stored = repo.readonly_session(snapshot_id=snapshot).store.storage
    assert stored.get(name) == deep
    assert zarr.open_array(repo.readonly_session().store, path="t", mode="r")[0] == 1
    assert repo.du().chunks >= 2
    assert repo.verify().ok

"""Cherry-pick, revert, squash, amend, move and the ops log, one behaviour at a time.

Also: version-1 snapshot records (one optional parent) still read and
extend, and the ops log does not keep snapshots alive through garbage
collection.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import msgpack
import pytest
import zarr

import versionstore as vs
from versionstore.codec import KIND_SNAPSHOT, _frame, pack_metadata
from versionstore.consolidated import moved_view, view_keys
from versionstore.ids import hash_object, object_id_from_text, object_id_text


@pytest.fixture
def repo() -> vs.Repository:
    return vs.Repository.create(vs.in_memory_storage())


def _commit(repo: vs.Repository, branch: str, **values: bytes) -> str:
    session = repo.writable_session(branch)
    session.set_values(sorted(values.items()))
    return session.commit(",".join(sorted(values)))


def _content(repo: vs.Repository, **version: str) -> dict[str, bytes | None]:
    session = repo.readonly_session(**version)
    entries = dict(session.iter_entries("", ""))
    return dict(zip(entries, session.read_entries(list(entries.values())), strict=True))


def test_version_1_snapshots_still_read_and_extend(repo: vs.Repository) -> None:
    parent = object_id_from_text(repo.lookup_branch("main"))
    stamp = msgpack.Timestamp.from_datetime(datetime(2024, 1, 1, tzinfo=UTC))
    payload = msgpack.packb([1, parent, None, "written by format 1", stamp,
                             msgpack.ExtType(2, pack_metadata({"old": True}))],
                            use_bin_type=True)
    old_id = hash_object(KIND_SNAPSHOT, payload)
    repo.backend.put_objects([(old_id, _frame(KIND_SNAPSHOT, payload, compress=False))])
    old = object_id_text(old_id)
    repo.create_branch("old", old)
    info = repo.lookup_snapshot(old)
    assert info.parent_ids == (repo.lookup_branch("main"),) and info.metadata == {"old": True}
    new = _commit(repo, "old", k=b"v")
    assert [i.id for i in repo.ancestry(branch="old")][:2] == [new, old]
    assert repo.verify().ok


def test_cherry_pick_and_revert(repo: vs.Repository) -> None:
    _commit(repo, "main", a=b"1")
    repo.create_branch("dev", repo.lookup_branch("main"))
    picked = _commit(repo, "dev", b=b"2", a=b"3")
    _commit(repo, "dev", c=b"4")
    tip = repo.cherry_pick(picked, "main")
    assert _content(repo, branch="main") == {"a": b"3", "b": b"2"}
    info = repo.lookup_snapshot(tip)
    assert info.message.startswith(f"Cherry-pick {picked}") and len(info.parent_ids) == 1
    with pytest.raises(vs.NothingToCommitError):
        repo.cherry_pick(picked, "main")
    entry = next(repo.ops_log())
    assert (entry.kind, entry.source, entry.new) == ("cherry_pick", picked, tip)
    repo.revert(picked, on_branch="main")
    assert _content(repo, branch="main") == {"a": b"1"}
    _commit(repo, "main", a=b"9")
    before = repo.lookup_branch("main")
    with pytest.raises(vs.MergeConflictError) as caught:
        repo.revert(picked, on_branch="main")  # "a" changed again since
    assert "revert into branch 'main'" in str(caught.value)
    assert repo.lookup_branch("main") == before
    assert asyncio.run(repo.cherry_pick_async(picked, "main", on_conflict="ours"))
    assert _content(repo, branch="main") == {"a": b"9", "b": b"2"}
    assert asyncio.run(repo.revert_async(picked, "main", on_conflict="theirs"))
    assert _content(repo, branch="main") == {"a": b"1"}


def test_squash_keeps_old_snapshots_readable(repo: vs.Repository) -> None:
    base = _commit(repo, "main", a=b"1")
    middle = _commit(repo, "main", b=b"2")
    _commit(repo, "main", c=b"3")
    repo.create_tag("before-squash", repo.lookup_branch("main"))
    squashed = repo.squash("main", since_snapshot_id=base)
    info = repo.lookup_snapshot(squashed)
    assert info.parent_ids == (base,) and info.message == "b\nc"
    assert _content(repo, branch="main") == {"a": b"1", "b": b"2", "c": b"3"}
    assert _content(repo, snapshot_id=middle) == {"a": b"1", "b": b"2"}
    assert [i.id for i in repo.ancestry(tag="before-squash")][2] == base
    with pytest.raises(ValueError, match="not an earlier snapshot"):
        repo.squash("main", since_snapshot_id=middle)
    with pytest.raises(ValueError, match="not an earlier snapshot"):
        repo.squash("main", since_snapshot_id=squashed)
    tip = asyncio.run(repo.squash_async("main", since_snapshot_id=base, message="again"))
    assert repo.lookup_snapshot(tip).message == "again"


def test_amend(repo: vs.Repository) -> None:
    first = _commit(repo, "main", a=b"1")
    tip = _commit(repo, "main", b=b"2")
    session = repo.writable_session("main")
    amended = session.amend("better message")  # message only
    info = repo.lookup_snapshot(amended)
    assert (info.parent_ids, info.message) == ((first,), "better message")
    assert _content(repo, branch="main") == {"a": b"1", "b": b"2"}
    session.set_values([("c", b"3")])
    again = asyncio.run(session.amend_async(metadata={"n": 1}))
    info = repo.lookup_snapshot(again)
    assert (info.parent_ids, info.message, info.metadata) == ((first,), "better message",
                                                              {"n": 1})
    assert _content(repo, branch="main") == {"a": b"1", "b": b"2", "c": b"3"}
    assert _content(repo, snapshot_id=tip) == {"a": b"1", "b": b"2"}  # still readable
    assert [(e.kind, e.old, e.new) for e in list(repo.ops_log())[:2]] == [
        ("amend", amended, again), ("amend", tip, amended)]


@pytest.mark.parametrize("backend", ["memory", "lmdb"])
def test_amend_refuses_the_initial_snapshot(backend: str, tmp_path: Path) -> None:
    """As icechunk (``NoAmendForInitialCommit``): a branch still at the root commits instead.

    ``amend`` replaced the parentless initial snapshot by a second root.
    """
    storage = vs.in_memory_storage() if backend == "memory" else vs.lmdb_storage(tmp_path / "r")
    with vs.Repository.create(storage) as repo:
        root = repo.lookup_branch("main")
        repo.create_branch("dev", root)
        session = repo.writable_session("main")
        session.set_values([("a", b"1")])
        with pytest.raises(vs.AmendInitialSnapshotError, match="initial snapshot") as refused:
            session.amend("rewrite the root")
        assert (refused.value.branch, refused.value.snapshot_id) == ("main", root)
        with pytest.raises(vs.AmendInitialSnapshotError):
            asyncio.run(session.amend_async())
        with pytest.raises(vs.AmendInitialSnapshotError):
            repo.writable_session("dev").amend("message only")
        assert repo.lookup_branch("main") == root == repo.lookup_branch("dev")
        assert [entry.kind for entry in repo.ops_log()].count("amend") == 0
        first = session.commit("first")  # the staged change was kept
        assert repo.lookup_snapshot(first).parent_ids == (root,)
        assert _content(repo, branch="main") == {"a": b"1"}
        again = repo.writable_session("main").amend("first, amended")  # a child amends
        assert repo.lookup_snapshot(again).parent_ids == (root,)


def test_move(repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    root = zarr.open_group(session.store)
    root.create_group("g").create_array("t", shape=(4,), chunks=(2,), dtype="i4")[:] = 7
    session.commit("made g/t")
    session = repo.rearrange_session("main")
    for source, target, reason in [
        ("/", "/x", "root"), ("/g", "/", "root"), ("/nope", "/x", "node not found"),
        ("/g", "/g/h", "into itself"), ("/g", "/g", "into itself"),
    ]:
        with pytest.raises(vs.InvalidMoveError, match=reason):
            session.move(source, target)
    session.move("/g/t", "/u")
    with pytest.raises(vs.InvalidMoveError, match="already exists"):
        session.move("/g", "/u")
    session.discard_changes()
    assert not session.has_uncommitted_changes
    session.move("/g", "/h")
    zarr.open_array(session.store, path="h/t")[0] = 1  # moves mix with data writes
    session.commit("renamed g to h")
    moved = zarr.open_array(repo.readonly_session("main").store, path="h/t", mode="r")
    assert moved[:].tolist() == [1, 7, 7, 7]
    assert not any(key.startswith("g/") for key in _content(repo, branch="main"))
    renamed = next(repo.ancestry())
    assert renamed.parent_id is not None
    diff = repo.diff(from_snapshot_id=renamed.parent_id, to_branch="main")
    assert (diff.deleted_groups, diff.new_groups) == ({"/g"}, {"/h"})


def test_moved_view_renames_only_the_moved_node_and_leaves_other_documents() -> None:
    """``g2`` beside a moved ``g`` keeps its entries and their order; a document
    that is not JSON, has no view, or lies beside the move is left alone."""
    entries = {"g": {"node_type": "group"}, "g/v": {"node_type": "array"},
               "g2": {"node_type": "group"}, "g2/v": {"node_type": "array"}}
    document = {"zarr_format": 3, "node_type": "group", "attributes": {"n": float("nan")},
                "consolidated_metadata": {"kind": "inline", "must_understand": False,
                                          "metadata": entries}}
    raw = json.dumps(document, indent=2).encode()
    moved = moved_view("zarr.json", raw, "g", "h", dict)
    assert moved is not None and moved.startswith(b"{\n")
    view = json.loads(moved)["consolidated_metadata"]["metadata"]
    assert list(view) == ["h", "h/v", "g2", "g2/v"]
    assert moved_view("zarr.json", moved, "h", "g", dict) == raw  # and back, byte for byte
    assert moved_view("zarr.json", raw, "g", None, dict) is not None  # a purge drops g
    assert moved_view("zarr.json", b"not json", "g", "h", dict) is None
    assert moved_view("zarr.json", b'{"zarr_format": 3}', "g", "h", dict) is None
    assert moved_view("x/zarr.json", raw, "g", "h", dict) is None
    assert moved_view("zarr.json", raw, "q", "r", dict) is None
    assert view_keys("a/b", "c") == [".zmetadata", "a/.zmetadata", "a/zarr.json", "zarr.json"]


def test_moved_view_rewrites_a_nested_view_flat() -> None:
    """A node held only in a group's nested view moves too, and the view is written flat."""
    def group(children: dict[str, object]) -> dict[str, object]:
        return {"node_type": "group", "consolidated_metadata": {
            "kind": "inline", "must_understand": False, "metadata": children}}

    array = {"node_type": "array"}
    document = {"zarr_format": 3, "node_type": "group",
                "consolidated_metadata": group({"a": group({"b": group({"x": array})})})[
                    "consolidated_metadata"]}
    moved = moved_view("zarr.json", json.dumps(document).encode(), "a/b", "c", dict)
    assert moved is not None
    view = json.loads(moved)["consolidated_metadata"]["metadata"]
    assert view == {"a": group({}), "c": group({}), "c/x": array}


def test_ops_log_records_every_ref_change(repo: vs.Repository) -> None:
    initial = repo.lookup_branch("main")
    first = _commit(repo, "main", a=b"1")
    repo.create_branch("dev", first)
    repo.create_tag("v1", first)
    repo.reset_branch("main", initial)
    repo.delete_tag("v1")
    repo.delete_branch("dev")
    entries = [(e.kind, e.ref_type, e.name, e.old, e.new) for e in repo.ops_log()]
    assert entries == [
        ("delete_branch", "branch", "dev", first, None),
        ("delete_tag", "tag", "v1", first, None),
        ("reset_branch", "branch", "main", first, initial),
        ("create_tag", "tag", "v1", None, first),
        ("create_branch", "branch", "dev", None, first),
        ("commit", "branch", "main", initial, first),
        ("create_branch", "branch", "main", None, initial),
    ]
    assert next(repo.ops_log()).written_at.tzinfo is not None
    # The ops log keeps no snapshot alive: `first` is unreachable, so gc removes it.
    assert repo.garbage_collect().deleted > 0
    assert repo.backend.get_objects([object_id_from_text(first)]) == [None]
    after = [(e.kind, e.ref_type, e.name, e.old, e.new) for e in repo.ops_log()]
    assert after == [("gc", "repository", "", None, None), *entries]  # kept; the run recorded
    assert repo.verify().ok


def test_a_refused_operation_leaves_the_ops_log_alone(repo: vs.Repository) -> None:
    _commit(repo, "main", a=b"1")
    before = [e.id for e in repo.ops_log()]
    with pytest.raises(vs.RefExistsError):
        repo.create_branch("main", repo.lookup_branch("main"))
    with pytest.raises(vs.SnapshotNotFoundError):
        repo.reset_branch("main", "A" * 32)
    assert [e.id for e in repo.ops_log()] == before


def test_history_pages_make_ancestry_read_one_object_per_page(repo: vs.Repository) -> None:
    from versionstore.records import HISTORY_PAGE_SIZE

    count = 2 * HISTORY_PAGE_SIZE + 10
    session = repo.writable_session("main")
    for n in range(count):
        session.set_values([("n", str(n).encode())])
        session.commit(f"commit {n}")
    cold = vs.Repository(repo.storage, repo.backend)
    reads: list[int] = []
    original = cold.backend.get_objects

    def counting(ids: list[object]) -> list[bytes | None]:
        reads.append(len(ids))
        return original(ids)  # type: ignore[arg-type]

    cold.reader.backend = type("Counting", (), {"get_objects": staticmethod(counting)})()
    infos = list(cold.ancestry(branch="main"))
    assert len(reads) <= count // HISTORY_PAGE_SIZE + 3
    assert [info.message for info in infos[:2]] == [f"commit {count - 1}", f"commit {count - 2}"]
    assert len(infos) == count + 1 and infos[-1].parent_ids == ()
    walked, current = [], repo.lookup_branch("main")
    while current is not None:  # the same chain, read snapshot by snapshot
        walked.append(current)
        current = repo.lookup_snapshot(current).parent_id
    assert [info.id for info in infos] == walked
    assert [i.id for i in cold.ancestry(branch="main", all_parents=True)] == walked
    middle = infos[count // 2]
    as_of = vs.Repository(repo.storage, repo.backend).readonly_session(
        "main", as_of=middle.written_at)
    assert as_of.snapshot_id == middle.id
    # A history rewritten below a page boundary gets new pages; the old stay readable.
    repo.reset_branch("main", infos[HISTORY_PAGE_SIZE + 5].id)
    repo.garbage_collect()
    assert [i.id for i in repo.ancestry(branch="main")] == walked[HISTORY_PAGE_SIZE + 5:]
    report = repo.verify()
    assert report.ok, report.problems

"""The history index by columns (``HistoryPage`` format 2) and the lazy ``SnapshotInfo``.

Listing a history reads one object per page and decodes only the ids; the
other fields of an info are decoded on first use, and must then be exactly
what reading the snapshot itself gives. Pages written in format 1 (whole
snapshots) still read. A page whose rows disagree with its ids is corrupt.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import attrs
import msgpack
import pytest

import versionstore as vs
from versionstore import codec
from versionstore.codec import (
    KIND_HISTORY,
    _frame,
    _snapshot_fields,
    decode_history_page,
    encode_history_page,
    encode_snapshot,
    history_entries,
)
from versionstore.ids import hash_object, object_id_from_text, object_id_text
from versionstore.records import HISTORY_PAGE_SIZE, HistoryPage, Snapshot


@pytest.fixture(params=["memory", "lmdb"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> vs.Repository:
    storage = vs.in_memory_storage() if request.param == "memory" else vs.lmdb_storage(
        tmp_path / "repo")
    return vs.Repository.create(storage)


def _commits(repo: vs.Repository, count: int, branch: str = "main") -> None:
    session = repo.writable_session(branch)
    for n in range(count):
        session.set_values([("n", str(n).encode())])
        session.commit(f"commit {n}", metadata={"n": n, "tags": ["a", ("b", 1)]})


def test_listed_infos_equal_the_snapshots_they_name(repo: vs.Repository) -> None:
    _commits(repo, HISTORY_PAGE_SIZE + 7)
    repo.create_branch("dev", repo.lookup_branch("main"))
    _commits(repo, 3, "dev")
    repo.merge("dev", "main", fast_forward=False)
    _commits(repo, 2)
    cold = vs.Repository(repo.storage, repo.backend)
    listed = list(cold.ancestry(branch="main"))
    assert len(listed) == HISTORY_PAGE_SIZE + 7 + 2 + 1 + 1
    for info in listed:
        eager = repo.lookup_snapshot(info.id)
        assert info == eager and hash(info) == hash(eager)
        assert (info.parent_id, info.parent_ids, info.written_at, info.message,
                info.metadata) == (eager.parent_id, eager.parent_ids, eager.written_at,
                                   eager.message, eager.metadata)
        assert repr(info) == repr(eager)
    merge = next(i for i in listed if len(i.parent_ids) == 2)
    assert merge.parent_ids[1] == repo.lookup_branch("dev")
    assert listed[3].metadata == {"n": HISTORY_PAGE_SIZE + 6, "tags": ["a", ("b", 1)]}


def test_an_info_is_frozen_and_pickles(repo: vs.Repository) -> None:
    _commits(repo, 3)
    info = list(repo.ancestry(branch="main"))[1]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        info.message = "changed"  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        del info.id
    copy = pickle.loads(pickle.dumps(info))
    assert copy == info and copy.message == "commit 1"
    built = vs.SnapshotInfo(id=info.id, parent_id=info.parent_id, written_at=info.written_at,
                            message=info.message, metadata=info.metadata,
                            parent_ids=info.parent_ids)
    assert built == info and built != object()


def test_listing_decodes_only_the_ids(repo: vs.Repository,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _commits(repo, 2 * HISTORY_PAGE_SIZE + 3)
    decoded: list[int] = []
    original = history_entries

    def counting(name: str, page: HistoryPage) -> tuple[Snapshot, ...]:
        decoded.append(len(page.ids))
        return original(name, page)

    monkeypatch.setattr("versionstore.history.history_entries", counting)
    cold = vs.Repository(repo.storage, repo.backend)
    infos = list(cold.ancestry(branch="main"))
    assert len(infos) == 2 * HISTORY_PAGE_SIZE + 4 and decoded == []
    assert infos[-2].message == "commit 0"  # decodes that one page's rows, once
    assert infos[-3].message == "commit 1"
    assert len(decoded) == 1


def test_format_1_pages_still_read(repo: vs.Repository) -> None:
    root = object_id_from_text(repo.lookup_branch("main"))
    first = Snapshot(parents=(root,), tree=None, message="one",
                     written_at=datetime(2024, 1, 1, tzinfo=UTC))
    first_id, first_frame = encode_snapshot(first)
    root_snapshot = repo.reader.snapshot(root)
    # Format 1: [1, [[id, snapshot fields], ...], previous], compressed whole snapshots.
    body = [1, [[first_id, _snapshot_fields(first)],
                [root, _snapshot_fields(attrs.evolve(root_snapshot, history=None))]], None]
    payload = msgpack.packb(body, use_bin_type=True)
    page_id = hash_object(KIND_HISTORY, payload)
    second = Snapshot(parents=(first_id,), tree=None, message="two",
                      written_at=datetime(2024, 1, 2, tzinfo=UTC), history=page_id)
    second_id, second_frame = encode_snapshot(second)
    repo.backend.put_objects([(first_id, first_frame), (second_id, second_frame),
                              (page_id, _frame(KIND_HISTORY, payload, compress=True))])
    repo.create_branch("old", object_id_text(second_id))
    infos = list(repo.ancestry(branch="old"))
    assert [i.message for i in infos] == ["two", "one", repo.lookup_snapshot(
        object_id_text(root)).message]
    page = decode_history_page("p", _frame(KIND_HISTORY, payload, compress=True))
    assert page.ids == (first_id, root) and page.after is None and page.previous is None
    assert [s.message for s in history_entries("p", page)] == ["one", root_snapshot.message]
    session = repo.writable_session("old")  # a new commit on top writes a format-2 page
    session.set_values([("k", b"v")])
    session.commit("three")
    assert [i.message for i in repo.ancestry(branch="old")][:3] == ["three", "two", "one"]
    assert repo.verify().ok


def test_a_page_whose_rows_disagree_with_its_ids_is_corrupt(repo: vs.Repository) -> None:
    _commits(repo, 3)
    tip = repo.reader.snapshot(object_id_from_text(repo.lookup_branch("main")))
    assert tip.history is not None
    page = repo.reader.history_page(tip.history)
    swapped = attrs.evolve(page, ids=page.ids[::-1], texts=page.texts[::-1])
    _, frame = encode_history_page(swapped)
    with pytest.raises(vs.CorruptObjectError):
        history_entries("p", decode_history_page("p", frame))
    with pytest.raises(ValueError, match="disagree"):
        attrs.evolve(page, texts=page.texts[::-1]).check()
    with pytest.raises(vs.CorruptObjectError, match="columns"):
        decode_history_page("p", _frame(KIND_HISTORY, msgpack.packb(
            [2, [b"short"], ["X"], b"", None, None], use_bin_type=True), compress=False))
    assert codec.frame_kind(frame) == KIND_HISTORY


def test_merge_base_reads_long_histories_a_page_at_a_time(repo: vs.Repository) -> None:
    _commits(repo, 3 * HISTORY_PAGE_SIZE)
    fork = repo.lookup_branch("main")
    repo.create_branch("dev", fork)
    _commits(repo, 5, "dev")
    _commits(repo, 5)
    cold = vs.Repository(repo.storage, repo.backend)
    reads: list[int] = []
    original = cold.backend.get_objects

    def counting(ids: list[object]) -> list[bytes | None]:
        reads.append(len(ids))
        return original(ids)  # type: ignore[arg-type]

    cold.reader.backend = type("Counting", (), {"get_objects": staticmethod(counting)})()
    assert cold.merge_base(repo.lookup_branch("main"), repo.lookup_branch("dev")) == fork
    assert len(reads) < 3 * HISTORY_PAGE_SIZE // 8
    every = [i.id for i in repo.ancestry(branch="main", all_parents=True)]
    assert every == [i.id for i in repo.ancestry(branch="main")]


def _elsewhere(path: Path, code: str) -> None:
    """Run ``code`` in another Python process with ``repo`` open on the LMDB repository."""
    prelude = ("import sys, datetime, versionstore as vs\n"
               f"repo = vs.Repository.open(vs.lmdb_storage({str(path)!r}))\n")
    subprocess.run([sys.executable, "-c", prelude + code], check=True, timeout=120,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def test_ancestry_sees_every_ref_move_made_by_another_process(tmp_path: Path) -> None:
    # Listing again costs little because pages and their infos are cached for
    # the process; the branch's ref and the grafts are read anew by every call,
    # so what another process did is seen at once.
    path = tmp_path / "repo"
    repo = vs.Repository.create(vs.lmdb_storage(path))
    _commits(repo, HISTORY_PAGE_SIZE + 3)
    before = [info.id for info in repo.ancestry()]
    assert [info.id for info in repo.ancestry()] == before  # now from the caches

    _elsewhere(path, "s = repo.writable_session('main')\n"
                     "s.set_values([('n', b'x')])\n"
                     "s.commit('from elsewhere')\n")
    after = list(repo.ancestry())
    assert after[0].message == "from elsewhere"
    assert [info.id for info in after[1:]] == before

    _elsewhere(path, f"repo.reset_branch('main', {before[5]!r})\n")
    assert [info.id for info in repo.ancestry()] == before[5:]

    cut = repo.lookup_snapshot(before[10]).written_at
    _elsewhere(path, "repo.expire_snapshots(datetime.datetime.fromisoformat("
                     f"{cut.isoformat()!r}))\n")
    kept = [info.id for info in repo.ancestry()]
    assert kept == [*before[5:11], before[-1]]  # expired ones skipped; the first one stays
    assert [info.id for info in repo.ancestry()] == kept


def test_a_history_read_ahead_still_yields_every_snapshot_once(repo: vs.Repository) -> None:
    _commits(repo, 40)
    expected = [info.id for info in repo.ancestry()]
    history = repo.ancestry()
    assert iter(history) is history
    first = next(history)
    assert "commit 38" in repr(history)  # reads 31 ahead
    assert history._repr_html_()
    rest = [info.id for info in history]
    assert [first.id, *rest] == expected
    assert next(history, None) is None and "<History" in repr(history)


def _count_decodes(monkeypatch: pytest.MonkeyPatch, target: str,
                   original: Callable[[str, bytes], object]) -> list[str]:
    """Replace the decoder at ``target`` by one that records each object name it decodes."""
    decoded: list[str] = []

    def counting(name: str, data: bytes) -> object:
        decoded.append(name)
        return original(name, data)

    monkeypatch.setattr(target, counting)
    return decoded


def test_listing_a_branch_reads_only_the_links_of_its_tip(repo: vs.Repository,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _commits(repo, 3)
    decoded = _count_decodes(monkeypatch, "versionstore.history.decode_snapshot",
                             codec.decode_snapshot)
    cold = vs.Repository(repo.storage, repo.backend)
    infos = list(cold.ancestry(branch="main"))
    assert [i.id for i in infos] == [i.id for i in repo.ancestry(branch="main")]
    assert decoded == [], "ids only: the tip is not decoded whole"
    assert infos[0].message == "commit 2" and infos[0].metadata["n"] == 2
    assert infos[0] == repo.lookup_snapshot(infos[0].id)
    assert len(decoded) == 1


def test_a_tip_with_good_links_and_a_malformed_field_lists_then_names_itself() -> None:
    from versionstore import history

    parent = b"\1" * 20
    fields = _snapshot_fields(Snapshot(parents=(parent,), tree=None, message="m",
                                       written_at=datetime(2024, 1, 1, tzinfo=UTC)))
    fields[3] = 7  # the message: not a string
    payload = msgpack.packb(fields, use_bin_type=True)
    tip = hash_object(codec.KIND_SNAPSHOT, payload)
    frame = _frame(codec.KIND_SNAPSHOT, payload, compress=False)
    assert codec.snapshot_links("t", frame) == (parent, None)
    info = history._lazy_info(object_id_text(tip), history._Stored(tip, frame))
    assert info.id == object_id_text(tip)
    with pytest.raises(vs.CorruptObjectError, match=object_id_text(tip)):
        _ = info.message
    for bad in ([2, "not a list", None, "m", 0, None], [2, [b"short"], None, "m", 0, None]):
        with pytest.raises(vs.CorruptObjectError):
            codec.snapshot_links("t", _frame(codec.KIND_SNAPSHOT,
                                             msgpack.packb(bad, use_bin_type=True), False))


def test_a_repository_opened_again_lists_from_the_process_cache_and_reads_the_branch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    from zarrstore import lmdb_environment

    path = tmp_path / "repo"
    repo = vs.Repository.create(vs.lmdb_storage(path))
    _commits(repo, 2 * HISTORY_PAGE_SIZE + 3)
    before = [info.id for info in repo.ancestry()]
    repo.close()
    del repo
    gc.collect()
    assert str(path.resolve()) not in lmdb_environment._registry, (
        "what the process keeps of a history holds no environment")

    decoded = _count_decodes(monkeypatch, "versionstore.objects.decode_history_page",
                             codec.decode_history_page)
    reopened = vs.Repository.open(vs.lmdb_storage(path))
    assert [info.id for info in reopened.ancestry()] == before
    assert decoded == [], "listed from what the process already decoded"
    _elsewhere(path, "s = repo.writable_session('main')\n"
                     "s.set_values([('n', b'x')])\n"
                     "s.commit('from elsewhere')\n")
    again = vs.Repository.open(vs.lmdb_storage(path))
    after = list(again.ancestry())
    assert after[0].message == "from elsewhere", "the branch is read anew"
    assert [info.id for info in after[1:]] == before
    assert after[1] == reopened.lookup_snapshot(before[0])
    again.close()
    reopened.close()


def test_a_history_row_is_the_snapshots_fields_one_to_five_as_before(
    repo: vs.Repository,
) -> None:
    """``history_row`` packs the snapshot's parents, tree, message, time and metadata only.

    Byte for byte what it was (the snapshot's fields 1-5, its page and totals
    dropped), so pages stay identical for the same snapshots.
    """
    _commits(repo, 3)
    tip = repo.reader.snapshot(object_id_from_text(repo.lookup_branch("main")))
    assert tip.history is not None and tip.sizes is not None
    tip = attrs.evolve(tip, metadata={"n": 1, "s": "x"})
    before = msgpack.packb(_snapshot_fields(tip)[1:6], use_bin_type=True)
    assert codec.history_row(tip) == before
    assert codec.history_row(attrs.evolve(tip, history=None, sizes=None)) == before

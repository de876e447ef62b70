"""Values staged alone inside their staged record (issue 13's lone ``set``).

A lone write (``await store.set`` with nothing else in flight, ``storage.set``,
``Session.set_value``, a one-item ``set_values``) of at most
``STAGED_INLINE_LIMIT`` bytes is kept inside its staged record instead of as
a chunk object, so its LMDB transaction writes one database instead of three.
The commit stores it as a chunk object. Nothing a user can observe may
differ from staging it as a chunk: the tree a commit writes, status,
identical rewrites, conflicts, rebase, the snapshot's metadata documents,
gc, pickled copies in other processes and threads sharing the session.
(``test_crash_safety.py``'s SIGKILL-while-staging test stages 1 KiB values
this way; ``test_protocol.py``'s process stress test mixes both kinds.)
"""

from __future__ import annotations

import array
import json
import multiprocessing
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import versionstore as vs
from versionstore.codec import (
    KIND_STAGED,
    _decode_small,
    _entry,
    chunk_id_of,
    decode_staged,
    encode_staged,
)
from versionstore.ids import object_id_from_text
from versionstore.records import TOMBSTONE, ChunkRef
from versionstore.session import INLINE_LIMIT, STAGED_INLINE_BUDGET, STAGED_INLINE_LIMIT
from versionstore.tree import lookup


@pytest.fixture(params=["memory", "lmdb"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[vs.Repository]:
    storage: Any = (vs.in_memory_storage() if request.param == "memory"
                    else vs.lmdb_storage(tmp_path / "repo"))
    with vs.Repository.create(storage) as repo:
        yield repo


def _staged(repo: vs.Repository, session: vs.Session, key: str) -> object:
    name = f"stage/{session.session_id}/{key}"
    raw = repo.backend.get_ref(name)
    assert raw is not None
    return decode_staged(name, raw)


def _tree_entry(repo: vs.Repository, snapshot: str, key: str) -> object:
    tree = repo.reader.snapshot(object_id_from_text(snapshot)).tree
    return lookup(repo.reader.lookup_node, tree, key)


def test_a_lone_value_is_staged_in_its_record_and_committed_as_a_chunk(
        repo: vs.Repository) -> None:
    value = bytes(range(256)) * 4  # 1 KiB: over the tree's inline limit
    session = repo.writable_session("main")
    session.set_value("a/c/0", value)
    assert _staged(repo, session, "a/c/0") == value
    chunk_id = chunk_id_of(value)
    assert repo.backend.get_objects([chunk_id]) == [None]  # no chunk object yet
    assert session.store.storage.get("a/c/0") == value
    snapshot = session.commit("one")
    assert _tree_entry(repo, snapshot, "a/c/0") == ChunkRef(chunk_id=chunk_id, size=len(value))
    assert repo.backend.get_objects([chunk_id])[0] is not None
    assert repo.readonly_session(snapshot_id=snapshot).store.storage.get("a/c/0") == value
    report = repo.verify()
    assert report.ok, report.problems


def test_values_over_the_limit_and_batches_are_staged_as_chunks(repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    big = b"b" * (STAGED_INLINE_LIMIT + 1)
    session.set_value("big", big)
    session.set_values([("x", b"x" * 1000), ("y", b"y" * 1000)])
    for key, value in (("big", big), ("x", b"x" * 1000), ("y", b"y" * 1000)):
        assert _staged(repo, session, key) == ChunkRef(chunk_id=chunk_id_of(value),
                                                      size=len(value))
    session.set_value("small", b"s" * INLINE_LIMIT)
    assert _staged(repo, session, "small") == b"s" * INLINE_LIMIT


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(st.sampled_from([f"a/c/{i}" for i in range(12)] + ["a/zarr.json"]),
                       st.integers(0, STAGED_INLINE_LIMIT + 600), min_size=1))
def test_a_lone_write_and_a_batch_make_the_same_tree(sizes: dict[str, int]) -> None:
    values = {key: bytes([n % 251]) * size for n, (key, size) in enumerate(sizes.items())}
    alone, batched = (vs.Repository.create(vs.in_memory_storage()) for _ in range(2))
    first = alone.writable_session("main")
    for key, value in values.items():
        first.set_value(key, value)
    second = batched.writable_session("main")
    second.set_values([*values.items(), ("pad", b"p")])
    second.erase_keys(["pad"])  # a batch of two or more keys is never inline
    a, b = first.commit("alone"), second.commit("batched")
    assert (alone.reader.snapshot(object_id_from_text(a)).tree
            == batched.reader.snapshot(object_id_from_text(b)).tree)
    assert (alone.reader.snapshot(object_id_from_text(a)).sizes
            == batched.reader.snapshot(object_id_from_text(b)).sizes)


def test_an_identical_rewrite_staged_alone_is_no_change(repo: vs.Repository) -> None:
    value = b"v" * 2000
    session = repo.writable_session("main")
    session.set_values([("k", value), ("j", b"j" * 2000)])
    session.commit("chunks")
    again = repo.writable_session("main")
    again.set_value("k", value)
    assert not again.has_uncommitted_changes
    assert again.status().is_empty()
    with pytest.raises(vs.NothingToCommitError):
        again.commit("nothing")


def test_conflicts_and_rebase_compare_what_a_commit_records(repo: vs.Repository) -> None:
    value = b"v" * 3000
    ours = repo.writable_session("main")
    ours.set_value("k", value)  # inline, staged alone
    theirs = repo.writable_session("main")
    theirs.set_values([("k", value), ("other", b"o" * 3000)])  # chunk objects
    tip = theirs.commit("theirs")
    # The same value on both sides is no conflict: nothing of ours is left to record.
    with pytest.raises(vs.NothingToCommitError):
        ours.commit("ours")
    assert repo.lookup_branch("main") == tip
    # A different value staged alone conflicts with the branch's change.
    stale = repo.writable_session("main")
    stale.set_value("k", b"w" * 3000)
    newer = repo.writable_session("main")
    newer.set_values([("k", b"x" * 3000), ("z", b"z" * 3000)])
    newer.commit("newer")
    with pytest.raises(vs.ConflictError):
        stale.commit("stale")
    # rebase: an identical value staged alone is dropped, not carried as a revert.
    same = repo.writable_session("main")
    same.set_value("z", b"q" * 3000)
    moving = repo.writable_session("main")
    moving.set_values([("z", b"q" * 3000), ("y", b"y" * 3000)])
    moving.commit("moving")
    same.rebase()
    assert not same.has_uncommitted_changes


def test_a_large_metadata_document_staged_alone_is_kept_by_the_snapshot(
        repo: vs.Repository) -> None:
    document = json.dumps({"zarr_format": 3, "node_type": "group",
                           "attributes": {"long": "x" * 2000}}).encode()
    session = repo.writable_session("main")
    session.set_value("g/zarr.json", document)
    snapshot = session.commit("group")
    sizes = repo.reader.snapshot(object_id_from_text(snapshot)).sizes
    assert sizes is not None and sizes.documents is not None
    assert sizes.documents["g/zarr.json"] == document
    assert repo.readonly_session(snapshot_id=snapshot).store.storage.get("g/zarr.json") == document
    report = repo.verify()
    assert report.ok, report.problems


def test_gc_while_values_are_staged_alone_loses_nothing(repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    values = {f"a/c/{i}": bytes([i]) * (600 + i * 50) for i in range(60)}
    for key, value in list(values.items())[:30]:
        session.set_value(key, value)
    repo.garbage_collect()
    for key, value in list(values.items())[30:]:
        session.set_value(key, value)
    repo.garbage_collect(full=True)
    snapshot = session.commit("all")
    repo.garbage_collect()
    storage = repo.readonly_session(snapshot_id=snapshot).store.storage
    assert {key: storage.get(key) for key in values} == values
    report = repo.verify()
    assert report.ok, report.problems


def test_threads_sharing_a_session_stage_alone(repo: vs.Repository) -> None:
    session = repo.writable_session("main")

    def write(thread: int) -> None:
        for i in range(50):
            session.set_value(f"t{thread}/{i}", bytes([thread]) * (700 + i))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(4)))  # re-raises what a thread raised
    snapshot = session.commit("threads")
    storage = repo.readonly_session(snapshot_id=snapshot).store.storage
    for thread in range(4):
        for i in range(50):
            assert storage.get(f"t{thread}/{i}") == bytes([thread]) * (700 + i)


def _stage_alone(session: vs.Session, first: int) -> int:
    for i in range(first, first + 40):
        session.set_value(f"p/{i}", i.to_bytes(2, "big") * 400)
    return 40


def test_pickled_copies_in_other_processes_stage_alone(tmp_path: Path) -> None:
    repo = vs.Repository.create(vs.lmdb_storage(tmp_path / "repo"))
    session = repo.writable_session("main")
    spawn = multiprocessing.get_context("spawn")
    with spawn.Pool(2) as pool:
        done = pool.starmap(_stage_alone, [(session, 0), (session, 40)])
    assert done == [40, 40]
    snapshot = session.commit("from other processes")
    storage = repo.readonly_session(snapshot_id=snapshot).store.storage
    assert all(storage.get(f"p/{i}") == i.to_bytes(2, "big") * 400 for i in range(80))
    repo.close()


def _general_decode(name: str, data: bytes) -> object:
    try:
        return _decode_small(name, data, KIND_STAGED, "staged entry", 2, 4,
                             lambda f: TOMBSTONE if f[1] is None else _entry(name, f[1]),
                             named_at=2)
    except vs.VersionStoreError as exc:
        return type(exc)


def _fast_decode(name: str, data: bytes) -> object:
    try:
        return decode_staged(name, data)
    except vs.VersionStoreError as exc:
        return type(exc)


@given(name=st.text(min_size=1, max_size=80), value=st.binary(min_size=256, max_size=5000),
       data=st.data())
def test_the_inline_staged_decoder_answers_as_the_general_one(name: str, value: bytes,
                                                              data: Any) -> None:
    raw = encode_staged(name, value)
    assert decode_staged(name, raw) == value == _general_decode(name, raw)
    assert _fast_decode(name + "x", raw) == _general_decode(name + "x", raw)  # renamed
    position = data.draw(st.integers(0, len(raw) - 1), label="position")
    flip = data.draw(st.integers(1, 255), label="flip")
    damaged = bytearray(raw)
    damaged[position] ^= flip
    assert _fast_decode(name, bytes(damaged)) == _general_decode(name, bytes(damaged))
    assert _fast_decode(name, raw[:position]) == _general_decode(name, raw[:position])


def test_a_damaged_name_with_a_lone_surrogate_is_decoded_by_the_general_path() -> None:
    raw = encode_staged("stage/s/a/c/0", b"v" * 1000)
    assert _fast_decode("stage/s/a/c/\udcff", raw) == vs.errors.CorruptObjectError


@pytest.mark.parametrize("size", [100, INLINE_LIMIT + 1, STAGED_INLINE_LIMIT])
@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_a_lone_value_given_as_a_buffer_is_staged_as_its_bytes(
        repo: vs.Repository, size: int, kind: type) -> None:
    # set_values copies whatever buffer it is given; a one-item batch (set_value) must too,
    # and a later change of the caller's buffer must not change what was staged.
    buffer = bytearray(b"x" * size)
    session = repo.writable_session("main")
    session.set_values([("k/one", kind(buffer))])
    session.set_value("k/two", kind(buffer))
    buffer[:] = b"y" * size
    assert session.store.storage.get("k/one") == b"x" * size
    assert session.store.storage.get("k/two") == b"x" * size
    snapshot = session.commit("buffers")
    storage = repo.readonly_session(snapshot_id=snapshot).store.storage
    assert storage.get("k/one") == storage.get("k/two") == b"x" * size
    report = repo.verify()
    assert report.ok, report.problems


def test_rebase_keeping_theirs_drops_a_conflicting_value_staged_alone(
        repo: vs.Repository) -> None:
    first = repo.writable_session("main")
    first.set_values([("k", b"a" * 1000), ("j", b"j")])
    first.commit("base")
    ours = repo.writable_session("main")
    ours.set_value("k", b"o" * 1000)  # inline, listed as the chunk reference it commits as
    theirs = repo.writable_session("main")
    theirs.set_values([("k", b"t" * 1000), ("z", b"z")])
    tip = theirs.commit("theirs")
    ours.rebase(keep="theirs")
    assert ours.staged() == {}
    assert not ours.has_uncommitted_changes
    with pytest.raises(vs.NothingToCommitError):
        ours.commit("nothing of ours is left")
    assert repo.lookup_branch("main") == tip
    assert repo.readonly_session(branch="main").store.storage.get("k") == b"t" * 1000


@pytest.mark.parametrize("items", [100, 600])
def test_a_value_given_as_a_memoryview_of_wider_items_is_sized_in_bytes(
        repo: vs.Repository, items: int) -> None:
    # len() of a memoryview of 8-byte items counts items: 100 of them are 800 bytes, over
    # INLINE_LIMIT (a staged chunk object, as in a batch); 600 are over STAGED_INLINE_LIMIT.
    values = memoryview(array.array("q", range(items)))
    expected = values.tobytes()
    session = repo.writable_session("main")
    session.set_value("alone", values)
    session.set_values([("batched", values), ("pad", b"p")])
    for key in ("alone", "batched"):
        if key == "batched" or len(expected) > STAGED_INLINE_LIMIT:
            assert _staged(repo, session, key) == ChunkRef(chunk_id=chunk_id_of(expected),
                                                          size=len(expected))
        else:
            assert _staged(repo, session, key) == expected
        assert session.store.storage.get(key) == expected
    snapshot = session.commit("wide items")
    for key in ("alone", "batched"):
        assert _tree_entry(repo, snapshot, key) == ChunkRef(chunk_id=chunk_id_of(expected),
                                                           size=len(expected))


def test_gc_and_listings_hold_at_most_the_inline_budget_however_much_is_staged_alone(
        tmp_path: Path) -> None:
    # gc's view of the refs and listings of staged keys copy each staged ref's value; a
    # session object stages alone inline only STAGED_INLINE_BUDGET bytes between commits.
    size = STAGED_INLINE_LIMIT
    count = 3 * STAGED_INLINE_BUDGET // size
    with vs.Repository.create(vs.lmdb_storage(tmp_path / "repo")) as repo:
        session = repo.writable_session("main")
        for i in range(count):
            session.set_value(f"a/c/{i}", i.to_bytes(4, "big") * (size // 4))
        inline = sum(type(_staged(repo, session, f"a/c/{i}")) is bytes for i in range(count))
        assert inline == STAGED_INLINE_BUDGET // size
        peaks = []
        for step in (repo.garbage_collect, lambda: session.staged("a/")):
            tracemalloc.start()
            try:
                step()
                peaks.append(tracemalloc.get_traced_memory()[1])
            finally:
                tracemalloc.stop()
        # About twice the budget (the refs as read, and their values decoded); without the
        # budget about twice the bytes staged (48 MiB here), growing with them.
        assert max(peaks) < 3 * STAGED_INLINE_BUDGET, peaks
        session.commit("all")
        session.set_value("b/c/0", b"x" * size)  # a commit renews the budget
        assert _staged(repo, session, "b/c/0") == b"x" * size
        storage = repo.readonly_session("main").store.storage
        assert all(storage.get(f"a/c/{i}") == i.to_bytes(4, "big") * (size // 4)
                   for i in range(0, count, 97))


def test_rebase_keeps_a_newer_write_landing_while_it_runs(
        repo: vs.Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    # S1 during rebase(keep="theirs"): the inline value it drops is read again before the
    # batch; a copy's newer write landing just then is a different value and stays staged.
    first = repo.writable_session("main")
    first.set_values([("k", b"a" * 1000), ("j", b"j")])
    first.commit("base")
    ours = repo.writable_session("main")
    ours.set_value("k", b"o" * 1000)
    theirs = repo.writable_session("main")
    theirs.set_values([("k", b"t" * 1000), ("z", b"z")])
    theirs.commit("theirs")
    assert ours.session_id is not None
    copy = repo.writable_session("main", resume=ours.session_id)
    name = f"stage/{ours.session_id}/k"
    read = repo.backend.get_ref
    landed: list[str] = []

    def read_after_a_newer_write(ref: str) -> bytes | None:
        if ref == name and not landed:
            landed.append(ref)
            copy.set_value("k", b"n" * 1000)
        return read(ref)

    monkeypatch.setattr(repo.backend, "get_ref", read_after_a_newer_write)
    ours.rebase(keep="theirs")
    monkeypatch.undo()
    assert landed
    assert ours.store.storage.get("k") == b"n" * 1000
    snapshot = ours.commit("the newer write")
    assert repo.readonly_session(snapshot_id=snapshot).store.storage.get("k") == b"n" * 1000


@pytest.mark.parametrize("full", [False, True])
def test_a_commit_during_gc_storing_a_chunk_gc_is_deleting_keeps_it(
        repo: vs.Repository, full: bool) -> None:
    # The value staged alone roots nothing; its chunk exists, unreachable, when the commit
    # stores it (not inserted again), and gc's sweep must still see the commit's tree (G1).
    value = b"V" * 1000
    base = repo.lookup_branch("main")
    first = repo.writable_session("main")
    first.set_values([("k", value), ("j", b"J" * 1000)])
    first.commit("with the value")
    repo.reset_branch("main", base)
    again = repo.writable_session("main")
    again.set_value("k", value)
    committed: list[str] = []

    def commit_once(phase: str, done: int, total: int) -> None:
        if not committed:
            committed.append(again.commit("the value again"))

    repo.garbage_collect(progress=commit_once, full=full)
    assert committed
    repo.garbage_collect(full=full)
    assert repo.readonly_session(branch="main").store.storage.get("k") == value
    report = repo.verify()
    assert report.ok, report.problems


def test_moved_erased_and_amended_values_staged_alone(repo: vs.Repository) -> None:
    document = json.dumps({"zarr_format": 3, "node_type": "group",
                           "attributes": {"long": "x" * 900}}).encode()
    session = repo.writable_session("main")
    session.set_value("g/zarr.json", document)
    session.set_value("g/c/0", b"q" * 1000)
    session.set_value("g/c/1", b"r" * 100)
    session.set_value("g/c/2", b"s" * 2000)
    session.move("/g", "/h")  # staged inline at the new keys, deleted at the old
    session.erase_keys(["h/c/2"])
    first = session.commit("moved")
    assert _tree_entry(repo, first, "h/c/0") == ChunkRef(chunk_id=chunk_id_of(b"q" * 1000),
                                                         size=1000)
    assert _tree_entry(repo, first, "h/c/2") is None
    assert _tree_entry(repo, first, "g/c/0") is None
    session.set_value("h/c/3", b"t" * 3000)
    amended = session.amend("moved, amended")
    storage = repo.readonly_session(snapshot_id=amended).store.storage
    assert storage.get("h/zarr.json") == document
    assert storage.get("h/c/3") == b"t" * 3000
    sizes = repo.reader.snapshot(object_id_from_text(amended)).sizes
    assert sizes is not None and sizes.documents is not None
    assert sizes.documents["h/zarr.json"] == document
    report = repo.verify()
    assert report.ok, report.problems

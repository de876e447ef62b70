"""Regressions for the staging / commit / gc / ref protocol (docs/format.md, "Invariants").

Each test is one fault an adversarial tester found, with its exact input,
plus the threaded form of the same race. They run on both backends.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zarr

import versionstore as vs
from versionstore.codec import (
    KIND_BRANCH,
    KIND_LEAF,
    KIND_REF,
    KIND_SESSION,
    KIND_SNAPSHOT,
    KIND_STAGED,
    _frame,
)
from versionstore.errors import CorruptObjectError, MissingObjectsError
from versionstore.ids import hash_object, object_id_from_text, object_id_text
from versionstore.records import ChunkRef
from versionstore.refs import Refs
from versionstore.session_store import MAX_KEY_BYTES
from zarrstore.errors import InvalidKeyError

BIG = 5000  # bytes: above the inline limits (staged alone too), so a value is a chunk object


@pytest.fixture(params=["memory", "lmdb"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[vs.Repository]:
    storage: Any = (vs.in_memory_storage() if request.param == "memory"
                    else vs.lmdb_storage(tmp_path / "repo"))
    repo = vs.Repository.create(storage)
    yield repo
    repo.close()


def _commit(repo: vs.Repository, **values: bytes) -> str:
    session = repo.writable_session("main")
    session.set_values(list(values.items()))
    return session.commit("c")


# -- fault 1: a ref can point at a deleted snapshot ---------------------------------------


def test_reset_to_a_collected_snapshot_is_refused_atomically(repo: vs.Repository) -> None:
    before = repo.lookup_branch("main")
    s = repo.writable_session("main")
    s.set_values([("k", b"n" * BIG)])
    new = s.commit("n")
    repo.lookup_snapshot(new)  # cached in this process: the cache must not be trusted
    repo.reset_branch("main", before)
    assert repo.garbage_collect().deleted >= 2
    with pytest.raises(vs.SnapshotNotFoundError):
        repo.reset_branch("main", new)
    assert repo.lookup_branch("main") == before
    with pytest.raises(vs.SnapshotNotFoundError):
        repo.create_branch("dev", new)
    assert repo.list_branches() == {"main"}
    with pytest.raises(vs.SnapshotNotFoundError):
        repo.create_tag("v1", new)
    assert repo.list_tags() == set()
    assert repo.verify().ok


def test_ref_moves_racing_gc_never_dangle(repo: vs.Repository) -> None:
    keep = _commit(repo, a=b"a" * BIG)
    repo.create_tag("keep", keep)
    doomed = []
    for n in range(6):  # snapshots only a moving branch keeps alive
        repo.create_branch(f"tmp{n}", keep)
        s = repo.writable_session(f"tmp{n}")
        s.set_values([("b", bytes([n]) * BIG)])
        doomed.append(s.commit("tmp"))
        repo.delete_branch(f"tmp{n}")
    stop = threading.Event()
    refused = 0

    def mover() -> None:
        nonlocal refused
        for round_ in range(300):
            for target in (*doomed, keep):
                try:
                    repo.reset_branch("main", target)
                except vs.SnapshotNotFoundError:
                    refused += 1
            if stop.is_set() and round_ > 3:
                return

    def collector() -> None:
        for _ in range(30):
            repo.garbage_collect()
        stop.set()

    threads = [threading.Thread(target=mover), threading.Thread(target=collector)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    repo.garbage_collect()
    tip = repo.lookup_branch("main")
    repo.lookup_snapshot(tip)  # never dangling
    assert repo.verify().ok, repo.verify().problems


# -- fault 2: an overwrite made during a commit is lost ------------------------------------


def test_overwrite_staged_while_the_commit_runs_is_kept(
    repo: vs.Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = repo.writable_session("main")
    copy = pickle.loads(pickle.dumps(session))
    session.set_values([("k", b"first" * 200), ("other", b"x")])
    move = Refs.move_branch

    def racing(self: Refs, *args: Any, **kwargs: Any) -> bool:
        copy.set_values([("k", b"second" * 200)])  # lands between the commit's read and its swap
        monkeypatch.setattr(Refs, "move_branch", move)
        return move(self, *args, **kwargs)

    monkeypatch.setattr(Refs, "move_branch", racing)
    first = session.commit("first")
    view = repo.readonly_session(snapshot_id=first).store.storage
    assert view.get("k") == b"first" * 200
    assert session.has_uncommitted_changes
    assert session.store.storage.get("k") == b"second" * 200
    second = session.commit("second")
    assert repo.readonly_session(snapshot_id=second).store.storage.get("k") == b"second" * 200
    assert repo.garbage_collect().deleted == 0 or repo.verify().ok
    assert repo.verify().ok


def test_threads_overwriting_during_commits_lose_nothing(repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    writers, rounds = 4, 60
    done = threading.Event()

    def writer(n: int) -> None:
        for r in range(rounds):
            session.set_values([(f"w{n}/k{r % 3}", f"{n}:{r}".encode() * 100)])

    def committer() -> None:
        while not done.is_set():
            try:
                session.commit("c")
            except vs.NothingToCommitError:
                pass

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    commit_thread = threading.Thread(target=committer)
    commit_thread.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    done.set()
    commit_thread.join(120)
    if session.has_uncommitted_changes:
        session.commit("last")
    final = repo.readonly_session("main").store.storage
    for n in range(writers):
        for k in range(3):
            last = max(r for r in range(rounds) if r % 3 == k)
            assert final.get(f"w{n}/k{k}") == f"{n}:{last}".encode() * 100, (n, k)
    assert repo.verify().ok


# -- fault 3: writes staged after a commit cannot be resumed or discarded -------------------


def test_a_copy_staging_after_the_commit_stays_resumable(repo: vs.Repository) -> None:
    driver = repo.writable_session("main")
    worker = pickle.loads(pickle.dumps(driver))
    worker.set_values([("a/1", b"1" * BIG)])
    driver.commit("first")
    worker.set_values([("a/2", b"2" * BIG)])
    assert driver.session_id is not None
    assert repo.resumable_sessions() == {driver.session_id: "main"}
    resumed = repo.writable_session(resume=driver.session_id)
    assert resumed.store.storage.get("a/2") == b"2" * BIG
    repo.garbage_collect()
    assert resumed.store.storage.get("a/2") == b"2" * BIG  # a gc root all along
    snapshot = resumed.commit("second")
    content = repo.readonly_session(snapshot_id=snapshot).store.storage
    assert (content.get("a/1"), content.get("a/2")) == (b"1" * BIG, b"2" * BIG)
    assert repo.resumable_sessions() == {}


def test_a_copy_follows_the_base_another_copy_committed(
    repo: vs.Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = repo.writable_session("main")
    worker = pickle.loads(pickle.dumps(driver))
    driver.set_values([("a", b"1"), ("b", b"2")])
    move = Refs.move_branch

    def racing(self: Refs, *args: Any, **kwargs: Any) -> bool:
        worker.set_values([("c", b"3")])  # still staged after the commit
        monkeypatch.setattr(Refs, "move_branch", move)
        return move(self, *args, **kwargs)

    monkeypatch.setattr(Refs, "move_branch", racing)
    first = driver.commit("a and b")
    # The worker's reads (a read-modify-write of a partial chunk, say) see what was committed.
    assert worker.store.storage.get("a") == b"1"
    assert worker.snapshot_id == first
    second = worker.commit("c")
    assert repo.lookup_snapshot(second).parent_id == first
    # The driver, idle meanwhile, follows too: its next commit builds on the worker's.
    driver.set_values([("d", b"4")])
    third = driver.commit("d")
    assert repo.lookup_snapshot(third).parent_id == second


def test_an_idle_copy_never_drags_the_session_back(repo: vs.Repository) -> None:
    driver = repo.writable_session("main")
    worker = pickle.loads(pickle.dumps(driver))
    driver.set_values([("k", b"one")])
    driver.commit("one")  # nothing left staged: the record is gone
    worker.set_values([("k", b"two")])  # recreates it, naming the base it last saw
    driver.set_values([("k", b"three")])
    snapshot = driver.commit("three")  # no false conflict with the session's own commit
    assert repo.readonly_session(snapshot_id=snapshot).store.storage.get("k") == b"three"


def test_a_copy_staging_after_the_commit_can_be_discarded(repo: vs.Repository) -> None:
    driver = repo.writable_session("main")
    worker = pickle.loads(pickle.dumps(driver))
    driver.set_values([("a/1", b"1")])
    driver.commit("first")
    worker.set_values([("a/2", b"2" * BIG)])
    resumed = repo.writable_session(resume=str(driver.session_id))
    resumed.discard_changes()
    assert repo.resumable_sessions() == {}
    assert not worker.has_uncommitted_changes
    repo.garbage_collect()
    assert repo.verify().ok


@pytest.mark.parametrize("full", [False, True], ids=["incremental", "full"])
def test_a_copy_idle_across_a_commit_and_a_gc_builds_on_the_commit(
        repo: vs.Repository, full: bool) -> None:
    # gc pruned the record the commit had emptied; the copy, pickled before the commit
    # (a dask task graph), recreated it with the base it was made on, rewrote the zarr
    # chunk from that base, and the session's next commit dropped row 0 without a word.
    setup = repo.writable_session("main")
    zarr.create_array(setup.store, name="t", shape=(4, 4), chunks=(4, 4), dtype="i4",
                      fill_value=0)
    setup.commit("create t")
    driver = repo.writable_session("main")
    blob = pickle.dumps(driver)
    zarr.open_array(driver.store, path="t")[0, :] = 1
    driver.commit("row 0")
    repo.garbage_collect(full=full)
    assert f"session/{driver.session_id}" in repo.backend.list_refs("session/")
    worker = pickle.loads(blob)
    zarr.open_array(worker.store, path="t")[1, :] = 2
    assert worker.snapshot_id == driver.snapshot_id
    driver.commit("row 1")
    tip = zarr.open_array(repo.readonly_session("main").store, path="t", mode="r")
    assert tip[:2].tolist() == [[1] * 4, [2] * 4]
    assert repo.verify().ok


def test_gc_prunes_a_sessions_empty_record_once_no_copy_can_go_back(
        repo: vs.Repository) -> None:
    before = repo.lookup_branch("main")
    never = repo.writable_session("main")
    never.set_values([("n", b"v")])
    never.discard_changes()
    committed = repo.writable_session("main")
    committed.set_values([("k", b"one")])
    committed.commit("one")
    repo.garbage_collect()
    # Never committed: every copy knows its one base. Committed: kept with its base.
    assert set(repo.backend.list_refs("session/")) == {f"session/{committed.session_id}"}
    repo.create_tag("keep", committed.snapshot_id)
    repo.reset_branch("main", before)
    repo.garbage_collect()
    assert set(repo.backend.list_refs("session/")) == {f"session/{committed.session_id}"}
    repo.delete_tag("keep")
    repo.garbage_collect(full=True)  # the base is collected: the record goes with it
    assert repo.backend.list_refs("session/") == {}
    assert repo.verify().ok


def test_no_staged_entry_without_its_session_record(repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    session.set_values([("new", b"v")])
    session.erase_keys(["new"])  # unstaged again: not resumable, the record stays for copies
    assert repo.resumable_sessions() == {}
    repo.garbage_collect()  # ...until gc prunes records with nothing staged
    assert repo.backend.list_refs("session/") == {}
    session.set_values([("k", b"v")])
    copy = pickle.loads(pickle.dumps(session))
    session.discard_changes()
    copy.set_values([("k2", b"v")])
    sid = str(session.session_id)
    assert set(repo.backend.list_refs(f"stage/{sid}/")) == {f"stage/{sid}/k2"}
    assert set(repo.backend.list_refs("session/")) == {f"session/{sid}"}
    assert repo.resumable_sessions() == {sid: "main"}


def test_staging_on_a_collected_base_is_a_clear_error(repo: vs.Repository) -> None:
    before = repo.lookup_branch("main")
    session = repo.writable_session("main")
    session.set_values([("k", b"v")])
    session.commit("c")  # the session's base is now that commit
    repo.reset_branch("main", before)
    repo.garbage_collect()
    with pytest.raises(vs.SnapshotNotFoundError, match="no longer exists"):
        session.set_values([("k2", b"v")])
    assert repo.backend.list_refs("stage/") == {}


def test_reading_a_session_whose_snapshot_was_collected_is_a_clear_error(
        repo: vs.Repository, tmp_path: Path) -> None:
    # Reads needing an object of the collected snapshot used to raise CorruptObjectError
    # ("chunk is missing"), as if the repository were damaged.
    import zarr

    before = repo.lookup_branch("main")
    writer = repo.writable_session("main")
    zarr.create_group(writer.store, path="g")
    array = zarr.create_array(writer.store, name="g/a", shape=(BIG,), chunks=(BIG,),
                              dtype="uint8", compressors=None)
    array[:] = 7  # one chunk object of BIG bytes
    writer.set_values([("k", b"v" * BIG)])
    snapshot = writer.commit("c")  # the writer's base is now that commit
    reader = repo.readonly_session(snapshot_id=snapshot)
    repo.reset_branch("main", before)
    repo.garbage_collect()
    for session in (writer, reader):
        with pytest.raises(vs.SnapshotCollectedError, match="no longer exists") as caught:
            session.store.storage.get("k")
        assert caught.value.snapshot_id == snapshot
        assert not isinstance(caught.value, KeyError)  # zarr reads KeyError as "absent"
        with pytest.raises(vs.SnapshotCollectedError):
            session.value("k")
    assert "rebase(keep='ours')" in str(_raised(lambda: writer.value("k")))
    assert "open a new session" in str(_raised(lambda: reader.value("k")))
    with pytest.raises(vs.SnapshotNotFoundError):  # a copy opens on it no more
        pickle.loads(pickle.dumps(reader))
    # Through zarr: what the session still holds answers (the group's document comes
    # with the snapshot), a chunk of the collected snapshot is this error.
    assert "g" in zarr.open_group(reader.store, mode="r")
    with pytest.raises(vs.SnapshotCollectedError):
        zarr.open_array(reader.store, path="g/a", mode="r")[:]
    assert repo.backend.list_refs("stage/") == {}
    # The way out the message gives.
    writer.rebase(keep="ours")
    writer.set_values([("k", b"again")])
    writer.commit("recovered")
    assert repo.verify().ok


def _raised(call: Any) -> BaseException:
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - returned for inspection
        return exc
    raise AssertionError("nothing was raised")


def test_a_session_whose_base_was_collected_under_a_copy_stages_nothing(
        repo: vs.Repository) -> None:
    # Found by interleaving gc with ref moves: gc prunes the record of the committed
    # session and collects its base after a reset; an idle copy then recreates the record
    # naming its older base, which still exists. The session object itself, on the
    # collected base, used to stage into that record unchecked (a lone set and a batch
    # alike), and its commit failed with "tree node is missing".
    before = repo.lookup_branch("main")
    driver = repo.writable_session("main")
    copy = pickle.loads(pickle.dumps(driver))
    driver.set_values([("k", b"one")])
    driver.commit("one")  # the driver's base is now that commit; the copy's is `before`
    repo.reset_branch("main", before)
    repo.garbage_collect()
    copy.set_values([("a", b"staged by the copy")])
    with pytest.raises(vs.SnapshotNotFoundError, match="no longer exists"):
        driver.set_values([("b", b"lone")])  # a lone set: the backend's `stage`
    with pytest.raises(vs.SnapshotNotFoundError, match="no longer exists"):
        driver.set_values([("c", b"x" * BIG), ("d", b"y")])  # a batch with a chunk object
    with pytest.raises(vs.SnapshotNotFoundError, match="no longer exists"):
        driver.store.storage.erase("a")
    sid = str(driver.session_id)
    assert set(repo.backend.list_refs(f"stage/{sid}/")) == {f"stage/{sid}/a"}
    with pytest.raises(vs.SnapshotNotFoundError, match="staged changes are kept"):
        driver.commit("on a collected base")
    with pytest.raises(vs.SnapshotNotFoundError, match="staged changes are kept"):
        driver.rebase()
    assert set(repo.backend.list_refs(f"stage/{sid}/")) == {f"stage/{sid}/a"}
    assert repo.lookup_branch("main") == before
    driver.rebase(keep="ours")  # onto the tip, staged changes as they are
    assert driver.snapshot_id == before
    driver.set_values([("b", b"lone")])
    snapshot = driver.commit("recovered")
    content = repo.readonly_session(snapshot_id=snapshot).store.storage
    assert (content.get("a"), content.get("b"), content.get("k")) == (
        b"staged by the copy", b"lone", None)
    assert repo.verify().ok


def test_staging_racing_gc_and_a_reset_never_lands_on_a_collected_base(
        repo: vs.Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    # The same fault with gc's sweep interleaved: the reset and the copy's write land
    # between gc's look at the refs and its sweep.
    before = repo.lookup_branch("main")
    driver = repo.writable_session("main")
    copy = pickle.loads(pickle.dumps(driver))
    driver.set_values([("k", b"one")])
    driver.commit("one")
    repo.reset_branch("main", before)
    backend = repo.backend
    sweep_name = "sweep" if hasattr(backend, "sweep") else "delete_objects"
    sweep = getattr(type(backend), sweep_name)

    def racing(self: Any, *args: Any, **kwargs: Any) -> bool:
        monkeypatch.setattr(type(backend), sweep_name, sweep)
        result: bool = sweep(self, *args, **kwargs)
        copy.set_values([("a", b"after the sweep")])
        return result

    monkeypatch.setattr(type(backend), sweep_name, racing)
    repo.garbage_collect()
    for items in ([("b", b"lone")], [("c", b"x" * BIG), ("d", b"y")]):
        with pytest.raises(vs.SnapshotNotFoundError):
            driver.set_values(items)
    with pytest.raises(vs.SnapshotNotFoundError, match="staged changes are kept"):
        driver.commit("on a collected base")
    assert copy.commit("the copy's") != before  # the copy's base is stored: it commits
    assert repo.verify().ok


def test_a_copy_that_only_wrote_follows_the_record_when_its_older_base_is_collected(
        repo: vs.Repository) -> None:
    # Adversarial find: a copy that only writes (a worker writing whole chunks never
    # reads the record) keeps the base it was pickled on. The driver commits twice,
    # stages more, and expire and gc collect that older base: the session is alive
    # (its record names the driver's base), yet every write of the copy raised
    # SnapshotNotFoundError "open a new writable session" since staging required the
    # copy's own base. It now reads the record again and stages on the base named there.
    import time
    from datetime import UTC, datetime

    repo.writable_session("main").commit("first", allow_empty=True)
    driver = repo.writable_session("main")
    copy = pickle.loads(pickle.dumps(driver))
    copy.set_values([("w0", b"before the commits")])
    for n in range(2):
        driver.set_values([(f"d{n}", b"by the driver")])
        driver.commit(f"driver {n}")
    driver.set_values([("d2", b"staged: the record stays")])
    time.sleep(0.01)
    assert len(repo.expire_snapshots(older_than=datetime.now(UTC))) >= 2
    repo.garbage_collect()
    copy.set_values([("lone", b"w1")])  # the backend's `stage`
    copy.set_values([("c", b"x" * BIG), ("d", b"y")])  # a batch with a chunk object
    assert copy.snapshot_id == driver.snapshot_id
    snapshot = driver.commit("with the copy's writes")
    content = repo.readonly_session(snapshot_id=snapshot).store.storage
    assert (content.get("w0"), content.get("lone"), content.get("c"), content.get("d2")) == (
        b"before the commits", b"w1", b"x" * BIG, b"staged: the record stays")
    assert repo.verify().ok


# -- identical rewrites, allow_empty, message -------------------------------------------------


def test_identical_rewrites_are_not_changes(repo: vs.Repository) -> None:
    _commit(repo, k=b"v" * BIG)
    session = repo.writable_session("main")
    session.set_values([("k", b"v" * BIG)])
    assert not session.has_uncommitted_changes
    assert session.status().is_empty()
    with pytest.raises(vs.NothingToCommitError):
        session.commit("same")
    assert repo.resumable_sessions() == {}
    tip = repo.lookup_branch("main")
    empty = session.commit("marker", allow_empty=True)
    assert repo.lookup_snapshot(empty).parent_id == tip
    with pytest.raises(TypeError, match="message"):
        session.commit(None)  # type: ignore[arg-type]


# -- fault 7: damaged ref names ---------------------------------------------------------------


def _rename_ref(repo: vs.Repository, old: str, new: str) -> None:
    raw = repo.backend.get_ref(old)
    assert raw is not None
    repo.backend.put_objects([], {old: None, new: raw})


def test_a_damaged_tag_name_is_an_error_not_a_rename(repo: vs.Repository) -> None:
    repo.create_tag("v1", repo.lookup_branch("main"))
    _rename_ref(repo, "tag/v1", "tag/v3")
    with pytest.raises(CorruptObjectError, match="damaged"):
        repo.lookup_tag("v3")
    report = repo.verify()
    assert not report.ok and any("tag/v3" in p for p in report.problems)


def test_a_damaged_main_is_never_reinitialised(repo: vs.Repository) -> None:
    snapshot = _commit(repo, k=b"data")
    _rename_ref(repo, "branch/main", "branch/mbin")
    again = vs.Repository.open_or_create(repo.storage)
    assert again.backend.get_ref("branch/main") is None  # no fresh, empty main on top
    with pytest.raises(vs.RepositoryExistsError):
        vs.Repository.create(repo.storage)
    report = again.verify()
    assert not report.ok
    assert any("main branch is missing" in p for p in report.problems)
    assert any("branch/mbin" in p for p in report.problems)
    assert again.lookup_snapshot(snapshot).message == "c"  # the data is all still there


def test_create_refuses_a_backend_holding_anything(tmp_path: Path) -> None:
    storage = vs.lmdb_storage(tmp_path / "r")
    repo = vs.Repository.create(storage)
    repo.backend.put_objects([], {"repository": None, "branch/main": None})
    with pytest.raises(vs.RepositoryExistsError, match="refusing"):
        vs.Repository.create(storage)
    repo.close()


# -- repository format version ----------------------------------------------------------------


def test_a_newer_repository_format_is_refused(repo: vs.Repository) -> None:
    record = _frame(8, msgpack.packb([1, 99, msgpack.Timestamp(0)]), compress=False)
    repo.backend.put_objects([], {"repository": record})
    with pytest.raises(vs.UnsupportedFormatError, match="99"):
        vs.Repository.open(repo.storage)


def test_a_format_1_repository_still_opens(repo: vs.Repository) -> None:
    tip = repo.lookup_branch("main")
    old_ref = _frame(KIND_REF, msgpack.packb([1, object_id_from_text(tip), False]), False)
    repo.backend.put_objects([], {"repository": None, "branch/main": old_ref})
    again = vs.Repository.open(repo.storage)
    assert again.lookup_branch("main") == tip
    assert again.verify().ok


# -- fault 10: keys and records that slip past validation -------------------------------------


@pytest.mark.parametrize("key", ["k" * 480, "k" * 600, "a/\ud800", "", "a//b", "/abs"])
def test_bad_keys_are_refused_at_every_session_write(repo: vs.Repository, key: str) -> None:
    session = repo.writable_session("main")
    with pytest.raises(InvalidKeyError):
        session.set_values([(key, b"v")])
    with pytest.raises(InvalidKeyError):
        session.store.storage.set(key, b"v")
    with pytest.raises(InvalidKeyError):
        session.erase_keys([key])
    assert not session.has_uncommitted_changes
    assert len(("k" * MAX_KEY_BYTES).encode()) == MAX_KEY_BYTES
    session.set_values([("k" * MAX_KEY_BYTES, b"longest")])


def _crafted(kind: int, body: Any) -> bytes:
    return _frame(kind, msgpack.packb(body, use_bin_type=True), compress=False)


CRAFTED_OBJECTS = {
    "leaf keys not a list": (KIND_LEAF, [1, 5, [b"x"]]),
    "leaf keys not strings": (KIND_LEAF, [1, [1, 2], [b"x", b"y"]]),
    "leaf entry malformed": (KIND_LEAF, [1, ["a"], [[b"short", "size"]]]),
    "leaf too short": (KIND_LEAF, [1]),
    "branch child not an id": (KIND_BRANCH, [1, ["a"], [7], 1]),
    "branch level not int": (KIND_BRANCH, [1, ["a"], [b"x" * 20], "one"]),
    "snapshot parent not an id": (KIND_SNAPSHOT, [1, 5, None, "m", msgpack.Timestamp(0),
                                                  msgpack.ExtType(2, msgpack.packb({}))]),
    "snapshot message not text": (KIND_SNAPSHOT, [1, None, None, 5, msgpack.Timestamp(0),
                                                  msgpack.ExtType(2, msgpack.packb({}))]),
}


@pytest.mark.parametrize("case", sorted(CRAFTED_OBJECTS))
def test_crafted_records_with_valid_checksums_are_corrupt_errors(
    repo: vs.Repository, case: str
) -> None:
    from versionstore.codec import decode_node, decode_snapshot

    kind, body = CRAFTED_OBJECTS[case]
    data = _crafted(kind, body)
    decode = decode_snapshot if kind == KIND_SNAPSHOT else decode_node
    with pytest.raises(CorruptObjectError):
        decode("crafted", data)
    # Planted where a branch expects its snapshot, verify reports it and does not crash.
    object_id = hash_object(kind, msgpack.packb(body, use_bin_type=True))
    repo.backend.put_objects([(object_id, data)])
    if kind == KIND_SNAPSHOT:
        from versionstore.codec import encode_ref_target
        from versionstore.records import RefTarget

        repo.backend.put_objects([], {"branch/evil": encode_ref_target(
            "branch/evil", RefTarget(snapshot=object_id))})
        report = repo.verify()
        assert not report.ok


CRAFTED_REFS = {
    "branch/x": (KIND_REF, [2, b"short", False, "branch/x"]),
    "tag/x": (KIND_REF, [2, None]),
    "session/x": (KIND_SESSION, [2, 5, b"x" * 20, msgpack.Timestamp(0), "session/x"]),
    "stage/x/k": (KIND_STAGED, [2, [b"x" * 20, "big"], "stage/x/k"]),
}


@pytest.mark.parametrize("name", sorted(CRAFTED_REFS))
def test_crafted_refs_are_reported_by_verify(repo: vs.Repository, name: str) -> None:
    kind, body = CRAFTED_REFS[name]
    repo.backend.put_objects([], {name: _crafted(kind, body)})
    report = repo.verify()
    assert not report.ok
    assert any(name in problem for problem in report.problems)


def test_missing_objects_error_names_them(repo: vs.Repository) -> None:
    from versionstore.backend.protocol import WriteBatch

    with pytest.raises(MissingObjectsError) as caught:
        repo.backend.write(WriteBatch(requires=[hash_object(1, b"nowhere")],
                                      refs={"x": b"never"}))
    assert caught.value.object_ids and repo.backend.get_ref("x") is None


# -- real processes: writers on pickled copies, a committer, gc and ref movers together ------


@pytest.mark.slow
def test_processes_stage_commit_collect_and_move_refs_together(tmp_path: Path) -> None:
    import multiprocessing

    import protocol_workers as workers

    path = str(tmp_path / "repo")
    stop = str(tmp_path / "stop")
    repo = vs.Repository.create(vs.lmdb_storage(path))
    session = repo.writable_session("main")
    writers = 3
    spawn = multiprocessing.get_context("spawn")
    with spawn.Pool(writers + 3) as pool:
        committer = pool.apply_async(workers.commit_until, (session, stop))
        collector = pool.apply_async(workers.collect_until, (path, stop))
        mover = pool.apply_async(workers.move_refs_until, (path, stop))
        written = [pool.apply_async(workers.write_rounds, (session, n)) for n in range(writers)]
        assert [w.get(timeout=300) for w in written] == [workers.ROUNDS] * writers
        Path(stop).touch()
        committed = committer.get(timeout=300)
        assert collector.get(timeout=300) >= 1
        assert mover.get(timeout=300) >= 1
    if session.has_uncommitted_changes:
        committed.append(session.commit("the rest"))
    # No returned commit lost: every one is in main's history, in order.
    history = [info.id for info in repo.ancestry(branch="main")]
    assert [c for c in history if c in set(committed)] == committed[::-1]
    # No staged write lost: the last value of every key is on main.
    main = repo.readonly_session("main").store.storage
    for writer in range(writers):
        for key in range(workers.KEYS):
            last = max(r for r in range(workers.ROUNDS) if r % workers.KEYS == key)
            assert main.get(f"w{writer}/k{key}") == workers.value(writer, last)
    # No dangling ref, nothing missing.
    for tag in repo.list_tags():
        repo.lookup_snapshot(repo.lookup_tag(tag))
    repo.lookup_snapshot(repo.lookup_branch("side"))
    report = repo.verify()
    assert report.ok, report.problems
    assert repo.resumable_sessions() == {}
    repo.close()


# -- snapshot id prefixes, and where a repository may be created ------------------------------


def test_a_unique_prefix_names_a_snapshot_everywhere(repo: vs.Repository) -> None:
    snapshot = _commit(repo, k=b"v")
    short = snapshot[:8]
    assert repo.lookup_snapshot(short).id == snapshot
    assert repo.lookup_snapshot(short.lower()).id == snapshot
    assert repo.readonly_session(snapshot_id=short).snapshot_id == snapshot
    repo.create_tag("t", short)
    repo.create_branch("b", snapshot[:12])
    repo.reset_branch("b", short)
    assert repo.lookup_tag("t") == repo.lookup_branch("b") == snapshot
    with pytest.raises(vs.SnapshotNotFoundError):
        repo.lookup_snapshot("AAAAAAAA" if not snapshot.startswith("AAAAAAAA") else "77777777")
    with pytest.raises(vs.SnapshotNotFoundError):
        repo.lookup_snapshot(snapshot[:7])  # too short to be a prefix


def test_an_ambiguous_prefix_is_a_clear_error(repo: vs.Repository) -> None:
    snapshot = _commit(repo, k=b"v")
    real = object_id_from_text(snapshot)
    frame = repo.backend.get_objects([real])[0]
    assert frame is not None
    twin = real[:5] + bytes(15)  # shares the first 8 characters
    repo.backend.put_objects([(twin, frame)])  # type: ignore[list-item]
    with pytest.raises(vs.errors.AmbiguousSnapshotIdError, match="ambiguous"):
        repo.lookup_snapshot(snapshot[:8])
    assert repo.lookup_snapshot(snapshot).id == snapshot


def test_create_refuses_a_file_and_a_directory_of_other_files(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("not a repository")
    with pytest.raises(vs.RepositoryExistsError, match="is a file"):
        vs.Repository.create(vs.lmdb_storage(plain))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(vs.RepositoryExistsError, match="other files"):
        vs.Repository.create(vs.lmdb_storage(busy))
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    vs.Repository.create(vs.lmdb_storage(empty)).close()


# -- found by an adversarial run of the protocol (each once failed) ---------------------------


def test_a_read_during_the_commits_flush_sees_the_commit(
    repo: vs.Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = repo.writable_session("main")
    copy = pickle.loads(pickle.dumps(session))
    session.set_values([("k", b"v" * BIG)])
    seen: list[bytes | None] = []
    sync = repo.backend.sync

    def reading_sync() -> None:  # the window between the branch move and the return
        seen.append(session.store.storage.get("k"))
        seen.append(copy.store.storage.get("k"))
        sync()

    monkeypatch.setattr(repo.backend, "sync", reading_sync)
    session.commit("c")
    assert seen == [b"v" * BIG, b"v" * BIG]


def test_an_erase_racing_a_commit_of_that_key_is_kept(
    repo: vs.Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = repo.writable_session("main")
    copy = pickle.loads(pickle.dumps(session))
    session.set_values([("k", b"v"), ("other", b"o")])
    move = Refs.move_branch

    def racing(self: Refs, *args: Any, **kwargs: Any) -> bool:
        monkeypatch.setattr(Refs, "move_branch", move)
        copy.erase_keys(["k"])  # after the commit read k=v, before its swap
        return move(self, *args, **kwargs)

    monkeypatch.setattr(Refs, "move_branch", racing)
    snapshot = session.commit("c")
    view = repo.readonly_session(snapshot_id=snapshot).store.storage
    assert view.get("k") is None and view.get("other") == b"o"


def test_a_write_during_the_commits_flush_names_the_new_base(
    repo: vs.Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = repo.writable_session("main")
    session.set_values([("k", b"1")])
    sync = repo.backend.sync

    def writing_sync() -> None:
        session.set_values([("late", b"2")])
        sync()

    monkeypatch.setattr(repo.backend, "sync", writing_sync)
    first = session.commit("c")
    monkeypatch.setattr(repo.backend, "sync", sync)
    resumed = repo.writable_session(resume=str(session.session_id))
    assert resumed.snapshot_id == first
    assert resumed.store.storage.get("k") == b"1"  # its own commit, seen after a crash
    resumed.set_values([("k", b"3")])
    resumed.commit("no conflict with its own commit")


def test_rebase_racing_a_commit_never_goes_back(
    repo: vs.Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = repo.writable_session("main")
    other = repo.writable_session("main")
    other.set_values([("x", b"1")])
    other.commit("moves main")
    session.set_values([("k", b"1")])
    tip = Refs.branch_tip
    committed: list[str] = []

    def racing(self: Refs, name: str) -> Any:
        result = tip(self, name)
        if not committed:  # the session's own commit lands after rebase read the tip
            committed.append("")
            monkeypatch.setattr(Refs, "branch_tip", tip)
            committed[0] = pickle.loads(pickle.dumps(session)).commit("own")
        return result

    monkeypatch.setattr(Refs, "branch_tip", racing)
    session.rebase()
    monkeypatch.setattr(Refs, "branch_tip", tip)
    assert session.snapshot_id == committed[0]
    assert session.store.storage.get("k") == b"1"


def test_an_identical_rewrite_follows_a_moved_branch(repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    other = repo.writable_session("main")
    other.set_values([("k", b"same")])
    moved = other.commit("k")
    session.set_values([("k", b"same")])
    with pytest.raises(vs.NothingToCommitError):
        session.commit("same")
    assert session.snapshot_id == moved
    assert session.store.storage.get("k") == b"same"
    # And a rewrite identical to the base never conflicts with the branch's change.
    base_writer = repo.writable_session("main")
    base_writer.set_values([("k", b"same")])  # what its base holds
    third = repo.writable_session("main")
    third.set_values([("k", b"changed"), ("j", b"1")])
    third.commit("changes k")
    base_writer.set_values([("j2", b"2")])
    snapshot = base_writer.commit("no conflict")
    assert repo.readonly_session(snapshot_id=snapshot).store.storage.get("k") == b"changed"


def test_gc_refuses_a_ref_of_unknown_kind(repo: vs.Repository) -> None:
    _commit(repo, k=b"v" * BIG)
    _rename_ref(repo, "branch/main", "brancx/main")
    with pytest.raises(CorruptObjectError, match="unknown kind"):
        repo.garbage_collect()
    _rename_ref(repo, "brancx/main", "branch/main")
    assert repo.verify().ok


def test_a_missing_staged_chunk_is_a_clear_error(repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    session.set_values([("k", b"v" * BIG)])
    entry = session.staged()["k"]
    assert isinstance(entry, ChunkRef)
    repo.backend.delete_objects([entry.chunk_id])
    with pytest.raises(CorruptObjectError, match="staged chunk is missing"):
        session.commit("c")


def test_a_tree_node_id_is_not_a_snapshot(repo: vs.Repository) -> None:
    snapshot = _commit(repo, k=b"v")
    tree = repo.reader.snapshot(object_id_from_text(snapshot)).tree
    assert tree is not None
    with pytest.raises(vs.SnapshotNotFoundError):
        repo.lookup_snapshot(object_id_text(tree))


def test_a_ref_name_damaged_into_invalid_utf8_is_reported(tmp_path: Path) -> None:
    repo = vs.Repository.create(vs.lmdb_storage(tmp_path / "r"))
    repo.create_tag("v1", repo.lookup_branch("main"))
    raw = repo.backend.get_ref("tag/v1")
    env = repo.backend._env
    with env.begin(write=True) as txn:
        refs = env.open_db(b"refs", txn=txn)
        txn.delete(b"tag/v1", db=refs)
        txn.put(b"tag/v\xff", raw, db=refs)
    report = repo.verify()
    assert not report.ok
    with pytest.raises(CorruptObjectError):
        repo.garbage_collect()
    repo.close()


def test_remembered_ref_values_answer_only_for_their_own_ref(
    repo: vs.Repository, tmp_path: Path
) -> None:
    """Decoded ref values are remembered by (ref name, bytes), process-wide (``Refs``).

    Bytes remembered for one ref are damage under another name; a value
    damaged after it was remembered is not served; a branch deleted and made
    again (at the same or another snapshot) and a tag of the same name keep
    their own snapshots; a second repository's equal bytes name the same id.
    """
    first = _commit(repo, k=b"1")
    second = _commit(repo, k=b"2")  # the commit remembered main's new value
    raw = repo.backend.get_ref("branch/main")
    assert raw is not None and repo.lookup_branch("main") == second
    repo.backend.put_objects([], {"branch/copy": raw, "tag/main": raw})
    with pytest.raises(CorruptObjectError, match="damaged"):
        repo.lookup_branch("copy")
    with pytest.raises(CorruptObjectError, match="damaged"):
        repo.lookup_tag("main")
    repo.backend.put_objects([], {"branch/copy": None, "tag/main": None})
    repo.backend.put_objects([], {"branch/main": raw[:-1] + bytes([raw[-1] ^ 1])})
    with pytest.raises(CorruptObjectError):
        repo.lookup_branch("main")
    with pytest.raises(CorruptObjectError):
        _commit(repo, k=b"3")
    repo.backend.put_objects([], {"branch/main": raw})
    assert repo.lookup_branch("main") == second
    repo.create_branch("x", first)
    repo.create_tag("x", second)
    writer = repo.writable_session("x")
    writer.set_values([("w", b"w")])
    repo.delete_branch("x")
    with pytest.raises(vs.BranchNotFoundError):
        writer.commit("on a deleted branch")
    with pytest.raises(vs.BranchNotFoundError):
        repo.lookup_branch("x")
    repo.create_branch("x", second)
    assert (repo.lookup_branch("x"), repo.lookup_tag("x")) == (second, second)
    repo.delete_branch("x")
    repo.create_branch("x", first)  # the same bytes as before: the same meaning
    assert repo.backend.get_ref("branch/x") is not None
    assert (repo.lookup_branch("x"), repo.lookup_tag("x")) == (first, second)
    committed = writer.commit("on the branch made again")
    assert repo.lookup_snapshot(committed).parent_id == first
    other = vs.Repository.create(vs.lmdb_storage(tmp_path / "other"))
    assert other.lookup_branch("main") != second
    other.backend.put_objects([], {"branch/main": raw})
    assert other.lookup_branch("main") == second  # the bytes name the id itself
    other.close()


def test_list_refs_returns_at_most_its_limit_in_name_order(repo: vs.Repository) -> None:
    """``limit`` 0 (or less) lists nothing, ``n`` the first ``n`` in name order; not one more."""
    tip = repo.lookup_branch("main")
    for name in ["a", "a/b", "a-b", "a.b", "ab"]:
        repo.create_branch(name, tip)
        repo.create_tag(name, tip)
    every = list(repo.backend.list_refs("branch/"))
    assert every == sorted(every) and len(every) == 6
    for limit in [-1, 0, 1, 2, 5, 6, 7]:
        assert list(repo.backend.list_refs("branch/", limit)) == every[:max(limit, 0)], limit
    assert list(repo.backend.list_refs("branch/a/", 1)) == ["branch/a/b"]
    assert repo.backend.list_refs("branch/z", 3) == {}

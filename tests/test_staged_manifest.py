"""Staged manifests: a huge session's absorbed located writes, kept out of the refs.

docs/format.md, "Staged manifests". The thresholds are lowered here
(``SPILL_AT``, ``PART_ENTRIES``) so that a few hundred chunks make a
manifest of several parts; the sessions run on obstore's ``LocalStore`` (the
backend is the same as over S3; ``test_object_repository.py`` counts the
requests against moto).
"""

from __future__ import annotations

import pickle
import weakref
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from obstore.store import LocalStore

import versionstore as vs
import versionstore.backend.object as object_module
import versionstore.codec as codec
import versionstore.session as session_module
import versionstore.sorted_runs as sorted_runs_module
import versionstore.staged_manifest as manifest_module
import versionstore.tree as tree_module
from versionstore.codec import (
    KIND_MANIFEST_PART,
    decode_manifest_part,
    decode_session,
    encode_manifest_part,
    encode_session,
    frame_kind,
)
from versionstore.errors import CorruptObjectError, UnsupportedFormatError
from versionstore.ids import ObjectId
from versionstore.located import located_name
from versionstore.records import ChunkRef, LocatedChunkRef, SessionRecord, StagedManifest
from versionstore.refs import session_ref, stage_prefix
from versionstore.sorted_runs import SortedRuns
from versionstore.staged_manifest import ManifestReader, merge_staged, newest_per_key, pack_write

_ID = ObjectId(bytes(range(20)))
_OTHER = ObjectId(bytes(range(1, 21)))


@pytest.fixture(name="small_manifests")
def small_manifests_fixture(monkeypatch: pytest.MonkeyPatch) -> None:
    """Manifests from 20 writes on, 16 writes a part; every chunk located."""
    monkeypatch.setattr(manifest_module, "SPILL_AT", 20)
    monkeypatch.setattr(manifest_module, "PART_ENTRIES", 16)
    monkeypatch.setattr(session_module, "_LOGGED_FIRST", 0)


def _repo(tmp_path: Path) -> vs.Repository:
    return vs.Repository.create(vs.object_storage(LocalStore(str(tmp_path)), "repo"))


def _value(i: int, version: int = 0) -> bytes:
    return (i * 1000 + version).to_bytes(8, "little") * 80  # 640 bytes: a located chunk


def _record(repo: vs.Repository, session: vs.Session) -> SessionRecord:
    assert session.session_id is not None
    name = session_ref(session.session_id)
    raw = repo.backend.get_ref(name)
    assert raw is not None
    return decode_session(name, raw)


def _staged_refs(repo: vs.Repository, session: vs.Session) -> dict[str, bytes]:
    assert session.session_id is not None
    return repo.backend.list_refs(stage_prefix(session.session_id))


def _stage_many(session: vs.Session, keys: range, version: int = 0) -> None:
    session.set_values([(f"a/c/{i}", _value(i, version)) for i in keys])
    session.set_values([("a/zarr.json", b"{}")])  # a log-recorded write absorbs first


# -- records ------------------------------------------------------------------------------


def test_a_manifest_part_round_trips_and_is_content_addressed() -> None:
    items = [("a/c/0", 3, 17, _ID, 640), ("a/c/1", 3, 18, _OTHER, 641)]
    part_id, frame = encode_manifest_part("s1", items)
    assert frame_kind(frame) == KIND_MANIFEST_PART
    assert decode_manifest_part("part", frame) == ("s1", items)
    assert encode_manifest_part("s1", items)[0] == part_id
    with pytest.raises(CorruptObjectError):
        decode_manifest_part("part", frame[:-1] + bytes([frame[-1] ^ 1]))
    unsorted = encode_manifest_part("s1", items[::-1])[1]
    with pytest.raises(CorruptObjectError):
        decode_manifest_part("part", unsorted)


def test_session_records_with_manifests_are_version_4_and_others_unchanged(
        monkeypatch: pytest.MonkeyPatch) -> None:
    name = "session/s1"
    plain = SessionRecord(branch="main", base=_ID, created_at=datetime.now(UTC),
                          generation=2, epoch=5, closing=(4,))
    spilled = SessionRecord(branch="main", base=_ID, created_at=plain.created_at,
                            generation=2, epoch=5, closing=(4,),
                            manifests=(StagedManifest(parts=(_ID, _OTHER),
                                                      first_keys=("a/c/0", "a/c/5")),))
    assert decode_session(name, encode_session(name, plain)) == plain
    assert decode_session(name, encode_session(name, spilled)) == spilled
    assert encode_session(name, plain)[13:15] == b"\x98\x03"  # version 3, as before
    # A reader from before staged manifests refuses the record instead of missing them.
    monkeypatch.setattr(SessionRecord, "FORMAT_VERSION", 3)
    codec._decode_session.cache_clear()  # decodings are kept; that reader has none yet
    assert decode_session(name, encode_session(name, plain)) == plain
    with pytest.raises(UnsupportedFormatError):
        decode_session(name, encode_session(name, spilled))


@given(st.lists(st.tuples(st.text(alphabet="ab/.-%0é", max_size=6),
                          st.integers(0, 3), st.integers(0, 2**63)), max_size=60))
def test_sorted_runs_and_newest_per_key_order_writes_as_the_tree_does(
        writes: list[tuple[str, int, int]]) -> None:
    runs = SortedRuns(run_records=7)
    for key, epoch, stamp in writes:
        runs.add(pack_write(key, epoch, stamp, _ID, 1))
    newest: dict[str, tuple[int, int]] = {}
    for key, epoch, stamp in writes:
        newest[key] = max(newest.get(key, (epoch, stamp)), (epoch, stamp))
    got = [(key, epoch, stamp) for key, epoch, stamp, _, _ in newest_per_key(runs)]
    runs.close()
    assert got == [(key, *newest[key]) for key in sorted(newest)]


def test_a_newer_ref_beats_the_manifest_and_an_older_located_ref_does_not() -> None:
    def write(key: str, epoch: int, stamp: int) -> tuple[str, LocatedChunkRef, int, int]:
        hint = located_name("s1", epoch, key, stamp, _ID, 9)
        assert hint is not None
        return key, LocatedChunkRef(chunk_id=_ID, size=9, hint=hint), epoch, stamp

    manifest = [write("k1", 2, 5), write("k2", 2, 5), write("k3", 2, 5), write("k4", 2, 5)]
    newer_manifest = [write("k4", 3, 1)]
    refs = [
        ("k1", ChunkRef(chunk_id=_OTHER, size=9)),  # written after the manifest: wins
        ("k2", write("k2", 2, 9)[1]),  # a located write, stamped later: wins
        ("k3", write("k3", 1, 9)[1]),  # a located write of an older epoch: loses
        ("k5", b"inline"),
    ]
    merged = {key: (entry, spilled) for key, entry, spilled in merge_staged(
        iter(refs), [iter(manifest), iter(newer_manifest)])}
    assert merged["k1"] == (refs[0][1], False)
    assert merged["k2"][1] is False
    assert merged["k3"][1] is True
    assert merged["k4"][0].hint == newer_manifest[0][1].hint  # type: ignore[union-attr]
    assert merged["k5"] == (b"inline", False)
    assert list(merged) == ["k1", "k2", "k3", "k4", "k5"]


# -- sessions -----------------------------------------------------------------------------


def test_an_absorb_of_many_writes_keeps_them_out_of_the_refs(
        tmp_path: Path, small_manifests: None) -> None:
    repo = _repo(tmp_path)
    session = repo.writable_session("main")
    _stage_many(session, range(100))
    record = _record(repo, session)
    assert [len(m.parts) for m in record.manifests] == [7]  # 100 writes, 16 a part
    assert list(_staged_refs(repo, session)) == [
        stage_prefix(session.session_id or "") + "a/zarr.json"]
    # Every process replays the same small refs: a fresh open holds no staged chunk.
    reopened = vs.Repository.open(repo.storage)
    assert len(reopened.backend.list_refs("stage/")) == 1
    assert session.value("a/c/37") == _value(37)
    assert len(session.staged("a/c/")) == 100
    assert sorted(k for k, _ in session.iter_entries("", "a/c/1")) == sorted(
        f"a/c/{i}" for i in range(100) if str(i).startswith("1"))
    session.commit("100 chunks")
    assert _record(repo, session).manifests == ()
    view = repo.readonly_session(branch="main")
    assert [view.value(f"a/c/{i}") for i in range(100)] == [_value(i) for i in range(100)]
    assert repo.verify().ok


def test_writes_after_a_manifest_override_it_in_the_order_they_returned(
        tmp_path: Path, small_manifests: None) -> None:
    repo = _repo(tmp_path)
    session = repo.writable_session("main")
    _stage_many(session, range(60))
    session.set_values([("a/c/1", _value(1, 1))])  # located, open epoch
    _stage_many(session, range(40, 90), version=2)  # a second manifest
    session.set_values([("a/c/2", b"small")])  # a log-recorded write, after both
    session.erase_keys(["a/c/3", "a/c/45"])  # in manifests, not in the base
    session.set_values([("a/c/50", _value(50, 3))])  # located, left in the open epoch
    assert len(_record(repo, session).manifests) == 2
    expected = {f"a/c/{i}": _value(i) for i in range(40)}
    expected.update({f"a/c/{i}": _value(i, 2) for i in range(40, 90)})
    expected.update({"a/c/1": _value(1, 1), "a/c/2": b"small", "a/c/50": _value(50, 3)})
    del expected["a/c/3"], expected["a/c/45"]
    for key in ("a/c/1", "a/c/2", "a/c/3", "a/c/45", "a/c/50", "a/c/60"):
        assert session.value(key) == expected.get(key), key
    assert {k: session.value(k) for k in session.staged("a/c/")} == {
        **expected, "a/c/3": None, "a/c/45": None}
    session.commit("many")
    view = repo.readonly_session(branch="main")
    assert {k: view.value(k) for k, _ in view.iter_entries("", "a/c/")} == expected


def test_resumed_and_pickled_copies_commit_a_spilled_session(
        tmp_path: Path, small_manifests: None) -> None:
    repo = _repo(tmp_path)
    session = repo.writable_session("main")
    _stage_many(session, range(50))
    other = vs.Repository.open(repo.storage)
    assert session.session_id in other.resumable_sessions()
    resumed = other.writable_session("main", resume=session.session_id)
    copy = pickle.loads(pickle.dumps(session))
    copy.set_values([(f"a/c/{i}", _value(i, 1)) for i in range(45, 70)])
    resumed.commit("from the resumed copy")
    view = repo.readonly_session(branch="main")
    assert [view.value(f"a/c/{i}") for i in range(70)] == [
        _value(i, 1 if i >= 45 else 0) for i in range(70)]
    assert not session.has_uncommitted_changes


def test_discard_and_rebase_of_a_spilled_session(tmp_path: Path, small_manifests: None) -> None:
    repo = _repo(tmp_path)
    session = repo.writable_session("main")
    _stage_many(session, range(40))
    session.discard_changes()
    assert _record(repo, session).manifests == ()
    assert not session.has_uncommitted_changes and session.staged() == {}
    _stage_many(session, range(40), version=1)
    rival = repo.writable_session("main")
    rival.set_values([("b/zarr.json", b"{}")])
    rival.commit("rival")
    session.rebase()
    session.commit("rebased")
    view = repo.readonly_session(branch="main")
    assert view.value("b/zarr.json") == b"{}"
    assert [view.value(f"a/c/{i}") for i in range(40)] == [_value(i, 1) for i in range(40)]
    other = repo.writable_session("main")
    _stage_many(other, range(30), version=2)
    repo.discard_session(other.session_id or "")
    assert other.session_id not in repo.resumable_sessions()


def test_gc_keeps_a_live_sessions_manifest_and_collects_it_once_committed(
        tmp_path: Path, small_manifests: None) -> None:
    repo = _repo(tmp_path)
    no_grace = datetime.now(UTC) + timedelta(days=1)
    session = repo.writable_session("main")
    _stage_many(session, range(50))
    parts = [p for m in _record(repo, session).manifests for p in m.parts]
    repo.garbage_collect(no_grace)
    assert all(repo.backend.get_objects(parts))
    assert repo.verify().ok
    session.commit("after a gc")
    view = repo.readonly_session(branch="main")
    assert [view.value(f"a/c/{i}") for i in range(50)] == [_value(i) for i in range(50)]
    repo.garbage_collect(no_grace)
    assert repo.backend.get_objects(parts) == [None] * len(parts)
    assert repo.verify().ok
    assert [view.value(f"a/c/{i}") for i in range(50)] == [_value(i) for i in range(50)]


def test_a_commit_streams_the_manifest_without_holding_its_entries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commit holds at most a part and a few leaves of entries, not all N.

    Every entry read from a manifest is counted while alive (CPython frees it
    as soon as nothing holds it): with 3,000 staged chunks in parts of 100,
    the peak stays near a part plus the tree's open leaf run (made small here:
    it is 8,192 entries, and a size-totals run 4,096, whatever N).
    """
    chunks = 3000
    monkeypatch.setattr(manifest_module, "SPILL_AT", 100)
    monkeypatch.setattr(manifest_module, "PART_ENTRIES", 100)
    monkeypatch.setattr(sorted_runs_module, "RUN_RECORDS", 500)
    monkeypatch.setattr(session_module, "_LOGGED_FIRST", 0)
    monkeypatch.setattr(session_module, "_REMEMBER_LEAVES", 0)
    monkeypatch.setattr(object_module, "_PUT_GROUP_OBJECTS", 2)
    monkeypatch.setattr(tree_module, "_FLUSH_ENTRIES", 256)
    monkeypatch.setattr(tree_module, "_OBSERVE_RUN", 64)
    repo = _repo(tmp_path)
    session = repo.writable_session("main")
    for first in range(0, chunks, 500):
        session.set_values([(f"a/c/{i:05d}", _value(i)) for i in range(first, first + 500)])
    session.set_values([("a/zarr.json", b"{}")])
    assert sum(len(m.parts) for m in _record(repo, session).manifests) == chunks // 100

    alive = 0
    peak = 0
    made = 0
    entry_of = ManifestReader._entry  # noqa: SLF001 - counted, then called

    def counted(reader: ManifestReader, item: object) -> object:
        nonlocal alive, peak, made
        found = entry_of(reader, item)  # type: ignore[arg-type]
        alive += 1
        made += 1
        peak = max(peak, alive)

        def gone() -> None:
            nonlocal alive
            alive -= 1

        weakref.finalize(found[1], gone)
        return found

    monkeypatch.setattr(ManifestReader, "_entry", counted)
    session.commit("3,000 chunks")
    assert made == chunks  # every write went through the manifest
    assert peak < chunks // 5, peak
    view = repo.readonly_session(branch="main")
    assert view.value("a/c/02999") == _value(2999)


def test_an_absorb_cut_off_after_its_parts_loses_nothing(
        tmp_path: Path, small_manifests: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts stored, record not written (a killed absorb): the next absorb redoes it."""
    import versionstore.located_staging as staging_module  # noqa: PLC0415 - patched here

    repo = _repo(tmp_path)
    session = repo.writable_session("main")
    session.set_values([(f"a/c/{i}", _value(i)) for i in range(50)])
    written = staging_module.write_manifest
    calls = 0

    def cut_off(*args: object, **kwargs: object) -> StagedManifest | None:
        nonlocal calls
        calls += 1
        manifest = written(*args, **kwargs)  # type: ignore[arg-type]
        if calls == 1:
            raise KeyboardInterrupt("killed between the parts and the record")
        return manifest

    monkeypatch.setattr(staging_module, "write_manifest", cut_off)
    with pytest.raises(KeyboardInterrupt):
        session.commit("cut off")
    record = _record(repo, session)
    assert record.manifests == () and record.closing  # the epoch waits in ``closing``
    resumed = vs.Repository.open(repo.storage).writable_session(
        "main", resume=session.session_id)
    resumed.commit("resumed")
    assert calls == 2
    view = repo.readonly_session(branch="main")
    assert [view.value(f"a/c/{i}") for i in range(50)] == [_value(i) for i in range(50)]
    assert repo.verify().ok


@pytest.mark.parametrize("fault", ["missing", "full"])
def test_an_unusable_temporary_directory_stops_the_absorb_with_a_clear_error(
        tmp_path: Path, small_manifests: None, monkeypatch: pytest.MonkeyPatch,
        fault: str) -> None:
    # The absorb's external sort spills runs to TMPDIR. An error there used to be
    # taken for "the listed folder does not exist": the listing stopped early, the
    # absorb recorded the writes listed so far and closed the epoch, and the commit
    # dropped the rest — 100 of 150 writes that had returned.
    import tempfile  # noqa: PLC0415 - patched here

    import versionstore.spill as spill_module  # noqa: PLC0415 - patched here

    monkeypatch.setattr(sorted_runs_module, "RUN_RECORDS", 50)
    (tmp_path / "store").mkdir()
    repo = _repo(tmp_path / "store")
    session = repo.writable_session("main")
    session.set_values([(f"a/c/{i:03}", _value(i)) for i in range(150)])
    with monkeypatch.context() as patched:
        if fault == "missing":
            patched.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
        else:  # the kernel's own "no space left on device"
            patched.setattr(spill_module.tempfile, "TemporaryFile",
                            lambda: open("/dev/full", "w+b", buffering=0))  # noqa: SIM115
        with pytest.raises(vs.BackendError, match="TMPDIR") as raised:
            session.commit("spilled")
    if fault == "full":
        assert isinstance(raised.value, vs.DiskFullError)
    assert "object storage" not in str(raised.value)  # not blamed on the bucket
    assert repo.lookup_branch("main") == session.snapshot_id  # nothing committed
    resumed = vs.Repository.open(repo.storage).writable_session(
        "main", resume=session.session_id)
    resumed.commit("spilled, after TMPDIR was fixed")
    view = repo.readonly_session(branch="main")
    assert [view.value(f"a/c/{i:03}") for i in range(150)] == [_value(i) for i in range(150)]
    assert repo.verify().ok


def test_gc_between_an_absorbs_parts_and_its_record_keeps_everything(
        tmp_path: Path, small_manifests: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # The parts are stored one by one while the absorb streams; nothing names
    # them until its record. A collection from another client in that window
    # (the default grace period: docs/format.md, "Garbage collection on shared
    # storage") must spare them, the listed writes, and the epoch they came from.
    import versionstore.located_staging as staging_module  # noqa: PLC0415 - patched here

    repo = _repo(tmp_path)
    collector = vs.Repository.open(vs.object_storage(LocalStore(str(tmp_path)), "repo"))
    session = repo.writable_session("main")
    session.set_values([(f"a/c/{i:03}", _value(i)) for i in range(60)])
    written = staging_module.write_manifest
    collected: list[vs.GCSummary] = []

    def collect_meanwhile(*args: object, **kwargs: object) -> StagedManifest | None:
        manifest = written(*args, **kwargs)  # type: ignore[arg-type]
        collected.append(collector.garbage_collect())
        return manifest

    monkeypatch.setattr(staging_module, "write_manifest", collect_meanwhile)
    session.set_values([(f"a/c/{i:03}", _value(i, 1)) for i in range(0, 60, 3)])
    session.set_values([("a/zarr.json", b"{}")])  # absorbs all 80 (newer stamps win)
    monkeypatch.undo()
    assert collected and _record(repo, session).manifests
    collector.garbage_collect()
    session.commit("absorbed while gc ran")
    view = repo.readonly_session(branch="main")
    assert [view.value(f"a/c/{i:03}") for i in range(60)] == [
        _value(i, 1 if i % 3 == 0 else 0) for i in range(60)]
    assert repo.verify().ok

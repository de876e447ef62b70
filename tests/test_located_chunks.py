"""Located chunk references: a chunk kept at a location hint (docs/format.md, "Located staging").

The entry kind is the first step of located staging on object storage: its
encoding and format versions, equality by content, and a located chunk
read, verified, collected around and copied between object storage and
LMDB with its tree (and so its snapshot ids) unchanged.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgpack
import pytest
from object_repo_support import S3Repos, aws_env_fixture, s3_fixture, s3_repos_fixture

import versionstore as vs
import versionstore.session as session_module
from versionstore.backend.protocol import WriteBatch
from versionstore.codec import (
    decode_node,
    decode_staged,
    encode_chunk,
    encode_node,
    encode_staged,
    staged_reencodes,
)
from versionstore.errors import CorruptObjectError, UnsupportedFormatError
from versionstore.ids import ObjectId
from versionstore.records import ChunkRef, Leaf, LocatedChunkRef
from versionstore.refs import session_ref, stage_prefix

__all__ = ["aws_env_fixture", "s3_fixture", "s3_repos_fixture"]

_ID = ObjectId(bytes(range(20)))
_HINT = "stage/s1/0000000000/a%2Fc%2F0/00000000000000a1-c" + _ID.hex()


def _leaf_version(frame: bytes) -> int:
    payload = frame[13:]
    if frame[4] == 1:  # zstd
        import zstandard  # noqa: PLC0415 - only for compressed test frames
        payload = zstandard.ZstdDecompressor().decompress(payload)
    version: int = msgpack.unpackb(payload, raw=False, timestamp=3)[0]
    return version


def test_a_located_reference_equals_the_plain_reference_to_its_chunk() -> None:
    plain = ChunkRef(chunk_id=_ID, size=9)
    located = LocatedChunkRef(chunk_id=_ID, size=9, hint=_HINT)
    assert located == plain and plain == located
    assert hash(located) == hash(plain)
    assert located != LocatedChunkRef(chunk_id=_ID, size=8, hint=_HINT)
    assert plain.location is None and located.location == _HINT
    assert len({plain, located}) == 1


def test_leaves_with_located_references_are_version_3_and_others_unchanged() -> None:
    plain = Leaf(keys=("a",), entries=(ChunkRef(chunk_id=_ID, size=9),))
    located = Leaf(keys=("a", "b"), entries=(
        ChunkRef(chunk_id=_ID, size=9), LocatedChunkRef(chunk_id=_ID, size=9, hint=_HINT)))
    _, plain_frame = encode_node(plain)
    node_id, frame = encode_node(located)
    assert _leaf_version(plain_frame) == 1
    assert _leaf_version(frame) == 3
    decoded = decode_node("leaf", frame)
    assert isinstance(decoded, Leaf)
    assert [e.location for e in decoded.entries] == [None, _HINT]  # type: ignore[union-attr]
    assert encode_node(decoded)[0] == node_id  # the hint is part of the node, on every backend


def test_a_reader_that_knows_only_version_2_refuses_a_located_leaf(
        monkeypatch: pytest.MonkeyPatch) -> None:
    leaf = Leaf(keys=("a",), entries=(LocatedChunkRef(chunk_id=_ID, size=9, hint=_HINT),))
    _, frame = encode_node(leaf)
    monkeypatch.setattr(Leaf, "FORMAT_VERSION", 2)
    with pytest.raises(UnsupportedFormatError):
        decode_node("leaf", frame)


def test_staged_located_entries_are_version_4_and_reencode() -> None:
    name = "stage/s1/a/c/0"
    entry = LocatedChunkRef(chunk_id=_ID, size=9, hint=_HINT)
    raw = encode_staged(name, entry)
    assert raw[13:15] == b"\x93\x04"
    assert staged_reencodes(raw)
    back = decode_staged(name, raw)
    assert isinstance(back, LocatedChunkRef) and back.hint == _HINT


@pytest.mark.parametrize("hint", [
    "objects/" + _ID.hex(), "stage/../log/00000000000000000001", "stage//x", "stage/x/",
    "stage/a/./b", "/stage/x", "stage/a\0b", "stage/" + "x" * 1000,
])
def test_a_hint_outside_the_staging_area_is_damage(hint: str) -> None:
    entry = LocatedChunkRef(chunk_id=_ID, size=9, hint=hint)
    with pytest.raises(ValueError, match="location"):
        entry.check()
    raw = encode_staged("stage/s1/k", entry)
    with pytest.raises(CorruptObjectError, match="location"):
        decode_staged("stage/s1/k", raw)


# -- on object storage, and copied to and from LMDB ---------------------------------------


def _commit_located(repo: vs.Repository, key: str, value: bytes, hint: str) -> str:
    """Store ``value``'s frame at ``hint`` only, stage it as located, commit; the snapshot id.

    The staged ref is written as located staging will write it (the staging
    protocol itself is the next step: docs/format.md).
    """
    chunk_id, frame = encode_chunk(value)
    repo.backend.put_located([(chunk_id, hint, frame)])
    session = repo.writable_session("main")
    session.set_values([("zarr.json", b"{}")])
    name = stage_prefix(session.session_id) + key  # type: ignore[operator]
    entry = LocatedChunkRef(chunk_id=chunk_id, size=len(value), hint=hint)
    session._stage(WriteBatch(refs={name: encode_staged(name, entry)},
                              session=session._staging()))
    return session.commit("located")


def _listed(repo: vs.Repository) -> set[str]:
    backend: Any = repo.backend
    io = backend._io
    return {name for folder in ("objects", "stage")
            for name, _ in io.run("listing", io.list_after(folder))}


def test_a_located_chunk_is_read_verified_and_copied_with_its_tree(
        s3_repos: S3Repos, tmp_path: Path) -> None:
    storage = s3_repos.storage()
    repo = vs.Repository.create(storage)
    value = bytes(range(256)) * 8
    chunk_id, _ = encode_chunk(value)
    hint = f"stage/s1/0000000000/a%2Fc%2F0/00000000000000a1-c{chunk_id.hex()}"
    snapshot = _commit_located(repo, "a/c/0", value, hint)
    listed = _listed(repo)
    assert hint in listed and "objects/" + chunk_id.hex() not in listed  # kept at its hint only
    view = repo.readonly_session(snapshot_id=snapshot)
    assert view.read_entries([view.entry("a/c/0")]) == [value]
    assert view.entry("a/c/0").location == hint  # type: ignore[union-attr]
    assert repo.verify().ok

    # Collected with no grace period at all: the chunk is reachable through its entry.
    repo.garbage_collect(datetime.now(UTC) + timedelta(seconds=5))
    assert hint in _listed(repo)
    assert repo.verify().ok

    # To LMDB: stored under its id, the same snapshot (the tree keeps the hint).
    lmdb = vs.lmdb_storage(tmp_path / "copy")
    vs.copy_repository(storage, lmdb, progress=False)
    local = vs.Repository.open(lmdb)
    assert local.lookup_branch("main") == snapshot
    here = local.readonly_session(branch="main")
    assert here.read_entries([here.entry("a/c/0")]) == [value]
    assert local.verify().ok

    # Back to object storage elsewhere: the chunk lands at its hint again.
    elsewhere = s3_repos.storage()
    vs.copy_repository(lmdb, elsewhere, progress=False)
    again = vs.Repository.open(elsewhere)
    assert again.lookup_branch("main") == snapshot
    assert hint in _listed(again) and "objects/" + chunk_id.hex() not in _listed(again)
    there = again.readonly_session(branch="main")
    assert there.read_entries([there.entry("a/c/0")]) == [value]
    assert again.verify().ok
    local.close()


def test_a_located_chunk_copied_without_its_hint_is_read_under_its_id(
        s3_repos: S3Repos) -> None:
    repo = vs.Repository.create(s3_repos.storage())
    value = b"v" * 4000
    chunk_id, frame = encode_chunk(value)
    hint = f"stage/s2/0000000000/k/00000000000000b2-c{chunk_id.hex()}"
    _commit_located(repo, "k", value, hint)
    backend: Any = repo.backend
    backend._put_objects([(chunk_id, frame)])
    backend._io.run("deleting", backend._io.delete([hint]))
    view = repo.readonly_session(branch="main")
    assert view.read_entries([view.entry("k")]) == [value]
    assert repo.verify().ok


def test_a_missing_located_chunk_is_reported_by_verify(s3_repos: S3Repos) -> None:
    repo = vs.Repository.create(s3_repos.storage())
    value = b"w" * 4000
    chunk_id, _ = encode_chunk(value)
    hint = f"stage/s3/0000000000/k/00000000000000c3-c{chunk_id.hex()}"
    _commit_located(repo, "k", value, hint)
    backend: Any = repo.backend
    backend._io.run("deleting", backend._io.delete([hint]))
    report = repo.verify()
    assert not report.ok
    assert any("missing" in problem for problem in report.problems), report.problems
    assert session_ref("s3").startswith("session/")


# -- located staging and its garbage collection ------------------------------------------


@pytest.fixture
def every_chunk_located(monkeypatch: pytest.MonkeyPatch) -> None:
    """No chunk staged as a log record first (``session._LOGGED_FIRST``): all located."""
    monkeypatch.setattr(session_module, "_LOGGED_FIRST", 0)


def _located_names(repo: vs.Repository) -> set[str]:
    return {name for name in _listed(repo) if name.startswith("stage/")}


def test_gc_keeps_live_and_committed_located_writes_and_collects_the_rest(
        s3_repos: S3Repos, every_chunk_located: None) -> None:
    repo = vs.Repository.create(s3_repos.storage())
    no_grace = datetime.now(UTC) + timedelta(days=1)
    session = repo.writable_session("main")
    session.set_values([("a/c/0", b"1" * 1000), ("a/c/1", b"2" * 1000)])
    session.set_values([("a/c/0", b"3" * 1000)])  # supersedes the first write of a/c/0
    assert len(_located_names(repo)) == 3

    # Not absorbed yet: every write of the live session is kept, whatever its age.
    assert repo.garbage_collect(no_grace).deleted == 0
    assert len(_located_names(repo)) == 3
    session.commit("two chunks")
    view = repo.readonly_session(branch="main")
    assert view.read_entries([view.entry("a/c/0"), view.entry("a/c/1")]) == [
        b"3" * 1000, b"2" * 1000]

    # Committed: the tree names two of them; the superseded write is garbage.
    summary = repo.garbage_collect(no_grace)
    assert summary.deleted == 1
    assert len(_located_names(repo)) == 2
    assert repo.verify().ok
    view = repo.readonly_session(branch="main")
    assert view.read_entries([view.entry("a/c/0"), view.entry("a/c/1")]) == [
        b"3" * 1000, b"2" * 1000]

    # Young writes are spared by the default grace period, discarded or not.
    other = repo.writable_session("main")
    other.set_values([("a/c/2", b"4" * 1000)])
    other.discard_changes()
    assert repo.garbage_collect().deleted == 0
    assert repo.garbage_collect(no_grace).deleted == 1
    assert len(_located_names(repo)) == 2
    assert repo.verify().ok


def test_a_session_sees_its_copies_located_writes_before_they_are_absorbed(
        s3_repos: S3Repos, every_chunk_located: None) -> None:
    storage = s3_repos.storage()
    repo = vs.Repository.create(storage)
    session = repo.writable_session("main")
    session.set_values([("x/c/0", b"a" * 800)])
    copy = vs.Repository.open(storage).writable_session("main", resume=session.session_id)
    assert copy.value("x/c/0") == b"a" * 800
    assert list(copy.staged()) == ["x/c/0"]
    assert copy.has_uncommitted_changes
    assert copy.status().updated_keys or copy.status().updated_chunks
    copy.set_values([("x/c/0", b"b" * 800)])  # the newer write, from the copy
    assert session.value("x/c/0") == b"b" * 800
    session.erase_keys(["x/c/0"])  # absorbs first: the erase is the newest
    assert session.value("x/c/0") is None
    session.set_values([("x/c/0", b"c" * 800), ("x/c/1", b"d" * 800)])
    session.commit("from two copies")
    view = repo.readonly_session(branch="main")
    assert view.read_entries([view.entry("x/c/0"), view.entry("x/c/1")]) == [
        b"c" * 800, b"d" * 800]
    assert not repo.resumable_sessions()


def test_lmdb_and_memory_stage_as_before(tmp_path: Path) -> None:
    for storage in (vs.lmdb_storage(tmp_path / "r"), vs.in_memory_storage()):
        repo = vs.Repository.create(storage)
        assert not repo.backend.located_staging()
        session = repo.writable_session("main")
        session.set_values([("k/c/0", b"v" * 1000), ("k/c/1", b"w" * 1000)])
        entry = session.entry("k/c/0")
        assert isinstance(entry, ChunkRef) and entry.location is None
        session.set_value("k/c/2", b"x" * 1000)  # alone: inside its staged record
        assert session.entry("k/c/2") == b"x" * 1000
        session.commit("plain")
        repo.close()


def test_a_key_too_long_for_a_file_name_stages_as_a_log_record(
        tmp_path: Path, every_chunk_located: None) -> None:
    # On obstore's LocalStore the escaped key is one file-system path component (255
    # bytes at most): a 28-character Japanese array name escapes to 252 bytes before
    # "/c/0", and staging its chunks failed with "File name too long".
    from obstore.store import LocalStore  # noqa: PLC0415 - only this test

    bucket = tmp_path / "bucket"
    bucket.mkdir()
    repo = vs.Repository.create(vs.object_storage(LocalStore(str(bucket)), prefix="era5"))
    name = "東京都の一時間ごとの気温と湿度の観測値二〇二四年再解析値"
    session = repo.writable_session("main")
    session.set_values([(f"{name}/c/{i}", bytes([i]) * 1000) for i in range(3)])
    session.set_values([("short/c/0", b"s" * 1000), ("short/c/1", b"t" * 1000)])
    staged = {key: session.entry(key) for key in (f"{name}/c/0", "short/c/0")}
    assert staged[f"{name}/c/0"] is not None and not isinstance(
        staged[f"{name}/c/0"], LocatedChunkRef)  # a log record: no name to give it
    assert isinstance(staged["short/c/0"], LocatedChunkRef)  # still a located write
    snapshot = session.commit("observations")
    content = repo.readonly_session(snapshot_id=snapshot).store.storage
    assert [content.get(f"{name}/c/{i}") for i in range(3)] == [
        bytes([i]) * 1000 for i in range(3)]
    assert repo.verify().ok
    repo.close()


def test_gc_prunes_an_idle_sessions_record_and_its_next_write_survives(
        s3_repos: S3Repos, every_chunk_located: None) -> None:
    repo = vs.Repository.create(s3_repos.storage())
    session = repo.writable_session("main")
    session.set_values([("p/c/0", b"1" * 1000)])
    session.discard_changes()  # idle, and it never committed
    assert session.session_id in {n.removeprefix("session/")
                                  for n in repo.backend.list_refs("session/")}
    assert repo.garbage_collect().deleted == 0  # not idle for the grace period yet
    assert repo.backend.list_refs("session/")
    repo.garbage_collect(datetime.now(UTC) + timedelta(days=1))
    assert not repo.backend.list_refs("session/")  # idle: pruned
    # The session object still believes in its epoch: its write goes again into a new one.
    session.set_values([("p/c/0", b"1" * 1000), ("p/c/1", b"2" * 1000)])
    assert session.session_id in repo.resumable_sessions()
    session.set_values([("p/c/2", b"3" * 1000)])
    session.commit("three")
    view = repo.readonly_session(branch="main")
    keys = ["p/c/0", "p/c/1", "p/c/2"]
    assert view.read_entries([view.entry(k) for k in keys]) == [
        b"1" * 1000, b"2" * 1000, b"3" * 1000]
    # Committed, the session keeps its record through gc while its base is stored.
    repo.garbage_collect(datetime.now(UTC) + timedelta(days=1))
    assert list(repo.backend.list_refs("session/")) == [f"session/{session.session_id}"]
    assert repo.verify().ok


def test_rewriting_a_located_chunk_unchanged_is_no_change(
        s3_repos: S3Repos, every_chunk_located: None) -> None:
    repo = vs.Repository.create(s3_repos.storage())
    session = repo.writable_session("main")
    session.set_values([("r/c/0", b"1" * 1000)])
    first = session.commit("one")
    again = repo.writable_session("main")
    again.set_values([("r/c/0", b"1" * 1000)])  # the same bytes, at a new location
    assert not again.has_uncommitted_changes
    with pytest.raises(vs.NothingToCommitError):
        again.commit("nothing")
    assert repo.lookup_branch("main") == first


def test_a_small_commit_stages_its_chunks_as_log_records(s3_repos: S3Repos) -> None:
    # The first few chunks after each commit (session._LOGGED_FIRST) ride in log
    # records, so a commit of one chunk needs no absorb (no close, listing or record).
    repo = vs.Repository.create(s3_repos.storage())
    session = repo.writable_session("main")
    session.set_values([("s/c/0", b"1" * 1000)])
    assert not _located_names(repo)
    session.commit("one")
    proxy = s3_repos.proxy
    session.set_values([("s/c/1", b"2" * 1000)])
    proxy.reset_counts()
    session.commit("another")
    assert proxy.counts.get("list", 0) == 0, dict(proxy.counts)
    # More than that in one commit: the rest are located writes.
    values = [(f"s/c/{i}", bytes([i]) * 1000) for i in range(2, 12)]
    session.set_values(values)
    assert len(_located_names(repo)) == 10 - session_module._LOGGED_FIRST
    session.commit("ten")
    view = repo.readonly_session(branch="main")
    assert view.read_entries([view.entry(k) for k, _ in values]) == [v for _, v in values]


def test_staging_on_a_base_this_process_collected_is_refused(tmp_path: Path) -> None:
    # The object backend trusted its memory of having stored an object (the base
    # snapshot, written by this process a moment ago) after its own gc had deleted it:
    # the staging write landed on the collected base, and verify reported it missing.
    import warnings  # noqa: PLC0415 - only this test

    from obstore.store import LocalStore  # noqa: PLC0415

    repo = vs.Repository.create(vs.object_storage(LocalStore(str(tmp_path)), prefix="p"))
    base = repo.lookup_branch("main")
    repo.create_branch("b", snapshot_id=base)
    session = repo.writable_session("b")
    session.set_values([("a/zarr.json", b'{"zarr_format": 3, "node_type": "group"}')])
    session.commit("S")
    based_on_s = repo.writable_session("b")
    repo.reset_branch("b", base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vs.ShortGracePeriodWarning)
        repo.garbage_collect(older_than=datetime.now(UTC) + timedelta(seconds=1))
    with pytest.raises(vs.SnapshotNotFoundError, match="no longer exists"):
        based_on_s.set_values([("g/zarr.json", b'{"zarr_format": 3, "node_type": "group"}')])
    assert repo.verify().ok
    repo.close()

"""Corrupt, truncated, hostile or too-new records give clear errors, never wrong answers."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import xxhash
import zstandard

import versionstore as vs
from versionstore.backend import MemoryBackend
from versionstore.codec import KIND_LEAF, MAX_DECOMPRESSED
from versionstore.ids import ObjectId, object_id_from_text, object_id_text
from versionstore.records import ChunkRef


def _overwrite(repo: vs.Repository, object_id: bytes, data: bytes) -> None:
    """Replace a stored object behind the engine's back (the test's backdoor)."""
    backend = repo.backend
    if isinstance(backend, MemoryBackend):
        backend._objects[ObjectId(object_id)] = data
        return
    with backend._env.begin(write=True) as txn:  # LMDB allows one environment per process
        txn.put(object_id, data, db=backend._objects)


@pytest.fixture(params=["memory", "lmdb"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> vs.Repository:
    if request.param == "memory":
        storage: Any = vs.in_memory_storage()
    else:
        storage = vs.lmdb_storage(tmp_path / "repo")
    repo = vs.Repository.create(storage)
    session = repo.writable_session("main")
    session.store.storage.set("small", b"tiny")
    session.store.storage.set("big", bytes(range(256)) * 40)
    session.store.storage.set("other", b"O" * 2000)
    session.commit("data")
    return repo


def _chunk_id(repo: vs.Repository, key: str) -> bytes:
    entry = repo.readonly_session("main").entry(key)
    assert isinstance(entry, ChunkRef)
    return entry.chunk_id


def _frame(kind: int, payload: bytes, version: int = 1, compression: int = 0) -> bytes:
    checksum = xxhash.xxh3_64_digest(payload)[::-1]
    return b"VS" + bytes((version, kind, compression)) + checksum + payload


def _read(repo: vs.Repository, key: str) -> bytes | None:
    return vs.Repository.open(repo.storage).readonly_session("main").store.storage.get(key)


MUTATIONS: dict[str, Callable[[bytes], bytes]] = {
    "flipped byte": lambda data: data[:-1] + bytes([data[-1] ^ 0x40]),
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "not a frame": lambda data: b"garbage" + data,
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_corrupt_chunk_names_the_object(repo: vs.Repository, mutation: str) -> None:
    chunk_id = _chunk_id(repo, "big")
    original = repo.backend.get_objects([ObjectId(chunk_id)])[0]
    assert original is not None
    _overwrite(repo, chunk_id, MUTATIONS[mutation](original))
    with pytest.raises(vs.CorruptObjectError) as info:
        _read(repo, "big")
    assert info.value.object_id == object_id_text(chunk_id)
    assert object_id_text(chunk_id) in str(info.value)
    assert _read(repo, "other") == b"O" * 2000, "other data stays readable"
    assert _read(repo, "small") == b"tiny"


def test_corrupt_tree_node(repo: vs.Repository) -> None:
    snapshot = repo.reader.snapshot(ObjectId(bytes(_snapshot_oid(repo))))
    assert snapshot.tree is not None
    node = repo.backend.get_objects([snapshot.tree])[0]
    assert node is not None
    _overwrite(repo, snapshot.tree, node[:-3])
    with pytest.raises(vs.CorruptObjectError, match=object_id_text(snapshot.tree)):
        _read(repo, "small")


def _snapshot_oid(repo: vs.Repository) -> bytes:
    return object_id_from_text(repo.lookup_branch("main"))


def test_corrupt_snapshot(repo: vs.Repository) -> None:
    oid = _snapshot_oid(repo)
    data = repo.backend.get_objects([ObjectId(oid)])[0]
    assert data is not None
    _overwrite(repo, oid, MUTATIONS["flipped byte"](data))
    with pytest.raises(vs.CorruptObjectError, match=object_id_text(oid)):
        vs.Repository.open(repo.storage).readonly_session("main")


def test_missing_chunk_is_reported(repo: vs.Repository) -> None:
    chunk_id = _chunk_id(repo, "big")
    repo.backend.delete_objects([ObjectId(chunk_id)])
    with pytest.raises(vs.CorruptObjectError, match="missing"):
        _read(repo, "big")


@pytest.mark.parametrize("record", [
    [1, ["big", "other", "small"], [[b"short id", 5], b"O", b"tiny"]],
    [1, ["big", "other", "small"], [b"B", b"O"]],
    [1, ["big", 7, "small"], [b"B", b"O", b"tiny"]],
    [1, ["big", "other", "small"]],
    [1, ["big", "other", "small"], {"big": b"B"}],
    ["1", ["big"], [b"B"]],
], ids=["malformed entry", "entries missing", "key not a string", "no entries",
        "entries not a list", "version not a number"])
def test_a_malformed_leaf_with_a_good_checksum_is_reported(repo: vs.Repository,
                                                           record: list[Any]) -> None:
    # Point lookups build only the entry they find (tree.LeafIndex): a malformed
    # record written by a buggy client is still reported, naming the leaf.
    snapshot = repo.reader.snapshot(ObjectId(_snapshot_oid(repo)))
    assert snapshot.tree is not None
    _overwrite(repo, snapshot.tree, _frame(KIND_LEAF, msgpack.packb(record, use_bin_type=True)))
    with pytest.raises(vs.CorruptObjectError, match=object_id_text(snapshot.tree)):
        _read(repo, "big")


def test_decompression_bomb_is_refused(repo: vs.Repository) -> None:
    snapshot = repo.reader.snapshot(ObjectId(_snapshot_oid(repo)))
    assert snapshot.tree is not None
    forged = _forge_content_size(MAX_DECOMPRESSED * 4)
    assert zstandard.get_frame_parameters(forged).content_size == MAX_DECOMPRESSED * 4
    _overwrite(repo, snapshot.tree, _frame(KIND_LEAF, forged, compression=1))
    with pytest.raises(vs.ObjectTooLargeError, match="cap"):
        _read(repo, "small")


def _forge_content_size(size: int) -> bytes:
    """A zstd frame header declaring ``size`` content bytes, followed by a raw block."""
    magic = struct.pack("<I", 0xFD2FB528)
    descriptor = bytes([0b11100000])  # 8-byte content size, single segment
    content_size = struct.pack("<Q", size)
    last_raw_block = struct.pack("<I", (4 << 3) | 1)[:3] + b"\x00" * 4
    return magic + descriptor + content_size + last_raw_block


def test_newer_format_is_refused_with_upgrade_advice(repo: vs.Repository) -> None:
    snapshot = repo.reader.snapshot(ObjectId(_snapshot_oid(repo)))
    assert snapshot.tree is not None
    newer_record = msgpack.packb([99, ["small"], [b"tiny"]], use_bin_type=True)
    _overwrite(repo, snapshot.tree, _frame(KIND_LEAF, newer_record))
    with pytest.raises(vs.UnsupportedFormatError, match="upgrade"):
        _read(repo, "small")
    _overwrite(repo, snapshot.tree, _frame(KIND_LEAF, newer_record, version=9))
    with pytest.raises(vs.UnsupportedFormatError):
        _read(repo, "small")


def test_corrupt_branch_ref(repo: vs.Repository) -> None:
    repo.backend.put_objects([], {"branch/main": b"VS\x01\x05" + b"\x00" * 9 + b"junk"})
    with pytest.raises(vs.CorruptObjectError, match="branch/main"):
        repo.lookup_branch("main")

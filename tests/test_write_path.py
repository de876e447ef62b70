"""The lean staging write path (issue 13) behaves exactly as the general one.

Each shortcut taken for speed is compared with what it replaces: the one-step
staged chunk encoder with the general encoders, the raw chunk decoder with the
general frame check, the LMDB write (handles taken once, positions instead of
reads) and its lone staged ``set`` (``Backend.stage``) with the in-memory
backend, a commit that decodes staged records from the session's memory with
one that decodes them afresh, group staging across several loop turns with
"each set returns once staged", and the bridge's direct read of a synchronous
storage with the generic dispatch, and the one-chunk commit's shortcuts (a
leaf encoded without a dispatch per entry, a run's size summed in C, a
branch rewritten by bisecting its children) with the general code.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
import xxhash
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zarr.core.buffer import default_buffer_prototype

import versionstore as vs
from versionstore import codec as codec_module
from versionstore import session as session_module
from versionstore import tree as tree_module
from versionstore.backend.lmdb import LMDBBackend
from versionstore.backend.memory import MemoryBackend
from versionstore.backend.protocol import SessionRule, WriteBatch
from versionstore.codec import (
    KIND_CHUNK,
    KIND_LEAF,
    _entry_fields,
    _frame,
    _leaf_version,
    _packb,
    _unframe,
    decode_chunk,
    decode_history_page,
    decode_node,
    decode_snapshot,
    encode_chunk,
    encode_node,
    encode_staged,
    encode_staged_chunk,
)
from versionstore.errors import CorruptObjectError, MissingObjectsError
from versionstore.ids import ID_LENGTH, ObjectId, hash_object, object_id_text
from versionstore.records import Branch, ChunkRef, Entry, Leaf, LocatedChunkRef, VirtualRef
from zarrstore.memory import MemoryStorage
from zarrstore.zarr_bridge import ZarrStore

_PROTO = default_buffer_prototype()


# -- encoding and decoding ------------------------------------------------------------


@given(name=st.text(min_size=1, max_size=60), value=st.binary(min_size=513, max_size=9000))
def test_the_one_step_staged_chunk_equals_the_general_encoders(name: str, value: bytes) -> None:
    chunk_id, frame, ref, raw = encode_staged_chunk(name, value)
    assert (chunk_id, frame) == encode_chunk(value)
    assert ref == ChunkRef(chunk_id=chunk_id, size=len(value))
    assert type(ref) is ChunkRef and ref.size == len(value) and ref.chunk_id == chunk_id
    assert raw == encode_staged(name, ChunkRef(chunk_id=chunk_id, size=len(value)))


def _general(data: bytes) -> Any:
    """What the general frame check answers: the value, or the error's type."""
    try:
        return bytes(_unframe("c", data, KIND_CHUNK))
    except vs.VersionStoreError as exc:
        return type(exc)


def _fast(data: bytes) -> Any:
    try:
        return decode_chunk("c", data)
    except vs.VersionStoreError as exc:
        return type(exc)


@given(value=st.binary(max_size=9000), data=st.data())
def test_the_raw_chunk_decoder_answers_as_the_general_frame_check(value: bytes,
                                                                  data: Any) -> None:
    _, frame = encode_chunk(value)
    assert decode_chunk("c", frame) == value
    assert decode_chunk("c", memoryview(frame)) == value  # a view of LMDB's map
    position = data.draw(st.integers(0, len(frame) - 1), label="position")
    flip = data.draw(st.integers(1, 255), label="flip")
    damaged = bytearray(frame)
    damaged[position] ^= flip
    assert _fast(bytes(damaged)) == _general(bytes(damaged))
    assert _fast(frame[:position]) == _general(frame[:position])  # truncated
    if position >= 5:  # the checksum or the payload: always refused
        assert _fast(bytes(damaged)) is CorruptObjectError


_IDS = st.binary(min_size=ID_LENGTH, max_size=ID_LENGTH)
_ENTRIES = st.one_of(
    st.binary(max_size=40),
    st.builds(ChunkRef, chunk_id=_IDS, size=st.integers(0, 2**40)),
    st.builds(LocatedChunkRef, chunk_id=_IDS, size=st.integers(0, 2**40),
              hint=st.just("stage/s1/c/0")),
    st.builds(VirtualRef, location=st.just("file:///data/x.nc"), offset=st.integers(0, 99),
              length=st.integers(0, 99), checksum=st.none() | st.just("etag")),
)


@given(entries=st.lists(_ENTRIES, min_size=1, max_size=40))
def test_a_leaf_encodes_as_the_general_encoder_does(entries: list[Entry]) -> None:
    keys = [f"a/c/{i}" for i in range(len(entries))]
    leaf = Leaf(keys=tuple(keys), entries=tuple(entries))
    payload = _packb([_leaf_version(entries), keys, [_entry_fields(e) for e in entries]])
    assert encode_node(leaf) == (hash_object(KIND_LEAF, payload),
                                 _frame(KIND_LEAF, payload, compress=True))
    assert tree_module._run_cost(keys, entries) == sum(map(tree_module._entry_cost, keys,
                                                           entries))



def test_leaves_compressed_as_before_still_decode_and_new_ones_are_plain_zstd() -> None:
    """Leaves were zstd level 3, now small-table parameters: both one zstd frame format.

    A leaf written before decodes today; one written today carries its size
    and decompresses with a default decompressor (as older readers have).
    """
    keys = [f"group/array/c/{i}/{j}" for i in range(40) for j in range(5)]
    leaf = Leaf(keys=tuple(keys), entries=tuple(f"value {k}".encode() * 3 for k in keys))
    node_id, frame = encode_node(leaf)
    payload = _packb([1, keys, list(leaf.entries)])
    assert frame[4] == codec_module._ZSTD and node_id == hash_object(KIND_LEAF, payload)
    stored = frame[codec_module._HEADER:]
    assert zstandard.get_frame_parameters(stored).content_size == len(payload)
    assert zstandard.ZstdDecompressor().decompress(stored) == payload
    before = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(payload)
    old = b"".join((frame[:5], xxhash.xxh3_64_digest(before)[::-1], before))
    assert old != frame and decode_node("old", old) == decode_node("new", frame) == leaf


class _ChildByChild(tree_module._Writer):
    """The branch rewrite as it was: every child compared with the next change."""

    def rewrite(self, node_id: ObjectId, changes: Any, bound: str | None
                ) -> list[tuple[str, ObjectId]]:
        node = self.load(node_id)
        if isinstance(node, Leaf):
            return self.merge_leaf(node, changes, bound)
        items: list[tuple[str, ObjectId]] = []
        last = len(node.keys) - 1
        for index, (first, child) in enumerate(zip(node.keys, node.children, strict=True)):
            upper = bound if index == last else node.keys[index + 1]
            if changes.below(upper):
                items.extend(self.rewrite(child, changes, upper))
            else:
                items.append((first, child))
        return self.branches(items, node.level)


@settings(max_examples=60, deadline=None)
@given(base=st.dictionaries(st.integers(0, 400), st.binary(max_size=4), min_size=10,
                            max_size=300),
       changes=st.dictionaries(st.integers(-5, 405), st.none() | st.binary(max_size=4),
                               min_size=1, max_size=40))
def test_a_rewrite_bisecting_children_makes_the_child_by_child_tree(
        base: dict[int, bytes], changes: dict[int, bytes | None]) -> None:
    stored: dict[ObjectId, bytes] = {}

    def load(node_id: ObjectId) -> Any:
        return decode_node(object_id_text(node_id), stored[node_id])

    def key(i: int) -> str:
        return f"a/c/{i:+04d}"

    with pytest.MonkeyPatch.context() as patch:  # small nodes: trees three and four levels deep
        patch.setattr(tree_module, "MAX_LEAF_ENTRIES", 3)
        patch.setattr(tree_module, "MAX_BRANCH_CHILDREN", 3)
        root, nodes = tree_module.apply_changes(
            load, None, iter(sorted((key(k), v) for k, v in base.items())))
        stored.update(nodes)
        assert isinstance(load(root), Branch)  # type: ignore[arg-type]
        ordered = sorted((key(k), v) for k, v in changes.items())
        bisected = tree_module.apply_changes(load, root, iter(ordered))
        with pytest.MonkeyPatch.context() as old:
            old.setattr(tree_module, "_Writer", _ChildByChild)
            walked = tree_module.apply_changes(load, root, iter(ordered))
    assert bisected == walked



class _Inline(bytes):
    """An inline value of a ``bytes`` subclass: the leaf encoder's general path."""


_KEYS = st.text(alphabet="a/z09~é中\x7f\U0001f600", max_size=4)
_ROUND = st.dictionaries(_KEYS, st.none() | _ENTRIES | st.binary(max_size=6).map(_Inline),
                         max_size=30)


@settings(max_examples=40, deadline=None)
@given(rounds=st.lists(_ROUND, min_size=2, max_size=6), leaf=st.integers(1, 3),
       fanout=st.integers(2, 3), streamed=st.booleans())
def test_histories_bisecting_children_make_the_child_by_child_trees(
        rounds: list[dict[str, Entry | None]], leaf: int, fanout: int, streamed: bool) -> None:
    # Several commits in a row, with deletions that empty leaves and subtrees, keys
    # below, above and equal to the branches' keys, mixed entries, leaves streamed.
    stored: dict[ObjectId, bytes] = {}

    def load(node_id: ObjectId) -> Any:
        return decode_node(object_id_text(node_id), stored[node_id])

    def apply(root: ObjectId | None, changes: list[tuple[str, Entry | None]]) -> Any:
        emitted: dict[ObjectId, bytes] = {}
        made = tree_module.apply_changes(
            load, root, iter(changes),
            emit=(lambda i, data, _: emitted.__setitem__(i, data)) if streamed else None)
        return made, emitted

    root: ObjectId | None = None
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tree_module, "MAX_LEAF_ENTRIES", leaf)
        patch.setattr(tree_module, "MAX_BRANCH_CHILDREN", fanout)
        for changes in rounds:
            ordered = sorted(changes.items())
            bisected = apply(root, ordered)
            with pytest.MonkeyPatch.context() as old:
                old.setattr(tree_module, "_Writer", _ChildByChild)
                walked = apply(root, ordered)
            assert bisected == walked
            (root, nodes), emitted = bisected
            stored.update(nodes)
            stored.update(emitted)


def test_a_chunk_id_is_its_kind_and_content() -> None:
    assert encode_staged_chunk("n", b"v" * 600)[0] == hash_object(KIND_CHUNK, b"v" * 600)


# -- the LMDB write, against the in-memory backend ---------------------------------------

_NAMES = st.sampled_from(["stage/s/a", "stage/s/b", "stage/s/c", "session/s", "branch/x"])
_VALUES = st.sampled_from([b"1", b"2", b"3"])
_IDS = st.sampled_from([hash_object(KIND_CHUNK, bytes([i])) for i in range(4)])


@st.composite
def _batches(draw: Any) -> WriteBatch:
    rule = draw(st.none() | st.builds(
        SessionRule, prefix=st.just("stage/s/"), record=st.just("session/s"),
        value=_VALUES, replace=st.booleans(), requires=st.lists(_IDS, max_size=1)))
    return WriteBatch(
        objects=draw(st.lists(st.tuples(_IDS, _VALUES), max_size=2)),
        expect=draw(st.dictionaries(_NAMES, st.none() | _VALUES, max_size=1)),
        requires=draw(st.lists(_IDS, max_size=2)),
        refs=draw(st.dictionaries(_NAMES, st.none() | _VALUES, max_size=3)),
        delete_if_equal=draw(st.dictionaries(_NAMES, _VALUES, max_size=3)),
        session=rule,
    )


@st.composite
def _stages(draw: Any) -> tuple[str, bytes, SessionRule]:
    """A lone set's write (``Backend.stage``): one staged ref under the session's rule."""
    rule = draw(st.builds(
        SessionRule, prefix=st.just("stage/s/"), record=st.just("session/s"),
        value=_VALUES, replace=st.booleans(), requires=st.lists(_IDS, max_size=1)))
    return draw(st.sampled_from(["stage/s/a", "stage/s/b"])), draw(_VALUES), rule


def _outcome(backend: Any, batch: WriteBatch | tuple[str, bytes, SessionRule]) -> Any:
    try:
        if isinstance(batch, tuple):
            return backend.stage(*batch)
        return backend.write(batch)
    except MissingObjectsError as exc:
        return sorted(exc.object_ids)


_FIXTURE_OK = [HealthCheck.function_scoped_fixture]  # each example makes its own directory


@settings(max_examples=60, deadline=None, suppress_health_check=_FIXTURE_OK)
@given(batches=st.lists(_batches() | _stages(), min_size=1, max_size=8))
def test_lmdb_writes_do_what_the_in_memory_backend_does(
        tmp_path: Path, batches: list[WriteBatch | tuple[str, bytes, SessionRule]]) -> None:
    memory = MemoryBackend()
    lmdb_backend = LMDBBackend(tmp_path / f"env{len(list(tmp_path.iterdir()))}")
    try:
        for batch in batches:
            assert _outcome(lmdb_backend, batch) == _outcome(memory, batch)
            assert lmdb_backend.list_refs("") == memory.list_refs("")
        ids = sorted({i for batch in batches if isinstance(batch, WriteBatch)
                      for i, _ in batch.objects})
        assert lmdb_backend.get_objects(ids) == memory.get_objects(ids)
    finally:
        lmdb_backend.close()


# -- commits decode from the session's memory ------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> vs.Repository:
    return vs.Repository.create(vs.lmdb_storage(tmp_path / "repo"))


_WRITES = st.lists(st.tuples(st.sampled_from(["a", "b", "g/c/0", "g/c/1", "g/zarr.json"]),
                             st.none() | st.binary(max_size=40).map(lambda b: b * 30)),
                   min_size=1, max_size=12)


@settings(max_examples=25, deadline=None, suppress_health_check=_FIXTURE_OK)
@given(writes=_WRITES)
def test_a_commit_from_remembered_records_equals_one_from_a_resumed_session(
        tmp_path: Path, writes: list[tuple[str, bytes | None]]) -> None:
    trees = []
    for remembered in (True, False):
        path = tmp_path / f"r{len(list(tmp_path.iterdir()))}"
        with vs.Repository.create(vs.lmdb_storage(path)) as repo:
            session = repo.writable_session("main")
            session.set_values([("base", b"0")])
            session.commit("base")
            for key, value in writes:
                if value is None:
                    session.erase_keys([key])
                else:
                    session.set_values([(key, value)])
            if not remembered:  # as a resumed copy: nothing decoded yet
                session._staged_decoded.clear()
            else:
                assert session._staged_decoded or all(v is None for _, v in writes)
            try:
                snapshot = session.commit("w")
            except vs.NothingToCommitError:
                trees.append(None)
                continue
            view = repo.readonly_session(snapshot_id=snapshot)
            trees.append((repo.reader.snapshot(view._base).tree,
                          {k: view.value(k) for k, _ in view.iter_entries("", "")}))
    assert trees[0] == trees[1]


def test_a_commit_refuses_a_remembered_record_found_under_another_key(
        repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    session.set_values([("a", b"x" * 1000)])  # remembered as it is staged
    prefix = f"stage/{session.session_id}/"
    stored = repo.backend.get_ref(prefix + "a")
    assert stored is not None
    repo.backend.put_objects([], refs={prefix + "b": stored})  # a damaged key
    with pytest.raises(CorruptObjectError, match="damaged"):
        session.commit("c")


def test_a_commit_decodes_what_the_session_forgot(repo: vs.Repository,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_module, "_STAGED_DECODED", 8)
    session = repo.writable_session("main")
    values = {f"k/{i}": bytes([i]) * 700 for i in range(30)}
    for key, value in values.items():
        session.set_values([(key, value)])
    assert len(session._staged_decoded) <= 8  # the older half is forgotten each time
    snapshot = session.commit("c")
    view = repo.readonly_session(snapshot_id=snapshot)
    assert {key: view.value(key) for key in values} == values


# -- the bridge's direct read -------------------------------------------------------------


class _Recording(MemoryStorage):
    """A memory storage that records the thread each read ran on."""

    def __init__(self, blocking: bool) -> None:
        super().__init__()
        self.blocking = blocking
        self.threads: list[int] = []

    @property
    def blocking_io(self) -> bool:  # type: ignore[override]
        return self.blocking

    def _get(self, key: str, byte_range: Any) -> bytes | None:
        self.threads.append(threading.get_ident())
        return super()._get(key, byte_range)


@given(value=st.binary(max_size=64), start=st.integers(0, 70))
def test_a_direct_read_answers_as_the_dispatched_one(value: bytes, start: int) -> None:
    from zarr.abc.store import OffsetByteRequest

    direct, dispatched = _Recording(blocking=False), _Recording(blocking=True)
    for storage in (direct, dispatched):
        storage.set("k", value)

    async def read(storage: _Recording) -> list[Any]:
        store = ZarrStore(storage)
        got = [await store.get("k", _PROTO), await store.get("missing", _PROTO),
               await store.get("k", _PROTO, OffsetByteRequest(min(start, len(value))))]
        return [None if g is None else g.to_bytes() for g in got]

    loop_thread: list[int] = []

    async def both() -> tuple[list[Any], list[Any]]:
        loop_thread.append(threading.get_ident())
        return await read(direct), await read(dispatched)

    answers = asyncio.run(both())
    assert answers[0] == answers[1]
    assert set(direct.threads) == {loop_thread[0]}  # on the loop: it cannot block
    assert loop_thread[0] not in dispatched.threads  # in a worker thread: it may block


#: Integers commit metadata can hold (msgpack: 64 bits, signed or not; a larger one is a
#: ``TypeError``, ``tests/test_reported_icechunk.py``).
_METADATA_INTS = st.integers(-(2**63), 2**64 - 1)


@settings(max_examples=20, deadline=None, suppress_health_check=_FIXTURE_OK)
@given(steps=st.lists(st.tuples(st.sampled_from(["commit", "amend", "empty"]),
                                st.none() | st.dictionaries(
                                    st.text(max_size=5),
                                    _METADATA_INTS | st.tuples(_METADATA_INTS)
                                    | st.text(max_size=5),
                                    max_size=2)),
                      min_size=1, max_size=6))
def test_a_snapshot_kept_from_its_commit_equals_the_stored_one_read_back(
        tmp_path: Path, steps: list[tuple[str, dict[str, Any] | None]]) -> None:
    """``ObjectReader.remember_snapshot`` caches exactly what a read returns: snapshot, page."""
    path = tmp_path / f"r{len(list(tmp_path.iterdir()))}"
    with vs.Repository.create(vs.lmdb_storage(path)) as repo:
        session = repo.writable_session("main")
        for n, (kind, metadata) in enumerate(steps):
            session.set_values([(f"g/c/{n}", bytes([n]) * 700), ("g/zarr.json", b"{}" * n)])
            if kind == "amend" and n == 0:  # at the initial snapshot: refused, as icechunk
                with pytest.raises(vs.AmendInitialSnapshotError):
                    session.amend(f"amended {n}", metadata)
                snapshot = session.commit(f"step {n}", metadata)
            elif kind == "amend":
                snapshot = session.amend(f"amended {n}", metadata)
            else:
                snapshot = session.commit(f"step {n}", metadata, allow_empty=kind == "empty")
            snapshot_id = session._base
            kept = repo.reader.snapshot(snapshot_id)
            assert object_id_text(snapshot_id) == snapshot
            stored = repo.backend.get_objects([snapshot_id])[0]
            assert stored is not None
            read = decode_snapshot("", stored)
            assert kept == read
            assert type(kept.metadata) is type(read.metadata)
            assert kept.metadata == read.metadata
            if kept.history is not None:  # and its history page, kept from the commit too
                kept_page = repo.reader.history_page(kept.history)
                stored_page = repo.backend.get_objects([kept.history])[0]
                assert stored_page is not None
                read_page = decode_history_page("", stored_page)
                assert kept_page == read_page
                assert [type(i) for i in kept_page.ids] == [type(i) for i in read_page.ids]
                assert type(kept_page.rows) is type(read_page.rows)

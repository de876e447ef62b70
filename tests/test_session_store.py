"""Session stores against zarr's StoreTests, our conformance suite and both state machines."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis.stateful import run_state_machine_as_test
from hypothesis_budget import fewer_examples, hierarchy_examples
from zarr.core.buffer import Buffer, cpu
from zarr.testing.stateful import ZarrHierarchyStateMachine, ZarrStoreStateMachine
from zarr.testing.store import StoreTests

import versionstore as vs
from versionstore.session_store import MAX_KEY_BYTES, SessionStorage, SessionStore
from zarrstore import InvalidKeyError, ReadOnlyError
from zarrstore.testing import StoreConformance, storage_state_machine

BACKENDS: dict[str, Callable[[Path], Any]] = {
    "memory": lambda tmp: vs.in_memory_storage(),
    "lmdb": lambda tmp: vs.lmdb_storage(tmp / "repo"),
}


@pytest.fixture(params=sorted(BACKENDS))
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[vs.Repository]:
    repository = vs.Repository.create(BACKENDS[request.param](tmp_path))
    yield repository
    repository.close()


def _read(session: vs.Session, key: str) -> bytes:
    value = session.read_entries([session.entry(key)])[0]
    assert value is not None, key
    return value


# -- writable sessions ----------------------------------------------------------------


class TestWritableSessionConformance(StoreConformance):
    @pytest.fixture
    def storage(self, repo: vs.Repository) -> SessionStorage:
        return repo.writable_session("main").store.storage

    def raw_get(self, storage: SessionStorage, key: str) -> bytes | None:  # type: ignore[override]
        return storage.session.read_entries([storage.session.entry(key)])[0]

    def raw_set(self, storage: SessionStorage, key: str, value: bytes) -> None:  # type: ignore[override]
        storage.session.set_values([(key, value)])


class TestWritableSessionStoreWithZarr(StoreTests[SessionStore, cpu.Buffer]):
    store_cls = SessionStore
    buffer_cls = cpu.Buffer

    async def set(self, store: SessionStore, key: str, value: Buffer) -> None:
        store.session.set_values([(key, value.to_bytes())])

    async def get(self, store: SessionStore, key: str) -> Buffer:
        return self.buffer_cls.from_bytes(_read(store.session, key))

    @pytest.fixture
    def store_kwargs(self, repo: vs.Repository) -> dict[str, Any]:
        return {"session": repo.writable_session("main")}

    def test_store_repr(self, store: SessionStore) -> None:
        assert repr(store).startswith("SessionStore(SessionStorage(branch='main', snapshot=")

    def test_store_supports_writes(self, store: SessionStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: SessionStore) -> None:
        assert store.supports_listing


def test_writable_session_state_machine(repo: vs.Repository) -> None:
    run_state_machine_as_test(
        storage_state_machine(lambda: repo.writable_session("main").store.storage),
        settings=fewer_examples(2),
    )


def test_zarr_store_state_machine_on_a_session(repo: vs.Repository) -> None:
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        lambda: ZarrStoreStateMachine(repo.writable_session("main").store),
        settings=fewer_examples(8),
    )


def test_zarr_hierarchy_state_machine_on_a_session(repo: vs.Repository) -> None:
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        lambda: ZarrHierarchyStateMachine(repo.writable_session("main").store),
        settings=hierarchy_examples(),
    )


def test_state_machine_across_commits(repo: vs.Repository) -> None:
    """Same model checks, but every session starts from a freshly committed base."""
    counter = iter(range(10**6))

    def fresh() -> SessionStorage:
        writer = repo.writable_session("main")
        writer.store.storage.set(f"base/k{next(counter) % 3}", b"committed")
        writer.commit("seed", allow_empty=True)
        session = repo.writable_session("main")
        session.store.storage.erase_prefix("")
        return session.store.storage

    run_state_machine_as_test(storage_state_machine(fresh), settings=fewer_examples(8))


# -- read-only sessions (views of an immutable snapshot) ---------------------------------


def _commit_and_view(storage: SessionStorage, key: str, value: bytes) -> None:
    """Backdoor: commit ``key`` on main, then point the storage at the new snapshot."""
    repo = storage.session.repository
    writer = repo.writable_session("main")
    writer.set_values([(key, value)])
    storage.session = repo.readonly_session(snapshot_id=writer.commit(f"set {key}"))


class TestReadOnlySessionConformance(StoreConformance):
    writable = False

    @pytest.fixture
    def storage(self, repo: vs.Repository) -> SessionStorage:
        return repo.readonly_session("main").store.storage

    def raw_get(self, storage: SessionStorage, key: str) -> bytes | None:  # type: ignore[override]
        return storage.session.read_entries([storage.session.entry(key)])[0]

    def raw_set(self, storage: SessionStorage, key: str, value: bytes) -> None:  # type: ignore[override]
        _commit_and_view(storage, key, value)


READ_ONLY_REASON = (
    "a read-only session is a view of an immutable snapshot, so this test's writes are "
    "refused by design (test_read_only_store_raises and the conformance suite check that)"
)


class TestReadOnlySessionStoreWithZarr(StoreTests[SessionStore, cpu.Buffer]):
    store_cls = SessionStore
    buffer_cls = cpu.Buffer

    async def set(self, store: SessionStore, key: str, value: Buffer) -> None:
        _commit_and_view(store.storage, key, value.to_bytes())

    async def get(self, store: SessionStore, key: str) -> Buffer:
        return self.buffer_cls.from_bytes(_read(store.session, key))

    @pytest.fixture
    def store_kwargs(self, repo: vs.Repository) -> dict[str, Any]:
        return {"session": repo.readonly_session("main")}

    def test_store_repr(self, store: SessionStore) -> None:
        assert "read-only" in repr(store)

    def test_store_supports_writes(self, store: SessionStore) -> None:
        assert store.read_only

    def test_store_supports_listing(self, store: SessionStore) -> None:
        assert store.supports_listing

    def test_store_read_only(self, store: SessionStore) -> None:
        assert store.read_only

    @pytest.mark.parametrize("read_only", [True, False])
    async def test_store_open_read_only(self, open_kwargs: dict[str, Any], read_only: bool
                                        ) -> None:
        store = await self.store_cls.open(**{**open_kwargs, "read_only": read_only})
        assert store.read_only

    async def test_with_read_only_store(self, open_kwargs: dict[str, Any]) -> None:
        store = await self.store_cls.open(**open_kwargs)
        with pytest.raises(vs.ReadOnlySessionError):
            store.with_read_only(False)
        assert store.with_read_only(True).read_only

    for _name in [
        "test_serializable_store", "test_set", "test_set_not_open", "test_set_many",
        "test_exists", "test_delete", "test_delete_dir", "test_clear", "test_list",
        "test_list_prefix", "test_list_empty_path", "test_list_dir", "test_getsize_prefix",
        "test_set_if_not_exists", "test_set_sync", "test_delete_sync",
        "test_sync_async_set_get_parity", "test_delete_sync_visible_to_async_get",
        "test_get_sync_byte_range_parity", "test_delete_nonexistent_key_does_not_raise",
        "test_delete_sync_missing",
    ]:
        locals()[_name] = pytest.mark.skip(reason=READ_ONLY_REASON)(
            getattr(StoreTests, _name)
        )
    del _name


# -- session-store specifics -------------------------------------------------------------


def test_with_read_only_really_refuses_writes(repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    reader = session.store.with_read_only(True)
    with pytest.raises(ReadOnlyError):
        reader.storage.set("k", b"v")
    assert not session.has_uncommitted_changes
    writer = reader.with_read_only(False)
    writer.storage.set("k", b"v")
    assert session.has_uncommitted_changes


def test_writing_through_a_read_only_session_says_what_to_do(repo: vs.Repository) -> None:
    # zarr-python's route (the bridge) and the storage's own both name the session's
    # snapshot and the writable alternative, not only "read-only mode".
    import zarr

    session = repo.writable_session("main")
    zarr.create_array(session.store, name="a", shape=(2,), dtype="i4")[:] = 1
    session.commit("a")
    reader = repo.readonly_session("main")
    array = zarr.open_array(reader.store, path="a")
    with pytest.raises(ReadOnlyError, match=r"read-only session .*writable_session\(branch\)"):
        array[0] = 2
    with pytest.raises(ReadOnlyError, match=f"snapshot {reader.snapshot_id}.*writable_session"):
        reader.store.storage.set("k", b"v")
    view = repo.writable_session("main").store.with_read_only(True)
    with pytest.raises(ReadOnlyError, match=r"with_read_only\(\); write through session\.store"):
        asyncio.run(view.set("k", cpu.Buffer.from_bytes(b"v")))


def test_sessions_pickle_and_keep_their_identity(repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    session.store.storage.set("a", b"staged")
    clone = pickle.loads(pickle.dumps(session))
    assert clone == session and clone.session_id == session.session_id
    clone.store.storage.set("b", b"from the clone")
    assert session.store.storage.get("b") == b"from the clone"
    snapshot = session.commit("both")
    reader = pickle.loads(pickle.dumps(repo.readonly_session(snapshot_id=snapshot)))
    assert reader.store.storage.get("a") == b"staged"


def test_repr_is_cheap_and_does_no_io(repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    repo.close()  # any I/O in repr would now fail
    assert "branch 'main'" in repr(session)
    assert "SessionStorage(branch='main'" in repr(session.store)


def test_keys_too_long_for_a_session_are_refused_on_every_write_path(
    repo: vs.Repository,
) -> None:
    store = repo.writable_session("main").store
    storage = store.storage
    long_key = "k" * (MAX_KEY_BYTES + 1)
    wide_key = "ключ" * (MAX_KEY_BYTES // 8 + 1)  # few characters, too many UTF-8 bytes
    value = cpu.Buffer.from_bytes(b"v")

    def writes(key: str) -> list[Callable[[], Any]]:
        return [
            lambda: storage.set(key, b"v"),
            lambda: storage.set_if_absent(key, b"v"),
            lambda: asyncio.run(store.set(key, value)),
            lambda: asyncio.run(store.set_if_not_exists(key, value)),
            lambda: asyncio.run(store._set_many([("ok", value), (key, value)])),
            lambda: store.set_sync(key, value),
        ]

    for key in [long_key, wide_key, "g/" + long_key]:
        for write in writes(key):
            with pytest.raises(InvalidKeyError, match=f"at most {MAX_KEY_BYTES} bytes"):
                write()
        assert storage.get(key) is None and not storage.exists(key)
    assert storage.set_if_absent("k" * MAX_KEY_BYTES, b"fits")
    assert storage.get("k" * MAX_KEY_BYTES) == b"fits"


def test_any_protocol_key_is_accepted(repo: vs.Repository) -> None:
    storage = repo.writable_session("main").store.storage
    for key in ["not/zarr/at/all", ".zattrs", "x.y", "ünïcode/ключ", "a" * 300]:
        storage.set(key, key.encode())
        assert storage.get(key) == key.encode()


def test_value_reads_staged_then_committed_entries_in_one_call(repo: vs.Repository) -> None:
    big, small = bytes(range(256)) * 8, b"inline"
    session = repo.writable_session("main")
    session.set_values([("big", big), ("small", small), ("gone", big + b"!")])
    assert [session.value(k) for k in ("big", "small", "gone", "none")] == [
        big, small, big + b"!", None]
    session.commit("base")
    session.set_values([("big", big[::-1])])
    session.erase_keys(["gone"])
    # staged chunk, staged deletion over a committed chunk, committed inline, missing
    assert [session.value(k) for k in ("big", "gone", "small", "none")] == [
        big[::-1], None, small, None]
    assert [session.value(k) for k in ("big", "gone", "small")] == [
        _read_or_none(session, k) for k in ("big", "gone", "small")]
    reader = repo.readonly_session("main")
    assert [reader.value(k) for k in ("big", "gone", "small")] == [big, big + b"!", small]


def test_value_of_a_copy_follows_the_sessions_commit(repo: vs.Repository) -> None:
    session = repo.writable_session("main")
    session.set_values([("k", b"x" * 1000)])
    copy = pickle.loads(pickle.dumps(session))
    session.commit("k")  # the staged ref is gone; the copy must now read the new base
    assert copy.value("k") == b"x" * 1000


def _read_or_none(session: vs.Session, key: str) -> bytes | None:
    return session.read_entries([session.entry(key)])[0]


def test_a_staged_record_under_the_wrong_key_is_refused_after_the_right_one_was_read(
    repo: vs.Repository,
) -> None:
    # Staged reads remember decoded records by their bytes; the bytes name their key,
    # so the same bytes found under another key (a damaged key) must still be refused.
    session = repo.writable_session("main")
    session.set_values([("a", b"x" * 1000)])
    assert session.value("a") == b"x" * 1000  # decoded and remembered
    prefix = f"stage/{session.session_id}/"
    stored = repo.backend.get_ref(prefix + "a")
    assert stored is not None
    repo.backend.put_objects([], refs={prefix + "b": stored})
    with pytest.raises(vs.CorruptObjectError, match="damaged"):
        session.value("b")
    with pytest.raises(vs.CorruptObjectError, match="damaged"):
        session.entry("b")
    assert session.value("a") == b"x" * 1000

"""OpendalStore and AsyncOpendalStore over real services: fs, memory, FTP (pyftpdlib) and S3 (moto).

fs, memory and FTP run the shared conformance base (the async storage
through ``AsyncToSync``), zarr's ``StoreTests`` and both state machines, for
the blocking and the async store; S3 runs the conformance base and
``StoreTests`` through the blocking store. The backdoors write files, call opendal or
boto3 directly, never the storage under test. FTP cannot store empty values
through opendal: those cases are skipped with that reason, and the state
machines draw non-empty values there. Round trips, capabilities and errors
are in ``test_opendal_usage.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from async_only import AsyncOnlyStoreTests
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import rule, run_state_machine_as_test
from hypothesis_budget import hierarchy_examples
from object_support import S3Server, aws_env_fixture, s3_fixture  # noqa: F401
from opendal_support import (
    FTP_NO_EMPTY,
    MEMORY_NOT_PICKLABLE,
    FTPServer,
    Service,
    fs_service,
    ftp_fixture,  # noqa: F401
    memory_service,
    s3_service,
)
from zarr.core.buffer import Buffer, cpu
from zarr.testing.stateful import ZarrHierarchyStateMachine, ZarrStoreStateMachine
from zarr.testing.store import StoreTests
from zarr.testing.strategies import keys as zarr_keys

from zarrstore import AsyncToSync
from zarrstore.opendal import AsyncOpendalStorage, AsyncOpendalStore, OpendalStorage, OpendalStore
from zarrstore.protocol import Storage
from zarrstore.testing import (
    FILES_CANNOT_BE_DIRECTORIES,
    KEYS,
    FilesStoreStateMachine,
    StoreConformance,
    storage_state_machine,
)

# -- the services ------------------------------------------------------------------------


class FileBacked:
    """Services that keep keys as files in directories: ``g/x`` cannot sit beside ``g/x/...``."""

    def why_not_a_key_and_keys_under_it(self, storage: Storage) -> str | None:
        return FILES_CANNOT_BE_DIRECTORIES


class OnFs(FileBacked):
    @pytest.fixture
    def service(self, tmp_path: Path) -> Service:
        return fs_service(tmp_path)


class InMemory:
    picklable = False
    not_picklable_reason = MEMORY_NOT_PICKLABLE

    @pytest.fixture
    def service(self) -> Service:
        return memory_service()


class OnFtp(FileBacked):
    @pytest.fixture
    def service(self, ftp: FTPServer) -> Service:
        return ftp.fresh()


class OnS3:
    @pytest.fixture
    def service(self, s3: S3Server) -> Service:
        return s3_service(s3)


# -- the shared conformance base ---------------------------------------------------------


class Conformance(StoreConformance):
    service: Service

    def raw_get(self, storage: Storage, key: str) -> bytes | None:
        return self.service.backdoor.get(key)

    def raw_set(self, storage: Storage, key: str, value: bytes) -> None:
        self.service.backdoor.put(key, value)


class SyncConformance(Conformance):
    @pytest.fixture
    def storage(self, service: Service) -> Storage:
        self.service = service
        return OpendalStorage(service.operator())


class AsyncConformance(Conformance):
    @pytest.fixture
    def storage(self, service: Service) -> Storage:
        self.service = service
        return AsyncToSync(AsyncOpendalStorage(service.async_operator()))


class FtpConformance(OnFtp):
    @pytest.mark.parametrize("value", [b"", b"v", bytes(range(256)) * 64])
    def test_set_then_get(self, storage: Storage, value: bytes) -> None:
        if not value:
            pytest.skip(FTP_NO_EMPTY)
        super().test_set_then_get(storage, value)  # type: ignore[misc]


class TestFsConformance(OnFs, SyncConformance):
    pass


class TestMemoryConformance(InMemory, SyncConformance):
    pass


class TestFtpConformance(FtpConformance, SyncConformance):
    pass


class TestS3Conformance(OnS3, SyncConformance):
    pass


class TestFsAsyncConformance(OnFs, AsyncConformance):
    pass


class TestMemoryAsyncConformance(InMemory, AsyncConformance):
    pass


class TestFtpAsyncConformance(FtpConformance, AsyncConformance):
    pass


# On S3 (moto) the suites run through the blocking store; the async store meets S3 in
# the round trips and error tests of test_opendal_usage.py.


# -- zarr's own store test-suite ---------------------------------------------------------


class ZarrSuite:
    buffer_cls = cpu.Buffer
    service: Service

    async def set(self, store: Any, key: str, value: Buffer) -> None:
        self.service.backdoor.put(key, value.to_bytes())

    async def get(self, store: Any, key: str) -> Buffer:
        value = self.service.backdoor.get(key)
        assert value is not None, key
        return self.buffer_cls.from_bytes(value)

    def test_store_supports_writes(self, store: Any) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: Any) -> None:
        assert store.supports_listing


class SyncStoreTests(ZarrSuite, StoreTests[OpendalStore, cpu.Buffer]):
    store_cls = OpendalStore

    @pytest.fixture
    def store_kwargs(self, service: Service) -> dict[str, Any]:
        self.service = service
        return {"operator": service.operator()}

    def test_store_repr(self, store: OpendalStore) -> None:
        assert repr(store) == f"OpendalStore(OpendalStorage({store.operator!r}, writable))"


class AsyncStoreTests(ZarrSuite, AsyncOnlyStoreTests, StoreTests[AsyncOpendalStore, cpu.Buffer]):
    store_cls = AsyncOpendalStore

    @pytest.fixture
    def store_kwargs(self, service: Service) -> dict[str, Any]:
        self.service = service
        return {"operator": service.async_operator()}

    def test_store_repr(self, store: AsyncOpendalStore) -> None:
        expected = f"AsyncOpendalStore(AsyncOpendalStorage({store.operator!r}, writable))"
        assert repr(store) == expected


class MemoryStoreTests(InMemory):
    async def test_serializable_store(self, store: Any) -> None:
        pytest.skip(MEMORY_NOT_PICKLABLE)


class FtpStoreTests(OnFtp):
    """zarr's tests that store empty values through the store under test, skipped on FTP.

    Listing (what the ``test_list*`` ones check) is covered by the conformance
    base, whose backdoor stores the empty values.
    """

    @pytest.mark.parametrize("key", ["zarr.json", "c/0", "foo/c/0.0", "foo/0/0"])
    @pytest.mark.parametrize("data", [b"\x01\x02\x03\x04", b""])
    async def test_set(self, store: Any, key: str, data: bytes) -> None:
        if not data:
            pytest.skip(FTP_NO_EMPTY)
        await super().test_set(store, key, data)  # type: ignore[misc]

    async def test_list(self, store: Any) -> None:
        pytest.skip(FTP_NO_EMPTY)

    async def test_list_prefix(self, store: Any) -> None:
        pytest.skip(FTP_NO_EMPTY)

    async def test_list_empty_path(self, store: Any) -> None:
        pytest.skip(FTP_NO_EMPTY)


class TestFsStoreWithZarr(OnFs, SyncStoreTests):
    pass


class TestMemoryStoreWithZarr(MemoryStoreTests, SyncStoreTests):
    pass


class TestFtpStoreWithZarr(FtpStoreTests, SyncStoreTests):
    pass


class TestS3StoreWithZarr(OnS3, SyncStoreTests):
    pass


class TestFsAsyncStoreWithZarr(OnFs, AsyncStoreTests):
    pass


class TestMemoryAsyncStoreWithZarr(MemoryStoreTests, AsyncStoreTests):
    pass


class TestFtpAsyncStoreWithZarr(FtpStoreTests, AsyncStoreTests):
    pass


# -- state machines ----------------------------------------------------------------------

# Fixed, modest runs: every step is real I/O (files, an FTP server, opendal's runtime).
LOCAL = settings(settings(), max_examples=8, stateful_step_count=15)
REMOTE = settings(settings(), max_examples=5, stateful_step_count=12)


def non_empty_storage_machine(make: Any) -> Any:
    """The dict-model machine, drawing non-empty values (FTP cannot store empty ones)."""
    base = storage_state_machine(make)

    class NonEmptyValues(base):  # type: ignore[misc, valid-type]
        @rule(key=KEYS, value=st.binary(min_size=1, max_size=64))
        def set(self, key: str, value: bytes) -> None:
            super().set(key, value)

        @rule(key=KEYS, value=st.binary(min_size=1, max_size=8))
        def set_if_absent(self, key: str, value: bytes) -> None:
            super().set_if_absent(key, value)

    return NonEmptyValues


class NonEmptyZarrMachine(ZarrStoreStateMachine):
    """zarr's machine, drawing non-empty values (FTP cannot store empty ones)."""

    @rule(key=zarr_keys(), data=st.binary(min_size=1, max_size=100))
    def set(self, key: str, data: bytes) -> None:
        super().set(key, data)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_state_machine_on_fs(kind: str, tmp_path: Path) -> None:
    def make() -> Storage:
        service = fs_service(tmp_path)
        if kind == "sync":
            return OpendalStorage(service.operator())
        return AsyncToSync(AsyncOpendalStorage(service.async_operator()))

    run_state_machine_as_test(storage_state_machine(make), settings=LOCAL)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_state_machine_in_memory(kind: str) -> None:
    def make() -> Storage:
        service = memory_service()
        if kind == "sync":
            return OpendalStorage(service.operator())
        return AsyncToSync(AsyncOpendalStorage(service.async_operator()))

    run_state_machine_as_test(storage_state_machine(make), settings=LOCAL)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_state_machine_on_ftp(kind: str, ftp: FTPServer) -> None:
    def make() -> Storage:
        service = ftp.fresh()
        if kind == "sync":
            return OpendalStorage(service.operator())
        return AsyncToSync(AsyncOpendalStorage(service.async_operator()))

    run_state_machine_as_test(non_empty_storage_machine(make), settings=REMOTE)


def test_zarr_state_machine_on_fs(tmp_path: Path) -> None:
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        lambda: FilesStoreStateMachine(OpendalStore(fs_service(tmp_path).operator())),
        settings=LOCAL,
    )


def test_zarr_state_machine_in_memory() -> None:
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        lambda: ZarrStoreStateMachine(AsyncOpendalStore(memory_service().async_operator())),
        settings=LOCAL,
    )


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_zarr_state_machine_on_ftp(kind: str, ftp: FTPServer) -> None:
    def make() -> NonEmptyZarrMachine:
        service = ftp.fresh()
        if kind == "sync":
            return NonEmptyZarrMachine(OpendalStore(service.operator()))
        return NonEmptyZarrMachine(AsyncOpendalStore(service.async_operator()))

    run_state_machine_as_test(make, settings=REMOTE)  # type: ignore[no-untyped-call]


# zarr's hierarchy machine: groups and arrays made, resized, rewritten and deleted
# through zarr, checked against zarr's own MemoryStore after every step.


def _store(service: Service, kind: str) -> OpendalStore | AsyncOpendalStore:
    if kind == "sync":
        return OpendalStore(service.operator())
    return AsyncOpendalStore(service.async_operator())


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_zarr_hierarchy_state_machine_on_fs(kind: str, tmp_path: Path) -> None:
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        lambda: ZarrHierarchyStateMachine(_store(fs_service(tmp_path), kind)),
        settings=hierarchy_examples(),
    )


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_zarr_hierarchy_state_machine_in_memory(kind: str) -> None:
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        lambda: ZarrHierarchyStateMachine(_store(memory_service(), kind)),
        settings=hierarchy_examples(),
    )


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_zarr_hierarchy_state_machine_on_ftp(kind: str, ftp: FTPServer) -> None:
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        lambda: ZarrHierarchyStateMachine(_store(ftp.fresh(), kind)),
        settings=hierarchy_examples(),
    )


def test_zarr_hierarchy_state_machine_on_s3(s3: S3Server) -> None:
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        lambda: ZarrHierarchyStateMachine(_store(s3_service(s3), "sync")),
        settings=hierarchy_examples(),
    )

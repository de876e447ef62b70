"""OpenDAL stores in use: zarr and xarray round trips, stacked adapters, capabilities, errors.

Every service here is real: files, opendal's memory, a pyftpdlib FTP server
and moto's S3 server on 127.0.0.1. The failures are real too: a port nothing
listens on, a wrong FTP password, a service not compiled into the wheel.
"""

from __future__ import annotations

import asyncio
import io
import pickle
import socket
from pathlib import Path

import numpy as np
import opendal
import pytest
import xarray as xr
import zarr
from object_support import aws_env_fixture, s3_fixture  # noqa: F401
from opendal_support import (
    FTPServer,
    Service,
    any_service,
    fs_service,
    ftp_fixture,  # noqa: F401
    memory_service,
)

from zarrstore import (
    AsyncOpendalStore,
    AsyncToSync,
    OpendalStore,
    PerformanceMetrics,
    RangeRequest,
    ReadOnly,
    ReadOnlyError,
    StorageIOError,
    SuffixRequest,
    UnsupportedOperationError,
    UsageLog,
    ZarrStore,
)
from zarrstore.errors import InvalidByteRangeError, KeyNotFoundError
from zarrstore.opendal import AsyncOpendalStorage, OpendalStorage
from zarrstore.protocol import Storage


@pytest.fixture(params=["fs", "memory", "ftp", "s3"], name="service")
def service_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Service:
    return any_service(request, tmp_path)


def both_stores(service: Service) -> list[ZarrStore]:
    return [OpendalStore(service.operator()), AsyncOpendalStore(service.async_operator())]


# -- zarr and xarray ---------------------------------------------------------------------


def test_zarr_round_trip_with_sharding(service: Service) -> None:
    data = np.arange(48 * 48, dtype="i4").reshape(48, 48)
    for number, store in enumerate(both_stores(service)):
        name = f"a{number}"
        array = zarr.create_array(
            store,
            name=name,
            shape=data.shape,
            chunks=(8, 8),
            shards=(16, 16),
            dtype="i4",
            attributes={"units": "m"},
        )
        array[:] = data
        reopened = zarr.open_array(store.with_read_only(True), path=name)
        np.testing.assert_array_equal(reopened[:], data)
        np.testing.assert_array_equal(reopened[3:27, 11:45], data[3:27, 11:45])
        assert reopened.attrs["units"] == "m"
        assert service.backdoor.get(f"{name}/zarr.json") is not None


def test_xarray_round_trip(service: Service) -> None:
    ds = xr.Dataset(
        {"temp": (("time", "x"), np.random.default_rng(5).random((6, 4)).astype("f4"))},
        coords={"time": np.arange(6), "x": np.linspace(0, 1, 4)},
        attrs={"source": "opendal"},
    )
    writer, reader = both_stores(service)
    ds.to_zarr(writer, mode="w", consolidated=True, encoding={"temp": {"chunks": (2, 4)}})
    back = xr.open_zarr(reader.with_read_only(True), consolidated=True)
    xr.testing.assert_identical(back.load(), ds)


# -- adapters stack on both stores -------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_adapters_stack_on_opendal_stores(kind: str, ftp: FTPServer) -> None:
    service = ftp.fresh()
    base: ZarrStore = (
        OpendalStore(service.operator())
        if kind == "sync"
        else ZarrStore(AsyncToSync(AsyncOpendalStorage(service.async_operator())))
    )
    log = io.StringIO()
    metrics = PerformanceMetrics(UsageLog(base, log, prefix=lambda: ""))
    array = zarr.create_array(
        metrics, name="g/a", shape=(8, 8), chunks=(4, 4), dtype="u1", compressors=None, fill_value=0
    )
    metrics.reset()
    log.seek(0)
    log.truncate()
    array[:] = 7
    assert metrics.writes == 4 and metrics.bytes_written == 4 * 16
    np.testing.assert_array_equal(zarr.open_array(metrics, path="g/a", mode="r")[:], 7)
    assert service.backdoor.get("g/a/c/1/1") == bytes([7]) * 16
    lines = log.getvalue().splitlines()
    assert sum(t.calls for t in metrics.timings().values()) == len(lines)

    guarded = ReadOnly(metrics)
    assert zarr.open_array(guarded, path="g/a", mode="r")[0, 0] == 7
    with pytest.raises(ReadOnlyError):
        zarr.open_array(guarded, path="g/a", mode="r")[:] = 0
    assert service.backdoor.get("g/a/c/0/0") == bytes([7]) * 16


# -- construction and capabilities -------------------------------------------------------


def test_from_scheme_builds_the_operator(tmp_path: Path) -> None:
    store = OpendalStore.from_scheme("fs", root=tmp_path / "data", atomic_write_dir=tmp_path / "t")
    store.storage.set("k", b"v")
    assert (tmp_path / "data" / "k").read_bytes() == b"v"
    assert store == OpendalStore(
        opendal.Operator("fs", root=str(tmp_path / "data"), atomic_write_dir=str(tmp_path / "t"))
    )
    clone = pickle.loads(pickle.dumps(store))
    assert clone == store and clone.storage.get("k") == b"v"
    memory = AsyncOpendalStore.from_scheme("memory")
    assert asyncio.run(memory.storage.get("k")) is None
    assert memory != AsyncOpendalStore.from_scheme("memory")  # two memories, two stores


def test_capabilities_come_from_the_service(ftp: FTPServer, tmp_path: Path) -> None:
    ftp_storage = OpendalStorage(ftp.fresh().operator())
    assert ftp_storage.supports_writes and ftp_storage.supports_listing
    assert not ftp_storage.supports_empty_values
    assert OpendalStorage(fs_service(tmp_path).operator()).supports_empty_values

    # An HTTP service can read, but neither write nor list: the store says so.
    http = OpendalStore.from_scheme("http", endpoint="http://127.0.0.1:9")
    assert not http.supports_writes and not http.supports_listing
    assert not http.supports_deletes
    with pytest.raises(ReadOnlyError, match="cannot store values"):
        http.storage.set("k", b"v")
    with pytest.raises(UnsupportedOperationError, match="cannot list"):
        list(http.storage.list())


def test_ftp_refuses_empty_values(ftp: FTPServer) -> None:
    service = ftp.fresh()
    for storage in (
        OpendalStorage(service.operator()),
        AsyncToSync(AsyncOpendalStorage(service.async_operator())),
    ):
        with pytest.raises(UnsupportedOperationError, match="empty value"):
            storage.set("e", b"")
        assert storage.get("e") is None
    service.backdoor.put("made-elsewhere", b"")
    assert OpendalStorage(service.operator()).get("made-elsewhere") == b""


def test_service_not_in_the_wheel() -> None:
    with pytest.raises(UnsupportedOperationError, match="sftp.*available:.*ftp"):
        OpendalStore.from_scheme("sftp", endpoint="ssh://127.0.0.1:22")
    with pytest.raises(ValueError, match="invalid options"):
        OpendalStore.from_scheme("ftp", endpoint="gopher://127.0.0.1:21")


# -- bad input and failing services ------------------------------------------------------


def test_missing_keys_and_bad_ranges(service: Service) -> None:
    service.backdoor.put("v", b"0123456789")
    for storage in (
        OpendalStorage(service.operator()),
        AsyncToSync(AsyncOpendalStorage(service.async_operator())),
    ):
        assert storage.get("missing") is None
        assert storage.get("no/such/dir/key", SuffixRequest(3)) is None
        assert storage.size("missing") is None
        assert storage.get("v", SuffixRequest(4)) == b"6789"
        assert storage.get("v", RangeRequest(8, 100)) == b"89"
        assert storage.get("v", RangeRequest(40, 50)) == b""
        assert list(storage.list_prefix("no/such/")) == []
    with pytest.raises(InvalidByteRangeError):
        RangeRequest(5, 2)
    with pytest.raises(KeyNotFoundError):
        asyncio.run(AsyncOpendalStore(service.async_operator()).getsize("missing"))


def test_a_directory_is_not_a_key(service: Service) -> None:
    service.backdoor.put("group/array/zarr.json", b"{}")
    storage = OpendalStorage(service.operator())
    assert storage.get("group") is None and storage.size("group/array") is None
    assert storage.get("group", RangeRequest(0, 2)) is None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_ftp_endpoint_is_a_clear_error() -> None:
    endpoint = f"ftp://127.0.0.1:{_free_port()}"  # nothing listens there
    sync = OpendalStore.from_scheme("ftp", endpoint=endpoint, user="u", password="p")
    with pytest.raises(StorageIOError, match="Connection refused"):
        sync.storage.get("k")
    with pytest.raises(StorageIOError, match="Connection refused"):
        sync.storage.set("k", b"v")
    unreachable = AsyncOpendalStore.from_scheme("ftp", endpoint=endpoint, user="u", password="p")
    with pytest.raises(StorageIOError, match="Connection refused"):
        asyncio.run(unreachable.storage.list())


def test_wrong_ftp_password_is_a_clear_error(ftp: FTPServer) -> None:
    options = {**ftp.fresh().options, "password": "not-the-password"}
    store = OpendalStore.from_scheme("ftp", **options)
    with pytest.raises(StorageIOError, match="read 'k'.*530") as raised:
        store.storage.get("k")
    assert isinstance(raised.value.__cause__, Exception)
    assert "not-the-password" not in str(raised.value)
    with pytest.raises(StorageIOError, match="530"):
        asyncio.run(AsyncOpendalStore.from_scheme("ftp", **options).storage.get("k"))


def test_erasing_prunes_empty_directories(ftp: FTPServer, tmp_path: Path) -> None:
    for service in (ftp.fresh(), fs_service(tmp_path), memory_service()):
        storage = OpendalStorage(service.operator())
        storage.set("g/a/c/0", b"1")
        storage.set("g/b", b"2")
        storage.erase("g/a/c/0")
        assert storage.list_dir("g/").prefixes == ()
        storage.erase_prefix("g/")
        assert storage.list_dir("").prefixes == ()


def test_ftp_ranged_reads_leave_pooled_connections_usable(ftp: FTPServer) -> None:
    """opendal's FTP pool breaks after a partial transfer; the store reads ranges to the end."""
    service = ftp.fresh()
    payload = bytes(range(256)) * 400
    service.backdoor.put("shard", payload)
    storage = OpendalStorage(service.operator())
    for start in range(0, 60_000, 1_500):
        assert (
            storage.get("shard", RangeRequest(start, start + 100)) == payload[start : start + 100]
        )
        assert storage.size("shard") == len(payload)


@pytest.mark.parametrize("kind", ["fs", "ftp"])
def test_file_services_refuse_a_key_beside_keys_under_it(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """``g/x`` beside ``g/x/zarr.json`` would be a file and a directory: a clear error."""
    service = fs_service(tmp_path) if kind == "fs" else request.getfixturevalue("ftp").fresh()
    service.backdoor.put("g/x/zarr.json", b"{}")
    service.backdoor.put("h/x", b"1")
    storages = [
        OpendalStorage(service.operator()),
        AsyncToSync(AsyncOpendalStorage(service.async_operator())),
    ]
    for storage in storages:
        with pytest.raises(StorageIOError, match="'g/x'"):
            storage.set("g/x", b"1")
        with pytest.raises(StorageIOError, match="'h/x/y'"):
            storage.set("h/x/y", b"1")
        assert storage.get("g/x") is None and storage.get("h/x/y") is None
        assert storage.get("g/x/zarr.json") == b"{}" and storage.get("h/x") == b"1"
        if kind == "fs":
            assert list(storage.list_prefix("")) == ["g/x/zarr.json", "h/x"]
    if kind == "ftp":  # opendal 0.47 leaves the failed write's temporary file at the root
        strays = {k for k in OpendalStorage(service.operator()).list_prefix("") if "/" not in k}
        assert all(k.startswith(("x.", "y.")) for k in strays), strays


@pytest.fixture(params=["memory", "s3"], name="flat_service")
def flat_service_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Service:
    return any_service(request, tmp_path)


def test_flat_services_hold_a_key_beside_keys_under_it(flat_service: Service) -> None:
    """memory and S3 hold ``g/x`` and ``g/x/zarr.json`` side by side: one child each."""
    for storage in (
        OpendalStorage(flat_service.operator()),
        AsyncToSync(AsyncOpendalStorage(flat_service.async_operator())),
    ):
        storage.set("g/x", b"1")
        storage.set("g/x/zarr.json", b"{}")
        assert storage.list_dir("g/").keys == ("g/x",)
        assert storage.list_dir("g/").prefixes == ("g/x/",)
        assert list(storage.list_prefix("g/")) == ["g/x", "g/x/zarr.json"]
        storage.erase_prefix("g/")


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_concurrent_writes_and_erases_in_one_directory(kind: str, ftp: FTPServer) -> None:
    """An erase that empties ``d/`` never prunes it under this store's own write into it.

    On FTP a write whose directory vanished would fail and leave opendal's
    temporary file behind as a stray key at the root.
    """
    service = ftp.fresh()
    if kind == "sync":
        storage: Storage = OpendalStorage(service.operator())
    else:
        storage = AsyncToSync(AsyncOpendalStorage(service.async_operator()))
    for round_ in range(12):
        storage.set(f"d/{round_}/old", b"o")
        store = ZarrStore(storage)
        asyncio.run(_erase_and_write(store, f"d/{round_}/old", f"d/{round_}/new"))
        assert list(storage.list_prefix(f"d/{round_}/")) == [f"d/{round_}/new"]
    assert storage.list_dir("").keys == ()


async def _erase_and_write(store: ZarrStore, old: str, new: str) -> None:
    buffer = zarr.core.buffer.default_buffer_prototype().buffer.from_bytes(b"n")
    await asyncio.gather(store.delete(old), store.set(new, buffer))


# -- fork ------------------------------------------------------------------------------

_FORKS = r"""
import multiprocessing, sys, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded, use of fork()"
from zarrstore.errors import ForkedProcessError
from zarrstore.opendal import AsyncOpendalStorage, OpendalStorage
from zarrstore import AsyncToSync


def use(storages, out):
    results = []
    for storage in storages:
        try:
            storage.set("k", b"child")
            results.append(storage.get("k").decode())
        except ForkedProcessError as exc:
            results.append("refused: " + str(exc))
    out.put(results)


def in_child(storages):
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=use, args=(storages, out))
    child.start()
    child.join(20)
    if child.is_alive():
        child.kill()
        return ["hung"]
    return out.get(timeout=5)


root = sys.argv[1]
storages = [AsyncToSync(AsyncOpendalStorage.from_scheme("fs", root=root + "/async"))]
print(in_child(storages))  # an async operator, no request yet: the child has its own runtime
storages[0].set("k", b"parent")
print(in_child(storages))  # after a request: refused at once
storages.append(OpendalStorage.from_scheme("fs", root=root + "/blocking"))
print(in_child(storages))  # a blocking operator: refused too
print(in_child([OpendalStorage.from_scheme("fs", root=root + "/other")]))  # ... whichever
storages[1].set("k", b"parent")
print(storages[0].get("k").decode(), storages[1].get("k").decode())  # the parent goes on
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="fork exists only on POSIX")
def test_a_forked_child_refuses_opendal_after_its_parents_first_request(tmp_path: Path) -> None:
    """OpenDAL's runtime does not survive fork: a clear error where a request would hang.

    In a fresh process, so that nothing of this test session started OpenDAL's
    runtime first: a child forked before the parent's first request works;
    after it, or once a blocking operator exists (which starts the runtime:
    requests in the child would wait forever, on any operator), the child gets
    ``ForkedProcessError`` naming 'spawn'.
    """
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _FORKS, str(tmp_path)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    before, after, blocking, other, parent = done.stdout.splitlines()
    assert before == "['child']"
    assert after.count("refused: ") == 1 and "spawn" in after, after
    assert blocking.count("refused: ") == 2 and "hung" not in blocking, blocking
    assert other.count("refused: ") == 1, other
    assert parent == "parent parent"

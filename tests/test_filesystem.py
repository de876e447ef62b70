from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis.stateful import run_state_machine_as_test
from hypothesis_budget import fewer_examples
from zarr.core.buffer import Buffer, cpu
from zarr.testing.stateful import ZarrStoreStateMachine
from zarr.testing.store import StoreTests

from zarrstore import FilesystemStorage, FilesystemStore, InvalidKeyError, StorageIOError
from zarrstore.filesystem import TEMP_MARK, direct_io_supported
from zarrstore.testing import StoreConformance, storage_state_machine


class FilesystemBackdoor:
    def raw_get(self, storage: FilesystemStorage, key: str) -> bytes | None:
        path = storage.root / key
        return path.read_bytes() if path.is_file() else None

    def raw_set(self, storage: FilesystemStorage, key: str, value: bytes) -> None:
        path = storage.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(value)


class TestFilesystemConformance(FilesystemBackdoor, StoreConformance):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> FilesystemStorage:
        return FilesystemStorage(tmp_path / "store")


class TestDirectIOConformance(FilesystemBackdoor, StoreConformance):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> FilesystemStorage:
        return FilesystemStorage(tmp_path / "store", direct_io=True)


class TestFilesystemStoreWithZarr(StoreTests[FilesystemStore, cpu.Buffer]):
    store_cls = FilesystemStore
    buffer_cls = cpu.Buffer

    async def set(self, store: FilesystemStore, key: str, value: Buffer) -> None:
        path = store.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(value.to_bytes())

    async def get(self, store: FilesystemStore, key: str) -> Buffer:
        return self.buffer_cls.from_bytes((store.root / key).read_bytes())

    @pytest.fixture
    def store_kwargs(self, tmp_path: Path) -> dict[str, Any]:
        return {"root": tmp_path / "zarr"}

    def test_store_repr(self, store: FilesystemStore) -> None:
        assert repr(store) == f"FilesystemStore(FilesystemStorage({str(store.root)!r}, writable))"

    def test_store_supports_writes(self, store: FilesystemStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: FilesystemStore) -> None:
        assert store.supports_listing


def test_state_machine_against_dict_model(tmp_path: Path) -> None:
    counter = iter(range(10**6))
    run_state_machine_as_test(
        storage_state_machine(lambda: FilesystemStorage(tmp_path / f"s{next(counter)}")),
        settings=fewer_examples(),
    )


def test_zarr_store_state_machine(tmp_path: Path) -> None:
    counter = iter(range(10**6))
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        lambda: ZarrStoreStateMachine(FilesystemStore(tmp_path / f"z{next(counter)}")),
        settings=fewer_examples(8),
    )


# -- no escape from the root -------------------------------------------------------


@pytest.fixture
def fs(tmp_path: Path) -> FilesystemStorage:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_bytes(b"secret")
    return FilesystemStorage(tmp_path / "root")


@pytest.mark.parametrize("key", ["../outside/secret", "a/../../outside/secret", ".."])
def test_dotdot_escape_is_refused(fs: FilesystemStorage, key: str) -> None:
    with pytest.raises(InvalidKeyError):
        fs.get(key)
    with pytest.raises(InvalidKeyError):
        fs.set(key, b"x")


def test_absolute_key_is_refused(fs: FilesystemStorage, tmp_path: Path) -> None:
    target = str(tmp_path / "outside" / "secret")
    with pytest.raises(InvalidKeyError):
        fs.get(target)
    with pytest.raises(InvalidKeyError):
        fs.set(target, b"x")
    assert (tmp_path / "outside" / "secret").read_bytes() == b"secret"


def test_symlinked_file_pointing_out_is_refused(fs: FilesystemStorage, tmp_path: Path) -> None:
    fs.root.mkdir(parents=True)
    os.symlink(tmp_path / "outside" / "secret", fs.root / "link")
    with pytest.raises(InvalidKeyError, match="outside the store root"):
        fs.get("link")
    with pytest.raises(InvalidKeyError, match="outside the store root"):
        fs.set("link", b"overwritten")
    assert (tmp_path / "outside" / "secret").read_bytes() == b"secret"


def test_symlinked_directory_pointing_out_is_refused(
    fs: FilesystemStorage, tmp_path: Path
) -> None:
    fs.root.mkdir(parents=True)
    os.symlink(tmp_path / "outside", fs.root / "dir")
    with pytest.raises(InvalidKeyError, match="outside the store root"):
        fs.get("dir/secret")
    with pytest.raises(InvalidKeyError, match="outside the store root"):
        fs.set("dir/new", b"x")
    assert not (tmp_path / "outside" / "new").exists()


def test_symlink_inside_the_root_is_allowed(fs: FilesystemStorage) -> None:
    fs.set("real/value", b"v")
    os.symlink(fs.root / "real", fs.root / "alias")
    assert fs.get("alias/value") == b"v"


def test_backslash_and_nul_are_refused(fs: FilesystemStorage) -> None:
    for key in ["..\\outside\\secret", "a\x00b"]:
        with pytest.raises(InvalidKeyError):
            fs.set(key, b"x")


def test_temp_names_are_reserved_and_hidden(fs: FilesystemStorage) -> None:
    leftover = f"{TEMP_MARK}{'0' * 32}"
    with pytest.raises(InvalidKeyError):
        fs.set(f"a/{leftover}", b"1")
    fs.set(f"a/{TEMP_MARK}x", b"an ordinary key")
    fs.set("a/b", b"1")
    (fs.root / "a" / leftover).write_bytes(b"torn")
    assert list(fs.list()) == ["a/.zarrstore-tmp-x", "a/b"]


def test_key_that_is_also_a_directory_gives_a_clear_error(fs: FilesystemStorage) -> None:
    fs.set("a/b", b"1")
    with pytest.raises(StorageIOError, match="already a directory"):
        fs.set("a", b"2")
    fs.set("x", b"1")
    with pytest.raises(StorageIOError, match="parent of it is already a key"):
        fs.set("x/y", b"2")
    assert fs.get("a/b") == b"1" and fs.get("x") == b"1"


def test_erase_prunes_empty_directories(fs: FilesystemStorage) -> None:
    fs.set("a/b/c/d", b"1")
    fs.set("a/e", b"1")
    fs.erase("a/b/c/d")
    assert not (fs.root / "a" / "b").exists()
    assert fs.list_dir("").prefixes == ("a/",)


def test_durable_writes(tmp_path: Path) -> None:
    fs = FilesystemStorage(tmp_path / "d", durable=True)
    fs.set("x/y", b"durable")
    assert fs.get("x/y") == b"durable"


def test_direct_io_falls_back_cleanly(tmp_path: Path) -> None:
    fs = FilesystemStorage(tmp_path / "d", direct_io=True)
    assert fs.direct_io == direct_io_supported()
    payload = os.urandom(10_000)
    fs.set("big", payload)
    assert fs.get("big") == payload
    from zarrstore import RangeRequest, SuffixRequest

    assert fs.get("big", RangeRequest(4095, 4099)) == payload[4095:4099]
    assert fs.get("big", SuffixRequest(5000)) == payload[-5000:]


# -- a write killed midway ---------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys
    from zarrstore import FilesystemStorage
    storage = FilesystemStorage(sys.argv[1])
    value = bytes([int(sys.argv[2])]) * (64 << 20)
    print("ready", flush=True)
    while True:
        storage.set("big/value", value)
    """
)


@pytest.mark.slow
def test_killed_write_leaves_old_or_new_value(tmp_path: Path) -> None:
    root = tmp_path / "kill"
    old = bytes([1]) * (64 << 20)
    FilesystemStorage(root).set("big/value", old)
    for trial in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(root), "2"], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.05 + 0.07 * trial)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        value = FilesystemStorage(root).get("big/value")
        assert value is not None and len(value) == 64 << 20
        assert value in (old, bytes([2]) * (64 << 20)), "torn value"
        assert list(FilesystemStorage(root).list()) == ["big/value"]

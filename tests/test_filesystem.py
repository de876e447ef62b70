from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis.stateful import run_state_machine_as_test
from hypothesis_budget import fewer_examples, hierarchy_examples
from zarr.core.buffer import Buffer, cpu
from zarr.testing.stateful import ZarrHierarchyStateMachine
from zarr.testing.store import StoreTests

from zarrstore import (
    DirListing,
    FilesystemStorage,
    FilesystemStore,
    InvalidKeyError,
    RangeRequest,
    StorageIOError,
)
from zarrstore.filesystem import TEMP_MARK, direct_io_supported
from zarrstore.testing import (
    FILES_CANNOT_BE_DIRECTORIES,
    FilesStoreStateMachine,
    StoreConformance,
    storage_state_machine,
)


class FilesystemBackdoor:
    def why_not_a_key_and_keys_under_it(self, storage: FilesystemStorage) -> str | None:
        return FILES_CANNOT_BE_DIRECTORIES

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
        lambda: FilesStoreStateMachine(FilesystemStore(tmp_path / f"z{next(counter)}")),
        settings=fewer_examples(8),
    )


def test_zarr_hierarchy_state_machine(tmp_path: Path) -> None:
    counter = iter(range(10**6))
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        lambda: ZarrHierarchyStateMachine(FilesystemStore(tmp_path / f"h{next(counter)}")),
        settings=hierarchy_examples(),
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
    with pytest.raises(InvalidKeyError, match="symlink"):
        fs.get("link")
    with pytest.raises(InvalidKeyError, match="symlink"):
        fs.set("link", b"overwritten")
    assert (tmp_path / "outside" / "secret").read_bytes() == b"secret"


def test_symlinked_directory_pointing_out_is_refused(
    fs: FilesystemStorage, tmp_path: Path
) -> None:
    fs.root.mkdir(parents=True)
    os.symlink(tmp_path / "outside", fs.root / "dir")
    with pytest.raises(InvalidKeyError, match="symlink"):
        fs.get("dir/secret")
    with pytest.raises(InvalidKeyError, match="symlink"):
        fs.set("dir/new", b"x")
    assert not (tmp_path / "outside" / "new").exists()


def test_symlinks_are_never_followed_even_inside_the_root(fs: FilesystemStorage) -> None:
    # Following a link, even one that points inside, needs a check-then-open that a
    # concurrent swap can race; the store walks with O_NOFOLLOW instead.
    fs.set("real/value", b"v")
    os.symlink(fs.root / "real", fs.root / "alias")
    os.symlink(fs.root / "real" / "value", fs.root / "real" / "link")
    for key in ["alias/value", "real/link"]:
        with pytest.raises(InvalidKeyError, match="symlink"):
            fs.get(key)
        with pytest.raises(InvalidKeyError, match="symlink"):
            fs.size(key)
        with pytest.raises(InvalidKeyError, match="symlink"):
            fs.set(key, b"x")
        with pytest.raises(InvalidKeyError, match="symlink"):
            fs.erase(key)
    with pytest.raises(InvalidKeyError, match="symlink"):
        list(fs.list_prefix("alias/"))
    assert list(fs.list()) == ["real/value"]  # links are not keys
    assert fs.list_dir("") == DirListing(prefixes=("real/",))
    fs.erase_prefix("")
    assert os.path.islink(fs.root / "alias") and os.path.islink(fs.root / "real" / "link")


# -- no escape under a race: a directory swapped for a symlink to the outside ----------

_OUTSIDE = b"O" * 1000  # a value no operation on the store ever writes, of a size none sums to


def _swap_dir_for_symlink(
    directory: Path, outside: Path, swaps: int, done: threading.Event
) -> None:
    """Swap ``directory`` for a symlink to ``outside`` and back, ``swaps`` times."""
    aside = directory.with_name(directory.name + "-aside")
    try:
        for _ in range(swaps):
            try:
                os.rename(directory, aside)
            except FileNotFoundError:  # the store pruned it
                aside.mkdir()
            while True:
                try:
                    os.symlink(outside, directory)
                    break
                except FileExistsError:  # a writer re-made the directory meanwhile
                    shutil.rmtree(directory, ignore_errors=True)
            os.unlink(directory)
            while True:
                try:
                    os.rename(aside, directory)
                    break
                except OSError:
                    shutil.rmtree(directory, ignore_errors=True)
    finally:
        done.set()


def test_a_directory_swapped_for_a_symlink_never_leads_outside(tmp_path: Path) -> None:
    """Every operation races a thread that swaps ``d`` for a link to ``outside``.

    Before the store walked with ``O_NOFOLLOW`` from a descriptor of its root, such
    a swap made 89 reads return a file outside and 1,396 writes land outside in 60 s.
    """
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(_OUTSIDE)
    (outside / "only-outside").write_bytes(_OUTSIDE)
    store = FilesystemStorage(tmp_path / "root")
    store.set("d/secret", b"inside")
    operations: dict[str, Callable[[], object]] = {
        "get": lambda: store.get("d/secret"),
        "get range": lambda: store.get("d/secret", RangeRequest(0, 3)),
        "get_many": lambda: store.get_many([("d/secret", None), ("d/only-outside", None)]),
        "size": lambda: store.size("d/secret"),
        "exists": lambda: store.exists("d/only-outside"),
        "set": lambda: store.set("d/secret", b"inside"),
        "set new": lambda: store.set("d/new/deeper", b"written"),
        "set_if_absent": lambda: store.set_if_absent("d/other", b"written"),
        "list_prefix": lambda: list(store.list_prefix("d/")),
        "list": lambda: list(store.list()),
        "list_dir": lambda: store.list_dir("d/"),
        "size_prefix": lambda: store.size_prefix("d/"),
        "erase": lambda: store.erase("d/only-outside"),
        "erase_many": lambda: store.erase_many(["d/secret", "d/only-outside"]),
        "erase_prefix": lambda: store.erase_prefix("d/"),
    }
    done = threading.Event()
    swapper = threading.Thread(
        target=_swap_dir_for_symlink, args=(store.root / "d", outside, 400, done)
    )
    escaped: list[tuple[str, object]] = []
    runs = 0
    swapper.start()
    try:
        while not done.is_set():
            for name, operation in operations.items():
                try:
                    got = operation()
                except InvalidKeyError as exc:  # met the link: refused, as it must be
                    assert "symlink" in str(exc)
                    continue
                except StorageIOError as exc:  # a write that gave up in the swap storm
                    assert "keeps being removed" in str(exc)
                    continue
                runs += 1
                text = repr(got)
                if "only-outside" in text or "OOO" in text or (name == "exists" and got) or (
                    isinstance(got, int) and not isinstance(got, bool) and got >= 1000
                ):
                    escaped.append((name, got))
    finally:
        swapper.join()
    assert runs > 0
    assert not escaped, escaped[:5]
    assert sorted(p.name for p in outside.iterdir()) == ["only-outside", "secret"]
    assert (outside / "secret").read_bytes() == _OUTSIDE
    assert (outside / "only-outside").read_bytes() == _OUTSIDE


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


def test_set_if_absent_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem without hard links (FAT, exFAT, many FUSE mounts): still one winner.

    ``set_if_absent`` links a temporary file to the key; where ``link`` is
    refused (``EPERM`` on vfat, ``ENOTSUP`` elsewhere; faked here, no such
    mount being available) it raised a bare ``PermissionError``. It now
    creates the key exclusively, as zarr's ``LocalStore`` does.
    """
    import errno

    def no_links(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    store = FilesystemStorage(tmp_path / "s")
    monkeypatch.setattr(os, "link", no_links)
    assert store.set_if_absent("a/zarr.json", b"first") is True
    assert store.set_if_absent("a/zarr.json", b"second") is False
    assert store.get("a/zarr.json") == b"first"
    assert sorted(os.listdir(tmp_path / "s" / "a")) == ["zarr.json"]  # no temporary file left

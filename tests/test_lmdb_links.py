"""One LMDB data file is never opened under two lock files (``zarrstore.lmdb_files``).

LMDB coordinates processes through the ``lock.mdb`` beside ``data.mdb``. A
data file reached from two directories — ``DIR_A/data.mdb`` a symlink or a
hard link to ``DIR_B/data.mdb`` — used to be opened under both directories'
lock files: two writers inside a write transaction at once, one's commit
lost. The exclusion tests run their writers and readers in real (spawned)
processes, one per path, through ``LMDBStore`` and through ``vs.Repository``.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import link_workers as workers
import lmdb
import numpy as np
import pytest
import zarr

import versionstore as vs
from zarrstore import LMDBStore, StorageIOError, lmdb_environment
from zarrstore.lmdb_environment import EnvironmentHandle

WAIT = 120
APIS = ["store", "repository"]


def _make(api: str, path: Path) -> None:
    """An environment at ``path``, made through ``api``."""
    if api == "store":
        LMDBStore(path).close()
    else:
        vs.Repository.create(vs.lmdb_storage(path)).close()


def _moved_behind_a_symlink(api: str, tmp_path: Path) -> tuple[Path, Path]:
    """An environment whose ``data.mdb`` was moved to another directory and linked back.

    What a user does to put the data file on another disk; ``(link_dir, target_dir)``.
    """
    link_dir, target_dir = tmp_path / "repo", tmp_path / "other-disk" / "repo"
    _make(api, link_dir)
    target_dir.mkdir(parents=True)
    shutil.move(link_dir / "data.mdb", target_dir / "data.mdb")
    (link_dir / "lock.mdb").unlink()
    (link_dir / "data.mdb").symlink_to(target_dir / "data.mdb")
    return link_dir, target_dir


def _main_keys(path: Path) -> set[bytes]:
    env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=8)
    try:
        with env.begin() as txn:
            return {bytes(key) for key, _ in txn.cursor()}
    finally:
        env.close()


def _two_writers(api: str, holder_path: Path, other_path: Path) -> list[tuple[str, Any]]:
    """One spawned process holds a write transaction through ``holder_path`` while another
    begins one through ``other_path``; each one's report, the holder's first."""
    context = multiprocessing.get_context("spawn")
    writers = context.Value("i", 0)
    inside, tried = context.Event(), context.Event()
    queues = context.Queue(), context.Queue()
    holder = context.Process(target=workers.hold_write, args=(
        api, str(holder_path), b"test/holder", writers, inside, tried, queues[0]))
    other = context.Process(target=workers.try_write, args=(
        api, str(other_path), b"test/other", writers, tried, queues[1]))
    holder.start()
    try:
        assert inside.wait(WAIT)
        other.start()
        reports = [queues[0].get(timeout=WAIT), queues[1].get(timeout=WAIT)]
    finally:
        tried.set()
        for process in (holder, other):
            if process.pid is not None:
                process.join(WAIT)
    assert holder.exitcode == 0 and other.exitcode == 0
    return reports


# -- the reproduction: writers through two paths to one file -----------------------------------


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("holder_opens", ["target", "link"])
def test_writers_through_a_symlinked_data_file_exclude_each_other(
        tmp_path: Path, api: str, holder_opens: str) -> None:
    link_dir, target_dir = _moved_behind_a_symlink(api, tmp_path)
    paths = (target_dir, link_dir) if holder_opens == "target" else (link_dir, target_dir)
    reports = _two_writers(api, *paths)
    # Neither began while the other's write transaction was open (both under one lock
    # file), and neither commit overwrote the other's.
    assert reports == [("wrote", False), ("wrote", False)], reports
    assert {b"test/holder", b"test/other"} <= _main_keys(target_dir)
    assert not (link_dir / "lock.mdb").exists()


@pytest.mark.parametrize("api", APIS)
def test_a_hard_linked_data_file_is_refused_in_every_process(tmp_path: Path, api: str) -> None:
    original, linked = tmp_path / "repo", tmp_path / "backup"
    _make(api, original)
    linked.mkdir()
    os.link(original / "data.mdb", linked / "data.mdb")  # what cp -al makes
    reports = _two_writers(api, original, linked)
    assert [status for status, _ in reports] == ["refused", "refused"], reports
    expected = "BackendError" if api == "repository" else "StorageIOError"
    for (_, message), path in zip(reports, (original, linked), strict=True):
        assert message.startswith(f"{expected}: {path / 'data.mdb'} has 2 hard links"), message
        assert "its own copy (cp, or LMDB's mdb_copy)" in message
    # Without LMDB's lock file (one process, or read-only media) there is nothing to
    # coordinate, and the file opens.
    with LMDBStore(linked, read_only=True, lock=False) as store:
        assert store.path == str(linked)
        assert store.storage.get("test/absent") is None
    # Once the link is a copy, each directory is an environment of its own again (two
    # files: their writers need not exclude each other).
    (linked / "data.mdb").unlink()
    shutil.copy(original / "data.mdb", linked / "data.mdb")
    assert [status for status, _ in _two_writers(api, original, linked)] == ["wrote", "wrote"]
    assert b"test/holder" in _main_keys(original) - _main_keys(linked)
    assert b"test/other" in _main_keys(linked) - _main_keys(original)


@pytest.mark.parametrize("api", APIS)
def test_a_reader_through_the_link_is_seen_by_writers_of_the_target(
        tmp_path: Path, api: str) -> None:
    """A read-only open through the link takes its reader slot in the target's lock file.

    A reader a writer cannot see is one whose pages the writer reuses.
    """
    link_dir, target_dir = _moved_behind_a_symlink(api, tmp_path)
    kept, handle = workers.open_handle(api, str(target_dir))
    context = multiprocessing.get_context("spawn")
    inside, release, queue = context.Event(), context.Event(), context.Queue()
    reader = context.Process(target=workers.hold_read,
                             args=(api, str(link_dir), inside, release, queue))
    reader.start()
    try:
        assert inside.wait(WAIT)
        table = handle.env.readers()
        release.set()
        assert queue.get(timeout=WAIT) == ("read", None)
    finally:
        release.set()
        reader.join(WAIT)
        handle.close()
        del kept
    assert f" {reader.pid} " in table, table


# -- in one process ---------------------------------------------------------------------------


def test_handles_through_the_link_and_the_target_share_one_environment(tmp_path: Path) -> None:
    link_dir, target_dir = _moved_behind_a_symlink("store", tmp_path)
    through_link = EnvironmentHandle(link_dir)
    through_target = EnvironmentHandle(target_dir)
    try:
        assert through_link.path == through_target.path == str(target_dir)
        assert through_link.env is through_target.env
        assert through_link.users == 2
    finally:
        through_link.close()
        through_target.close()


def test_a_store_with_its_data_file_on_another_disk_works_end_to_end(tmp_path: Path) -> None:
    link_dir, target_dir = _moved_behind_a_symlink("store", tmp_path)
    with LMDBStore(link_dir) as store:
        array = zarr.create_array(store, name="a", shape=(6,), chunks=(2,), dtype="i4")
        array[:] = np.arange(6)
    with LMDBStore(link_dir) as through_link, LMDBStore(target_dir) as through_target:
        assert through_link.path == through_target.path == str(target_dir)
        zarr.open_array(through_target, path="a", mode="r+")[:2] = [10, 11]
        assert zarr.open_array(through_link, path="a", mode="r")[:].tolist() == [
            10, 11, 2, 3, 4, 5]
    with LMDBStore(link_dir, read_only=True) as store:
        assert zarr.open_array(store, path="a", mode="r")[:].tolist() == [10, 11, 2, 3, 4, 5]
    assert not (link_dir / "lock.mdb").exists()  # only the lock beside the data file is used
    assert (target_dir / "lock.mdb").is_file()


def test_a_repository_with_its_data_file_on_another_disk_works_end_to_end(
        tmp_path: Path) -> None:
    link_dir, target_dir = _moved_behind_a_symlink("repository", tmp_path)
    with vs.Repository.open(vs.lmdb_storage(link_dir)) as repo:
        session = repo.writable_session("main")
        session.store.storage.set("through/link", b"one")
        session.commit("through the link")
    with vs.Repository.open(vs.lmdb_storage(target_dir)) as repo, \
            vs.Repository.open(vs.lmdb_storage(link_dir)) as same:
        assert isinstance(same.backend, vs.backend.LMDBBackend)
        assert same.backend.path == str(target_dir)
        session = repo.writable_session("main")
        session.store.storage.set("through/target", b"two")
        session.commit("through the target")
        read = same.readonly_session("main").store.storage
        assert (read.get("through/link"), read.get("through/target")) == (b"one", b"two")
    with vs.Repository.open(vs.lmdb_storage(link_dir, read_only=True)) as repo:
        messages = [info.message for info in repo.ancestry(branch="main")]
        assert messages[:2] == ["through the target", "through the link"]
    assert not (link_dir / "lock.mdb").exists()
    assert (target_dir / "lock.mdb").is_file()


@pytest.mark.parametrize("api", APIS)
def test_a_process_using_the_lock_file_beside_the_link_is_named(tmp_path: Path, api: str) -> None:
    """A process that opened the link's directory under its own lock.mdb (an older release,
    plain LMDB) keeps this one from opening the file under the target's."""
    link_dir, target_dir = _moved_behind_a_symlink(api, tmp_path)
    context = multiprocessing.get_context("spawn")
    inside, release = context.Event(), context.Event()
    other = context.Process(target=workers.hold_open_with_lmdb,
                            args=(str(link_dir), inside, release))
    other.start()
    try:
        assert inside.wait(WAIT)
        expected = StorageIOError if api == "store" else vs.BackendError
        with pytest.raises(expected, match=(
                rf"process {other.pid} has {link_dir}/data\.mdb open under {link_dir}/lock\.mdb"
                r" \(an older release, or another LMDB program\)")):
            workers.open_handle(api, str(link_dir))
    finally:
        release.set()
        other.join(WAIT)
    kept, handle = workers.open_handle(api, str(link_dir))  # once it is closed, it opens
    assert handle.path == str(target_dir)
    handle.close()
    del kept


def test_a_link_made_while_the_environment_opens_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real, backup = tmp_path / "real", tmp_path / "backup"
    LMDBStore(real).close()
    open_env = lmdb_environment._Shared._open_env

    def linking_first(shared: Any, map_size: int, create: bool, reading: bool
                      ) -> lmdb.Environment:
        # The files were looked at a moment ago; now someone runs cp -al.
        if not backup.exists():
            backup.mkdir()
            os.link(real / "data.mdb", backup / "data.mdb")
        return open_env(shared, map_size, create, reading)

    monkeypatch.setattr(lmdb_environment._Shared, "_open_env", linking_first)
    with pytest.raises(StorageIOError, match=r"real/data\.mdb has 2 hard links"):
        LMDBStore(real)
    assert str(real) not in lmdb_environment._registry


# -- what is refused, and the message that says so -----------------------------------------


def _hard_linked_data(real: Path, bad: Path) -> None:
    os.link(real / "data.mdb", bad / "data.mdb")


def _link_to_another_name(real: Path, bad: Path) -> None:
    shutil.copy(real / "data.mdb", bad.parent / "elsewhere.mdb")
    (bad / "data.mdb").symlink_to(bad.parent / "elsewhere.mdb")


def _dangling_data(real: Path, bad: Path) -> None:
    (bad / "data.mdb").symlink_to(bad.parent / "gone" / "data.mdb")


def _looping_data(real: Path, bad: Path) -> None:
    (bad / "data.mdb").symlink_to(bad / "again")
    (bad / "again").symlink_to(bad / "data.mdb")


def _data_linked_to_a_directory(real: Path, bad: Path) -> None:
    (bad / "data.mdb").symlink_to(real)


def _data_linked_to_a_device(real: Path, bad: Path) -> None:
    (bad / "data.mdb").symlink_to("/dev/null")


def _data_a_fifo(real: Path, bad: Path) -> None:
    os.mkfifo(bad / "data.mdb")


def _data_a_directory(real: Path, bad: Path) -> None:
    (bad / "data.mdb").mkdir()


def _symlinked_lock(real: Path, bad: Path) -> None:
    shutil.copy(real / "data.mdb", bad / "data.mdb")
    (bad / "lock.mdb").symlink_to(real / "lock.mdb")


def _dangling_lock(real: Path, bad: Path) -> None:
    shutil.copy(real / "data.mdb", bad / "data.mdb")
    (bad / "lock.mdb").symlink_to(bad.parent / "gone" / "lock.mdb")


def _hard_linked_lock(real: Path, bad: Path) -> None:
    shutil.copy(real / "data.mdb", bad / "data.mdb")
    os.link(real / "lock.mdb", bad / "lock.mdb")


def _lock_a_directory(real: Path, bad: Path) -> None:
    shutil.copy(real / "data.mdb", bad / "data.mdb")
    (bad / "lock.mdb").mkdir()


BAD = {
    "hard-linked data.mdb": (_hard_linked_data, r"bad/data\.mdb has 2 hard links \(made by ln "
                             r"or cp -al\): LMDB cannot coordinate processes .* its own copy"),
    "link to another name": (_link_to_another_name, r"bad/data\.mdb is a symlink to .*"
                             r"/elsewhere\.mdb, which is not named data\.mdb: .* Move it into a "
                             r"directory of its own as data\.mdb"),
    "dangling data.mdb": (_dangling_data, r"bad/data\.mdb is a symlink to '.*/gone/data\.mdb',"
                          r" which does not exist; fix or remove the link"),
    "looping data.mdb": (_looping_data, r"bad/data\.mdb is a symlink that loops"),
    "data.mdb to a directory": (_data_linked_to_a_directory,
                                r"bad/data\.mdb is a symlink to .*/real, which is not a regular "
                                r"file"),
    "data.mdb to a device": (_data_linked_to_a_device,
                             r"bad/data\.mdb is a symlink to /dev/null, which is not a regular "
                             r"file"),
    "data.mdb a fifo": (_data_a_fifo, r"bad/data\.mdb is not a regular file"),
    "data.mdb a directory": (_data_a_directory, r"bad/data\.mdb is not a regular file"),
    "symlinked lock.mdb": (_symlinked_lock, r"bad/lock\.mdb is a symlink \(to '.*/real/lock\.mdb'"
                           r"\); LMDB's lock file must be a regular file"),
    "dangling lock.mdb": (_dangling_lock, r"bad/lock\.mdb is a symlink \(to '.*/gone/lock\.mdb'"),
    "hard-linked lock.mdb": (_hard_linked_lock, r"bad/lock\.mdb has 2 hard links: a lock file "
                             r"shared with another environment"),
    "lock.mdb a directory": (_lock_a_directory, r"bad/lock\.mdb is not a regular file; remove it"),
}

OPENERS: dict[str, tuple[str, Callable[[Path], Any], type[Exception]]] = {
    "LMDBStore": ("store", LMDBStore, StorageIOError),
    "read-only LMDBStore": ("store", lambda path: LMDBStore(path, read_only=True),
                            StorageIOError),
    "Repository.open": ("repository", lambda path: vs.Repository.open(vs.lmdb_storage(path)),
                        vs.BackendError),
    "read-only Repository.open": (
        "repository", lambda path: vs.Repository.open(vs.lmdb_storage(path, read_only=True)),
        vs.BackendError),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("opener", OPENERS)
@pytest.mark.parametrize("case", BAD)
def test_files_lmdb_cannot_coordinate_are_refused(tmp_path: Path, case: str, opener: str) -> None:
    make_bad, message = BAD[case]
    api, open_, error = OPENERS[opener]
    real, bad = tmp_path / "real", tmp_path / "bad"
    _make(api, real)
    bad.mkdir()
    make_bad(real, bad)
    with pytest.raises(error, match=message):
        open_(bad)
    # Nothing was created at a link's target, nor a lock file beside a refused data file.
    assert not (tmp_path / "gone").exists()
    if "lock" not in case:
        assert not (bad / "lock.mdb").exists()


def test_compacting_through_the_link_compacts_the_target_under_its_lock(tmp_path: Path) -> None:
    """``compact`` swaps a new data file in: at the link's target, never over the link itself,
    and only while no process has the repository open through either path."""
    link_dir, target_dir = _moved_behind_a_symlink("repository", tmp_path)
    with vs.Repository.open(vs.lmdb_storage(link_dir)) as repo:
        repo.create_branch("big", repo.lookup_branch("main"))
        session = repo.writable_session("big")
        for n in range(50):
            session.store.storage.set(f"c/{n}", bytes([n]) * 20_000)
        session.commit("1 MB")
        repo.delete_branch("big")
        repo.garbage_collect()
        session = repo.writable_session("main")
        session.store.storage.set("kept", b"kept")
        session.commit("kept")
        context = multiprocessing.get_context("spawn")
        inside, release, queue = context.Event(), context.Event(), context.Queue()
        reader = context.Process(target=workers.hold_read,
                                 args=("repository", str(target_dir), inside, release, queue))
        reader.start()
        try:
            assert inside.wait(WAIT)
            with pytest.raises(vs.RepositoryBusyError, match=str(reader.pid)):
                repo.compact()
        finally:
            release.set()
            reader.join(WAIT)
        assert queue.get(timeout=WAIT) == ("read", None)
        report = repo.compact()
        assert report.bytes_freed > 0
    assert (link_dir / "data.mdb").is_symlink()
    assert (target_dir / "data.mdb").stat().st_size == report.bytes_after
    assert not (link_dir / "lock.mdb").exists()
    with vs.Repository.open(vs.lmdb_storage(target_dir)) as repo:
        assert repo.readonly_session("main").store.storage.get("kept") == b"kept"

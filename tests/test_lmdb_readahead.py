"""The readahead switch (``zarrstore.lmdb_readahead``): advice over an LMDB map set by each read.

The advice is read back from the kernel itself: ``/proc/self/smaps`` lists a
mapping's flags, and ``rr`` is ``VM_RAND_READ``, what ``MADV_RANDOM`` sets.
Reads are real reads of a real environment, from two threads, and across a
growth of the map (LMDB maps the file anew).
"""

from __future__ import annotations

import mmap
import os
import threading
from pathlib import Path

import lmdb
import pytest

import versionstore as vs
from zarrstore import lmdb_readahead
from zarrstore.lmdb_environment import EnvironmentHandle

pytestmark = pytest.mark.skipif(
    not lmdb_readahead.supported(),
    reason="the switch needs Linux's /proc/self/maps and madvise; elsewhere it changes nothing",
)


def _flags(data_path: Path) -> list[list[str]]:
    """The ``VmFlags`` of each of this process's mappings of ``data_path``."""
    inode = str(os.stat(data_path).st_ino)
    found: list[list[str]] = []
    current: list[str] | None = None
    with open("/proc/self/smaps", encoding="ascii", errors="replace") as smaps:
        for line in smaps:
            fields = line.split()
            if fields and "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:
                current = fields if fields[4] == inode else None
            elif current is not None and fields and fields[0] == "VmFlags:":
                found.append(fields[1:])
    return found


def _random(data_path: Path) -> bool:
    flags = _flags(data_path)
    assert flags, "the data file is mapped"
    return all("rr" in f for f in flags)


def _normal(data_path: Path) -> bool:
    flags = _flags(data_path)
    assert flags, "the data file is mapped"
    return not any("rr" in f or "sr" in f for f in flags)


@pytest.fixture
def handle(tmp_path: Path) -> EnvironmentHandle:
    handle = EnvironmentHandle(tmp_path / "env", map_size=1 << 20)
    handle.write("seeding", lambda txn: txn.put(b"key", b"value"))
    return handle


def test_each_read_that_asks_sets_the_advice_and_the_others_keep_it(
        handle: EnvironmentHandle, tmp_path: Path) -> None:
    data = tmp_path / "env" / "data.mdb"
    assert _normal(data), "LMDB's default: readahead on"
    assert handle.read("a node", lambda txn: (txn.get(b"key"), _random(data)),
                       readahead=False) == (b"value", True)
    assert _random(data), "stays off for the next read of its kind: no system call"
    assert handle.read("a ref", lambda txn: _random(data)) is True, "a read that does not ask"
    assert handle.read("chunks", lambda txn: _normal(data), readahead=True) is True
    assert _normal(data)


def test_two_threads_each_read_with_their_own_advice(handle: EnvironmentHandle,
                                                    tmp_path: Path) -> None:
    data = tmp_path / "env" / "data.mdb"
    values: list[bytes | None] = []
    failures: list[BaseException] = []

    def reads(readahead: bool) -> None:
        try:
            for _ in range(300):
                values.append(handle.read("r", lambda txn: txn.get(b"key"), readahead=readahead))
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=reads, args=(flag,)) for flag in (False, True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures and values == [b"value"] * 600, "a hint: the bytes never change"
    handle.read("last", lambda txn: None, readahead=False)
    assert _random(data), "the last read that asked decides"


def test_a_map_grown_meanwhile_is_found_again(handle: EnvironmentHandle,
                                              tmp_path: Path) -> None:
    data = tmp_path / "env" / "data.mdb"
    handle.read("before", lambda txn: None, readahead=False)  # the 1 MiB map is looked up
    before = lmdb_readahead.mapped_range(str(data))
    value = os.urandom(64 << 10)

    def fill(txn: lmdb.Transaction) -> None:
        for i in range(64):  # 4 MiB: the map grows (LMDB maps the file anew)
            txn.put(b"big%d" % i, value)

    handle.write("filling", fill)
    after = lmdb_readahead.mapped_range(str(data))
    assert before is not None and after is not None and after[1] > before[1], "the map grew"
    assert _normal(data), "mapped anew with LMDB's default"
    assert handle.read("after", lambda txn: (txn.get(b"big7") == value, _random(data)),
                       readahead=False) == (True, True)


def test_the_versionstore_backend_reads_nodes_without_readahead_and_chunks_with_it(
        tmp_path: Path) -> None:
    repo = vs.Repository.create(vs.lmdb_storage(tmp_path / "repo"))
    session = repo.writable_session("main")
    # Over ``DOCUMENTS_LIMIT``: not kept in the snapshot, so read from the tree (a small
    # document is served by the snapshot alone: ``tests/test_snapshot_documents.py``).
    session.store.storage.set("a/zarr.json", b"{}" * 20_000)
    session.store.storage.set("a/c/0", os.urandom(200_000))
    session.commit("one")
    data = tmp_path / "repo" / "data.mdb"
    seen: list[bool] = []
    backend = repo.backend
    read = type(backend)._read

    def spying(self: object, action: str, work: object, **options: object) -> object:
        def watched(txn: lmdb.Transaction) -> object:
            seen.append(_random(data))
            return work(txn)  # type: ignore[operator]

        return read(self, action, watched, **options)  # type: ignore[arg-type]

    reopened = vs.Repository.open(repo.storage)
    store = reopened.readonly_session("main").store.storage
    try:
        type(backend)._read = spying  # type: ignore[method-assign]
        assert store.get("a/zarr.json") == b"{}" * 20_000
        metadata_reads = list(seen)
        seen.clear()
        assert len(store.get("a/c/0") or b"") == 200_000
        chunk_reads = list(seen)
    finally:
        type(backend)._read = read  # type: ignore[method-assign]
        reopened.close()
        repo.close()
    assert metadata_reads and all(metadata_reads), "tree node, metadata document: off"
    assert chunk_reads and not any(chunk_reads), "a data chunk: on"


def _map_view_address(handle: EnvironmentHandle) -> int | None:
    """The address of a value viewed in place in the map (what the environment hands out)."""

    def work(txn: lmdb.Transaction) -> int | None:
        return lmdb_readahead.buffer_address(txn.get(b"key"))

    return handle.read("viewing", work, buffers=True)


def test_the_map_found_from_an_address_inside_it_is_the_one_proc_maps_lists(
        handle: EnvironmentHandle, tmp_path: Path) -> None:
    data = str(tmp_path / "env" / "data.mdb")
    listed = lmdb_readahead.mapped_range(data)
    address = _map_view_address(handle)
    assert listed is not None and address is not None
    assert listed[0] <= address < listed[0] + listed[1], "the value lies in the map"
    assert lmdb_readahead.mapped_range(data, address) == listed
    # One question to the kernel (``None`` only before Linux 6.11, without PROCMAP_QUERY).
    assert lmdb_readahead._queried_range(address, os.stat(data)) in (None, listed)
    elsewhere = lmdb_readahead.buffer_address(memoryview(bytearray(64)))
    assert lmdb_readahead.mapped_range(data, elsewhere) == listed, (
        "an address outside the map: the map is still found, by reading every mapping")
    located = handle._shared.map_address()
    assert located is not None and listed[0] <= located < listed[0] + listed[1]


def test_a_map_advised_in_parts_is_found_whole(handle: EnvironmentHandle,
                                               tmp_path: Path) -> None:
    data = str(tmp_path / "env" / "data.mdb")
    start, length = lmdb_readahead.mapped_range(data) or (0, 0)
    address = _map_view_address(handle)
    assert address is not None and length > 2 * mmap.PAGESIZE
    # Advice on part of a mapping splits it in the kernel's list: three mappings now.
    lmdb_readahead._madvise(start + mmap.PAGESIZE, mmap.PAGESIZE, mmap.MADV_RANDOM)  # type: ignore[misc]
    try:
        assert len(_flags(tmp_path / "env" / "data.mdb")) == 3
        assert lmdb_readahead.mapped_range(data, address) == (start, length)
        assert lmdb_readahead._queried_range(address, os.stat(data)) in (None, (start, length))
        assert lmdb_readahead.mapped_range(data, start + length - 1) == (start, length)
    finally:
        lmdb_readahead._madvise(start, length, mmap.MADV_NORMAL)  # type: ignore[misc]


def test_a_small_reads_environment_starts_and_regrows_without_readahead(tmp_path: Path) -> None:
    data = tmp_path / "env" / "data.mdb"
    handle = EnvironmentHandle(tmp_path / "env", map_size=1 << 20, small_reads=True)
    handle.write("seeding", lambda txn: txn.put(b"key", b"value"))
    switch = handle._shared.readahead
    assert switch is not None and switch.is_off
    assert _random(data), "LMDB advised MADV_RANDOM itself (MDB_NORDAHEAD)"
    assert handle.read("a node", lambda txn: txn.get(b"key"), readahead=False) == b"value"
    assert not switch._known, "small reads never change the advice: the map is not looked up"
    assert handle.read("chunks", lambda txn: _normal(data), readahead=True) is True
    value = os.urandom(64 << 10)

    def fill(txn: lmdb.Transaction) -> None:
        for i in range(64):  # 4 MiB: the map grows (LMDB maps the file anew)
            txn.put(b"big%d" % i, value)

    handle.write("filling", fill)
    assert _random(data) and switch.is_off, "mapped anew without readahead"
    assert handle.read("chunks", lambda txn: (txn.get(b"big3") == value, _normal(data)),
                       readahead=True) == (True, True)
    handle.close()


def test_listing_history_never_changes_the_advice(tmp_path: Path) -> None:
    repo = vs.Repository.create(vs.lmdb_storage(tmp_path / "repo"))
    for n in range(3):
        session = repo.writable_session("main")
        session.store.storage.set(f"k{n}", b"v" * 100)
        session.commit(f"commit {n}")
    repo.close()
    reopened = vs.Repository.open(vs.lmdb_storage(tmp_path / "repo"))
    assert [i.message for i in reopened.ancestry(branch="main")][:3] == [
        "commit 2", "commit 1", "commit 0"]
    switch = reopened.backend._handle._shared.readahead  # type: ignore[attr-defined]
    assert switch is not None and switch.is_off and not switch._known
    assert _random(tmp_path / "repo" / "data.mdb")
    reopened.close()

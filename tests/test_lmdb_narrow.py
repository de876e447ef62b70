"""Narrow reads (``zarrstore.lmdb_narrow``): readahead off over an LMDB map while a window is open.

The advice is read back from the kernel itself: ``/proc/self/smaps`` lists a
mapping's flags, and ``rr`` is ``VM_RAND_READ``, what ``MADV_RANDOM`` sets.
Windows are opened by real reads of a real environment, nested, overlapped
across threads, and across a growth of the map (LMDB maps the file anew).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import lmdb
import pytest

import versionstore as vs
from zarrstore import lmdb_narrow
from zarrstore.lmdb_environment import EnvironmentHandle

pytestmark = pytest.mark.skipif(
    not lmdb_narrow.supported(),
    reason="narrow reads need Linux's /proc/self/maps and madvise; elsewhere they change nothing",
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


def test_a_narrow_read_advises_random_only_while_it_runs(handle: EnvironmentHandle,
                                                         tmp_path: Path) -> None:
    data = tmp_path / "env" / "data.mdb"
    assert _normal(data)
    seen = handle.read("reading", lambda txn: (txn.get(b"key"), _random(data)), narrow=True)
    assert seen == (b"value", True)
    assert _normal(data)
    assert handle.read("reading", lambda txn: _random(data)) is False, "other reads read around"


def test_windows_nest_and_overlap_across_threads(handle: EnvironmentHandle,
                                                 tmp_path: Path) -> None:
    data = tmp_path / "env" / "data.mdb"
    inside = threading.Barrier(2)
    first_left = threading.Event()
    seen: dict[str, bool] = {}

    def first(txn: lmdb.Transaction) -> None:
        inside.wait(timeout=30)
        first_left.set()

    def second(txn: lmdb.Transaction) -> None:
        inside.wait(timeout=30)
        assert first_left.wait(timeout=30)
        seen["after the other window closed"] = _random(data)
        seen["nested"] = handle.read("nested", lambda t: _random(data), narrow=True)

    other = threading.Thread(target=lambda: handle.read("first", first, narrow=True))
    other.start()
    handle.read("second", second, narrow=True)
    other.join(timeout=30)
    assert seen == {"after the other window closed": True, "nested": True}
    assert _normal(data)


def test_a_map_grown_meanwhile_is_found_again(handle: EnvironmentHandle,
                                              tmp_path: Path) -> None:
    data = tmp_path / "env" / "data.mdb"
    handle.read("before", lambda txn: None, narrow=True)  # the 1 MiB map is looked up
    before = lmdb_narrow.mapped_range(str(data))
    value = os.urandom(64 << 10)

    def fill(txn: lmdb.Transaction) -> None:
        for i in range(64):  # 4 MiB: the map grows (LMDB maps the file anew)
            txn.put(b"big%d" % i, value)

    handle.write("filling", fill)
    after = lmdb_narrow.mapped_range(str(data))
    assert before is not None and after is not None and after[1] > before[1], "the map grew"
    assert handle.read("after", lambda txn: (txn.get(b"big7") == value, _random(data)),
                       narrow=True) == (True, True)
    assert _normal(data)


def test_the_versionstore_backend_reads_nodes_narrow_and_chunks_around(tmp_path: Path) -> None:
    repo = vs.Repository.create(vs.lmdb_storage(tmp_path / "repo"))
    session = repo.writable_session("main")
    session.store.storage.set("a/zarr.json", b"{}" * 600)
    session.store.storage.set("a/c/0", os.urandom(200_000))
    session.commit("one")
    data = tmp_path / "repo" / "data.mdb"
    seen: list[bool] = []
    backend = repo.backend
    read = type(backend)._read

    def spying(self: object, action: str, work: object, **options: bool) -> object:
        def watched(txn: lmdb.Transaction) -> object:
            seen.append(_random(data))
            return work(txn)  # type: ignore[operator]

        return read(self, action, watched, **options)  # type: ignore[arg-type]

    reopened = vs.Repository.open(repo.storage)
    store = reopened.readonly_session("main").store.storage
    try:
        type(backend)._read = spying  # type: ignore[method-assign]
        assert store.get("a/zarr.json") == b"{}" * 600
        narrow_reads = list(seen)
        seen.clear()
        assert len(store.get("a/c/0") or b"") == 200_000
        chunk_reads = list(seen)
    finally:
        type(backend)._read = read  # type: ignore[method-assign]
        reopened.close()
        repo.close()
    assert narrow_reads and all(narrow_reads), "snapshot, nodes, metadata document: narrow"
    assert chunk_reads and not any(chunk_reads), "a data chunk is read around"

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from pathlib import Path

import pytest

from versionstore.backend import LMDBBackend, MemoryBackend
from versionstore.errors import BackendError
from versionstore.testing import BackendConformance


class TestMemoryBackend(BackendConformance):
    @pytest.fixture
    def backend(self) -> MemoryBackend:
        return MemoryBackend()


class TestLMDBBackend(BackendConformance):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[LMDBBackend]:
        backend = LMDBBackend(tmp_path / "env")
        yield backend
        backend.close()


def test_lmdb_environment_is_shared_within_a_process(tmp_path: Path) -> None:
    first = LMDBBackend(tmp_path / "env")
    second = LMDBBackend(tmp_path / "env")
    first.put_objects([], {"r": b"1"})
    assert second.get_ref("r") == b"1"
    first.close()
    assert second.get_ref("r") == b"1"
    second.close()
    with pytest.raises(BackendError, match="closed"):
        second.get_ref("r")


def _race(path: str, n: int, start: multiprocessing.synchronize.Event, out: multiprocessing.Queue
          ) -> None:  # type: ignore[type-arg]
    backend = LMDBBackend(path)
    start.wait(10)
    out.put((n, backend.compare_and_swap_ref("race", b"start", str(n).encode())))
    backend.close()


def test_lmdb_compare_and_swap_across_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "env")
    LMDBBackend(path).compare_and_swap_ref("race", None, b"start")
    context = multiprocessing.get_context("spawn")
    start, out = context.Event(), context.Queue()
    workers = [context.Process(target=_race, args=(path, n, start, out)) for n in range(4)]
    for worker in workers:
        worker.start()
    start.set()
    results = dict(out.get(timeout=60) for _ in workers)
    for worker in workers:
        worker.join(30)
    winners = [n for n, won in results.items() if won]
    assert len(winners) == 1
    assert LMDBBackend(path).get_ref("race") == str(winners[0]).encode()


def test_lmdb_flushes_ahead_in_the_background_once_enough_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import threading

    from versionstore.backend import lmdb as lmdb_backend
    from versionstore.ids import hash_object

    flushed: list[str] = []
    done = threading.Event()

    def recording(path: str) -> None:
        flushed.append(path)
        os.sync()  # the real thing is an fdatasync of this file
        done.set()

    monkeypatch.setattr(lmdb_backend, "FLUSH_AHEAD_BYTES", 64 << 10)
    monkeypatch.setattr(lmdb_backend, "_fdatasync", recording)
    backend = LMDBBackend(tmp_path / "env")
    values = [bytes([i]) * (16 << 10) for i in range(3)]
    backend.put_objects([(hash_object(1, v), v) for v in values])
    assert flushed == []  # 48 KiB: below the threshold
    more = [bytes([i]) * (16 << 10) for i in range(3, 5)]
    backend.put_objects([(hash_object(1, v), v) for v in more])
    assert done.wait(30)
    assert flushed == [os.path.join(backend.path, "data.mdb")]
    backend.sync()  # the commit's own flush still runs, and resets the count
    assert backend.get_objects([hash_object(1, values[0])]) == [values[0]]
    backend.close()
    durable = LMDBBackend(tmp_path / "durable", durable=True)  # every write already synced
    durable.put_objects([(hash_object(1, v), v) for v in values + more])
    assert len(flushed) == 1
    durable.close()


def test_a_flush_ahead_of_a_missing_file_is_harmless(tmp_path: Path) -> None:
    from versionstore.backend.lmdb import _fdatasync

    _fdatasync(str(tmp_path / "gone" / "data.mdb"))

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

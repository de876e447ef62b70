"""Adapters stack in any order, over memory, filesystem, OpenDAL and versioned session stores.

Each stack runs the same zarr workload. Whatever the order, the metrics layer
must count exactly what it counts alone over the bare store (the other layers
neither add nor drop calls), and the usage log must write one line per call.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr

import versionstore as vs
from zarrstore import (
    AsyncToSync,
    FilesystemStore,
    MemoryStore,
    OpendalStore,
    PerformanceMetrics,
    ReadOnly,
    ReadOnlyError,
    SyncToAsync,
    UsageLog,
    ZarrStore,
)

LAYERS = ("log", "metrics", "bridge")
DATA = (np.arange(8 * 8) + 1).astype("i2").reshape(8, 8)


class Stack:
    """Builds a stack of adapters bottom-up and remembers the interesting layers."""

    def __init__(self, base: ZarrStore) -> None:
        self.store = base
        self.log = io.StringIO()
        self.metrics: PerformanceMetrics | None = None

    def add(self, layer: str) -> None:
        if layer == "log":
            self.store = UsageLog(self.store, self.log, prefix=lambda: "")
        elif layer == "metrics":
            self.metrics = PerformanceMetrics(self.store)
            self.store = self.metrics
        elif layer == "bridge":
            self.store = ZarrStore(AsyncToSync(SyncToAsync(self.store)))
        elif layer == "readonly":
            self.store = ReadOnly(self.store)


BaseFactory = Callable[[Path], ZarrStore]


def _session_store(tmp: Path) -> ZarrStore:
    return vs.Repository.create(vs.in_memory_storage()).writable_session("main").store


BASES: dict[str, BaseFactory] = {
    "memory": lambda tmp: MemoryStore(),
    "filesystem": lambda tmp: FilesystemStore(tmp / "fs"),
    "session": _session_store,
    "opendal-fs": lambda tmp: OpendalStore.from_scheme(
        "fs", root=tmp / "od", atomic_write_dir=tmp / "od-tmp"
    ),
}


def workload(store: ZarrStore) -> None:
    root = zarr.open_group(store=store, mode="w", attributes={"title": "stack"})
    array = root.create_array(
        "g/a", shape=DATA.shape, chunks=(4, 4), dtype="i2", compressors=None, fill_value=0
    )
    array[:] = DATA
    array[0:2, 0:2] = -1
    reopened = zarr.open_group(store=store, mode="r")
    expected = DATA.copy()
    expected[0:2, 0:2] = -1
    np.testing.assert_array_equal(reopened["g/a"][:], expected)
    np.testing.assert_array_equal(reopened["g/a"][5:8, 1:6], expected[5:8, 1:6])
    assert reopened.attrs["title"] == "stack"
    assert sorted(name for name, _ in reopened["g"].members()) == ["a"]


def reference_counts(kind: str, tmp_path: Path) -> dict[str, int]:
    metrics = PerformanceMetrics(BASES[kind](tmp_path / "reference"))
    workload(metrics)
    return metrics.as_dict()


@pytest.mark.parametrize("kind", sorted(BASES))
@pytest.mark.parametrize("order", list(itertools.permutations(LAYERS)), ids="-".join)
def test_every_order_behaves_the_same(kind: str, order: tuple[str, ...], tmp_path: Path) -> None:
    stack = Stack(BASES[kind](tmp_path))
    for layer in order:
        stack.add(layer)
    workload(stack.store)

    assert stack.metrics is not None
    assert stack.metrics.as_dict() == reference_counts(kind, tmp_path)
    calls = sum(t.calls for t in stack.metrics.timings().values())
    assert len(stack.log.getvalue().splitlines()) == calls


@pytest.mark.parametrize("kind", sorted(BASES))
@pytest.mark.parametrize("position", range(len(LAYERS) + 1))
def test_read_only_guard_anywhere_in_a_stack(kind: str, position: int, tmp_path: Path) -> None:
    base = BASES[kind](tmp_path)
    workload(base)
    stack = Stack(base)
    layers = [*LAYERS[:position], "readonly", *LAYERS[position:]]
    for layer in layers:
        stack.add(layer)
    group = zarr.open_group(store=stack.store, mode="r")
    assert group["g/a"][0, 0] == -1
    with pytest.raises(ValueError, match="read-only"):
        zarr.open_group(store=stack.store, mode="a")
    with pytest.raises(ReadOnlyError):
        group["g/a"][:] = 0
    assert stack.metrics is not None and stack.metrics.writes == 0


def test_metrics_over_usage_log_over_filesystem(tmp_path: Path) -> None:
    """The example from the issue, spelled out."""
    log = io.StringIO()
    store = PerformanceMetrics(UsageLog(FilesystemStore(tmp_path / "data.zarr"), log))
    workload(store)
    assert store.writes > 0 and store.reads > 0
    lines = log.getvalue().splitlines()
    assert sum(t.calls for t in store.timings().values()) == len(lines)
    assert sum(line.split(" ", 2)[1] in ("set", "set_if_absent") for line in lines) >= (
        store.writes
    )


# -- versioned sessions: adapters over a time-travel read ---------------------------


def test_metrics_of_a_time_travel_read() -> None:
    """Read an old snapshot through metrics and a log; the figures follow the layout."""
    repo = vs.Repository.create(vs.in_memory_storage())
    session = repo.writable_session("main")
    log = io.StringIO()
    writer = PerformanceMetrics(UsageLog(session.store, log, prefix=lambda: ""))
    array = zarr.create_array(
        writer, name="t", shape=(8, 8), chunks=(4, 4), dtype="u1", compressors=None, fill_value=0
    )
    writer.reset()
    array[:] = 1  # four whole chunks
    first = session.commit("all ones")
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="t")[0:4, 0:4] = 2
    session.commit("one chunk of twos")

    old = PerformanceMetrics(UsageLog(repo.readonly_session(snapshot_id=first).store, log))
    reopened = zarr.open_array(old, path="t", mode="r")
    old.reset()
    np.testing.assert_array_equal(reopened[2:6, 0:4], 1)  # the old values, not the twos
    # Rows 2..5 span chunk rows 0 and 1 of chunk column 0: two 4x4 uint8 chunks.
    assert old.as_dict()["reads"] == 2 and old.bytes_read == 2 * 16
    assert old.read_only and writer.writes == 4

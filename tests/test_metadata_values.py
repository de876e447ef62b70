"""Metadata takes numpy scalars as the Python values they are; naive datetimes are told why."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

import versionstore as vs


class Level(enum.IntEnum):
    HIGH = 3


def _staged() -> tuple[vs.Repository, vs.Session]:
    repo = vs.Repository.create(vs.in_memory_storage())
    session = repo.writable_session("main")
    session.store.storage.set("k", b"v")
    return repo, session


@pytest.mark.parametrize(("given", "stored"), [
    (np.float64(1.5), 1.5),
    (np.float32(0.25), 0.25),
    (np.float16(2.0), 2.0),
    (np.int64(-3), -3),
    (np.int8(7), 7),
    (np.uint64(2**64 - 1), 2**64 - 1),
    (np.bool_(True), True),
    (np.bool_(False), False),
    (np.array(2.5), 2.5),
    (np.array(4, dtype="u2"), 4),
    (np.array(True), True),
    (np.str_("text"), "text"),
    (Level.HIGH, 3),
], ids=repr)
def test_numpy_scalars_are_stored_as_plain_values(given: Any, stored: Any) -> None:
    repo, session = _staged()
    snapshot = session.commit("numbers", metadata={"value": given, "nested": [{"v": given}]})
    metadata = repo.lookup_snapshot(snapshot).metadata
    assert metadata == {"value": stored, "nested": [{"v": stored}]}
    assert type(metadata["value"]) is type(stored)


def test_the_issue_example() -> None:
    repo, session = _staged()
    data = np.array([1.0, 2.0])
    snapshot = session.commit("stats", metadata={"mean": data.mean(), "n": data.size,
                                                 "finite": np.isfinite(data).all()})
    assert repo.lookup_snapshot(snapshot).metadata == {"mean": 1.5, "n": 2, "finite": True}


@pytest.mark.parametrize(("bad", "message"), [
    (datetime(2024, 1, 1), "timezone-aware"),
    ({"when": datetime(2024, 1, 1)}, "timezone-aware"),
    (np.arange(3), r"\.tolist\(\)"),
    (np.complex128(1j), "cannot store complex128"),
    (np.datetime64("2024-01-01"), "cannot store"),
    (object(), "cannot store object"),
], ids=["naive", "nested-naive", "array", "complex", "datetime64", "object"])
def test_unstorable_values_are_refused_with_a_reason(bad: Any, message: str) -> None:
    repo, session = _staged()
    with pytest.raises(TypeError, match=message):
        session.commit("bad", metadata={"x": bad})
    assert session.has_uncommitted_changes
    snapshot = session.commit("good", metadata={"x": datetime(2024, 1, 1, tzinfo=UTC)})
    assert repo.lookup_snapshot(snapshot).metadata["x"] == datetime(2024, 1, 1, tzinfo=UTC)

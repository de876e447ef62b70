"""Progress reporting for long operations (``versionstore.progress``)."""

from __future__ import annotations

import pytest

import versionstore as vs
from versionstore.progress import LONG, progress_reporter


def test_false_none_and_no_terminal_report_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    with progress_reporter(False) as report:
        assert report is None
    with progress_reporter(None) as report:
        assert report is None
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("TTY_COMPATIBLE", "0")
    with progress_reporter(True) as report:  # pytest captures stderr: not a terminal
        assert report is None


def test_a_callable_is_called_as_it_is() -> None:
    seen: list[tuple[str, int, int]] = []

    def callback(phase: str, done: int, total: int) -> None:
        seen.append((phase, done, total))

    with progress_reporter(callback) as report:
        assert report is callback


def test_a_terminal_gets_a_bar_for_long_operations_only(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich: treat stderr as a terminal
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    with progress_reporter(True) as report:
        assert report is not None
        report("copying objects", 3, 10)  # short: no bar
        for done in range(0, LONG + 1, 25):
            report("copying objects", done, LONG)
    assert "copying objects" in capsys.readouterr().err


def test_anything_else_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="progress must be True, False, None or a callable"):
        with progress_reporter("yes"):  # type: ignore[arg-type]
            pass
    with pytest.raises(TypeError, match="progress must be"):
        repo = vs.Repository.create(vs.in_memory_storage())
        repo.push(vs.Repository.create(vs.in_memory_storage()), progress=1)  # type: ignore[arg-type]

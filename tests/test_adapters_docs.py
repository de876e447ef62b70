"""The examples in ``docs/adapters.md`` run, in order, as one test each page section."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "adapters.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.DOTALL | re.MULTILINE)


def test_the_page_has_examples() -> None:
    assert len(BLOCKS) >= 6


@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_example_runs(number: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr's consolidated-metadata notice
        exec(compile(BLOCKS[number], f"{DOC.name}[{number}]", "exec"), {"__name__": "docs"})

"""The Python examples in the README and the user guide run, in order, as written.

A block whose first line is ``# file: NAME`` is written to ``NAME`` instead of
being run; if a page writes ``test_*.py`` files, pytest runs them (in a
subprocess, in the page's directory) and they must pass.
"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", "docs/guide.md", "docs/icechunk.md", "docs/recipes.md", "docs/notebook.md",
         "docs/virtual.md"]
FILE_MARK = re.compile(r"\A# file: (\S+)\n")


def _blocks(page: str) -> list[str]:
    text = (ROOT / page).read_text()
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


@pytest.mark.parametrize("page", PAGES)
def test_examples_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = _blocks(page)
    assert blocks, f"{page} has no python examples"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "docs"}
    files: list[Path] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for number, block in enumerate(blocks):
            named = FILE_MARK.match(block)
            if named:
                files.append(tmp_path / named.group(1))
                files[-1].write_text(block)
                continue
            exec(compile(block, f"{page}[{number}]", "exec"), namespace)
    tests = [path for path in files if path.name.startswith("test_")]
    if tests:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             *map(str, tests)],
            cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"{sum(b.count('def test_') for b in map(Path.read_text, tests))} passed" \
            in result.stdout

"""scripts/bootstrap.sh keeps set-up to a few lines and shows pip's output only on failure.

The machine-level pip configuration of some machines makes every pip call print
about a hundred index warnings. These tests run the real script on a copy of the
checkout whose ``.venv/bin/python`` answers ``-m pip`` with that much noise (and
the status the test chooses) and runs this interpreter for everything else, so
that no test downloads anything.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOISE_LINES = 110


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "bootstrap.sh", root / "scripts" / "bootstrap.sh")
    shutil.copy2(ROOT / "pyproject.toml", root / "pyproject.toml")
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then\n'
        f"    i=0; while [ $i -lt {NOISE_LINES} ]; do\n"
        '        echo "WARNING: index-url warning $i from machine-level pip configuration" >&2\n'
        "        i=$((i + 1))\n"
        "    done\n"
        '    echo "pip install $*"\n'
        '    exit "${PIP_STATUS:-0}"\n'
        "fi\n"
        f'exec {shlex.quote(sys.executable)} "$@"\n'
    )
    python.chmod(0o755)
    return root


def _bootstrap(root: Path, pip_status: int) -> subprocess.CompletedProcess[str]:
    script = shlex.quote(str(root / "scripts" / "bootstrap.sh"))
    return subprocess.run(
        ["bash", "-c", f'source {script} && echo "PYTHON=$PYTHON"'],
        env={**os.environ, "PIP_STATUS": str(pip_status)},
        capture_output=True, text=True, timeout=120, check=False,
    )


def test_set_up_prints_a_few_lines_and_keeps_a_log(checkout: Path) -> None:
    result = _bootstrap(checkout, pip_status=0)
    assert result.returncode == 0, result.stderr
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) <= 4, lines
    assert "WARNING" not in result.stdout + result.stderr
    assert lines[-1] == f"PYTHON={checkout / '.venv' / 'bin' / 'python'}"
    log = (checkout / ".venv" / "install.log").read_text()
    assert log.count("WARNING: index-url warning") == 2 * NOISE_LINES  # both pip calls
    assert f"-e {checkout}[test]" in log
    # Set up once: the next run prints nothing but the caller's line.
    again = _bootstrap(checkout, pip_status=0)
    assert (again.stdout + again.stderr).splitlines() == [lines[-1]]


def test_a_failing_install_shows_what_pip_said(checkout: Path) -> None:
    result = _bootstrap(checkout, pip_status=1)
    assert result.returncode == 1
    assert "error: installing into .venv failed" in result.stderr
    assert result.stderr.count("WARNING: index-url warning") == NOISE_LINES
    assert "PYTHON=" not in result.stdout
    # Nothing was marked installed: the next run tries again.
    assert not list((checkout / ".venv").glob(".installed-*"))

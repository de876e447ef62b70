"""The README's main job runs end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_runs_and_tells_the_story(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "versionstore.demo", str(tmp_path / "repo")],
        capture_output=True, text=True, timeout=300, check=True,
    )
    out = result.stdout
    assert "log of main:" in out and "heatwave correction" in out
    assert "new_arrays: /climate/mask" in out
    assert "time travel:" in out
    assert (tmp_path / "repo" / "data.mdb").exists()

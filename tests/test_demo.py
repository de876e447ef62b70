"""The README's main job runs end to end, keeps its repository where asked and says so."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _demo(*args: str, cwd: Path, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "versionstore.demo", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def _explore_commands(out: str) -> list[list[str]]:
    """The CLI commands the demo ends with (their arguments), to run with this interpreter."""
    lines = out.split("explore it:\n", 1)[1].splitlines()
    commands = []
    for line in lines:
        if not line.startswith("  ") or line.startswith("  or "):
            continue
        words = shlex.split(line)
        if "versionstore.cli" in words:  # printed as "python -m versionstore.cli ..."
            words = words[words.index("versionstore.cli"):]
        assert Path(words[0]).name in {"versionstore", "versionstore.cli"}, line
        commands.append(words[1:])
    return commands


def test_demo_runs_and_tells_the_story(tmp_path: Path) -> None:
    result = _demo("repo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "log of main:" in out and "heatwave correction" in out
    assert "new_arrays: /climate/mask" in out
    assert "time travel:" in out
    # Relative to where the user is, kept, and said so.
    assert (tmp_path / "repo" / "data.mdb").exists()
    assert f"the demo repository is kept at {tmp_path / 'repo'}" in out
    commands = _explore_commands(out)
    assert [words[0] for words in commands] == ["log", "log", "branch", "tag", "diff", "du",
                                                "verify"]
    for words in commands:
        explored = subprocess.run([sys.executable, "-m", "versionstore.cli", *words],
                                  capture_output=True, text=True, timeout=120, check=False)
        assert explored.returncode == 0, (words, explored.stderr)
        assert explored.stdout.strip(), words
    assert "experiment" in subprocess.run(
        [sys.executable, "-m", "versionstore.cli", *commands[2]], capture_output=True,
        text=True, timeout=120, check=True).stdout


def test_demo_refuses_to_overwrite_a_repository(tmp_path: Path) -> None:
    assert _demo("repo", cwd=tmp_path).returncode == 0
    again = _demo("repo", cwd=tmp_path)
    assert again.returncode == 1
    assert "already holds a repository" in again.stderr and "Traceback" not in again.stderr


def test_demo_without_a_directory_keeps_a_temporary_one(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = _demo(cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    kept = [line.split(" kept at ", 1)[1] for line in result.stdout.splitlines()
            if " kept at " in line]
    assert len(kept) == 1
    repo = Path(kept[0])
    assert repo.is_relative_to(tmp_path) and (repo / "data.mdb").exists()
    assert f"rm -rf {repo}" in result.stdout


def test_scripts_demo_resolves_the_directory_from_the_callers_directory(tmp_path: Path) -> None:
    # A copy of the scripts beside a .venv that is already set up (its python runs
    # this interpreter on this checkout), so the script's own logic is what runs.
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    for name in ("demo", "bootstrap.sh"):
        shutil.copy2(ROOT / "scripts" / name, root / "scripts" / name)
    shutil.copy2(ROOT / "pyproject.toml", root / "pyproject.toml")
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
    python.chmod(0o755)
    digest = hashlib.sha1((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:12]
    (root / ".venv" / f".installed-{digest}-test").touch()
    caller = tmp_path / "somewhere"
    caller.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([str(root / "scripts" / "demo"), "mine"], cwd=caller, env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert (caller / "mine" / "data.mdb").exists()
    assert not (root / "mine").exists()
    assert f"kept at {caller / 'mine'}" in result.stdout


def test_demo_refuses_a_file_or_a_directory_of_other_files_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    (tmp_path / "data.nc").write_text("x")
    for name, message in [("notes", "already holds other files (todo.txt)"),
                          ("data.nc", "is a file, not a directory")]:
        refused = _demo(name, cwd=tmp_path)
        assert refused.returncode == 1
        assert message in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["data.nc", "notes", "todo.txt"]


def test_demo_interrupted_during_an_array_write_ends_with_one_line(tmp_path: Path) -> None:
    """Ctrl-C while zarr writes chunks: its event loop still holds the chunk tasks at exit."""
    # SIGINT to the main thread (as a terminal's Ctrl-C) at the fifth chunk zarr hands over,
    # while the main thread waits for zarr's write of the first array.
    script = textwrap.dedent("""
        import signal, sys, threading
        from versionstore import demo
        from versionstore.session_store import SessionStore

        # A job started in the background inherits SIGINT ignored; a terminal's has it raise.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sets = []
        store_now = SessionStore._store_now

        def interrupting(self, key, value):
            sets.append(key)
            if len(sets) == 5:
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            return store_now(self, key, value)

        SessionStore._store_now = interrupting
        sys.argv = ["versionstore.demo", "repo"]
        demo.main()
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"versionstore.demo: interrupted; the repository is at {tmp_path / 'repo'}"]


def test_demo_interrupted_ends_with_one_line_and_status_130(tmp_path: Path) -> None:
    import signal

    demo = subprocess.Popen(
        [sys.executable, "-m", "versionstore.demo", "repo"], cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A job started in the background inherits SIGINT ignored; a terminal's Ctrl-C
        # reaches a process that has the default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert demo.stdout is not None and demo.stdout.readline()  # it is running
    demo.send_signal(signal.SIGINT)
    _, err = demo.communicate(timeout=300)
    assert demo.returncode == 130, err  # the demo runs for about a second after its first line
    assert err.strip().splitlines() == [
        f"versionstore.demo: interrupted; the repository is at {tmp_path / 'repo'}"]

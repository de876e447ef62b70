from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import versionstore as vs
from versionstore.cli import EXIT_BROKEN_PIPE, main


@pytest.fixture
def repo_path(tmp_path: Path) -> str:
    path = tmp_path / "repo"
    repo = vs.Repository.create(vs.lmdb_storage(path))
    session = repo.writable_session("main")
    session.store.storage.set("a", b"1")
    first = session.commit("first", metadata={"run": 1})
    repo.create_tag("v1", snapshot_id=first)
    repo.create_branch("dev", snapshot_id=first)
    session = repo.writable_session("main")
    session.store.storage.set("b", b"2")
    session.commit("second")
    repo.close()
    return str(path)


def test_log_branches_tags(repo_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["log", repo_path]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split("  ", 2)[2] for line in out] == ["second", 'first  {"run": 1}',
                                                          "Repository initialized"]
    assert main(["log", repo_path, "--tag", "v1", "--limit", "1"]) == 0
    assert "first" in capsys.readouterr().out
    assert main(["branches", repo_path]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["dev", "main"]
    assert main(["tags", repo_path]) == 0
    assert capsys.readouterr().out.startswith("v1  ")


def test_diff_verify_gc_sessions(repo_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", repo_path, "v1", "main"]) == 0
    assert "updated_keys: b" in capsys.readouterr().out
    assert main(["verify", repo_path]) == 0
    assert "0 problem(s)" in capsys.readouterr().out
    assert main(["gc", repo_path, "--dry-run"]) == 0
    assert "would delete 0" in capsys.readouterr().out
    assert main(["sessions", repo_path]) == 0


def test_errors_are_reported_not_raised(tmp_path: Path, repo_path: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["log", str(tmp_path / "missing")]) == 2
    assert "no repository" in capsys.readouterr().err
    assert main(["diff", repo_path, "nope", "main"]) == 2
    assert "not a branch, a tag or a snapshot id" in capsys.readouterr().err


# -- as a real process in a pipe --------------------------------------------------------


def _cli(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "versionstore.cli", *args], text=True,
                          timeout=120, check=False, **kwargs)


def test_version(tmp_path: Path) -> None:
    result = _cli("--version", capture_output=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"versionstore {vs.__version__}"
    assert vs.__version__ and vs.__version__ != "0+unknown"


def test_a_reader_that_goes_away_ends_quietly_like_git(repo_path: str) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line: every write fails
    try:
        result = _cli("log", repo_path, stdout=write_end, stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == EXIT_BROKEN_PIPE == 128 + signal.SIGPIPE


def test_log_piped_to_head(tmp_path: Path) -> None:
    path = tmp_path / "long"
    with vs.Repository.create(path) as repo:
        for number in range(300):
            session = repo.writable_session("main")
            session.store.storage.set("k", str(number).encode())
            session.commit(f"commit {number}")
    command = (f"set -o pipefail; {shlex.quote(sys.executable)} -m versionstore.cli "
               f"log {shlex.quote(str(path))} | head -1")
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.stdout.splitlines()[0].endswith("commit 299")
    assert len(result.stdout.splitlines()) == 1
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
    assert result.stderr == ""
    assert result.returncode in (0, EXIT_BROKEN_PIPE)  # 141 when the reader left first


def test_merge_cherry_pick_revert_squash_ops_log_and_graph(
        repo_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    with vs.Repository.open(vs.lmdb_storage(repo_path)) as repo:
        session = repo.writable_session("dev")
        session.store.storage.set("d", b"dev")
        picked = session.commit("on dev")
        session = repo.writable_session("dev")
        session.store.storage.set("b", b"dev's b")
        session.commit("dev changes b")
        since = repo.lookup_branch("main")
    assert main(["merge", repo_path, "dev"]) == 2
    err = capsys.readouterr().err
    assert "conflicts" in err and "conflict  key  /  b" in err
    assert main(["merge", repo_path, "dev", "--on-conflict", "theirs"]) == 0
    merged = capsys.readouterr().out.strip()
    assert main(["log", repo_path, "--graph"]) == 0
    graph = capsys.readouterr().out.splitlines()
    assert graph[0].startswith("*  " + merged)
    assert graph[1] == "|\\"
    assert graph[2].startswith("| *") and "dev changes b" in graph[2]
    assert "|/" in graph
    assert graph[-1].startswith("*  ") and graph[-1].endswith("Repository initialized")
    assert main(["revert", repo_path, picked, "--message", "no d"]) == 0
    assert main(["cherry-pick", repo_path, picked]) == 0
    assert main(["squash", repo_path, "--since", since, "--message", "all in one"]) == 0
    capsys.readouterr()
    assert main(["log", repo_path, "--limit", "2"]) == 0
    assert [line.split("  ", 2)[2] for line in capsys.readouterr().out.splitlines()] == [
        "all in one", "second"]
    assert main(["ops-log", repo_path, "--limit", "4"]) == 0
    kinds = [line.split("  ")[1] for line in capsys.readouterr().out.splitlines()]
    assert kinds == ["squash", "cherry_pick", "revert", "merge"]
    assert main(["squash", repo_path, "--since", picked]) == 2
    assert "not an earlier snapshot" in capsys.readouterr().err

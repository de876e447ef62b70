from __future__ import annotations

from pathlib import Path

import pytest

import versionstore as vs
from versionstore.cli import main


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

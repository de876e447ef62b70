"""``versionstore clone``, ``push`` and ``fetch`` from the shell."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import versionstore as vs
from versionstore.cli import EXIT_USER_ERROR, main


def _commit(path: Path, message: str, branch: str = "main", **values: bytes) -> str:
    with vs.Repository.open(path) as repo:
        session = repo.writable_session(branch)
        for key, value in values.items():
            session.store.storage.set(key, value)
        return session.commit(message)


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    path = tmp_path / "origin"
    with vs.Repository.create(path) as repo:
        session = repo.writable_session()
        session.store.storage.set("a", b"A" * 3000)
        first = session.commit("first")
        repo.create_tag("v1", first)
        repo.create_branch("dev", first)
    _commit(path, "second", b=b"B" * 3000)
    return path


def test_clone_push_fetch_round_trip(origin: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "mine"
    assert main(["clone", str(origin), f"lmdb://{mine}", "--json"]) == 0
    cloned = json.loads(capsys.readouterr().out)
    assert set(cloned["refs"]) == {"branch/main", "branch/dev", "tag/v1"}
    assert cloned["objects_copied"] > 0
    tip = _commit(mine, "mine", c=b"C" * 3000)
    assert main(["push", str(mine), str(origin)]) == 0
    out = capsys.readouterr().out
    # the chunk, the tree leaf, the history page and the snapshot
    assert f"-> {tip[:12]}" in out and "pushed 4 object(s)" in out
    assert main(["push", str(mine), str(origin)]) == 0
    assert "already up to date" in capsys.readouterr().out
    theirs = _commit(origin, "theirs", branch="dev", d=b"D" * 3000)
    assert main(["fetch", str(mine), str(origin), "--branch", "dev"]) == 0
    assert f"branch/origin/dev  (none) -> {theirs[:12]}" in capsys.readouterr().out
    assert main(["merge", str(mine), "origin/dev", "--into", "main"]) == 0
    merged = capsys.readouterr().out.strip()
    assert main(["push", str(mine), str(origin), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["refs"]["branch/main"]["new"] == merged
    with vs.Repository.open(origin) as repo, vs.Repository.open(mine) as copy:
        assert [i.id for i in repo.ancestry(all_parents=True)] == [
            i.id for i in copy.ancestry(all_parents=True)]
        assert repo.verify().ok


def test_non_fast_forward_push_is_a_user_error_until_forced(
        origin: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "mine"
    assert main(["clone", str(origin), str(mine)]) == 0
    _commit(origin, "theirs", x=b"X" * 3000)
    ours = _commit(mine, "ours", y=b"Y" * 3000)
    capsys.readouterr()
    assert main(["push", str(mine), str(origin)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("versionstore: error: push refused: not a fast-forward")
    assert "Traceback" not in err
    assert main(["push", str(mine), str(origin), "--force"]) == 0
    with vs.Repository.open(origin) as repo:
        assert repo.lookup_branch("main") == ours
    assert main(["push", str(mine), str(origin), "--branch", "dev",
                 "--remote-branch", "review"]) == 0
    with vs.Repository.open(origin) as repo:
        assert "review" in repo.list_branches()


@pytest.mark.parametrize(("args", "message"), [
    (["clone", "{origin}", "{origin}"], "already holds a repository"),
    (["clone", "{tmp}/missing", "{tmp}/x"], "no repository in"),
    (["clone", "{origin}", "{tmp}/x", "--branch", "nope"], "branch 'nope' does not exist"),
    (["clone", "{origin}", "s3:/bucket/x"], "did you mean s3://bucket/x"),
    (["clone", "{origin}", "lmbd://x"], "did you mean lmdb://"),
    (["clone", "{origin}", "{tmp}/x", "--endpoint-url", "http://127.0.0.1:1"],
     "--endpoint-url applies only to s3://"),
    (["push", "{origin}", "memory://"], "inside one Python process"),
    (["push", "{origin}", "{tmp}/missing"], "no repository in"),
    (["push", "{origin}", "{origin}", "--branch", "nope"], "branch 'nope' does not exist"),
    (["fetch", "{origin}", "{origin}", "--into", "bad..name"], "invalid ref name"),
])
def test_bad_input_is_one_line_and_status_1(args: list[str], message: str, origin: Path,
                                            tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.format(origin=origin, tmp=tmp_path) for a in args]
    assert main(argv) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists() or not vs.Repository.exists(tmp_path / "x")


def test_commands_are_listed_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    listing = capsys.readouterr().out
    for command in ("clone", "push", "fetch"):
        assert command in listing
        assert main([command, "--help"]) == 0
        usage = capsys.readouterr().out
        assert f"Example: versionstore {command}" in usage
        assert "--endpoint-url" in usage and "--anonymous" in usage

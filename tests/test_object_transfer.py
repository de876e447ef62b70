"""Push, fetch and clone with a repository on S3 (moto behind the serialising proxy).

The transfers are written against the backend protocol only, so the same
round trips as ``test_transfer`` (LMDB <-> memory) must hold with object
storage on either side: LMDB -> S3 -> LMDB keeps history, tags, the ops log
and content; a push that is not a fast-forward is refused; the CLI takes
``s3://`` URLs with ``--endpoint-url``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from object_repo_support import BUCKET, S3Repos, aws_env_fixture, s3_fixture, s3_repos_fixture
from test_transfer import _assert_same, _big, _commit, _history_repo

import versionstore as vs
from versionstore.cli import main

__all__ = ["aws_env_fixture", "s3_fixture", "s3_repos_fixture"]


def test_clone_lmdb_to_s3_to_lmdb_keeps_everything(s3_repos: S3Repos, tmp_path: Path) -> None:
    source = _history_repo(vs.lmdb_storage(tmp_path / "a"))
    remote_storage = s3_repos.storage()
    first = vs.copy_repository(source.storage, remote_storage, progress=False)
    assert first.objects_copied > 0
    remote = vs.Repository.open(remote_storage)
    _assert_same(source, remote)
    vs.copy_repository(remote_storage, vs.lmdb_storage(tmp_path / "c"), progress=False)
    _assert_same(source, vs.Repository.open(vs.lmdb_storage(tmp_path / "c")))


def test_push_and_fetch_with_a_remote_on_s3(s3_repos: S3Repos, tmp_path: Path) -> None:
    local = _history_repo(vs.lmdb_storage(tmp_path / "local"))
    remote_storage = s3_repos.storage()
    vs.copy_repository(local.storage, remote_storage, progress=False)
    remote = vs.Repository.open(remote_storage)

    tip = _commit(local, message="new", n=_big("n"))
    summary = local.push(remote, progress=False)
    assert summary.objects_copied > 0 and remote.lookup_branch("main") == tip
    assert local.push(remote, progress=False).objects_copied == 0  # nothing left to copy

    theirs = _commit(remote, message="on the remote", t=_big("t"))
    ours = _commit(local, message="ours", o=_big("o"))
    with pytest.raises(vs.NonFastForwardError):
        local.push(remote, progress=False)
    assert remote.lookup_branch("main") == theirs
    local.fetch(remote, progress=False)
    assert local.lookup_branch("origin/main") == theirs
    local.merge("origin/main", "main")
    local.push(remote, progress=False)
    assert remote.lookup_branch("main") == local.lookup_branch("main") != ours
    assert remote.verify().ok


def test_cli_clone_to_an_s3_url(s3_repos: S3Repos, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    source = _history_repo(vs.lmdb_storage(tmp_path / "a"))
    source.close()
    prefix = f"cli-{tmp_path.name}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    code = main([
        "clone", str(tmp_path / "a"), f"s3://{BUCKET}/{prefix}",
        "--endpoint-url", s3_repos.proxy.endpoint, "--allow-http", "--region", "us-east-1",
        "--json"])
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["objects_copied"] > 0
    remote = vs.Repository.open(s3_repos.storage(prefix=prefix))
    _assert_same(vs.Repository.open(vs.lmdb_storage(tmp_path / "a")), remote)

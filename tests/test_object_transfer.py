"""Push, fetch and clone with a repository on S3 (moto behind the serialising proxy).

The transfers are written against the backend protocol only, so the same
round trips as ``test_transfer`` (LMDB <-> memory) must hold with object
storage on either side: LMDB -> S3 -> LMDB keeps history, tags, the ops log
and content; a push that is not a fast-forward is refused; the CLI takes
``s3://`` URLs with ``--endpoint-url``; a clone or push into S3 SIGKILLed in
the middle resumes, storing only the objects that had not landed.
"""

from __future__ import annotations

import json
import pickle
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest
from object_repo_support import BUCKET, S3Repos, aws_env_fixture, s3_fixture, s3_repos_fixture
from test_transfer import _assert_same, _big, _commit, _history_repo, _many_chunks, _run_killed

import versionstore as vs
from versionstore.cli import main
from versionstore.cloud import ObjectStorage

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


# -- interrupted copies into S3 ------------------------------------------------------------


def _object_puts(s3_repos: S3Repos, prefix: str) -> set[str]:
    """The ``objects/`` paths under ``prefix`` that were ``PUT`` since the counts were reset."""
    marker = f"/{BUCKET}/{prefix}/objects/"
    return {path.split(marker, 1)[1] for path in s3_repos.proxy.requests
            if path.startswith("PUT ") and marker in path}


def _stored_ids(storage: ObjectStorage) -> set[str]:
    backend = storage.open_backend()
    try:
        return {bytes(i).hex() for i in backend.iter_object_ids()}
    finally:
        backend.close()


def _run_killed_with(storage: ObjectStorage, tmp_path: Path, code: str
                     ) -> subprocess.CompletedProcess[str]:
    """``_run_killed(code)`` with ``remote`` bound to (a pickled copy of) ``storage``."""
    pickled = tmp_path / "remote.pickle"
    pickled.write_bytes(pickle.dumps(storage))
    bind = f"import pickle\nremote = pickle.loads(open({str(pickled)!r}, 'rb').read())\n"
    return _run_killed(bind + textwrap.dedent(code))


def test_killed_clone_into_s3_resumes_without_copying_twice(s3_repos: S3Repos,
                                                            tmp_path: Path) -> None:
    source = _many_chunks(tmp_path / "src", 300)
    source.close()
    target = s3_repos.storage()
    result = _run_killed_with(target, tmp_path, f"""
        vs.copy_repository({str(tmp_path / 'src')!r}, remote, progress=die_after(150))
    """)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert not vs.Repository.exists(target)  # no ref yet: nothing a reader could open
    landed = _stored_ids(target)
    assert landed and len(landed) < 300
    s3_repos.proxy.reset_counts()
    resumed = vs.copy_repository(vs.lmdb_storage(tmp_path / "src"), target, progress=False)
    put = _object_puts(s3_repos, target.prefix)
    assert put.isdisjoint(landed)  # nothing that landed is stored again
    assert len(put) == resumed.objects_copied == len(_stored_ids(target)) - len(landed)
    assert max(n for path, n in s3_repos.proxy.requests.items() if "/objects/" in path
               and path.startswith("PUT ")) == 1
    copy = vs.Repository.open(target)
    _assert_same(vs.Repository.open(vs.lmdb_storage(tmp_path / "src")), copy)
    assert copy.verify().ok


def test_killed_push_into_s3_resumes_and_the_remote_ref_never_dangles(
        s3_repos: S3Repos, tmp_path: Path) -> None:
    local = _many_chunks(tmp_path / "local", 10)
    target = s3_repos.storage()
    remote = vs.Repository.create(target)
    local.push(remote, progress=False, force=True)
    before = remote.lookup_branch("main")
    session = local.writable_session("main")
    for i in range(200):
        session.store.storage.set(f"n/{i}", _big(f"n{i:03d}"))
    tip = session.commit("more")
    local.close()
    result = _run_killed_with(target, tmp_path, f"""
        local = vs.Repository.open({str(tmp_path / 'local')!r})
        local.push(vs.Repository.open(remote), progress=die_after(80))
    """)
    assert result.returncode == -signal.SIGKILL, result.stderr
    remote = vs.Repository.open(s3_repos.storage(target.prefix))  # as another machine
    assert remote.lookup_branch("main") == before
    assert remote.verify().ok
    landed = _stored_ids(target)
    s3_repos.proxy.reset_counts()
    local = vs.Repository.open(vs.lmdb_storage(tmp_path / "local"))
    summary = local.push(remote, progress=False)
    assert remote.lookup_branch("main") == tip
    put = _object_puts(s3_repos, target.prefix)
    assert put.isdisjoint(landed)
    assert len(put) == summary.objects_copied == len(_stored_ids(target)) - len(landed)
    assert summary.objects_copied < 200
    _assert_same(local, remote, ops=False)

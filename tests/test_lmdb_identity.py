"""A copy opens only its own LMDB environment (adversarial find: a pickled copy wrote elsewhere).

A session, repository, backend or ``LMDBStore`` travels to another process by
path, and a forked child reopens the environment it inherited by path too.
If the directory was removed and made again, or another environment moved
into its place, the copy used to open whatever was there and stage, commit
or write into it. Each environment now has an identity (its directory, and
a random id a repository keeps in its main database), taken at the first
open, carried by pickles and compared at every reopen. Children are real
processes: ``spawn`` (unpickled copies) and ``fork`` (inherited objects).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
from pathlib import Path
from typing import Any

import environment_workers as workers
import lmdb
import pytest

import versionstore as vs
from versionstore.backend import LMDBBackend
from zarrstore import LMDBStorage
from zarrstore.errors import StorageReplacedError

WAIT = 120
HOWS = ["made again", "moved in"]


def _in_spawned(target: Any, *args: Any) -> Any:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(target, args)


def _in_forked(target: Any, *args: Any) -> Any:
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=workers.run_in_queue, args=(queue, target, *args))
    process.start()
    try:
        status, result = queue.get(timeout=WAIT)
    finally:
        process.join(WAIT)
    assert status == "ok", result
    return result


def _untouched(path: Path, snapshot: str) -> None:
    """The repository now at ``path`` holds only what it was made with."""
    with vs.Repository.open(vs.lmdb_storage(path)) as repo:
        assert repo.lookup_branch("main") == snapshot
        assert repo.list_branches() == {"main"}
        assert repo.backend.list_refs("stage/") == {}
        assert repo.resumable_sessions() == {}
        assert [i.message for i in repo.ancestry(branch="main")] == [
            "write other", "Repository initialized"]


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("kind", ["session", "repository", "backend"])
def test_a_pickled_copy_refuses_another_repository_at_its_path(
        tmp_path: Path, kind: str, how: str) -> None:
    path = tmp_path / "repo"
    repo = vs.Repository.create(vs.lmdb_storage(path))
    workers.commit_keys(repo, ["mine"])
    original: Any = {"session": repo.writable_session("main"), "repository": repo,
                     "backend": repo.backend}[kind]
    blob = pickle.dumps(original)
    repo.close()
    del original, repo
    snapshot = _in_spawned(workers.replace_repository, str(path), how)
    assert _in_spawned(workers.write_through, blob) == "RepositoryReplacedError"
    with pytest.raises(vs.RepositoryReplacedError, match="not the one this object"):
        pickle.loads(blob)
    _untouched(path, snapshot)


@pytest.mark.parametrize("how", HOWS)
def test_a_forked_child_refuses_another_repository_at_its_path(tmp_path: Path, how: str) -> None:
    path = tmp_path / "repo"
    repo = vs.Repository.create(vs.lmdb_storage(path))
    session = repo.writable_session("main")
    session.store.storage.set("staged", b"before")  # the parent has its environment open
    snapshot = _in_spawned(workers.replace_repository, str(path), how)
    workers.INHERITED_COPY = session
    try:
        assert _in_forked(workers.write_through_inherited) == "RepositoryReplacedError"
    finally:
        workers.INHERITED_COPY = None
    # The fork closed the parent's environment too: it reopens, and refuses as well.
    with pytest.raises(vs.RepositoryReplacedError):
        session.store.storage.set("staged", b"after")
    repo.close()
    _untouched(path, snapshot)


def test_copies_of_an_unchanged_repository_open_it_after_compaction_too(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    with vs.Repository.create(vs.lmdb_storage(path)) as repo:
        blob = pickle.dumps(repo.writable_session("main"))
        repo.compact()  # a new data.mdb renamed in: the same repository
    assert _in_spawned(workers.write_through, blob) == "wrote"
    with vs.Repository.open(vs.lmdb_storage(path)) as repo:
        assert [i.message for i in repo.ancestry(branch="main")][0] == "through the copy"
        workers.INHERITED_COPY = repo.writable_session("main")
        try:
            assert _in_forked(workers.write_through_inherited) == "wrote"
        finally:
            workers.INHERITED_COPY = None


def test_a_repository_of_an_older_release_gets_its_id_when_first_opened_writable(
        tmp_path: Path) -> None:
    path = tmp_path / "repo"
    vs.Repository.create(vs.lmdb_storage(path)).close()
    env = lmdb.open(str(path), max_dbs=4)
    with env.begin(write=True) as txn:
        assert txn.pop(b"repository-id") is not None  # as an older release left it
    env.close()
    with vs.Repository.open(vs.lmdb_storage(path, read_only=True)) as repo:
        assert repo.backend.identity.token is None  # read-only: nothing written
        blob = pickle.dumps(repo)
    with vs.Repository.open(vs.lmdb_storage(path)) as repo:
        token = repo.backend.identity.token
        assert token is not None and len(token) == 16
    # The read-only copy still opens its repository, which has its id now (it is
    # read-only: writing through it is refused as such, not as another repository).
    assert _in_spawned(workers.write_through, blob) == "ReadOnlyRepositoryError"
    assert _in_spawned(workers.read_through, blob) == "Repository initialized"
    with vs.Repository.open(vs.lmdb_storage(path)) as repo:
        assert repo.backend.identity.token == token  # kept
        assert _in_spawned(workers.write_through, pickle.dumps(repo)) == "wrote"


def test_a_backend_given_an_identity_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    with vs.Repository.create(vs.lmdb_storage(path)) as repo:
        identity = repo.backend.identity
    os.rename(path, tmp_path / "elsewhere")
    with pytest.raises(vs.RepositoryReplacedError):
        LMDBBackend(path, identity=identity)
    assert not path.exists()


def test_a_pickled_store_refuses_another_environment_moved_into_its_directory(
        tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    storage = LMDBStorage(path)
    storage.set("mine", b"1")
    blob = pickle.dumps(storage)
    workers.INHERITED_COPY = storage
    _in_spawned(workers.replace_store, path)
    try:
        assert _in_forked(workers.write_through_inherited) == "StorageReplacedError"
    finally:
        workers.INHERITED_COPY = None
    assert _in_spawned(workers.write_through, blob) == "StorageReplacedError"
    storage.close()
    assert sorted(LMDBStorage(path).list()) == ["other"]


def _older_release(path: Path) -> None:
    """Make a repository at ``path`` as an older release left it: without its id."""
    vs.Repository.create(vs.lmdb_storage(path)).close()
    env = lmdb.open(str(path), max_dbs=4)
    with env.begin(write=True) as txn:
        assert txn.pop(b"repository-id") is not None
    env.close()


def test_a_read_only_repository_of_an_older_release_survives_another_process_giving_its_id(
        tmp_path: Path) -> None:
    # Adversarial find: a process reading an older repository (opened read-only, so
    # without its id) took another process's first writable open, which gives the id,
    # for a replaced repository: after a fork its own repository raised
    # RepositoryReplacedError, and so did every pickled copy of its sessions.
    path = tmp_path / "repo"
    _older_release(path)
    with vs.Repository.open(vs.lmdb_storage(path, read_only=True)) as repo:
        session = repo.readonly_session("main")
        blob = pickle.dumps(session)
        assert _in_spawned(workers.read_through, blob) == "Repository initialized"
        _in_spawned(workers.pickled_writable_session, str(path))  # gives the id
        workers.INHERITED_COPY = session
        try:
            assert _in_forked(workers.read_through_inherited) == "Repository initialized"
        finally:
            workers.INHERITED_COPY = None
        # The fork closed this process's environment: it reopens the same repository.
        assert workers.read_through(session) == "Repository initialized"
        assert repo.backend.identity.token is not None  # learned
        assert _in_spawned(workers.read_through, blob) == "Repository initialized"


def test_a_copy_with_the_id_opens_an_older_repository_this_process_reads_without_it(
        tmp_path: Path) -> None:
    # The other way round: this process has the repository open read-only from
    # before it had an id, and receives a copy pinned to the id given since.
    path = tmp_path / "repo"
    _older_release(path)
    with vs.Repository.open(vs.lmdb_storage(path, read_only=True)) as repo:
        assert repo.backend.identity.token is None
        blob = _in_spawned(workers.pickled_writable_session, str(path))
        assert workers.write_through(blob) == "wrote"
        assert repo.backend.identity.token is not None
    with vs.Repository.open(vs.lmdb_storage(path)) as repo:
        assert next(iter(repo.ancestry(branch="main"))).message == "through the copy"


@pytest.mark.parametrize("how", HOWS)
def test_a_repository_open_here_refuses_to_write_once_another_process_replaces_it(
        tmp_path: Path, how: str) -> None:
    # Adversarial find: a process holding its repository open while another removed the
    # directory (and made a repository there again) kept staging and committing into
    # the deleted files; commit returned a snapshot id for data no one could read.
    path = tmp_path / "repo"
    repo = vs.Repository.create(vs.lmdb_storage(path))
    workers.commit_keys(repo, ["mine"])
    session = repo.writable_session("main")
    session.store.storage.set("staged", b"before")
    snapshot = _in_spawned(workers.replace_repository, str(path), how)
    with pytest.raises(vs.RepositoryReplacedError, match="removed"):
        session.store.storage.set("staged", b"after")
    with pytest.raises(vs.RepositoryReplacedError):
        session.commit("into deleted files")
    with pytest.raises(vs.RepositoryReplacedError):
        repo.create_branch("other", repo.lookup_branch("main"))
    # Reads of what this process had open still work: the deleted files stay mapped.
    assert session.store.storage.get("staged") == b"before"
    repo.close()
    _untouched(path, snapshot)


def test_a_store_open_here_refuses_to_write_once_another_process_removes_its_directory(
        tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    storage = LMDBStorage(path)
    storage.set("mine", b"1")
    _in_spawned(workers.replace_store, path)
    with pytest.raises(StorageReplacedError):
        storage.set("mine", b"2")
    storage.close()
    assert sorted(LMDBStorage(path).list()) == ["other"]

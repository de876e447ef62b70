"""Code that runs in child processes for ``test_lmdb_environment.py`` and ``test_lmdb_store.py``.

Unlike ``process_workers`` (spawn only), these run in children made by
``fork`` as well: the point of those tests is that a repository or store the
parent holds open keeps working in a forked child and in the parent after it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import versionstore as vs

#: Set by the parent before it forks, so a forked child uses the *inherited* object.
INHERITED: vs.Repository | None = None


def commit_keys(repo: vs.Repository, keys: list[str]) -> list[str]:
    """One commit per key on ``main``, each writing ``key = key``; the snapshot ids."""
    snapshots = []
    for key in keys:
        session = repo.writable_session("main")
        session.store.storage.set(key, key.encode())
        snapshots.append(session.commit(f"write {key}"))
    return snapshots


def commit_with_inherited(keys: list[str]) -> list[str]:
    """Commit through the Repository object the parent opened before forking."""
    assert INHERITED is not None, "only meaningful in a forked child"
    return commit_keys(INHERITED, keys)


def commit_with_open(path: str, keys: list[str]) -> list[str]:
    """Open the repository in this process (while the parent holds it open) and commit."""
    repo = vs.Repository.open(vs.lmdb_storage(path))
    try:
        return commit_keys(repo, keys)
    finally:
        repo.close()


def commit_session(session: vs.Session, key: str) -> str:
    """Stage ``key`` through a session pickled in the parent, and commit it here."""
    session.store.storage.set(key, key.encode())
    return session.commit(f"write {key}")


def run_in_queue(queue: Any, target: Any, *args: Any) -> None:
    """Run ``target(*args)`` and put ``("ok", result)`` or ``("error", text)`` on ``queue``."""
    import traceback

    try:
        queue.put(("ok", target(*args)))
    except BaseException:  # noqa: BLE001 - every failure must reach the parent
        queue.put(("error", traceback.format_exc()))


def grow_while_other_reads(path: str, rounds: int, size: int) -> int:
    """Commit ``rounds`` values of ``size`` random bytes each; the map size at the end."""
    repo = vs.Repository.open(vs.lmdb_storage(path))
    for n in range(rounds):
        session = repo.writable_session("main")
        session.store.storage.set(f"big/{n}", os.urandom(size))
        session.commit(f"big {n}")
    backend = repo.backend
    assert isinstance(backend, vs.backend.LMDBBackend)
    grown = backend._handle.map_size()
    repo.close()
    return grown


#: Set by the parent before it forks: a session (or store) the forked child uses inherited.
INHERITED_COPY: Any = None


def replace_repository(path: str, how: str) -> str:
    """Put another repository at ``path`` (with one commit); its ``main`` snapshot.

    ``how``: ``"made again"`` removes the directory and creates a repository
    there (ext4 gives it the inode numbers just freed); ``"moved in"`` creates
    one beside it and renames it into the place.
    """
    import shutil

    made = path if how == "made again" else path + ".new"
    if how == "made again":
        shutil.rmtree(path)
    with vs.Repository.create(vs.lmdb_storage(made)) as other:
        commit_keys(other, ["other"])
    if how != "made again":
        shutil.rmtree(path)
        os.rename(made, path)
    with vs.Repository.open(vs.lmdb_storage(path)) as other:
        return other.lookup_branch("main")


def replace_store(path: str) -> None:
    """Put another LMDB environment (holding ``other = 1``) into the directory ``path``."""
    import shutil

    from zarrstore import LMDBStorage

    storage = LMDBStorage(path + ".new")
    storage.set("other", b"1")
    storage.close()
    shutil.rmtree(path)
    os.rename(path + ".new", path)


def write_through(copy: Any) -> str:
    """Write through a copy (a session, repository, backend or store); what happened.

    ``"wrote"``, or the class name of the error raised, unpickling included
    (``copy`` may be the pickled bytes).
    """
    import pickle

    try:
        if isinstance(copy, bytes):
            copy = pickle.loads(copy)
        if isinstance(copy, vs.Session):
            copy.store.storage.set("copy", str(os.getpid()).encode())
            copy.commit("through the copy")
        elif isinstance(copy, vs.Repository):
            commit_keys(copy, ["copy"])
        elif isinstance(copy, vs.backend.LMDBBackend):
            copy.put_objects([], {"branch/copy": b"x"})
        else:
            copy.set("copy", b"v")
    except Exception as exc:  # noqa: BLE001 - the parent checks which
        return type(exc).__name__
    return "wrote"


def read_through(copy: Any) -> str:
    """``main``'s newest message read through a copy (session or repository), or the error."""
    import pickle

    try:
        if isinstance(copy, bytes):
            copy = pickle.loads(copy)
        repo = copy if isinstance(copy, vs.Repository) else copy._repo
        return next(iter(repo.ancestry(branch="main"))).message
    except Exception as exc:  # noqa: BLE001 - the parent checks which
        return type(exc).__name__


def read_through_inherited() -> str:
    """``read_through`` the object the parent set in ``INHERITED_COPY`` before forking."""
    return read_through(INHERITED_COPY)


def pickled_writable_session(path: str) -> bytes:
    """Open ``path`` writable (an older repository gets its id) and pickle a session of it."""
    import pickle

    with vs.Repository.open(vs.lmdb_storage(path)) as repo:
        return pickle.dumps(repo.writable_session("main"))


def write_through_inherited() -> str:
    """``write_through`` the object the parent set in ``INHERITED_COPY`` before forking."""
    return write_through(INHERITED_COPY)


if __name__ == "__main__":  # pragma: no cover - a helper for manual runs
    print(commit_with_open(sys.argv[1], sys.argv[2:]))

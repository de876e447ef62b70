"""Push, fetch and clone between repositories (``versionstore.transfer``, ``versionstore.clone``).

Every storage pair the engine has runs here — LMDB to memory and back —
through the same backend protocol an object store implements. Interrupted
copies are real: a child process is SIGKILLed in the middle of one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import versionstore as vs
from versionstore.backend.memory import MemoryBackend
from versionstore.backend.protocol import WriteBatch
from versionstore.codec import (
    KIND_BRANCH,
    KIND_HISTORY,
    KIND_LEAF,
    KIND_SNAPSHOT,
    decode_history_page,
    decode_node,
    decode_snapshot,
    frame_kind,
)
from versionstore.ids import ObjectId, object_id_from_text
from versionstore.records import Branch, ChunkRef, Leaf
from versionstore.storage import InMemoryStorage

SRC = Path(__file__).resolve().parents[1] / "src"


def _storage(kind: str, path: Path) -> Any:
    return vs.in_memory_storage() if kind == "memory" else vs.lmdb_storage(path)


def _commit(repo: vs.Repository, branch: str = "main", message: str = "c",
            **values: bytes) -> str:
    session = repo.writable_session(branch)
    for key, value in values.items():
        session.store.storage.set(key, value)
    return session.commit(message)


def _big(tag: str, n: int = 1) -> bytes:
    """A value too large to live inline: stored as its own chunk object."""
    return (tag.encode() * 2000)[: 1500 * n]


def _history_repo(storage: Any) -> vs.Repository:
    """Branches, a merge, tags (one deleted), chunk objects and inline values."""
    repo = vs.Repository.create(storage)
    first = _commit(repo, message="first", a=_big("a"), small=b"s")
    repo.create_tag("v1", first)
    repo.create_branch("dev", first)
    _commit(repo, "dev", message="dev work", d=_big("d"))
    _commit(repo, message="main work", m=_big("m"))
    repo.merge("dev", "main")
    repo.create_tag("gone", first)
    repo.delete_tag("gone")
    repo.create_branch("old", first)
    _commit(repo, "old", message="old work", o=_big("o"))
    return repo


def _contents(repo: vs.Repository, snapshot_id: str) -> dict[str, bytes | None]:
    storage = repo.readonly_session(snapshot_id=snapshot_id).store.storage
    return {key: storage.get(key) for key in storage.list_prefix("")}


def _assert_same(a: vs.Repository, b: vs.Repository, *, ops: bool = True,
                 branches: set[str] | None = None) -> None:
    if branches is None:
        assert a.list_branches() == b.list_branches()
    assert a.list_tags() == b.list_tags()
    for name in branches or a.list_branches():
        assert a.lookup_branch(name) == b.lookup_branch(name)
        history = list(a.ancestry(branch=name, all_parents=True))
        assert history == list(b.ancestry(branch=name, all_parents=True))
        for info in history:
            assert _contents(a, info.id) == _contents(b, info.id)
    for name in a.list_tags():
        assert a.lookup_tag(name) == b.lookup_tag(name)
    if ops:
        assert list(a.ops_log()) == list(b.ops_log())
    assert b.verify().ok, b.verify().problems


def _references(object_id: ObjectId, data: bytes,
                grafts: dict[ObjectId, tuple[ObjectId, ...]]) -> list[ObjectId]:
    """The objects a stored object names (what must be stored before it).

    A snapshot's parents are those its graft names, if the target has one:
    so a grafted snapshot written before its graft fails the check.
    """
    kind = frame_kind(data)
    if kind == KIND_SNAPSHOT:
        snapshot = decode_snapshot("", data)
        return [*grafts.get(object_id, snapshot.parents),
                *(i for i in (snapshot.tree, snapshot.history) if i is not None)]
    if kind == KIND_HISTORY:
        page = decode_history_page("", data)
        return [] if page.previous is None else [page.previous]
    if kind in (KIND_LEAF, KIND_BRANCH):
        node = decode_node("", data)
        if isinstance(node, Branch):
            return list(node.children)
        assert isinstance(node, Leaf)
        return [e.chunk_id for e in node.entries if isinstance(e, ChunkRef)]
    return []


class _ClosureCheckingBackend(MemoryBackend):
    """A memory backend that fails any batch writing an object before what it references."""

    def __init__(self) -> None:
        super().__init__()
        self.batches = 0

    def write(self, batch: WriteBatch) -> bool:
        from versionstore.grafts import grafts_from_refs

        grafts = grafts_from_refs(self.list_refs("graft/"))
        for object_id, data in batch.objects:
            wanted = _references(object_id, data, grafts)
            assert all(self.has_objects(wanted)), f"{object_id!r} written before its references"
        self.batches += 1
        return super().write(batch)


# -- clone ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("first", "second"), [("lmdb", "memory"), ("memory", "lmdb")])
def test_clone_round_trip_keeps_history_tags_ops_and_content(
        tmp_path: Path, first: str, second: str) -> None:
    source = _history_repo(_storage(first, tmp_path / "a"))
    middle, last = _storage(second, tmp_path / "b"), _storage(first, tmp_path / "c")
    summary = vs.copy_repository(source.storage, middle, progress=False)
    assert summary.objects_copied > 0
    assert summary.refs["branch/main"] == (None, source.lookup_branch("main"))
    assert set(summary.refs) == {"branch/main", "branch/dev", "branch/old", "tag/v1", "tag/gone"}
    vs.copy_repository(middle, last, progress=False)
    clone = vs.Repository.open(last)
    _assert_same(source, clone)
    with pytest.raises(vs.ImmutableTagError):  # the deleted tag's tombstone came along
        clone.create_tag("gone", clone.lookup_branch("main"))


def test_clone_writes_every_object_after_what_it_references() -> None:
    source = _history_repo(vs.in_memory_storage())
    target = _ClosureCheckingBackend()
    summary = vs.copy_repository(source.storage, InMemoryStorage(target), progress=False)
    assert target.batches > 1
    assert summary.objects_copied == len(list(target.iter_object_ids()))
    _assert_same(source, vs.Repository.open(InMemoryStorage(target)))


def test_clone_of_chosen_branches_and_tags(tmp_path: Path) -> None:
    source = _history_repo(vs.lmdb_storage(tmp_path / "a"))
    dev_only = _commit(source, "dev", message="after the merge", late=_big("L"))
    clone_storage = vs.in_memory_storage()
    vs.copy_repository(source.storage, clone_storage, branches=["old"], tags=["v1"],
                       progress=False)
    clone = vs.Repository.open(clone_storage)
    assert clone.list_branches() == {"main", "old"}  # main always comes along
    assert clone.list_tags() == {"v1"}
    assert {e.name for e in clone.ops_log()} == {"main", "old", "v1"}
    assert [e for e in source.ops_log() if e.name in {"main", "old", "v1"}] == list(
        clone.ops_log())
    assert clone.verify().ok
    for name in ("main", "old"):
        assert list(clone.ancestry(branch=name, all_parents=True)) == list(
            source.ancestry(branch=name, all_parents=True))
    # Only what those refs reach: dev's newest snapshot and its chunk stayed behind.
    assert clone.backend.has_objects([object_id_from_text(dev_only)]) == [False]
    assert clone.backend.has_objects(list(source.backend.iter_object_ids())).count(False) >= 2


def test_clone_follows_grafts_of_expired_history(tmp_path: Path) -> None:
    source = vs.Repository.create(vs.lmdb_storage(tmp_path / "a"))
    _commit(source, message="one", a=_big("1"))
    _commit(source, message="two", a=_big("2"))
    cutoff = datetime.now(UTC)
    _commit(source, message="three", a=_big("3"))
    _commit(source, message="four", a=_big("4"))
    assert source.expire_snapshots(cutoff)
    source.garbage_collect()
    clone_storage = InMemoryStorage(_ClosureCheckingBackend())
    vs.copy_repository(source.storage, clone_storage, progress=False)
    clone = vs.Repository.open(clone_storage)
    _assert_same(source, clone)
    assert [i.message for i in clone.ancestry()] == ["four", "three", "Repository initialized"]


def test_clone_refuses_an_existing_repository_and_a_missing_source(tmp_path: Path) -> None:
    source = _history_repo(vs.lmdb_storage(tmp_path / "a"))
    other = vs.Repository.create(vs.lmdb_storage(tmp_path / "b"))
    with pytest.raises(vs.RepositoryExistsError, match="push to it or fetch"):
        vs.copy_repository(source.storage, other.storage, progress=False)
    with pytest.raises(vs.RepositoryNotFoundError):
        vs.copy_repository(tmp_path / "nothing", tmp_path / "c", progress=False)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(vs.RepositoryExistsError, match="other files"):
        vs.copy_repository(source.storage, tmp_path / "d", progress=False)


def test_clone_bad_arguments_copy_nothing(tmp_path: Path) -> None:
    source = _history_repo(vs.in_memory_storage())
    target = vs.in_memory_storage()
    with pytest.raises(vs.BranchNotFoundError, match="nothing was copied"):
        vs.copy_repository(source.storage, target, branches=["nope"], progress=False)
    with pytest.raises(vs.TagNotFoundError):
        vs.copy_repository(source.storage, target, tags=["gone"], progress=False)
    with pytest.raises(TypeError, match="list of names"):
        vs.copy_repository(source.storage, target, branches="main", progress=False)
    with pytest.raises(vs.InvalidRefNameError):
        vs.copy_repository(source.storage, target, branches=["../x"], progress=False)
    with pytest.raises(TypeError, match="progress"):
        vs.copy_repository(source.storage, target, progress="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="target must be a repository storage"):
        vs.copy_repository(source.storage, 42)  # type: ignore[arg-type]
    assert list(target.backend.iter_object_ids()) == []
    assert not vs.Repository.exists(target)


def test_progress_callback_counts_every_object() -> None:
    source = _history_repo(vs.in_memory_storage())
    seen: list[tuple[str, int, int]] = []
    summary = vs.copy_repository(source.storage, vs.in_memory_storage(),
                                 progress=lambda *event: seen.append(event))
    assert seen and seen[-1] == ("copying objects", summary.objects_copied,
                                 summary.objects_copied)
    assert [done for _, done, _ in seen] == sorted(done for _, done, _ in seen)


def test_corrupt_source_object_is_refused_before_any_ref_moves() -> None:
    source = _history_repo(vs.in_memory_storage())
    remote_storage = vs.in_memory_storage()
    remote = vs.Repository.create(remote_storage)
    tip = _commit(source, message="new", big=_big("z"))
    chunk = next(i for i in source.backend.iter_object_ids()
                 if frame_kind(source.backend.get_objects([i])[0] or b"") == 1)
    backend = source.backend
    assert isinstance(backend, MemoryBackend)
    data = bytearray(backend._objects[chunk])
    data[-1] ^= 0xFF
    backend._objects[chunk] = bytes(data)
    before = remote.lookup_branch("main")
    with pytest.raises(vs.CorruptObjectError):
        source.push(remote, "main", "copy", progress=False)
    assert "copy" not in remote.list_branches() and remote.lookup_branch("main") == before
    assert tip not in {i.id for i in remote.ancestry()}


# -- push and fetch ----------------------------------------------------------------------


@pytest.fixture(params=["lmdb-memory", "memory-lmdb", "lmdb-lmdb"])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[vs.Repository, vs.Repository]:
    """A repository with history, and a clone of it on another (or the same kind of) storage."""
    local_kind, remote_kind = request.param.split("-")
    local = _history_repo(_storage(local_kind, tmp_path / "local"))
    remote_storage = _storage(remote_kind, tmp_path / "remote")
    vs.copy_repository(local.storage, remote_storage, progress=False)
    return local, vs.Repository.open(remote_storage)


def test_push_copies_only_what_the_remote_lacks(pair: tuple[vs.Repository, vs.Repository]
                                                ) -> None:
    local, remote = pair
    before = set(remote.backend.iter_object_ids())
    tip = _commit(local, message="new", n=_big("n"), big=_big("b", 3))
    summary = local.push(remote, progress=False)
    added = set(remote.backend.iter_object_ids()) - before
    assert summary.objects_copied == len(added) > 0
    assert added <= set(local.backend.iter_object_ids())
    assert summary.refs == {"branch/main": (local.ancestry().__next__().parent_id, tip)}
    assert remote.lookup_branch("main") == tip
    again = local.push(remote, progress=False)
    assert (again.objects_copied, again.refs) == (0, {})
    entry = next(remote.ops_log())
    assert (entry.kind, entry.name, entry.new) == ("push", "main", tip)
    _assert_same(local, remote, ops=False)


def test_push_to_another_branch_name_and_a_new_branch(
        pair: tuple[vs.Repository, vs.Repository]) -> None:
    local, remote = pair
    tip = _commit(local, "dev", message="dev again", x=_big("x"))
    local.push(remote, "dev", "review/dev", progress=False)
    assert remote.lookup_branch("review/dev") == tip
    assert remote.lookup_branch("dev") != tip
    assert [i.id for i in remote.ancestry(branch="review/dev")] == [
        i.id for i in local.ancestry(branch="dev")]
    assert remote.verify().ok


def test_non_fast_forward_push_is_refused_then_forced(
        pair: tuple[vs.Repository, vs.Repository]) -> None:
    local, remote = pair
    theirs = _commit(remote, message="someone else", t=_big("t"))
    ours = _commit(local, message="ours", o2=_big("u"))
    with pytest.raises(vs.NonFastForwardError, match="fetch and merge first") as caught:
        local.push(remote, progress=False)
    assert (caught.value.branch, caught.value.current, caught.value.incoming) == (
        "main", theirs, ours)
    assert remote.lookup_branch("main") == theirs
    summary = local.push(remote, force=True, progress=False)
    assert summary.refs == {"branch/main": (theirs, ours)}
    assert remote.lookup_branch("main") == ours
    assert remote.verify().ok


def test_push_into_a_newly_created_repository_says_it_is_new(tmp_path: Path) -> None:
    # A new user makes the remote with Repository.create, then pushes: its main holds
    # that repository's own first snapshot, so the push is no fast-forward. The
    # message says so and gives the two ways that work; following it works.
    local = vs.Repository.create(tmp_path / "local")
    ours = _commit(local, message="ours", t=_big("t"))
    remote = vs.Repository.create(tmp_path / "remote")
    with pytest.raises(vs.NonFastForwardError,
                       match=r"the remote is new \(Repository\.create's empty first snapshot "
                             r"only\): pass force=True, or .*vs\.copy_repository") as caught:
        local.push(remote, progress=False)
    assert caught.value.initial
    local.push(remote, force=True, progress=False)
    assert remote.lookup_branch("main") == ours
    # A fetch into this repository's own main from another new one: the same.
    other = vs.Repository.create(tmp_path / "other")
    _commit(other, message="theirs", u=_big("u"))
    fresh = vs.Repository.create(tmp_path / "fresh")
    with pytest.raises(vs.NonFastForwardError, match="this repository is new"):
        fresh.fetch(other, into_branch="main", progress=False)


def test_fetch_into_origin_then_merge_then_push(
        pair: tuple[vs.Repository, vs.Repository]) -> None:
    local, remote = pair
    theirs = _commit(remote, message="remote work", r=_big("r"))
    _commit(local, message="local work", l1=_big("l"))
    summary = local.fetch(remote, progress=False)
    assert summary.refs == {"branch/origin/main": (None, theirs)}
    assert local.lookup_branch("origin/main") == theirs
    assert next(local.ops_log()).kind == "fetch"
    merged = local.merge("origin/main", "main")
    assert local.lookup_snapshot(merged).parent_ids[1] == theirs
    storage = local.readonly_session("main").store.storage
    assert storage.get("r") == _big("r") and storage.get("l1") == _big("l")
    local.push(remote, progress=False)  # a fast-forward now
    assert remote.lookup_branch("main") == merged
    assert local.fetch(remote, progress=False).refs == {
        "branch/origin/main": (theirs, merged)}
    _assert_same(local, remote, ops=False, branches={"main"})


def test_fetch_that_is_not_a_fast_forward(pair: tuple[vs.Repository, vs.Repository]) -> None:
    local, remote = pair
    local.fetch(remote, "dev", "mirror", progress=False)
    _commit(local, "mirror", message="local change to the mirror", q=_big("q"))
    theirs = _commit(remote, "dev", message="remote dev", w=_big("w"))
    with pytest.raises(vs.NonFastForwardError, match="'mirror'"):
        local.fetch(remote, "dev", "mirror", progress=False)
    local.fetch(remote, "dev", "mirror", force=True, progress=False)
    assert local.lookup_branch("mirror") == theirs


def test_push_and_fetch_bad_input(pair: tuple[vs.Repository, vs.Repository]) -> None:
    local, remote = pair
    with pytest.raises(vs.BranchNotFoundError):
        local.push(remote, "no-such-branch", progress=False)
    with pytest.raises(vs.BranchNotFoundError):
        local.fetch(remote, "no-such-branch", progress=False)
    with pytest.raises(vs.InvalidRefNameError):
        local.push(remote, "main", "bad..name", progress=False)
    with pytest.raises(TypeError, match="remote must be a Repository"):
        local.push(remote.storage, progress=False)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        local.push(remote, force="yes", progress=False)  # type: ignore[arg-type]
    assert "origin/no-such-branch" not in local.list_branches()


def test_push_keeps_grafted_history_readable(tmp_path: Path) -> None:
    local = vs.Repository.create(vs.lmdb_storage(tmp_path / "a"))
    _commit(local, message="one", a=_big("1"))
    cutoff = datetime.now(UTC)
    _commit(local, message="two", a=_big("2"))
    local.expire_snapshots(cutoff)
    local.garbage_collect()
    remote = vs.Repository.create(vs.in_memory_storage())
    local.push(remote, "main", "imported", progress=False)
    assert [i.message for i in remote.ancestry(branch="imported")] == [
        "two", "Repository initialized"]
    assert remote.verify().ok


# -- interrupted copies ----------------------------------------------------------------------


def _run_killed(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a child that SIGKILLs itself from the copy's progress callback."""
    prelude = textwrap.dedent("""
        import os, signal, sys
        import versionstore as vs

        def die_after(limit):
            def progress(phase, done, total):
                if done >= limit:
                    os.kill(os.getpid(), signal.SIGKILL)
            return progress
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(SRC), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def _many_chunks(path: Path, count: int) -> vs.Repository:
    repo = vs.Repository.create(vs.lmdb_storage(path))
    session = repo.writable_session("main")
    for i in range(count):
        session.store.storage.set(f"k/{i}", _big(f"{i:04d}"))
    session.commit("many")
    return repo


def test_killed_clone_resumes_without_copying_twice(tmp_path: Path) -> None:
    source = _many_chunks(tmp_path / "src", 600)
    full = vs.copy_repository(source.storage, vs.in_memory_storage(), progress=False)
    result = _run_killed(f"""
        vs.copy_repository({str(tmp_path / 'src')!r}, {str(tmp_path / 'dst')!r},
                           progress=die_after(300))
    """)
    assert result.returncode == -signal.SIGKILL, result.stderr
    target = vs.lmdb_storage(tmp_path / "dst")
    assert not vs.Repository.exists(target)  # no ref yet: nothing a reader could open
    backend = target.open_backend()
    landed = set(backend.iter_object_ids())
    backend.close()
    assert 300 <= len(landed) < full.objects_copied
    resumed = vs.copy_repository(source.storage, target, progress=False)
    assert resumed.objects_copied == full.objects_copied - len(landed)
    _assert_same(source, vs.Repository.open(target))


def test_killed_push_resumes_and_the_remote_ref_never_dangles(tmp_path: Path) -> None:
    local = _many_chunks(tmp_path / "local", 10)
    remote = vs.Repository.create(vs.lmdb_storage(tmp_path / "remote"))
    local.push(remote, progress=False, force=True)
    before = remote.lookup_branch("main")
    session = local.writable_session("main")
    for i in range(500):
        session.store.storage.set(f"n/{i}", _big(f"n{i:03d}"))
    tip = session.commit("more")
    result = _run_killed(f"""
        local = vs.Repository.open({str(tmp_path / 'local')!r})
        remote = vs.Repository.open({str(tmp_path / 'remote')!r})
        local.push(remote, progress=die_after(200))
    """)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert remote.lookup_branch("main") == before
    assert remote.verify().ok
    landed = len(list(remote.backend.iter_object_ids()))
    summary = local.push(remote, progress=False)
    assert remote.lookup_branch("main") == tip
    assert summary.objects_copied == len(list(remote.backend.iter_object_ids())) - landed
    assert summary.objects_copied < 500
    _assert_same(local, remote, ops=False)


def test_snapshot_ids_survive_the_trip() -> None:
    source = _history_repo(vs.in_memory_storage())
    target = vs.in_memory_storage()
    vs.copy_repository(source.storage, target, progress=False)
    tip = source.lookup_branch("main")
    assert vs.Repository.open(target).backend.has_objects([object_id_from_text(tip)]) == [True]


def test_clone_from_a_read_only_source_and_push_into_a_read_only_remote(tmp_path: Path
                                                                         ) -> None:
    source = _history_repo(vs.lmdb_storage(tmp_path / "a"))
    source.close()
    frozen = vs.lmdb_storage(tmp_path / "a", read_only=True)
    vs.copy_repository(frozen, tmp_path / "b", progress=False)
    copy = vs.Repository.open(tmp_path / "b")
    _assert_same(vs.Repository.open(frozen), copy)
    _commit(copy, message="new", z=_big("z"))
    with pytest.raises(vs.ReadOnlyRepositoryError):
        copy.push(vs.Repository.open(frozen), progress=False)


def test_unrelated_histories_need_force(tmp_path: Path) -> None:
    ours = _history_repo(vs.in_memory_storage())
    theirs = vs.Repository.create(vs.lmdb_storage(tmp_path / "other"))
    _commit(theirs, message="unrelated", u=_big("u"))
    with pytest.raises(vs.NonFastForwardError):
        ours.push(theirs, progress=False)
    with pytest.raises(vs.NonFastForwardError):
        theirs.fetch(ours, "main", "main", progress=False)
    theirs.fetch(ours, "main", "main", force=True, progress=False)
    assert [i.id for i in theirs.ancestry(all_parents=True)] == [
        i.id for i in ours.ancestry(all_parents=True)]
    assert theirs.verify().ok


def test_fetch_into_a_branch_that_is_behind_fast_forwards(tmp_path: Path) -> None:
    remote = _history_repo(vs.lmdb_storage(tmp_path / "remote"))
    local_storage = vs.in_memory_storage()
    vs.copy_repository(remote.storage, local_storage, progress=False)
    local = vs.Repository.open(local_storage)
    tip = _commit(remote, message="upstream", up=_big("p"))
    summary = local.fetch(remote, "main", "main", progress=False)  # a pull, in one step
    assert summary.refs == {"branch/main": (local.lookup_snapshot(tip).parent_id, tip)}
    assert summary.objects_copied == 4  # chunk, tree leaf, history page, snapshot
    assert local.readonly_session("main").store.storage.get("up") == _big("p")

"""Looking after a repository: expire, gc bytes freed, du, purge, compact, session cleanup."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import versionstore as vs
from versionstore.errors import PurgeBlockedError, RepositoryBusyError, SessionNotFoundError
from versionstore.gc import collect_garbage_by_listing
from versionstore.ids import object_id_from_text


@pytest.fixture(params=["memory", "lmdb"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> vs.Repository:
    storage: Any = (vs.in_memory_storage() if request.param == "memory"
                    else vs.lmdb_storage(tmp_path / "repo"))
    return vs.Repository.create(storage)


def _commit(repo: vs.Repository, branch: str = "main", message: str = "c",
            **values: bytes) -> str:
    session = repo.writable_session(branch)
    for key, value in values.items():
        session.store.storage.set(key.replace("__", "/"), value)
    return session.commit(message)


def _cutoff() -> datetime:
    """A moment strictly after everything committed so far, and before what follows."""
    time.sleep(0.002)
    moment = datetime.now(UTC)
    time.sleep(0.002)
    return moment


def _history(repo: vs.Repository, **version: str) -> list[str]:
    return [info.id for info in repo.ancestry(**version)]


# -- expire ----------------------------------------------------------------------------


def test_expire_drops_old_snapshots_from_ancestry_and_keeps_ids(repo: vs.Repository) -> None:
    root = _history(repo)[0]
    a = _commit(repo, a=b"1" * 1000)
    b = _commit(repo, a=b"2" * 1000)
    repo.create_tag("v1", b)
    c = _commit(repo, a=b"3" * 1000)
    cutoff = _cutoff()
    d = _commit(repo, b=b"4" * 1000)
    expired = repo.expire_snapshots(cutoff)
    assert expired == {a, c}
    assert _history(repo) == [d, b, root]  # the tagged snapshot stays; ids unchanged
    assert [i.parent_id for i in repo.ancestry()] == [b, root, None]
    assert _history(repo, tag="v1") == [b, root]
    assert repo.lookup_snapshot(d).parent_id == b
    # Data goes only at gc, and only what no kept snapshot uses.
    summary = repo.garbage_collect()
    assert summary.deleted > 0 and summary.bytes_freed >= 1000  # "1"s; d still has "3"s
    assert repo.backend.get_objects([object_id_from_text(a)]) == [None]
    assert repo.readonly_session().store.storage.get("a") == b"3" * 1000
    assert repo.readonly_session(tag="v1").store.storage.get("a") == b"2" * 1000
    assert repo.verify().ok
    # Idempotent, and a second expire further back follows the grafts.
    assert repo.expire_snapshots(cutoff) == set()
    assert repo.expire_snapshots(datetime.now(UTC) + timedelta(days=1)) == set()


def test_expire_never_expires_tips_and_repeats_cleanly(repo: vs.Repository) -> None:
    a = _commit(repo, a=b"1")
    repo.create_branch("side", a)
    _commit(repo, "side", a=b"s")
    side_tip = repo.lookup_branch("side")
    b = _commit(repo, a=b"2")
    first = _cutoff()
    c = _commit(repo, a=b"3")
    assert repo.expire_snapshots(first) == {a, b}
    second = _cutoff()
    e = _commit(repo, a=b"4")
    assert repo.expire_snapshots(second) == {c}
    root = _history(repo)[-1]
    assert _history(repo) == [e, root]
    assert _history(repo, branch="side") == [side_tip, root]
    repo.garbage_collect()
    assert repo.verify().ok
    assert repo.readonly_session("side").store.storage.get("a") == b"s"


def test_expire_deletes_expired_branches_and_tags_when_asked(repo: vs.Repository) -> None:
    a = _commit(repo, a=b"1")
    repo.create_branch("old", a)
    repo.create_tag("t", a)
    cutoff = _cutoff()
    _commit(repo, a=b"2")
    assert repo.expire_snapshots(cutoff) == set()  # a is a tip and tagged
    expired = repo.expire_snapshots(cutoff, delete_expired_branches=True,
                                    delete_expired_tags=True)
    assert expired == {a}
    assert repo.list_branches() == {"main"} and repo.list_tags() == set()


def test_expire_checks_its_arguments(repo: vs.Repository) -> None:
    with pytest.raises(ValueError, match="timezone"):
        repo.expire_snapshots(datetime.now())  # noqa: DTZ005
    with pytest.raises(TypeError):
        repo.expire_snapshots("yesterday")  # type: ignore[arg-type]


def test_expire_keeps_a_commit_that_lands_meanwhile(repo: vs.Repository,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _commit(repo, a=b"1")
    cutoff = _cutoff()
    _commit(repo, a=b"2")
    backend = repo.backend
    original = backend.write
    raced: list[str] = []

    def write(batch: Any) -> bool:
        if not raced and any(n.startswith("graft/") for n in batch.refs):
            raced.append(_commit(repo, a=b"3"))  # a concurrent commit before the swap
        return original(batch)

    monkeypatch.setattr(backend, "write", write)
    repo.expire_snapshots(cutoff)
    assert _history(repo)[0] == raced[0]  # the concurrent commit is the tip, not lost
    assert repo.readonly_session().store.storage.get("a") == b"3"
    assert repo.verify().ok


# -- gc ------------------------------------------------------------------------------


def test_gc_reports_bytes_and_older_than_is_a_grace_period(repo: vs.Repository) -> None:
    first = _commit(repo, a=b"A" * 5000)
    _commit(repo, a=b"B" * 7000)
    repo.reset_branch("main", first)
    cutoff = datetime.now(UTC) - timedelta(hours=1)
    assert repo.garbage_collect(cutoff).deleted == 0  # the reset is recent: kept
    dry = repo.garbage_collect(dry_run=True)
    assert dry.dry_run and dry.bytes_freed >= 7000
    done = repo.garbage_collect()
    assert (done.deleted, done.bytes_freed) == (dry.deleted, dry.bytes_freed)
    assert repo.garbage_collect().bytes_freed == 0


# -- du ------------------------------------------------------------------------------


def _zarr_commit(repo: vs.Repository, path: str, data: np.ndarray, message: str) -> str:
    session = repo.writable_session()
    group = zarr.open_group(session.store, mode="a")
    array = group.require_array(path, shape=data.shape, chunks=(100,), dtype=data.dtype,
                                compressors=None)
    array[:] = data
    return session.commit(message)


def test_du_per_array_and_totals(repo: vs.Repository) -> None:
    _zarr_commit(repo, "x", np.arange(1000, dtype="f8"), "x")
    _zarr_commit(repo, "y", np.arange(300, dtype="i4"), "y")
    usage = repo.du()
    assert usage.arrays["/x"].chunks == 10 and usage.arrays["/x"].logical_bytes >= 8000
    assert usage.arrays["/y"].chunks == 3  # Zarr chunks, inline (400 bytes) or not
    # The total counts the same Zarr chunks as the arrays; ``objects`` those stored apart.
    assert usage.chunks == sum(a.chunks for a in usage.arrays.values())
    assert 10 <= usage.objects < usage.chunks
    assert usage.arrays["/y"].keys == 4  # 3 chunks and zarr.json
    assert usage.keys == sum(a.keys for a in usage.arrays.values())
    assert usage.stored_bytes >= usage.arrays["/x"].stored_bytes > 0
    if isinstance(repo.storage, vs.LMDBStorage):
        assert usage.file_bytes is not None and usage.reclaimable_bytes is not None
    else:
        assert usage.file_bytes is None


def test_du_history_bytes_added_and_exclusive(repo: vs.Repository) -> None:
    a = _commit(repo, k1=b"a" * 1000, k2=b"b" * 2000)
    b = _commit(repo, k1=b"c" * 1500)
    c = _commit(repo, k3=b"d" * 700)
    rows = {row.snapshot.id: row for row in repo.du_history()}
    assert rows[a].bytes_added == 3000 and rows[b].bytes_added == 1500
    assert rows[a].exclusive_bytes == 1000  # k2 lives on in b and c
    assert rows[b].exclusive_bytes == 0  # k1's value in b is still in c
    assert rows[c].exclusive_bytes == 700
    repo.create_branch("keep", a)  # now a's k1 is also the tip of another branch
    assert {r.snapshot.id: r for r in repo.du_history()}[a].exclusive_bytes == 1000
    # ... but a child on that branch that keeps k1 makes it shared.
    _commit(repo, "keep", k4=b"e" * 600)
    assert {r.snapshot.id: r for r in repo.du_history()}[a].exclusive_bytes == 0


def test_du_history_matches_what_expire_and_gc_free(repo: vs.Repository) -> None:
    _commit(repo, k1=b"a" * 1000)
    middle = _commit(repo, k1=b"b" * 2000, k2=b"z" * 900)
    _commit(repo, k1=b"c" * 3000)
    cutoff = _cutoff()
    _commit(repo, k9=b"q" * 600)
    predicted = {r.snapshot.id: r.exclusive_bytes for r in repo.du_history()}
    expired = repo.expire_snapshots(cutoff)
    assert middle in expired
    chunk_bytes = repo.garbage_collect()
    assert chunk_bytes.bytes_freed >= sum(predicted[s] for s in expired)


# -- sessions --------------------------------------------------------------------------


def test_discard_session_and_older_than(repo: vs.Repository) -> None:
    abandoned = repo.writable_session()
    # Over STAGED_INLINE_LIMIT: staged as a chunk object, which gc then frees.
    abandoned.store.storage.set("k", b"x" * 5000)
    assert abandoned.session_id in repo.resumable_sessions()
    cutoff = _cutoff()
    fresh = repo.writable_session()
    fresh.store.storage.set("f", b"y" * 3000)
    assert repo.discard_sessions(older_than=cutoff) == [abandoned.session_id]
    assert set(repo.resumable_sessions()) == {fresh.session_id}
    assert repo.garbage_collect().bytes_freed >= 5000  # the abandoned chunk
    assert fresh.session_id is not None
    repo.discard_session(fresh.session_id)
    assert repo.resumable_sessions() == {}
    with pytest.raises(SessionNotFoundError):
        repo.discard_session(fresh.session_id)
    assert repo.verify().ok


# -- purge ---------------------------------------------------------------------------


def test_purge_rewrites_every_branch_and_tag(repo: vs.Repository) -> None:
    _zarr_commit(repo, "keep", np.arange(50, dtype="f8"), "keep")
    before_secret = repo.lookup_branch("main")
    _zarr_commit(repo, "secret", np.full(50, 7.0), "secret")
    tagged = _zarr_commit(repo, "keep", np.arange(50, dtype="f8") * 2, "more")
    repo.create_tag("v1", tagged)
    repo.create_branch("side", tagged)
    _zarr_commit(repo, "secret", np.full(50, 8.0), "secret 2")
    result = repo.purge("/secret", message="participant withdrew")
    assert before_secret not in result.rewritten  # history before it is untouched
    assert tagged in result.rewritten
    assert repo.lookup_tag("v1") == result.rewritten[tagged]
    assert repo.lookup_branch("side") == result.rewritten[tagged]
    for version in ({"branch": "main"}, {"tag": "v1"}, {"branch": "side"}):
        for info in repo.ancestry(**version):
            storage = repo.readonly_session(snapshot_id=info.id).store.storage
            assert storage.get("secret/zarr.json") is None
            assert storage.get("secret/c/0") is None
    group = zarr.open_group(repo.readonly_session(tag="v1").store, mode="r")
    np.testing.assert_array_equal(group["keep"][:], np.arange(50) * 2)
    newest = next(iter(repo.ancestry()))
    assert newest.message == "secret 2"
    assert newest.metadata["versionstore.purge"]["message"] == "participant withdrew"
    assert result.gc.deleted > 0
    assert repo.verify().ok
    assert repo.purge("/secret").rewritten == {}


def test_purge_refuses_open_sessions_unless_forced(repo: vs.Repository) -> None:
    _commit(repo, secret__a=b"s" * 1000)
    session = repo.writable_session()
    session.store.storage.set("other", b"o")
    with pytest.raises(PurgeBlockedError) as caught:
        repo.purge("secret")
    assert session.session_id in caught.value.sessions
    assert repo.readonly_session().store.storage.get("secret/a") == b"s" * 1000
    repo.purge("secret", force=True)
    assert repo.resumable_sessions() == {}
    assert repo.readonly_session().store.storage.get("secret/a") is None
    with pytest.raises(ValueError, match="root"):
        repo.purge("/")


def test_purge_gc_compact_leaves_no_byte_on_disk(tmp_path: Path) -> None:
    marker = np.random.default_rng(42).bytes(4096)
    path = tmp_path / "repo"
    with vs.Repository.create(vs.lmdb_storage(path)) as repo:
        for n in range(3):
            _commit(repo, public=bytes([n]) * 2000, secret__c__0=marker)
            _commit(repo, public=bytes([n + 10]) * 2000)
        probe = marker[1000:1064]
        assert probe in (path / "data.mdb").read_bytes()
        repo.purge("/secret")
        report = repo.compact()
        assert report.bytes_after <= report.bytes_before
        assert repo.verify().ok
        assert repo.readonly_session().store.storage.get("public") == bytes([12]) * 2000
    assert probe not in (path / "data.mdb").read_bytes()


# -- compact ------------------------------------------------------------------------


def test_compact_gives_space_back(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    with vs.Repository.create(vs.lmdb_storage(path)) as repo:
        first = repo.lookup_branch("main")
        repo.create_branch("big", first)
        session = repo.writable_session("big")
        for n in range(200):
            session.store.storage.set(f"c/{n}", bytes([n]) * 20_000)
        session.commit("4 MB")
        repo.delete_branch("big")
        freed = repo.garbage_collect()
        assert freed.bytes_freed >= 4_000_000
        assert repo.du().reclaimable_bytes or 0 >= 3_000_000
        size_before = (path / "data.mdb").stat().st_size
        report = repo.compact()
        assert report.bytes_before == size_before
        assert report.bytes_freed >= 3_000_000
        assert (path / "data.mdb").stat().st_size == report.bytes_after
        # The repository works on after compaction.
        _commit(repo, a=b"after")
        assert repo.readonly_session().store.storage.get("a") == b"after"
        assert repo.verify().ok
    with vs.Repository.open(vs.lmdb_storage(path)) as again:
        assert again.readonly_session().store.storage.get("a") == b"after"


def test_compact_removes_what_a_killed_compaction_left(tmp_path: Path) -> None:
    # A compaction killed while copying leaves its scratch directory (a partial copy of
    # data.mdb, as large as the data) inside the repository; nothing else removes it.
    path = tmp_path / "repo"
    with vs.Repository.create(vs.lmdb_storage(path)) as repo:
        _commit(repo, a=b"kept")
        left = path / ".compact-killed"
        left.mkdir()
        (left / "data.mdb").write_bytes(b"\0" * 65536)
        unrelated = path / "notes"  # not the compaction's: left alone
        unrelated.mkdir()
        repo.compact()
        assert not left.exists() and unrelated.exists()
        assert not [p for p in path.iterdir() if p.name.startswith(".compact-")]
        assert repo.readonly_session().store.storage.get("a") == b"kept"
        assert repo.verify().ok


def test_compact_refuses_while_another_handle_is_open(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    with vs.Repository.create(vs.lmdb_storage(path)) as repo:
        other = vs.Repository.open(vs.lmdb_storage(path))
        with pytest.raises(RepositoryBusyError, match="this process"):
            repo.compact()
        other.close()
        repo.compact()


def test_compact_refuses_while_another_thread_reads_and_says_so(tmp_path: Path) -> None:
    """``compact`` while another thread is inside a read of the same repository.

    Closing let the reader's transaction finish (the environment stays open
    until it ends), so the compaction's lock found the file still locked and
    the error said "in use by another process", naming none: the process was
    this one. Now the open transaction is named for what it is.
    """
    import threading

    path = tmp_path / "repo"
    inside, finish = threading.Event(), threading.Event()
    results: list[object] = []
    with vs.Repository.create(vs.lmdb_storage(path)) as repo:
        backend: Any = repo.backend

        def work(txn: Any) -> str:
            inside.set()
            assert finish.wait(120)
            return "read"

        reader = threading.Thread(target=lambda: results.append(backend._read("reading", work)))
        reader.start()
        try:
            assert inside.wait(120)
            with pytest.raises(RepositoryBusyError, match="other threads of this") as caught:
                repo.compact()
            assert caught.value.transactions == 1 and caught.value.in_this_process == 0
        finally:
            finish.set()
            reader.join(120)
        assert results == ["read"]
        assert repo.verify().ok  # still open and usable after the refusal
        repo.compact()


def test_compact_refuses_a_repository_opened_read_only(tmp_path: Path) -> None:
    # It rewrote the file anyway; and the CLI, which opens read-only a directory
    # it cannot write, ended in a PermissionError traceback.
    path = tmp_path / "repo"
    vs.Repository.create(vs.lmdb_storage(path)).close()
    data = (path / "data.mdb").read_bytes()
    with vs.Repository.open(vs.lmdb_storage(path, read_only=True)) as repo:
        with pytest.raises(vs.ReadOnlyRepositoryError, match="read-only"):
            repo.compact()
        assert repo.lookup_branch("main")  # still open and readable
    assert (path / "data.mdb").read_bytes() == data


def test_compact_in_memory_is_a_no_op() -> None:
    repo = vs.Repository.create(vs.in_memory_storage())
    assert repo.compact().bytes_freed == 0


def test_compact_refuses_while_another_process_has_it_open_and_names_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "repo"
    vs.Repository.create(vs.lmdb_storage(path)).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, versionstore as vs\n"
         f"repo = vs.Repository.open({str(path)!r})\nprint('open', flush=True)\n"
         "sys.stdin.readline()\nrepo.close()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with vs.Repository.open(vs.lmdb_storage(path)) as repo:
            with pytest.raises(RepositoryBusyError) as caught:
                repo.compact()
            assert caught.value.pids == (holder.pid,)
            assert str(holder.pid) in str(caught.value)
            assert repo.verify().ok  # still usable after the refusal
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(timeout=60)
    with vs.Repository.open(vs.lmdb_storage(path)) as repo:
        repo.compact()
        assert repo.verify().ok


@pytest.mark.parametrize("staged", [0, 1], ids=["odd", "even"])  # the last transaction's parity
def test_a_process_opening_during_a_compaction_sees_the_compacted_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, staged: int) -> None:
    # Found by two compactions started at once: a process that began opening while the
    # compaction held its lock joined the environment without resetting lock.mdb, whose
    # transaction counter still numbered the old file's transactions; LMDB then read the
    # compacted copy's empty meta page, and that process's first write replaced the tree.
    import shutil
    import subprocess
    import sys

    import versionstore.backend.lmdb as lmdb_backend

    path = tmp_path / "repo"
    commits = 2
    with vs.Repository.create(vs.lmdb_storage(path)) as repo:
        for n in range(commits):
            tip = _commit(repo, **{f"k{n}": bytes([n]) * 5000})
        for n in range(staged):  # one write transaction more (a commit makes two)
            repo.writable_session("main").set_values([(f"staged{n}", b"s")])
    child: list[subprocess.Popen[str]] = []
    real_rmtree = shutil.rmtree

    def opened_meanwhile(target: str, *args: Any, **kwargs: Any) -> None:
        if not child:  # the copy is renamed in; the lock is still held
            child.append(subprocess.Popen(
                [sys.executable, "-c", "import sys, versionstore as vs\n"
                 f"repo = vs.Repository.open({str(path)!r})\n"
                 "print(repo.lookup_branch('main'), flush=True)\n"
                 "s = repo.writable_session()\ns.set_values([('after', b'x' * 5000)])\n"
                 "print(s.commit('after'), flush=True)"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            fds = Path(f"/proc/{child[0].pid}/fd")
            for _ in range(600):  # until it holds lock.mdb open: then it waits for the lock
                try:
                    if any(link.readlink().name == "lock.mdb" for link in fds.iterdir()):
                        break
                except OSError:
                    pass
                time.sleep(0.05)
            time.sleep(0.3)  # inside LMDB's wait for the lock
        real_rmtree(target, *args, **kwargs)

    monkeypatch.setattr(lmdb_backend.shutil, "rmtree", opened_meanwhile)
    with vs.Repository.open(vs.lmdb_storage(path)) as repo:
        repo.compact()
    out, err = child[0].communicate(timeout=120)
    assert child[0].returncode == 0, err
    seen, committed = out.split()
    assert seen == tip
    with vs.Repository.open(vs.lmdb_storage(path)) as repo:
        assert repo.lookup_branch("main") == committed
        content = repo.readonly_session().store.storage
        assert [content.get(f"k{n}") for n in range(commits)] == [
            bytes([n]) * 5000 for n in range(commits)]
        assert content.get("after") == b"x" * 5000
        assert repo.verify().ok


def _collect_interleaved(repo: vs.Repository, how: str, interleave: Callable[[], None]
                         ) -> vs.GCSummary:
    """Collect garbage ``how``, running ``interleave`` between mark and atomic sweep.

    ``incremental`` and ``full`` run ``garbage_collect`` (its sweep is the
    ledger's ``sweep``); ``listing`` the ledger-free full collection (its sweep
    is ``delete_objects``).
    """
    step = "delete_objects" if how == "listing" else "sweep"
    original = getattr(repo.backend, step)

    def interleaved(*args: Any, **kwargs: Any) -> bool:
        repo.backend.__dict__.pop(step)  # once
        interleave()
        return bool(original(*args, **kwargs))

    setattr(repo.backend, step, interleaved)
    try:
        if how == "listing":
            return collect_garbage_by_listing(repo.reader)
        return repo.garbage_collect(full=how == "full")
    finally:
        repo.backend.__dict__.pop(step, None)


@pytest.mark.parametrize("how", ["incremental", "full", "listing"])
@pytest.mark.parametrize("during", ["commit", "stage"])
def test_gc_spares_garbage_a_writer_revives_between_mark_and_sweep(repo: vs.Repository,
                                                                    during: str,
                                                                    how: str) -> None:
    first = _commit(repo, a=b"A" * 2000)
    repo.garbage_collect()  # the ledger exists: the next run is incremental
    _commit(repo, a=b"B" * 2000)
    repo.reset_branch("main", first)  # the "B" chunk is garbage now ...
    session = repo.writable_session()

    def revive() -> None:
        # ... until a writer references the same content again, mid-collection.
        if during == "commit":
            _commit(repo, a=b"B" * 2000)
        else:
            session.store.storage.set("b", b"B" * 2000)

    summary = _collect_interleaved(repo, how, revive)
    assert summary.deleted >= 1  # the old snapshot went; the revived chunk stayed
    if during == "commit":
        assert repo.readonly_session().store.storage.get("a") == b"B" * 2000
    else:
        assert session.store.storage.get("b") == b"B" * 2000
        session.commit("revived")
    assert repo.verify().ok
    repo.garbage_collect()  # the rescued objects were kept pending: still nothing lost
    assert repo.verify().ok


def test_a_session_based_on_an_expired_snapshot_survives_expire_and_gc(
        repo: vs.Repository) -> None:
    _commit(repo, a=b"1" * 1000)
    first = _cutoff()
    base = _commit(repo, a=b"2" * 1000)
    repo.expire_snapshots(first)  # `base` gets a graft over the expired first commit
    repo.garbage_collect()
    session = repo.writable_session()  # based on `base`
    session.store.storage.set("s", b"staged" * 200)
    second = _cutoff()
    _commit(repo, b=b"3" * 1000)  # `base` is no longer the tip: it expires now
    assert base in repo.expire_snapshots(second)
    repo.garbage_collect()
    assert repo.verify().ok  # the session's base and what it reaches are all there
    assert session.session_id is not None
    resumed = repo.writable_session(resume=session.session_id)
    assert resumed.store.storage.get("a") == b"2" * 1000
    resumed.commit("from an expired base")
    assert repo.readonly_session().store.storage.get("s") == b"staged" * 200
    repo.garbage_collect()
    assert repo.verify().ok

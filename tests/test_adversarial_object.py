"""Attacks on repositories on object storage that once broke them, kept as regressions.

Each test is the smallest form of an attack that found a defect: a forked
child of a process that had used object storage (it hung forever), a log
record missing between two others (the refs silently stopped before it and
the next writer reused its number), prefixes that obstore cannot parse
(a raw obstore error at the first request, not at the description), and a
process that aborted (SIGABRT) at exit after all its writes succeeded.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import obstore
import pytest
import zarr
from hypothesis import given
from hypothesis import strategies as st
from obstore.store import LocalStore, MemoryStore

import versionstore as vs
import zarrstore
from versionstore.backend import object as object_backend
from versionstore.backend.object import ObjectBackend
from versionstore.backend.protocol import EmptyRecord
from versionstore.backend.refstate import RefState
from versionstore.ids import ObjectId
from zarrstore.errors import ForkedProcessError as ForkedStoreError

#: A forked child that hangs is reported after this many seconds (it then fails the test).
_CHILD_WAIT = 60


def _finishes(child: Any) -> None:
    """Start ``child`` and fail the test (killing it) if it hangs past ``_CHILD_WAIT``."""
    child.start()
    child.join(_CHILD_WAIT)
    hung = child.is_alive()
    if hung:
        child.kill()
        child.join()
    assert not hung, "the forked child hung on object storage"


def _commit_in_child(repo: vs.Repository, storage: Any, out: Any) -> None:
    """What the forked child tries: reopen, and use the inherited repository."""
    results = []
    for attempt in (lambda: vs.Repository.open(storage),
                    lambda: repo.writable_session("main").store,
                    lambda: repo.lookup_branch("main")):
        try:
            attempt()
            results.append("worked")
        except vs.ForkedProcessError as exc:
            results.append(f"ForkedProcessError: {exc}")
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            results.append(f"{type(exc).__name__}: {exc}")
    out.put(results)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork exists only on POSIX systems")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_gets_a_clear_error_instead_of_hanging(tmp_path: Path) -> None:
    storage = vs.object_storage(LocalStore(str(tmp_path)), "repo")
    repo = vs.Repository.create(storage)
    session = repo.writable_session("main")
    session.set_values([("k", b"v" * 700)])
    session.commit("one")  # the parent has used obstore: its runtime cannot be forked
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=_commit_in_child, args=(repo, storage, out))
    _finishes(child)
    results = out.get(timeout=10)
    assert len(results) == 3
    assert all(r.startswith("ForkedProcessError: ") and "'spawn'" in r for r in results), results
    assert repo.lookup_branch("main")  # the parent goes on


def _use_zarrstore_in_child(store: Any, storage: Any, out: Any) -> None:
    """The forked child: zarrstore's ``ObjectStore`` and versionstore, each once."""
    import asyncio

    results = []
    prototype = zarr.core.buffer.default_buffer_prototype()
    for attempt in (lambda: asyncio.run(store.get("k", prototype)),
                    lambda: vs.Repository.open(storage)):
        try:
            attempt()
            results.append("worked")
        except (ForkedStoreError, vs.ForkedProcessError) as exc:
            results.append(f"{type(exc).__module__}.ForkedProcessError: {exc}")
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            results.append(f"{type(exc).__name__}: {exc}")
    out.put(results)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork exists only on POSIX systems")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_parent_that_used_only_zarrstore_forks_a_child_that_refuses(tmp_path: Path) -> None:
    """obstore's runtime is the process's, whichever package made the first request."""
    import asyncio

    storage = vs.object_storage(LocalStore(str(tmp_path / "repo"), mkdir=True))  # no request
    store = zarrstore.ObjectStore(LocalStore(str(tmp_path / "plain"), mkdir=True))
    asyncio.run(store.set("k", zarr.core.buffer.cpu.Buffer.from_bytes(b"v")))
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=_use_zarrstore_in_child, args=(store, storage, out))
    _finishes(child)
    results = out.get(timeout=10)
    assert results[0].startswith("zarrstore.errors.ForkedProcessError: "), results
    assert "'spawn'" in results[0]
    assert results[1].startswith("versionstore.errors.ForkedProcessError: "), results


def _ten_records(store: Any) -> list[vs.SnapshotId]:
    repo = vs.Repository.create(vs.object_storage(store, "r"))
    ids = []
    for n in range(10):
        session = repo.writable_session("main")
        session.set_values([(f"k{n}", bytes([n]) * 700)])
        ids.append(session.commit(str(n)))
    return ids


def _records(store: Any) -> list[str]:
    return sorted(m["path"] for batch in obstore.list(store, "r/log") for m in batch)


def test_a_log_gap_is_a_corrupt_repository_not_older_refs() -> None:
    store = MemoryStore()
    _ten_records(store)
    records = _records(store)
    obstore.delete(store, records[len(records) // 2])
    with pytest.raises(vs.CorruptRepositoryError, match="gap"):
        ObjectBackend(store, "r").list_refs("")
    assert _records(store) == [r for r in records if r != records[len(records) // 2]]


def test_a_reader_with_a_view_finds_a_later_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryStore()
    _ten_records(store)
    reader = ObjectBackend(store, "r")
    tip = reader.get_ref("branch/main")
    writer = ObjectBackend(store, "r")
    for n in range(3):
        writer.put_objects([], {f"x/{n}": b"1"})
    obstore.delete(store, _records(store)[-2])
    monkeypatch.setattr(object_backend, "_STALE_AFTER", -1.0)  # the reader lists the log
    with pytest.raises(vs.CorruptRepositoryError, match="gap"):
        reader.list_refs("")
    assert tip is not None


def test_a_gap_a_checkpoint_covers_is_read_from_the_checkpoint(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(object_backend, "CHECKPOINT_EVERY", 5)
    store = MemoryStore()
    ids = _ten_records(store)
    expected = ObjectBackend(store, "r").list_refs("")
    checkpoints = [m["path"] for batch in obstore.list(store, "r/checkpoint") for m in batch]
    assert checkpoints
    obstore.delete(store, _records(store)[1])  # before the newest checkpoint: as gc does
    assert ObjectBackend(store, "r").list_refs("") == expected
    repo = vs.Repository.open(vs.object_storage(store, "r"))
    assert repo.lookup_branch("main") == ids[-1]


@pytest.mark.parametrize("prefix", ["../escape", "a/../b", "a/./b", ".", "a//b", "x\x00y",
                                    "a\nb", "a\udcffb"])
def test_a_prefix_obstore_cannot_parse_is_refused_at_once(prefix: str) -> None:
    with pytest.raises(ValueError, match="invalid object storage prefix"):
        vs.object_storage(MemoryStore(), prefix)


@pytest.mark.parametrize("prefix", ["weird name/ü/%2F", "p#1", "*?", "a\\b", "/edges/"])
def test_odd_but_valid_prefixes_hold_a_repository(prefix: str, tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path))
    repo = vs.Repository.create(vs.object_storage(store, prefix))
    session = repo.writable_session("main")
    session.set_values([("k", b"v" * 700)])
    tip = session.commit("one")
    again = vs.Repository.open(vs.object_storage(LocalStore(str(tmp_path)), prefix))
    assert again.lookup_branch("main") == tip
    assert again.readonly_session(branch="main").value("k") == b"v" * 700


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files in /proc")
def test_many_repositories_opened_and_dropped_leave_nothing_behind(tmp_path: Path) -> None:
    import gc
    import threading

    from versionstore import cloud

    def use(n: int) -> None:
        for storage in (vs.object_storage(LocalStore(str(tmp_path)), f"r{n}"),
                        vs.lmdb_storage(tmp_path / f"l{n}")):
            repo = vs.Repository.create(storage)
            session = repo.writable_session("main")
            session.set_values([("k", bytes([n % 256]) * 700)])
            session.commit("one")
            assert repo.readonly_session(branch="main").value("k") == bytes([n % 256]) * 700

    use(0)
    gc.collect()
    threads, files, probed = threading.active_count(), _open_files(), len(cloud._PROBED)
    before = set(cloud._BACKENDS)  # what earlier tests of this process still hold
    for n in range(1, 60):
        use(n)
    gc.collect()
    assert threading.active_count() <= threads
    assert _open_files() <= files
    assert set(cloud._BACKENDS) <= before  # every backend went with its repositories
    assert len(cloud._PROBED) == probed  # one probe per store, not one per prefix


def test_a_repository_nested_in_another_ones_layout_is_not_read_as_its_log(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import gc
    from datetime import timedelta

    store = MemoryStore()
    tips = {}
    prefixes = ("a", "a/checkpoint", "a/log/x")
    repos = [vs.Repository.create(vs.object_storage(store, p)) for p in prefixes]  # outer first
    monkeypatch.setattr(object_backend, "CHECKPOINT_EVERY", 2)  # then checkpoints everywhere
    for prefix, repo in zip(prefixes, repos, strict=True):
        for n in range(3):
            session = repo.writable_session("main")
            session.set_values([("k", f"{prefix}:{n}".encode() * 100)])
            tips[prefix] = session.commit(str(n))
    del repos, repo, session
    gc.collect()  # no shared backend left: every open below reads the log afresh
    before = {prefix: ObjectBackend(store, prefix).list_refs("") for prefix in tips}
    outer = ObjectBackend(store, "a", log_retention=timedelta(0))
    assert outer.delete_objects([], if_refs_are=before["a"])  # compacts the outer log only
    del outer
    for prefix, tip in tips.items():
        assert ObjectBackend(store, prefix).list_refs("") == before[prefix]
        opened = vs.Repository.open(vs.object_storage(store, prefix))
        assert opened.lookup_branch("main") == tip
        assert opened.verify().ok


def test_gc_leaves_files_that_are_not_objects_alone() -> None:
    from datetime import UTC, datetime, timedelta

    store = MemoryStore()
    repo = vs.Repository.create(vs.object_storage(store, "r"))
    session = repo.writable_session("main")
    session.set_values([("k", b"v" * 700)])
    session.commit("one")
    foreign = ["r/objects/abcd", "r/objects/" + "ab" * 21, "r/objects/notes.txt"]
    for path in foreign:
        obstore.put(store, path, b"someone else's")
    repo.garbage_collect(older_than=datetime.now(UTC) + timedelta(seconds=1))
    left = {m["path"] for batch in obstore.list(store, "r/objects") for m in batch}
    assert set(foreign) <= left
    assert repo.verify().ok


_ref_names = st.text(alphabet="ab/", min_size=1, max_size=5)


@given(st.lists(st.dictionaries(_ref_names, st.one_of(st.none(), st.binary(max_size=3)),
                                max_size=6), max_size=12),
       st.text(alphabet="ab/", max_size=3), st.one_of(st.none(), st.integers(0, 4)))
def test_ref_state_answers_like_a_dict(effects: list[dict[str, bytes | None]], prefix: str,
                                       limit: int | None) -> None:
    """``RefState`` (its names sorted lazily: staging a million keys was quadratic)."""
    state, model = RefState({"a": b"0"}), {"a": b"0"}
    for effect in effects:
        state.apply(effect)
        for name, value in effect.items():
            if value is None:
                model.pop(name, None)
            else:
                model[name] = value
    assert list(state.items()) == sorted(model.items())
    wanted = sorted((n, v) for n, v in model.items() if n.startswith(prefix))
    assert list(state.under(prefix, limit).items()) == wanted[:limit]
    assert state.nbytes == sum(len(n) + len(v) for n, v in model.items())
    assert len(state) == len(model)
    empty = {n for n in model if not any(m.startswith(n + "/") for m in model)}
    prune = {n: EmptyRecord(v, n + "/") for n, v in model.items()}
    assert set(state.prune_effect(prune, set())) == empty
    # Given a base, a record goes only if the sweep deleted that object.
    based = {n: EmptyRecord(v, n + "/", ObjectId(hashlib.blake2b(n.encode(), digest_size=20)
                                                 .digest())) for n, v in model.items()}
    deleted = {record.base for n, record in based.items() if len(n) % 2}
    assert set(state.prune_effect(based, deleted)) == {n for n in empty if len(n) % 2}


def test_the_recently_stored_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from versionstore.ids import hash_object

    monkeypatch.setattr(object_backend, "_FRESH_LIMIT", 100)
    backend = ObjectBackend(MemoryStore(), "r")
    for n in range(30):  # a fast writer: every id is younger than the expiry
        batch = [(hash_object(1, f"{n}/{i}".encode()), b"x") for i in range(20)]
        backend.put_objects(batch)
    assert len(backend._fresh) <= 100 + 20
    assert backend.has_objects([hash_object(1, b"0/0"), hash_object(1, b"29/19")]) == [True, True]


_EXIT_AFTER_A_WRITE = textwrap.dedent("""
    import asyncio.selector_events as selector_events
    import sys
    import threading
    import time

    from obstore.store import LocalStore

    import versionstore as vs

    wake = selector_events.BaseSelectorEventLoop._write_to_self

    def wake_then_wait(loop):
        wake(loop)
        if threading.current_thread().name.startswith("Dummy"):  # not Python's: obstore's
            time.sleep(0.5)  # it woke the loop, and takes the GIL back late

    selector_events.BaseSelectorEventLoop._write_to_self = wake_then_wait
    repo = vs.Repository.create(vs.object_storage(LocalStore(sys.argv[1]), "repo"))
    repo.writable_session("main").set_values([("a/c/0", b"x" * 700)])
    print("written", flush=True)
""")


@pytest.mark.skipif(sys.platform == "win32", reason="the abort came from pthread_exit (POSIX)")
def test_a_process_exits_cleanly_right_after_its_last_request(tmp_path: Path) -> None:
    # obstore hands a result to the loop from a Rust thread, which wakes the loop
    # and then needs the GIL once more. If the caller got the result and the
    # interpreter was exiting by then, Python 3.13 ended that thread with
    # pthread_exit and the process died of SIGABRT (1 exit in 10 after a large
    # set_values; always with the thread slowed as here).
    done = subprocess.run([sys.executable, "-c", _EXIT_AFTER_A_WRITE, str(tmp_path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.stdout == "written\n", done.stderr
    assert done.returncode == 0, done.stderr
    repo = vs.Repository.open(vs.object_storage(LocalStore(str(tmp_path)), "repo"))
    assert repo.resumable_sessions()  # the write is staged

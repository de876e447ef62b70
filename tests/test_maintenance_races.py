"""What expiry and purge do when refs move between their plan and their write.

Each test runs one ref change (a commit, a reset, a tag, another expiry, a
collection) at the last moment before the operation's atomic write — the
widest race there is — and checks the outcome: a move of a ref the plan
does not write lands after the operation, which writes on its first attempt;
a change to a ref the plan depends on (a graft, a ref it writes, a snapshot
it grafts) makes it plan again. On both backends; the same races against a
real committer process are in ``test_maintenance_contention.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from machine_support import either_repo_fixture

import versionstore as vs
import versionstore.purge as purge_module
from versionstore.backend.protocol import WriteBatch
from versionstore.errors import MissingObjectsError
from versionstore.ids import SnapshotId, object_id_from_text

__all__ = ["either_repo_fixture"]  # the ``repo`` fixture: in memory, then on LMDB

def _commit(repo: vs.Repository, branch: str = "main", **values: bytes) -> str:
    session = repo.writable_session(branch)
    session.set_values([(key.replace("__", "/"), value) for key, value in values.items()])
    return session.commit("c")


def _cutoff() -> datetime:
    """A moment strictly after everything committed so far, and before what follows."""
    time.sleep(0.002)
    moment = datetime.now(UTC)
    time.sleep(0.002)
    return moment


def _history(repo: vs.Repository, *, branch: str | None = None,
             tag: str | None = None) -> list[str]:
    return [info.id for info in repo.ancestry(branch=branch, tag=tag)]


def _moves_refs(batch: WriteBatch) -> bool:
    """An expiry's or purge's batch: it writes a branch, tag or graft ref."""
    return any(name.startswith(("branch/", "tag/", "graft/")) for name in batch.refs)


def race_before_write(repo: vs.Repository, monkeypatch: pytest.MonkeyPatch,
                      meanwhile: Callable[[], object], times: int = 1) -> list[bool | str]:
    """Run ``meanwhile`` just before each of the first ``times`` maintenance batches.

    Returns the outcome of each maintenance batch (one writing a branch, tag
    or graft ref, outside ``meanwhile``), as they happen: ``True`` (written),
    ``False`` (an expected ref had changed) or ``"missing"``
    (``MissingObjectsError``).
    """
    outcomes: list[bool | str] = []
    original = repo.backend.write
    racing: list[bool] = []  # one per run of ``meanwhile``; True while it runs

    def write(batch: WriteBatch) -> bool:
        counted = _moves_refs(batch) and not any(racing)
        if counted and len(racing) < times:
            racing.append(True)
            meanwhile()
            racing[-1] = False
        try:
            result = original(batch)
        except MissingObjectsError:
            if counted:
                outcomes.append("missing")
            raise
        if counted:
            outcomes.append(result)
        return result

    monkeypatch.setattr(repo.backend, "write", write)
    return outcomes


def _old_history(repo: vs.Repository) -> tuple[str, str, str, str, datetime]:
    """root ← a ← b ← c (main), all older than the cut-off returned."""
    root = _history(repo)[0]
    a = _commit(repo, a=b"1" * 700)
    b = _commit(repo, b=b"2" * 700)
    c = _commit(repo, c=b"3" * 700)
    return root, a, b, c, _cutoff()


# -- expire ----------------------------------------------------------------------------


def test_expire_writes_once_when_branches_move_forward_meanwhile(
        repo: vs.Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    root, a, b, c, cutoff = _old_history(repo)
    repo.create_branch("dev", c)
    landed: list[str] = []
    outcomes = race_before_write(repo, monkeypatch, lambda: landed.extend(
        [_commit(repo, d=b"4" * 700), _commit(repo, "dev", e=b"5" * 700)]))
    assert repo.expire_snapshots(cutoff) == {a, b}
    assert outcomes == [True]  # one plan, one write
    assert _history(repo) == [landed[0], c, root]
    assert _history(repo, branch="dev") == [landed[1], c, root]
    repo.garbage_collect()
    session = repo.readonly_session()
    assert [session.store.storage.get(k) for k in "cd"] == [b"3" * 700, b"4" * 700]
    assert repo.readonly_session("dev").store.storage.get("e") == b"5" * 700
    assert repo.verify().ok


def test_expire_writes_once_when_a_tag_lands_meanwhile_on_a_snapshot_it_expires(
        repo: vs.Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    root, a, b, c, cutoff = _old_history(repo)
    outcomes = race_before_write(repo, monkeypatch, lambda: repo.create_tag("late", b))
    assert repo.expire_snapshots(cutoff) == {a, b}
    assert outcomes == [True]
    # As if tagged just after the expiry: b keeps its graft, and its data while tagged.
    assert _history(repo, tag="late") == [b, root]
    assert _history(repo) == [c, root]
    repo.garbage_collect()
    assert repo.readonly_session(tag="late").store.storage.get("b") == b"2" * 700
    assert repo.verify().ok


def test_expire_writes_once_when_a_branch_is_reset_meanwhile_onto_a_snapshot_it_expires(
        repo: vs.Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    root, a, b, c, cutoff = _old_history(repo)
    outcomes = race_before_write(repo, monkeypatch, lambda: repo.reset_branch("main", b))
    assert repo.expire_snapshots(cutoff) == {a, b}
    assert outcomes == [True]
    assert _history(repo) == [b, root]
    repo.garbage_collect()  # c (and its graft) go: no ref reaches it now
    assert repo.backend.get_objects([object_id_from_text(c)]) == [None]
    assert repo.backend.list_refs("graft/").keys() == {f"graft/{b}"}
    assert repo.readonly_session().store.storage.get("b") == b"2" * 700
    assert repo.verify().ok


def test_expire_plans_again_when_a_branch_it_deletes_moves_meanwhile(
        repo: vs.Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    root, a, b, c, cutoff = _old_history(repo)
    repo.create_branch("stale", a)
    landed: list[str] = []
    outcomes = race_before_write(repo, monkeypatch,
                                 lambda: landed.append(_commit(repo, "stale", s=b"s" * 700)))
    expired = repo.expire_snapshots(cutoff, delete_expired_branches=True)
    assert outcomes == [False, True]  # the branch it was deleting moved: planned again
    assert expired == {a, b}  # stale's new commit is young: the branch stays
    assert repo.lookup_branch("stale") == landed[0]
    assert _history(repo, branch="stale") == [landed[0], root]
    repo.garbage_collect()
    assert repo.readonly_session("stale").store.storage.get("s") == b"s" * 700
    assert repo.verify().ok


def test_expire_plans_again_when_another_expiry_writes_grafts_meanwhile(
        repo: vs.Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    root, a, b, c, cutoff = _old_history(repo)
    other: list[set[Any]] = []
    outcomes = race_before_write(repo, monkeypatch,
                                 lambda: other.append(repo.expire_snapshots(cutoff)))
    assert repo.expire_snapshots(cutoff) == set()  # the other run expired them
    assert other == [{a, b}]
    assert outcomes == [False]  # planned again, and found nothing left to write
    assert _history(repo) == [c, root]
    assert repo.verify().ok


def test_expire_plans_again_when_a_collection_took_what_it_grafts(
        repo: vs.Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    root, a, b, c, cutoff = _old_history(repo)
    repo.create_tag("v1", b)

    def drop_everything() -> None:  # b, the graft's subject, and c become garbage
        repo.delete_tag("v1")
        repo.reset_branch("main", root)
        assert repo.garbage_collect().deleted > 0

    outcomes = race_before_write(repo, monkeypatch, drop_everything)
    assert repo.expire_snapshots(cutoff) == set()  # nothing left to expire
    assert outcomes == ["missing"]  # then planned again, with nothing to write
    assert repo.backend.list_refs("graft/") == {}  # no graft of a collected snapshot
    assert repo.verify().ok


# -- purge -----------------------------------------------------------------------------


def _secret_history(repo: vs.Repository) -> str:
    """main holds /p; ``clean`` (at the first snapshot) never did. Returns main's tip."""
    repo.create_branch("clean", _history(repo)[0])
    _commit(repo, p__c__0=b"secret" * 100, keep=b"k" * 700)
    return _commit(repo, p__c__1=b"secret" * 100)


def test_purge_writes_once_when_a_branch_it_does_not_move_moves_meanwhile(
        repo: vs.Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    _secret_history(repo)
    landed: list[str] = []
    outcomes = race_before_write(repo, monkeypatch,
                                 lambda: landed.append(_commit(repo, "clean", x=b"x" * 700)))
    result = repo.purge("/p")
    assert outcomes == [True]
    assert len(result.rewritten) == 2
    assert repo.lookup_branch("clean") == landed[0]  # untouched, and kept by the collection
    assert repo.readonly_session("clean").store.storage.get("x") == b"x" * 700
    assert repo.readonly_session().store.storage.get("p/c/0") is None
    assert repo.verify().ok


def test_purge_plans_again_when_a_branch_it_moves_moves_meanwhile(
        repo: vs.Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    _secret_history(repo)
    landed: list[str] = []
    outcomes = race_before_write(repo, monkeypatch,
                                 lambda: landed.append(_commit(repo, y=b"y" * 700)))
    result = repo.purge("/p")
    assert outcomes == [False, True]  # main moved: the new commit holds /p too
    assert repo.lookup_branch("main") == result.rewritten[SnapshotId(landed[0])]
    session = repo.readonly_session()
    assert session.store.storage.get("y") == b"y" * 700
    assert session.store.storage.get("p/c/0") is None
    assert all(repo.readonly_session(snapshot_id=info.id).store.storage.get("p/c/1") is None
               for info in repo.ancestry())
    assert repo.verify().ok


def test_purge_a_branch_reset_meanwhile_lands_after_it(
        repo: vs.Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    old = _secret_history(repo)
    outcomes = race_before_write(repo, monkeypatch, lambda: repo.reset_branch("clean", old))
    result = repo.purge("/p")
    assert outcomes == [True]
    # As a reset just after the purge: `clean` keeps the old snapshot (and its data)
    # until it moves on, and the collection that followed kept what it reaches.
    assert old in result.rewritten and repo.lookup_branch("clean") == old
    assert repo.readonly_session("clean").store.storage.get("p/c/1") == b"secret" * 100
    assert repo.readonly_session().store.storage.get("p/c/1") is None
    assert repo.verify().ok


def test_purge_starting_over_rewrites_only_what_landed_since(
        repo: vs.Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    _secret_history(repo)
    rewrites: list[object] = []
    encode = purge_module.encode_snapshot

    def encode_snapshot(snapshot: Any) -> Any:
        rewrites.append(snapshot)
        return encode(snapshot)

    monkeypatch.setattr(purge_module, "encode_snapshot", encode_snapshot)
    landed: list[str] = []
    outcomes = race_before_write(repo, monkeypatch, lambda: landed.append(
        _commit(repo, **{f"y{len(landed)}": b"y" * 700})), times=3)
    result = repo.purge("/p")
    assert outcomes == [False, False, False, True]  # main moved forward three times
    assert len(rewrites) == 2 + 3  # main's two snapshots once, then each new commit once
    assert set(result.rewritten) >= set(landed)
    assert repo.lookup_branch("main") == result.rewritten[SnapshotId(landed[-1])]
    assert repo.readonly_session().store.storage.get("y2") == b"y" * 700
    assert all(repo.readonly_session(snapshot_id=info.id).store.storage.get("p/c/0") is None
               for info in repo.ancestry())
    assert repo.verify().ok


def test_purge_starts_afresh_when_the_grafts_change_meanwhile(
        repo: vs.Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    _secret_history(repo)
    cutoff = _cutoff()
    _commit(repo, z=b"z" * 700)
    outcomes = race_before_write(repo, monkeypatch, lambda: repo.expire_snapshots(cutoff))
    result = repo.purge("/p")
    assert outcomes == [False, True]  # the grafts changed: the history it rewrote did too
    # The tip is rewritten on the grafted history: its expired ancestors are not.
    assert len(result.rewritten) == 1
    assert [info.message for info in repo.ancestry()] == ["c", "Repository initialized"]
    assert repo.readonly_session().store.storage.get("p/c/1") is None
    assert repo.verify().ok

"""History edits after ``expire_snapshots`` and ``garbage_collect`` removed old snapshots.

Expired snapshots leave every ancestry and gc deletes them, so merge,
merge_base, cherry-pick, revert, squash and amend must follow history as
``ancestry`` shows it (through grafts), never into a deleted snapshot. Each
test reopens the repository after gc, so nothing is served from the reader's
cache of the deleted snapshots.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import zarr

import versionstore as vs


def _set(repo: vs.Repository, branch: str, index: int, value: int, message: str) -> str:
    session = repo.writable_session(branch)
    zarr.open_array(session.store, path="t")[index] = value
    return session.commit(message)


@pytest.fixture(params=["memory", "lmdb"])
def expired(request: pytest.FixtureRequest, tmp_path: Path) -> vs.Repository:
    """main and dev forked at m2; everything but the tips expired and collected.

    ::

        init ← c1 ← m0 ← m1 ← m2 ← m3 ← m4 (main)      after: init ← m4 (main)
                                 ↖ d1 ← d2 (dev)              init ← d2 (dev)
    """
    storage = vs.in_memory_storage() if request.param == "memory" else vs.lmdb_storage(
        tmp_path / "repo")
    repo = vs.Repository.create(storage)
    session = repo.writable_session()
    zarr.create_array(session.store, name="t", shape=(4,), chunks=(1,), dtype="i4",
                      fill_value=0)[:] = 0
    session.commit("c1")
    for i in range(3):
        _set(repo, "main", 0, i + 1, f"m{i}")
    repo.create_branch("dev", repo.lookup_branch("main"))
    _set(repo, "dev", 1, 9, "d1")
    _set(repo, "main", 2, 7, "m3")
    time.sleep(0.01)
    cutoff = datetime.now(UTC)
    _set(repo, "main", 3, 5, "m4")
    _set(repo, "dev", 1, 8, "d2")
    assert len(repo.expire_snapshots(cutoff)) == 6
    assert repo.garbage_collect().deleted > 0
    repo.close()
    return vs.Repository.open(storage)


def _first(repo: vs.Repository) -> str:
    return [info.id for info in repo.ancestry()][-1]


def _read(repo: vs.Repository, branch: str = "main") -> list[int]:
    return zarr.open_array(repo.readonly_session(branch).store, path="t", mode="r")[:].tolist()


def test_merge_base_follows_grafts(expired: vs.Repository) -> None:
    main, dev = expired.lookup_branch("main"), expired.lookup_branch("dev")
    assert expired.merge_base(main, dev) == _first(expired)


def test_merge_after_expire_uses_the_visible_base(expired: vs.Repository) -> None:
    # The visible base is the first snapshot (no array yet): both sides created /t,
    # with chunk 0 equal (3; zeros are the fill value, so no chunk), chunk 1 only
    # on dev, chunks 2 and 3 only on main.
    tip = expired.merge("dev", "main", fast_forward=False)
    assert expired.lookup_snapshot(tip).parent_ids[1] == expired.lookup_branch("dev")
    assert _read(expired) == [3, 8, 7, 5]
    assert next(expired.ops_log()).kind == "merge"
    assert expired.verify().ok


def test_squash_across_expired_snapshots(expired: vs.Repository) -> None:
    before = _read(expired)
    squashed = expired.squash("main", since_snapshot_id=_first(expired), message="all")
    assert [i.id for i in expired.ancestry()] == [squashed, _first(expired)]
    assert _read(expired) == before
    assert expired.verify().ok


def test_cherry_pick_and_revert_take_the_grafted_parent(expired: vs.Repository) -> None:
    # d2's visible parent is the first snapshot: its change is all of /t.
    picked = expired.cherry_pick(expired.lookup_branch("dev"), "main")
    assert _read(expired) == [3, 8, 7, 5]
    expired.revert(picked, "main")
    assert _read(expired) == [3, 0, 7, 5]
    assert expired.verify().ok


def test_amend_keeps_the_grafted_parent(expired: vs.Repository) -> None:
    session = expired.writable_session("dev")
    zarr.open_array(session.store, path="t")[3] = 6
    amended = session.amend("d2, amended")
    assert expired.lookup_snapshot(amended).parent_ids == (_first(expired),)
    assert [i.message for i in expired.ancestry(branch="dev")] == [
        "d2, amended", "Repository initialized"]
    np.testing.assert_array_equal(_read(expired, "dev"), [3, 8, 0, 6])
    assert expired.verify().ok

"""History editing and maintenance on object storage (obstore's local store).

The same calls as on LMDB and in memory, on the object-storage backend:
merge (each ``on_conflict``), cherry-pick, revert, squash, amend with a
move, the ops log, expire and gc, and sizes — results checked through zarr.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import zarr
from obstore.store import LocalStore

import versionstore as vs


def _set(repo: vs.Repository, branch: str, index: int, value: int) -> str:
    session = repo.writable_session(branch)
    zarr.open_array(session.store, path="t")[index] = value
    return session.commit(f"t[{index}] = {value} on {branch}")


def _read(repo: vs.Repository, branch: str = "main", path: str = "t") -> list[int]:
    return zarr.open_array(repo.readonly_session(branch).store, path=path, mode="r")[:].tolist()


@pytest.fixture
def repo(tmp_path: Path) -> vs.Repository:
    repo = vs.Repository.create(vs.object_storage(LocalStore(str(tmp_path))))
    session = repo.writable_session()
    zarr.create_array(session.store, name="t", shape=(4,), chunks=(1,), dtype="i4",
                      fill_value=0)[:] = 1
    repo.create_branch("dev", session.commit("base"))
    return repo


@pytest.mark.parametrize(("on_conflict", "expected"), [("ours", 2), ("theirs", 3)])
def test_merge_each_on_conflict(repo: vs.Repository, on_conflict: str, expected: int) -> None:
    _set(repo, "main", 0, 2)
    _set(repo, "dev", 0, 3)
    _set(repo, "dev", 1, 4)
    before = list(repo.ops_log())
    with pytest.raises(vs.MergeConflictError) as caught:
        repo.merge("dev", "main")
    assert [(c.path, c.kind, c.coordinates) for c in caught.value.conflicts] == [
        ("/t", "chunk", (0,))]
    assert list(repo.ops_log()) == before  # refused: nothing changed
    merged = repo.merge("dev", "main", on_conflict=on_conflict)
    assert repo.lookup_snapshot(merged).parent_ids[1] == repo.lookup_branch("dev")
    assert _read(repo) == [expected, 4, 1, 1]
    assert next(repo.ops_log()).kind == "merge"
    assert repo.verify().ok


def test_cherry_pick_revert_squash_amend_move(repo: vs.Repository) -> None:
    base = repo.lookup_branch("main")
    picked = _set(repo, "dev", 2, 9)
    repo.cherry_pick(picked, "main")
    assert _read(repo) == [1, 1, 9, 1]
    repo.revert(picked, "main")
    assert _read(repo) == [1, 1, 1, 1]
    _set(repo, "main", 3, 7)
    squashed = repo.squash("main", since_snapshot_id=base, message="one")
    assert [i.id for i in repo.ancestry()][:2] == [squashed, base]
    session = repo.writable_session()
    session.move("/t", "/u")
    amended = session.amend()
    assert repo.lookup_snapshot(amended).message == "one"
    assert _read(repo, path="u") == [1, 1, 1, 7]
    assert [e.kind for e in repo.ops_log()][:5] == [
        "amend", "squash", "commit", "revert", "cherry_pick"]
    assert repo.verify().ok


def test_expire_gc_and_sizes(repo: vs.Repository) -> None:
    for value in range(2, 5):
        _set(repo, "main", 0, value)
    time.sleep(0.01)
    cutoff = datetime.now(UTC)
    _set(repo, "main", 1, 5)
    history = repo.du_history()
    assert [r.keys_changed for r in history][:4] == [1, 1, 1, 1]
    expired = repo.expire_snapshots(cutoff)
    assert len(expired) == 3
    assert [i.message for i in repo.ancestry()] == [
        "t[1] = 5 on main", "base", "Repository initialized"]
    summary = repo.garbage_collect(datetime.now(UTC) + timedelta(seconds=1))
    assert summary.deleted >= 3 and summary.bytes_deleted > 0
    assert [e.kind for e in repo.ops_log()][:2] == ["gc", "expire"]
    assert repo.du().chunks == 4 and _read(repo) == [4, 5, 1, 1]
    assert repo.merge("dev", "main") == repo.lookup_branch("main")  # an ancestor: a no-op
    assert repo.verify().ok

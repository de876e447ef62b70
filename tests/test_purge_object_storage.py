"""Purge on object storage: the rewritten history, and when the node's bytes leave the bucket.

Object storage has no atomic sweep, so every collection there keeps a grace
period (a day by default) for objects a writer stored and has not recorded
yet. The collection that follows a purge keeps it too, unless told
otherwise: the purged node's objects then go at a later ``garbage_collect``
past the grace period, or at once with ``gc_older_than=now``. Each test
scans every stored file for a marker from the purged data.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from obstore.store import LocalStore

import versionstore as vs

MARKER = np.random.default_rng(7).bytes(4096)
PROBE = MARKER[1000:1064]


def _holding(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and PROBE in p.read_bytes()]


def _repository(root: Path) -> vs.Repository:
    repo = vs.Repository.create(vs.object_storage(LocalStore(str(root))))
    session = repo.writable_session()
    session.store.storage.set("people/p042/c/0", MARKER)
    session.store.storage.set("public", b"p" * 3000)
    first = session.commit("private")
    repo.create_tag("v1", first)
    session = repo.writable_session()
    session.store.storage.set("public", b"q" * 3000)
    session.commit("more")
    assert _holding(root)
    return repo


def test_purge_keeps_the_grace_period_then_gc_deletes_the_bytes(tmp_path: Path) -> None:
    repo = _repository(tmp_path)
    result = repo.purge("/people/p042", message="consent withdrawn")
    assert len(result.rewritten) == 2 and result.gc.deleted == 0  # within the grace period
    for info in repo.ancestry(tag="v1"):
        assert repo.readonly_session(snapshot_id=info.id).store.storage.get(
            "people/p042/c/0") is None
    assert _holding(tmp_path)  # still stored: unreachable, awaiting the grace period
    later = repo.garbage_collect(older_than=datetime.now(UTC) + timedelta(seconds=1))
    assert later.deleted > 0
    assert _holding(tmp_path) == []
    assert repo.verify().ok


def test_purge_with_gc_older_than_now_deletes_at_once(tmp_path: Path) -> None:
    repo = _repository(tmp_path)
    result = repo.purge("/people/p042", gc_older_than=datetime.now(UTC) + timedelta(seconds=1))
    assert result.gc.deleted > 0 and result.gc.bytes_freed >= len(MARKER)
    assert _holding(tmp_path) == []
    assert [e.kind for e in repo.ops_log()][:2] == ["purge", "purge"]  # main and tag v1
    assert repo.verify().ok

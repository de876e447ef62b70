"""The object-storage backend: the backend conformance suite on obstore's memory and local
stores and on S3 (moto behind the serialising proxy), plus what only this backend has —
the log, its checkpoints, and their compaction by garbage collection.
"""

from __future__ import annotations

import pickle
from datetime import timedelta
from pathlib import Path

import pytest
from object_repo_support import S3Repos, aws_env_fixture, s3_fixture, s3_repos_fixture
from obstore.store import LocalStore, MemoryStore

import versionstore as vs
from versionstore.backend import object as object_backend
from versionstore.backend.object import ObjectBackend
from versionstore.backend.protocol import Backend
from versionstore.ids import hash_object
from versionstore.testing import BackendConformance

__all__ = ["aws_env_fixture", "s3_fixture", "s3_repos_fixture"]


class TestOnObstoreMemory(BackendConformance):
    @pytest.fixture
    def backend(self) -> Backend:
        return ObjectBackend(MemoryStore(), "repo")


class TestOnObstoreLocal(BackendConformance):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Backend:
        return ObjectBackend(LocalStore(str(tmp_path)), "repo")


class TestOnS3(BackendConformance):
    @pytest.fixture
    def backend(self, s3_repos: S3Repos) -> Backend:
        return s3_repos.storage().open_backend()


def test_two_processes_worth_of_backends_see_each_others_writes() -> None:
    store = MemoryStore()
    first, second = ObjectBackend(store, "r"), ObjectBackend(store, "r")
    assert first.compare_and_swap_ref("b", None, b"1")
    assert not second.compare_and_swap_ref("b", None, b"2")  # decided on the caught-up log
    assert second.compare_and_swap_ref("b", b"1", b"2")
    assert first.get_ref("b") == b"2"
    assert first.compare_and_swap_ref("b", b"2", b"3")  # stale view, caught up on the race


def test_consistent_reads_look_at_the_log_once_then_again_after_the_block() -> None:
    store = MemoryStore()
    first, second = ObjectBackend(store, "r"), ObjectBackend(store, "r")
    first.put_objects([], {"k": b"1"})
    with second.consistent_reads():
        assert second.get_ref("k") == b"1"  # written before the block: seen
        first.put_objects([], {"k": b"2"})
        assert second.get_ref("k") == b"1"  # one view for the block
        # A swap decided on the stale view fails, and the failure reads the log again.
        assert not second.compare_and_swap_ref("k", b"1", b"x")
        assert second.get_ref("k") == b"2"
        first.put_objects([], {"k": b"3"})
    assert second.get_ref("k") == b"3"  # outside the block every read looks


def test_checkpoints_let_a_new_reader_start_late_and_gc_compacts_the_log(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(object_backend, "CHECKPOINT_EVERY", 10)
    store = MemoryStore()
    writer = ObjectBackend(store, "r", log_retention=timedelta(0))
    for n in range(25):
        writer.put_objects([], {f"k/{n % 7}": str(n).encode()})
    expected = writer.list_refs("")
    names = [m["path"] for batch in store.list("r") for m in batch]
    assert "r/checkpoint/00000000000000000020" in names
    reader = ObjectBackend(store, "r")
    assert reader.list_refs("") == expected
    stale = ObjectBackend(store, "r")
    stale.get_ref("k/0")  # reads the log once, then falls behind
    oid = hash_object(1, b"x")
    writer.put_objects([(oid, b"x")])
    assert writer.delete_objects([oid], if_refs_are=expected)
    left = sorted(m["path"] for batch in store.list("r") for m in batch)
    assert [n for n in left if "/log/" in n] == [f"r/log/{n:020d}" for n in range(21, 26)]
    assert [n for n in left if "/checkpoint/" in n] == ["r/checkpoint/00000000000000000020"]
    writer.put_objects([], {"late": b"1"})
    assert stale.get_ref("late") == b"1"  # the gap sends it back to the checkpoint
    assert stale.list_refs("") == {**expected, "late": b"1"}
    assert ObjectBackend(store, "r").list_refs("") == {**expected, "late": b"1"}


def test_descriptions_pickle_their_configuration() -> None:
    # Built without any request; pickled as configuration (a dask worker reopens it).
    for storage in (vs.s3_storage(bucket="b", prefix="/p/", region="eu-west-1",
                                  access_key_id="k", secret_access_key="s"),
                    vs.gcs_storage(bucket="b", prefix="p", anonymous=True),
                    vs.azure_storage(account="acct", container="c", prefix="p", anonymous=True)):
        assert storage.prefix == "p"
        assert pickle.loads(pickle.dumps(storage)) == storage
    memory = vs.object_storage(MemoryStore(), "p")
    assert pickle.loads(pickle.dumps(memory)) is memory  # in this process: the same store
    assert vs.object_storage(MemoryStore(), "p") != memory

"""The history state machine (``test_history_state_machine``) on repositories on object storage.

Every step of ``HistoryMachine`` — writes, commits, rebases, branches, tags,
checkouts, diffs — runs on an ``ObjectBackend``: over obstore's in-memory
store, and over S3 (moto behind the serialising proxy, a fresh prefix per
example; fewer examples, as every step is HTTP).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings
from object_repo_support import S3Repos, aws_env_fixture, s3_fixture, s3_repos_fixture
from obstore.store import MemoryStore
from test_history_state_machine import HistoryMachine

import versionstore as vs

__all__ = ["aws_env_fixture", "s3_fixture", "s3_repos_fixture"]

_S3: list[S3Repos] = []


@pytest.fixture(autouse=True)
def _s3_for_the_machines(s3_repos: S3Repos) -> None:
    # Hypothesis' state machines are unittest cases: only autouse fixtures reach them.
    if not _S3:
        _S3.append(s3_repos)


class ObstoreMemoryHistoryMachine(HistoryMachine):
    node_limits = {"MAX_LEAF_ENTRIES": 3, "MAX_BRANCH_CHILDREN": 2, "TARGET_LEAF_BYTES": 1024}

    def make_storage(self) -> Any:
        return vs.object_storage(MemoryStore(), "repo")


class S3HistoryMachine(HistoryMachine):
    node_limits = {"MAX_LEAF_ENTRIES": 2, "MAX_BRANCH_CHILDREN": 3, "TARGET_LEAF_BYTES": 700}

    def make_storage(self) -> Any:
        return _S3[0].storage()


_PROFILE = settings()
TestHistoryOnObstoreMemory = ObstoreMemoryHistoryMachine.TestCase
TestHistoryOnObstoreMemory.settings = settings(
    _PROFILE, max_examples=max(5, _PROFILE.max_examples // 40))
TestHistoryOnS3 = pytest.mark.slow(S3HistoryMachine.TestCase)
TestHistoryOnS3.settings = settings(_PROFILE, max_examples=3,
                                    stateful_step_count=min(25, _PROFILE.stateful_step_count))

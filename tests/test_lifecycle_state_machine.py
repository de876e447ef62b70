"""A model-based test of expire, gc, purge and session cleanup with writers interleaved.

Actors: commits on two branches, a writable session that is always *resumed*
by id (as after a crash) to stage and commit, tags, resets, ``expire``,
``purge``, merges, squashes and amends (on histories that expiry and
collection have cut) and garbage collection — with a commit, a staged write or an
expire landing between gc's mark phase and its sweep. The model holds what
every branch tip, tag and the session must read; after every step the
repository must match it, and ``verify`` must stay clean: gc never deletes
anything reachable, whatever interleaves with it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from machine_support import OnEitherBackend

import versionstore as vs
from versionstore.gc import collect_garbage_by_listing

KEYS = st.sampled_from(["a", "b", "p/x", "p/y"])
VALUES = st.sampled_from([b"v", b"w", b"V" * 700, b"W" * 700, b"Z" * 900,
                          b"S" * 5000])  # staged alone: inline, in its record, a chunk
BRANCHES = st.sampled_from(["main", "dev"])
Content = dict[str, bytes]


class LifecycleMachine(OnEitherBackend, RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.create_repository()
        self.repo.create_branch("dev", self.repo.lookup_branch("main"))
        self.tips: dict[str, Content] = {"main": {}, "dev": {}}
        self.tags: dict[str, Content] = {}
        self.session_id: str | None = None
        self.session_branch = "main"
        self.session_base: Content = {}
        self.staged: dict[str, bytes] = {}

    def teardown(self) -> None:
        self.close_repository()

    # -- actions that may also run inside gc, between its mark phase and its sweep ---------

    def _commit(self, branch: str, key: str, value: bytes) -> None:
        session = self.repo.writable_session(branch)
        session.store.storage.set(key, value)
        try:
            session.commit(f"{key}={value[:1]!r}")
        except vs.NothingToCommitError:
            return
        self.tips[branch][key] = value

    def _stage(self, key: str, value: bytes) -> None:
        if self.session_id is None:
            session = self.repo.writable_session(self.session_branch)
            self.session_base = dict(self.tips[self.session_branch])
        else:
            session = self.repo.writable_session(resume=self.session_id)
        session.store.storage.set(key, value)
        self.session_id = session.session_id
        if self.session_base.get(key) == value:
            self.staged.pop(key, None)
        else:
            self.staged[key] = value
        if not self.staged:
            # Only identical rewrites are staged: the record stays while they do.
            self.staged[key] = value

    def _expire(self) -> None:
        time.sleep(0.001)
        self.repo.expire_snapshots(datetime.now(UTC))

    # -- rules --------------------------------------------------------------------------

    @rule(branch=BRANCHES, key=KEYS, value=VALUES)
    def commit(self, branch: str, key: str, value: bytes) -> None:
        self._commit(branch, key, value)

    @rule(key=KEYS, value=VALUES, branch=BRANCHES)
    def stage_in_resumed_session(self, key: str, value: bytes, branch: str) -> None:
        if self.session_id is None:
            self.session_branch = branch
        self._stage(key, value)

    @precondition(lambda self: self.session_id is not None)
    @rule()
    def commit_resumed_session(self) -> None:
        assert self.session_id is not None
        session = self.repo.writable_session(resume=self.session_id)
        try:
            session.commit("from a resumed session")
        except vs.ConflictError:
            session.discard_changes()
        except vs.NothingToCommitError:
            pass
        else:
            self.tips[self.session_branch].update(self.staged)
        self.session_id, self.staged = None, {}

    @precondition(lambda self: self.session_id is not None)
    @rule()
    def discard_resumed_session(self) -> None:
        assert self.session_id is not None
        self.repo.discard_session(self.session_id)
        self.session_id, self.staged = None, {}

    @rule(name=st.sampled_from(["t1", "t2", "t3"]), branch=BRANCHES)
    def tag(self, name: str, branch: str) -> None:
        if name in self.repo.list_tags():
            self.repo.delete_tag(name)
            self.tags.pop(name)
            return
        try:
            self.repo.create_tag(name, self.repo.lookup_branch(branch))
        except vs.ImmutableTagError:
            return
        self.tags[name] = dict(self.tips[branch])

    @rule(branch=BRANCHES, back=st.integers(1, 3))
    def reset_to_an_ancestor(self, branch: str, back: int) -> None:
        history = list(self.repo.ancestry(branch=branch))
        if len(history) <= back:
            return
        target = history[back].id
        self.repo.reset_branch(branch, target)
        view = self.repo.readonly_session(snapshot_id=target).store.storage
        self.tips[branch] = {k: v for k in ("a", "b", "p/x", "p/y")
                             if (v := view.get(k)) is not None}

    @rule()
    def expire(self) -> None:
        self._expire()

    # History edits after expiry and collection follow the history ``ancestry`` shows
    # (grafts): they must never read an expired, collected snapshot.

    @rule(on_conflict=st.sampled_from(["ours", "theirs"]))
    def merge_dev_into_main(self, on_conflict: str) -> None:
        base_id = self.repo.merge_base(self.repo.lookup_branch("main"),
                                       self.repo.lookup_branch("dev"))
        base = {} if base_id is None else self._read(snapshot_id=base_id)
        ours, theirs = self.tips["main"], self.tips["dev"]
        merged: Content = {}
        for key in {*base, *ours, *theirs}:  # plain keys: a 3-way merge key by key
            b, o, t = base.get(key), ours.get(key), theirs.get(key)
            value = o if o == t or t == b else t if o == b else (
                o if on_conflict == "ours" else t)
            if value is not None:
                merged[key] = value
        self.repo.merge("dev", "main", on_conflict=on_conflict)
        self.tips["main"] = merged

    @rule(branch=BRANCHES)
    def squash_down_to_the_first_snapshot(self, branch: str) -> None:
        history = list(self.repo.ancestry(branch=branch))
        if len(history) >= 3:
            self.repo.squash(branch, since_snapshot_id=history[-1].id, message="squashed")

    @rule(branch=BRANCHES)
    def amend_the_tip(self, branch: str) -> None:
        if self.repo.lookup_snapshot(self.repo.lookup_branch(branch)).parent_ids:
            self.repo.writable_session(branch).amend("amended")

    @rule(during=st.sampled_from(["nothing", "commit", "stage", "expire"]), key=KEYS,
          value=VALUES, how=st.sampled_from(["incremental", "incremental", "full", "listing"]))
    def collect(self, during: str, key: str, value: bytes, how: str = "incremental") -> None:
        """Collect garbage (incrementally, in full, or by listing) with ``during`` mid-way.

        The interleaved action lands just before the collection's atomic
        sweep: the ledger's ``sweep``, or ``delete_objects`` for the
        ledger-free full collection.
        """
        backend = self.repo.backend
        step = "delete_objects" if how == "listing" else "sweep"
        original = getattr(backend, step)

        def interleaved(*args: Any, **kwargs: Any) -> bool:
            backend.__dict__.pop(step)  # once
            if during == "commit":
                self._commit("main", key, value)
            elif during == "stage":
                self._stage(key, value)
            elif during == "expire":
                self._expire()
            return bool(original(*args, **kwargs))

        setattr(backend, step, interleaved)
        try:
            if how == "listing":
                collect_garbage_by_listing(self.repo.reader)
            else:
                self.repo.garbage_collect(full=how == "full")
        finally:
            backend.__dict__.pop(step, None)

    @rule(branch=BRANCHES, key=KEYS, value=VALUES, how=st.sampled_from(["commit", "stage"]))
    def collect_while_a_writer_revives_garbage(self, branch: str, key: str, value: bytes,
                                               how: str) -> None:
        """Make ``value`` garbage (commit, reset away), then re-reference it mid-gc."""
        self._commit(branch, key, value)
        self.reset_to_an_ancestor(branch, 1)
        self.collect(how, key, value, "incremental")

    @precondition(lambda self: self.session_id is None)
    @rule()
    def purge(self) -> None:
        self.repo.purge("/p")
        for content in [*self.tips.values(), *self.tags.values()]:
            for key in ("p/x", "p/y"):
                content.pop(key, None)

    @precondition(lambda self: self.session_id is not None)
    @rule()
    def purge_forced_past_an_open_session(self) -> None:
        affected = {b for b, content in self.tips.items() if any(k.startswith("p/")
                                                                  for k in content)}
        self.repo.purge("/p", force=True)
        for content in [*self.tips.values(), *self.tags.values()]:
            for key in ("p/x", "p/y"):
                content.pop(key, None)
        if self.session_id not in self.repo.resumable_sessions():
            self.session_id, self.staged = None, {}
        elif self.session_branch in affected:
            raise AssertionError("a session on a rewritten branch survived a forced purge")

    # -- invariants ----------------------------------------------------------------------

    def _read(self, **version: str) -> Content:
        view = self.repo.readonly_session(**version).store.storage
        return {k: v for k in ("a", "b", "p/x", "p/y") if (v := view.get(k)) is not None}

    @invariant()
    def refs_read_the_model(self) -> None:
        if not hasattr(self, "repo"):
            return
        for branch, content in self.tips.items():
            assert self._read(branch=branch) == content, branch
        assert self.repo.list_tags() == set(self.tags)
        for tag, content in self.tags.items():
            assert self._read(tag=tag) == content, tag

    @invariant()
    def the_session_resumes_with_its_staged_writes(self) -> None:
        if not hasattr(self, "repo") or self.session_id is None:
            return
        assert self.session_id in self.repo.resumable_sessions()
        storage = self.repo.writable_session(resume=self.session_id).store.storage
        for key, value in self.staged.items():
            assert storage.get(key) == value

    @invariant()
    def verifies(self) -> None:
        if hasattr(self, "repo"):
            report = self.repo.verify()
            assert report.ok, report.problems


class LMDBLifecycleMachine(LifecycleMachine):
    backend = "lmdb"


_PROFILE = settings()
TestLifecycleInMemory = LifecycleMachine.TestCase
TestLifecycleInMemory.settings = settings(_PROFILE,
                                          max_examples=max(10, _PROFILE.max_examples // 4))
TestLifecycleOnLMDB = LMDBLifecycleMachine.TestCase
TestLifecycleOnLMDB.settings = settings(_PROFILE,
                                        max_examples=max(5, _PROFILE.max_examples // 10))
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

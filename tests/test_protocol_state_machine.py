"""A model-based test of the staging / commit / gc / ref protocol with several actors.

Actors: copies of one writable session (pickled copies, as dask workers
hold them), commits from any copy — also with another copy's write landing
between the commit's read and its compare-and-swap — garbage collection,
branch resets and tags. The model says what every copy must see, what is
staged, whether the session is resumable, and what every ref points at; the
invariants check the repository against it after every step, and ``verify``
must stay clean (no dangling ref, no missing object). docs/format.md states
the invariants this exercises.
"""

from __future__ import annotations

import pickle
from typing import Any

import attrs
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)
from machine_support import OnEitherBackend

import versionstore as vs
from versionstore.refs import Refs

KEYS = st.sampled_from(["a", "b", "g/c"])
# Staged alone: inline values, values inside their staged record (600 bytes) and
# staged chunk objects (over STAGED_INLINE_LIMIT).
VALUES = st.sampled_from([b"x", b"y", b"X" * 600, b"Y" * 600, b"Z" * 5000])
Content = dict[str, bytes]


@attrs.define
class Copy:
    """One copy of the session, and what the model says it knows."""

    session: vs.Session
    base: str
    generation: int


class ProtocolMachine(OnEitherBackend, RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.create_repository()
        first = self.repo.lookup_branch("main")
        self.snapshots: dict[str, tuple[str | None, Content]] = {first: (None, {})}
        self.collected: set[str] = set()
        self.main = first
        self.tags: dict[str, str] = {}
        self.staged: dict[str, bytes | None] = {}
        self.record: tuple[str, int] | None = None
        self.copies = [Copy(self.repo.writable_session("main"), first, 0)]

    def teardown(self) -> None:
        self.close_repository()

    # -- the model --------------------------------------------------------------------------

    def content(self, snapshot: str) -> Content:
        return self.snapshots[snapshot][1]

    def adopt(self, copy: Copy) -> None:
        """What a copy's refresh does: follow a record of a newer generation."""
        if self.record is not None and self.record[1] > copy.generation:
            copy.base, copy.generation = self.record

    def keep_record(self, copy: Copy) -> None:
        """The session rule after a staging write by ``copy``: create, never delete."""
        if self.staged and self.record is None:
            self.record = (copy.base, copy.generation)

    def reachable(self) -> set[str]:
        roots = [self.main, *self.tags.values()]
        if self.record is not None and self.staged:
            roots.append(self.record[0])
        seen: set[str] = set()
        while roots:
            snapshot = roots.pop()
            if snapshot not in seen:
                seen.add(snapshot)
                parent = self.snapshots[snapshot][0]
                if parent is not None:
                    roots.append(parent)
        return seen

    def live(self) -> list[str]:
        return sorted(set(self.snapshots) - self.collected)

    # -- actors -----------------------------------------------------------------------------

    @rule(data=st.data())
    def pickle_a_copy(self, data: st.DataObject) -> None:
        copy = data.draw(st.sampled_from(self.copies))
        if copy.base in self.collected:
            with pytest.raises(vs.SnapshotNotFoundError):  # reset away and collected
                pickle.loads(pickle.dumps(copy.session))
            return
        if len(self.copies) < 4:
            clone = pickle.loads(pickle.dumps(copy.session))
            self.copies.append(Copy(clone, copy.base, copy.generation))

    @rule(data=st.data(), key=KEYS, value=VALUES)
    def write(self, data: st.DataObject, key: str, value: bytes) -> None:
        copy = data.draw(st.sampled_from(self.copies))
        if self.record is None and copy.base in self.collected:
            with pytest.raises(vs.SnapshotNotFoundError):
                copy.session.set_values([(key, value)])
            return
        copy.session.set_values([(key, value)])
        self.staged[key] = value
        self.keep_record(copy)

    @rule(data=st.data(), key=KEYS)
    def erase(self, data: st.DataObject, key: str) -> None:
        copy = data.draw(st.sampled_from(self.copies))
        self.adopt(copy)
        if copy.base in self.collected:
            return  # covered by test_protocol: a copy on a collected base fails clearly
        copy.session.erase_keys([key])
        if key in self.content(copy.base):
            self.staged[key] = None
        else:
            self.staged.pop(key, None)
        self.keep_record(copy)

    def expect_commit(self, copy: Copy, staged: dict[str, bytes | None]
                      ) -> tuple[str, Content] | type[Exception] | None:
        """Predict a commit of ``staged`` by ``copy`` (already adopted)."""
        if not staged:
            return vs.NothingToCommitError
        tip = self.content(self.main)
        if self.main != copy.base:
            base = self.content(copy.base)
            # An identical rewrite of a key the branch changed is no change of ours.
            staged = {k: v for k, v in staged.items()
                      if base.get(k) == tip.get(k) or base.get(k) != v}
            if any(base.get(k) != tip.get(k) and v != tip.get(k) for k, v in staged.items()):
                return vs.ConflictError
        new = dict(tip)
        for key, value in staged.items():
            if value is None:
                new.pop(key, None)
            else:
                new[key] = value
        if new == tip:
            return None  # identical rewrites: NothingToCommitError, staging cleared
        return self.main, new

    @rule(data=st.data(), interleave=st.none() | st.tuples(KEYS, VALUES))
    def commit(self, data: st.DataObject, interleave: tuple[str, bytes] | None) -> None:
        copy = data.draw(st.sampled_from(self.copies))
        self.adopt(copy)
        if copy.base in self.collected:
            return
        staged = dict(self.staged)
        expected = self.expect_commit(copy, staged)
        if not isinstance(expected, tuple):
            with pytest.raises(expected or vs.NothingToCommitError):
                copy.session.commit("c")
            if expected is None:
                self.staged.clear()
                if self.main != copy.base:  # the session follows the branch it matches
                    copy.base, copy.generation = self.main, copy.generation + 1
                    self.record = (copy.base, copy.generation)
            return
        other = data.draw(st.sampled_from(self.copies)) if interleave else None
        move = Refs.move_branch

        def racing(refs: Refs, *args: Any, **kwargs: Any) -> bool:
            assert other is not None and interleave is not None
            other.session.set_values([interleave])
            return move(refs, *args, **kwargs)

        if interleave:
            Refs.move_branch = racing  # type: ignore[method-assign]
        try:
            snapshot = copy.session.commit("c")
        finally:
            Refs.move_branch = move  # type: ignore[method-assign]
        parent, content = expected
        self.snapshots[snapshot] = (parent, content)
        self.main = snapshot
        copy.base, copy.generation = snapshot, copy.generation + 1
        self.staged = {}
        if interleave is not None and staged.get(interleave[0]) != interleave[1]:
            self.staged[interleave[0]] = interleave[1]
        self.record = (snapshot, copy.generation)

    @rule(data=st.data())
    def reset_main(self, data: st.DataObject) -> None:
        target = data.draw(st.sampled_from(list(self.snapshots)))
        if target in self.collected:
            with pytest.raises(vs.SnapshotNotFoundError):
                self.repo.reset_branch("main", target)
            return
        self.repo.reset_branch("main", target)
        self.main = target

    @rule(data=st.data(), name=st.sampled_from(["t1", "t2"]))
    def tag(self, data: st.DataObject, name: str) -> None:
        target = data.draw(st.sampled_from(list(self.snapshots)))
        if name in self.tags:
            self.repo.delete_tag(name)
            del self.tags[name]
            return
        if f"tag/{name}" in self.repo.backend.list_refs("tag/") or target in self.collected:
            with pytest.raises((vs.SnapshotNotFoundError, vs.ImmutableTagError)):
                self.repo.create_tag(name, target)
            return
        self.repo.create_tag(name, target)
        self.tags[name] = target

    @rule()
    def collect(self) -> None:
        self.repo.garbage_collect()
        self.collected |= set(self.snapshots) - self.reachable()
        if not self.staged and self.record is not None and (
                self.record[1] == 0 or self.record[0] in self.collected):
            # An empty record is pruned if its session never committed, or with its
            # base: kept otherwise, so an idle copy follows it rather than going back.
            self.record = None

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def refs_match(self) -> None:
        if not hasattr(self, "repo"):
            return
        assert self.repo.lookup_branch("main") == self.main
        assert {n: self.repo.lookup_tag(n) for n in self.repo.list_tags()} == self.tags
        main = self.repo.readonly_session("main").store.storage
        assert {k: main.get(k) for k in main.list()} == self.content(self.main)

    @invariant()
    def staging_matches(self) -> None:
        if not hasattr(self, "repo"):
            return
        sid = str(self.copies[0].session.session_id)
        assert self.repo.resumable_sessions() == ({sid: "main"} if self.staged else {})
        assert bool(self.repo.backend.list_refs("session/")) == (self.record is not None)

    @invariant()
    def copies_see_their_view(self) -> None:
        if not hasattr(self, "repo"):
            return
        for copy in self.copies:
            self.adopt(copy)
            if copy.base in self.collected:
                continue
            view = dict(self.content(copy.base))
            for key, value in self.staged.items():
                if value is None:
                    view.pop(key, None)
                else:
                    view[key] = value
            storage = copy.session.store.storage
            assert {k: storage.get(k) for k in storage.list()} == view
            assert copy.session.snapshot_id == copy.base

    @invariant()
    def verifies(self) -> None:
        if hasattr(self, "repo"):
            report = self.repo.verify()
            assert report.ok, report.problems


class LMDBProtocolMachine(ProtocolMachine):
    backend = "lmdb"


_PROFILE = settings()
TestProtocolInMemory = ProtocolMachine.TestCase
TestProtocolInMemory.settings = settings(_PROFILE, max_examples=max(10, _PROFILE.max_examples // 4))
TestProtocolOnLMDB = LMDBProtocolMachine.TestCase
TestProtocolOnLMDB.settings = settings(_PROFILE, max_examples=max(5, _PROFILE.max_examples // 10))

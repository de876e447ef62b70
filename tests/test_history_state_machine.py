"""A hypothesis state machine for the versioned engine against a plain-Python model.

The model is the history as a user thinks of it: every snapshot is a dict of
key → value with a parent, a message and metadata; branches and tags are
dicts of name → snapshot id; the writable session is a base snapshot plus a
dict of staged changes. The machine runs random writes (small values that live
inline and values above ``INLINE_LIMIT`` that become chunk objects), commits,
rebases, branch and tag operations, checkouts, status and diffs on a real
``Repository``, and checks after each step that the engine agrees with the
model: the writable session's view, every branch's ancestry (ids, parents,
messages, metadata exactly as given), tags, and the content of any version.

Keys are plain (no ``zarr.json`` anywhere), so a ``Diff`` reports every changed
key in ``updated_keys`` and nothing else. It runs on both backends: in memory,
and on LMDB in a fresh directory per example (fewer examples: disk is slower).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from datetime import UTC, timedelta, timezone
from typing import Any, Literal

import attrs
import pytest
from hypothesis import event, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

import versionstore as vs
from versionstore import tree
from versionstore.ids import object_id_from_text
from versionstore.records import Branch
from versionstore.repository import INITIAL_MESSAGE
from versionstore.session import INLINE_LIMIT
from zarrstore.errors import ReadOnlyError
from zarrstore.protocol import DirListing

# -- the alphabet ------------------------------------------------------------------------

#: Flat-store keys: a key may also be a "directory" of others ("a/x" and "a/x/1"), and
#: "a-b", "a.b" sort before "a/…" while "a0" sorts right after it — the edges of listing.
KEYS = ["a", "a-b", "a.b", "a/x", "a/y", "a/x/1", "a0", "b/c", "b/c/d", "z"]
PREFIXES = ["", "a/", "a/x/", "b/", "b/c/", "z/"]
#: "v1" is both a branch and a tag name: the namespaces are separate.
BRANCHES = ["main", "dev", "feature", "feature/x", "v1"]
TAGS = ["v1", "v2", "rel/1"]

SMALL = st.binary(max_size=12)
LARGE = st.binary(min_size=INLINE_LIMIT + 1, max_size=INLINE_LIMIT + 300)
#: Shared values make identical chunks (stored once) and identical inline entries likely.
SHARED = st.sampled_from([b"", b"same", b"i" * INLINE_LIMIT, b"c" * (INLINE_LIMIT + 1),
                          b"d" * 2000])
VALUES = st.one_of(SMALL, LARGE, SHARED)

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))])),
)
METADATA = st.dictionaries(
    st.text(max_size=6),
    st.recursive(
        _SCALARS,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3),
            st.tuples(inner, inner),
            st.dictionaries(st.text(max_size=4), inner, max_size=3),
        ),
        max_leaves=6,
    ),
    max_size=4,
)
MESSAGES = st.text(max_size=20)
#: One write: ``("set", key, value)``, ``("erase", key)`` or ``("erase_prefix", prefix)``.
WRITE = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(KEYS), VALUES),
    st.tuples(st.just("set"), st.sampled_from(KEYS), VALUES),
    st.tuples(st.just("erase"), st.sampled_from(KEYS)),
    st.tuples(st.just("erase_prefix"), st.sampled_from(PREFIXES)),
)
WRITES = st.lists(WRITE, min_size=1, max_size=4)


def _same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (``True`` is not ``1``)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _listing(prefix: str, content: Mapping[str, bytes]) -> DirListing:
    keys, prefixes = set(), set()
    for key in content:
        if key.startswith(prefix):
            head, slash, _ = key[len(prefix):].partition("/")
            if slash:
                prefixes.add(prefix + head + "/")
            else:
                keys.add(key)
    return DirListing(keys=tuple(sorted(keys)), prefixes=tuple(sorted(prefixes)))


def _changed(old: Mapping[str, bytes], new: Mapping[str, bytes]) -> set[str]:
    return {key for key in old.keys() | new.keys() if old.get(key) != new.get(key)}


def check_content(storage: Any, expected: Mapping[str, bytes]) -> None:
    """``storage`` holds exactly ``expected``: values, sizes, listings."""
    keys = sorted(expected)
    assert list(storage.list()) == keys
    assert storage.get_many([(key, None) for key in keys]) == [expected[k] for k in keys]
    for key in KEYS:
        assert storage.get(key) == expected.get(key), key
        assert storage.size(key) == (len(expected[key]) if key in expected else None), key
    for prefix in PREFIXES:
        assert storage.list_dir(prefix) == _listing(prefix, expected), prefix
        assert list(storage.list_prefix(prefix)) == [k for k in keys if k.startswith(prefix)]


# -- the model ---------------------------------------------------------------------------


@attrs.frozen
class SnapshotModel:
    parent: str | None
    message: str
    metadata: dict[str, Any]
    content: dict[str, bytes]


@attrs.define
class WritableModel:
    """A writable session and what it should hold: a base plus staged changes."""

    session: vs.Session
    branch: str
    base: str
    #: Staged entries: key → new value, or ``None`` for a staged deletion.
    changes: dict[str, bytes | None] = attrs.Factory(dict)


class HistoryMachine(RuleBasedStateMachine):
    """Random history operations on a repository, checked against the model."""

    backend: Literal["memory", "lmdb"] = "memory"
    #: Tree node limits for this machine: tiny, so that ten keys make a tree several levels
    #: deep (splits, sparse nodes after deletions, diffs and listings across leaves).
    node_limits: dict[str, int] = {
        "MAX_LEAF_ENTRIES": 3, "MAX_BRANCH_CHILDREN": 2, "TARGET_LEAF_BYTES": 1024
    }

    def __init__(self) -> None:
        super().__init__()
        self.saved_limits = {name: getattr(tree, name) for name in self.node_limits}
        for name, value in self.node_limits.items():
            setattr(tree, name, value)
        self.directory: str | None = None
        self.storage = self.make_storage()
        self.repo = vs.Repository.create(self.storage)
        initial = self.repo.lookup_branch("main")
        self.snapshots: dict[str, SnapshotModel] = {
            initial: SnapshotModel(parent=None, message=INITIAL_MESSAGE, metadata={}, content={})
        }
        self.branches: dict[str, str] = {"main": initial}
        self.tags: dict[str, str] = {}
        self.deleted_tags: set[str] = set()
        self.writer = WritableModel(self.repo.writable_session("main"), "main", initial)
        #: Writable sessions switched away from, by session id (they stay resumable).
        self.parked: dict[str, WritableModel] = {}

    def make_storage(self) -> Any:
        """A fresh storage for this example (subclasses run the machine on others)."""
        if self.backend == "lmdb":
            self.directory = tempfile.mkdtemp(prefix="vs-history-")
            return vs.lmdb_storage(self.directory)
        return vs.in_memory_storage()

    def teardown(self) -> None:
        try:
            if hasattr(self, "repo"):
                self.check_every_snapshot()
        finally:
            for name, value in self.saved_limits.items():
                setattr(tree, name, value)
            if hasattr(self, "repo"):
                self.repo.close()
            if self.directory is not None:
                shutil.rmtree(self.directory, ignore_errors=True)

    # -- model helpers ------------------------------------------------------------------

    def view(self, writer: WritableModel) -> dict[str, bytes]:
        content = dict(self.snapshots[writer.base].content)
        for key, value in writer.changes.items():
            if value is None:
                content.pop(key, None)
            else:
                content[key] = value
        return content

    def chain(self, snapshot_id: str) -> list[str]:
        ids: list[str] = []
        current: str | None = snapshot_id
        while current is not None:
            ids.append(current)
            current = self.snapshots[current].parent
        return ids

    def conflicts(self, writer: WritableModel, tip: str) -> set[str]:
        """Staged keys that the branch also changed since the session's base, differently."""
        base, theirs = self.snapshots[writer.base].content, self.snapshots[tip].content
        moved = _changed(base, theirs)
        # A staged value the base already held is no change of ours: never a conflict.
        return {k for k, v in writer.changes.items()
                if k in moved and theirs.get(k) != v and base.get(k) != v}

    def identical_rewrites_of_moved(self, writer: WritableModel, tip: str) -> set[str]:
        """Staged keys the branch changed, where we staged what the base held (theirs stand)."""
        base, theirs = self.snapshots[writer.base].content, self.snapshots[tip].content
        moved = _changed(base, theirs)
        return {k for k, v in writer.changes.items() if k in moved and base.get(k) == v}

    def draw_version(self, data: st.DataObject) -> tuple[dict[str, str], str]:
        """A version as ``diff`` keywords' suffix → value, and the snapshot it names."""
        # Snapshot ids hash their creation time, so choices are ordered by creation and by
        # name, never by id: the same draws must pick the same versions on a replay.
        choices = [("branch", name, t) for name, t in sorted(self.branches.items())]
        choices += [("tag", name, t) for name, t in sorted(self.tags.items())]
        choices += [("snapshot_id", s, s) for s in self.snapshots]
        kind, name, snapshot_id = data.draw(st.sampled_from(choices))
        return {kind: name}, snapshot_id

    # -- writes -------------------------------------------------------------------------

    def apply(self, writer: WritableModel, op: tuple[Any, ...]) -> None:
        """Run one write on ``writer``'s session and on its model."""
        storage = writer.session.store.storage
        base = self.snapshots[writer.base].content
        if op[0] == "set":
            _, key, value = op
            storage.set(key, value)
            writer.changes[key] = value
            return
        if op[0] == "erase":
            storage.erase(op[1])
            erased = [op[1]]
        else:
            erased = [k for k in self.view(writer) if k.startswith(op[1])]
            storage.erase_prefix(op[1])
        for key in erased:
            # A deletion is staged only for keys the base has; otherwise the key is unstaged.
            if key in base:
                writer.changes[key] = None
            else:
                writer.changes.pop(key, None)

    def commit_on(self, writer: WritableModel, message: str, metadata: dict[str, Any]
                  ) -> str | None:
        """Commit ``writer``'s session, checking the outcome the model predicts."""
        tip = self.branches.get(writer.branch)
        if not writer.changes:
            event("commit: nothing staged")
            with pytest.raises(vs.NothingToCommitError):
                writer.session.commit(message, metadata=metadata)
            return None
        if tip is None:
            event("commit: branch deleted")
            with pytest.raises(vs.BranchNotFoundError):
                writer.session.commit(message, metadata=metadata)
            return None
        conflicts = self.conflicts(writer, tip)
        if conflicts:
            event("commit: conflict")
            with pytest.raises(vs.ConflictError) as caught:
                writer.session.commit(message, metadata=metadata)
            assert caught.value.keys == conflicts
            assert caught.value.branch == writer.branch
            return None
        content = dict(self.snapshots[tip].content)
        ignored = self.identical_rewrites_of_moved(writer, tip)
        for key, value in writer.changes.items():
            if key in ignored:
                continue
            if value is None:
                content.pop(key, None)
            else:
                content[key] = value
        if content == self.snapshots[tip].content:
            # Identical rewrites are not changes: nothing is committed, they are cleared,
            # and the session follows the branch it now matches.
            event("commit: only identical rewrites")
            with pytest.raises(vs.NothingToCommitError):
                writer.session.commit(message, metadata=metadata)
            writer.changes.clear()
            writer.base = tip
            return None
        event("commit: rebased onto a moved branch" if tip != writer.base else "commit: ok")
        snapshot_id = writer.session.commit(message, metadata=metadata)
        note(f"committed {snapshot_id} on {writer.branch}")
        root = self.repo.reader.snapshot(object_id_from_text(snapshot_id)).tree
        top = None if root is None else self.repo.reader.node(root)
        event(f"committed tree height {top.level if isinstance(top, Branch) else 0}")
        assert snapshot_id not in self.snapshots
        self.snapshots[snapshot_id] = SnapshotModel(
            parent=tip, message=message, metadata=metadata, content=content
        )
        self.branches[writer.branch] = snapshot_id
        writer.base = snapshot_id
        writer.changes.clear()
        return snapshot_id

    @rule(ops=WRITES)
    def write(self, ops: list[tuple[Any, ...]]) -> None:
        for op in ops:
            self.apply(self.writer, op)

    @rule(ops=WRITES, message=MESSAGES, metadata=METADATA)
    def write_and_commit(self, ops: list[tuple[Any, ...]], message: str,
                         metadata: dict[str, Any]) -> None:
        for op in ops:
            self.apply(self.writer, op)
        self.commit_on(self.writer, message, metadata)

    @rule(message=MESSAGES, metadata=METADATA)
    def commit(self, message: str, metadata: dict[str, Any]) -> None:
        self.commit_on(self.writer, message, metadata)

    @rule(ops=WRITES, message=MESSAGES)
    def another_writer_commits(self, ops: list[tuple[Any, ...]], message: str) -> None:
        """A second session commits to our branch, so our next commit must rebase or conflict."""
        branch = self.writer.branch
        if branch not in self.branches:
            with pytest.raises(vs.BranchNotFoundError):
                self.repo.writable_session(branch)
            return
        other = WritableModel(self.repo.writable_session(branch), branch, self.branches[branch])
        for op in ops:
            self.apply(other, op)
        self.commit_on(other, message, {"writer": "other"})
        other.session.discard_changes()

    @rule()
    def discard_changes(self) -> None:
        self.writer.session.discard_changes()
        self.writer.changes.clear()

    @rule(keep=st.sampled_from(["raise", "ours", "theirs"]))
    def rebase(self, keep: Literal["raise", "ours", "theirs"]) -> None:
        writer = self.writer
        tip = self.branches.get(writer.branch)
        if tip is None:
            with pytest.raises(vs.BranchNotFoundError):
                writer.session.rebase(keep=keep)
            return
        conflicts = self.conflicts(writer, tip)
        if conflicts and keep == "raise":
            with pytest.raises(vs.ConflictError) as caught:
                writer.session.rebase(keep=keep)
            assert caught.value.keys == conflicts
            return
        if tip != writer.base:
            event(f"rebase: moved, keep={keep}, conflicts={bool(conflicts)}")
        ignored = self.identical_rewrites_of_moved(writer, tip)
        writer.session.rebase(keep=keep)
        for key in ignored | (conflicts if keep == "theirs" else set()):
            del writer.changes[key]
        writer.base = tip

    # -- sessions -----------------------------------------------------------------------

    @rule(branch=st.sampled_from(BRANCHES))
    def switch_branch(self, branch: str) -> None:
        """Open a writable session on another branch; the old one is parked, still staged."""
        if branch not in self.branches:
            with pytest.raises(vs.BranchNotFoundError):
                self.repo.writable_session(branch)
            return
        session = self.repo.writable_session(branch)
        assert session.branch == branch and not session.read_only
        old = self.writer
        assert old.session.session_id is not None
        self.parked[old.session.session_id] = old
        self.writer = WritableModel(session, branch, self.branches[branch])

    @precondition(lambda self: any(w.changes for w in self.parked.values()))
    @rule(data=st.data())
    def resume_parked(self, data: st.DataObject) -> None:
        """Pick a parked session back up by id, as a new process would after a crash."""
        session_id = data.draw(st.sampled_from(
            [sid for sid, w in self.parked.items() if w.changes]  # in parking order, not by id
        ))
        parked = self.parked.pop(session_id)
        session = self.repo.writable_session(resume=session_id)
        assert session.session_id == session_id
        assert session.branch == parked.branch
        assert session.snapshot_id == parked.base
        old = self.writer
        assert old.session.session_id is not None
        self.parked[old.session.session_id] = old
        self.writer = WritableModel(session, parked.branch, parked.base, parked.changes)

    @rule()
    def check_status(self) -> None:
        writer = self.writer
        status = writer.session.status()
        changed = _changed(self.snapshots[writer.base].content, self.view(writer))
        assert status == vs.Diff(updated_keys=frozenset(changed))
        assert status.is_empty() == (not changed)

    # -- refs ---------------------------------------------------------------------------

    @rule(name=st.sampled_from(BRANCHES), data=st.data())
    def create_branch(self, name: str, data: st.DataObject) -> None:
        target = data.draw(st.sampled_from(list(self.snapshots)))
        if name in self.branches:
            with pytest.raises(vs.RefExistsError):
                self.repo.create_branch(name, target)
            return
        self.repo.create_branch(name, target)
        self.branches[name] = target

    @rule(data=st.data())
    def reset_branch(self, data: st.DataObject) -> None:
        # Often the writable session's own branch, which then moves under the session.
        name = data.draw(st.sampled_from([self.writer.branch, *BRANCHES]))
        target = data.draw(st.sampled_from(list(self.snapshots)))
        if name not in self.branches:
            with pytest.raises(vs.BranchNotFoundError):
                self.repo.reset_branch(name, target)
            return
        self.repo.reset_branch(name, target)
        self.branches[name] = target

    @rule(name=st.sampled_from(BRANCHES))
    def delete_branch(self, name: str) -> None:
        if name == "main":
            with pytest.raises(vs.ProtectedBranchError):
                self.repo.delete_branch(name)
        elif name not in self.branches:
            with pytest.raises(vs.BranchNotFoundError):
                self.repo.delete_branch(name)
        else:
            self.repo.delete_branch(name)
            del self.branches[name]

    @rule(name=st.sampled_from(TAGS), data=st.data())
    def create_tag(self, name: str, data: st.DataObject) -> None:
        target = data.draw(st.sampled_from(list(self.snapshots)))
        if name in self.deleted_tags:
            with pytest.raises(vs.ImmutableTagError):
                self.repo.create_tag(name, target)
        elif name in self.tags:
            # Tags never move: re-creating one at any snapshot (even its own) is refused.
            with pytest.raises(vs.RefExistsError):
                self.repo.create_tag(name, target)
        else:
            self.repo.create_tag(name, target)
            self.tags[name] = target

    @rule(name=st.sampled_from(TAGS))
    def delete_tag(self, name: str) -> None:
        if name not in self.tags:
            with pytest.raises(vs.TagNotFoundError):
                self.repo.delete_tag(name)
            return
        self.repo.delete_tag(name)
        del self.tags[name]
        self.deleted_tags.add(name)

    # -- reading history ----------------------------------------------------------------

    @rule(data=st.data())
    def checkout(self, data: st.DataObject) -> None:
        version, snapshot_id = self.draw_version(data)
        session = self.repo.readonly_session(**version)
        assert session.read_only and session.branch is None
        assert session.snapshot_id == snapshot_id
        check_content(session.store.storage, self.snapshots[snapshot_id].content)
        with pytest.raises(ReadOnlyError):
            session.store.storage.set("a", b"refused")
        with pytest.raises(vs.ReadOnlySessionError):
            session.commit("refused")

    @rule(name=st.sampled_from(BRANCHES + TAGS))
    def checkout_missing(self, name: str) -> None:
        if name not in self.branches:
            with pytest.raises(vs.BranchNotFoundError):
                self.repo.readonly_session(branch=name)
        if name not in self.tags:
            with pytest.raises(vs.TagNotFoundError):
                self.repo.readonly_session(tag=name)
            with pytest.raises(vs.TagNotFoundError):
                self.repo.lookup_tag(name)

    @rule(data=st.data())
    def checkout_as_of(self, data: st.DataObject) -> None:
        branch = data.draw(st.sampled_from(sorted(self.branches)))
        chain = self.chain(self.branches[branch])
        times = {sid: self.repo.lookup_snapshot(sid).written_at for sid in chain}
        picked = data.draw(st.sampled_from(chain))
        as_of = times[picked].astimezone(timezone(timedelta(hours=-7)))
        expected = next(sid for sid in chain if times[sid] <= as_of)
        session = self.repo.readonly_session(branch, as_of=as_of)
        assert session.snapshot_id == expected
        check_content(session.store.storage, self.snapshots[expected].content)

    @rule(data=st.data())
    def diff(self, data: st.DataObject) -> None:
        old_version, old = self.draw_version(data)
        new_version, new = self.draw_version(data)
        arguments = {f"from_{k}": v for k, v in old_version.items()}
        arguments |= {f"to_{k}": v for k, v in new_version.items()}
        changed = _changed(self.snapshots[old].content, self.snapshots[new].content)
        diff = self.repo.diff(**arguments)
        assert diff == vs.Diff(updated_keys=frozenset(changed)), arguments
        assert diff.is_empty() == (not changed)

    @rule(data=st.data())
    def open_another_repository(self, data: st.DataObject) -> None:
        """A second ``Repository`` on the same storage sees the same history; closing it
        leaves this one working (LMDB shares one environment per process)."""
        with pytest.raises(vs.RepositoryExistsError):
            vs.Repository.create(self.storage)
        with vs.Repository.open(self.storage) as other:
            assert other.list_branches() == set(self.branches)
            assert other.list_tags() == set(self.tags)
            version, snapshot_id = self.draw_version(data)
            session = other.readonly_session(**version)
            check_content(session.store.storage, self.snapshots[snapshot_id].content)
        assert self.repo.list_branches() == set(self.branches)

    @rule()
    def check_every_snapshot(self) -> None:
        """Every snapshot ever committed still reads back exactly, with its info."""
        for snapshot_id, model in self.snapshots.items():
            info = self.repo.lookup_snapshot(snapshot_id)
            assert info.id == snapshot_id and info.parent_id == model.parent
            assert info.message == model.message and _same(info.metadata, model.metadata)
            session = self.repo.readonly_session(snapshot_id=snapshot_id)
            check_content(session.store.storage, model.content)

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def refs_match(self) -> None:
        assert self.repo.list_branches() == set(self.branches)
        assert self.repo.list_tags() == set(self.tags)
        for name, target in self.branches.items():
            assert self.repo.lookup_branch(name) == target
        for name, target in self.tags.items():
            assert self.repo.lookup_tag(name) == target

    @invariant()
    def ancestry_matches(self) -> None:
        starts = [{"branch": b} for b in self.branches] + [{"tag": t} for t in self.tags]
        for start in starts:
            infos = list(self.repo.ancestry(**start))
            tip = self.branches[start["branch"]] if "branch" in start else self.tags[start["tag"]]
            assert [info.id for info in infos] == self.chain(tip), start
            for info in infos:
                model = self.snapshots[info.id]
                assert info.parent_id == model.parent
                assert info.message == model.message
                assert _same(info.metadata, model.metadata), (info.metadata, model.metadata)
                assert info.written_at.utcoffset() == timedelta(0)

    @invariant()
    def writable_view_matches(self) -> None:
        writer = self.writer
        session = writer.session
        assert session.snapshot_id == writer.base
        assert session.branch == writer.branch
        base = self.snapshots[writer.base].content
        differs = any(base.get(key) != value for key, value in writer.changes.items())
        assert session.has_uncommitted_changes == differs
        check_content(session.store.storage, self.view(writer))

    @invariant()
    def resumable_sessions_match(self) -> None:
        sessions = {**self.parked}
        assert self.writer.session.session_id is not None
        sessions[self.writer.session.session_id] = self.writer
        assert self.repo.resumable_sessions() == {
            session_id: writer.branch for session_id, writer in sessions.items() if writer.changes
        }


def test_a_session_whose_changes_were_all_unstaged_is_not_resumable() -> None:
    # Regression: erasing a key the base lacks (or setting then erasing a new key) left
    # the session's record behind, so resumable_sessions() listed a session with
    # nothing staged, whose resumed commit could only raise NothingToCommitError.
    repo = vs.Repository.create(vs.in_memory_storage())
    session = repo.writable_session("main")
    session.store.storage.erase("never-written")
    assert repo.resumable_sessions() == {}
    session.store.storage.set("k", b"v")
    assert repo.resumable_sessions() == {session.session_id: "main"}
    session.store.storage.erase("k")
    assert not session.has_uncommitted_changes
    assert repo.resumable_sessions() == {}


class LMDBHistoryMachine(HistoryMachine):
    backend = "lmdb"
    node_limits = {"MAX_LEAF_ENTRIES": 2, "MAX_BRANCH_CHILDREN": 3, "TARGET_LEAF_BYTES": 700}


_PROFILE = settings()
# Memory is fast; LMDB creates and syncs an environment per example, so it runs a tenth.
TestHistoryInMemory = HistoryMachine.TestCase
TestHistoryInMemory.settings = settings(_PROFILE, max_examples=max(10, _PROFILE.max_examples // 2))
TestHistoryOnLMDB = LMDBHistoryMachine.TestCase
TestHistoryOnLMDB.settings = settings(_PROFILE, max_examples=max(5, _PROFILE.max_examples // 10))

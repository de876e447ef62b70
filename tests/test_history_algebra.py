"""A hypothesis state machine for history editing against a dict-of-dicts model.

The model: every snapshot is a dict of key → value with a tuple of parents;
branches map names to snapshot ids; the ops log is a list of
``(kind, branch, old, new)``. Rules commit, branch, reset, merge (each
``on_conflict``, with and without fast-forward), cherry-pick, revert,
squash, amend and move on a real ``Repository``; the model predicts each
result with the merge rules written out plainly (``_model_merge``), and
after every step the engine must agree: every branch's content, first-parent
ancestry and ``parent_ids``, and the whole ops log. A refused operation must
change nothing.

Keys mimic Zarr: arrays ``a`` and ``g/b`` have a ``zarr.json`` (so deleting
one is a node deletion) and chunk keys ``…/c/0``, ``…/c/1``; ``x`` and
``g/x`` are plain keys. Runs on both backends, with tiny tree nodes so that
merges cross node boundaries.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from typing import Any

import attrs
import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import versionstore as vs
from versionstore import tree
from versionstore.session import INLINE_LIMIT

NODES = ["a", "g/b", "m", "g/m"]
KEYS = ["x", "g/x", "a/zarr.json", "a/c/0", "a/c/1", "g/b/zarr.json", "g/b/c/0", "g/b/c/1"]
BRANCHES = ["main", "dev", "job"]


def _document(version: int) -> bytes:
    return json.dumps({"zarr_format": 3, "node_type": "array", "shape": [2],
                       "chunk_key_encoding": {"name": "default"},
                       "attributes": {"v": version}}).encode()


def _value(key: str, choice: int) -> bytes:
    if key.endswith("zarr.json"):
        return _document(choice % 3)
    return bytes([choice]) * (1 if choice < 3 else INLINE_LIMIT + choice)


WRITE = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(KEYS), st.integers(0, 5)),
    st.tuples(st.just("erase"), st.sampled_from(KEYS), st.just(0)),
    st.tuples(st.just("delete_node"), st.sampled_from(["a", "g/b", "g"]), st.just(0)),
)
WRITES = st.lists(WRITE, min_size=1, max_size=3)
ON_CONFLICT = st.sampled_from(["raise", "ours", "theirs"])

Content = dict[str, bytes]


@attrs.frozen
class Snap:
    parents: tuple[str, ...]
    content: Content
    message: str


def _apply(content: Content, writes: list[tuple[str, str, int]]) -> Content:
    out = dict(content)
    for op, key, choice in writes:
        if op == "set":
            out[key] = _value(key, choice)
        elif op == "erase":
            out.pop(key, None)
        else:
            for name in [k for k in out if k.startswith(key + "/")]:
                del out[name]
    return out


def _under(key: str, directory: str) -> bool:
    return directory == "" or key.startswith(directory + "/")


def _changed(base: Content, side: Content) -> set[str]:
    return {k for k in base.keys() | side.keys() if base.get(k) != side.get(k)}


def _deleted_nodes(base: Content, side: Content) -> list[str]:
    found = {k[: -len("/zarr.json")] for k in base
             if k.endswith("/zarr.json") and k not in side}
    return [d for d in sorted(found) if not any(o != d and _under(d, o) for o in found)]


def _kind(key: str, ours: Content, theirs: Content) -> tuple[str, str]:
    directory = key.rpartition("/")[0]
    if key.endswith("zarr.json"):
        return "/" + directory, "metadata"
    match = re.fullmatch(r"(.+)/c/\d+", key)
    if match and (f"{match[1]}/zarr.json" in ours or f"{match[1]}/zarr.json" in theirs):
        return "/" + match[1], "chunk"
    return "/" + directory, "key"


def _model_merge(base: Content, ours: Content, theirs: Content, on_conflict: str
                 ) -> tuple[Content | None, set[tuple[str, str, str]]]:
    """The merge rules of ``versionstore.merge``, on plain dicts."""
    ours_changed, theirs_changed = _changed(base, ours), _changed(base, theirs)
    conflicts: set[tuple[str, str, str]] = set()
    doomed: dict[str, str] = {}
    sides = {"ours": (ours, ours_changed), "theirs": (theirs, theirs_changed)}
    for deleter, other in (("ours", "theirs"), ("theirs", "ours")):
        dside, dchanged = sides[deleter]
        oside, ochanged = sides[other]
        for directory in _deleted_nodes(base, dside):
            clash = sorted(k for k in ochanged if _under(k, directory)
                           and (k not in dchanged or dside.get(k) != oside.get(k)))
            if clash and directory not in doomed:
                event("deleted-vs-modified")
                doomed[directory] = deleter
                conflicts.add(("/" + directory, "deleted-vs-modified", clash[0]))
    result = dict(ours)
    for key in theirs_changed:
        if any(_under(key, d) for d in doomed):
            continue
        if key in ours_changed:
            if ours.get(key) == theirs.get(key):
                continue
            conflicts.add((*_kind(key, ours, theirs), key))
            if on_conflict != "theirs":
                continue
        if key in theirs:
            result[key] = theirs[key]
        else:
            result.pop(key, None)
    if conflicts and on_conflict == "raise":
        return None, conflicts
    for directory, deleter in doomed.items():
        if on_conflict == deleter or on_conflict == "theirs":
            for key in [k for k in result if _under(k, directory)]:
                del result[key]
        if on_conflict == "theirs" and deleter == "ours":
            result.update({k: v for k, v in theirs.items() if _under(k, directory)})
    return result, conflicts


class AlgebraMachine(RuleBasedStateMachine):
    backend = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.saved = {name: getattr(tree, name) for name in ("MAX_LEAF_ENTRIES",
                                                              "MAX_BRANCH_CHILDREN")}
        tree.MAX_LEAF_ENTRIES, tree.MAX_BRANCH_CHILDREN = 2, 2
        self.directory: str | None = None
        storage: Any = vs.in_memory_storage()
        if self.backend == "lmdb":
            self.directory = tempfile.mkdtemp(prefix="vs-algebra-")
            storage = vs.lmdb_storage(self.directory)
        self.repo = vs.Repository.create(storage)
        initial = self.repo.lookup_branch("main")
        self.snaps: dict[str, Snap] = {initial: Snap((), {}, "Repository initialized")}
        self.branches = {"main": initial}
        self.log: list[tuple[str, str, str | None, str | None]] = [
            ("create_branch", "main", None, initial)]
        self.tags: dict[str, str] = {}
        self.dead_tags: set[str] = set()

    def teardown(self) -> None:
        for name, value in self.saved.items():
            setattr(tree, name, value)
        self.repo.close()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- helpers --------------------------------------------------------------------------

    def _content(self, branch: str) -> Content:
        return self.snaps[self.branches[branch]].content

    def _move(self, kind: str, branch: str, new: str) -> None:
        self.log.append((kind, branch, self.branches.get(branch), new))
        self.branches[branch] = new

    def _record(self, kind: str, branch: str, new: str, parents: tuple[str, ...],
                content: Content, message: str) -> None:
        assert new not in self.snaps
        self.snaps[new] = Snap(parents, content, message)
        self._move(kind, branch, new)

    def _ancestors(self, snapshot: str) -> set[str]:
        found, pending = set(), [snapshot]
        while pending:
            current = pending.pop()
            if current not in found:
                found.add(current)
                pending.extend(self.snaps[current].parents)
        return found

    def _first_parents(self, snapshot: str) -> list[str]:
        chain = [snapshot]
        while self.snaps[chain[-1]].parents:
            chain.append(self.snaps[chain[-1]].parents[0])
        return chain

    def _stage(self, session: vs.Session, writes: list[tuple[str, str, int]]) -> None:
        storage = session.store.storage
        for op, key, choice in writes:
            if op == "set":
                storage.set(key, _value(key, choice))
            elif op == "erase":
                storage.erase(key)
            else:
                storage.erase_prefix(key + "/")

    # -- rules ----------------------------------------------------------------------------

    def _branch(self, data: st.DataObject, label: str = "branch") -> str:
        return data.draw(st.sampled_from(sorted(self.branches)), label=label)

    @rule(data=st.data(), writes=WRITES, message=st.text(max_size=5))
    def commit(self, data: st.DataObject, writes: list[tuple[str, str, int]], message: str
               ) -> None:
        self._commit(self._branch(data), writes, message)

    @precondition(lambda self: len(self.branches) > 1)
    @rule(data=st.data(), ours=WRITES, theirs=WRITES, on_conflict=ON_CONFLICT)
    def diverge_then_merge(self, data: st.DataObject, ours: list[tuple[str, str, int]],
                           theirs: list[tuple[str, str, int]], on_conflict: str) -> None:
        into = self._branch(data, "into")
        source = data.draw(st.sampled_from(sorted(set(self.branches) - {into})), label="source")
        self._commit(into, ours, "ours")
        self._commit(source, theirs, "theirs")
        self._merge(source, into, on_conflict, fast_forward=True)

    def _commit(self, branch: str, writes: list[tuple[str, str, int]], message: str) -> None:
        session = self.repo.writable_session(branch)
        self._stage(session, writes)
        content = _apply(self._content(branch), writes)
        if content == self._content(branch):
            with pytest.raises(vs.NothingToCommitError):
                session.commit(message)
            return
        new = session.commit(message)
        self._record("commit", branch, new, (self.branches[branch],), content, message)

    @precondition(lambda self: len(self.branches) < len(BRANCHES))
    @rule(data=st.data())
    def create_branch(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from([b for b in BRANCHES if b not in self.branches]))
        source = self._branch(data, "source")
        self.repo.create_branch(name, self.branches[source])
        self._move("create_branch", name, self.branches[source])

    @precondition(lambda self: len(self.branches) > 1)
    @rule(data=st.data())
    def delete_branch(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(set(self.branches) - {"main"})))
        self.repo.delete_branch(name)
        self.log.append(("delete_branch", name, self.branches.pop(name), None))

    @rule(data=st.data(), name=st.sampled_from(["v1", "v2"]))
    def tag(self, data: st.DataObject, name: str) -> None:
        if name in self.tags:
            self.repo.delete_tag(name)
            self.log.append(("delete_tag", name, self.tags.pop(name), None))
            self.dead_tags.add(name)
        elif name in self.dead_tags:
            with pytest.raises(vs.ImmutableTagError):
                self.repo.create_tag(name, self.branches["main"])
        else:
            target = data.draw(st.sampled_from(list(self.snaps)))
            self.repo.create_tag(name, target)
            self.tags[name] = target
            self.log.append(("create_tag", name, None, target))

    @rule(data=st.data())
    def reset(self, data: st.DataObject) -> None:
        branch = self._branch(data)
        target = data.draw(st.sampled_from(list(self.snaps)))
        self.repo.reset_branch(branch, target)
        self._move("reset_branch", branch, target)

    @precondition(lambda self: len(self.branches) > 1)
    @rule(data=st.data(), on_conflict=ON_CONFLICT, fast_forward=st.booleans())
    def merge(self, data: st.DataObject, on_conflict: str, fast_forward: bool) -> None:
        self._merge(self._branch(data, "source"), self._branch(data, "into"), on_conflict,
                    fast_forward)

    def _merge(self, source: str, into: str, on_conflict: str, fast_forward: bool) -> None:
        tip, theirs = self.branches[into], self.branches[source]
        common = self._ancestors(tip) & self._ancestors(theirs)
        lowest = {c for c in common
                  if not any(o != c and c in self._ancestors(o) for o in common)}
        base = self.repo.merge_base(tip, theirs)
        assert base in lowest if lowest else base is None
        if base == theirs:
            assert self.repo.merge(source, into, on_conflict=on_conflict,
                                   fast_forward=fast_forward) == tip
            return
        if base == tip and fast_forward:
            assert self.repo.merge(source, into, on_conflict=on_conflict) == theirs
            self._move("merge", into, theirs)
            return
        base_content = {} if base is None else self.snaps[base].content
        result, conflicts = _model_merge(base_content, self.snaps[tip].content,
                                         self.snaps[theirs].content, on_conflict)
        event(f"merge: {'refused' if result is None else on_conflict}, "
              f"{len(conflicts)} conflict(s)")
        if result is None:
            with pytest.raises(vs.MergeConflictError) as caught:
                self.repo.merge(source, into, fast_forward=fast_forward)
            assert {(c.path, c.kind, c.key) for c in caught.value.conflicts} == conflicts
            return
        new = self.repo.merge(source, into, on_conflict=on_conflict, fast_forward=fast_forward,
                              message="m")
        self._record("merge", into, new, (tip, theirs), result, "m")

    @rule(on_conflict=ON_CONFLICT, revert=st.booleans(), data=st.data())
    def cherry_pick_or_revert(self, on_conflict: str, revert: bool, data: st.DataObject
                              ) -> None:
        onto = self._branch(data)
        picked = data.draw(st.sampled_from(list(self.snaps)))
        snap = self.snaps[picked]
        parent = self.snaps[snap.parents[0]].content if snap.parents else {}
        base, theirs = (snap.content, parent) if revert else (parent, snap.content)
        operation = self.repo.revert if revert else self.repo.cherry_pick
        result, conflicts = _model_merge(base, self._content(onto), theirs, on_conflict)
        event(f"pick: {'refused' if result is None else 'landed'}, {len(conflicts)} conflict(s)")
        if result is None:
            with pytest.raises(vs.MergeConflictError) as caught:
                operation(picked, onto)
            assert {(c.path, c.kind, c.key) for c in caught.value.conflicts} == conflicts
            return
        if result == self._content(onto):
            with pytest.raises(vs.NothingToCommitError):
                operation(picked, onto, on_conflict=on_conflict)
            return
        new = operation(picked, onto, on_conflict=on_conflict, message="p")
        self._record("revert" if revert else "cherry_pick", onto, new,
                     (self.branches[onto],), result, "p")

    @rule(data=st.data())
    def squash(self, data: st.DataObject) -> None:
        branch = self._branch(data)
        chain = self._first_parents(self.branches[branch])
        if len(chain) < 2:
            with pytest.raises(ValueError, match="squash"):
                self.repo.squash(branch, since_snapshot_id=chain[0])
            return
        since = data.draw(st.sampled_from(chain[1:]))
        new = self.repo.squash(branch, since_snapshot_id=since, message="s")
        self._record("squash", branch, new, (since,), self._content(branch), "s")

    @rule(data=st.data(), writes=st.lists(WRITE, max_size=2),
          message=st.none() | st.text(max_size=3))
    def amend(self, data: st.DataObject, writes: list[tuple[str, str, int]],
              message: str | None) -> None:
        branch = self._branch(data)
        tip = self.snaps[self.branches[branch]]
        session = self.repo.writable_session(branch)
        self._stage(session, writes)
        if not tip.parents:  # the initial snapshot is never replaced (as in icechunk)
            with pytest.raises(vs.AmendInitialSnapshotError):
                session.amend(message)
            session.discard_changes()
            return
        new = session.amend(message)
        self._record("amend", branch, new, tip.parents, _apply(tip.content, writes),
                     tip.message if message is None else message)

    @rule(data=st.data(), source=st.sampled_from(["a", "g/b", "g", "m"]),
          destination=st.sampled_from([*NODES, "a/m"]))
    def move(self, data: st.DataObject, source: str, destination: str) -> None:
        branch = self._branch(data)
        content = self._content(branch)
        session = self.repo.writable_session(branch)
        moving = {k: v for k, v in content.items() if _under(k, source)}
        taken = any(_under(k, destination) for k in content)
        # The destination's parent must exist and not be an array (every zarr.json here is one).
        parent = destination.rpartition("/")[0]
        no_parent = bool(parent) and (f"{parent}/zarr.json" in content
                                      or not any(_under(k, parent) for k in content))
        if (not moving or taken or no_parent or destination == source
                or _under(destination, source)):
            with pytest.raises(vs.InvalidMoveError):
                session.move("/" + source, "/" + destination)
            assert not session.has_uncommitted_changes
            return
        session.move("/" + source, "/" + destination)
        moved = {k: v for k, v in content.items() if not _under(k, source)}
        moved.update({destination + k[len(source):]: v for k, v in moving.items()})
        new = session.commit("mv")
        self._record("commit", branch, new, (self.branches[branch],), moved, "mv")

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def branches_match(self) -> None:
        assert {b: self.repo.lookup_branch(b) for b in self.repo.list_branches()} == \
            self.branches
        assert {t: self.repo.lookup_tag(t) for t in self.repo.list_tags()} == self.tags
        for branch, tip in self.branches.items():
            session = self.repo.readonly_session(branch)
            entries = dict(session.iter_entries("", ""))
            keys = sorted(entries)
            values = session.read_entries([entries[k] for k in keys])
            assert dict(zip(keys, values, strict=True)) == self.snaps[tip].content, branch
            infos = list(self.repo.ancestry(branch=branch))
            assert [info.id for info in infos] == self._first_parents(tip)
            for info in infos:
                assert info.parent_ids == self.snaps[info.id].parents
                assert info.message == self.snaps[info.id].message

    @invariant()
    def ops_log_matches(self) -> None:
        entries = [(e.kind, e.name, e.old, e.new) for e in self.repo.ops_log()]
        assert entries == self.log[::-1]

    @precondition(lambda self: self.backend == "memory")
    @invariant()
    def dag_order_is_topological(self) -> None:
        position: dict[str, int] = {}
        for i, info in enumerate(self.repo.ancestry(branch="main", all_parents=True)):
            position[info.id] = i
        assert set(position) == self._ancestors(self.branches["main"])
        for snapshot in position:
            assert all(position[p] > position[snapshot] for p in self.snaps[snapshot].parents)


class LMDBAlgebraMachine(AlgebraMachine):
    backend = "lmdb"


_PROFILE = settings()
TestAlgebraInMemory = AlgebraMachine.TestCase
TestAlgebraInMemory.settings = settings(_PROFILE, max_examples=max(10, _PROFILE.max_examples // 2),
                                        stateful_step_count=25)
TestAlgebraOnLMDB = LMDBAlgebraMachine.TestCase
TestAlgebraOnLMDB.settings = settings(_PROFILE, max_examples=max(5, _PROFILE.max_examples // 10),
                                      stateful_step_count=20)

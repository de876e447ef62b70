"""Purge: erase one node (array or group) from every version, branch and tag.

The one operation that rewrites history. Every snapshot any branch or tag
reaches is rewritten, oldest first, without the keys under the purged path
and without the node in the consolidated metadata views of the groups above
it (``versionstore.consolidated``: they copy its documents, attributes
included); a snapshot whose tree and parents are unchanged keeps its id, every other
one gets a new id (its content changed, or its parent's id did), keeping its
message, time and metadata, plus a ``"versionstore.purge"`` metadata entry
naming the path, the purge's message and the snapshot's original id. Branch
and tag refs then move to the rewritten snapshots — tags included, the only
time a tag moves — in one atomic ``WriteBatch`` (with a ``purge`` ops-log
entry per moved ref).

Concurrency: safe alongside commits, and not starved by commits to branches
it does not move. The batch expects, exactly as read, what the plan depends
on: every branch and tag it moves, every graft, and the graft of every
snapshot it rewrote (absent, as a rule: the history it rewrote follows them,
and another run of expiry meanwhile changes it), and the record of every
session on a branch it moves (the ones that can block it). A commit landing
meanwhile on a branch it moves makes the purge start over, so the commit is
never lost and never keeps the purged data; starting over rewrites only the
snapshots that landed since (the rewrites of the others are kept while the
grafts do not change): a retry costs what landed since, not the whole
history again. Branches and tags it does not move, and sessions on them, are
not expected: no snapshot they reach was rewritten, and a commit, reset or
new ref there writes and expects none of the refs the batch writes or
expects and deletes no object, so the two commute — the result is the
purge's write landing first and that move just after (as a ref created
meanwhile always did: a name not read cannot be expected). A branch or tag
moved meanwhile onto a snapshot from before the purge therefore keeps it, as
it would just after the purge, until that ref moves on; the collection that
follows keeps what the refs reach.

Writable sessions open on an affected branch are based on a snapshot that
still holds the data (so garbage collection would keep it): the purge
refuses, unless ``force``, which first discards them (each in its own
atomic step, as ``Repository.discard_session``) and then starts over. A
session *opened* on an affected branch while the purge runs, and staging
only after its final step, is based on an old snapshot: until it is
committed or discarded, garbage collection keeps that snapshot's data.
The old snapshots become unreachable; ``Repository.purge`` then collects
them, and ``Repository.compact`` returns their pages to the file system.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import attrs

from versionstore.backend.protocol import Backend, SessionRule, WriteBatch
from versionstore.codec import (
    decode_ref_target,
    decode_session,
    encode_chunk,
    encode_ref_target,
    encode_snapshot,
)
from versionstore.consolidated import moved_view, view_keys
from versionstore.errors import MaintenanceConflictError, PurgeBlockedError
from versionstore.grafts import GRAFT_PREFIX, graft_ref, grafts_from_refs, parents_of
from versionstore.ids import ObjectId, object_id_text
from versionstore.objects import ObjectReader
from versionstore.opslog import with_operation
from versionstore.records import (
    ChunkRef,
    Entry,
    Operation,
    RefTarget,
    SessionRecord,
    Snapshot,
)
from versionstore.session import INLINE_LIMIT
from versionstore.sizes import SizeTally
from versionstore.tree import apply_changes, iter_from, lookup

__all__ = ["purge_node", "purge_prefix"]

#: Plans made before giving up, when the refs the plan depends on keep changing.
_ATTEMPTS = 100
#: Refs the plan never reads: the ops log, which grows with every ref change.
_UNREAD = ("ops/",)
METADATA_KEY = "versionstore.purge"


def purge_prefix(path: str) -> str:
    """The key prefix of node ``path`` (``"/a/b"`` or ``"a/b"`` -> ``"a/b/"``).

    Raises:
        ValueError: for the root (purge every key by deleting branches instead).
    """
    if not isinstance(path, str):
        raise TypeError(f"path must be a str, not {type(path).__name__}")
    stripped = path.strip("/")
    if not stripped:
        raise ValueError("cannot purge the root group; give an array or group path")
    return stripped + "/"


def _doomed_keys(reader: ObjectReader, tree: ObjectId | None, prefix: str) -> list[str]:
    keys = []
    for key, _ in iter_from(reader.node, tree, prefix):
        if not key.startswith(prefix):
            break
        keys.append(key)
    exact = prefix.rstrip("/")
    if any(True for k, _ in iter_from(reader.node, tree, exact) if k == exact):
        keys.insert(0, exact)
    return keys


def _pruned_views(reader: ObjectReader, tree: ObjectId | None, path: str
                  ) -> tuple[list[tuple[str, Entry]], dict[ObjectId, tuple[bytes, bytes]]]:
    """The documents above node ``path`` whose consolidated view names it, without it.

    Returns the changes (key, new entry) and, by id, the value and frame of
    each new document stored as a chunk object (``versionstore.consolidated``).
    """
    changes: list[tuple[str, Entry]] = []
    values: dict[ObjectId, tuple[bytes, bytes]] = {}
    for key in view_keys(path):
        entry = lookup(reader.lookup_node, tree, key)
        if isinstance(entry, ChunkRef):
            raw: bytes | None = reader.chunks([entry.chunk_id], [entry.location])[0]
        else:
            raw = entry if isinstance(entry, bytes) else None
        pruned = None if raw is None else moved_view(key, raw, path, None, dict)
        if pruned is None:
            continue
        if len(pruned) <= INLINE_LIMIT:
            changes.append((key, pruned))
        else:
            chunk_id, frame = encode_chunk(pruned)
            values[chunk_id] = (pruned, frame)
            changes.append((key, ChunkRef(chunk_id=chunk_id, size=len(pruned))))
    return changes, values


def _order(reader: ObjectReader, tips: list[ObjectId], grafts: Mapping[ObjectId, Any],
           known: Container[ObjectId] = ()
           ) -> list[tuple[ObjectId, Snapshot, tuple[ObjectId, ...]]]:
    """Every snapshot the tips reach, parents before children, short of ``known`` ones.

    The walk stops at a snapshot in ``known`` (and so at its ancestors).
    """
    done: set[ObjectId] = set()
    ordered = []
    for tip in tips:
        stack: list[tuple[ObjectId, bool]] = [(tip, False)]
        while stack:
            snapshot_id, expanded = stack.pop()
            if snapshot_id in done or snapshot_id in known:
                continue
            snapshot = reader.snapshot(snapshot_id)
            parents = parents_of(snapshot_id, snapshot, grafts)
            if expanded:
                done.add(snapshot_id)
                ordered.append((snapshot_id, snapshot, parents))
                continue
            stack.append((snapshot_id, True))
            stack.extend((p, False) for p in parents if p not in done and p not in known)
    return ordered


@attrs.frozen
class _Rewritten:
    """A snapshot as the purge leaves it: new id (``None``: unchanged) and objects to store."""

    parents: tuple[ObjectId, ...]  # as history follows them (through the grafts)
    new_id: ObjectId | None
    objects: tuple[tuple[ObjectId, bytes], ...] = ()
    graft: str = ""  # the old snapshot's graft ref name (a rewritten one's)


def _targets(refs: Mapping[str, bytes]) -> dict[str, ObjectId]:
    """The snapshot of every branch and tag among ``refs`` (tag tombstones left out)."""
    targets: dict[str, ObjectId] = {}
    for name, raw in refs.items():
        if name.startswith(("branch/", "tag/")):
            target = decode_ref_target(name, raw)
            if not target.deleted and target.snapshot is not None:
                targets[name] = target.snapshot
    return targets


def _new_id(rewrites: Mapping[ObjectId, _Rewritten], snapshot_id: ObjectId) -> ObjectId:
    rewritten = rewrites.get(snapshot_id)
    return snapshot_id if rewritten is None or rewritten.new_id is None else rewritten.new_id


def _rewrite(reader: ObjectReader, snapshot_id: ObjectId, snapshot: Snapshot,
             parents: tuple[ObjectId, ...], rewrites: Mapping[ObjectId, _Rewritten], *,
             prefix: str, message: str | None) -> _Rewritten:
    """``snapshot`` without the node under ``prefix``, on its parents' rewrites."""
    doomed = _doomed_keys(reader, snapshot.tree, prefix)
    views, view_values = _pruned_views(reader, snapshot.tree, prefix.rstrip("/"))
    new_parents = tuple(_new_id(rewrites, p) for p in parents)
    if not doomed and not views and new_parents == parents:
        return _Rewritten(parents=parents, new_id=None)
    tally = SizeTally()
    changes = sorted([*((k, None) for k in doomed), *views], key=lambda c: c[0])
    tree, nodes = apply_changes(reader.node, snapshot.tree, changes, observe=tally.observe_all)

    def read_chunks(ids: list[ObjectId]) -> list[bytes]:
        return [view_values[i][0] if i in view_values else reader.chunks([i])[0] for i in ids]

    # Totals only where the original had them: an older snapshot stays as it was
    # (``du`` walks it), rather than purge reading every tree of an old history.
    sizes = None if snapshot.sizes is None else tally.sizes(
        reader.node, snapshot.tree, snapshot.sizes, read_chunks)
    metadata = dict(snapshot.metadata)
    metadata[METADATA_KEY] = {"path": "/" + prefix.rstrip("/"), "message": message,
                              "original": object_id_text(snapshot_id)}
    # Every parent (merges have two). No history page: pages list the old
    # ancestors; ancestry reads rewritten snapshots one at a time.
    new_id, frame = encode_snapshot(Snapshot(
        parents=new_parents, tree=tree, message=snapshot.message,
        written_at=snapshot.written_at, metadata=metadata, sizes=sizes))
    return _Rewritten(parents=parents, new_id=new_id, graft=graft_ref(snapshot_id), objects=(
        *nodes.items(), *((i, view_frame) for i, (_, view_frame) in view_values.items()),
        (new_id, frame)))


def _reached(tips: Iterable[ObjectId], rewrites: Mapping[ObjectId, _Rewritten]
             ) -> dict[ObjectId, tuple[ObjectId, tuple[tuple[ObjectId, bytes], ...]]]:
    """The rewritten snapshots ``tips`` reach, parents first: old id -> (new id, objects).

    An unchanged snapshot's ancestors are unchanged too: the walk stops there.
    """
    seen: set[ObjectId] = set()
    pending = list(tips)
    while pending:
        snapshot_id = pending.pop()
        if snapshot_id in seen:
            continue
        seen.add(snapshot_id)
        if rewrites[snapshot_id].new_id is not None:
            pending.extend(rewrites[snapshot_id].parents)
    return {old: (r.new_id, r.objects) for old, r in rewrites.items()
            if old in seen and r.new_id is not None}


def _discard_session(backend: Backend, record_name: str, record_raw: bytes) -> None:
    """Drop a session's staged entries (its record goes with the next gc).

    A write a live copy stages at the same moment is kept, with its record
    (as ``Repository.discard_session``).
    """
    prefix = "stage/" + record_name.removeprefix("session/") + "/"
    while not backend.write(WriteBatch(
        delete_if_equal=backend.list_refs(prefix),
        session=SessionRule(prefix=prefix, record=record_name, value=record_raw),
    )):
        pass  # a staged ref went meanwhile (a commit): read again


def purge_node(reader: ObjectReader, path: str, *, message: str | None = None,
               force: bool = False) -> dict[ObjectId, ObjectId]:
    """Rewrite every branch and tag without node ``path``; return old -> new snapshot ids.

    Raises:
        PurgeBlockedError: writable sessions are open on affected branches
            (and not ``force``); nothing was changed.
        ValueError: ``path`` is the root.
        MaintenanceConflictError: the refs the plan depends on (the branches and tags
            it moves, the sessions on them, the grafts) kept changing
            through every one of many attempts; nothing was changed.
            Commits to other branches never cause it.
    """
    prefix = purge_prefix(path)
    backend = reader.backend
    rewrites: dict[ObjectId, _Rewritten] = {}  # kept across attempts while the grafts stay
    followed: Mapping[ObjectId, tuple[ObjectId, ...]] | None = None
    decoded: dict[tuple[str, bytes], SessionRecord] = {}  # session records, across attempts
    for _ in range(_ATTEMPTS):
        refs = backend.list_refs_except(_UNREAD)
        grafts = grafts_from_refs(refs)
        if grafts != followed:
            rewrites, followed = {}, grafts
        targets = _targets(refs)
        for snapshot_id, snapshot, parents in _order(reader, list(targets.values()), grafts,
                                                     rewrites):
            rewrites[snapshot_id] = _rewrite(reader, snapshot_id, snapshot, parents, rewrites,
                                             prefix=prefix, message=message)
        reached = _reached(targets.values(), rewrites)
        mapping = {old: new for old, (new, _) in reached.items()}
        objects = [o for _, new_objects in reached.values() for o in new_objects]
        moved = {name: mapping[t] for name, t in targets.items() if t in mapping}
        if not moved:
            return {}
        affected = {name.removeprefix("branch/") for name in moved if name.startswith("branch/")}
        records = _session_records(refs, decoded)
        blocking = _blocking(refs, records, affected)
        if blocking and not force:
            raise PurgeBlockedError(path, {n.removeprefix("session/"): r.branch
                                           for n, r in blocking.items()})
        if blocking:
            for name in blocking:
                _discard_session(backend, name, refs[name])
            continue  # look again: the discarded sessions' refs are part of what we expect
        batch = _batch(refs, targets, moved, objects, affected,
                       [rewrites[old].graft for old in mapping], records,
                       note=f"purged {'/' + prefix.rstrip('/')}"
                       + ("" if message is None else f": {message}"))
        if backend.write(batch):
            backend.sync()
            return mapping
    raise MaintenanceConflictError(  # pragma: no cover - endless contention
        "purge", "the branches and tags it moves, the sessions on them or the "
        "grafts kept changing (commits to a branch holding the node)")


def _session_records(refs: Mapping[str, bytes],
                     decoded: dict[tuple[str, bytes], SessionRecord]) -> dict[str, SessionRecord]:
    """Every session record among ``refs``, by name; ``decoded`` keeps them across attempts.

    Records stay until gc prunes them (one per session that ever staged), so
    a retry decodes only the records written since.
    """
    records: dict[str, SessionRecord] = {}
    for name, raw in refs.items():
        if name.startswith("session/"):
            record = decoded.get((name, raw))
            if record is None:
                record = decoded[(name, raw)] = decode_session(name, raw)
            records[name] = record
    return records


def _blocking(refs: Mapping[str, bytes], records: Mapping[str, SessionRecord],
              affected: set[str]) -> dict[str, SessionRecord]:
    """The sessions with staged changes on the ``affected`` branches, by record name."""
    staged = {name.split("/", 2)[1] for name in refs if name.startswith("stage/")}
    return {name: record for name, record in records.items() if record.branch in affected
            and (record.manifests or name.split("/", 1)[1] in staged)}  # manifests: staged


def _batch(refs: Mapping[str, bytes], targets: Mapping[str, ObjectId],
           moved: Mapping[str, ObjectId], objects: list[tuple[ObjectId, bytes]],
           affected: set[str], grafts: Iterable[str],
           records: Mapping[str, SessionRecord], *, note: str) -> WriteBatch:
    """The purge's atomic step: the new objects, the moves and their ops-log entries."""
    writes: dict[str, bytes | None] = {
        name: encode_ref_target(name, RefTarget(snapshot=new)) for name, new in moved.items()
    }
    # The old snapshots keep their grafts (a walk from elsewhere may still need
    # them) until gc collects them, which drops their grafts.
    batch = WriteBatch(objects=objects, refs=writes,
                       expect=_depends_on(refs, writes, affected, grafts, records))
    now = datetime.now(UTC)
    for name, new in sorted(moved.items()):  # recorded in the same atomic step
        batch = with_operation(batch, Operation(kind="purge", ref=name, old=targets[name],
                                                new=new, written_at=now, message=note))
    return batch


def _depends_on(refs: Mapping[str, bytes], writes: Mapping[str, bytes | None],
                affected: set[str], grafts: Iterable[str],
                records: Mapping[str, SessionRecord]) -> dict[str, bytes | None]:
    """The refs a purge planned from ``refs`` depends on, as read (the module docstring).

    Every graft, and the ``grafts`` of the snapshots it rewrote (absent: one
    written meanwhile would change the parents a rewrite took), the
    branches and tags it moves (``writes``), and the records of the
    sessions on the ``affected`` branches; not the other branches, tags
    and sessions.
    """
    expect: dict[str, bytes | None] = {
        name: raw for name, raw in refs.items() if name.startswith(GRAFT_PREFIX)}
    expect.update((name, refs.get(name)) for name in grafts)
    expect.update((name, refs.get(name)) for name in writes)
    expect.update((name, refs[name]) for name, record in records.items()
                  if record.branch in affected)
    return expect

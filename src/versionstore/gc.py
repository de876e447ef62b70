"""Garbage collection: delete objects no version can reach.

Reachable means: from a branch, a tag, or a writable session (its base and
its staged chunks), through snapshot ancestry, tree nodes and chunk
references. Everything else — trees and chunks of snapshots that a
``reset_branch`` or ``delete_branch`` left behind, orphans of killed
processes — is garbage.

Safe alongside writers, and never starved by them: the mark phase reads the
refs once and walks what they reach; the sweep is one atomic step that
compares the refs with what the mark phase saw and, for every ref that
changed since (a commit, a staged write, a reset), marks what the new value
reaches — inside the same step — and spares it. Every writer that makes an
object reachable does so by writing a ref in the same atomic step as it
checks the object exists (``docs/format.md``), so an object is either
spared by the sweep or known missing to the writer, which then fails or
retries cleanly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs

from versionstore.backend.protocol import ObjectGetter, Rescue
from versionstore.codec import (
    decode_node,
    decode_ref_target,
    decode_session,
    decode_snapshot,
    decode_staged,
)
from versionstore.errors import CorruptObjectError
from versionstore.ids import ObjectId, object_id_text
from versionstore.objects import ObjectReader
from versionstore.records import Branch, ChunkRef, Leaf, Node, Snapshot
from versionstore.refs import REPOSITORY_REF, session_ref, stage_prefix

__all__ = ["GCSummary", "collect_garbage", "reachable_objects"]


@attrs.frozen
class GCSummary:
    """What a collection found and removed."""

    reachable: int
    deleted: int
    dry_run: bool


_KNOWN = ("branch/", "tag/", "session/", "stage/")


def _session_of(name: str) -> str:
    """The session id of a ``session/<id>`` or ``stage/<id>/<key>`` ref."""
    return name.split("/", 2)[1]


def _roots(refs: Mapping[str, bytes | None], staged: set[str] | None = None
           ) -> tuple[list[ObjectId], set[ObjectId]]:
    """Snapshots and chunks that ``refs`` point at directly.

    A session record roots its base only while its session has staged refs
    (ids in ``staged``; ``None``: every record counts). A ref of a kind this
    version does not know — a damaged name, or a newer format — stops the
    collection: what it references cannot be known, so nothing may be deleted.
    """
    snapshots: list[ObjectId] = []
    chunks: set[ObjectId] = set()
    for name, raw in refs.items():
        if raw is None or name == REPOSITORY_REF:
            continue
        if not name.startswith(_KNOWN):
            raise CorruptObjectError(
                name, "a ref of unknown kind (a damaged name?); garbage collection refuses to "
                "run until `versionstore verify` is clean"
            )
        if name.startswith(("branch/", "tag/")):
            target = decode_ref_target(name, raw).snapshot
            if target is not None:
                snapshots.append(target)
        elif name.startswith("session/"):
            record = decode_session(name, raw)
            if staged is None or _session_of(name) in staged:
                snapshots.append(record.base)
        else:
            entry = decode_staged(name, raw)
            if isinstance(entry, ChunkRef):
                chunks.add(entry.chunk_id)
    return snapshots, chunks


def _staged_sessions(refs: Mapping[str, bytes | None]) -> set[str]:
    return {_session_of(name) for name, raw in refs.items()
            if raw is not None and name.startswith("stage/")}


def _mark(refs: Mapping[str, bytes | None], snapshot_of: Callable[[ObjectId], Snapshot | None],
          node_of: Callable[[ObjectId], Node | None], marked: set[ObjectId],
          missing: set[ObjectId] | None = None, staged: set[str] | None = None
          ) -> set[ObjectId]:
    """Add to ``marked`` everything ``refs`` reach that is not in it yet; return the additions.

    Objects that are referenced but not stored go to ``missing`` (there is
    nothing of them to keep; ``verify`` reports them). A damaged object
    raises ``CorruptObjectError``: what it references cannot be known, so
    nothing may be collected.
    """
    snapshots, chunks = _roots(refs, staged)
    added = chunks - marked
    marked |= added
    while snapshots:
        snapshot_id = snapshots.pop()
        if snapshot_id in marked:
            continue
        snapshot = snapshot_of(snapshot_id)
        if snapshot is None:
            if missing is not None:
                missing.add(snapshot_id)
            continue
        marked.add(snapshot_id)
        added.add(snapshot_id)
        if snapshot.parent is not None:
            snapshots.append(snapshot.parent)
        pending = [] if snapshot.tree is None or snapshot.tree in marked else [snapshot.tree]
        while pending:
            node_id = pending.pop()
            node = node_of(node_id)
            if node is None:
                if missing is not None:
                    missing.add(node_id)
                continue
            marked.add(node_id)
            added.add(node_id)
            if isinstance(node, Branch):
                pending.extend(c for c in node.children if c not in marked)
            elif isinstance(node, Leaf):
                new = {e.chunk_id for e in node.entries if isinstance(e, ChunkRef)} - marked
                marked |= new
                added |= new
    return added


def reachable_objects(reader: ObjectReader, refs: Mapping[str, bytes],
                      missing: set[ObjectId] | None = None) -> set[ObjectId]:
    """Every stored object reachable from ``refs`` (a snapshot of the backend's refs).

    Referenced objects that are not stored are added to ``missing``.
    """
    marked: set[ObjectId] = set()
    _mark(refs, reader.snapshot_if_stored, reader.node_if_stored, marked, missing,
          _staged_sessions(refs))
    return marked


def _rescuer(marked: set[ObjectId], rescued: set[ObjectId]) -> Rescue:
    """The sweep's rescue: what the refs changed since the mark phase reach, read atomically.

    Conservative: every changed session record counts as a root, and so does
    the record of every session whose staged refs changed.
    """

    def rescue(changed: Mapping[str, bytes | None], now: Mapping[str, bytes],
               get: ObjectGetter) -> set[ObjectId]:
        def snapshot_of(object_id: ObjectId) -> Snapshot | None:
            data = get([object_id])[0]
            return None if data is None else decode_snapshot(object_id_text(object_id), data)

        def node_of(object_id: ObjectId) -> Node | None:
            data = get([object_id])[0]
            return None if data is None else decode_node(object_id_text(object_id), data)

        roots = dict(changed)
        for session in _staged_sessions(changed):
            record = session_ref(session)
            if record in now:
                roots[record] = now[record]
        rescued.update(_mark(roots, snapshot_of, node_of, set(marked)))
        return rescued

    return rescue


def collect_garbage(reader: ObjectReader, *, dry_run: bool = False) -> GCSummary:
    """Delete every unreachable object (or, with ``dry_run``, only count them)."""
    backend = reader.backend
    refs = backend.list_refs("")
    marked = reachable_objects(reader, refs)
    doomed = [oid for oid in backend.iter_object_ids() if oid not in marked]
    rescued: set[ObjectId] = set()
    staged = _staged_sessions(refs)
    empty_records = {  # records of sessions with nothing staged: pruned, if still so
        name: (raw, stage_prefix(_session_of(name))) for name, raw in refs.items()
        if name.startswith("session/") and _session_of(name) not in staged
    }
    if not dry_run and (doomed or empty_records):
        backend.delete_objects(doomed, if_refs_are=refs, rescue=_rescuer(marked, rescued),
                               prune_refs=empty_records)
        backend.sync()
    deleted = len(doomed) - len(rescued.intersection(doomed))
    return GCSummary(reachable=len(marked) + len(rescued), deleted=deleted, dry_run=dry_run)

"""What garbage collection starts from and reports: roots of the refs, and summaries.

Shared by the two collections: the full one (``versionstore.gc``), which
marks everything reachable and lists every object, and the incremental one
(``versionstore.gc_incremental``), which keeps reference counts in the
backend's ledger. Both agree on what the refs root — a branch or tag its
snapshot, a session record its base while the session has staged refs, a
staged chunk ref its chunk — and report a ``GCSummary``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping

import attrs

from versionstore.backend.protocol import Backend, EmptyRecord, WriteBatch
from versionstore.codec import decode_ref_target, decode_session, decode_staged
from versionstore.errors import CorruptObjectError
from versionstore.grafts import graft_ref
from versionstore.ids import ObjectId
from versionstore.records import ChunkRef, SessionRecord
from versionstore.refs import REPOSITORY_REF, stage_prefix

__all__ = [
    "BATCH",
    "KNOWN_REFS",
    "UNROOTED_REFS",
    "GCSummary",
    "Progress",
    "batches",
    "drop_stale_grafts",
    "empty_records",
    "roots_of",
    "session_of",
    "staged_sessions",
]

#: Told ``(phase, done, total)`` as a long operation advances (for progress bars).
Progress = Callable[[str, int, int], None]
#: Objects read or sized per backend call.
BATCH = 512


@attrs.frozen
class GCSummary:
    """What a collection found and removed.

    ``bytes_freed`` is the stored size of the deleted objects (with
    ``dry_run``: of those that would be deleted). On LMDB the file keeps its
    size until ``Repository.compact``; the freed pages are reused first.
    """

    reachable: int
    deleted: int
    dry_run: bool
    bytes_freed: int = 0

    @property
    def bytes_deleted(self) -> int:
        """``bytes_freed`` under icechunk's name (its ``GCSummary.bytes_deleted``)."""
        return self.bytes_freed


KNOWN_REFS = ("branch/", "tag/", "session/", "stage/", "graft/", "ops/")
#: Prefixes of refs that root nothing: the ops log (``versionstore.opslog``), one entry
#: per ref change, so it grows with history. The incremental collection neither reads
#: nor compares them (``Backend.list_refs_except``); every other ref is read, and one of
#: an unknown kind still stops the collection (``roots_of``).
UNROOTED_REFS = ("ops/",)


def session_of(name: str) -> str:
    """The session id of a ``session/<id>`` or ``stage/<id>/<key>`` ref."""
    return name.split("/", 2)[1]


def staged_sessions(refs: Mapping[str, bytes | None],
                    located: set[str] | None = None) -> set[str]:
    """Ids of the sessions with staged refs among ``refs``, or with located writes.

    A session whose record has located staging (version 3: object storage,
    ``versionstore.located``) may hold located writes that no ref names yet:
    it counts as staged if its id is in ``located`` (those with writes in an
    open or closing epoch, as gc listed them), or — ``located`` not given —
    always (the conservative answer, for a rescue).
    """
    found = {session_of(name) for name, raw in refs.items()
             if raw is not None and name.startswith("stage/")}
    for name, raw in refs.items():
        if raw is not None and name.startswith("session/") and session_of(name) not in found:
            record = decode_session(name, raw)
            if record.manifests or (record.epoch is not None and (
                    located is None or session_of(name) in located)):
                found.add(session_of(name))
    return found


def roots_of(refs: Mapping[str, bytes | None], staged: set[str] | None = None
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
        if not name.startswith(KNOWN_REFS):
            raise CorruptObjectError(
                name, "a ref of unknown kind (a damaged name?); garbage collection refuses to "
                "run until `versionstore verify` is clean")
        if name.startswith(("branch/", "tag/")):
            target = decode_ref_target(name, raw).snapshot
            if target is not None:
                snapshots.append(target)
        elif name.startswith("session/"):
            record = decode_session(name, raw)
            if staged is None or session_of(name) in staged:
                snapshots.append(record.base)
            for manifest in record.manifests:  # staged manifests: parts are objects
                chunks.update(manifest.parts)
        elif name.startswith("stage/"):
            entry = decode_staged(name, raw)
            if isinstance(entry, ChunkRef):
                chunks.add(entry.chunk_id)
    return snapshots, chunks




def empty_records(refs: Mapping[str, bytes], staged: Collection[str],
                  doomed: Collection[ObjectId],
                  also: Callable[[str, SessionRecord], bool] = lambda _name, _record: True,
                  ) -> dict[str, EmptyRecord]:
    """The session records a sweep may prune: nothing staged (``staged``), and ``also``.

    A record whose session never committed or rebased (generation 0) is
    pruned whenever nothing is staged: every copy of that session knows its
    base. One of a later generation goes only with its base, in the step that
    deletes it (``doomed``): until then a copy idle across the session's
    commits (a pickled task, say) still finds the record and follows it;
    recreating it instead, the copy would build read-modify-writes on the
    older base it knew, and the session's next commit would take them over
    its own earlier commits (``docs/format.md``, S3). No object is looked up
    (on object storage each would be a request).
    """
    found: dict[str, EmptyRecord] = {}
    doomed = set(doomed)
    for name, raw in refs.items():
        if name.startswith("session/") and session_of(name) not in staged:
            record = decode_session(name, raw)
            if not also(name, record):
                continue
            prefix = stage_prefix(session_of(name))
            if not record.generation:
                found[name] = EmptyRecord(raw, prefix)
            elif record.base in doomed:
                found[name] = EmptyRecord(raw, prefix, record.base)
    return found


def batches(ids: list[ObjectId]) -> Iterable[list[ObjectId]]:
    """``ids`` in runs of ``BATCH``."""
    for start in range(0, len(ids), BATCH):
        yield ids[start : start + BATCH]




def drop_stale_grafts(backend: Backend, refs: Mapping[str, bytes],
                       deleted: set[ObjectId]) -> None:
    """Delete the grafts of snapshots just collected (each only if unchanged)."""
    stale = {}
    for snapshot_id in deleted:
        name = graft_ref(snapshot_id)
        if name in refs:
            stale[name] = refs[name]
    if stale:
        backend.write(WriteBatch(delete_if_equal=stale))

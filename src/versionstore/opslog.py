"""The ops log: every ref change ever made, newest first.

Each branch or tag change — commit, amend, merge, cherry-pick, revert,
squash, reset, creating or deleting a branch or tag, a push or fetch — writes one
``Operation`` record under ``ops/<key>`` *in the same atomic batch* as the
ref change it records (``Refs`` adds it to the batch). So a crash at any
instant leaves either the ref unchanged and no entry, or the ref moved and
its entry written: never one without the other.

Keys sort newest first: ``ops/<2**64 - 1 - nanoseconds>-<random>``, the time
taken from the writer's clock (and strictly increasing within a process), the
random part keeping entries of different processes apart. Entries written
by different machines order by their clocks.

The ops log does not keep snapshots alive: garbage collection ignores
``ops/`` refs (as icechunk's ops log does), so an entry may name a snapshot
that a reset and a collection have removed. Entries are never rewritten.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from datetime import datetime

import attrs

from versionstore.backend.protocol import Backend, WriteBatch
from versionstore.codec import decode_operation, encode_operation
from versionstore.ids import SnapshotId, object_id_text
from versionstore.records import Operation

__all__ = ["OPS_PREFIX", "REPOSITORY_OPERATION", "OpsLogEntry", "read_ops_log",
           "with_operation"]

OPS_PREFIX = "ops/"
#: The ``ref`` of an entry about the whole repository (a gc or expire run), not one ref.
REPOSITORY_OPERATION = "repository"
_lock = threading.Lock()
_last = 0


def _new_key() -> str:
    global _last
    with _lock:
        now = max(time.time_ns(), _last + 1)
        _last = now
    return f"{OPS_PREFIX}{(1 << 64) - 1 - now:020d}-{secrets.token_hex(4)}"


def with_operation(batch: WriteBatch, operation: Operation) -> WriteBatch:
    """``batch`` that also writes ``operation`` as a new ops-log entry (its key must be new)."""
    name = _new_key()
    return attrs.evolve(
        batch,
        expect={**batch.expect, name: None},
        refs={**batch.refs, name: encode_operation(name, operation)},
    )


def _text(object_id: bytes | None) -> SnapshotId | None:
    return None if object_id is None else SnapshotId(object_id_text(object_id))


@attrs.frozen(kw_only=True)
class OpsLogEntry:
    """One ref change, as ``Repository.ops_log`` reports it.

    ``kind`` is one of ``commit``, ``amend``, ``merge``, ``cherry_pick``,
    ``revert``, ``squash``, ``reset_branch``, ``create_branch``,
    ``delete_branch``, ``create_tag``, ``delete_tag``, ``push`` (a push from
    another repository moved or created the branch here), ``fetch`` (a
    fetch from another repository did), ``purge`` (a purge moved the branch
    or tag to its rewritten history), ``expire`` and ``gc``. ``ref_type`` is
    ``"branch"`` or ``"tag"``, or ``"repository"`` (``name`` empty) for the
    entry of an ``expire_snapshots`` run that expired snapshots and of a
    ``garbage_collect`` run that deleted objects (icechunk's
    ``ExpirationRanUpdate`` and ``GCRanUpdate``); a branch or tag that
    ``expire_snapshots`` deleted gets its own ``expire`` entry. ``old``/``new``
    are the snapshot ids before and after (``None``: the ref did not exist,
    or was deleted); ``source`` the merged, cherry-picked or reverted
    snapshot.
    """

    id: str
    kind: str
    ref_type: str
    name: str
    old: SnapshotId | None
    new: SnapshotId | None
    written_at: datetime
    message: str | None
    source: SnapshotId | None

    @classmethod
    def of(cls, key: str, operation: Operation) -> OpsLogEntry:
        """Build from a stored operation under ref ``key``."""
        ref_type, _, name = operation.ref.partition("/")
        return cls(id=key.removeprefix(OPS_PREFIX), kind=operation.kind, ref_type=ref_type,
                   name=name, old=_text(operation.old), new=_text(operation.new),
                   written_at=operation.written_at, message=operation.message,
                   source=_text(operation.source))


def read_ops_log(backend: Backend) -> Iterator[OpsLogEntry]:
    """Every ops-log entry, newest first (one consistent listing)."""
    for key, raw in backend.list_refs(OPS_PREFIX).items():
        yield OpsLogEntry.of(key, decode_operation(key, raw))

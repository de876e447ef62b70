"""Verification (fsck): check every reachable object, deeply.

Reads each object that any branch, tag or session can reach, verifies its
frame checksum, decodes it, re-hashes content-addressed objects against their
ids (BLAKE3, stronger than the per-read checksum), and checks each record's
invariants (sorted keys, well-formed ids, timezone-aware times). Problems are
collected, not raised, so one bad object does not hide the others.
"""

from __future__ import annotations

import attrs

from versionstore.codec import (
    KIND_BRANCH,
    KIND_LEAF,
    KIND_SNAPSHOT,
    content_id,
    decode_node,
    decode_snapshot,
    frame_kind,
)
from versionstore.errors import VersionStoreError
from versionstore.gc import reachable_objects
from versionstore.ids import ObjectId, object_id_text
from versionstore.objects import ObjectReader

__all__ = ["VerifyReport", "verify_repository"]


@attrs.frozen
class VerifyReport:
    """The outcome of a verification: objects checked and problems found."""

    objects_checked: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Whether nothing was wrong."""
        return not self.problems


def verify_repository(reader: ObjectReader) -> VerifyReport:
    """Check every reachable object of the repository behind ``reader``."""
    problems: list[str] = []
    backend = reader.backend
    try:
        reachable = reachable_objects(reader, backend.list_refs(""))
    except VersionStoreError as exc:
        return VerifyReport(objects_checked=0, problems=(f"cannot walk history: {exc}",))
    ids = sorted(reachable)
    for start in range(0, len(ids), 256):
        batch = ids[start : start + 256]
        for object_id, data in zip(batch, backend.get_objects(batch), strict=True):
            problem = _check(object_id, data)
            if problem:
                problems.append(problem)
    return VerifyReport(objects_checked=len(ids), problems=tuple(problems))


def _check(object_id: ObjectId, data: bytes | None) -> str | None:
    name = object_id_text(object_id)
    if data is None:
        return f"{name}: missing"
    try:
        if content_id(name, data) != object_id:
            return f"{name}: content does not match its id"
        kind = frame_kind(data)
        if kind == KIND_SNAPSHOT:
            decode_snapshot(name, data).check()
        elif kind in (KIND_LEAF, KIND_BRANCH):
            decode_node(name, data).check()
    except (VersionStoreError, ValueError) as exc:
        return f"{name}: {exc}"
    return None

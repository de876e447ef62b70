"""Branches and tags: named pointers to snapshots, moved only by compare-and-swap.

A branch moves by commit, amend, merge, cherry-pick, revert, squash or
``reset_branch``; each move is one atomic compare-and-swap against the
value the mover last read, so concurrent movers cannot lose each other's
work, and the same batch writes the move's ops-log entry
(``versionstore.opslog``). A tag is created once and never moves; deleting
it leaves a tombstone so the name cannot later point somewhere else.

Ref names in the backend: ``repository`` (the format record),
``branch/<name>``, ``tag/<name>``, ``session/<id>`` (a writable session's
record), ``stage/<id>/<key>`` (its staged changes) and ``ops/<key>`` (the ops
log).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import attrs

from versionstore.backend.protocol import Backend, Joined, WriteBatch
from versionstore.codec import decode_ref_target, encode_ref_target
from versionstore.errors import (
    BranchNotFoundError,
    ImmutableTagError,
    InvalidRefNameError,
    MissingObjectsError,
    ProtectedBranchError,
    RefExistsError,
    SnapshotNotFoundError,
    TagNotFoundError,
)
from versionstore.ids import ObjectId, object_id_text
from versionstore.opslog import with_operation
from versionstore.records import Operation, RefTarget

__all__ = ["MAIN", "REPOSITORY_REF", "Refs", "branch_ref", "session_ref", "stage_prefix",
           "tag_ref", "validate_ref_name"]

#: How many decoded ref values ``Refs._snapshot_of`` remembers (then it starts over).
_DECODED_TIPS = 256
#: Decoded ref values (a pure function of name and raw value), shared by the process:
#: the raw value is read by every call, only its decoding is skipped when unchanged.
_DECODED: dict[tuple[str, bytes], ObjectId] = {}

MAIN = "main"
#: The ref holding the ``RepositoryRecord`` (format version).
REPOSITORY_REF = "repository"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*(/[A-Za-z0-9][A-Za-z0-9._\-]*)*")


def validate_ref_name(name: str) -> str:
    """Return ``name`` if it is a valid branch or tag name.

    Names are slash-separated segments of letters, digits, ``.``, ``_`` and
    ``-``, each starting with a letter or digit (so no ``..``), at most 200
    characters.
    """
    if not isinstance(name, str) or not name:
        raise InvalidRefNameError(str(name), "empty")
    if len(name) > 200 or not _NAME.fullmatch(name) or ".." in name:
        raise InvalidRefNameError(
            name, "use letters, digits, '.', '_', '-' and '/' between segments"
        )
    return name


def branch_ref(name: str) -> str:
    """Backend ref name of branch ``name``."""
    return f"branch/{name}"


def tag_ref(name: str) -> str:
    """Backend ref name of tag ``name``."""
    return f"tag/{name}"


def session_ref(session_id: str) -> str:
    """Backend ref name of a writable session's record."""
    return f"session/{session_id}"


def stage_prefix(session_id: str) -> str:
    """Backend ref prefix of a writable session's staged keys."""
    return f"stage/{session_id}/"


class Refs:
    """Branch and tag operations over a backend.

    Every ref move is one ``WriteBatch`` that checks the ref's current value
    *and* that the target snapshot is stored, in the same atomic step as the
    move: a concurrent garbage collection can never leave a ref pointing at a
    deleted snapshot (``docs/format.md``, invariant R1).
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._decoded_tips = _DECODED

    def _swap(self, name: str, expected: bytes | None, target: RefTarget | None,
              requires: Sequence[ObjectId], batch: WriteBatch | None = None, *,
              kind: str, message: str | None = None, source: ObjectId | None = None) -> bool:
        """One compare-and-swap of ref ``name`` carrying ``batch`` and its ops-log entry.

        ``target`` ``None`` deletes the ref.
        """
        base = batch or WriteBatch()
        old = None if expected is None else self._snapshot_of(name, expected)
        new = None if target is None else target.snapshot
        operation = Operation(kind=kind, ref=name, old=old, new=new,
                              written_at=datetime.now(UTC), message=message, source=source)
        value = None if target is None else encode_ref_target(name, target)
        try:
            moved = self.backend.write(with_operation(attrs.evolve(
                base,
                expect={**base.expect, name: expected},
                requires=Joined(base.requires, requires),
                refs={**base.refs, name: value},
            ), operation))
        except MissingObjectsError as exc:
            wanted = None if new is None else object_id_text(new)
            if wanted in exc.object_ids:
                raise SnapshotNotFoundError(wanted) from exc
            raise
        if moved and value is not None and new is not None:
            self._remember(name, value, new)  # the next read of this ref finds it decoded
        return moved

    def _snapshot_of(self, name: str, raw: bytes) -> ObjectId | None:
        """``decode_ref_target(name, raw).snapshot``, remembered: a pure function of both.

        The raw value is read by every caller; only its decoding is skipped.
        """
        snapshot = self._decoded_tips.get((name, raw))
        if snapshot is None:
            snapshot = decode_ref_target(name, raw).snapshot
            if snapshot is not None:
                self._remember(name, raw, snapshot)
        return snapshot

    def _remember(self, name: str, raw: bytes, snapshot: ObjectId) -> None:
        if len(self._decoded_tips) >= _DECODED_TIPS:
            self._decoded_tips.clear()
        self._decoded_tips[(name, raw)] = snapshot

    # -- branches ---------------------------------------------------------------------

    def branch_tip(self, name: str) -> tuple[ObjectId, bytes]:
        """The snapshot a branch points at, and the raw ref value (for compare-and-swap)."""
        return self.branch_tip_of(name, self.backend.get_ref(branch_ref(validate_ref_name(name))))

    def branch_tip_of(self, name: str, raw: bytes | None) -> tuple[ObjectId, bytes]:
        """``branch_tip`` from the branch's ref value ``raw`` as read (``None``: absent).

        Raises:
            BranchNotFoundError: there is no such branch.
        """
        snapshot = None if raw is None else self._snapshot_of(branch_ref(name), raw)
        if snapshot is None:
            raise BranchNotFoundError(name)
        assert raw is not None
        return snapshot, raw

    def branch_tip_with(self, name: str, wanted: Callable[[ObjectId], bool], listing: str
                        ) -> tuple[ObjectId, bytes | None, dict[str, bytes]]:
        """The snapshot a branch points at, its stored bytes, and the refs under ``listing``.

        All three from one view (``Backend.get_refs_objects_and_listing``: one
        read transaction on LMDB). The bytes are read only if ``wanted(tip)``
        (a caller with the tip cached passes a test that says so); else
        ``None``. ``Repository.ancestry`` lists the grafts this way.

        Raises:
            BranchNotFoundError: there is no such branch.
        """
        ref = branch_ref(validate_ref_name(name))
        tips: list[ObjectId] = []

        def follow(raw: list[bytes | None]) -> Sequence[ObjectId]:
            value = raw[0]
            if value is None:
                return ()
            target = self._snapshot_of(ref, value)
            if target is None:
                return ()
            tips.append(target)
            return [target] if wanted(target) else ()

        _, stored, listed = self.backend.get_refs_objects_and_listing([ref], follow, listing)
        if not tips:
            raise BranchNotFoundError(name)
        return tips[0], stored[0] if stored else None, listed

    def create_branch(self, name: str, snapshot: ObjectId) -> None:
        """Point a new branch at ``snapshot``.

        Raises:
            RefExistsError: the name is taken.
            SnapshotNotFoundError: ``snapshot`` is not stored (checked atomically).
        """
        ref = branch_ref(validate_ref_name(name))
        if not self._swap(ref, None, RefTarget(snapshot=snapshot), [snapshot],
                          kind="create_branch"):
            raise RefExistsError("branch", name)

    def move_branch(self, name: str, expected_raw: bytes | None, snapshot: ObjectId,
                    batch: WriteBatch | None = None, *, verify_target: bool = False,
                    kind: str = "commit", message: str | None = None,
                    source: ObjectId | None = None) -> bool:
        """Compare-and-swap a branch from ``expected_raw`` to ``snapshot``.

        ``expected_raw`` ``None`` creates the branch (it must not exist).

        ``batch`` (the new snapshot and its tree nodes, staging cleanup) and
        an ops-log entry of ``kind`` (with ``message`` and ``source``) are
        written in the same atomic step, only if the swap succeeds. With
        ``verify_target``, ``snapshot`` must already be stored (a reset to an
        existing snapshot); a commit writes it in the batch instead.

        Raises:
            SnapshotNotFoundError: ``verify_target`` and the snapshot is gone.
        """
        requires = [snapshot] if verify_target else []
        return self._swap(branch_ref(name), expected_raw, RefTarget(snapshot=snapshot),
                          requires, batch, kind=kind, message=message, source=source)

    def delete_branch(self, name: str) -> None:
        """Remove a branch (its snapshots stay until garbage-collected)."""
        if name == MAIN:
            raise ProtectedBranchError(name, "the main branch cannot be deleted; move it with "
                                       "reset_branch instead")
        while True:
            _, raw = self.branch_tip(name)
            if self._swap(branch_ref(name), raw, None, [],
                          kind="delete_branch"):
                return

    def list_branches(self) -> set[str]:
        """Every branch name."""
        return {name.removeprefix("branch/") for name in self.backend.list_refs("branch/")}

    # -- tags -------------------------------------------------------------------------

    def tag_target(self, name: str) -> ObjectId:
        """The snapshot a tag points at."""
        raw = self.backend.get_ref(tag_ref(validate_ref_name(name)))
        target = None if raw is None else decode_ref_target(tag_ref(name), raw)
        if target is None or target.deleted or target.snapshot is None:
            raise TagNotFoundError(name)
        return target.snapshot

    def create_tag(self, name: str, snapshot: ObjectId) -> None:
        """Point a new tag at ``snapshot``; tags never move afterwards.

        Raises:
            RefExistsError: the name is taken.
            ImmutableTagError: the name belonged to a deleted tag.
            SnapshotNotFoundError: ``snapshot`` is not stored (checked atomically).
        """
        ref = tag_ref(validate_ref_name(name))
        if self._swap(ref, None, RefTarget(snapshot=snapshot), [snapshot], kind="create_tag"):
            return
        raw = self.backend.get_ref(ref)
        if raw is not None and decode_ref_target(ref, raw).deleted:
            raise ImmutableTagError(name, "was deleted; a tag name is never reused")
        raise RefExistsError("tag", name)

    def delete_tag(self, name: str) -> None:
        """Delete a tag, leaving a tombstone so the name is never reused."""
        self.tag_target(name)
        ref = tag_ref(name)
        raw = self.backend.get_ref(ref)
        if not self._swap(ref, raw, RefTarget(snapshot=None, deleted=True), [],
                          kind="delete_tag"):
            raise TagNotFoundError(name)

    def list_tags(self) -> set[str]:
        """Every live tag name."""
        return {
            name.removeprefix("tag/")
            for name, raw in self.backend.list_refs("tag/").items()
            if not decode_ref_target(name, raw).deleted
        }

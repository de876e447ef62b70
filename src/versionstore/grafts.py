"""Grafts: the parents a snapshot is seen with once ``expire_snapshots`` dropped its own.

Snapshot ids are content hashes that include the parent, so an expired
ancestor cannot be cut out of a snapshot without changing its id — and with
it every newer snapshot's id, every branch and every (immutable) tag. Expiry
instead writes a *graft*, ref ``graft/<snapshot id>``, naming the parents to
follow instead of the stored one (git's grafts and ``replace`` refs). Every
walk of history — ``ancestry``, garbage collection's mark phase,
``verify``, ``du_history`` — asks ``parents_of``; snapshot ids never change.

Grafts only ever *shorten* history, so a walk that ignores one (garbage
collection's rescue step does, for simplicity) reaches a superset of what
it should: it may keep an expired object one run longer, never lose a live one.
"""

from __future__ import annotations

from collections.abc import Mapping

from versionstore.codec import decode_graft
from versionstore.ids import ObjectId, object_id_from_text, object_id_text
from versionstore.records import Snapshot

__all__ = ["GRAFT_PREFIX", "Grafts", "graft_ref", "grafts_from_refs", "parents_of"]

GRAFT_PREFIX = "graft/"
#: Snapshot id -> the parents to follow instead of its stored parent.
Grafts = Mapping[ObjectId, tuple[ObjectId, ...]]


def graft_ref(snapshot_id: ObjectId) -> str:
    """Backend ref name of ``snapshot_id``'s graft."""
    return GRAFT_PREFIX + object_id_text(snapshot_id)


def grafts_from_refs(refs: Mapping[str, bytes | None]) -> dict[ObjectId, tuple[ObjectId, ...]]:
    """The grafts among ``refs`` (a view of the backend's refs); damaged ones raise."""
    found: dict[ObjectId, tuple[ObjectId, ...]] = {}
    for name, raw in refs.items():
        if raw is not None and name.startswith(GRAFT_PREFIX):
            try:
                snapshot_id = object_id_from_text(name.removeprefix(GRAFT_PREFIX))
            except ValueError:
                continue  # a damaged name grafts nothing; verify reports it
            found[snapshot_id] = decode_graft(name, raw).parents
    return found


def parents_of(snapshot_id: ObjectId, snapshot: Snapshot,
               grafts: Grafts | None = None) -> tuple[ObjectId, ...]:
    """The parents history follows from ``snapshot``: its graft's, else its own.

    All of a merge snapshot's parents (this is the one place every walk of
    history gets parents from).
    """
    if grafts:
        grafted = grafts.get(snapshot_id)
        if grafted is not None:
            return grafted
    return snapshot.parents

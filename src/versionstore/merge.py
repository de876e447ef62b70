"""Three-way merges of key maps, with Zarr-aware conflicts.

Merge, cherry-pick and revert all come down to one question: given a *base*
tree and two trees derived from it (*ours*, the branch being changed, and
*theirs*, the change being brought in), which key changes turn ours into
the result? ``three_way`` answers it in ``O(changes)``: both sides' changes
come from ``tree.changed_entries``, which skips every subtree the trees
share, so two branches that each touched 1 % of a huge array cost that 1 %.

The rules:

* a key changed on one side only is taken from that side; both sides
  changing it to the same value is no conflict;
* both sides changing it differently is a conflict — ``"chunk"`` (with the
  chunk's coordinates), ``"metadata"`` (a Zarr metadata document) or
  ``"key"`` (anything else);
* one side deleting a node (its ``zarr.json`` / ``.zarray`` / ``.zgroup``
  gone and no node left there) while the other changed anything under it
  is one ``"deleted-vs-modified"`` conflict for the node; resolving it takes
  the winning side's *whole* node: if the winner deleted it, no key under it
  remains (no orphan chunk survives a deleted array); if the winner modified
  it, the node comes back entire, chunks and all.

``on_conflict`` is ``"raise"`` (report, change nothing), ``"ours"`` or
``"theirs"`` (which side wins each conflict).
"""

from __future__ import annotations

from collections.abc import Callable

from versionstore.errors import MergeConflict
from versionstore.history import KeyLocator
from versionstore.ids import ObjectId
from versionstore.records import Entry
from versionstore.tree import Change, NodeLoader, changed_entries, iter_from, lookup

__all__ = ["ON_CONFLICT", "check_on_conflict", "three_way"]

#: The accepted values of ``on_conflict``.
ON_CONFLICT = ("raise", "ours", "theirs")
_NODE_DOCUMENTS = ("zarr.json", ".zarray", ".zgroup")
_METADATA_DOCUMENTS = (*_NODE_DOCUMENTS, ".zattrs")

#: Resolves an entry to its bytes (chunk references are read).
EntryReader = Callable[[Entry | None], bytes | None]
_Changes = dict[str, tuple[Entry | None, Entry | None]]


def check_on_conflict(on_conflict: object) -> str:
    """Return ``on_conflict`` if it is one of ``ON_CONFLICT``, else raise ``ValueError``."""
    if not isinstance(on_conflict, str) or on_conflict not in ON_CONFLICT:
        raise ValueError(f"on_conflict must be 'raise', 'ours' or 'theirs', not {on_conflict!r}")
    return on_conflict


def _under(key: str, directory: str) -> bool:
    return directory == "" or key.startswith(directory + "/")


def _path(directory: str) -> str:
    return "/" + directory


def _keys_under(load: NodeLoader, root: ObjectId | None, directory: str
                ) -> dict[str, Entry]:
    prefix = directory + "/" if directory else ""
    found: dict[str, Entry] = {}
    for key, entry in iter_from(load, root, prefix):
        if not key.startswith(prefix):
            break
        found[key] = entry
    return found


class _Side:
    """One side of the merge: its changes against the base, and a view of its tree."""

    def __init__(self, name: str, load: NodeLoader, read: EntryReader,
                 base: ObjectId | None, tree: ObjectId | None) -> None:
        self.name = name
        self.tree = tree
        self.changes: _Changes = changed_entries(load, base, tree)
        self.locator = KeyLocator(lambda key: read(lookup(load, tree, key)))

    def deleted_nodes(self) -> list[str]:
        """Directories of the topmost nodes this side deleted."""
        found = set()
        for key, (old, new) in self.changes.items():
            directory, _, name = key.rpartition("/")
            if name in _NODE_DOCUMENTS and old is not None and new is None:
                if self.locator.node_type(directory) is None:
                    found.add(directory)
        return [d for d in sorted(found) if not any(
            other != d and _under(d, other) for other in found)]


def three_way(load: NodeLoader, read: EntryReader, base: ObjectId | None,
              ours_tree: ObjectId | None, theirs_tree: ObjectId | None, on_conflict: str
              ) -> tuple[list[Change], list[MergeConflict]]:
    """The key changes that bring theirs' changes (since ``base``) into ours, and the conflicts.

    Returns ``(changes, conflicts)``: ``changes`` sorted by key, to apply to
    ``ours_tree`` with ``tree.apply_changes``. With ``on_conflict="raise"``
    and conflicts, ``changes`` is empty; otherwise the conflicts are resolved
    in it (and still reported).
    """
    check_on_conflict(on_conflict)
    ours = _Side("ours", load, read, base, ours_tree)
    theirs = _Side("theirs", load, read, base, theirs_tree)
    conflicts: list[MergeConflict] = []
    doomed: dict[str, str] = {}  # conflicted node directory -> the side that deleted it
    for deleter, other in ((ours, theirs), (theirs, ours)):
        for directory in deleter.deleted_nodes():
            clashing = sorted(
                key for key, (_, new) in other.changes.items()
                if _under(key, directory)
                and (key not in deleter.changes or deleter.changes[key][1] != new)
            )
            if clashing and directory not in doomed:
                doomed[directory] = deleter.name
                conflicts.append(MergeConflict(path=_path(directory), kind="deleted-vs-modified",
                                               key=clashing[0], deleted_by=deleter.name))

    def in_doomed(key: str) -> bool:
        return any(_under(key, directory) for directory in doomed)

    taken: dict[str, Entry | None] = {}
    for key, (_, new) in theirs.changes.items():
        if in_doomed(key):
            continue
        if key not in ours.changes:
            taken[key] = new
            continue
        if ours.changes[key][1] == new:
            continue
        conflicts.append(_key_conflict(key, ours, theirs))
        if on_conflict == "theirs":
            taken[key] = new
    if conflicts and on_conflict == "raise":
        return [], conflicts
    for directory, deleted_by in doomed.items():
        if on_conflict == deleted_by:  # the node goes, with every key under it
            taken.update(dict.fromkeys(_keys_under(load, ours_tree, directory)))
        elif on_conflict == "theirs":  # theirs kept the node: it comes back whole
            taken.update(dict.fromkeys(_keys_under(load, ours_tree, directory)))
            taken.update(_keys_under(load, theirs_tree, directory))
        # winner "ours" that modified the node: ours already holds it whole
    ours_entries = {key: lookup(load, ours_tree, key) for key in taken}
    changes = [(key, entry) for key, entry in sorted(taken.items())
               if ours_entries[key] != entry]
    return changes, conflicts


def _key_conflict(key: str, ours: _Side, theirs: _Side) -> MergeConflict:
    directory, _, name = key.rpartition("/")
    if name in _METADATA_DOCUMENTS:
        return MergeConflict(path=_path(directory), kind="metadata", key=key)
    located = ours.locator.chunk(key) or theirs.locator.chunk(key)
    if located is not None:
        return MergeConflict(path=located[0], kind="chunk", key=key, coordinates=located[1])
    return MergeConflict(path=_path(directory), kind="key", key=key)

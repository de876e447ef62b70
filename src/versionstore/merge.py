"""Three-way merges of key maps, with Zarr-aware conflicts.

Merge, cherry-pick and revert all come down to one question: given a *base*
tree and two trees derived from it (*ours*, the branch being changed, and
*theirs*, the change being brought in), which key changes turn ours into
the result? ``three_way`` answers it key by key in ``O(changes)``: both
sides' changes come from ``tree.changed_entries``, which skips every subtree
the trees share, so two branches that each touched 1 % of a huge array cost
that 1 %. ``merge_trees`` does better, and is what the editor uses: it walks
the three trees side by side and takes every subtree one side alone changed
by id, unread, so it costs only what *both* sides changed in the same
places; it falls back to ``three_way`` where a node was deleted.

The rules:

* a key changed on one side only is taken from that side; both sides
  changing it to the same value is no conflict;
* both sides changing it differently is a conflict — ``"chunk"`` (with the
  chunk's coordinates), ``"metadata"`` (a Zarr metadata document) or
  ``"key"`` (anything else) — except that two changes to a metadata document
  (``zarr.json``, ``.zattrs``) that touch different fields, or different
  attributes, are merged field by field and attribute by attribute;
* one side deleting a node (its ``zarr.json`` / ``.zarray`` / ``.zgroup``
  gone and no node left there) while the other changed anything under it
  is one ``"deleted-vs-modified"`` conflict for the node; resolving it takes
  the winning side's *whole* node: if the winner deleted it, no key under it
  remains (no orphan chunk survives a deleted array); if the winner modified
  it, the node comes back entire, chunks and all;
* one side redefining a node (``redefines_node``: a new data type, chunk
  grid, codecs, fill value, a shrunk shape; not attributes or an append)
  while the other wrote keys under it is one ``"redefined-vs-modified"``
  conflict: the other side's chunks were encoded for the old definition.
  Resolving it takes the winning side's whole node, as above.

``on_conflict`` is ``"raise"`` (report, change nothing), ``"ours"`` or
``"theirs"`` (which side wins each conflict).
"""

from __future__ import annotations

import itertools
import json
import operator
from collections.abc import Callable
from typing import Any

from versionstore.documents import load_document
from versionstore.errors import MergeConflict
from versionstore.history import KeyLocator
from versionstore.ids import ObjectId
from versionstore.records import Entry, Node
from versionstore.tree import (
    Change,
    NodeLoader,
    apply_changes,
    changed_entries,
    iter_from,
    lookup,
    merge_structure,
)

__all__ = [
    "NODE_DOCUMENTS",
    "ON_CONFLICT",
    "Merged",
    "check_on_conflict",
    "merge_trees",
    "redefines_node",
    "three_way",
]

#: The accepted values of ``on_conflict``.
ON_CONFLICT = ("raise", "ours", "theirs")
#: The documents that define a node (its attributes alone do not: ``.zattrs``).
NODE_DOCUMENTS = ("zarr.json", ".zarray", ".zgroup")
_NODE_DOCUMENTS = NODE_DOCUMENTS
_METADATA_DOCUMENTS = (*_NODE_DOCUMENTS, ".zattrs")

#: Resolves an entry to its bytes (chunk references are read).
EntryReader = Callable[[Entry | None], bytes | None]
#: Stores a value the merge made (a merged metadata document) and returns its entry.
EntryWriter = Callable[[bytes], Entry]
_MISSING = object()
_Changes = dict[str, tuple[Entry | None, Entry | None]]


def check_on_conflict(on_conflict: object) -> str:
    """Return ``on_conflict`` if it is one of ``ON_CONFLICT``, else raise ``ValueError``."""
    if not isinstance(on_conflict, str) or on_conflict not in ON_CONFLICT:
        raise ValueError(f"on_conflict must be 'raise', 'ours' or 'theirs', not {on_conflict!r}")
    return on_conflict


def redefines_node(before: bytes | None, after: bytes | None) -> bool:
    """Whether a node's metadata document going ``before`` -> ``after`` changes its chunks.

    It does if the node appears, disappears, or changes anything but its
    ``attributes``, its ``dimension_names`` or a growing ``shape`` (an append
    leaves every chunk's meaning as it was). A group stays a group whatever
    else its document says (attributes, consolidated metadata).
    Documents that are not JSON objects count as redefined whenever their bytes differ.
    """
    if before is None or after is None:
        return before is not after
    if before == after:
        return False
    try:
        old, new = load_document(before), load_document(after)
    except ValueError:
        return True
    if not isinstance(old, dict) or not isinstance(new, dict):
        return True
    if old.get("node_type") == new.get("node_type") == "group":
        return False  # a group's document (attributes, consolidated metadata) holds no chunks
    old, new = dict(old), dict(new)
    for document in (old, new):
        document.pop("attributes", None)
        document.pop("dimension_names", None)
    old_shape, new_shape = old.get("shape"), new.get("shape")
    if (isinstance(old_shape, list) and isinstance(new_shape, list)
            and len(old_shape) == len(new_shape)
            and all(isinstance(a, int) and isinstance(b, int) and b >= a
                    for a, b in zip(old_shape, new_shape, strict=True))):
        old.pop("shape")
        new.pop("shape")
    return not _same(old, new)


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
        self.read = read
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

    def redefined_nodes(self) -> list[str]:
        """Directories of the nodes this side kept but redefined (``redefines_node``)."""
        return sorted({
            key.rpartition("/")[0] for key, (old, new) in self.changes.items()
            if key.rpartition("/")[2] in _NODE_DOCUMENTS and old is not None
            and new is not None and redefines_node(self.read(old), self.read(new))})


def three_way(load: NodeLoader, read: EntryReader, base: ObjectId | None,
              ours_tree: ObjectId | None, theirs_tree: ObjectId | None, on_conflict: str,
              write: EntryWriter) -> tuple[list[Change], list[MergeConflict]]:
    """The key changes that bring theirs' changes (since ``base``) into ours, and the conflicts.

    Returns ``(changes, conflicts)``: ``changes`` sorted by key, to apply to
    ``ours_tree`` with ``tree.apply_changes``. With ``on_conflict="raise"``
    and conflicts, ``changes`` is empty; otherwise the conflicts are resolved
    in it (and still reported). ``write`` stores documents the merge makes.
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
    redefined: set[str] = set()  # conflicted redefined nodes: the winner's whole node stays
    for redefiner, other in ((ours, theirs), (theirs, ours)):
        for directory in redefiner.redefined_nodes():
            prefix = directory + "/" if directory else ""
            clashing = sorted(
                key for key, (_, new) in other.changes.items()
                if _under(key, directory) and key.removeprefix(prefix) not in _METADATA_DOCUMENTS
                and (key not in redefiner.changes or redefiner.changes[key][1] != new)
            )
            if clashing and not any(_under(directory, d) for d in doomed):
                doomed[directory] = redefiner.name
                redefined.add(directory)
                conflicts.append(MergeConflict(
                    path=_path(directory), kind="redefined-vs-modified", key=clashing[0],
                    deleted_by=redefiner.name))

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
        merged = _merge_document(key, *(read(e) for e in (
            ours.changes[key][0], ours.changes[key][1], new)))
        if merged is not None:
            taken[key] = write(merged)
            continue
        conflicts.append(_conflict_at(key, ours.locator, theirs.locator))
        if on_conflict == "theirs":
            taken[key] = new
    if conflicts and on_conflict == "raise":
        return [], conflicts
    for directory, deleted_by in doomed.items():
        if directory in redefined:
            if on_conflict == "theirs":  # theirs' node, whole; "ours": ours holds its own
                taken.update(dict.fromkeys(_keys_under(load, ours_tree, directory)))
                taken.update(_keys_under(load, theirs_tree, directory))
        elif on_conflict == deleted_by:  # the node goes, with every key under it
            taken.update(dict.fromkeys(_keys_under(load, ours_tree, directory)))
        elif on_conflict == "theirs":  # theirs kept the node: it comes back whole
            taken.update(dict.fromkeys(_keys_under(load, ours_tree, directory)))
            taken.update(_keys_under(load, theirs_tree, directory))
        # winner "ours" that modified the node: ours already holds it whole
    ours_entries = {key: lookup(load, ours_tree, key) for key in taken}
    changes = [(key, entry) for key, entry in sorted(taken.items())
               if ours_entries[key] != entry]
    return changes, conflicts


class Merged:
    """A merged tree: its root, the nodes to store (encoded and decoded), the conflicts."""

    def __init__(self, root: ObjectId | None, nodes: dict[ObjectId, bytes],
                 decoded: dict[ObjectId, Node], conflicts: list[MergeConflict]) -> None:
        self.root = root
        self.nodes = nodes
        self.decoded = decoded
        self.conflicts = conflicts


def merge_trees(load: NodeLoader, read: EntryReader, base: ObjectId | None,
                ours_tree: ObjectId | None, theirs_tree: ObjectId | None, on_conflict: str,
                write: EntryWriter) -> Merged:
    """``three_way`` and its result applied to ``ours_tree``, at the cost of what both changed.

    The trees are walked side by side (``tree.merge_structure``): subtrees
    one side alone changed are taken by id, unread, so two branches that
    each rewrote their own region of a huge array merge in about the time
    of a small one. Only node deletions need the key-by-key ``three_way``
    (whose cost is the keys each side changed): a node one side deleted
    conflicts with a change under it from the other, wherever in the tree
    that change is. Such a deletion can only clash with a change whose key
    shares the node's directory, so the walk lists the directories at the
    edges of everything it took unread and of every key it merged; if
    either side deleted the node of one of them, the merge is redone key by
    key. Same rules, same conflicts, same content as ``three_way``. With
    ``on_conflict="raise"`` and conflicts, ``root`` is ``None`` and nothing
    is to be stored.
    """
    check_on_conflict(on_conflict)
    if theirs_tree in (base, ours_tree):
        return Merged(ours_tree, {}, {}, [])
    if ours_tree == base:
        return Merged(theirs_tree, {}, {}, [])
    if base is not None and ours_tree is not None and theirs_tree is not None:
        merged = _merge_by_structure(load, read, base, ours_tree, theirs_tree, on_conflict,
                                     write)
        if merged is not None:
            return merged
    changes, conflicts = three_way(load, read, base, ours_tree, theirs_tree, on_conflict, write)
    if conflicts and on_conflict == "raise":
        return Merged(None, {}, {}, conflicts)
    decoded: dict[ObjectId, Node] = {}
    root, nodes = apply_changes(load, ours_tree, changes, decoded=decoded)
    return Merged(root, nodes, decoded, conflicts)


def _directories(key: str) -> list[str]:
    """Every directory ``key`` lies under, the root (``""``) included."""
    parts = key.split("/")[:-1]
    return ["", *("/".join(parts[:depth]) for depth in range(1, len(parts) + 1))]


def _merge_by_structure(load: NodeLoader, read: EntryReader, base: ObjectId, ours: ObjectId,
                        theirs: ObjectId, on_conflict: str, write: EntryWriter
                        ) -> Merged | None:
    conflicts: list[MergeConflict] = []
    edges: set[str] = set()  # keys whose directories a deletion could clash under
    sides = [_Tree(load, read, tree) for tree in (ours, theirs)]

    def merge_key(key: str, old: Entry | None, new_o: Entry | None, new_t: Entry | None
                  ) -> Entry | None:
        """The merged entry of a key at least one side changed."""
        edges.add(key.rpartition("/")[0])
        if new_o == new_t or new_t == old:
            return new_o
        if new_o == old:
            return new_t
        document = _merge_document(key, *(read(e) for e in (old, new_o, new_t)))
        if document is not None:
            return write(document)
        conflicts.append(_conflict_at(key, sides[0].locator, sides[1].locator))
        return new_t if on_conflict == "theirs" else new_o

    def merge_range(b: list[tuple[str, Entry]], o: list[tuple[str, Entry]],
                    t: list[tuple[str, Entry]]) -> list[tuple[str, Entry]]:
        if len(b) == len(o) == len(t) and all(
                x[0] == y[0] == z[0] for x, y, z in zip(b, o, t, strict=True)):
            # The same keys on all sides (values rewritten): compare position by position.
            merged = list(o)
            for index in itertools.compress(range(len(b)), map(operator.ne, o, t)):
                key, was_entry = b[index]
                entry = merge_key(key, was_entry, o[index][1], t[index][1])
                merged[index] = (key, entry)  # type: ignore[assignment]  # never None here
            return merged
        was, mine, yours = dict(b), dict(o), dict(t)
        result: list[tuple[str, Entry]] = []
        for key in sorted(was.keys() | mine.keys() | yours.keys()):
            old, new_o, new_t = was.get(key), mine.get(key), yours.get(key)
            entry = new_o if new_o == new_t == old else merge_key(key, old, new_o, new_t)
            if entry is not None:
                result.append((key, entry))
        return result

    result = merge_structure(load, base, ours, theirs, merge_range)
    if result is None:
        return None
    edges.update(first.rpartition("/")[0] for first, _ in result.taken)
    directories = {d for directory in edges for d in _directories(directory + "/")}
    base_tree = _Tree(load, read, base)
    for side in sides:
        for directory in directories:
            if side.deleted_node(base_tree, directory) or side.redefined_node(base_tree, directory):
                return None  # a node is gone or redefined: three_way sorts out what clashes
    if conflicts and on_conflict == "raise":
        return Merged(None, {}, {}, conflicts)
    return Merged(result.root, result.nodes, result.decoded, conflicts)


class _Tree:
    """Point reads of one tree, and where its keys sit in its Zarr hierarchy."""

    def __init__(self, load: NodeLoader, read: EntryReader, root: ObjectId | None) -> None:
        self.load, self.root, self.read = load, root, read
        self.locator = KeyLocator(lambda key: read(lookup(load, root, key)))

    def has(self, key: str) -> bool:
        return lookup(self.load, self.root, key) is not None

    def redefined_node(self, base: _Tree, directory: str) -> bool:
        """Whether this tree redefined (``redefines_node``) a node ``base`` has at ``directory``."""
        prefix = directory + "/" if directory else ""
        for name in _NODE_DOCUMENTS:
            before, after = (lookup(tree.load, tree.root, prefix + name) for tree in (base, self))
            if (before is not None and after is not None and before != after
                    and redefines_node(self.read(before), self.read(after))):
                return True
        return False

    def deleted_node(self, base: _Tree, directory: str) -> bool:
        """Whether this tree lost a node document ``base`` has at ``directory``, and the node."""
        prefix = directory + "/" if directory else ""
        return any(base.has(prefix + name) and not self.has(prefix + name)
                   for name in _NODE_DOCUMENTS) and self.locator.node_type(directory) is None


def _conflict_at(key: str, ours: KeyLocator, theirs: KeyLocator) -> MergeConflict:
    """The conflict both sides changing ``key`` differently makes, placed in the hierarchy."""
    directory, _, name = key.rpartition("/")
    if name in _METADATA_DOCUMENTS:
        return MergeConflict(path=_path(directory), kind="metadata", key=key)
    located = ours.chunk(key) or theirs.chunk(key)
    if located is not None:
        return MergeConflict(path=located[0], kind="chunk", key=key, coordinates=located[1])
    return MergeConflict(path=_path(directory), kind="key", key=key)


def _merge_document(key: str, base: bytes | None, ours: bytes | None, theirs: bytes | None
                    ) -> bytes | None:
    """Both sides' changes to metadata document ``key`` merged, or ``None`` if they clash.

    ``zarr.json``: field by field, and its ``attributes`` attribute by
    attribute; ``.zattrs``: attribute by attribute. A field both sides set
    to different values, a deleted document, or anything not a JSON object
    is a clash.
    """
    name = key.rpartition("/")[2]
    if name not in ("zarr.json", ".zattrs") or ours is None or theirs is None:
        return None
    documents = [_object(value) for value in (base or b"{}", ours, theirs)]
    if any(document is None for document in documents):
        return None
    old, mine, yours = documents
    assert old is not None and mine is not None and yours is not None
    if name == ".zattrs":
        merged = _merge_fields(old, mine, yours)
    else:
        attributes = _merge_fields(*(d.get("attributes", {}) for d in (old, mine, yours)))
        merged = _merge_fields(*({k: v for k, v in d.items() if k != "attributes"}
                                 for d in (old, mine, yours)))
        if merged is not None and attributes is not None:
            if attributes or any("attributes" in d for d in (mine, yours)):
                merged["attributes"] = attributes
        else:
            merged = None
    if merged is None:
        return None
    return json.dumps(merged, indent=2).encode()


def _object(value: bytes) -> dict[str, Any] | None:
    try:
        document = load_document(value)
    except (ValueError, UnicodeDecodeError):
        return None
    return document if isinstance(document, dict) else None


def _same(a: Any, b: Any) -> bool:
    """Whether two decoded JSON values are the same document text.

    ``==`` alone is not enough: a ``NaN`` (which Python's ``json`` reads and
    writes, and which attributes such as ``missing_value`` often hold) is
    never equal to itself, so an attribute neither side touched would look
    changed by both.
    """
    if a is _MISSING or b is _MISSING:
        return a is b
    if a == b:
        return True
    try:
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    except (TypeError, ValueError):
        return False


def _merge_fields(base: Any, ours: Any, theirs: Any) -> dict[str, Any] | None:
    """3-way merge of two JSON objects, one level deep; ``None`` if a field clashes."""
    if not all(isinstance(d, dict) for d in (base, ours, theirs)):
        return None
    merged: dict[str, Any] = {}
    for field in [*ours, *(f for f in theirs if f not in ours),
                  *(f for f in base if f not in ours and f not in theirs)]:
        was, mine, yours = (d.get(field, _MISSING) for d in (base, ours, theirs))
        if _same(mine, yours) or _same(yours, was):
            value = mine
        elif _same(mine, was):
            value = yours
        else:
            return None
        if value is not _MISSING:
            merged[field] = value
    return merged

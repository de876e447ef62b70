"""Consolidated metadata views kept in step with ``Session.move`` and ``purge``.

zarr-python's consolidated metadata copies the documents of a group's whole
subtree into one place: the ``consolidated_metadata`` member of a Zarr v3
group's ``zarr.json`` (entries by node path relative to that group; a group
entry may carry a nested view of its own) or a Zarr v2 ``.zmetadata``
document (entries by key relative to its directory). A move renames nodes
under such a view. Left as it was, the view would still name the old paths:
zarr would open the moved-away node from it and read the fill value where
its chunks were, and would not find the node at its new path.

A purge erases a node from every version, and a view in a document above
it would keep the node's documents (its attributes) there, naming a node
whose keys are gone.

``moved_view`` rewrites one such document as the keys were renamed: entries
under the source are renamed when the destination is under the same view,
dropped when it is not (or when there is no destination: a purge), and the
moved documents are added to a view that holds the destination only.
A v3 view is rewritten in the flat form zarr writes (every node of the
subtree by its path, each group's own view empty), whatever depth the move
happens at. Everything else in the document is kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from versionstore.documents import load_document

__all__ = ["VIEW_DOCUMENTS", "moved_view", "view_keys"]

#: The document names that may hold a consolidated view: v3 group documents, v2's own.
VIEW_DOCUMENTS = ("zarr.json", ".zmetadata")

_V2_DOCUMENTS = (".zarray", ".zgroup", ".zattrs")


def view_keys(*paths: str) -> list[str]:
    """The keys of the documents that may hold a view of any of ``paths``, sorted.

    Those of every directory above each path (the root's included), not the
    paths' own: a node's view of its own subtree is relative to it.
    """
    directories = {""}
    for path in paths:
        parts = path.split("/")
        directories.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return sorted(f"{d}/{name}" if d else name for d in directories for name in VIEW_DOCUMENTS)


def _relative(path: str, directory: str) -> str | None:
    """``path`` relative to ``directory`` (both without slashes at the ends), or ``None``."""
    if not directory:
        return path
    return path[len(directory) + 1:] if path.startswith(directory + "/") else None


def _under(name: str, node: str) -> bool:
    return name == node or name.startswith(node + "/")


def _parsed(value: bytes) -> Any:
    """A moved document's JSON (``None`` for one that is not JSON, as zarr would fail on it)."""
    try:
        return load_document(value)
    except ValueError:
        return None


def _nested_view(meta: object) -> dict[str, Any] | None:
    """The entries of a v3 document's ``consolidated_metadata``, if it has any."""
    if not isinstance(meta, dict):
        return None
    view = meta.get("consolidated_metadata")
    entries = view.get("metadata") if isinstance(view, dict) else None
    return entries if isinstance(entries, dict) else None


def _emptied(meta: Any) -> Any:
    """A v3 entry as a flat view holds it: a group's own view emptied (its nodes are flat)."""
    own = meta.get("consolidated_metadata") if isinstance(meta, dict) else None
    if _nested_view(meta):
        assert isinstance(own, dict)
        return {**meta, "consolidated_metadata": {**own, "metadata": {}}}
    return meta


def _added(meta: Any) -> Any:
    """A moved node's document as a flat view adds it: a group with an empty view, as zarr."""
    if (isinstance(meta, dict) and meta.get("node_type") == "group"
            and not isinstance(meta.get("consolidated_metadata"), dict)):
        return {**meta, "consolidated_metadata": {
            "kind": "inline", "must_understand": False, "metadata": {}}}
    return _emptied(meta)


def _flattened(view: Mapping[str, Any]) -> dict[str, Any]:
    """A v3 view in the form zarr stores it: every node by its path, groups' views empty.

    zarr writes one flat view (``"a/b/x"``) whose group entries carry empty
    views; a view written nested (a group's entry holding its children) is
    read the same. A node named both flat and in a nested view keeps the
    flat entry, as zarr's reading lets the flat entries replace the nested.
    Flat entries keep their order; nodes only nested follow them.
    """
    flat: dict[str, Any] = {}
    pending: list[tuple[str, Mapping[str, Any]]] = [("", view)]
    while pending:
        prefix, entries = pending.pop(0)  # level by level: the shallower entry wins
        for name, meta in entries.items():
            path = prefix + name
            if path not in flat:
                flat[path] = _emptied(meta)
            nested = _nested_view(meta)
            if nested:
                pending.append((path + "/", nested))
    return flat


def _parents(path: str) -> list[str]:
    """The groups between a view's directory and the node ``path`` (relative to it)."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _moved_v3(view: dict[str, Any], source: str | None, target: str | None,
              moved: Mapping[str, Any]) -> bool:
    """Rename a v3 view's entries in place, written back flat; ``True`` if any changed.

    The view is flattened first (``_flattened``), so a node found only in a
    nested view moves too, and nothing is added to a group's own view: a
    moved node added there as well as flat would name its parent groups in a
    nested view without them, which zarr cannot open. ``moved`` holds the
    moved nodes' documents by their new paths relative to this view: they
    are added when the view holds the destination only.
    """
    flat = _flattened(view)
    if target is not None and not all(p in flat for p in _parents(target)):
        # A destination whose parent group the view does not name (made after the view
        # was written): the moved nodes leave the view, as nodes of that group are out
        # of it; named there without their parents, zarr could not open the view.
        target, moved = None, {}
    changed = False
    renamed: dict[str, Any] = {}
    for name, meta in flat.items():
        if source is not None and _under(name, source):
            changed = True
            if target is not None:
                renamed[target + name[len(source):]] = meta
            continue
        renamed[name] = meta
    if source is None and target is not None and moved:
        renamed.update((path, _added(meta)) for path, meta in moved.items())
        changed = True
    if changed:
        view.clear()
        view.update(renamed)
    return changed


def _moved_v2(view: dict[str, Any], source: str | None, target: str | None,
              added: Mapping[str, Any]) -> bool:
    """Rename a v2 ``.zmetadata`` view's entries in place; ``True`` if any changed."""
    if target is not None and not all(f"{p}/.zgroup" in view for p in _parents(target)):
        target, added = None, {}  # as in ``_moved_v3``: the view lacks the parent group
    changed = False
    renamed: dict[str, Any] = {}
    for name, meta in view.items():
        if source is not None and _under(name.rpartition("/")[0], source):
            changed = True
            if target is not None:
                renamed[target + name[len(source):]] = meta
            continue
        renamed[name] = meta
    if source is None and target is not None:
        renamed.update(added)
        changed = bool(added) or changed
    if changed:
        view.clear()
        view.update(renamed)
    return changed


def moved_view(key: str, raw: bytes, source: str, target: str | None,
               documents: Callable[[], Mapping[str, bytes]]) -> bytes | None:
    """The document ``raw`` stored at ``key``, its consolidated view following a move.

    ``source`` and ``target`` are the moved node's directories (``"a/b"``),
    ``target`` ``None`` for a node erased (a purge); ``documents()`` gives
    the moved metadata documents by their new keys (called only for a view
    that holds the destination). Returns ``None`` when there is nothing to
    change: no view, none naming the source or the destination, or a
    document that is not JSON.
    """
    directory, _, name = key.rpartition("/")
    rel_source = _relative(source, directory)
    rel_target = None if target is None else _relative(target, directory)
    if name not in VIEW_DOCUMENTS or (rel_source is None and rel_target is None):
        return None
    try:
        document = load_document(raw)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    if name == "zarr.json":
        view = _nested_view(document)
        if view is None:
            return None
        moved: dict[str, Any] = {}
        if rel_target is not None:
            for doc_key, value in documents().items():
                node, _, doc_name = doc_key.rpartition("/")
                path = _relative(node, directory)
                if doc_name == "zarr.json" and path is not None:
                    moved[path] = _parsed(value)
        if not _moved_v3(view, rel_source, rel_target, moved):
            return None
    else:
        view = document.get("metadata")
        if not isinstance(view, dict):
            return None
        added: dict[str, Any] = {}
        if rel_source is None:
            for doc_key, value in documents().items():
                path = _relative(doc_key, directory)
                if doc_key.rpartition("/")[2] in _V2_DOCUMENTS and path is not None:
                    added[path] = _parsed(value)
        if not _moved_v2(view, rel_source, rel_target, added):
            return None
    indent = 2 if raw.lstrip()[1:2] == b"\n" else None  # as zarr wrote it
    return json.dumps(document, indent=indent, allow_nan=True).encode()

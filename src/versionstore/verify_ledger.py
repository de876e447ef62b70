"""Verification of garbage collection's ledger: do its counts say what its roots reach?

The incremental collection (``versionstore.gc_incremental``) trusts the
ledger: an object whose count is zero is a candidate for deletion. A ledger
that counts too little could delete a reachable object; one that counts too
much keeps garbage. ``check_ledger`` recomputes every count from the roots
and grafts the ledger's header recorded at the last collection (the counts
describe that moment: what was stored since is in the journal) and compares:

* every object those roots reach has exactly the count its referrers give
  it — each root, each live snapshot (parents, history page, tree), page
  (the page it continues) and tree node (its children, less those its
  linked predecessor holds);
* no unreachable object keeps a count, and every link joins two live nodes
  of the same level (a dangling link could leave a shared child uncounted);
* the header decodes, and its ``live`` total matches.

Problems are returned as text, as ``verify`` reports everything; the next
collection of a damaged ledger rebuilds it from the refs
(``Repository.garbage_collect(full=True)`` does so on demand).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from versionstore.backend.ledger import Ledger
from versionstore.codec import decode_gc_ledger
from versionstore.errors import CorruptObjectError, UnsupportedFormatError, VersionStoreError
from versionstore.gc_incremental import CHUNK, NODE, PAGE, SNAPSHOT
from versionstore.grafts import parents_of
from versionstore.ids import ObjectId, object_id_text
from versionstore.objects import ObjectReader
from versionstore.records import Branch, ChunkRef, GCLedger

__all__ = ["check_ledger"]

Progress = Callable[[str, int, int], None]
_REBUILD = "(the next garbage_collect(full=True) rebuilds it)"


def _children(reader: ObjectReader, object_id: ObjectId, kind: int,
              header: GCLedger) -> list[tuple[ObjectId, int]]:
    """The edges the collection counts from live object ``object_id``, links aside."""
    if kind == CHUNK:
        return []
    if kind == SNAPSHOT:
        snapshot = reader.snapshot(object_id)
        found = [(p, SNAPSHOT) for p in dict.fromkeys(
            parents_of(object_id, snapshot, dict(header.grafts)))]
        if snapshot.history is not None:
            found.append((snapshot.history, PAGE))
        if snapshot.tree is not None:
            found.append((snapshot.tree, NODE))
        return found
    if kind == PAGE:
        page = reader.history_page(object_id)
        return [] if page.previous is None else [(page.previous, PAGE)]
    node = reader.node(object_id)
    if isinstance(node, Branch):
        return [(c, NODE) for c in dict.fromkeys(node.children)]
    return [(c, CHUNK) for c in dict.fromkeys(
        e.chunk_id for e in node.entries if isinstance(e, ChunkRef))]


def check_ledger(reader: ObjectReader, ledger: Ledger,
                 progress: Progress | None = None) -> list[str]:
    """Problems of the ledger behind ``reader`` (empty: it agrees with its roots)."""
    raw, counts, links = ledger.ledger_contents()
    if raw is None:
        if counts or links:
            return [f"gc ledger: counts without a header {_REBUILD}"]
        return []  # no collection has run yet
    try:
        header = decode_gc_ledger(raw)
    except (CorruptObjectError, UnsupportedFormatError) as exc:
        return [f"gc ledger: the header is damaged: {exc} {_REBUILD}"]
    expected: Counter[ObjectId] = Counter()
    kinds: dict[ObjectId, int] = {}
    pending: list[tuple[ObjectId, int]] = []
    for object_id, kind, count in header.roots:
        expected[object_id] += count
        pending.append((object_id, kind))
    problems: list[str] = []
    while pending:
        object_id, kind = pending.pop()
        if object_id in kinds:
            continue
        kinds[object_id] = kind
        try:
            children = _children(reader, object_id, kind, header)
            before = links.get(object_id)
            if before is not None:
                held = {c for c, _ in _children(reader, before, NODE, header)}
                children = [c for c in children if c[0] not in held]
        except VersionStoreError as exc:
            problems.append(f"gc ledger: cannot read {object_id_text(object_id)}, which its "
                            f"roots reach: {exc}")
            continue
        for child in children:
            expected[child[0]] += 1
            pending.append(child)
        if progress is not None and len(kinds) % 4096 == 0:
            progress("checking the gc ledger", len(kinds), len(counts))
    if progress is not None:
        progress("checking the gc ledger", len(kinds), len(kinds))
    for object_id in sorted(kinds):
        stored, wanted = counts.get(object_id, 0), expected[object_id]
        if stored != wanted:
            what = "reachable but uncounted" if stored == 0 else "miscounted"
            problems.append(f"gc ledger: {object_id_text(object_id)} is {what}: count "
                            f"{stored}, its referrers give {wanted} {_REBUILD}")
    for object_id in sorted(set(counts) - set(kinds)):
        problems.append(f"gc ledger: {object_id_text(object_id)} has count "
                        f"{counts[object_id]} but its roots do not reach it {_REBUILD}")
    for node_id, before in sorted(links.items()):
        node_kind, before_kind = kinds.get(node_id), kinds.get(before)
        if node_kind != NODE or before_kind != NODE:
            problems.append(f"gc ledger: link from {object_id_text(node_id)} to "
                            f"{object_id_text(before)} joins objects that are not both live "
                            f"tree nodes {_REBUILD}")
            continue
        level = [(n.level if isinstance(n, Branch) else 0)
                 for n in (reader.node(node_id), reader.node(before))]
        if level[0] != level[1]:
            problems.append(f"gc ledger: link from {object_id_text(node_id)} to "
                            f"{object_id_text(before)} joins nodes of different levels "
                            f"{_REBUILD}")
    if header.live != len(kinds):
        problems.append(f"gc ledger: the header counts {header.live} live objects, its roots "
                        f"reach {len(kinds)} {_REBUILD}")
    return problems

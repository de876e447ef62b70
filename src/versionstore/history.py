"""History: snapshot info, the snapshot DAG, point-in-time lookup, and Zarr-aware diffs.

Snapshots form a DAG: a merge snapshot has two parents (the target branch's
tip first). ``ancestry`` follows first parents, or with ``all_parents`` walks
the whole DAG in a topological, newest-first order; ``merge_base`` finds the
lowest common ancestor that a 3-way merge starts from.

The history index: every snapshot written names a ``HistoryPage`` holding its
first-parent ancestors, up to ``HISTORY_PAGE_SIZE`` of them, and the page
that continues the run (``with_history`` builds it when the snapshot is
made). Walking first parents therefore reads one object per page — 10,000
commits are about 160 reads, not 10,000 — and ``snapshot_at`` (``as_of``)
and ``merge_base`` walk the same way. Pages are stored by columns, and the
``SnapshotInfo`` objects ``Repository.ancestry`` lists from them hold only
their id until another field is read (``first_parent_infos``), so listing
a long history costs little more than its ids. Snapshots from before pages
existed are read one by one. Pages, their infos, and a listing read to its
end (under its start snapshot) never change, so they are kept once for the
whole process (``ObjectReader.derived``, keyed by object id, i.e. by
content): listing a branch again — on the same repository, or on one opened
anew — costs one backend read (its ref, its tip when not known, and the
grafts, together) and a lookup. Refs are never cached: every listing reads
where the branch points, and a commit, reset or expiry made by another
process is seen by the next one.

``Diff`` uses icechunk's field names so code moving from icechunk reads the
same. Node paths are absolute (``"/"`` is the root group, ``"/t"`` an array).
Changed keys are classified by their Zarr role: metadata documents
(``zarr.json`` for v3; ``.zarray``, ``.zgroup`` and ``.zattrs`` for v2) make
nodes new, deleted or updated; chunk keys of a known array, parsed with that
array's chunk-key encoding, become chunk coordinates (a deleted array's
chunks are not listed: its deletion says it all, as in icechunk); any other
key is reported as-is in ``updated_keys``.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Any, cast

import attrs

from versionstore.codec import (
    decode_snapshot,
    encode_history_page,
    history_entries,
    history_row,
    snapshot_links,
)
from versionstore.documents import load_document
from versionstore.errors import SnapshotNotFoundError, VersionStoreError
from versionstore.grafts import Grafts, parents_of
from versionstore.ids import ObjectId, SnapshotId, object_id_text
from versionstore.notebook import diff_html, history_html, snapshot_html
from versionstore.objects import ObjectReader
from versionstore.records import HISTORY_PAGE_SIZE, HistoryPage, Snapshot

__all__ = ["Diff", "History", "KeyLocator", "SnapshotInfo", "ancestry", "classify_changes",
           "first_parent_infos", "merge_base", "snapshot_at", "with_history"]

KeyReader = Callable[[str], bytes | None]
Coordinates = tuple[int, ...]


class SnapshotInfo:
    """What a user sees of one snapshot (read-only attributes).

    Its ``id``, ``parent_id``, ``parent_ids``, ``written_at``, ``message``
    and ``metadata``. ``parent_ids`` is ``()`` for the initial snapshot, one id for a commit,
    two for a merge (the target branch's tip, then the merged source);
    ``parent_id`` is the first of them. Infos that ``ancestry`` lists from a
    history page know their ``id`` at once and decode the rest of the page
    the first time one of the other fields is read (``HistoryPage``): listing
    a long history costs little more than its ids.
    """

    __slots__ = ("_fields", "_page", "id")
    id: SnapshotId
    _fields: tuple[tuple[SnapshotId, ...], datetime, str, dict[str, Any]]
    _page: _PageRows | _Known | _Stored | None

    def __init__(self, *, id: SnapshotId, parent_id: SnapshotId | None,  # noqa: A002 - icechunk's name
                 written_at: datetime, message: str, metadata: dict[str, Any],
                 parent_ids: tuple[SnapshotId, ...] = ()) -> None:
        del parent_id  # always parent_ids[0]; accepted for the old keyword signature
        _set_id(self, id)
        _set_fields(self, (tuple(parent_ids), written_at, message, metadata))
        _set_page(self, None)

    @classmethod
    def of(cls, snapshot_id: ObjectId, snapshot: Snapshot,
           grafts: Grafts | None = None) -> SnapshotInfo:
        """Build from a stored snapshot (its parents as seen through ``grafts``)."""
        parents = tuple(SnapshotId(object_id_text(p))
                        for p in parents_of(snapshot_id, snapshot, grafts))
        return cls(id=SnapshotId(object_id_text(snapshot_id)),
                   parent_id=parents[0] if parents else None, written_at=snapshot.written_at,
                   message=snapshot.message, metadata=snapshot.metadata, parent_ids=parents)

    def _all(self) -> tuple[tuple[SnapshotId, ...], datetime, str, dict[str, Any]]:
        page = self._page
        if page is not None:  # read from a history page: decode its rows now
            snapshot = page.snapshot(self.id)
            _set_fields(self, (tuple(SnapshotId(object_id_text(p)) for p in snapshot.parents),
                               snapshot.written_at, snapshot.message, snapshot.metadata))
            _set_page(self, None)
        return self._fields

    @property
    def parent_ids(self) -> tuple[SnapshotId, ...]:
        """The parents' ids: none, one, or two for a merge (the target's tip first)."""
        return self._all()[0]

    @property
    def parent_id(self) -> SnapshotId | None:
        """The first parent's id, or ``None`` for the initial snapshot."""
        parents = self._all()[0]
        return parents[0] if parents else None

    @property
    def written_at(self) -> datetime:
        """When the snapshot was made (timezone-aware, UTC)."""
        return self._all()[1]

    @property
    def message(self) -> str:
        """The commit message."""
        return self._all()[2]

    @property
    def metadata(self) -> dict[str, Any]:
        """The metadata given at commit."""
        return self._all()[3]

    def _key(self) -> tuple[Any, ...]:
        return (self.id, *self._all())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SnapshotInfo):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self.id)

    def __setattr__(self, name: str, value: object) -> None:
        raise attrs.exceptions.FrozenInstanceError

    def __delattr__(self, name: str) -> None:
        raise attrs.exceptions.FrozenInstanceError

    def __reduce__(self) -> tuple[Any, ...]:
        return (_info_from_fields, (self.id, *self._all()))

    def __repr__(self) -> str:
        return (f"SnapshotInfo(id={self.id!r}, parent_id={self.parent_id!r}, "
                f"written_at={self.written_at!r}, message={self.message!r}, "
                f"metadata={self.metadata!r}, parent_ids={self.parent_ids!r})")

    def _repr_html_(self) -> str:
        return snapshot_html(self.id, list(self.parent_ids), self.written_at, self.message,
                             self.metadata)


# The slots' own setters: construction past the frozen ``__setattr__``.
_set_id = vars(SnapshotInfo)["id"].__set__
_set_fields = vars(SnapshotInfo)["_fields"].__set__
_set_page = vars(SnapshotInfo)["_page"].__set__
_new_info = object.__new__


def _info_from_fields(id: SnapshotId, parent_ids: tuple[SnapshotId, ...],  # noqa: A002
                      written_at: datetime, message: str, metadata: dict[str, Any]
                      ) -> SnapshotInfo:
    return SnapshotInfo(id=id, parent_id=parent_ids[0] if parent_ids else None,
                        written_at=written_at, message=message, metadata=metadata,
                        parent_ids=parent_ids)


class _PageRows:
    """A history page whose rows are decoded once, the first time an info asks."""

    __slots__ = ("_page", "_snapshots")

    def __init__(self, page: HistoryPage) -> None:
        self._page = page
        self._snapshots: dict[str, Snapshot] | None = None

    def snapshot(self, text: str) -> Snapshot:
        """The snapshot (without its own page) whose id's text is ``text``."""
        if self._snapshots is None:
            self._snapshots = dict(zip(self._page.texts,
                                       history_entries("history page", self._page),
                                       strict=True))
        return self._snapshots[text]


class _Known:
    """One snapshot already decoded, standing in for a page's rows (``SnapshotInfo._page``)."""

    __slots__ = ("_snapshot",)

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def snapshot(self, text: str) -> Snapshot:
        """The snapshot (whatever ``text``: there is one)."""
        del text
        return self._snapshot


class _Stored:
    """A snapshot's stored frame, decoded whole the first time its info is asked for a field.

    A branch's tip, listed by ``first_parent_infos`` from the frame the branch
    was read with: listing needs only its links (``codec.snapshot_links``).
    """

    __slots__ = ("_data", "_snapshot", "_snapshot_id")

    def __init__(self, snapshot_id: ObjectId, data: bytes) -> None:
        self._snapshot_id = snapshot_id
        self._data = data
        self._snapshot: Snapshot | None = None

    def snapshot(self, text: str) -> Snapshot:
        """The snapshot (whatever ``text``: there is one)."""
        del text
        if self._snapshot is None:
            self._snapshot = _named(decode_snapshot, self._snapshot_id, self._data)
        return self._snapshot


def _named(decode: Callable[[str, bytes], Any], object_id: ObjectId, data: bytes) -> Any:
    """``decode("", data)``, again with the object's name if that fails (to raise naming it)."""
    try:
        return decode("", data)
    except VersionStoreError:
        return decode(object_id_text(object_id), data)


def _lazy_info(text: str, rows: _PageRows | _Known | _Stored) -> SnapshotInfo:
    info = _new_info(SnapshotInfo)
    _set_id(info, text)
    _set_page(info, rows)
    return info


def _page_infos(page: HistoryPage) -> list[SnapshotInfo]:
    """Lazy infos for every entry of ``page`` (ids at once, the rest on demand).

    The loop is the cost of listing a long history, so it does the least it
    can: a bare object and two slot stores per snapshot.
    """
    rows = _PageRows(page)
    infos: list[SnapshotInfo] = []
    append = infos.append
    for text in page.texts:
        info = _new_info(SnapshotInfo)
        _set_id(info, text)
        _set_page(info, rows)
        append(info)
    return infos


#: What ``first_parent_infos`` keeps per history page (``ObjectReader.derived``): the
#: page's infos, its first id, and the links that continue the run (``after``, ``previous``).
_PageRun = tuple[tuple[SnapshotInfo, ...], ObjectId, ObjectId | None, ObjectId | None]


def _snapshot_run(snapshot_id: ObjectId, snapshot: Snapshot) -> tuple[SnapshotInfo]:
    return (_lazy_info(object_id_text(snapshot_id), _Known(snapshot)),)


def _page_run(reader: ObjectReader, page_id: ObjectId) -> _PageRun:
    page = reader.history_page(page_id)
    return tuple(_page_infos(page)), page.ids[0], page.after, page.previous


def first_parent_infos(reader: ObjectReader, start: ObjectId,
                       snapshot: Snapshot | None = None, *, stored: bytes | None = None
                       ) -> Iterator[SnapshotInfo]:
    """``SnapshotInfo`` of ``start``'s first-parent ancestry, newest first, a page at a time.

    What ``Repository.ancestry`` lists when no snapshot is expired (no
    grafts): the same snapshots as ``ancestry``, without decoding them.
    ``snapshot`` is ``start``'s, when the caller has it; ``stored``, its
    stored frame, when the caller read it (only its links are decoded, the
    rest when the info is asked for a field). The infos of each
    history page are built once per process (``ObjectReader.derived``: pages
    are immutable, and so are infos), and a listing read to its end is kept
    whole for ``start`` (up to ``REMEMBERED_LISTING`` snapshots): the
    ancestry of a snapshot never changes, so listing it again costs a
    lookup. What a branch points at is not cached: callers read the ref.
    """
    listed = cast("tuple[SnapshotInfo, ...] | None", reader.derived_if_cached(start))
    if listed is not None:  # a whole listing, kept by ``_remembered``
        return iter(listed)
    runs = _info_runs(reader, start, snapshot, stored)
    return itertools.chain.from_iterable(_remembered(reader, start, runs))


#: The longest listing ``first_parent_infos`` keeps whole (longer ones: their pages' infos).
REMEMBERED_LISTING = 4096


def _remembered(reader: ObjectReader, start: ObjectId,
                runs: Iterator[tuple[SnapshotInfo, ...]]) -> Iterator[tuple[SnapshotInfo, ...]]:
    seen: list[tuple[SnapshotInfo, ...]] = []
    length = 0
    for run in runs:
        length += len(run)
        if length <= REMEMBERED_LISTING:
            seen.append(run)
        yield run
    if length <= REMEMBERED_LISTING:  # read to the end: keep the whole listing
        reader.remember_derived(start, tuple(itertools.chain.from_iterable(seen)))


def _info_runs(reader: ObjectReader, start: ObjectId, first: Snapshot | None,
               stored: bytes | None) -> Iterator[tuple[SnapshotInfo, ...]]:
    current: ObjectId | None = start
    while current is not None:  # a snapshot read whole (a stored tip: its links), then pages
        if stored is not None and first is None:
            expected, page_id = _named(snapshot_links, current, stored)
            yield (_lazy_info(object_id_text(current), _Stored(current, stored)),)
        else:
            snapshot = reader.snapshot(current) if first is None else first
            yield _snapshot_run(current, snapshot)
            expected, page_id = snapshot.parent, snapshot.history
        first = stored = None
        current = expected
        while page_id is not None and expected is not None:
            infos, first_id, after, previous = reader.derived(
                page_id, partial(_page_run, reader, page_id))
            if first_id != expected:  # pragma: no cover - verify reports such a page
                break
            yield infos
            expected, page_id = after, previous
            current = expected
        # ``current``: the parent of a page written before history pages, read one by one


@attrs.frozen
class Diff:
    """Changes between two versions (or staged in a session), by Zarr node."""

    new_groups: frozenset[str] = frozenset()
    new_arrays: frozenset[str] = frozenset()
    deleted_groups: frozenset[str] = frozenset()
    deleted_arrays: frozenset[str] = frozenset()
    updated_groups: frozenset[str] = frozenset()
    updated_arrays: frozenset[str] = frozenset()
    updated_chunks: Mapping[str, frozenset[Coordinates]] = attrs.field(factory=dict)
    updated_keys: frozenset[str] = frozenset()
    #: Changed keys whose new value is a virtual reference to an external file
    #: (``versionstore.virtual``); they are also counted in ``updated_chunks``.
    virtual_keys: frozenset[str] = frozenset()
    #: Chunk-grid shape of each array in ``updated_chunks`` (for pictures), when known.
    chunk_grids: Mapping[str, tuple[int, ...]] = attrs.field(factory=dict, eq=False,
                                                            repr=False)
    #: Of ``updated_chunks``, those that did not exist before (written for the first
    #: time) and those that no longer exist (erased), per array; the rest changed value.
    new_chunks: Mapping[str, frozenset[Coordinates]] = attrs.field(factory=dict, eq=False,
                                                                  repr=False)
    deleted_chunks: Mapping[str, frozenset[Coordinates]] = attrs.field(factory=dict, eq=False,
                                                                      repr=False)

    def is_empty(self) -> bool:
        """Whether nothing changed."""
        return not any(getattr(self, f.name) for f in attrs.fields(Diff)
                       if f.name not in _DERIVED)

    def chunk_counts(self, path: str) -> tuple[int, int, int]:
        """Chunks of array ``path`` added, changed (rewritten) and removed."""
        every = self.updated_chunks.get(path, frozenset())
        added = len(self.new_chunks.get(path, frozenset()))
        removed = len(self.deleted_chunks.get(path, frozenset()))
        return added, len(every) - added - removed, removed

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """IPython's plain-text view: one line per change (``str(diff)``), not every field."""
        printer.text(str(self))

    def _repr_html_(self) -> str:
        fields = {f.name: getattr(self, f.name) for f in attrs.fields(Diff)
                  if f.name not in ("updated_chunks", "virtual_keys", *_DERIVED)}
        return diff_html(fields, self.updated_chunks, self.chunk_grids,
                         {path: self.chunk_counts(path) for path in self.updated_chunks})

    def __str__(self) -> str:
        lines = []
        for field in attrs.fields(Diff):
            value = getattr(self, field.name)
            if field.name in _DERIVED:
                continue
            if field.name == "updated_chunks":
                for path, coords in sorted(value.items()):
                    lines.append(f"updated_chunks {path}: {len(coords)} chunk(s)")
            elif field.name == "virtual_keys":
                if value:
                    lines.append(f"virtual_keys: {len(value)} key(s) now reference external "
                                 "files")
            elif value:
                lines.append(f"{field.name}: {', '.join(sorted(value))}")
        return "\n".join(lines) or "(no changes)"


#: ``Diff`` fields that detail others (not compared, not shown on their own).
_DERIVED = ("chunk_grids", "new_chunks", "deleted_chunks")


class History(itertools.chain[SnapshotInfo]):
    """What ``Repository.ancestry`` returns: an iterator of ``SnapshotInfo``, newest first.

    Lazy, as before; in a notebook it shows as a table beside an SVG graph of
    the history (the first ``SHOWN`` snapshots, read ahead without being
    lost to iteration). Iterating is ``itertools.chain``'s, in C: listing a
    long history costs no Python call per snapshot, until something reads
    ahead (``_peek``) and the lookahead has to be served first.
    """

    __slots__ = ("_ahead", "_labels")
    SHOWN = 30
    _ahead: deque[SnapshotInfo]  # set by the first ``_peek``
    #: Reads the branch and tag names of each snapshot, for the notebook view's
    #: refs column (set by ``Repository.ancestry``; read only when shown).
    _labels: Callable[[], Mapping[str, Sequence[str]]]

    def _peek(self, count: int) -> list[SnapshotInfo]:
        if type(self) is History:  # from now on, ``next`` serves the lookahead first
            self._ahead = deque()
            self.__class__ = _LookedAhead
        ahead = self._ahead
        while len(ahead) < count:
            try:
                ahead.append(itertools.chain.__next__(self))
            except StopIteration:
                break
        return list(ahead)[:count]

    def __repr__(self) -> str:
        shown = self._peek(self.SHOWN + 1)
        lines = [f"{i.id[:12]}  {i.written_at:%Y-%m-%d %H:%M}  {i.message}"
                 for i in shown[: self.SHOWN]]
        more = ["…"] if len(shown) > self.SHOWN else []
        return "\n".join(["<History, newest first>", *lines, *more])

    def _repr_html_(self) -> str:
        shown = self._peek(self.SHOWN + 1)
        rows = [(i.id, list(i.parent_ids), i.written_at, i.message)
                for i in shown[: self.SHOWN]]
        labels = getattr(self, "_labels", None)
        return history_html(rows, None if labels is None else labels(),
                            more=len(shown) > self.SHOWN)


class _LookedAhead(History):
    """A ``History`` that has read ahead: ``next`` takes the lookahead first."""

    __slots__ = ()

    def __next__(self) -> SnapshotInfo:
        if self._ahead:
            return self._ahead.popleft()
        return itertools.chain.__next__(self)


def ancestry(reader: ObjectReader, start: ObjectId, *, all_parents: bool = False,
             grafts: Grafts | None = None) -> Iterator[tuple[ObjectId, Snapshot]]:
    """Snapshots from ``start`` back to the first, newest first (parents through ``grafts``).

    By default only first parents are followed (the branch's own line), a
    history page at a time. With ``all_parents``, every snapshot ``start``
    reaches is yielded once, each after all of its descendants, ties broken
    newest first (then by id), so the order is deterministic.
    """
    if not all_parents:
        if grafts:  # history pages list stored parents; expired ones must be skipped
            yield from _first_parents_grafted(reader, start, grafts)
        else:
            yield from _first_parents(reader, start)
        return
    found = _reachable(reader, start, grafts)
    waiting = dict.fromkeys(found, 0)  # children not yet yielded
    for snapshot_id, snapshot in found.items():
        for parent in parents_of(snapshot_id, snapshot, grafts):
            waiting[parent] += 1
    ready = [_order(start, found[start])]
    while ready:
        _, _, snapshot_id = heapq.heappop(ready)
        snapshot = found[snapshot_id]
        yield snapshot_id, snapshot
        for parent in parents_of(snapshot_id, snapshot, grafts):
            waiting[parent] -= 1
            if waiting[parent] == 0:
                heapq.heappush(ready, _order(parent, found[parent]))


def _first_parents_grafted(reader: ObjectReader, start: ObjectId, grafts: Grafts
                           ) -> Iterator[tuple[ObjectId, Snapshot]]:
    """First-parent ancestry one snapshot at a time, through grafts."""
    current: ObjectId | None = start
    while current is not None:
        snapshot = reader.snapshot(current)
        yield current, snapshot
        parents = parents_of(current, snapshot, grafts)
        current = parents[0] if parents else None


def _first_parents(reader: ObjectReader, start: ObjectId
                   ) -> Iterator[tuple[ObjectId, Snapshot]]:
    """First-parent ancestry, a history page at a time where there are pages."""
    current: ObjectId | None = start
    while current is not None:
        snapshot = reader.snapshot(current)
        yield current, snapshot
        expected, page_id = snapshot.parent, snapshot.history
        current = expected
        while page_id is not None and expected is not None:
            page = reader.history_page(page_id)
            if page.ids[0] != expected:  # pragma: no cover - verify reports such a page
                break
            yield from zip(page.ids, history_entries("history page", page), strict=True)
            expected, page_id = page.after, page.previous
            current = expected


def with_history(reader: ObjectReader, snapshot: Snapshot
                 ) -> tuple[Snapshot, list[tuple[ObjectId, bytes, HistoryPage]]]:
    """``snapshot`` naming its history page, and the page to store with it: id, frame, record.

    The page is the first parent followed by the parent's own page while that
    has room (copied: pages are immutable), else a new page that points at
    the parent's. The parent must be stored (it is: a branch tip, checked by
    the compare-and-swap, or a snapshot the batch ``requires``).
    """
    parent = snapshot.parent
    if parent is None:
        return snapshot, []
    above = reader.snapshot(parent)
    ids: tuple[ObjectId, ...] = (parent,)
    texts: tuple[str, ...] = (object_id_text(parent),)
    rows, after, previous = history_row(above), above.parent, None
    if above.history is not None:
        older = reader.history_page(above.history)
        if len(older.ids) < HISTORY_PAGE_SIZE:
            ids, texts, rows = ids + older.ids, texts + older.texts, rows + older.rows
            after, previous = older.after, older.previous
        else:
            previous = above.history
    page = HistoryPage(ids=ids, texts=texts, rows=rows, after=after, previous=previous)
    page_id, frame = encode_history_page(page)
    return attrs.evolve(snapshot, history=page_id), [(page_id, frame, page)]


def _order(snapshot_id: ObjectId, snapshot: Snapshot) -> tuple[float, bytes, ObjectId]:
    return -snapshot.written_at.timestamp(), bytes(snapshot_id), snapshot_id


def _reachable(reader: ObjectReader, start: ObjectId, grafts: Grafts | None = None
               ) -> dict[ObjectId, Snapshot]:
    """Every snapshot ``start`` reaches through all parents (``start`` included).

    First-parent runs are read a history page at a time (up to the first
    grafted snapshot: pages list stored parents); the snapshots they yield
    lack their own ``history``, which no caller needs.
    """
    found: dict[ObjectId, Snapshot] = {}
    pending = [start]
    while pending:
        snapshot_id = pending.pop()
        if snapshot_id in found:
            continue
        snapshot = reader.snapshot(snapshot_id)
        found[snapshot_id] = snapshot
        pending.extend(p for p in parents_of(snapshot_id, snapshot, grafts) if p not in found)
        if not grafts or snapshot_id not in grafts:
            _take_pages(reader, snapshot, found, pending, grafts)
    return found


def _take_pages(reader: ObjectReader, snapshot: Snapshot, found: dict[ObjectId, Snapshot],
                pending: list[ObjectId], grafts: Grafts | None = None) -> None:
    """Add ``snapshot``'s first-parent ancestors to ``found`` from its pages, until a known one.

    Their other parents (merged branches) go to ``pending``. Pages list
    stored parents, so they are followed only up to the first grafted
    snapshot (``expire_snapshots``): its graft's parents go to ``pending``.
    A run that leads into expired snapshots always passes through one.
    """
    expected, page_id = snapshot.parent, snapshot.history
    while page_id is not None and expected is not None and expected not in found:
        page = reader.history_page(page_id)
        if page.ids[0] != expected:  # pragma: no cover - verify reports such a page
            return
        for entry_id, entry in zip(page.ids, history_entries("history page", page),
                                   strict=True):
            if entry_id in found:
                return
            found[entry_id] = entry
            grafted = grafts.get(entry_id) if grafts else None
            if grafted is not None:
                pending.extend(p for p in grafted if p not in found)
                return
            pending.extend(p for p in entry.parents[1:] if p not in found)
        expected, page_id = page.after, page.previous
    if expected is not None and expected not in found:
        pending.append(expected)


def merge_base(reader: ObjectReader, a: ObjectId, b: ObjectId,
               grafts: Grafts | None = None) -> ObjectId | None:
    """The lowest common ancestor of two snapshots (either may be it), or ``None``.

    A common ancestor is *lowest* when no other common ancestor descends from
    it. Criss-cross histories can have several; the newest of them (then the
    greatest id) is chosen, so every caller picks the same base. History is
    followed as ``ancestry`` shows it: through ``grafts``, never into
    snapshots that ``expire_snapshots`` removed (and gc may have deleted).
    """
    of_a = _reachable(reader, a, grafts)
    if b in of_a:
        return b
    candidates: set[ObjectId] = set()
    seen: set[ObjectId] = set()
    pending = [b]
    while pending:
        snapshot_id = pending.pop()
        if snapshot_id in seen:
            continue
        seen.add(snapshot_id)
        if snapshot_id in of_a:
            candidates.add(snapshot_id)  # common; its own ancestors are not lowest
            continue
        pending.extend(parents_of(snapshot_id, reader.snapshot(snapshot_id), grafts))
    lowest = [
        c for c in candidates
        if not any(c != other and c in _reachable(reader, other, grafts) for other in candidates)
    ]
    if not lowest:
        return None
    return max(lowest, key=lambda c: (reader.snapshot(c).written_at, bytes(c)))


def snapshot_at(reader: ObjectReader, tip: ObjectId, as_of: datetime,
                grafts: Grafts | None = None) -> ObjectId:
    """The newest snapshot in ``tip``'s ancestry written at or before ``as_of``.

    Raises:
        ValueError: if ``as_of`` has no timezone.
        SnapshotNotFoundError: if every snapshot is newer.
    """
    if as_of.tzinfo is None or as_of.utcoffset() is None:
        raise ValueError("as_of must be timezone-aware (e.g. datetime.now(UTC))")
    for snapshot_id, snapshot in ancestry(reader, tip, grafts=grafts):
        if snapshot.written_at <= as_of:
            return snapshot_id
    raise SnapshotNotFoundError(
        "", f"no snapshot on this branch was written at or before {as_of.isoformat()}"
    )


# -- classifying changed keys --------------------------------------------------------


def _node_path(directory: str) -> str:
    return "/" + directory


def _json(value: bytes | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        document = load_document(value)
    except (ValueError, UnicodeDecodeError):
        return None
    return document if isinstance(document, dict) else None


class _Layout:
    """Looks up Zarr node types and chunk-key encodings in one version."""

    def __init__(self, read: KeyReader) -> None:
        self._read = read
        self._arrays: dict[str, Callable[[str], Coordinates | None] | None] = {}

    def node_type(self, directory: str) -> str | None:
        prefix = f"{directory}/" if directory else ""
        document = _json(self._read(prefix + "zarr.json"))
        if document is not None and document.get("node_type") in ("array", "group"):
            return str(document["node_type"])
        if self._read(prefix + ".zarray") is not None:
            return "array"
        if self._read(prefix + ".zgroup") is not None:
            return "group"
        return None

    def grid(self, directory: str) -> tuple[int, ...] | None:
        """The chunk-grid shape of the array at ``directory`` (regular grids only)."""
        prefix = f"{directory}/" if directory else ""
        v3 = _json(self._read(prefix + "zarr.json"))
        if v3 is not None and v3.get("node_type") == "array":
            shape = v3.get("shape")
            chunks = ((v3.get("chunk_grid") or {}).get("configuration") or {}).get("chunk_shape")
        else:
            v2 = _json(self._read(prefix + ".zarray")) or {}
            shape, chunks = v2.get("shape"), v2.get("chunks")
        if (not isinstance(shape, list) or not isinstance(chunks, list)
                or len(shape) != len(chunks)
                or not all(isinstance(n, int) and isinstance(c, int) and c > 0
                           for n, c in zip(shape, chunks, strict=True))):
            return None
        return tuple(math.ceil(n / c) for n, c in zip(shape, chunks, strict=True))

    def chunk_parser(self, directory: str) -> Callable[[str], Coordinates | None] | None:
        """How to read chunk keys of the array at ``directory`` (``None``: not an array)."""
        if directory not in self._arrays:
            self._arrays[directory] = self._parser(directory)
        return self._arrays[directory]

    def _parser(self, directory: str) -> Callable[[str], Coordinates | None] | None:
        prefix = f"{directory}/" if directory else ""
        v3 = _json(self._read(prefix + "zarr.json"))
        if v3 is not None and v3.get("node_type") == "array":
            ndim = len(v3.get("shape", []))
            encoding = v3.get("chunk_key_encoding") or {}
            is_v2 = encoding.get("name") == "v2"
            # The spec's defaults differ: "/" for the default encoding, "." for "v2".
            separator = (encoding.get("configuration") or {}).get("separator",
                                                                 "." if is_v2 else "/")
            if is_v2:
                return lambda rest: _coords(rest, separator, ndim, lead=None)
            return lambda rest: _coords(rest, separator, ndim, lead="c")
        v2 = _json(self._read(prefix + ".zarray"))
        if v2 is not None:
            ndim = len(v2.get("shape", []))
            separator = v2.get("dimension_separator") or "."
            return lambda rest: _coords(rest, separator, ndim, lead=None)
        return None


class KeyLocator:
    """Where keys sit in one version's Zarr hierarchy (for conflict reports)."""

    def __init__(self, read: KeyReader) -> None:
        self._layout = _Layout(read)

    def node_type(self, directory: str) -> str | None:
        """``"array"``, ``"group"`` or ``None`` for the node at ``directory`` (no slashes)."""
        return self._layout.node_type(directory)

    def chunk(self, key: str) -> tuple[str, Coordinates] | None:
        """The array path and chunk coordinates of chunk key ``key``, as ``Diff`` reads them."""
        parts = key.split("/")
        for depth in range(len(parts) - 1, -1, -1):
            directory = "/".join(parts[:depth])
            parser = self._layout.chunk_parser(directory)
            if parser is None:
                continue
            coords = parser("/".join(parts[depth:]))
            return None if coords is None else (_node_path(directory), coords)
        return None


def _coords(rest: str, separator: str, ndim: int, lead: str | None) -> Coordinates | None:
    parts = rest.split(separator)
    if lead is not None:
        if parts[0] != lead:
            return None
        parts = parts[1:]
    elif ndim == 0:
        return () if parts == ["0"] else None
    if len(parts) != ndim or not all(_is_index(p) for p in parts):
        return None
    return tuple(int(p) for p in parts)


def _is_index(part: str) -> bool:
    # Exactly the indices zarr writes: ASCII digits, no leading zero ("²".isdigit() is
    # true but int() refuses it; "01" would alias the chunk at "1").
    return part.isascii() and part.isdigit() and (part == "0" or part[0] != "0")


def classify_changes(
    keys: Mapping[str, tuple[bool, bool]], read_old: KeyReader, read_new: KeyReader
) -> Diff:
    """Turn changed keys into a ``Diff``.

    Args:
        keys: each changed key → (existed before, exists after).
        read_old: reads a key in the older version.
        read_new: reads a key in the newer version.
    """
    old, new = _Layout(read_old), _Layout(read_new)
    found: dict[str, set[str]] = {name: set() for name in (
        "new_groups", "new_arrays", "deleted_groups", "deleted_arrays",
        "updated_groups", "updated_arrays", "updated_keys")}
    chunks: dict[str, set[Coordinates]] = {}
    added: dict[str, set[Coordinates]] = {}
    removed: dict[str, set[Coordinates]] = {}
    for key, (before, after) in keys.items():
        directory, _, name = key.rpartition("/")
        if name in ("zarr.json", ".zarray", ".zgroup", ".zattrs"):
            kind_old = old.node_type(directory) if before or name == ".zattrs" else None
            kind_new = new.node_type(directory) if after or name == ".zattrs" else None
            path = _node_path(directory)
            if kind_old is None and kind_new is None:
                found["updated_keys"].add(key)
            elif name == ".zattrs" or kind_old == kind_new:
                kind = kind_new or kind_old
                found[f"updated_{kind}s"].add(path)
            else:
                if kind_old is not None:
                    found[f"deleted_{kind_old}s"].add(path)
                if kind_new is not None:
                    found[f"new_{kind_new}s"].add(path)
            continue
        placed = False
        parts = key.split("/")
        for depth in range(len(parts) - 1, -1, -1):
            directory = "/".join(parts[:depth])
            rest = "/".join(parts[depth:])
            parser = new.chunk_parser(directory)
            if parser is None:
                gone = old.chunk_parser(directory)
                if gone is None:
                    continue
                # The array is deleted: that is the change, not each of its chunks
                # (as in icechunk, updated_chunks names only arrays that still exist).
                placed = gone(rest) is not None
                break
            coords = parser(rest)
            if coords is not None:
                chunks.setdefault(_node_path(directory), set()).add(coords)
                if not before or not after:
                    (added if not before else removed).setdefault(
                        _node_path(directory), set()).add(coords)
                placed = True
            break
        if not placed:
            found["updated_keys"].add(key)
    for path in found["new_arrays"] | found["deleted_arrays"]:
        found["updated_arrays"].discard(path)
    for path in found["new_groups"] | found["deleted_groups"]:
        found["updated_groups"].discard(path)
    grids = {}
    for path in chunks:
        grid = new.grid(path[1:])
        if grid is not None:
            grids[path] = grid
    return Diff(
        **{name: frozenset(paths) for name, paths in found.items()},
        updated_chunks={path: frozenset(c) for path, c in chunks.items()},
        chunk_grids=grids,
        new_chunks={path: frozenset(c) for path, c in added.items()},
        deleted_chunks={path: frozenset(c) for path, c in removed.items()},
    )

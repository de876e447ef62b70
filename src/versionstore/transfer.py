"""Copying history between repositories: the engine under push, fetch and clone.

Two repositories on any two storages (LMDB, memory, object storage) share
nothing but the format. Every object is immutable and named by its content
hash, so what the target lacks is a set difference, and copying an object
twice is harmless. A transfer:

1. walks what the source's refs reach with garbage collection's own walk
   (``versionstore.gc.reachable_objects``: parents through grafts, history
   pages, tree nodes, chunks), stopping at every object the target already
   stores (``Backend.has_objects``);
2. writes the missing objects to the target in *waves*: an object goes only
   after everything it references is stored (chunks, then leaves, then each
   level of branch nodes, then history pages and snapshots, parents first).
   No object in a wave references another in the same wave, so the order
   holds even on a backend whose batch of objects lands piece by piece. A
   snapshot's graft (``versionstore.grafts``) is written just before it;
3. moves the target's refs by compare-and-swap, in a batch that requires the
   snapshot they name (``versionstore.refs``).

So the target only ever holds objects whose references it holds too. An
interrupted transfer leaves objects no ref reaches yet (nothing a reader
sees), and the next run's walk stops at what landed: nothing is copied twice.
Objects are re-hashed before they are written, so a damaged source object is
refused (``CorruptObjectError``) instead of spread.

The walk trusts that the target is closed in the same way (what every writer
keeps; ``versionstore verify`` checks it). A garbage collection *on the
target* while a transfer is between steps 2 and 3 can delete objects copied
so far (nothing reaches them yet): the ref move then fails with
``SnapshotNotFoundError`` if the snapshot went (run the transfer again), and
otherwise ``verify`` reports what went missing below it. Do not collect a
repository while transfers into it run, unless its collection spares objects
younger than a grace period longer than a transfer takes (``docs/format.md``, T1).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import override

import attrs

from versionstore.backend.protocol import Backend, WriteBatch
from versionstore.codec import content_id, decode_ref_target
from versionstore.errors import CorruptObjectError, NonFastForwardError
from versionstore.gc import Progress, reachable_objects
from versionstore.grafts import GRAFT_PREFIX, Grafts, graft_ref, grafts_from_refs, parents_of
from versionstore.ids import ObjectId, SnapshotId, object_id_text
from versionstore.objects import ObjectReader
from versionstore.records import Branch, HistoryPage, Node, Snapshot
from versionstore.refs import Refs, branch_ref, validate_ref_name

__all__ = ["TransferSummary", "copy_objects", "descends_from", "transfer_branch"]

#: At most this many objects, and about this many bytes, are read and written per batch.
_BATCH_OBJECTS = 256
_BATCH_BYTES = 32 << 20
#: Existence checks of chunks are asked of the target this many at a time.
_LOOKUP_BATCH = 1024


@attrs.frozen(kw_only=True)
class TransferSummary:
    """What a clone, push or fetch did.

    ``objects_copied`` and ``bytes_copied`` count what was written to the
    target (its stored size); objects the target already had are not
    counted, so a repeated transfer copies 0. ``refs`` maps each ref the
    transfer moved (``"branch/NAME"`` or ``"tag/NAME"``) to its snapshot
    before (``None``: it did not exist) and after.
    """

    objects_copied: int = 0
    bytes_copied: int = 0
    refs: Mapping[str, tuple[SnapshotId | None, SnapshotId | None]] = attrs.field(factory=dict)

    def __add__(self, other: TransferSummary) -> TransferSummary:
        return TransferSummary(objects_copied=self.objects_copied + other.objects_copied,
                               bytes_copied=self.bytes_copied + other.bytes_copied,
                               refs={**self.refs, **other.refs})


class _Unshared(ObjectReader):
    """The source's objects as the reachability walk sees them, minus what the target holds.

    An object the target already stores reads as absent, so the walk stops
    there (the target holds everything it references). Every object read is
    recorded with what it references, for ordering the writes.
    """

    def __init__(self, source: Backend, target: Backend, grafts: Grafts) -> None:
        super().__init__(source)
        self._target = target
        self._grafts = grafts
        self.present: set[ObjectId] = set()
        #: Snapshots to copy -> the objects they reference (parents, tree, page).
        self.snapshots: dict[ObjectId, tuple[ObjectId, ...]] = {}
        #: History pages to copy -> the page they continue.
        self.pages: dict[ObjectId, ObjectId | None] = {}
        #: Tree nodes to copy -> their height (leaves 1, a branch node its level + 1).
        self.nodes: dict[ObjectId, int] = {}

    def _on_target(self, object_id: ObjectId) -> bool:
        if object_id in self.present:
            return True
        if self._target.has_objects([object_id])[0]:
            self.present.add(object_id)
            return True
        return False

    @override
    def snapshot_if_stored(self, snapshot_id: ObjectId) -> Snapshot | None:
        if self._on_target(snapshot_id):
            return None
        snapshot = super().snapshot_if_stored(snapshot_id)
        if snapshot is not None:
            linked = (snapshot.tree, snapshot.history)
            self.snapshots[snapshot_id] = (*parents_of(snapshot_id, snapshot, self._grafts),
                                           *(i for i in linked if i is not None))
        return snapshot

    @override
    def history_page_if_stored(self, page_id: ObjectId) -> HistoryPage | None:
        if self._on_target(page_id):
            return None
        page = super().history_page_if_stored(page_id)
        if page is not None:
            self.pages[page_id] = page.previous
        return page

    @override
    def node_if_stored(self, node_id: ObjectId) -> Node | None:
        if self._on_target(node_id):
            return None
        node = super().node_if_stored(node_id)
        if node is not None:
            self.nodes[node_id] = node.level + 1 if isinstance(node, Branch) else 1
        return node


def _waves(walker: _Unshared, chunks: Sequence[ObjectId]) -> list[list[ObjectId]]:
    """The objects to copy, grouped so that each group references only earlier groups."""
    height: dict[ObjectId, int] = dict.fromkeys(chunks, 0)
    height.update(walker.nodes)
    for start in walker.pages:  # a page's height: one more than the page it continues
        chain: list[ObjectId] = []
        page: ObjectId | None = start
        while page is not None and page in walker.pages and page not in height:
            chain.append(page)
            page = walker.pages[page]
        below = height.get(page, 0) if page is not None else 0
        for page in reversed(chain):
            below += 1
            height[page] = below
    for start in walker.snapshots:  # one more than the highest thing referenced
        stack = [start]
        while stack:
            snapshot = stack[-1]
            if snapshot in height:
                stack.pop()
                continue
            waiting = [r for r in walker.snapshots[snapshot]
                       if r in walker.snapshots and r not in height]
            if waiting:
                stack.extend(waiting)
                continue
            stack.pop()
            height[snapshot] = 1 + max((height.get(r, 0) for r in walker.snapshots[snapshot]),
                                       default=0)
    waves: dict[int, list[ObjectId]] = {}
    for object_id, level in height.items():
        waves.setdefault(level, []).append(object_id)
    return [sorted(waves[level]) for level in sorted(waves)]


def copy_objects(source: ObjectReader, target: Backend, roots: Mapping[str, bytes],
                 progress: Progress | None = None) -> TransferSummary:
    """Copy to ``target`` every object ``roots`` reach in the source that it lacks.

    Args:
        source: the source repository's reader.
        target: the target repository's backend.
        roots: source refs to start from (``branch/…``, ``tag/…`` values);
            the source's grafts are read here.
        progress: told ``("copying objects", done, total)`` as objects land.

    Returns:
        The objects and bytes written (no refs move here).

    Raises:
        CorruptObjectError: an object the walk needs is missing from the source
            or does not match its id; nothing it would have reached was written.
    """
    graft_refs = source.backend.list_refs(GRAFT_PREFIX)
    grafts = grafts_from_refs(graft_refs)
    walker = _Unshared(source.backend, target, grafts)
    missing: set[ObjectId] = set()
    located: dict[ObjectId, str] = {}
    marked = reachable_objects(walker, {**graft_refs, **roots}, missing, located)
    missing -= walker.present
    if missing:
        first = object_id_text(min(missing))
        raise CorruptObjectError(first, f"referenced but not stored in the source repository "
                                 f"({len(missing)} such object(s)); run `versionstore verify` "
                                 "on it")
    candidates = sorted(marked - walker.snapshots.keys() - walker.pages.keys()
                        - walker.nodes.keys())
    chunks: list[ObjectId] = []
    for start in range(0, len(candidates), _LOOKUP_BATCH):
        batch = candidates[start : start + _LOOKUP_BATCH]
        held = (target.has_located([(i, located.get(i)) for i in batch]) if located
                else target.has_objects(batch))
        chunks.extend(c for c, there in zip(batch, held, strict=True) if not there)
    waves = _waves(walker, chunks)
    total = sum(map(len, waves))
    copied = written = 0
    for wave in waves:
        grafted = {graft_ref(s): graft_refs[graft_ref(s)] for s in wave
                   if s in walker.snapshots and graft_ref(s) in graft_refs}
        if grafted:  # before its snapshot: a snapshot never lands without its graft
            target.write(WriteBatch(refs=grafted))
        start = 0
        while start < len(wave):  # batches of about _BATCH_BYTES, by the sizes so far
            average = written // copied if copied else 4096
            count = max(1, min(_BATCH_OBJECTS, _BATCH_BYTES // max(1, average)))
            group, start = wave[start : start + count], start + count
            objects = []
            stored = (source.backend.get_located([(i, located.get(i)) for i in group], _copy)
                      if located else source.backend.get_objects(group))
            for object_id, data in zip(group, stored, strict=True):
                name = object_id_text(object_id)
                if data is None:
                    raise CorruptObjectError(name, "is referenced but missing from the source "
                                             "repository (damaged, or collected during the "
                                             "copy); run `versionstore verify` on it")
                if content_id(name, data) != object_id:
                    raise CorruptObjectError(name, "its content does not match its id in the "
                                             "source repository; run `versionstore verify`")
                objects.append((object_id, data))
            # A located chunk lands at its hint (on object storage), the rest by id: the
            # chunks are one wave, and nothing else is located.
            target.put_located([(i, located[i], data) for i, data in objects if i in located])
            plain = [(i, data) for i, data in objects if i not in located]
            if plain:
                target.write(WriteBatch(objects=plain))
            copied += len(objects)
            written += sum(len(data) for _, data in objects)
            if progress is not None:
                progress("copying objects", copied, total)
    return TransferSummary(objects_copied=copied, bytes_copied=written)


def _copy(_: ObjectId, data: bytes | memoryview) -> bytes:
    return bytes(data)


def descends_from(reader: ObjectReader, tip: ObjectId, ancestor: ObjectId,
                  grafts: Grafts | None = None) -> bool:
    """Whether ``ancestor`` is ``tip`` or one of its ancestors (all parents, through grafts).

    Breadth first, so a nearby ancestor (a fast-forward of a few commits) is
    found after reading a few snapshots.
    """
    if tip == ancestor:
        return True
    if reader.snapshot_if_stored(ancestor) is None:
        return False
    seen = {tip}
    pending = deque([tip])
    while pending:
        snapshot_id = pending.popleft()
        snapshot = reader.snapshot_if_stored(snapshot_id)
        if snapshot is None:
            continue
        for parent in parents_of(snapshot_id, snapshot, grafts):
            if parent == ancestor:
                return True
            if parent not in seen:
                seen.add(parent)
                pending.append(parent)
    return False


def _text(object_id: ObjectId | None) -> SnapshotId | None:
    return None if object_id is None else SnapshotId(object_id_text(object_id))


def _is_initial(backend: Backend, snapshot_id: ObjectId) -> bool:
    """Whether ``snapshot_id`` is a new repository's first snapshot: no parent, no data."""
    snapshot = ObjectReader(backend).snapshot(snapshot_id)
    return not snapshot.parents and snapshot.tree is None


def transfer_branch(source: ObjectReader, source_refs: Refs, target_refs: Refs, *,
                    source_branch: str, target_branch: str, force: bool, operation: str,
                    message: str | None = None, progress: Progress | None = None
                    ) -> TransferSummary:
    """Copy ``source_branch``'s history to the target and move ``target_branch`` to its tip.

    The common step of ``Repository.push`` (source: this repository) and
    ``Repository.fetch`` (source: the remote). The target branch is created
    if it does not exist; otherwise it moves only if its snapshot is an
    ancestor of the incoming tip (a fast-forward), unless ``force``. The move
    is a compare-and-swap that requires the tip to be stored and writes an
    ops-log entry of kind ``operation``; if the branch moved meanwhile, the
    check is made again against its new value.

    Raises:
        BranchNotFoundError: ``source_branch`` does not exist in the source.
        InvalidRefNameError: ``target_branch`` is not a valid name.
        NonFastForwardError: the move is not a fast-forward and not ``force``;
            nothing moved (objects copied in an earlier round stay).
    """
    tip, source_raw = source_refs.branch_tip(source_branch)
    name = branch_ref(validate_ref_name(target_branch))
    grafts: Grafts | None = None
    summary = TransferSummary()
    target = target_refs.backend
    while True:
        raw = target.get_ref(name)
        current = None if raw is None else decode_ref_target(name, raw).snapshot
        if current == tip:
            return summary
        if current is not None and not force:
            if grafts is None:
                grafts = grafts_from_refs(source.backend.list_refs(GRAFT_PREFIX))
            if not descends_from(source, tip, current, grafts):
                raise NonFastForwardError(operation, target_branch, object_id_text(current),
                                          object_id_text(tip),
                                          initial=_is_initial(target, current))
        summary += copy_objects(source, target, {branch_ref(source_branch): source_raw},
                                progress)
        if target_refs.move_branch(target_branch, raw, tip, verify_target=True,
                                   kind=operation, message=message):
            target.sync()
            return summary + TransferSummary(refs={name: (_text(current), _text(tip))})

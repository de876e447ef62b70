"""``MemoryBackend``: objects and refs in dicts, for tests and notebooks.

It is the mock transport of the engine: the same ``Repository`` runs over it
and over LMDB, so tests exercise the real code paths. One lock makes every
method atomic, so threads see the same guarantees as LMDB gives processes.
Pickling keeps identity within a process (a registry of live backends), so a
pickled session on an in-memory repository still sees the same data.
"""

from __future__ import annotations

import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, override

from versionstore.backend.ledger import Ledger, LedgerRescue, LedgerUpdate
from versionstore.backend.protocol import Backend, EmptyRecord, Rescue, WriteBatch, changed_refs
from versionstore.backend.refstate import RefState
from versionstore.errors import MissingObjectsError
from versionstore.ids import ObjectId, object_id_text

__all__ = ["MemoryBackend"]

_LIVE: weakref.WeakValueDictionary[str, MemoryBackend] = weakref.WeakValueDictionary()


def _revive(token: str) -> MemoryBackend:
    backend = _LIVE.get(token)
    if backend is None:
        raise RuntimeError(
            "an in-memory repository cannot be unpickled in another process "
            "(or after it was garbage-collected); use an LMDB repository to share across processes"
        )
    return backend


class MemoryBackend(Backend, Ledger):
    """A backend held in process memory (with garbage collection's ledger)."""

    def __init__(self) -> None:
        self._objects: dict[ObjectId, bytes] = {}
        self._refs = RefState()
        self._lock = threading.RLock()
        # garbage collection's ledger (versionstore.backend.ledger)
        self._journal: dict[int, list[ObjectId]] = {}
        self._journal_end = 0
        self._counts: dict[ObjectId, int] = {}
        self._pending: set[ObjectId] = set()
        self._links: dict[ObjectId, ObjectId] = {}
        self._header: bytes | None = None
        self._token = uuid.uuid4().hex
        _LIVE[self._token] = self

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return _revive, (self._token,)

    def __repr__(self) -> str:
        return f"MemoryBackend({len(self._objects)} objects, {len(self._refs)} refs)"

    @override
    def get_objects(self, ids: Sequence[ObjectId]) -> list[bytes | None]:
        objects = self._objects
        return [objects.get(object_id) for object_id in ids]

    @override
    def has_objects(self, ids: Sequence[ObjectId]) -> list[bool]:
        objects = self._objects
        return [object_id in objects for object_id in ids]

    @override
    def write(self, batch: WriteBatch) -> bool:
        with self._lock:
            refs = self._refs
            if not refs.conditions_hold(batch):
                return False
            required = refs.required(batch)
            written = {object_id for object_id, _ in batch.objects} if len(required) else set()
            missing = [object_id_text(i) for i in required
                       if i not in self._objects and i not in written]
            if missing:
                raise MissingObjectsError(missing)
            objects, inserted = self._objects, []
            for object_id, data in batch.objects:
                if object_id not in objects:
                    objects[object_id] = bytes(data)
                    inserted.append(object_id)
            if inserted:
                self._journal[self._journal_end] = inserted
                self._journal_end += 1
            refs.apply(refs.effect(batch))
            return True

    @override
    def get_refs(self, names: Sequence[str]) -> list[bytes | None]:
        with self._lock:
            return [self._refs.get(name) for name in names]

    @override
    def get_refs_and_objects(
        self, names: Sequence[str], follow: Callable[[list[bytes | None]], Sequence[ObjectId]]
    ) -> tuple[list[bytes | None], list[bytes | None]]:
        with self._lock:  # one view, as LMDB's one read transaction
            refs = [self._refs.get(name) for name in names]
            return refs, [self._objects.get(i) for i in follow(refs)]

    @override
    def get_refs_objects_and_listing(
        self, names: Sequence[str], follow: Callable[[list[bytes | None]], Sequence[ObjectId]],
        prefix: str,
    ) -> tuple[list[bytes | None], list[bytes | None], dict[str, bytes]]:
        with self._lock:  # one view, as LMDB's one read transaction
            refs = [self._refs.get(name) for name in names]
            return refs, [self._objects.get(i) for i in follow(refs)], self._refs.under(prefix)

    @override
    def list_refs(self, prefix: str, limit: int | None = None) -> dict[str, bytes]:
        with self._lock:
            return self._refs.under(prefix, limit)

    @override
    def list_refs_except(self, prefixes: Sequence[str]) -> dict[str, bytes]:
        with self._lock:
            return self._refs.outside(prefixes)

    @override
    def delete_objects(
        self,
        ids: Iterable[ObjectId],
        *,
        if_refs_are: Mapping[str, bytes] | None = None,
        rescue: Rescue | None = None,
        prune_refs: Mapping[str, EmptyRecord] | None = None,
    ) -> bool:
        with self._lock:
            spared: set[ObjectId] = set()
            now = self._refs.as_dict() if if_refs_are is not None else {}
            if if_refs_are is not None and now != if_refs_are:
                if rescue is None:
                    return False
                spared = rescue(changed_refs(if_refs_are, now), now, self.get_objects)
            self._delete(ids, spared, prune_refs or {})
            return True

    def _delete(self, ids: Iterable[ObjectId], spared: set[ObjectId],
                prune_refs: Mapping[str, EmptyRecord]) -> None:
        deleted = {object_id for object_id in ids if object_id not in spared}
        for object_id in deleted:
            self._objects.pop(object_id, None)
        self._refs.apply(self._refs.prune_effect(prune_refs, deleted))

    @override
    def read_ledger(self) -> tuple[bytes | None, int]:
        with self._lock:
            return self._header, self._journal_end

    @override
    def journal(self, start: int, stop: int) -> list[ObjectId]:
        with self._lock:
            return [object_id for position in range(start, stop)
                    for object_id in self._journal.get(position, ())]

    @override
    def counts(self, ids: Sequence[ObjectId]) -> list[int]:
        with self._lock:
            return [self._counts.get(object_id, 0) for object_id in ids]

    @override
    def pending(self) -> list[ObjectId]:
        with self._lock:
            return list(self._pending)

    @override
    def links(self, ids: Sequence[ObjectId]) -> list[ObjectId | None]:
        with self._lock:
            return [self._links.get(object_id) for object_id in ids]

    @override
    def ledger_contents(self) -> tuple[bytes | None, dict[ObjectId, int], dict[ObjectId, ObjectId]]:
        with self._lock:
            return self._header, dict(self._counts), dict(self._links)

    @override
    def successors(self, object_id: ObjectId) -> list[ObjectId]:
        with self._lock:
            return [leaf for leaf, before in self._links.items() if before == object_id]

    @override
    def sweep(
        self,
        ids: Iterable[ObjectId],
        *,
        if_refs_are: Mapping[str, bytes],
        rescue: LedgerRescue,
        prune_refs: Mapping[str, EmptyRecord],
        ledger: LedgerUpdate,
        ignoring: Sequence[str] = (),
    ) -> bool:
        with self._lock:
            if self._header != ledger.expect:
                return False
            doomed = list(ids)
            spared: set[ObjectId] = set()
            now = self._refs.outside(ignoring)
            if now != if_refs_are:
                spared = rescue(changed_refs(if_refs_are, now), now, self.get_objects,
                                self.counts)
            self._delete(doomed, spared, prune_refs)
            if ledger.reset:
                self._counts.clear()
                self._links.clear()
            for object_id, count in ledger.counts.items():
                if count:
                    self._counts[object_id] = count
                else:
                    self._counts.pop(object_id, None)
            for leaf, (_, before) in ledger.links.items():
                if before is None:
                    self._links.pop(leaf, None)
                else:
                    self._links[leaf] = before
            self._pending = set(ledger.pending) | {i for i in doomed if i in spared}
            for position in [p for p in self._journal if p < ledger.journal_end]:
                del self._journal[position]
            self._header = ledger.header
            return True

    @override
    def iter_object_ids(self, prefix: bytes = b"") -> Iterator[ObjectId]:
        with self._lock:
            return iter(sorted(i for i in self._objects if i.startswith(prefix)))

    @override
    def sync(self) -> None:
        pass  # nothing to flush: memory is as durable as it gets

    @override
    def close(self) -> None:
        pass  # nothing to release

"""``MemoryBackend``: objects and refs in dicts, for tests and notebooks.

It is the mock transport of the engine: the same ``Repository`` runs over it
and over LMDB, so tests exercise the real code paths. One lock makes every
method atomic, so threads see the same guarantees as LMDB gives processes.
Pickling keeps identity within a process (a registry of live backends), so a
pickled session on an in-memory repository still sees the same data.
"""

from __future__ import annotations

import bisect
import threading
import uuid
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, override

from versionstore.backend.protocol import Backend
from versionstore.ids import ObjectId

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


class MemoryBackend(Backend):
    """A backend held in process memory."""

    def __init__(self) -> None:
        self._objects: dict[ObjectId, bytes] = {}
        self._refs: dict[str, bytes] = {}
        self._ref_names: list[str] = []
        self._lock = threading.RLock()
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
    def put_objects(
        self,
        objects: Iterable[tuple[ObjectId, bytes]],
        refs: Mapping[str, bytes | None] | None = None,
    ) -> None:
        with self._lock:
            for object_id, data in objects:
                self._objects.setdefault(object_id, bytes(data))
            self._write_refs(refs or {})

    def _write_refs(self, refs: Mapping[str, bytes | None]) -> None:
        for name, value in refs.items():
            if value is None:
                if self._refs.pop(name, None) is not None:
                    del self._ref_names[bisect.bisect_left(self._ref_names, name)]
            else:
                if name not in self._refs:
                    bisect.insort(self._ref_names, name)
                self._refs[name] = bytes(value)

    @override
    def get_ref(self, name: str) -> bytes | None:
        return self._refs.get(name)

    @override
    def list_refs(self, prefix: str, limit: int | None = None) -> dict[str, bytes]:
        with self._lock:
            start = bisect.bisect_left(self._ref_names, prefix)
            found: dict[str, bytes] = {}
            for name in self._ref_names[start:]:
                if not name.startswith(prefix) or (limit is not None and len(found) >= limit):
                    break
                found[name] = self._refs[name]
            return found

    @override
    def compare_and_swap_ref(
        self,
        name: str,
        expected: bytes | None,
        new: bytes | None,
        also: Mapping[str, bytes | None] | None = None,
        objects: Sequence[tuple[ObjectId, bytes]] = (),
    ) -> bool:
        with self._lock:
            if self._refs.get(name) != expected:
                return False
            for object_id, data in objects:
                self._objects.setdefault(object_id, bytes(data))
            self._write_refs({**(also or {}), name: new})
            return True

    @override
    def delete_objects(
        self, ids: Iterable[ObjectId], *, if_refs_are: Mapping[str, bytes] | None = None
    ) -> bool:
        with self._lock:
            if if_refs_are is not None and self._refs != dict(if_refs_are):
                return False
            for object_id in ids:
                self._objects.pop(object_id, None)
            return True

    @override
    def iter_object_ids(self) -> Iterator[ObjectId]:
        with self._lock:
            return iter(list(self._objects))

    @override
    def sync(self) -> None:
        pass  # nothing to flush: memory is as durable as it gets

    @override
    def close(self) -> None:
        pass  # nothing to release

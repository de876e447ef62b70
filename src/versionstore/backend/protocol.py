"""The backend interface: immutable objects plus a few compare-and-swap refs.

Everything versionstore writes is either an *object* (immutable, named by
its content hash, written once and never changed) or a *ref* (a small named
value that moves only by compare-and-swap). That split is what makes the
engine safe with many writers: objects can be written by anyone at any time
without coordination, and the only contended step — moving a branch — is one
atomic compare-and-swap that exactly one writer wins.

A backend is about ten small methods; ``MemoryBackend`` and ``LMDBBackend``
implement it, and an object-storage backend needs only conditional writes
for refs. ``versionstore.testing.BackendConformance`` checks any backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

from versionstore.ids import ObjectId

__all__ = ["Backend"]


@runtime_checkable
class Backend(Protocol):
    """Storage for immutable objects and compare-and-swap refs."""

    def get_objects(self, ids: Sequence[ObjectId]) -> list[bytes | None]:
        """The stored bytes of each id, in order; ``None`` for ids not stored."""
        ...

    def put_objects(
        self,
        objects: Iterable[tuple[ObjectId, bytes]],
        refs: Mapping[str, bytes | None] | None = None,
    ) -> None:
        """Store objects (idempotently), then set or delete ``refs`` unconditionally.

        Where the backend can (LMDB, memory), both happen in one atomic step,
        so a crash leaves all of it or none; objects are always durable before
        any ref that could point at them.
        """
        ...

    def get_ref(self, name: str) -> bytes | None:
        """The value of ref ``name``, or ``None``."""
        ...

    def list_refs(self, prefix: str, limit: int | None = None) -> dict[str, bytes]:
        """Refs whose names start with ``prefix``, sorted by name (at most ``limit``)."""
        ...

    def compare_and_swap_ref(
        self,
        name: str,
        expected: bytes | None,
        new: bytes | None,
        also: Mapping[str, bytes | None] | None = None,
        objects: Sequence[tuple[ObjectId, bytes]] = (),
    ) -> bool:
        """Set ref ``name`` to ``new`` (``None`` deletes) only if it now holds ``expected``.

        ``objects`` are stored and ``also`` (further ref writes) applied in the
        same atomic step, and only when the swap succeeds, so no object a
        commit needs ever exists unreferenced (which keeps ``gc`` safe).
        Returns whether the swap happened.
        """
        ...

    def delete_objects(
        self, ids: Iterable[ObjectId], *, if_refs_are: Mapping[str, bytes] | None = None
    ) -> bool:
        """Remove objects (garbage collection), atomically checking the refs first.

        With ``if_refs_are``, the deletion happens only if the backend's refs
        are exactly that mapping at that instant — so no write that could make
        a doomed object reachable slipped in since the caller looked. Returns
        whether the objects were deleted.
        """
        ...

    def iter_object_ids(self) -> Iterator[ObjectId]:
        """Every stored object id (for garbage collection and verification)."""
        ...

    def sync(self) -> None:
        """Make everything written so far durable against power loss."""
        ...

    def close(self) -> None:
        """Release the backend's resources."""
        ...

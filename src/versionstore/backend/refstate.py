"""``RefState``: the refs of a repository in memory, and what a ``WriteBatch`` does to them.

The semantics of a ``WriteBatch`` (``backend.protocol``) live here once, as
pure functions of a ref state: whether its conditions hold, which objects it
requires, and its *effect* — the resolved ref writes (name -> new value,
``None`` deletes) that applying it makes. ``MemoryBackend`` applies effects
to its own state under a lock; ``ObjectBackend`` appends them to its log and
every process replays the log onto a ``RefState``, so both decide a batch by
the same code and a replayed effect needs no re-evaluation.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Collection, Iterator, Mapping

from versionstore.backend.protocol import EmptyRecord, Joined, WriteBatch, prefix_end, prunable
from versionstore.ids import ObjectId

__all__ = ["Effect", "RefState"]

#: Resolved ref writes: name -> new value (``None``: delete).
Effect = dict[str, bytes | None]


class RefState:
    """Refs by name, with sorted names for prefix listings. Not thread-safe: callers lock.

    The sorted names are brought up to date lazily, by the first prefix read
    after writes (``_sorted``): a write is O(1), so staging 10^6 refs or a
    commit deleting them all costs O(n), not the O(n^2) of keeping one sorted
    list in step with every insert and delete (measured in
    ``docs/benchmarks.md``).
    """

    def __init__(self, refs: Mapping[str, bytes] | None = None) -> None:
        self._refs: dict[str, bytes] = dict(refs or {})
        self._names: list[str] = sorted(self._refs)
        #: Names set since ``_names`` was sorted (absent from it), and names deleted since
        #: (still in it); a name is never in both.
        self._added: set[str] = set()
        self._removed: set[str] = set()
        #: About how many bytes the refs take (names and values): what a checkpoint costs.
        self.nbytes = sum(len(name) + len(value) for name, value in self._refs.items())

    def __len__(self) -> int:
        return len(self._refs)

    def get(self, name: str) -> bytes | None:
        """The value of ``name``, or ``None``."""
        return self._refs.get(name)

    def as_dict(self) -> dict[str, bytes]:
        """A copy of every ref."""
        return dict(self._refs)

    def _sorted(self) -> list[str]:
        """Every name, sorted: ``_names`` with the writes since applied (O(n + k log k))."""
        if self._removed:
            removed = self._removed
            self._names = [name for name in self._names if name not in removed]
            self._removed = set()
        if self._added:
            self._names.extend(sorted(self._added))
            self._names.sort()  # two sorted runs: Timsort merges them in O(n)
            self._added = set()
        return self._names

    def items(self) -> Iterator[tuple[str, bytes]]:
        """Every ``(name, value)`` in name order."""
        refs = self._refs
        return ((name, refs[name]) for name in self._sorted())

    def under(self, prefix: str, limit: int | None = None) -> dict[str, bytes]:
        """Refs under ``prefix`` in name order (at most ``limit``)."""
        names = self._sorted()
        start = bisect.bisect_left(names, prefix)
        found: dict[str, bytes] = {}
        for name in itertools.islice(names, start, None):
            if not name.startswith(prefix) or (limit is not None and len(found) >= limit):
                break
            found[name] = self._refs[name]
        return found

    def outside(self, prefixes: Collection[str]) -> dict[str, bytes]:
        """Refs whose names start with none of ``prefixes``, in name order.

        Each skipped range is passed over by bisection, not read: O(log n)
        per prefix plus the refs returned.
        """
        if "" in prefixes:
            return {}
        names, refs = self._sorted(), self._refs
        found: dict[str, bytes] = {}
        start = 0
        for prefix in sorted(prefixes):
            stop = bisect.bisect_left(names, prefix, start)
            found.update((name, refs[name]) for name in names[start:stop])
            start = max(stop, bisect.bisect_left(names, prefix_end(prefix), start))
        found.update((name, refs[name]) for name in names[start:])
        return found

    def _any_under(self, prefix: str, overlay: Mapping[str, bytes | None]) -> bool:
        """Whether a ref under ``prefix`` exists once ``overlay`` is applied."""
        if any(value is not None and name.startswith(prefix) for name, value in overlay.items()):
            return True
        names = self._sorted()
        start = bisect.bisect_left(names, prefix)
        for name in itertools.islice(names, start, None):
            if not name.startswith(prefix):
                return False
            if overlay.get(name, self._refs[name]) is not None:
                return True
        return False

    # -- batches --------------------------------------------------------------------------

    def conditions_hold(self, batch: WriteBatch) -> bool:
        """Steps 1 and 5 of ``WriteBatch``: ``expect`` matches, ``delete_if_equal`` refs exist."""
        refs = self._refs
        if any(refs.get(name) != value for name, value in batch.expect.items()):
            return False
        return all(name in refs for name in batch.delete_if_equal)

    def required(self, batch: WriteBatch) -> Collection[ObjectId]:
        """The objects that must be stored for ``batch`` (its own and its session rule's).

        A view, not a copy: a huge commit's ``requires`` streams from its spill.
        """
        required: Collection[ObjectId] = batch.requires
        rule = batch.session
        if rule is not None and rule.requires_now(rule.record in self._refs):
            required = Joined(required, rule.requires)
        return required

    def effect(self, batch: WriteBatch) -> Effect:
        """The ref writes ``batch`` makes on this state (its conditions are assumed to hold)."""
        effect: Effect = dict(batch.refs)
        for name, value in batch.delete_if_equal.items():
            if effect.get(name, self._refs.get(name)) == value:
                effect[name] = None
        rule = batch.session
        if rule is not None:
            has_record = effect.get(rule.record, self._refs.get(rule.record)) is not None
            if rule.replace or (not has_record and self._any_under(rule.prefix, effect)):
                effect[rule.record] = rule.value
        return effect

    def prune_effect(self, prune_refs: Mapping[str, EmptyRecord],
                     deleted: Collection[ObjectId]) -> Effect:
        """Deletes of the empty session records ``prunable`` allows (``deleted``: the sweep's)."""
        def still(name: str, record: EmptyRecord) -> bool:
            return (self._refs.get(name) == record.value
                    and not self._any_under(record.staging_prefix, {}))

        return dict.fromkeys(prunable(prune_refs, deleted, still))

    def apply(self, effect: Mapping[str, bytes | None]) -> None:
        """Write ``effect`` (``None`` deletes)."""
        refs, added, removed = self._refs, self._added, self._removed
        for name, value in effect.items():
            old = refs.pop(name, None) if value is None else refs.get(name)
            if old is not None:
                self.nbytes -= len(name) + len(old)
            if value is None:
                if old is not None:
                    if name in added:
                        added.discard(name)
                    else:
                        removed.add(name)
            else:
                if old is None:
                    if name in removed:
                        removed.discard(name)  # still in ``_names``
                    else:
                        added.add(name)
                refs[name] = bytes(value)
                self.nbytes += len(name) + len(value)

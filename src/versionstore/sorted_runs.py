"""Sorted runs: an external sort of byte strings, for sorting more than memory should hold.

An absorb of a huge session on object storage lists its located writes in
the order of their *escaped* names, which is not key order, and must hand
them to a staged manifest sorted by key (``versionstore.staged_manifest``).
Held as Python objects, 10^7 names would cost gigabytes. ``SortedRuns``
keeps at most ``run_records`` records in memory: each full run is sorted
and moved to a ``versionstore.spill.Spill`` (a temporary file once large),
and iteration merges the runs (``heapq.merge``), holding one block of each.
Records are compared as bytes.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from versionstore.spill import Spill

__all__ = ["RUN_RECORDS", "SortedRuns"]

#: Records sorted in memory before a run is spilled (about 15 MiB of 100-byte records).
RUN_RECORDS = 100_000


class SortedRuns:
    """Byte strings added in any order, iterated sorted (duplicates kept).

    Args:
        run_records: records held in memory before a sorted run is spilled
            (default ``RUN_RECORDS``).
    """

    def __init__(self, run_records: int | None = None) -> None:
        self._run_records = RUN_RECORDS if run_records is None else run_records
        self._current: list[bytes] = []
        self._runs: list[Spill] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, record: bytes) -> None:
        """Add one record."""
        self._current.append(record)
        self._count += 1
        if len(self._current) >= self._run_records:
            self._spill()

    def _spill(self) -> None:
        self._current.sort()
        run = Spill(1, memory_bytes=0)
        for record in self._current:
            run.append(record)
        self._runs.append(run)
        self._current = []

    def __iter__(self) -> Iterator[bytes]:
        """Every record, sorted (one spilled block per run in memory, and the last run)."""
        self._current.sort()
        streams: list[Iterator[bytes]] = [(r for r, in run) for run in self._runs]
        streams.append(iter(self._current))
        if len(streams) == 1:
            return streams[0]
        return heapq.merge(*streams)

    def close(self) -> None:
        """Drop every record (and the runs' temporary files)."""
        for run in self._runs:
            run.close()
        self._runs, self._current = [], []

"""Measuring: a recorder of named metrics, page-cache eviction, peak RSS, percentiles.

A metric is a list of samples with a unit and a direction (``better`` is
``"lower"`` for times and bytes, ``"higher"`` for throughputs). Workloads add
one sample per run (a whole write, a whole read) or one per operation (each
commit of a series); the report takes medians and min–max over all samples of
all repetitions.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["AnonymousPeak", "Recorder", "evict_page_cache", "fsync_tree", "peak_rss_mib",
           "percentile"]

MIB = 1 << 20


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0–100) by linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class AnonymousPeak:
    """Samples the process's anonymous resident memory (``RssAnon``) every 10 ms; keeps the peak.

    ``ru_maxrss`` also counts file pages mapped into the process, so reading a
    256 MiB LMDB file through its memory map shows up as 256 MiB of RSS even
    though the kernel can drop those pages at will; heap and buffers — what
    "bounded memory" is about — are the anonymous part. Linux only (else 0).
    """

    def __init__(self) -> None:
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _sample() -> int:
        try:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("RssAnon:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, self._sample())
            self._stop.wait(0.01)

    def __enter__(self) -> AnonymousPeak:
        self.peak_kib = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, self._sample())

    @property
    def peak_mib(self) -> float:
        """The highest sample, in MiB."""
        return self.peak_kib / 1024


def evict_page_cache(path: Path) -> int:
    """Flush and drop the page cache of every file under ``path``; return how many files.

    ``posix_fadvise(DONTNEED)`` after ``fsync`` evicts the clean pages of a
    file that no process has mapped, without root and without touching the
    rest of the machine's cache (unlike ``drop_caches``). It is advisory: the
    kernel may keep a few pages, so "cold" here means "as cold as an
    unprivileged process can make one directory", not "straight from the disk".
    """
    count = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            try:
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                count += 1
            finally:
                os.close(fd)
    return count


def fsync_tree(path: Path) -> int:
    """``fsync`` every file and directory under ``path``; return how many files.

    What a commit must do to survive power loss, for the systems whose commit
    does not do it itself (icechunk's local filesystem storage and zarr's
    ``LocalStore`` never call ``fsync``; versionstore's and raw LMDB's commit
    does, so this finds little left to flush there).
    """
    count = 0
    for dirpath, _, names in os.walk(path):
        for name in [*names, "."]:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            count += name != "."
    return count


class Recorder:
    """Collects the metrics and notes of one worker job."""

    def __init__(self) -> None:
        self.metrics: dict[str, dict[str, Any]] = {}
        self.info: dict[str, Any] = {}

    def add(self, name: str, value: float, unit: str, better: str = "lower") -> None:
        """Record one sample of metric ``name``."""
        metric = self.metrics.setdefault(name, {"unit": unit, "better": better, "samples": []})
        metric["samples"].append(float(value))

    def note(self, key: str, value: Any) -> None:
        """Record a fact about the run (sizes, counts, cache state)."""
        self.info[key] = value

    def rss(self, name: str) -> None:
        """Record this process's peak RSS so far under ``name``."""
        self.add(name, peak_rss_mib(), "MiB")

    @contextmanager
    def timed(self, name: str, unit: str = "s") -> Iterator[None]:
        """Time the block and record it (``unit`` is ``"s"`` or ``"ms"``)."""
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        self.add(name, elapsed * (1000 if unit == "ms" else 1), unit)

    def to_json(self) -> dict[str, Any]:
        """The recorded metrics and notes, JSON-ready."""
        return {"metrics": self.metrics, "info": self.info}


class Stopwatch:
    """Accumulates the time spent in many short timed sections."""

    def __init__(self) -> None:
        self.total = 0.0

    @contextmanager
    def running(self) -> Iterator[None]:
        """Add the duration of the block to ``total``."""
        start = time.perf_counter()
        yield
        self.total += time.perf_counter() - start

"""``PerformanceMetrics``: exact counts of the I/O a store does, for tests to assert.

The seed's ``PerformanceMetricsStorageAdapter``, in the adapter layer: a
``WrappingStorage`` that counts what passes through it. The counters are plain
integers with fixed rules, so a test can say "reading this slice reads exactly
4 chunks and 16 KiB" and mean it.

Counting rules (per call that returns normally; a call that raises counts
nothing but its timing):

* ``reads`` / ``bytes_read``: ``get`` counts one read and the bytes it
  *returned* (a byte range counts the bytes of the range, not of the value;
  a missing key counts a read of 0 bytes); ``get_many`` counts every request
  in the batch the same way.
* ``writes`` / ``bytes_written``: ``set`` counts one write of the value's
  length in bytes (a ``memoryview`` of 4-byte items counts 4 bytes an item);
  ``set_if_absent`` counts one only when it stored the value.
* ``keys_erased``: each key named by ``erase`` / ``erase_many``, whether or not
  it held a value (the protocol does not say, and asking would cost a read).
* ``prefixes_erased``: each ``erase_prefix`` call (how many keys it removed is
  unknown without a listing this adapter will not add).
* ``lists`` / ``keys_listed``: each ``list_prefix`` / ``list`` / ``list_dir``
  call, and the entries it returned (keys, plus sub-prefixes for ``list_dir``).
* ``size``, ``exists``, ``size_prefix`` and ``is_empty`` are metadata
  queries: they appear only in the timings.

Every call, failed or not, adds to its operation's timing (calls and
nanoseconds). Counters are shared by every view of the adapter (zarr opens a
read-only view for ``mode="r"``) and are updated under a lock, so concurrent
calls are all counted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, override

import attrs

from zarrstore.adapters.base import StoreLike, WrappingStorage, WrappingStore, storage_of
from zarrstore.protocol import DirListing, ReadRequest, Storage
from zarrstore.ranges import ByteRange

__all__ = [
    "COUNTERS",
    "Measurement",
    "OperationTiming",
    "PerformanceMetrics",
    "PerformanceMetricsStorage",
]

T = TypeVar("T")

#: The integer counters, in the order ``as_dict`` gives them.
COUNTERS = (
    "bytes_read",
    "bytes_written",
    "reads",
    "writes",
    "keys_erased",
    "prefixes_erased",
    "lists",
    "keys_listed",
)


@attrs.frozen(kw_only=True)
class OperationTiming:
    """How often one operation was called and the time it took in total."""

    calls: int
    nanoseconds: int

    @property
    def seconds(self) -> float:
        """The total time in seconds."""
        return self.nanoseconds / 1e9


@attrs.define(kw_only=True)
class Measurement:
    """What one ``measure()`` block did: the counters' increase and the wall time.

    Filled in when the block exits. Calls made by other threads during the
    block are included, since they pass through the same counters.
    """

    bytes_read: int = 0
    bytes_written: int = 0
    reads: int = 0
    writes: int = 0
    keys_erased: int = 0
    prefixes_erased: int = 0
    lists: int = 0
    keys_listed: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (without ``seconds``)."""
        return {name: getattr(self, name) for name in COUNTERS}


class _Tally:
    """The counters and timings, shared by every view of one adapter."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.timings: dict[str, tuple[int, int]] = {}

    def __getstate__(self) -> dict[str, Any]:
        with self.lock:
            return {"counts": dict(self.counts), "timings": dict(self.timings)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]
        self.counts.update(state["counts"])
        self.timings.update(state["timings"])

    def add(self, operation: str, nanoseconds: int, counts: dict[str, int]) -> None:
        with self.lock:
            calls, total = self.timings.get(operation, (0, 0))
            self.timings[operation] = (calls + 1, total + nanoseconds)
            for name, amount in counts.items():
                self.counts[name] += amount

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)

    def reset(self) -> None:
        with self.lock:
            self.counts = dict.fromkeys(COUNTERS, 0)
            self.timings = {}


class _MetricsReport:
    """The counters as attributes, plus ``reset`` / ``as_dict`` / ``timings`` / ``measure``."""

    @property
    def _tally(self) -> _Tally:
        raise NotImplementedError

    @property
    def bytes_read(self) -> int:
        """Bytes returned by reads (a partial read counts the bytes returned)."""
        return self._tally.counts["bytes_read"]

    @property
    def bytes_written(self) -> int:
        """Bytes of the values stored."""
        return self._tally.counts["bytes_written"]

    @property
    def reads(self) -> int:
        """Reads, each item of a batch counted (a missing key is a read of 0 bytes)."""
        return self._tally.counts["reads"]

    @property
    def writes(self) -> int:
        """Values stored."""
        return self._tally.counts["writes"]

    @property
    def keys_erased(self) -> int:
        """Keys named by ``erase`` and ``erase_many``."""
        return self._tally.counts["keys_erased"]

    @property
    def prefixes_erased(self) -> int:
        """``erase_prefix`` calls."""
        return self._tally.counts["prefixes_erased"]

    @property
    def lists(self) -> int:
        """Listing calls (``list``, ``list_prefix``, ``list_dir``)."""
        return self._tally.counts["lists"]

    @property
    def keys_listed(self) -> int:
        """Entries returned by listings."""
        return self._tally.counts["keys_listed"]

    def as_dict(self) -> dict[str, int]:
        """A snapshot of every counter, as a plain dict in ``COUNTERS`` order."""
        return self._tally.snapshot()

    def timings(self) -> dict[str, OperationTiming]:
        """Per operation (``"get"``, ``"set"``, ...): calls and total time."""
        with self._tally.lock:
            items = sorted(self._tally.timings.items())
        return {op: OperationTiming(calls=c, nanoseconds=ns) for op, (c, ns) in items}

    def reset(self) -> None:
        """Set every counter to zero and forget the timings."""
        self._tally.reset()

    @contextmanager
    def measure(self) -> Iterator[Measurement]:
        """Measure one block: ``with metrics.measure() as m: ...`` then read ``m.reads``."""
        measurement = Measurement()
        before = self._tally.snapshot()
        start = time.perf_counter()
        try:
            yield measurement
        finally:
            measurement.seconds = time.perf_counter() - start
            after = self._tally.snapshot()
            for name in COUNTERS:
                setattr(measurement, name, after[name] - before[name])


def _read_bytes(values: Iterable[bytes | None]) -> int:
    return sum(0 if value is None else len(value) for value in values)


class PerformanceMetricsStorage(_MetricsReport, WrappingStorage):
    """The storage behind ``PerformanceMetrics``: counts each call to ``inner``.

    Args:
        inner: the storage whose I/O is counted.
    """

    def __init__(self, inner: Storage) -> None:
        super().__init__(inner)
        self._shared = _Tally()

    @property
    @override
    def _tally(self) -> _Tally:
        return self._shared

    def _counted(
        self, operation: str, call: Callable[[], T], counts: Callable[[T], dict[str, int]]
    ) -> T:
        start = time.perf_counter_ns()
        try:
            result = call()
        except BaseException:
            self._shared.add(operation, time.perf_counter_ns() - start, {})
            raise
        self._shared.add(operation, time.perf_counter_ns() - start, counts(result))
        return result

    # -- reads --------------------------------------------------------------------

    @override
    def get(self, key: str, byte_range: ByteRange | None = None) -> bytes | None:
        return self._counted(
            "get",
            lambda: self.inner.get(key, byte_range),
            lambda value: {"reads": 1, "bytes_read": _read_bytes([value])},
        )

    @override
    def get_many(self, requests: Iterable[ReadRequest]) -> list[bytes | None]:
        batch = list(requests)
        return self._counted(
            "get_many",
            lambda: self.inner.get_many(batch),
            lambda values: {"reads": len(values), "bytes_read": _read_bytes(values)},
        )

    @override
    def size(self, key: str) -> int | None:
        return self._counted("size", lambda: self.inner.size(key), lambda _: {})

    @override
    def size_prefix(self, prefix: str) -> int:
        return self._counted("size_prefix", lambda: self.inner.size_prefix(prefix), lambda _: {})

    @override
    def exists(self, key: str) -> bool:
        return self._counted("exists", lambda: self.inner.exists(key), lambda _: {})

    # -- writes -------------------------------------------------------------------

    @override
    def set(self, key: str, value: bytes) -> None:
        self._counted(
            "set",
            lambda: self.inner.set(key, value),
            lambda _: {"writes": 1, "bytes_written": memoryview(value).nbytes},
        )

    @override
    def set_if_absent(self, key: str, value: bytes) -> bool:
        return self._counted(
            "set_if_absent",
            lambda: self.inner.set_if_absent(key, value),
            lambda stored: (
                {"writes": 1, "bytes_written": memoryview(value).nbytes} if stored else {}
            ),
        )

    @override
    def erase(self, key: str) -> None:
        self._counted("erase", lambda: self.inner.erase(key), lambda _: {"keys_erased": 1})

    @override
    def erase_many(self, keys: Iterable[str]) -> None:
        batch = list(keys)
        self._counted(
            "erase_many",
            lambda: self.inner.erase_many(batch),
            lambda _: {"keys_erased": len(batch)},
        )

    @override
    def erase_prefix(self, prefix: str) -> None:
        self._counted(
            "erase_prefix",
            lambda: self.inner.erase_prefix(prefix),
            lambda _: {"prefixes_erased": 1},
        )

    # -- listing ------------------------------------------------------------------

    @override
    def list_prefix(self, prefix: str) -> Iterator[str]:
        keys = self._counted(
            "list_prefix",
            lambda: list(self.inner.list_prefix(prefix)),
            lambda listed: {"lists": 1, "keys_listed": len(listed)},
        )
        return iter(keys)

    @override
    def list_dir(self, prefix: str) -> DirListing:
        return self._counted(
            "list_dir",
            lambda: self.inner.list_dir(prefix),
            lambda d: {"lists": 1, "keys_listed": len(d.keys) + len(d.prefixes)},
        )

    @override
    def is_empty(self, prefix: str) -> bool:
        return self._counted("is_empty", lambda: self.inner.is_empty(prefix), lambda _: {})


class PerformanceMetrics(_MetricsReport, WrappingStore):
    """A zarr store that counts, exactly, the I/O done through ``store``.

    Example::

        store = PerformanceMetrics(MemoryStore())
        array = zarr.create_array(store, name="a", shape=(8,), chunks=(4,), dtype="u1",
                                  compressors=None)
        store.reset()
        array[:] = 1
        assert store.writes == 2 and store.bytes_written == 8  # two 4-byte chunks

    Args:
        store: any zarr store from this package, or a bare storage.
        read_only: ``None`` keeps ``store``'s setting; ``True`` / ``False`` changes it.
    """

    storage: PerformanceMetricsStorage

    def __init__(self, store: StoreLike, *, read_only: bool | None = None) -> None:
        super().__init__(PerformanceMetricsStorage(storage_of(store, read_only)))

    @property
    @override
    def _tally(self) -> _Tally:
        return self.storage._tally

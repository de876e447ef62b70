"""``ObjectBackend``: a repository on object storage, as a replicated state machine over a log.

Object storage (S3 and its kin) has no transactions, but it has one atomic
conditional step: *create this object only if it does not exist*
(``If-None-Match: *``). That is enough for everything a ``WriteBatch`` asks,
by making every ref change a record of one append-only log:

* ``objects/<hex id>`` — immutable objects, stored with a plain ``PUT``
  (idempotent: the same id always holds the same bytes). A batch's objects
  are stored, concurrently, *before* its log record, so a record never
  names an object that is not there yet.
* ``log/<20-digit seq>`` — one record per applied batch, created
  if-absent: of two writers racing for the next number exactly one wins;
  the other reads the winner's record and decides its batch again. A record
  holds the batch's *effect* (``RefState.effect``: the resolved ref writes),
  so replaying it needs no decisions and every process replays the same
  refs.
* ``checkpoint/<20-digit seq>`` — every ref as of record ``seq``, written by
  the writer of every ``CHECKPOINT_EVERY``-th record (when the records since
  the last checkpoint outweigh half the refs); a process opens by reading the
  newest checkpoint and the records after it.

* ``stage/<session>/<epoch>/<key>/<stamp>-<id>-<size>`` — *located writes*:
  a chunk a session staged by its own ``PUT`` (``located_staging()``; the
  names and the protocol are ``versionstore.located`` and
  ``versionstore.located_staging``), read through the location hint of a
  ``LocatedChunkRef`` (``get_located``).

A batch is decided exactly as ``MemoryBackend`` decides it (both use
``RefState``), against the refs as of the newest record this process has
read; the create-if-absent of the next record is the atomic step that proves
no record came in between. Reads (``get_refs``, ``list_refs``) first read
the records written since (one ``LIST`` request), so they see every batch
that returned before them, in any process. The layout, request costs and
garbage-collection rules are in ``docs/format.md`` ("Object storage layout").
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, TypeVar, override

from versionstore.backend.object_io import ObjectIO, check_not_forked, gather_bounded
from versionstore.backend.protocol import (
    Backend,
    EmptyRecord,
    Rescue,
    StagingWindow,
    WriteBatch,
    changed_refs,
)
from versionstore.backend.refstate import Effect, RefState
from versionstore.codec import (
    decode_ref_checkpoint,
    decode_ref_log_record,
    encode_ref_checkpoint,
    encode_ref_log_record,
)
from versionstore.errors import (
    BackendError,
    CorruptRepositoryError,
    MissingObjectsError,
    StorageAccessDeniedError,
    StorageNotFoundError,
)
from versionstore.ids import ID_LENGTH, ObjectId, object_id_text
from versionstore.records import LOCATION_LIMIT

if TYPE_CHECKING:
    from obstore.store import ObjectStore

__all__ = ["CHECKPOINT_EVERY", "DEFAULT_GC_GRACE", "LOG_RETENTION", "STAGING_WINDOW",
           "ObjectBackend"]

T = TypeVar("T")

#: A checkpoint is considered after every this many log records.
CHECKPOINT_EVERY = 100
#: Garbage collection on object storage spares objects written more recently than this.
DEFAULT_GC_GRACE = timedelta(days=1)
#: Log records (and checkpoints) covered by a newer checkpoint are deleted by gc once older.
LOG_RETENTION = timedelta(days=1)
#: A view of the log older than this (seconds) is re-read before a write. Much shorter
#: than ``LOG_RETENTION``: a record this process has not seen is never already deleted.
_STALE_AFTER = 600.0
#: Objects this process stored or checked within this many seconds need no ``HEAD``.
_FRESH_FOR = 600.0
#: At most about this many object ids are remembered as recently stored or checked.
_FRESH_LIMIT = 1_000_000
#: A required object older than this is stored again (refreshing its modification
#: time) before a record names it, so gc's grace period covers it.
_REFRESH_OLDER_THAN = timedelta(hours=1)
#: The service's clock is measured again after this many seconds (``_service_offset``).
_CLOCK_FOR = 600.0
#: Attempts to create one log record when the service's answer leaves the outcome open.
_CREATE_ATTEMPTS = 3
#: A session's concurrent ``set`` calls share one log record if they come within this
#: window (``versionstore.group_stage``): every batch costs a ``PUT``, a few ms cost none.
STAGING_WINDOW = StagingWindow(seconds=0.020, max_keys=1000)
_DELETE_BATCH = 1000
#: ``_put_objects`` stores at most about this many bytes, or objects, per group.
_PUT_GROUP_BYTES = 16 << 20
_PUT_GROUP_OBJECTS = 1024
#: Bytes an object's whole name may have (S3's limit; GCS and Azure allow more).
MAX_OBJECT_NAME = 1024
_SEQ_DIGITS = 20


def _log_name(seq: int) -> str:
    return f"log/{seq:0{_SEQ_DIGITS}d}"


def _checkpoint_name(seq: int) -> str:
    return f"checkpoint/{seq:0{_SEQ_DIGITS}d}"


def _object_name(object_id: ObjectId) -> str:
    return "objects/" + object_id.hex()


def _seq_of(name: str) -> int | None:
    """The number of ``log/<seq>`` or ``checkpoint/<seq>``; ``None`` for anything else.

    Listings are recursive, so only a direct child counts: a repository made
    under ``<prefix>/checkpoint/...`` or ``<prefix>/log/...`` is not this one's.
    """
    folder, _, tail = name.partition("/")
    if folder not in {"log", "checkpoint"} or len(tail) != _SEQ_DIGITS:
        return None
    return int(tail) if tail.isascii() and tail.isdigit() else None


class ObjectBackend(Backend):
    """A backend under ``prefix`` of an obstore store.

    Args:
        store: any obstore store (``S3Store``, ``GCSStore``, ``AzureStore``,
            ``LocalStore``, ``MemoryStore``).
        prefix: the repository's path prefix in the store.
        where: how error messages name the location.
        conditional: create log records if-absent (the default, and the only
            safe way with more than one writer); ``False`` for stores
            without conditional writes, which ``ObjectStorage`` allows only
            on request.
        log_retention: how old a log record covered by a checkpoint must be
            before garbage collection deletes it.
    """

    def __init__(self, store: ObjectStore, prefix: str = "", *, where: str | None = None,
                 conditional: bool = True, log_retention: timedelta = LOG_RETENTION) -> None:
        self._io = ObjectIO(store, prefix, where or f"object storage {prefix!r}")
        self._conditional = conditional
        self._log_retention = log_retention
        self._state = RefState()
        self._seq = 0
        self._loaded = False
        self._bytes_since_checkpoint = 0
        self._confirmed = -math.inf
        self._state_lock = threading.RLock()
        self._write_lock = threading.RLock()
        self._fresh: dict[ObjectId, float] = {}
        #: ``(monotonic time measured, service clock minus this machine's)``.
        self._offset: tuple[float, timedelta] | None = None
        #: Per thread: how deep in ``consistent_reads`` blocks, and whether the view is read.
        self._view = threading.local()

    def __repr__(self) -> str:
        return f"ObjectBackend({self._io.where})"

    # -- the log ---------------------------------------------------------------------------

    def _reload(self) -> None:
        """Start over from the newest checkpoint (and the records after it)."""
        for _ in range(5):
            listed = self._io.run("listing checkpoints", self._io.list_after("checkpoint"))
            seqs = [s for s in (_seq_of(name) for name, _ in listed) if s is not None]
            refs: dict[str, bytes] = {}
            seq = max(seqs, default=0)
            if seq:
                name = _checkpoint_name(seq)
                data = self._io.run("reading a checkpoint", self._io.get(name))
                if data is None:  # deleted by a gc since the listing: list again
                    continue
                refs = decode_ref_checkpoint(name, data, seq)
            self._state, self._seq, self._bytes_since_checkpoint = RefState(refs), seq, 0
            self._loaded = True
            if self._read_tail(from_checkpoint=True):
                return
        raise CorruptRepositoryError(
            f"{self._io.where}: the log has a gap that no checkpoint covers (records were "
            "deleted by hand?); restore them or the missing checkpoint")

    def _read_tail(self, *, from_checkpoint: bool = False) -> bool:
        """Apply the records after ``self._seq``; ``False`` if a gap calls for a reload.

        A view confirmed recently is brought up to date by asking for the next
        record (one ``GET``; usually absent: nothing new): gc deletes only
        records far older than ``_STALE_AFTER``, so a missing next record
        means none was written, not that it was collected. Older views, and
        every view that finds new records, list the log after the last
        record seen (which also finds gaps left by gc).
        """
        if not from_checkpoint and time.monotonic() - self._confirmed <= _STALE_AFTER:
            seq = self._seq + 1
            name = _log_name(seq)
            data = self._io.run("reading the log", self._io.get(name))
            if data is None:
                self._confirmed = time.monotonic()
                return True
            self._state.apply(decode_ref_log_record(name, data, seq))
            self._seq = seq
            self._bytes_since_checkpoint += len(data)
        listed = self._io.run("reading the log",
                              self._io.list_after("log", _log_name(self._seq)))
        seqs = [s for s in (_seq_of(name) for name, _ in listed) if s is not None]
        if seqs and seqs[0] != self._seq + 1:
            if from_checkpoint:
                return False
            self._reload()
            return True
        contiguous = [s for index, s in enumerate(seqs) if s == self._seq + 1 + index]
        if len(contiguous) < len(seqs):
            # A record missing between two others: a gc deleting records a newer
            # checkpoint covers (start over from it), or damage (no checkpoint covers
            # it: ``_reload`` raises). Stopping before the gap would serve old refs and
            # let a writer take the missing number (tests/test_adversarial_object.py).
            if from_checkpoint:
                return False
            self._reload()
            return True
        names = [_log_name(s) for s in contiguous]
        found = self._io.run("reading log records",
                             gather_bounded([self._io.get(name) for name in names]))
        for seq, name, data in zip(contiguous, names, found, strict=True):
            if data is None:  # collected since the listing: older than any checkpoint
                if from_checkpoint:
                    return False
                self._reload()
                return True
            self._state.apply(decode_ref_log_record(name, data, seq))
            self._seq = seq
            self._bytes_since_checkpoint += len(data)
        self._read_past_listing()
        self._confirmed = time.monotonic()
        return True

    def _read_past_listing(self) -> None:
        """Apply the records after the last one listed, asked for one by one (``GET``).

        A listing can end short of the newest record: a service that lists
        eventually consistently, or a page read before a racing writer's
        record landed. Stopping there served the refs from before a commit
        that had returned, and a writer whose listing stayed short retried
        its create-if-absent forever (``tests/test_object_listing.py``).
        Usually one ``GET``, answered 404.
        """
        while True:
            seq = self._seq + 1
            name = _log_name(seq)
            data = self._io.run("reading the log", self._io.get(name))
            if data is None:
                return
            self._state.apply(decode_ref_log_record(name, data, seq))
            self._seq = seq
            self._bytes_since_checkpoint += len(data)

    def _catch_up(self) -> None:
        """Read every record written since this process last looked (under the state lock)."""
        if not self._loaded:
            self._reload()
        else:
            self._read_tail()

    def _append(self, effect: Effect) -> bool:
        """Create record ``seq + 1`` holding ``effect``; ``False`` if another writer got it."""
        seq = self._seq + 1
        name = _log_name(seq)
        data = encode_ref_log_record(seq, effect)
        if self._conditional:
            created = self._create_record(name, data, seq, effect)
        else:
            exists = self._io.run("checking the log", self._io.head(name)) is not None
            created = not exists and (
                self._io.run("writing a log record", self._io.put(name, data)) is None)
        if not created:
            return False
        self._state.apply(effect)
        self._seq = seq
        self._confirmed = time.monotonic()
        self._bytes_since_checkpoint += len(data)
        if seq % CHECKPOINT_EVERY == 0 and 2 * self._bytes_since_checkpoint >= self._state.nbytes:
            checkpoint = encode_ref_checkpoint(seq, self._state.items())
            try:
                self._io.run("writing a checkpoint",
                             self._io.put(_checkpoint_name(seq), checkpoint))
            except BackendError:
                pass  # only a shortcut for readers: the record landed, so the batch did
            else:
                self._bytes_since_checkpoint = 0
        return True

    def _create_record(self, name: str, data: bytes, seq: int, effect: Effect) -> bool:
        """Create log record ``name`` if absent; whether it now holds ``effect``.

        The outcome is read back, never inferred from an error: a service can
        store the record and lose its answer (a 5xx, a dropped connection, a
        timeout), and the client's own retry then finds the record "already
        there". A record that holds this very effect counts as written (if
        another writer wrote the same effect on the same refs, the outcome is
        the same). A record that was not stored is tried again
        (``_CREATE_ATTEMPTS`` in all); a refused request (access denied, no
        bucket) is raised at once, as is the last transient error.
        """
        for attempt in range(1, _CREATE_ATTEMPTS + 1):
            try:
                if self._io.run("writing a log record", self._io.put_if_absent(name, data)):
                    return True
                failure: BackendError | None = None
            except (StorageAccessDeniedError, StorageNotFoundError):
                raise
            except BackendError as error:
                failure = error
            try:
                stored = self._io.run("reading back a log record", self._io.get(name))
            except BackendError:
                if failure is not None:
                    raise failure from None
                raise
            if stored is not None:
                return decode_ref_log_record(name, stored, seq) == dict(effect)
            if failure is not None and attempt == _CREATE_ATTEMPTS:
                raise failure
            # "already exists" yet absent (a racing create that failed, S3's 409
            # conflict), or an error before anything was stored: try again.
        return False

    def _decide(self, decide: Callable[[RefState], Effect | None]) -> bool:
        """Append what ``decide`` makes of the current refs, retrying when a writer races.

        ``decide`` returns ``None`` to give up (a condition failed), or the
        effect. An empty effect writes no record, once the refs are known current.
        """
        with self._state_lock:
            if not self._loaded or time.monotonic() - self._confirmed > _STALE_AFTER:
                self._catch_up()
            known_current = False
            while True:
                effect = decide(self._state)
                if effect is None and not known_current:
                    self._catch_up()  # decided on refs that may be stale: look again
                    known_current = True
                    continue
                if effect is None:
                    return False
                if not effect:
                    if known_current:
                        return True
                    self._catch_up()
                    known_current = True
                    continue
                if self._append(effect):
                    return True
                self._catch_up()
                known_current = True

    # -- clocks ----------------------------------------------------------------------------

    def _service_offset(self, *, fresh: bool = False) -> timedelta:
        """How far the service's clock runs ahead of this machine's (negative: behind).

        Objects' times (``Last-Modified``) come from the service's clock, every
        cut-off from this machine's: a client hours fast once collected a live
        writer's young chunks and young log records, and one hours slow took an
        old object for a young one (``tests/test_object_clock.py``). Measured as
        the last-modified time of an object stored for the purpose
        (``ObjectIO.service_time``, three requests) against this machine's
        clock once the answer is in; remembered ``_CLOCK_FOR`` seconds unless
        ``fresh``. The service stamps before it answers, to the whole second,
        so the offset errs low by up to a second plus the round trip: a cut-off
        moved by it falls earlier, and a collection spares a little more.
        """
        now = time.monotonic()
        if fresh or self._offset is None or now - self._offset[0] > _CLOCK_FOR:
            try:
                stamp = self._io.run("reading the service's clock", self._io.service_time())
            except StorageAccessDeniedError:
                # Read-only credentials (a dry-run gc): this machine's clock. Such a
                # client cannot delete either, so nothing young can be lost by it.
                return timedelta(0)
            self._offset = (now, stamp - datetime.now(UTC))
        return self._offset[1]

    def _service_now(self) -> datetime:
        """The service's clock now (``_service_offset``)."""
        return datetime.now(UTC) + self._service_offset()

    # -- objects ---------------------------------------------------------------------------

    def _note_fresh(self, ids: Iterable[ObjectId]) -> None:
        now = time.monotonic()
        fresh = self._fresh
        if len(fresh) > _FRESH_LIMIT:
            # Forget the older half (insertion order): a forgotten id costs one HEAD. Only
            # forgetting the expired ones let a fast writer grow it without bound, and
            # rescan it on every batch.
            for object_id in list(itertools.islice(fresh, len(fresh) // 2)):
                del fresh[object_id]
        for object_id in ids:
            fresh[object_id] = now

    def _put_objects(self, objects: Collection[tuple[ObjectId, bytes]]) -> None:
        """Store ``objects``, a group of about ``_PUT_GROUP_BYTES`` at a time.

        A huge commit's objects are a view of a spill (``commit_stream``): taken
        whole, thousands of leaves would sit in memory at once.
        """
        if not len(objects):
            return
        group: list[tuple[ObjectId, bytes]] = []
        size = 0
        for object_id, data in objects:
            group.append((object_id, data))
            size += len(data)
            if size >= _PUT_GROUP_BYTES or len(group) >= _PUT_GROUP_OBJECTS:
                self._put_group(group)
                group, size = [], 0
        if group:
            self._put_group(group)

    def _put_group(self, group: list[tuple[ObjectId, bytes]]) -> None:
        io = self._io
        io.run("storing objects", gather_bounded(
            [io.put(_object_name(object_id), bytes(data)) for object_id, data in group]))
        self._note_fresh(object_id for object_id, _ in group)

    def _ensure_stored(self, ids: Sequence[ObjectId]) -> None:
        """Raise ``MissingObjectsError`` unless every id is stored; refresh old ones.

        An object this process stored or checked recently is known to be there.
        Any other is asked for (``HEAD``); one older than ``_REFRESH_OLDER_THAN``
        is stored again, so that a garbage collection running now finds it
        young and spares it (``docs/format.md``).
        """
        now = time.monotonic()
        todo = list(dict.fromkeys(i for i in ids if now - self._fresh.get(i, -math.inf)
                                  > _FRESH_FOR))
        if not todo:
            return
        io = self._io
        times = io.run("checking objects", gather_bounded(
            [io.head(_object_name(i)) for i in todo]))
        missing = [object_id_text(i) for i, t in zip(todo, times, strict=True) if t is None]
        if missing:
            raise MissingObjectsError(missing)
        cutoff = self._service_now() - _REFRESH_OLDER_THAN
        old = [i for i, t in zip(todo, times, strict=True) if t is not None and t < cutoff]
        if old:
            datas = io.run("refreshing objects", gather_bounded(
                [io.get(_object_name(i)) for i in old]))
            gone = [object_id_text(i) for i, d in zip(old, datas, strict=True) if d is None]
            if gone:
                raise MissingObjectsError(gone)
            self._put_objects([(i, d) for i, d in zip(old, datas, strict=True) if d is not None])
        self._note_fresh(todo)

    # -- the protocol ----------------------------------------------------------------------

    @override
    def write(self, batch: WriteBatch) -> bool:
        check_not_forked()  # before the locks: a fork may have copied them held
        with self._write_lock:
            with self._state_lock:
                if not self._loaded or time.monotonic() - self._confirmed > _STALE_AFTER:
                    self._catch_up()
                if not self._state.conditions_hold(batch):
                    self._catch_up()
                    if not self._state.conditions_hold(batch):
                        return False
                required = self._state.required(batch)
            self._put_objects(batch.objects)
            written = {object_id for object_id, _ in batch.objects}
            checked = set(written)
            self._ensure_stored([i for i in required if i not in checked])
            checked.update(required)

            def decide(state: RefState) -> Effect | None:
                if not state.conditions_hold(batch):
                    return None
                more = [i for i in state.required(batch) if i not in checked]
                if more:
                    self._ensure_stored(more)
                    checked.update(more)
                return state.effect(batch)

            return self._decide(decide)

    @override
    def get_objects(self, ids: Sequence[ObjectId]) -> list[bytes | None]:
        if not ids:
            return []
        io = self._io
        return io.run("reading objects",
                      gather_bounded([io.get(_object_name(i)) for i in ids]))

    @override
    def get_located(
        self, chunks: Sequence[tuple[ObjectId, str | None]],
        decode: Callable[[ObjectId, bytes | memoryview], T],
    ) -> list[T | None]:
        # A located chunk is read at its hint; where the hint holds nothing (a copy stored
        # it under its id only), under its id.
        found = self._read_located(chunks)
        return [None if data is None else decode(object_id, data)
                for (object_id, _), data in zip(chunks, found, strict=True)]

    def _read_located(self, chunks: Sequence[tuple[ObjectId, str | None]]) -> list[bytes | None]:
        if not chunks:
            return []
        io = self._io
        found: list[bytes | None] = io.run("reading objects", gather_bounded(
            [io.get(location if location is not None else _object_name(object_id))
             for object_id, location in chunks]))
        fallback = [n for n, ((_, location), data) in enumerate(zip(chunks, found, strict=True))
                    if data is None and location is not None]
        if fallback:
            again = io.run("reading objects", gather_bounded(
                [io.get(_object_name(chunks[n][0])) for n in fallback]))
            for n, data in zip(fallback, again, strict=True):
                found[n] = data
        return found

    @override
    def has_located(self, chunks: Sequence[tuple[ObjectId, str | None]]) -> list[bool]:
        if not chunks:
            return []
        io = self._io
        times = io.run("checking objects", gather_bounded(
            [io.head(location if location is not None else _object_name(object_id))
             for object_id, location in chunks]))
        return [t is not None for t in times]

    @override
    def put_located(self, objects: Sequence[tuple[ObjectId, str | None, bytes]]) -> None:
        if not objects:
            return
        io = self._io
        io.run("storing objects", gather_bounded(
            [io.put(location if location is not None else _object_name(object_id), bytes(data))
             for object_id, location, data in objects]))
        self._note_fresh(object_id for object_id, location, _ in objects if location is None)

    @override
    @contextlib.contextmanager
    def consistent_reads(self) -> Iterator[None]:
        view = self._view
        depth = getattr(view, "depth", 0)
        if not depth:
            view.current = False
        view.depth = depth + 1
        try:
            yield
        finally:
            view.depth = depth

    def _catch_up_to_read(self) -> None:
        """``_catch_up`` for a read (under the state lock), once per ``consistent_reads``."""
        view = self._view
        if not getattr(view, "depth", 0):
            self._catch_up()
        elif not (view.current and self._loaded):
            self._catch_up()
            view.current = True

    @override
    def get_refs(self, names: Sequence[str]) -> list[bytes | None]:
        check_not_forked()
        with self._state_lock:
            self._catch_up_to_read()
            return [self._state.get(name) for name in names]

    @override
    def list_refs(self, prefix: str, limit: int | None = None) -> dict[str, bytes]:
        check_not_forked()
        with self._state_lock:
            self._catch_up_to_read()
            return self._state.under(prefix, limit)

    @override
    def list_refs_except(self, prefixes: Sequence[str]) -> dict[str, bytes]:
        check_not_forked()
        with self._state_lock:
            self._catch_up_to_read()
            return self._state.outside(prefixes)

    @override
    def delete_objects(
        self,
        ids: Iterable[ObjectId],
        *,
        if_refs_are: Mapping[str, bytes] | None = None,
        rescue: Rescue | None = None,
        prune_refs: Mapping[str, EmptyRecord] | None = None,
    ) -> bool:
        # Not one atomic step, as object storage has none: before every bulk delete the
        # log is read again and whatever the refs changed since reach is spared
        # (``rescue``); what a writer stores meanwhile is young, and gc never offers
        # young objects (``iter_object_ids_written_before``; docs/format.md).
        check_not_forked()
        spared: set[ObjectId] = set()
        seen = -1

        def refresh() -> bool:
            nonlocal seen
            with self._state_lock:
                self._catch_up()
                if self._seq == seen or if_refs_are is None:
                    seen = self._seq
                    return True
                seen = self._seq
                now = self._state.as_dict()
            if now != if_refs_are:
                if rescue is None:
                    return False
                spared.update(rescue(changed_refs(if_refs_are, now), now, self.get_objects))
            return True

        if not refresh():
            return False
        doomed = list(ids)
        # Of what is deleted, only the bases empty records name matter (``prunable``).
        bases = {record.base for record in (prune_refs or {}).values() if record.base is not None}
        deleted: set[ObjectId] = set()
        for start in range(0, len(doomed), _DELETE_BATCH):
            if start and not refresh():
                return False  # pragma: no cover - only without rescue, decided above
            chosen = [i for i in doomed[start:start + _DELETE_BATCH] if i not in spared]
            deleted.update(i for i in chosen if i in bases)
            # Known to be stored no more: a staging write requiring one (its base) must
            # ask again, not trust this process's memory of storing it (``_ensure_stored``).
            for object_id in chosen:
                self._fresh.pop(object_id, None)
            self._io.run("deleting objects", self._io.delete([_object_name(i) for i in chosen]))
        if prune_refs:
            with self._write_lock:
                self._decide(lambda state: state.prune_effect(prune_refs, deleted))
        self._compact_log()
        return True

    def _compact_log(self) -> None:
        """Delete log records and checkpoints that a newer checkpoint covers, once old."""
        io = self._io
        checkpoints = io.run("listing checkpoints", io.list_after("checkpoint"))
        numbered = [(s, name, t) for name, t in checkpoints
                    if (s := _seq_of(name)) is not None]
        if not numbered:
            return
        newest = max(s for s, _, _ in numbered)
        cutoff = self._service_now() - self._log_retention
        old = [name for s, name, t in numbered if s < newest and t < cutoff]
        records = io.run("listing the log", io.list_after("log"))
        old += [name for name, t in records
                if (s := _seq_of(name)) is not None and s <= newest and t < cutoff]
        for start in range(0, len(old), _DELETE_BATCH):
            io.run("deleting old log records", io.delete(old[start:start + _DELETE_BATCH]))

    @override
    def iter_object_ids(self, prefix: bytes = b"") -> Iterator[ObjectId]:
        return iter(self._object_ids(prefix, None))

    @override
    def iter_object_ids_written_before(self, when: datetime) -> Iterator[ObjectId]:
        """Objects stored before ``when`` on this machine's clock.

        Compared with objects' times on the service's clock: ``when`` is moved
        by the offset between the two, measured afresh (``_service_offset``).
        """
        return iter(self._object_ids(b"", when + self._service_offset(fresh=True)))

    def _object_ids(self, prefix: bytes, before: datetime | None) -> list[ObjectId]:
        io = self._io
        start = "objects/" + prefix.hex()
        listed = io.run("listing objects", io.list_after(
            "objects", start if prefix else None, stop_prefix=start if prefix else None))
        found = []
        for name, modified in listed:
            text = name[len("objects/"):]
            if (not name.startswith(start) or len(text) != 2 * ID_LENGTH
                    or (before is not None and modified >= before)):
                continue  # not an object of ours (docs/format.md), or too young
            try:
                found.append(ObjectId(bytes.fromhex(text)))
            except ValueError:
                continue  # not an object of ours
        return sorted(found)

    @override
    def default_gc_grace(self) -> timedelta | None:
        return DEFAULT_GC_GRACE

    @override
    def safe_gc_grace(self) -> timedelta | None:
        # A writer re-stores an object it re-references only when it is older than this.
        return _REFRESH_OLDER_THAN

    @override
    def located_staging(self) -> bool:
        return True

    @override
    def list_located(self, folder: str) -> list[str]:
        check_not_forked()
        io = self._io
        return [name for name, _ in io.run("listing staged writes", io.list_after(folder))]

    @override
    def scan_located(self, folder: str, visit: Callable[[list[str]], None]) -> None:
        check_not_forked()
        self._io.run("listing staged writes", self._io.visit_pages(folder, visit))

    @override
    def located_name_limit(self) -> int:
        # The service's limit on a whole object name (S3: 1,024 bytes) holds the prefix too.
        root = len(self._io.root.encode()) + 1 if self._io.root else 0
        return min(LOCATION_LIMIT, MAX_OBJECT_NAME - root)

    @override
    def located_folders(self, folder: str) -> list[str]:
        check_not_forked()
        return self._io.run("listing staged writes", self._io.folders(folder))

    @override
    def any_located(self, folder: str) -> bool:
        check_not_forked()
        return self._io.run("looking for staged writes", self._io.any_under(folder))

    @override
    def list_located_written(self) -> list[tuple[str, datetime]]:
        """Every located write with its time, moved onto this machine's clock.

        The service stamps ``Last-Modified`` on its own clock, and gc compares
        these times with cut-offs taken on this machine's (``older_than``,
        now): a collector hours fast would otherwise take a write made a
        moment ago for an old one (``docs/format.md``, "Clocks").
        """
        check_not_forked()
        io = self._io
        listed = io.run("listing staged writes", io.list_after("stage"))
        offset = self._service_offset(fresh=True)
        return [(name, modified - offset) for name, modified in listed]

    @override
    def delete_located(self, names: Sequence[str]) -> None:
        check_not_forked()
        if names:
            self._io.run("deleting staged writes", self._io.delete(list(names)))

    @override
    def staging_window(self) -> StagingWindow | None:
        return STAGING_WINDOW

    @override
    def sync(self) -> None:
        pass  # every request returned only once the service stored it

    @override
    def close(self) -> None:
        pass  # nothing held: the next call simply makes requests again

"""Located staging: a session on object storage stages a chunk by its own ``PUT``.

On a backend whose ``located_staging()`` says so, ``Session.set_values``
stores each chunk under a name that records its session, epoch, key and a
stamp (``versionstore.located``), and returns once that one ``PUT`` and a
look at the log are done: the ``PUT`` is the durable staged record, so N
chunks cost N write requests at any concurrency. The session record
(version 3) holds the open ``epoch`` and the ``closing`` epochs.

*Absorbing* turns the located writes into ordinary staged refs
(``stage/<session>/<key>`` holding a ``LocatedChunkRef``) with one log
record, before a commit, a discard, or a log-recorded write: close the open
epoch (a record), list the closing epochs, write the newest write per key
as refs and empty ``closing`` (one record that ``expect``s the record and
each replaced ref as read). After it the commit runs exactly as on LMDB. An absorb of at least
``staged_manifest.SPILL_AT`` writes keeps them out of the refs instead: it
lists them page by page, sorts them externally (``versionstore.sorted_runs``)
and writes a staged manifest that the session record names
(``versionstore.staged_manifest``), so memory does not grow with the session.
The protocol, and why no write that returned is lost, is in
``docs/format.md`` ("Located staging").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

import attrs

from versionstore import staged_manifest
from versionstore.backend.protocol import WriteBatch
from versionstore.codec import (
    ManifestItem,
    decode_session,
    decode_staged,
    encode_chunk,
    encode_session,
)
from versionstore.codec import encode_staged as _encode_staged
from versionstore.located import (
    MAX_ESCAPED_KEY,
    epoch_prefix,
    escape_key,
    located_name,
    newest_writes,
    next_stamp,
    parse_located,
)
from versionstore.records import Entry, LocatedChunkRef, SessionRecord, Tombstone
from versionstore.refs import session_ref, stage_prefix
from versionstore.sizes import METADATA_NAMES
from versionstore.sorted_runs import SortedRuns
from versionstore.staged_manifest import (
    ManifestReader,
    merge_staged,
    newest_per_key,
    pack_write,
    write_manifest,
)

if TYPE_CHECKING:
    from versionstore.backend.protocol import Backend

__all__ = ["LocatedStaging", "is_located_key", "is_located_value", "newer_than_ref"]

#: Attempts at one absorb or record upgrade before giving up to the caller's retry.
_ATTEMPTS = 1000


def is_located_key(key: str) -> bool:
    """Whether ``key`` may be staged located: any key but a metadata document's."""
    return key.rpartition("/")[2] not in METADATA_NAMES


def is_located_value(key: str, value: bytes, inline_limit: int) -> bool:
    """Whether a write of ``value`` at ``key`` is staged located: chunks, not metadata documents."""
    return len(value) > inline_limit and is_located_key(key)


def newer_than_ref(write: LocatedChunkRef, ref: Entry | Tombstone | None) -> bool:
    """Whether a located write still in an open or closing epoch beats staged ref ``ref``.

    A ref naming a located write (absorbed, or staged by a write that raced
    an absorb) is compared by epoch and stamp; any other ref was written
    after absorbing every epoch before the open one, so a write still
    listed there is newer (or concurrent with it).
    """
    if isinstance(ref, LocatedChunkRef):
        theirs, ours = parse_located(ref.hint), parse_located(write.hint)
        if theirs is not None and ours is not None:
            return (ours[1], ours[3]) > (theirs[1], theirs[3])
    return True


class LocatedStaging:
    """One session's located writes and absorbs (``Session`` holds one per object backend).

    Args:
        backend: the repository's backend (``located_staging()`` is true).
        session_id: the session.
    """

    def __init__(self, backend: Backend, session_id: str) -> None:
        self._backend = backend
        self._session_id = session_id
        self._record_name = session_ref(session_id)
        self._prefix = stage_prefix(session_id)

    # -- the record ------------------------------------------------------------------------

    def record(self) -> tuple[bytes | None, SessionRecord | None]:
        """The session record as stored now (raw, decoded)."""
        raw = self._backend.get_ref(self._record_name)
        return raw, None if raw is None else decode_session(self._record_name, raw)

    def open_epoch(self, fresh: SessionRecord) -> tuple[bytes, SessionRecord]:
        """The record with located staging, created or upgraded (epoch 0) if need be.

        ``fresh`` is the record to create if the session has none.

        Raises:
            MissingObjectsError: creating the record, its base is gone.
        """
        first: int | None = None
        for _ in range(_ATTEMPTS):
            raw, record = self.record()
            if record is not None and record.epoch is not None:
                assert raw is not None
                return raw, record
            if first is None:
                first = self.first_epoch()
            upgraded = attrs.evolve(fresh if record is None else record, epoch=first, closing=())
            value = encode_session(self._record_name, upgraded)
            if self._backend.write(WriteBatch(expect={self._record_name: raw},
                                              refs={self._record_name: value},
                                              requires=[upgraded.base])):
                return value, upgraded
        raise RuntimeError("the session record kept changing")  # pragma: no cover

    def first_epoch(self) -> int:
        """The epoch a record without one starts at: past every epoch the session wrote in.

        A record gc pruned (idle) may be created again: its session's old
        epochs still hold writes that older snapshots name, which must never
        read as pending again (one delimiter listing of the session's folder).
        """
        epochs = [int(tail) for name in self._backend.located_folders(f"stage/{self._session_id}")
                  if (tail := name.rstrip("/").rpartition("/")[2]).isdigit()]
        return max(epochs, default=-1) + 1

    # -- writing ---------------------------------------------------------------------------

    def put(self, epoch: int, items: list[tuple[str, bytes]]
            ) -> tuple[dict[str, LocatedChunkRef], list[tuple[str, bytes]]]:
        """Store each chunk at its located name in ``epoch``; the entries, and what was not.

        Keys whose escaped form is too long for an object name (with the
        repository's prefix) are handed back.
        """
        entries: dict[str, LocatedChunkRef] = {}
        objects = []
        rest = []
        limit = self._backend.located_name_limit()
        for key, value in items:
            chunk_id, frame = encode_chunk(value)
            name = located_name(self._session_id, epoch, key, next_stamp(), chunk_id, len(value),
                                limit)
            if name is None:
                rest.append((key, value))
                continue
            entries[key] = LocatedChunkRef(chunk_id=chunk_id, size=len(value), hint=name)
            objects.append((chunk_id, name, frame))
        self._backend.put_located(objects)
        return entries, rest

    # -- reading ---------------------------------------------------------------------------

    def pending(self, record: SessionRecord, key_prefix: str = "") -> dict[str, LocatedChunkRef]:
        """The newest located write per key (under ``key_prefix``) not absorbed yet."""
        if record.epoch is None:
            return {}
        names: list[str] = []
        for epoch in sorted({*record.closing, record.epoch}):
            names.extend(self._backend.list_located(epoch_prefix(self._session_id, epoch)[:-1]))
        found = newest_writes(names, self._session_id)
        return {k: e for k, e in found.items() if k.startswith(key_prefix)}

    def has_pending(self, record: SessionRecord) -> bool:
        """Whether located writes wait to be absorbed (what makes the session resumable)."""
        return record.epoch is not None and self.pending_in(record.epoch, record.closing)

    def pending_in(self, epoch: int, closing: tuple[int, ...]) -> bool:
        """Whether epochs ``closing`` or the open ``epoch`` hold writes to absorb (one listing)."""
        return bool(closing) or self._backend.any_located(
            epoch_prefix(self._session_id, epoch)[:-1])

    def pending_key(self, record: SessionRecord, key: str) -> LocatedChunkRef | None:
        """The newest located write of ``key`` not absorbed yet (one listing per epoch)."""
        escaped = escape_key(key)
        if record.epoch is None or len(escaped) > MAX_ESCAPED_KEY:
            return None  # too long for a name (``located_name``): never written located
        names: list[str] = []
        for epoch in sorted({*record.closing, record.epoch}):
            folder = epoch_prefix(self._session_id, epoch) + escaped
            names.extend(self._backend.list_located(folder))
        return newest_writes(names, self._session_id).get(key)

    # -- absorbing -------------------------------------------------------------------------

    def absorb(self, seen_written: int | None = None) -> None:
        """Turn every located write not absorbed yet into a staged ref or manifest (see the module).

        ``seen_written``: an epoch the caller just listed and found writes in
        (saves listing it again while it is still the open one).
        """
        backend = self._backend
        for _ in range(_ATTEMPTS):
            raw, record = self.record()
            if record is None or record.epoch is None:
                return
            assert raw is not None
            written = record.epoch == seen_written or backend.any_located(
                epoch_prefix(self._session_id, record.epoch)[:-1])
            seen_written = None
            if not record.closing and not written:
                return  # nothing written since the last absorb
            if written:
                closed = attrs.evolve(record, epoch=record.epoch + 1,
                                      closing=tuple(sorted({*record.closing, record.epoch})))
                closed_raw = encode_session(self._record_name, closed)
                if not backend.write(WriteBatch(expect={self._record_name: raw},
                                                refs={self._record_name: closed_raw})):
                    continue
                raw, record = closed_raw, closed
            runs = self._list_writes(record.closing)
            try:
                batch = (self._manifest_batch(raw, record, runs)
                         if len(runs) >= staged_manifest.SPILL_AT
                         else self._refs_batch(raw, record, newest_per_key(runs)))
            finally:
                runs.close()
            if backend.write(batch):
                return
        raise RuntimeError("the session's staging kept changing")  # pragma: no cover

    def _list_writes(self, epochs: tuple[int, ...]) -> SortedRuns:
        """Every located write in ``epochs``, as ``pack_write`` records (streamed, spilled)."""
        runs = SortedRuns()
        session_id = self._session_id

        def visit(names: list[str]) -> None:
            for name in names:
                parsed = parse_located(name)
                if parsed is not None and parsed[0] == session_id:
                    _, epoch, key, stamp, entry = parsed
                    runs.add(pack_write(key, epoch, stamp, entry.chunk_id, entry.size))

        for epoch in epochs:
            self._backend.scan_located(epoch_prefix(session_id, epoch)[:-1], visit)
        return runs

    def _entry(self, item: ManifestItem) -> LocatedChunkRef:
        key, epoch, stamp, chunk_id, size = item
        hint = located_name(self._session_id, epoch, key, stamp, chunk_id, size)
        assert hint is not None  # listed under this very name
        return LocatedChunkRef(chunk_id=chunk_id, size=size, hint=hint)

    def _refs_batch(self, raw: bytes, record: SessionRecord, items: Iterable[ManifestItem]
                    ) -> WriteBatch:
        """The absorb's record for a few writes: a staged ref per key, ``closing`` emptied."""
        writes = {item[0]: self._entry(item) for item in items}
        ref_names = [self._prefix + key for key in writes]
        current = self._backend.get_refs(ref_names) if ref_names else []
        expect: dict[str, bytes | None] = {self._record_name: raw}
        refs: dict[str, bytes | None] = {}
        for entry, name, now in zip(writes.values(), ref_names, current, strict=True):
            staged = None if now is None else decode_staged(name, now)
            if newer_than_ref(entry, staged):
                expect[name] = now
                refs[name] = _encode_staged(name, entry)
        done = attrs.evolve(record, closing=())
        refs[self._record_name] = encode_session(self._record_name, done)
        return WriteBatch(expect=expect, refs=refs)

    def _manifest_batch(self, raw: bytes, record: SessionRecord, runs: SortedRuns
                        ) -> WriteBatch:
        """The absorb's record for many writes: a new staged manifest, ``closing`` emptied.

        The manifest's parts are stored first; the record names them, and
        deletes each staged ref a write beats (expecting it as read), so a
        ref left beside a manifest is newer than its writes unless both are
        located writes of the key (``staged_manifest.manifest_beats_ref``).
        """
        prefix = self._prefix
        current = self._backend.list_refs(prefix)  # few: the large writes are in manifests
        expect: dict[str, bytes | None] = {self._record_name: raw}
        refs: dict[str, bytes | None] = {}

        def kept() -> Iterator[ManifestItem]:
            for item in newest_per_key(runs):
                name = prefix + item[0]
                now = current.get(name)
                if now is not None:
                    if not newer_than_ref(self._entry(item), decode_staged(name, now)):
                        continue
                    expect[name] = now
                    refs[name] = None
                yield item

        manifest = write_manifest(self._backend, self._session_id, kept())
        manifests = record.manifests if manifest is None else (*record.manifests, manifest)
        done = attrs.evolve(record, closing=(), manifests=manifests)
        refs[self._record_name] = encode_session(self._record_name, done)
        return WriteBatch(expect=expect, refs=refs,
                          requires=() if manifest is None else manifest.parts)

    def unspill(self) -> None:
        """Turn the session's staged manifests back into staged refs (one record; O(N) memory).

        For the operations that edit staged refs one by one (``Session.rebase``).
        """
        backend = self._backend
        prefix = self._prefix
        cut = len(prefix)
        for _ in range(_ATTEMPTS):
            raw, record = self.record()
            if record is None or not record.manifests:
                return
            assert raw is not None
            current = backend.list_refs(prefix)
            reader = ManifestReader(backend, self._session_id)
            expect: dict[str, bytes | None] = {self._record_name: raw}
            refs: dict[str, bytes | None] = {}
            staged = ((name[cut:], decode_staged(name, value)) for name, value in current.items())
            for key, entry, from_manifest in merge_staged(
                    staged, [reader.entries(m) for m in record.manifests]):
                if from_manifest:
                    name = prefix + key
                    expect[name] = current.get(name)
                    refs[name] = _encode_staged(name, entry)
            done = attrs.evolve(record, manifests=())
            refs[self._record_name] = encode_session(self._record_name, done)
            if backend.write(WriteBatch(expect=expect, refs=refs)):
                return
        raise RuntimeError("the session's staging kept changing")  # pragma: no cover

    def stage_refs(self, entries: Mapping[str, LocatedChunkRef]) -> dict[str, bytes | None]:
        """Staged refs for located writes that raced an absorb (written as a log record)."""
        return {self._prefix + key: _encode_staged(self._prefix + key, entry)
                for key, entry in entries.items()}

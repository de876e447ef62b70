"""Garbage collection of located writes: what object storage keeps under ``stage/``.

A located write (``versionstore.located``) is a chunk a session stored by
its own ``PUT``. It stays where it was written for as long as anything
needs it, and is collected like any object once nothing does:

* kept while a staged ref, a live session's staged manifest
  (``versionstore.staged_manifest``) or a reachable tree entry names it (its hint);
* kept while its session's record lists its epoch as open or closing
  (what an absorb may still turn into a ref);
* kept while younger than the grace period (``older_than``), like any
  young object: a writer that raced an absorb writes it again soon after;
* collected otherwise: a superseded write of a key, a discarded one, one
  whose session was committed and moved on.

A session record with located staging is pruned only once its session is
idle (``idle_sessions``): nothing to absorb, and no located write younger
than the grace period; a write that lands in its epochs after gc's listing
puts it back (``restore_written``).

The rules and why they keep every write that returned are in
``docs/format.md`` ("Located staging").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from versionstore.backend.protocol import EmptyRecord, WriteBatch
from versionstore.codec import decode_session, decode_staged
from versionstore.gc_roots import session_of
from versionstore.located import epoch_prefix, parse_located
from versionstore.records import LocatedChunkRef
from versionstore.staged_manifest import ManifestReader

if TYPE_CHECKING:
    from versionstore.backend.protocol import Backend

__all__ = ["idle_sessions", "pending_sessions", "restore_written", "sweep_located"]

#: A chunk frame's header (bytes): a located write's stored size is its value's plus this.
_FRAME_HEADER = 13
_DELETE_BATCH = 1000


def _epochs(refs: Mapping[str, bytes]) -> dict[str, tuple[str, ...]]:
    """Per session with located staging: the folders of its open and closing epochs."""
    live: dict[str, tuple[str, ...]] = {}
    for name, raw in refs.items():
        if name.startswith("session/"):
            record = decode_session(name, raw)
            if record.epoch is not None:
                session_id = session_of(name)
                live[session_id] = tuple(epoch_prefix(session_id, e)
                                         for e in {record.epoch, *record.closing})
    return live


def pending_sessions(refs: Mapping[str, bytes], listed: Sequence[tuple[str, datetime]]
                     ) -> set[str]:
    """Sessions with located writes in an open or closing epoch (not absorbed yet)."""
    live = _epochs(refs)
    found: set[str] = set()
    for name, _ in listed:
        parsed = parse_located(name)
        if parsed is not None and parsed[0] in live and name.startswith(live[parsed[0]]):
            found.add(parsed[0])
    return found


def idle_sessions(refs: Mapping[str, bytes], listed: Sequence[tuple[str, datetime]],
                  older_than: datetime) -> set[str]:
    """Sessions with located staging whose record gc may prune: idle, nothing to absorb.

    Such a session has no located write in its open or closing epochs and
    none at all written since ``older_than`` (the grace period): a writer
    idle that long that writes again finds the record gone and writes again
    into a new epoch, which recreates the record (``docs/format.md``).
    """
    busy: set[str] = set()
    live = _epochs(refs)
    for name, modified in listed:
        parsed = parse_located(name)
        if parsed is None or parsed[0] not in live:
            continue
        if modified >= older_than or name.startswith(live[parsed[0]]):
            busy.add(parsed[0])
    return set(live) - busy


def restore_written(backend: Backend, pruned: Mapping[str, EmptyRecord]) -> int:
    """Recreate each pruned located-staging record whose epochs hold a write now; how many.

    gc lists the located writes, finds a session idle, then prunes its
    record: a write whose ``PUT`` landed after that listing and whose look
    at the record came before the prune returned, yet its epoch is in no
    record any more. Listing the epochs again *after* the prune finds every
    such write (its ``PUT`` came before its look, so before the prune), and
    the record comes back as it was (if the session has none meanwhile: a
    write that found it gone opened a new epoch itself).
    """
    restored = 0
    for name, empty in pruned.items():
        raw = empty.value
        record = decode_session(name, raw)
        if record.epoch is None:
            continue
        session_id = session_of(name)
        if any(backend.any_located(epoch_prefix(session_id, e)[:-1])
               for e in {record.epoch, *record.closing}):
            restored += backend.write(WriteBatch(expect={name: None}, refs={name: raw},
                                                 requires=[record.base]))
    return restored


def sweep_located(backend: Backend, refs: Mapping[str, bytes], hints: set[str],
                  listed: Sequence[tuple[str, datetime]], older_than: datetime | None, *,
                  dry_run: bool) -> tuple[int, int]:
    """Delete the located writes nothing needs; return how many, and their stored bytes.

    Args:
        backend: a backend with ``located_staging()``.
        refs: every ref, as the collection read them (before listing).
        hints: the location hints of every located chunk reference that
            the collection's mark reached (trees of live snapshots).
        listed: ``backend.list_located_written()``, listed after ``refs`` were read.
        older_than: only writes last modified before this are candidates
            (``None``: now).
        dry_run: count, delete nothing.
    """
    keep = set(hints)
    live: list[str] = []
    for name, raw in refs.items():
        if name.startswith("stage/"):
            entry = decode_staged(name, raw)
            if isinstance(entry, LocatedChunkRef):
                keep.add(entry.hint)
        elif name.startswith("session/"):
            record = decode_session(name, raw)
            if record.epoch is not None:
                session_id = session_of(name)
                live.extend(epoch_prefix(session_id, e) for e in {record.epoch, *record.closing})
            if record.manifests:  # what a staged manifest names is staged
                ManifestReader(backend, session_of(name)).hints(record.manifests, keep.add)
    live_folders = tuple(live)
    cutoff = datetime.now(UTC) if older_than is None else older_than
    doomed: list[str] = []
    freed = 0
    for name, modified in listed:
        parsed = parse_located(name)
        if (parsed is None or modified >= cutoff or name in keep
                or name.startswith(live_folders)):
            continue  # not a located write (left alone), young, or needed
        doomed.append(name)
        freed += parsed[4].size + _FRAME_HEADER
    if not dry_run:
        for start in range(0, len(doomed), _DELETE_BATCH):
            backend.delete_located(doomed[start:start + _DELETE_BATCH])
    return len(doomed), freed

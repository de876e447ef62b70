"""Verification (fsck): check every reachable object, deeply.

Decodes every ref (a damaged ref name or value is reported, never
silently followed), then reads each object that any branch, tag or session can reach, verifies its
frame checksum, decodes it, re-hashes content-addressed objects against their
ids (BLAKE3, stronger than the per-read checksum), and checks each record's
invariants (sorted keys, well-formed ids, timezone-aware times). Problems are
collected, not raised, so one bad object does not hide the others.

Each snapshot's recorded size totals are recomputed from its parent's and
the keys the two differ in (``versionstore.sizes``). Where the backend keeps
garbage collection's ledger, its counts are checked
against what its roots reach (``versionstore.verify_ledger``).

Virtual chunks point outside the repository; with ``virtual_chunks`` given,
verify also asks each referenced source (once per file) whether it still
exists, is long enough, and matches its recorded checksum.

On LMDB every tree page of ``data.mdb`` is first read in a child interpreter
(``versionstore.backend.lmdb_walk``): damage that makes LMDB abort the
reading process (``SIGABRT``) is reported, and the file is then not read in
this process at all. Refs that cannot be read (a damaged page under them)
are reported kind by kind (branches, tags, sessions, ...), and the kinds
that can be read are still checked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from versionstore.backend.ledger import Ledger
from versionstore.backend.lmdb import LMDBBackend
from versionstore.backend.lmdb_walk import walk_pages
from versionstore.codec import (
    KIND_BRANCH,
    KIND_HISTORY,
    KIND_LEAF,
    KIND_SNAPSHOT,
    content_id,
    decode_graft,
    decode_history_page,
    decode_node,
    decode_operation,
    decode_ref_target,
    decode_repository,
    decode_session,
    decode_snapshot,
    decode_staged,
    frame_kind,
    history_entries,
)
from versionstore.errors import (
    StorageAccessDeniedError,
    StorageThrottledError,
    StorageUnreachableError,
    VersionStoreError,
)
from versionstore.gc import reachable_objects
from versionstore.gc_roots import KNOWN_REFS
from versionstore.ids import ObjectId, object_id_text
from versionstore.objects import ObjectReader
from versionstore.records import Leaf, VirtualRef
from versionstore.refs import MAIN, REPOSITORY_REF, branch_ref
from versionstore.sizes import check_sizes
from versionstore.verify_ledger import check_ledger
from versionstore.virtual import VirtualChunkStores

if TYPE_CHECKING:
    from versionstore.backend.protocol import Backend

__all__ = ["VerifyReport", "verify_repository"]


#: How many times a check that found missing objects while the refs moved is run.
_RUNS = 5
_STILL_MOVING = (
    "the refs moved during every check (other processes are committing, resetting or "
    "collecting garbage): objects reported missing may have been released by them — "
    "run verify again while they are idle to tell")


@attrs.frozen
class VerifyReport:
    """The outcome of a verification: objects checked and problems found."""

    objects_checked: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Whether nothing was wrong."""
        return not self.problems


def _check_refs(refs: dict[str, bytes]) -> tuple[dict[str, bytes], list[str]]:
    """Decode every ref; the readable ones, and a problem for each damaged or unknown one."""
    readable: dict[str, bytes] = {}
    problems: list[str] = []
    for name, raw in refs.items():
        kind = name.split("/", 1)[0]
        decode = _REF_DECODERS.get(kind)
        if decode is None:
            problems.append(f"ref {name!r}: unknown kind of ref (damaged name?)")
            continue
        try:
            decode(name, raw)
        except (VersionStoreError, ValueError) as exc:
            problems.append(f"ref {name!r}: {exc}")
            continue
        readable[name] = raw
    if branch_ref(MAIN) not in readable:
        problems.append(f"ref {branch_ref(MAIN)!r}: the main branch is missing or damaged")
    return readable, problems


def verify_repository(reader: ObjectReader,
                      progress: Callable[[str, int, int], None] | None = None,
                      virtual_chunks: VirtualChunkStores | None = None) -> VerifyReport:
    """Check every ref and every reachable object of the repository behind ``reader``.

    Never raises for what it finds: damaged refs, dangling refs, missing or
    corrupt objects, objects or a gc ledger that cannot be read (damaged pages
    of ``data.mdb``) all become entries of ``VerifyReport.problems``. A check
    that finds something missing while the refs moved under it (a reset and a
    garbage collection in another process) is run again, so a healthy
    repository is not reported broken; at most ``_RUNS`` runs. If the refs moved
    during every one, the report says so: what it calls missing may have been
    released by those processes, and a run while they are idle settles it.

    With ``virtual_chunks``, the sources of every reachable (or staged)
    virtual chunk are checked too: missing, too short, changed since
    referenced, unreachable, or served by no configured store.

    On LMDB, ``data.mdb`` is walked in a child interpreter first
    (``versionstore.backend.lmdb_walk``); if LMDB killed the child, that is
    the report, and nothing is read here.
    """
    walked: tuple[str, ...] = ()
    if isinstance(reader.backend, LMDBBackend):
        walk = walk_pages(reader.backend.path)
        if not walk.safe:
            return VerifyReport(objects_checked=0, problems=walk.problems)
        walked = walk.problems
    for _ in range(_RUNS):
        seen, unreadable = _read_refs(reader.backend)
        report = _verify_once(reader, seen, progress, virtual_chunks)
        report = attrs.evolve(report, problems=(*walked, *unreadable, *report.problems))
        if not any("missing" in problem for problem in report.problems):
            return report
        if _read_refs(reader.backend)[0] == seen:
            return report  # nothing moved: the problems are real
    return attrs.evolve(report, problems=(*report.problems, _STILL_MOVING))


def _read_refs(backend: Backend) -> tuple[dict[str, bytes], list[str]]:
    """Every ref, in one read; where that fails, kind by kind, with a problem for each lost kind.

    A damaged page under some refs then costs those refs alone (and refs of
    no known kind, which only the one read lists).
    """
    try:
        return backend.list_refs(""), []
    except _CANNOT_ASK:
        raise
    except VersionStoreError:
        pass
    refs: dict[str, bytes] = {}
    problems: list[str] = []
    for prefix in (*KNOWN_REFS, REPOSITORY_REF):
        try:
            found = backend.list_refs(prefix)
        except _CANNOT_ASK:
            raise
        except VersionStoreError as exc:
            problems.append(f"refs {prefix.rstrip('/')!r}: cannot be read: {exc}")
            continue
        refs.update(found if prefix != REPOSITORY_REF else
                    {name: raw for name, raw in found.items() if name == REPOSITORY_REF})
    return refs, problems


def _verify_once(reader: ObjectReader, all_refs: dict[str, bytes],
                 progress: Callable[[str, int, int], None] | None,
                 virtual_chunks: VirtualChunkStores | None = None) -> VerifyReport:
    backend = reader.backend
    refs, problems = _check_refs(all_refs)
    virtual: set[VirtualRef] = set()
    if virtual_chunks is not None:
        for name, raw in refs.items():
            if name.startswith("stage/"):
                entry = decode_staged(name, raw)
                if isinstance(entry, VirtualRef):
                    virtual.add(entry)
    missing: set[ObjectId] = set()
    located: dict[ObjectId, str] = {}
    try:
        reachable = reachable_objects(reader, refs, missing, located)
    except VersionStoreError as exc:
        problems.append(f"cannot walk history: {exc}")
        return VerifyReport(objects_checked=0, problems=tuple(problems))
    problems.extend(f"{object_id_text(i)}: missing (referenced)" for i in sorted(missing))
    ids = sorted(reachable)
    snapshots: list[ObjectId] = []
    for start in range(0, len(ids), 256):
        batch = ids[start : start + 256]
        stored = _read(backend, batch, located)
        for object_id, data in zip(batch, stored, strict=True):
            if isinstance(data, VersionStoreError):
                problems.append(f"{object_id_text(object_id)}: cannot be read: {data}")
                continue
            problem = _check(object_id, data, virtual if virtual_chunks is not None else None)
            if problem:
                problems.append(problem)
            elif data is not None and frame_kind(data) == KIND_SNAPSHOT:
                snapshots.append(object_id)
        if progress is not None:
            progress("verifying objects", start + len(batch), len(ids))
    for done, snapshot_id in enumerate(snapshots, 1):
        try:
            problem = check_sizes(reader, snapshot_id)
        except VersionStoreError as exc:
            problem = f"cannot check recorded sizes: {exc}"
        if problem:
            problems.append(f"{object_id_text(snapshot_id)}: {problem}")
        if progress is not None and (done % 64 == 0 or done == len(snapshots)):
            progress("checking recorded sizes", done, len(snapshots))
    if virtual_chunks is not None and virtual:
        problems.extend(virtual_chunks.problems(virtual))
    if isinstance(backend, Ledger):
        try:
            problems.extend(check_ledger(reader, backend, progress))
        except VersionStoreError as exc:  # a damaged page of the ledger's database
            problems.append(f"cannot check the gc ledger: {exc}")
    return VerifyReport(objects_checked=len(ids), problems=tuple(problems))


def _read(backend: Backend, batch: list[ObjectId], located: dict[ObjectId, str]
          ) -> list[bytes | None | VersionStoreError]:
    """The stored bytes of ``batch``; where the batch cannot be read, each object alone.

    An object that cannot be read (a damaged page of ``data.mdb`` under it:
    ``CorruptRepositoryError``) comes back as its error, so the others are
    still checked and it is reported, not raised. A store that cannot be
    asked (unreachable, throttling, refusing access) says nothing about the
    objects: that is raised.
    """
    def read(ids: list[ObjectId]) -> list[bytes | None]:
        if located:
            return backend.get_located([(i, located.get(i)) for i in ids], _copy)
        return backend.get_objects(ids)

    try:
        return list(read(batch))
    except _CANNOT_ASK:
        raise
    except VersionStoreError:
        pass
    each: list[bytes | None | VersionStoreError] = []
    for object_id in batch:
        try:
            each.extend(read([object_id]))
        except _CANNOT_ASK:
            raise
        except VersionStoreError as exc:
            each.append(exc)
    return each


#: Errors of a store that could not be asked: they say nothing about the objects.
_CANNOT_ASK = (StorageUnreachableError, StorageThrottledError, StorageAccessDeniedError)


def _copy(_: ObjectId, data: bytes | memoryview) -> bytes:
    return bytes(data)


def _check(object_id: ObjectId, data: bytes | None,
           virtual: set[VirtualRef] | None = None) -> str | None:
    name = object_id_text(object_id)
    if data is None:
        return f"{name}: missing"
    try:
        if content_id(name, data) != object_id:
            return f"{name}: content does not match its id"
        kind = frame_kind(data)
        if kind == KIND_SNAPSHOT:
            decode_snapshot(name, data).check()
        elif kind in (KIND_LEAF, KIND_BRANCH):
            node = decode_node(name, data)
            node.check()
            if virtual is not None and isinstance(node, Leaf):
                virtual.update(e for e in node.entries if isinstance(e, VirtualRef))
        elif kind == KIND_HISTORY:
            page = decode_history_page(name, data)
            page.check()
            for snapshot in history_entries(name, page):
                snapshot.check()
    except (VersionStoreError, ValueError) as exc:
        return f"{name}: {exc}"
    return None


_REF_DECODERS: dict[str, Callable[[str, bytes], object]] = {
    "branch": decode_ref_target,
    "tag": decode_ref_target,
    "session": decode_session,
    "stage": decode_staged,
    "graft": decode_graft,
    "ops": decode_operation,
    REPOSITORY_REF: decode_repository,
}

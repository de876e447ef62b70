"""Cloning: a repository, or some of its branches and tags, copied into new storage.

``copy_repository`` copies between any two storages (LMDB, memory, object
storage) through ``versionstore.transfer``: the objects the chosen branches
and tags reach, children before parents, then every ref in one atomic batch
that only succeeds on an empty target. Until that batch lands the target
holds no repository (``Repository.exists`` is false) and nothing a reader
could open; running the same clone again after an interruption copies only
what had not landed. The clone has the source's snapshots (same ids, same
parents, grafts included), branches, tags (deleted tags' tombstones too, in
a full clone), repository record and ops log. Writable sessions are not
copied: staged changes are not history.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from versionstore.arguments import as_storage
from versionstore.backend.protocol import WriteBatch
from versionstore.codec import decode_operation, decode_ref_target
from versionstore.errors import BranchNotFoundError, RepositoryExistsError, TagNotFoundError
from versionstore.ids import ObjectId, SnapshotId, object_id_text
from versionstore.opslog import OPS_PREFIX
from versionstore.progress import ProgressOption, progress_reporter
from versionstore.refs import MAIN, REPOSITORY_REF, branch_ref, tag_ref, validate_ref_name
from versionstore.repository import Repository
from versionstore.storage import StorageLike
from versionstore.transfer import TransferSummary, copy_objects

__all__ = ["copy_repository"]


def _names(value: Iterable[str] | None, parameter: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(f"{parameter} must be a list of names (or None for all); got "
                        f"{type(value).__name__} {value!r}")
    return [validate_ref_name(name) for name in value]


def _chosen(refs: Mapping[str, bytes], branches: list[str] | None, tags: list[str] | None
            ) -> dict[str, bytes]:
    """The branch and tag refs to copy (``main`` always; every one for ``None``)."""
    if branches is None:
        chosen = {n: v for n, v in refs.items() if n.startswith("branch/")}
    else:
        chosen = {}
        for name in dict.fromkeys([MAIN, *branches]):
            raw = refs.get(branch_ref(name))
            if raw is None or decode_ref_target(branch_ref(name), raw).snapshot is None:
                raise BranchNotFoundError(name, hint="nothing was copied")
            chosen[branch_ref(name)] = raw
    if tags is None:  # deleted tags' tombstones too: their names stay unusable
        chosen.update((n, v) for n, v in refs.items() if n.startswith("tag/"))
    else:
        for name in tags:
            raw = refs.get(tag_ref(name))
            if raw is None or decode_ref_target(tag_ref(name), raw).deleted:
                raise TagNotFoundError(name, hint="nothing was copied")
            chosen[tag_ref(name)] = raw
    return chosen


def copy_repository(source: StorageLike, target: StorageLike,
                    branches: Iterable[str] | None = None, tags: Iterable[str] | None = None,
                    progress: ProgressOption = True) -> TransferSummary:
    """Clone the repository in ``source`` into ``target``, which must hold none.

    Args:
        source: the repository to copy (a storage, or an LMDB directory path).
        target: where the copy goes: new or empty storage, or the target of
            an interrupted ``copy_repository``, which this resumes.
        branches: the branches to copy (``main`` is always copied: every
            repository has it); ``None`` copies all.
        tags: the tags to copy; ``None`` copies all (and deleted tags'
            tombstones). The ops log keeps the entries of the copied refs.
        progress: ``True`` shows a progress bar on a terminal for a long
            copy; ``False`` none; a callable is told ``(phase, done, total)``.

    Returns:
        ``TransferSummary``: objects and bytes copied, and every ref created.

    Raises:
        RepositoryNotFoundError: ``source`` holds no repository.
        RepositoryExistsError: ``target`` already holds a repository (use
            ``push``/``fetch`` to update one), or other files.
        BranchNotFoundError, TagNotFoundError: a named branch or tag does not
            exist; nothing was copied.
        CorruptObjectError: the source is damaged; no ref was written.
        TypeError: a storage, or ``branches``/``tags``, of the wrong type.
    """
    source_storage = as_storage(source, "source")
    target_storage = as_storage(target, "target")
    wanted_branches, wanted_tags = _names(branches, "branches"), _names(tags, "tags")
    with Repository.open(source_storage) as repo:
        refs = repo.backend.list_refs("")  # one consistent view of what is copied
        chosen = _chosen(refs, wanted_branches, wanted_tags)
        if Repository.exists(target_storage):
            raise RepositoryExistsError(f"{target_storage!r} already holds a repository; "
                                        "push to it or fetch from it instead of cloning")
        problem = target_storage.creation_problem()
        if problem is not None:
            raise RepositoryExistsError(problem)
        full = wanted_branches is None and wanted_tags is None
        ops = {name: raw for name, raw in refs.items() if name.startswith(OPS_PREFIX)
               and (full or decode_operation(name, raw).ref in chosen)}
        record = refs.get(REPOSITORY_REF)
        final = {**chosen, **ops, **({REPOSITORY_REF: record} if record is not None else {})}
        tips: dict[str, ObjectId | None] = {
            name: decode_ref_target(name, raw).snapshot for name, raw in chosen.items()}
        backend = target_storage.open_backend()
        try:
            with progress_reporter(progress) as report:
                summary = copy_objects(repo.reader, backend, chosen, report)
            landed = backend.write(WriteBatch(
                expect=dict.fromkeys(final, None), refs=final,
                requires=sorted({t for t in tips.values() if t is not None})))
            if not landed:
                raise RepositoryExistsError(f"a repository appeared in {target_storage!r} "
                                            "during the copy; nothing of it was changed")
            backend.sync()
        finally:
            backend.close()
    created = {name: (None, None if t is None else SnapshotId(object_id_text(t)))
               for name, t in tips.items()}
    return summary + TransferSummary(refs=created)

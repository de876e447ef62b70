"""A staged change against the branch's changes, node by node (the commit's conflict check).

Besides keys both sides changed, a change conflicts with the node it lies
under: icechunk's ``ConflictDetector`` raises the same cases
(``ChunksUpdatedInDeletedArray``, ``DeleteOfUpdatedArray`` and their kin).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence

from versionstore.merge import NODE_DOCUMENTS, redefines_node
from versionstore.records import Entry

__all__ = ["NodeChanges", "within"]


class NodeChanges:
    """The branch's changes since a session's base, node by node (``Session._carried``).

    A staged change conflicts with the branch (icechunk's ``ConflictDetector``
    raises the same cases) when it

    * writes under a node the branch deleted or redefined (``merge.redefines_node``):
      the write would be an orphan, or be read with metadata it was not
      encoded for;
    * deletes or redefines a node the branch wrote under: the branch's new
      keys would survive as orphans, or as stale chunks of the new node. A
      node deleted and made anew with the same document (zarr's
      ``overwrite=True``; ``Session._replaced_node``) counts as redefined.
    """

    def __init__(self, theirs: Mapping[str, tuple[Entry | None, Entry | None]],
                 value: Callable[[Entry | None], bytes | None],
                 base: Callable[[str], Entry | None], *,
                 replaced: Callable[[str], bool] = lambda directory: False) -> None:
        self._theirs = theirs
        self._value = value
        self._base = base
        self._replaced = replaced
        self._written = sorted(key for key, (_, new) in theirs.items() if new is not None)
        self.lost: set[str] = set()  # nodes we deleted or redefined that the branch wrote under
        self._redefined: set[str] = set()
        for key, (old, new) in theirs.items():
            directory, _, name = key.rpartition("/")
            if (name in NODE_DOCUMENTS and old is not None
                    and (new is None or redefines_node(value(old), value(new)))):
                self._redefined.add(directory)

    def _wrote_under(self, directory: str, besides: str) -> bool:
        return any(key != besides for key in self._under(directory))

    def _under(self, directory: str) -> Iterator[str]:
        prefix = directory + "/" if directory else ""
        at = bisect.bisect_left(self._written, prefix)
        for key in itertools.islice(self._written, at, None):
            if not key.startswith(prefix):
                return
            yield key

    def written_under(self, directories: Sequence[str]) -> list[str]:
        """The keys the branch wrote (not deleted) under any of ``directories``."""
        return sorted({key for directory in directories for key in self._under(directory)})

    def conflicts(self, key: str, entry: Entry | None) -> bool:
        """Whether our change of ``key`` to ``entry`` conflicts with a node the branch changed."""
        directory, _, name = key.rpartition("/")
        document = name in NODE_DOCUMENTS
        if entry is not None and self._redefined:
            above = directory.rpartition("/")[0] if document and directory else directory
            parts = above.split("/") if above else []
            if document and not directory:
                ancestors: list[str] = []  # the root's own document: nothing above it
            else:
                ancestors = ["/".join(parts[:n]) for n in range(len(parts), -1, -1)]
            if any(node in self._redefined for node in ancestors):
                return True
        if document:
            tip = self._theirs[key][1] if key in self._theirs else self._base(key)
            if tip is not None and self._wrote_under(directory, key) and (
                    redefines_node(self._value(tip), self._value(entry))
                    # deleted and made anew (zarr's overwrite=True), perhaps the same
                    or (entry is not None and key not in self._theirs
                        and self._replaced(directory))):
                self.lost.add(directory)
                return True
        return False


def within(key: str, directory: str) -> bool:
    """Whether ``key`` lies under the node directory ``directory`` (``""``: the root)."""
    return not directory or key.startswith(directory + "/")

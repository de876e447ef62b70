"""What LMDB itself takes to make one versionstore commit's writes durable.

``CommitReplay`` keeps a byte-for-byte copy of a versionstore LMDB
environment (``lmdb.Environment.copy``, not compacted, so its B-trees have
the same shapes and free pages). Right before each commit it brings the copy
up to the repository, untimed (what was staged since: chunks, staged entries),
so the copy holds what the repository holds as the commit starts. After the
commit it writes what the commit changed — the objects the gc ledger's journal
says it stored, and every key it put or deleted in the ``refs`` and ``gc``
databases — into the copy in one py-lmdb write transaction followed by one
``fsync`` (``Environment.sync(True)``), opened as versionstore opens a
repository (``sync=True``, ``metasync=False``: LMDB's ``MDB_NOMETASYNC``, so
the transaction flushes its pages before its header page is written, and the
``fsync`` then makes the header durable — two flushes, as a commit makes).

That time is the floor of a durable commit writing these objects: no
encoding, no tree walk, no history, no checks — only the pages the same
puts dirty and the flush that makes them durable. Issue 13's "one-chunk
commit ≤ 1 ms" is measured against it in the ``commit`` workload
(``docs/benchmarks.md``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lmdb

__all__ = ["CommitReplay"]

_NAMES = (b"objects", b"refs", b"gc")
_DIFFED = (b"refs", b"gc")  # small databases, compared whole around each commit


class CommitReplay:
    """A copy of ``repository``'s LMDB environment in ``directory``, replaying its commits.

    Use ``before()`` right before a commit and ``replay()`` right after it:
    ``replay`` returns the seconds the copy took to write and ``fsync`` what
    the commit wrote. Only for ``vs.lmdb_storage`` repositories.
    """

    def __init__(self, repository: Any, directory: Path) -> None:
        self._backend = repository.backend
        source = self._backend._handle.env
        directory.mkdir(parents=True, exist_ok=True)
        source.copy(str(directory))
        self._env = lmdb.open(str(directory), map_size=source.info()["map_size"],
                              max_dbs=len(_NAMES) + 2, sync=True, metasync=False)
        self._dbs = {name: self._env.open_db(name) for name in _NAMES}
        self._seen = self._contents()  # the copy's contents, as of the last catch-up
        self._journal_end = self._backend.read_ledger()[1]

    def _contents(self) -> dict[bytes, dict[bytes, bytes]]:
        handle = self._backend._handle
        databases = dict(zip(_NAMES, handle.databases, strict=True))
        with handle.env.begin() as txn:
            return {name: {bytes(k): bytes(v) for k, v in txn.cursor(db=databases[name])}
                    for name in _DIFFED}

    def _catch_up(self) -> float:
        """Write what the repository changed since the last call into the copy, ``fsync``.

        Returns the seconds the transaction and the ``fsync`` took.
        """
        after = self._contents()
        end = self._backend.read_ledger()[1]
        stored = self._backend.journal(self._journal_end, end)
        objects = [(bytes(i), v) for i, v in zip(stored, self._backend.get_objects(stored),
                                                 strict=True) if v is not None]
        puts = [(name, k, v) for name in _DIFFED for k, v in after[name].items()
                if self._seen[name].get(k) != v]
        deletes = [(name, k) for name in _DIFFED for k in self._seen[name]
                   if k not in after[name]]
        self._seen, self._journal_end = after, end
        dbs = self._dbs
        start = time.perf_counter()
        with self._env.begin(write=True) as txn:
            for key, value in objects:
                txn.put(key, value, db=dbs[b"objects"])
            for name, key, value in puts:
                txn.put(key, value, db=dbs[name])
            for name, key in deletes:
                txn.delete(key, db=dbs[name])
        self._env.sync(True)
        return time.perf_counter() - start

    def before(self) -> None:
        """Bring the copy up to the repository right before a commit (untimed)."""
        self._catch_up()

    def replay(self) -> float:
        """Write what the commit since ``before()`` wrote into the copy, ``fsync``; seconds."""
        return self._catch_up()

    def close(self) -> None:
        """Close the copy (its directory stays, under the system's root)."""
        self._env.close()

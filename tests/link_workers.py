"""Code that runs in spawned child processes for ``test_lmdb_links.py``.

Each child opens an LMDB environment through one path — with
``zarrstore.LMDBStore`` (``"store"``) or ``vs.Repository`` on
``vs.lmdb_storage`` (``"repository"``) — and holds or tries a transaction
through the handle it opened, reporting on a queue. ``writers`` counts the
write transactions open at once across the children: LMDB admits one.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

import lmdb

import versionstore as vs
from zarrstore import LMDBStore
from zarrstore.lmdb_environment import EnvironmentHandle

#: How long a child waits for the others' signals before giving up.
WAIT = 60
#: How long the holder keeps its write open after the other child said it is about
#: to begin one: without exclusion the other is inside within microseconds.
GRACE = 1.0


def open_handle(api: str, path: str, read_only: bool = False) -> tuple[Any, EnvironmentHandle]:
    """Open ``path`` through ``api``; the opened object (keep it) and its environment handle."""
    if api == "store":
        store = LMDBStore(path, read_only=read_only)
        handle = store.storage._handle
        assert handle is not None
        return store, handle
    repo = vs.Repository.open(vs.lmdb_storage(path, read_only=read_only))
    backend = repo.backend
    assert isinstance(backend, vs.backend.LMDBBackend)
    return repo, backend._handle


def _entered(writers: Any) -> bool:
    """Count this write transaction in; whether another one was open already."""
    with writers.get_lock():
        writers.value += 1
        return bool(writers.value > 1)


def _left(writers: Any) -> None:
    with writers.get_lock():
        writers.value -= 1


def hold_write(api: str, path: str, key: bytes, writers: Any, inside: Any, tried: Any,
               queue: Any) -> None:
    """Open ``path``, enter a write transaction, and keep it open until the other child tried.

    Puts ``("refused", message)`` if the open is refused, else
    ``("wrote", overlapped)``; sets ``inside`` either way.
    """
    try:
        try:
            kept, handle = open_handle(api, path)
        except Exception as exc:  # noqa: BLE001 - the refusal is the result
            queue.put(("refused", f"{type(exc).__name__}: {exc}"))
            return

        def work(txn: lmdb.Transaction) -> bool:
            overlapped = _entered(writers)
            inside.set()
            tried.wait(WAIT)
            time.sleep(GRACE)
            txn.put(key, b"written")
            _left(writers)
            return overlapped

        queue.put(("wrote", handle.write("holding the write lock", work)))
        del kept
    except BaseException:  # noqa: BLE001 - every failure must reach the parent
        queue.put(("error", traceback.format_exc()))
    finally:
        inside.set()


def try_write(api: str, path: str, key: bytes, writers: Any, tried: Any, queue: Any) -> None:
    """Open ``path`` and write ``key`` in one write transaction, while the holder holds its own.

    Puts ``("refused", message)`` or ``("wrote", overlapped)``; sets ``tried``
    just before beginning the transaction (or on a refusal).
    """
    try:
        try:
            kept, handle = open_handle(api, path)
        except Exception as exc:  # noqa: BLE001 - the refusal is the result
            queue.put(("refused", f"{type(exc).__name__}: {exc}"))
            return

        def work(txn: lmdb.Transaction) -> bool:
            overlapped = _entered(writers)
            txn.put(key, b"written")
            _left(writers)
            return overlapped

        tried.set()
        queue.put(("wrote", handle.write("writing", work)))
        del kept
    except BaseException:  # noqa: BLE001 - every failure must reach the parent
        queue.put(("error", traceback.format_exc()))
    finally:
        tried.set()


def hold_read(api: str, path: str, inside: Any, release: Any, queue: Any) -> None:
    """Open ``path`` read-only and hold a read transaction until ``release``.

    Puts ``("read", None)`` when done, or ``("refused", message)``.
    """
    try:
        try:
            kept, handle = open_handle(api, path, read_only=True)
        except Exception as exc:  # noqa: BLE001 - the refusal is the result
            queue.put(("refused", f"{type(exc).__name__}: {exc}"))
            return

        def work(txn: lmdb.Transaction) -> None:
            inside.set()
            release.wait(WAIT)

        handle.read("holding a reader slot", work)
        queue.put(("read", None))
        del kept
    except BaseException:  # noqa: BLE001 - every failure must reach the parent
        queue.put(("error", traceback.format_exc()))
    finally:
        inside.set()


def hold_open_with_lmdb(path: str, inside: Any, release: Any) -> None:
    """Open ``path`` with plain ``lmdb`` (as an older release did: under its own lock.mdb)."""
    env = lmdb.open(path, max_dbs=8)
    try:
        inside.set()
        release.wait(WAIT)
    finally:
        env.close()
        inside.set()

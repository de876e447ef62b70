"""Code that commits to a repository on object storage from *other processes* (race tests).

``commit_loop`` is what ``multiprocessing``'s spawn context runs: open the
repository from its (pickled) storage description — each process with its
own client, as separate machines would — wait for the start signal, then
commit ``commits`` times to ``main``, each commit writing one key of its
own, and report every snapshot id a commit returned.
"""

from __future__ import annotations

import traceback
from typing import Any

import versionstore as vs


def commit_loop(storage: Any, worker: int, commits: int, start: Any, out: Any) -> None:
    """Commit ``commits`` disjoint keys to ``main``; put ``(worker, ids or error)`` on ``out``."""
    try:
        repo = vs.Repository.open(storage)
        start.wait(60)
        returned = []
        for n in range(commits):
            session = repo.writable_session("main")
            key = f"w{worker}/{n}"
            session.set_values([(key, key.encode().ljust(700, b"."))])
            returned.append(session.commit(f"{worker}:{n}"))
        out.put((worker, returned))
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test
        out.put((worker, traceback.format_exc()))


def _chunk(key: str) -> bytes:
    """The value ``store_until_killed`` writes at ``key`` (above the inline limit)."""
    return key.encode().ljust(2000, b"#")


def store_until_killed(storage: Any, out: Any) -> None:
    """Store chunks one ``await store.set`` at a time, reporting each key once it returned.

    Puts the session id on ``out`` first, then each key whose ``set`` has
    returned, forever: the parent kills this process (SIGKILL) mid-stream.
    """
    import asyncio  # noqa: PLC0415 - only the worker needs it

    from zarr.core.buffer import cpu  # noqa: PLC0415

    repo = vs.Repository.open(storage)
    session = repo.writable_session("main")
    out.put(session.session_id)
    store = session.store

    async def forever() -> None:
        n = 0
        while True:
            key = f"killed/c/{n}"
            await store.set(key, cpu.Buffer.from_bytes(_chunk(key)))
            out.put(key)
            n += 1

    asyncio.run(forever())

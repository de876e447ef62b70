"""obstore's runtime and ``fork``: which process started it, and what a forked child may do.

obstore runs every request on Rust's tokio runtime, whose worker threads do
not survive ``fork``: in a child forked *after* its parent's first obstore
request, every request waits forever (obstore issue 441, tokio issue 4301).
A child forked *before* that first request starts a runtime of its own and
works, as does every ``spawn``/``forkserver`` child.

This module keeps the one fact both packages need — the process whose
request started the runtime — so that zarrstore's ``ObjectStore`` and
versionstore's object-storage backend refuse (at once, with a clear error)
what would otherwise hang, whichever of them made the first request. It
does not import obstore.
"""

from __future__ import annotations

import os

__all__ = ["FORK_ADVICE", "forked_from", "note_request"]

#: What a user should do instead, for the error messages of both packages.
FORK_ADVICE = (
    "the object-storage client (obstore) does not survive fork — its requests would wait "
    "forever. Start worker processes with the 'spawn' or 'forkserver' context "
    "(multiprocessing.get_context('spawn'), ProcessPoolExecutor(mp_context=...)), or fork "
    "before the first use")

_runtime_pid: int | None = None


def forked_from() -> int | None:
    """The parent whose obstore runtime this process inherited by ``fork``, else ``None``."""
    pid = _runtime_pid
    return pid if pid is not None and pid != os.getpid() else None


def note_request() -> None:
    """Record that this process is making an obstore request (call after ``forked_from``)."""
    global _runtime_pid  # noqa: PLW0603 - one per process, by its nature
    _runtime_pid = os.getpid()

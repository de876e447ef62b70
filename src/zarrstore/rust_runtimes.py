"""Rust clients and ``fork``: which process started a client's runtime, what a child may do.

obstore and OpenDAL's Python binding run every request on a tokio runtime
whose worker threads do not survive ``fork``: in a child forked *after* its
parent started that runtime, every request waits forever — on an operator or
store the parent made, and on one the child makes (obstore issue 441, tokio
issue 4301; seen here with opendal 0.47). obstore starts it with the first
request; OpenDAL with the first request, or as soon as a blocking
``opendal.Operator`` exists. A child forked before that starts a runtime of
its own and works, as does every ``spawn``/``forkserver`` child. The two
clients' runtimes are separate: a parent that used only one leaves the other
usable in its children.

This module keeps the one fact the stores need per client — the process
whose request started its runtime — so that zarrstore's ``ObjectStore`` and
OpenDAL stores (``refuse_if_forked``) and versionstore's object-storage
backend refuse (at once, with a ``ForkedProcessError``) what would otherwise
hang, whichever of them made the first request. It imports neither client.
"""

from __future__ import annotations

import os

import attrs

from zarrstore.errors import ForkedProcessError

__all__ = ["OBSTORE", "OPENDAL", "RuntimeUse"]


@attrs.define
class RuntimeUse:
    """The process that started one client's runtime, and what to do instead of forking.

    ``client`` names the client in messages, ``used`` what the parent used;
    ``advice`` ends them.
    """

    client: str
    used: str
    _pid: int | None = attrs.field(default=None, alias="_pid")

    @property
    def advice(self) -> str:
        """What a user should do instead, for error messages."""
        return (f"{self.client} does not survive fork — its requests would wait forever. "
                "Start worker processes with the 'spawn' or 'forkserver' context "
                "(multiprocessing.get_context('spawn'), ProcessPoolExecutor(mp_context=...)), "
                "or fork before the first use")

    def forked_from(self) -> int | None:
        """The parent whose runtime this process inherited by ``fork``, else ``None``."""
        pid = self._pid
        return pid if pid is not None and pid != os.getpid() else None

    def refuse_if_forked(self, what: str) -> None:
        """Before a request about ``what``: refuse it in a fork child, else note the use.

        Raises:
            ForkedProcessError: this process was forked after its parent had
                started the runtime (the request would wait forever).
        """
        forked = self.forked_from()
        if forked is not None:
            raise ForkedProcessError(
                f"{what}: this process ({os.getpid()}) was forked from process {forked} after "
                f"that process had used {self.used}, and " + self.advice)
        self.note_use()

    def note_use(self) -> None:
        """Record that this process started the runtime: a request, or a blocking OpenDAL operator.

        An inherited runtime stays noted as the parent's: a child that makes an
        operator is still refused its requests.
        """
        if self.forked_from() is None:
            self._pid = os.getpid()


#: obstore (zarrstore's ``ObjectStore``, versionstore's object-storage backend).
OBSTORE = RuntimeUse("the object-storage client (obstore)", "object storage")
#: OpenDAL's Python binding (``OpendalStore``, ``AsyncOpendalStore``).
OPENDAL = RuntimeUse("OpenDAL's client", "OpenDAL")

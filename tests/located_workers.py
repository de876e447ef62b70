"""What the located-staging attacks run in other processes (``test_located_adversary.py``).

``write(session, config)`` runs in a child process with a pickled copy of a
writable session on S3 (moto behind the proxy): it stages one chunk per
``set`` and appends ``set <key> <tag>`` to its log (line-buffered: in the
kernel before its next request) after every ``set`` that *returned*. The
value of a write is ``value(key, tag)``, so the parent can tell which write
it reads. ``config``:

* ``log``: the log file; ``worker``: this worker's number; ``count``: how
  many writes (then ``done``);
* ``shared``: every other write goes to this one key (with the tag
  ``<worker>-<n>``), to race the other copies on it;
* ``pause``: where to stop and wait to be SIGKILLed, after logging
  ``paused``: ``"after_put"`` (the ``pause_at``-th located ``PUT`` stored,
  its look at the record not made), ``"after_close"`` (a commit's absorb
  wrote the record closing the epoch, not the one of staged refs),
  ``"before_commit"`` (the absorb done, the commit's own record not written);
  for the last two the worker commits after ``count`` writes;
* ``commit_every``: the copy also commits after every that many writes
  (``commit <snapshot id>``).

The parent kills the child, reopens the session by its id, and checks that
every logged ``set`` is committed.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

import versionstore.located_staging as located_staging
import versionstore.session as session_module
from versionstore.errors import NothingToCommitError
from versionstore.refs import Refs
from versionstore.session import Session

#: Bytes of each value: more than the inline limit, so each is a located chunk.
SIZE = 1000


def value(key: str, tag: str) -> bytes:
    """The bytes a worker writes under ``key`` for the write tagged ``tag``."""
    return f"{key} {tag} ".encode().ljust(SIZE, b".")


def _pause(log: Any) -> None:
    log.write("paused\n")
    time.sleep(3600)  # until SIGKILLed


def _arm(config: dict[str, Any], log: Any, committing: list[bool]) -> None:
    pause = config.get("pause")
    if pause == "after_put":
        real_put = located_staging.LocatedStaging.put
        calls = [0]

        def put(self: Any, epoch: int, items: list[tuple[str, bytes]]) -> Any:
            found = real_put(self, epoch, items)
            calls[0] += 1
            if calls[0] >= config.get("pause_at", 1):
                _pause(log)
            return found

        located_staging.LocatedStaging.put = put  # type: ignore[method-assign]
    elif pause == "after_close":
        real_list = located_staging.LocatedStaging._list_writes

        def list_writes(self: Any, epochs: Any) -> Any:
            if committing:  # called by the absorb, after the record closing the epoch
                _pause(log)
            return real_list(self, epochs)

        located_staging.LocatedStaging._list_writes = list_writes  # type: ignore[method-assign]
    elif pause == "before_commit":
        real_move = Refs.move_branch

        def move_branch(self: Any, *args: Any, **kwargs: Any) -> Any:
            if committing:
                _pause(log)
            return real_move(self, *args, **kwargs)

        Refs.move_branch = move_branch  # type: ignore[method-assign]


def write(session: Session, config: dict[str, Any], errors: str) -> None:
    """Stage ``config["count"]`` writes through ``session``, logging each that returned."""
    try:
        _write(session, config)
    except BaseException:
        with open(errors, "w") as out:
            traceback.print_exc(file=out)
        raise


def _write(session: Session, config: dict[str, Any]) -> None:
    session_module._LOGGED_FIRST = config.get("logged_first", 0)
    worker = config["worker"]
    committing: list[bool] = []
    with open(config["log"], "a", buffering=1) as log:
        _arm(config, log, committing)
        log.write("ready\n")
        for n in range(config["count"]):
            shared = config.get("shared")
            key = shared if shared is not None and n % 2 else f"w{worker}/c/{n}"
            tag = f"{worker}-{n}"
            session.set_values([(key, value(key, tag))])
            log.write(f"set {key} {tag}\n")
            every = config.get("commit_every")
            if every and n % every == every - 1:
                try:
                    log.write(f"commit {session.commit(f'worker {worker} at {n}')}\n")
                except NothingToCommitError:
                    pass
        if config.get("pause") in ("after_close", "before_commit"):
            committing.append(True)
            session.commit(f"worker {worker}")
            log.write("committed\n")
        log.write("done\n")

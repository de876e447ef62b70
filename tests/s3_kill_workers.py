"""What the SIGKILL trials on S3 run in their child processes (``test_object_sigkill.py``).

``main(ROLE, CONFIG, ERRORS)`` runs in a child process (forked from a
forkserver; ``python s3_kill_workers.py ROLE CONFIG`` works too): ``CONFIG`` is a JSON object
with the proxy's endpoint, the repository's prefix, this worker's number and
log file, and the trial. Each worker opens the repository with its own
client, as separate machines would, writes ``ready`` to its log, then loops
until it is killed, appending one line to its log (line-buffered: in the
kernel before the next request) after every operation that *returned*:

* ``commit``: commits one key at a time, alternately to ``main`` (shared by
  every committer) and to its own branch ``b<worker>``
  (``commit <branch> <snapshot id>``);
* ``stage``: stages keys into a writable session of branch ``s<worker>``
  (``session <id>`` once, then ``staged <key>`` per returned write) and
  commits every fifth (``commit <branch> <snapshot id>``, then a new session);
* ``gc``: garbage-collects with a grace of ``grace`` seconds, while another
  worker makes garbage (``gc <deleted>``);
* ``scratch``: commits to branch ``scratch`` and resets it back (garbage);
* ``transfer``: clones the repository to a new LMDB directory, pushes its
  ``main`` into a second repository on S3 and fetches that back into the clone
  (``cloned <path>``, ``pushed <snapshot id>``, ``fetched <snapshot id>``).

A key's value is ``value(key)``, so the parent can check what it reads.
"""

from __future__ import annotations

import json
import sys
import traceback
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import versionstore as vs


def value(key: str) -> bytes:
    """The bytes every worker writes under ``key`` (700: a chunk object of its own)."""
    return key.encode().ljust(700, b".")


def storage(config: dict[str, Any], prefix: str) -> vs.ObjectStorage:
    """The S3 storage under ``prefix`` behind the proxy (the parent's credentials)."""
    return vs.s3_storage(bucket=config["bucket"], prefix=prefix,
                         endpoint_url=config["endpoint"], allow_http=True, region="us-east-1",
                         access_key_id="testing", secret_access_key="secret")


def _commit(repo: vs.Repository, config: dict[str, Any], log: Any) -> None:
    worker, trial = config["worker"], config["trial"]
    if f"b{worker}" not in repo.list_branches():
        repo.create_branch(f"b{worker}", repo.lookup_branch("main"))
    for n in range(10**9):
        branch = "main" if n % 2 == 0 else f"b{worker}"
        session = repo.writable_session(branch)
        key = f"c{worker}/{trial}/{n}"
        session.set_values([(key, value(key))])
        log.write(f"commit {branch} {session.commit(key)}\n")


def _stage(repo: vs.Repository, config: dict[str, Any], log: Any) -> None:
    worker, trial = config["worker"], config["trial"]
    branch = f"s{worker}"
    if branch not in repo.list_branches():
        repo.create_branch(branch, repo.lookup_branch("main"))
    for n in range(10**9):
        session = repo.writable_session(branch)
        log.write(f"session {session.session_id}\n")
        for k in range(5):
            key = f"s{worker}/{trial}/{n}/{k}"
            session.set_values([(key, value(key))])
            log.write(f"staged {key}\n")
        log.write(f"commit {branch} {session.commit(f'{n}')}\n")


def _gc(repo: vs.Repository, config: dict[str, Any], log: Any) -> None:
    while True:
        summary = repo.garbage_collect(datetime.now(UTC) - timedelta(seconds=config["grace"]))
        log.write(f"gc {summary.deleted}\n")


def _scratch(repo: vs.Repository, config: dict[str, Any], log: Any) -> None:
    if "scratch" not in repo.list_branches():
        repo.create_branch("scratch", repo.lookup_branch("main"))
    for n in range(10**9):
        base = repo.lookup_branch("scratch")
        session = repo.writable_session("scratch")
        key = f"x/{config['trial']}/{n}"
        session.set_values([(key, value(key))])
        session.commit(key)
        repo.reset_branch("scratch", base)
        log.write("scratch\n")


def _transfer(repo: vs.Repository, config: dict[str, Any], log: Any) -> None:
    remote = vs.Repository.open(storage(config, config["remote_prefix"]))
    for n in range(10**9):
        path = Path(config["dir"]) / f"clone-{config['trial']}-{n}"
        log.write(f"cloning {path}\n")
        vs.copy_repository(repo.storage, vs.lmdb_storage(path), progress=False)
        log.write(f"cloned {path}\n")
        clone = vs.Repository.open(vs.lmdb_storage(path))
        tip = clone.lookup_branch("main")
        clone.push(remote, "main", force=True, progress=False)
        log.write(f"pushed {tip}\n")
        clone.fetch(remote, "main", progress=False)
        log.write(f"fetched {clone.lookup_branch('origin/main')}\n")
        clone.close()


ROLES = {"commit": _commit, "stage": _stage, "gc": _gc, "scratch": _scratch,
         "transfer": _transfer}


def main(role: str, config_text: str, errors: str | None = None) -> None:
    """Open the repository, say ``ready``, then run ``role`` until killed.

    A failure's traceback goes to the file ``errors`` (else to stderr).
    """
    if errors is not None:
        sys.stderr = open(errors, "w", buffering=1)  # noqa: SIM115 - until the process dies
    try:
        _main(role, config_text)
    except BaseException:
        traceback.print_exc()
        raise


def _main(role: str, config_text: str) -> None:
    config = json.loads(config_text)
    with open(config["log"], "a", buffering=1) as log:
        repo = vs.Repository.open(storage(config, config["prefix"]))
        repo.lookup_branch("main")
        log.write("ready\n")
        ROLES[role](repo, config, log)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

"""Walking every tree page of an LMDB ``data.mdb`` in a child interpreter, before trusting it.

A damaged ``data.mdb`` can do worse than fail a read: LMDB checks some of
what a tree page says with assertions that ``abort()`` the process
(``SIGABRT``: ``mdb_page_search_root`` on a branch page garbled to one key).
``verify`` exists to find damage, so it must not die of it: ``walk_pages``
first visits every key of every database, in key order and by a search
from the root for each — every branch and leaf page on the way, and the
first page of every value stored in overflow pages, which LMDB checks — in
a child interpreter (``python -I``: no ``PYTHON*`` variables, no user
site; its one argument, the directory, is written into its code), and a
child killed by a signal becomes a finding, after which the calling process
reads nothing of the file. Values themselves are not touched there: this
process reads each through a check of its node that refuses one running
past the end of the file (``zarrstore.lmdb_environment``), which the child
could not do.

The child imports nothing of this package (``lmdb`` alone), so it reads the
file with the LMDB the caller uses, whatever ``sys.path`` the caller was
given. Where no child can be started, or it cannot import ``lmdb`` (an
embedded interpreter), the walk is skipped and says so in ``PageWalk.ran``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import attrs

__all__ = ["PageWalk", "walk_pages"]

#: Seconds a walk may take before it counts as stuck (a loop in garbled pages).
WALK_TIMEOUT = 3600

# The child's code. It prints ``start``, then ``db <hex name>`` before each database
# and ``error <hex name> <message>`` for one LMDB refused, and ``done`` at the end.
_CHILD = """
import os, sys
import lmdb
path = {path!r}
data = os.path.join(path, "data.mdb")
size = os.path.getsize(data)
print("start", flush=True)
def opened(lock):
    return lmdb.open(path, readonly=True, lock=lock, max_dbs=16, max_readers=1024,
                     map_size=max(size, 1 << 20), readahead=False)
try:
    env = opened(True)
except lmdb.Error:
    env = opened(False)  # read-only media: the lock file cannot be opened
def walk(txn, db):
    # In key order (each page from its neighbour), and each key searched for from the
    # root: LMDB checks branch pages with assertions only on a search.
    search = txn.cursor(db=db).set_key
    for key in txn.cursor(db=db).iternext(keys=True, values=False):
        search(key)  # keys only: a value would be touched before it could be checked
with env.begin(buffers=True) as txn:
    names = [bytes(key) for key in txn.cursor().iternext(keys=True, values=False)]
    print("db", b"".hex(), flush=True)
    try:
        walk(txn, None)
    except lmdb.Error as exc:
        print("error", b"".hex(), str(exc).replace("\\n", " "), flush=True)
    for name in names:
        try:
            db = env.open_db(name, txn=txn, create=False)
        except lmdb.Error:
            continue  # a plain key of the main database, not a database
        print("db", name.hex(), flush=True)
        try:
            walk(txn, db)
        except lmdb.Error as exc:
            print("error", name.hex(), str(exc).replace("\\n", " "), flush=True)
print("done", flush=True)
"""


@attrs.frozen
class PageWalk:
    """What walking ``data.mdb`` in a child found.

    ``problems`` name the file and what was wrong (LMDB's refusals, and a
    child killed by a signal); ``safe`` is ``False`` when reading the file in
    this process could kill it too; ``ran`` is ``False`` when no walk could
    be made (then nothing is known, and ``safe`` is ``True``).
    """

    problems: tuple[str, ...] = ()
    safe: bool = True
    ran: bool = True


def _database(hex_name: str) -> str:
    name = bytes.fromhex(hex_name)
    return "the main database" if not name else f"database {name.decode(errors='replace')!r}"


def walk_pages(path: str) -> PageWalk:
    """Visit every key of every database of the LMDB environment in ``path``, in a child.

    Args:
        path: the environment's directory (``LMDBBackend.path``).

    Returns:
        The ``PageWalk``: LMDB's errors per database as problems; a child
        killed by a signal (or stuck past ``WALK_TIMEOUT``) as a problem that
        makes the file unsafe to read in this process.
    """
    data = os.path.join(path, "data.mdb")
    try:
        child = subprocess.run([sys.executable, "-I", "-c", _CHILD.format(path=path)],
                               capture_output=True, text=True, timeout=WALK_TIMEOUT,
                               stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return PageWalk(problems=(
            f"{data} is damaged: walking its pages did not end in {WALK_TIMEOUT} s (garbled "
            "pages that point at each other); restore it from a copy",), safe=False)
    except OSError:
        return PageWalk(ran=False)  # no interpreter to start (an embedded Python)
    lines = child.stdout.splitlines()
    if not lines or lines[0] != "start":
        return PageWalk(ran=False)  # the child could not import lmdb or open the file
    problems: list[str] = []
    walking = None
    for line in lines[1:]:
        word, _, rest = line.partition(" ")
        if word == "db":
            walking = rest
        elif word == "error":
            hex_name, _, message = rest.partition(" ")
            problems.append(f"{data} is damaged: reading {_database(hex_name)}: {message}; "
                            "restore it from a copy")
    if child.returncode < 0:
        try:
            name = signal.Signals(-child.returncode).name
        except ValueError:
            name = f"signal {-child.returncode}"
        where = "" if walking is None else f" reading {_database(walking)}"
        detail = child.stderr.strip().splitlines()[-1:] or [""]
        said = f" ({detail[0]})" if detail[0] else ""
        problems.append(
            f"{data} is damaged: LMDB killed the reading process with {name}{where}{said}; "
            "reading it in this process would do the same, so nothing else was checked; "
            "restore it from a copy")
        return PageWalk(problems=tuple(problems), safe=False)
    if "done" not in lines:
        tail = child.stderr.strip().splitlines()[-1:] or ["no reason given"]
        problems.append(f"{data}: walking its pages failed: {tail[0]}")
    return PageWalk(problems=tuple(problems))

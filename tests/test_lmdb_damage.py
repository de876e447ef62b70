"""Damaged data.mdb files: every read ends in the right bytes or a clear error, never a crash.

A garbled page can make LMDB (and py-lmdb, which touches a value before
returning it) read past the end of the file in the memory map, which kills the
process with ``SIGBUS`` (``zarrstore.lmdb_environment``, "Damaged pages never
crash the process"). Each test damages copies of a real file in one way and
reads them in a child interpreter (one forked process per copy), so a crash
is a failed test, not a dead pytest.
"""

from __future__ import annotations

import gzip
import os
import random
import shutil
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr

import versionstore as vs
from zarrstore.lmdb import LMDBStore

SRC = str(Path(__file__).resolve().parents[1] / "src")
WAIT = 300
PAGE = 4096
# Page flags and the node flag of a value in overflow pages (LMDB's mdb.c).
P_BRANCH, P_LEAF, P_OVERFLOW, F_BIGDATA = 0x01, 0x02, 0x04, 0x01
SHAPE, CHUNKS = (6, 3000), (1, 3000)  # 24 000-byte chunks: six overflow pages each


def _expected() -> np.ndarray:
    return np.arange(SHAPE[0] * SHAPE[1], dtype="f8").reshape(SHAPE)


READ_EACH = """
    # One interpreter (imports are the slow part), one forked process per damaged copy:
    # each reads everything it can, and prints one outcome per read.
    import os, sys
    import numpy as np, zarr
    import versionstore as vs
    from zarrstore.errors import CorruptStorageError
    from zarrstore.lmdb import LMDBStore

    # A damaged page can also leave LMDB a valid tree without some keys: the refs ("no
    # repository in ..."), or a snapshot ("snapshot ... does not exist").
    CLEAR = (vs.CorruptRepositoryError, vs.CorruptObjectError, CorruptStorageError,
             vs.RepositoryNotFoundError, vs.SnapshotNotFoundError)
    expected = np.arange(SHAPE[0] * SHAPE[1], dtype="f8").reshape(SHAPE)

    def outcome(read):
        try:
            return read()
        except CLEAR as exc:
            return "error:" + type(exc).__name__
        except Exception as exc:
            return f"other:{type(exc).__name__}:{exc}".replace(" ", "_")[:300]

    def read_repository(path):
        repo = vs.Repository.open(vs.lmdb_storage(path))
        def array():
            store = repo.readonly_session(branch="main").store
            data = zarr.open_array(store, path="a", mode="r")[:]
            return "right" if np.array_equal(data, expected) else "wrong"
        def listing():
            storage = repo.readonly_session(branch="main").store.storage
            return f"listed:{len(list(storage.list_prefix('')))}"
        def verify():
            return "clean" if not repo.verify().problems else "problems"
        def history():
            return f"history:{len(list(repo.ancestry(branch='main')))}"
        return [("array", outcome(array)), ("list", outcome(listing)),
                ("verify", outcome(verify)), ("history", outcome(history))]

    def read_store(path):
        store = LMDBStore(path, read_only=True).storage
        def values():
            right = sum(store.get(f"v/{n}") == bytes([n]) * (1000 + 3000 * n)
                        for n in range(12))
            return f"right:{right}"
        def listing():
            return f"listed:{len(list(store.list_prefix('')))}"
        def sizes():
            return f"sized:{store.size_prefix('v/')}"
        return [("get", outcome(values)), ("list", outcome(listing)),
                ("size", outcome(sizes))]

    kind = sys.argv[1]
    for path in sys.argv[2:]:
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            try:
                found = read_repository(path) if kind == "repository" else read_store(path)
            except CLEAR as exc:
                found = [("open", "error:" + type(exc).__name__)]
            print(path, " ".join(f"{what}={result}" for what, result in found), flush=True)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            print(path, "signal", os.WTERMSIG(status), flush=True)
        elif os.WEXITSTATUS(status) != 0:
            print(path, "exit", os.WEXITSTATUS(status), flush=True)
"""


def _read_each(kind: str, paths: list[Path]) -> dict[str, dict[str, str]]:
    """Read every copy in a child; each copy's outcomes by read (``{"signal": …}`` if it died)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([SRC, env.get("PYTHONPATH", "")])
    code = f"SHAPE = {SHAPE}\n" + textwrap.dedent(READ_EACH)
    result = subprocess.run([sys.executable, "-c", code, kind, *map(str, paths)],
                            capture_output=True, text=True, env=env, timeout=WAIT)
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes: dict[str, dict[str, str]] = {}
    for line in result.stdout.splitlines():
        path, _, rest = line.partition(" ")
        if rest.startswith(("signal", "exit")):
            outcomes[path] = {"died": rest}
        else:
            outcomes[path] = dict(item.split("=", 1) for item in rest.split())
    assert sorted(outcomes) == sorted(map(str, paths)), result.stdout
    return outcomes


# -- building and damaging real files ----------------------------------------------------------


def _repository(path: Path) -> Path:
    repo = vs.Repository.create(vs.lmdb_storage(path))
    for n in range(2):
        session = repo.writable_session("main")
        array = zarr.create_array(session.store, name="a", shape=SHAPE, chunks=CHUNKS,
                                  dtype="f8", compressors=None, overwrite=True)
        array[:] = _expected() * n if n == 0 else _expected()
        session.commit(f"round {n}")
    repo.garbage_collect()  # writes the gc ledger
    repo.close()
    return path


def _store(path: Path) -> Path:
    with LMDBStore(path) as store:
        for n in range(12):
            store.storage.set(f"v/{n}", bytes([n]) * (1000 + 3000 * n))
    return path


def _last_page(data: bytes) -> int:
    """The last page the newer meta page says holds data."""
    metas = [struct.unpack_from("<QQ", data, meta * PAGE + 136) for meta in (0, 1)]
    return max(metas, key=lambda meta: meta[1])[0]


def _pages(data: bytes, flag: int) -> list[int]:
    last = _last_page(data)
    return [page for page in range(2, last + 1)
            if struct.unpack_from("<H", data, page * PAGE + 10)[0] == flag]


def _big_nodes(data: bytearray) -> list[int]:
    """Offsets of the nodes of values in overflow pages, in every leaf page."""
    found = []
    for page in _pages(data, P_LEAF):
        base = page * PAGE
        lower = struct.unpack_from("<H", data, base + 12)[0]
        for index in range((lower - 16) // 2):
            node = base + struct.unpack_from("<H", data, base + 16 + 2 * index)[0]
            if node + 8 <= base + PAGE and struct.unpack_from("<H", data, node + 4)[0] == F_BIGDATA:
                found.append(node)
    return found


def _garbage_over(page: int, rng: random.Random, data: bytearray) -> None:
    """Garbage over a page's nodes; or, every other time, over all of it but its number and flags.

    Which LMDB checks; the rest it trusts. The garbage is mostly zeros (a torn
    or misdirected write of a sparse block): uniform noise makes every page
    number LMDB reads huge, which it refuses itself (``MDB_PAGE_NOTFOUND``),
    where small ones with garbled sizes run past the end of the file.
    """
    base = page * PAGE
    start = 12 if rng.random() < 0.5 else struct.unpack_from("<H", data, base + 14)[0]
    data[base + start:base + PAGE] = _sparse_garbage(rng, PAGE - start)


def _sparse_garbage(rng: random.Random, size: int) -> bytes:
    return bytes(rng.randrange(256) if rng.random() < 0.3 else 0 for _ in range(size))


def _damaged_copies(source: Path, tmp_path: Path,
                    damage: Callable[[random.Random, bytearray], None],
                    copies: int = 10) -> list[Path]:
    paths = []
    for trial in range(copies):
        copy = tmp_path / f"copy{trial}"
        shutil.copytree(source, copy)
        data = bytearray((copy / "data.mdb").read_bytes())
        damage(random.Random(trial), data)
        (copy / "data.mdb").write_bytes(data)
        paths.append(copy)
    return paths


def _garbage_over_last_page(rng: random.Random, data: bytearray) -> None:
    # One of the last pages of the tree (the last is often the free list's, which reads
    # do not visit): their nodes may point up to 128 KiB past them, past the file.
    pages = sorted(_pages(data, P_LEAF) + _pages(data, P_BRANCH))
    _garbage_over(pages[-1 - rng.randrange(3)], rng, data)


def _garbage_over_a_middle_page(rng: random.Random, data: bytearray) -> None:
    # A tree page (not a chunk's overflow page, whose damage the checksums find).
    pages = _pages(data, P_LEAF) + _pages(data, P_BRANCH)
    _garbage_over(rng.choice(pages), rng, data)


def _garbage_over_an_overflow_header(rng: random.Random, data: bytearray) -> None:
    page = rng.choice(_pages(data, P_OVERFLOW))
    data[page * PAGE:page * PAGE + 16] = _sparse_garbage(rng, 16)


def _huge_value_size(rng: random.Random, data: bytearray) -> None:
    # A value in overflow pages that claims 2-4 GiB: it runs far past the end of the file.
    node = rng.choice(_big_nodes(data))
    struct.pack_into("<HH", data, node, rng.randrange(1 << 16), rng.randrange(1 << 15, 1 << 16))


DAMAGES = {
    "garbage over the last page": _garbage_over_last_page,
    "garbage over a middle page": _garbage_over_a_middle_page,
    "garbage over an overflow page's header": _garbage_over_an_overflow_header,
    "a huge size in a leaf node": _huge_value_size,
}
REPOSITORY_CLEAR = {"error:CorruptRepositoryError", "error:CorruptObjectError",
                    "error:SnapshotNotFoundError"}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_repository_reads_right_or_reports(tmp_path: Path, damage: str) -> None:
    source = _repository(tmp_path / "repo")
    outcomes = _read_each("repository", _damaged_copies(source, tmp_path, DAMAGES[damage]))
    assert not [o for o in outcomes.values() if "died" in o], outcomes
    for found in outcomes.values():
        assert found.get("array", "right") in {"right"} | REPOSITORY_CLEAR, found
        assert found.get("verify", "clean") in {"clean", "problems"} | REPOSITORY_CLEAR, found
        for what in ("list", "history"):
            assert not found.get(what, "").startswith("other:"), found
    if damage == "a huge size in a leaf node":
        # A damaged value in use (a chunk, a ledger entry) is refused; the node may also
        # lie in a page LMDB freed, which no read reaches.
        assert any(o.get("array") != "right" or o.get("verify") != "clean"
                   for o in outcomes.values()), outcomes


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_lmdb_store_reads_right_or_raises(tmp_path: Path, damage: str) -> None:
    source = _store(tmp_path / "store")
    outcomes = _read_each("store", _damaged_copies(source, tmp_path, DAMAGES[damage]))
    assert not [o for o in outcomes.values() if "died" in o], outcomes
    for found in outcomes.values():
        for what, result in found.items():
            assert not result.startswith("other:"), (what, found)
    if damage == "a huge size in a leaf node":
        assert any(o.get("get") != "right:12" for o in outcomes.values()), outcomes


def test_a_value_running_past_the_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    source = _store(tmp_path / "store")
    data = bytearray((source / "data.mdb").read_bytes())
    for node in _big_nodes(data):
        struct.pack_into("<HH", data, node, 0xFFFF, 0xFFFF)
    (source / "data.mdb").write_bytes(data)
    code = f"""
        from zarrstore.errors import CorruptStorageError
        from zarrstore.lmdb import LMDBStore
        with LMDBStore({str(source)!r}, read_only=True) as store:
            assert store.storage.get("v/0") == bytes(1000)  # in its leaf page: unharmed
            try:
                store.storage.get("v/11")
            except CorruptStorageError as exc:
                print(exc)
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([SRC, env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                            text=True, env=env, timeout=WAIT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{source / 'data.mdb'} is damaged" in result.stdout, result.stdout


def test_a_garbled_gc_ledger_leaf_is_a_problem_verify_reports(tmp_path: Path) -> None:
    """The file this was found with: verify() died with SIGBUS reading the gc ledger.

    Garbage over its last page, the gc ledger's leaf, gives a node a value in
    overflow pages from page 0 on, 1.6 GB long.
    """
    path = tmp_path / "repo"
    path.mkdir()
    with gzip.open(Path(__file__).parent / "data" / "sigbus-gc-ledger.mdb.gz") as packed:
        (path / "data.mdb").write_bytes(packed.read())
    code = f"""
        import versionstore as vs
        print(vs.Repository.open(vs.lmdb_storage({str(path)!r})).verify().problems)
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([SRC, env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                            text=True, env=env, timeout=WAIT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cannot check the gc ledger" in result.stdout
    assert f"{path / 'data.mdb'} is damaged" in result.stdout


VERIFY_EACH = """
    # Each copy verified in a forked process of its own: a crash is one copy's outcome.
    import os, sys
    import versionstore as vs

    for path in sys.argv[1:]:
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            try:
                report = vs.Repository.open(vs.lmdb_storage(path)).verify()
                print(path, "verified", report.objects_checked,
                      "SIGABRT" if any("SIGABRT" in p for p in report.problems) else "-",
                      len(report.problems), flush=True)
            except Exception as exc:
                print(path, "raised", type(exc).__name__, flush=True)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            print(path, "died", os.WTERMSIG(status), flush=True)
"""


def _many_objects(path: Path) -> Path:
    """A repository whose objects database has branch pages (600 chunks, 80 KiB each)."""
    repo = vs.Repository.create(vs.lmdb_storage(path))
    session = repo.writable_session("main")
    array = zarr.create_array(session.store, name="a", shape=(600, 100), chunks=(1, 100),
                              dtype="f8", compressors=None)
    array[:] = np.arange(60000.0).reshape(600, 100)
    session.commit("600 chunks")
    repo.close()
    return path


def _one_key_on(page: int) -> Callable[[random.Random, bytearray], None]:
    def damage(_: random.Random, data: bytearray) -> None:
        struct.pack_into("<H", data, page * PAGE + 12, 16 + 2)  # mp_lower: one node
    return damage


def test_verify_reports_a_page_that_makes_lmdb_abort_and_lives(tmp_path: Path) -> None:
    """A branch page garbled to one key: LMDB's assertion aborts the reading process.

    ``verify`` walks the file's pages in a child first (``lmdb_walk``): the
    abort is a problem it reports, naming the signal and the database, and it
    reads nothing of the file itself. Before, verify died with ``SIGABRT``.
    """
    source = _many_objects(tmp_path / "repo")
    data = bytes((source / "data.mdb").read_bytes())
    branches = _pages(data, P_BRANCH)
    assert branches
    paths = []
    for page in branches:
        paths.extend(_damaged_copies(source, tmp_path / f"p{page}", _one_key_on(page), 1))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([SRC, env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(VERIFY_EACH),
                             *map(str, paths)], capture_output=True, text=True, env=env,
                            timeout=WAIT)
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert sorted(outcomes) == sorted(map(str, paths)), result.stdout
    assert not [o for o in outcomes.values() if o.startswith(("died", "raised"))], outcomes
    aborted = [path for path, o in outcomes.items() if o.split()[2] == "SIGABRT"]
    assert aborted, outcomes
    for path in aborted:
        assert outcomes[path].split()[1] == "0"  # nothing read in the calling process
    # What verify spared itself: reading such a copy kills the process.
    code = f"""
        import numpy as np, zarr
        import versionstore as vs
        repo = vs.Repository.open(vs.lmdb_storage({aborted[0]!r}))
        repo.verify()  # lives
        zarr.open_array(repo.readonly_session("main").store, path="a", mode="r")[:]
    """
    died = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=WAIT)
    assert died.returncode == -6, (died.returncode, died.stderr[-2000:])


def test_a_written_file_keeps_zeros_past_its_last_page(tmp_path: Path) -> None:
    source = _store(tmp_path / "store")
    data = (source / "data.mdb").read_bytes()
    end = (_last_page(data) + 1) * PAGE
    assert len(data) - end >= 256 << 10
    assert not any(data[end:])

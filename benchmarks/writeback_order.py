"""``python -m benchmarks.writeback_order``: power lost during page write-back, replayed.

A machine that stops while the kernel writes a file's dirty pages back
leaves some of them on disk and not others. Linux writes a file's pages
back in file order: LMDB's header pages (0 and 1, the ones that say where
the newest tree is) first. This replays that for a repository:

1. a repository is created and one commit of ``--keys`` values is flushed
   (the file as it is then is what the disk holds);
2. a session stages ``--batches`` write transactions after it, and the file
   is read after each one;
3. **without ordering** (LMDB's ``MDB_NOSYNC``, what versionstore used until
   2026-12-01): nothing is flushed between those transactions, so every
   page they changed may be written back in file order, and a power loss
   may cut that at any page;
4. **with ordering** (``MDB_NOMETASYNC``, versionstore's default since): each
   transaction's pages are flushed before LMDB writes its header page, so a
   power loss can cut only within one transaction's pages (in file order),
   with every earlier transaction whole;
5. every cut image is opened read-only in a process of its own (LMDB may
   abort on a damaged file): the committed values are read back and
   ``verify`` runs.

It prints how many cuts of each kind left the committed snapshot intact.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import versionstore as vs

PAGE = 4096
HEADER_PAGES = (0, 1)


def committed_values(keys: int) -> dict[str, bytes]:
    """The values the flushed commit holds."""
    return {f"c/{i}": f"committed {i} ".encode() * 8 for i in range(keys)}


def data_files(path: Path, keys: int, batches: int) -> list[bytes]:
    """The data file after the flushed commit, then after each staging transaction."""
    with vs.Repository.create(vs.lmdb_storage(path)) as repo:
        session = repo.writable_session("main")
        session.set_values(list(committed_values(keys).items()))
        session.commit("flushed before it returns")
    files = [(path / "data.mdb").read_bytes()]
    with vs.Repository.open(vs.lmdb_storage(path)) as repo:
        session = repo.writable_session("main")
        for n in range(batches):
            session.set_values([(f"s/{n}/{i}", f"staged {n} {i} ".encode() * 8)
                                for i in range(200)])
            files.append((path / "data.mdb").read_bytes())
    return files


def changed_pages(before: bytes, after: bytes) -> list[int]:
    size = max(len(before), len(after))
    return [p for p in range(size // PAGE)
            if before[p * PAGE:(p + 1) * PAGE] != after[p * PAGE:(p + 1) * PAGE]]


def cut_images(before: bytes, after: bytes, pages: list[int]) -> list[bytes]:
    """``before`` with the first 1, 2, … of ``pages`` (file order) taken from ``after``."""
    image = bytearray(before.ljust(max(len(before), len(after)), b"\0"))
    images = []
    for page in pages:
        image[page * PAGE:(page + 1) * PAGE] = after[page * PAGE:(page + 1) * PAGE]
        images.append(bytes(image))
    return images


def _check(image: str, keys: int) -> None:
    """In a process of its own: print what became of the committed snapshot."""
    values = committed_values(keys)
    try:
        with vs.Repository.open(vs.lmdb_storage(image, read_only=True)) as repo:
            storage = repo.readonly_session("main").store.storage
            wrong = sum(storage.get(key) != value for key, value in values.items())
            report = repo.verify()
    except vs.VersionStoreError as exc:
        print(f"unreadable ({type(exc).__name__})")
        return
    print(f"{wrong} committed values wrong" if wrong
          else "intact" if report.ok else "verify reports problems")


def _outcome(scratch: Path, image: bytes, keys: int) -> str:
    target = scratch / "cut"
    target.mkdir()
    try:
        (target / "data.mdb").write_bytes(image)
        done = subprocess.run([sys.executable, "-m", "benchmarks.writeback_order", "--check",
                               str(target), "--keys", str(keys)],
                              capture_output=True, text=True, check=False)
    finally:
        shutil.rmtree(target)
    if done.returncode != 0:
        return f"the reading process died (exit {done.returncode}, an LMDB assertion)"
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--check", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.check:
        _check(args.check, args.keys)
        return
    with tempfile.TemporaryDirectory() as directory:
        scratch = Path(directory)
        files = data_files(scratch / "repo", args.keys, args.batches)
        unordered = cut_images(files[0], files[-1], changed_pages(files[0], files[-1]))
        ordered = [image for before, after in zip(files, files[1:], strict=False)
                   for image in cut_images(before, after, [p for p in changed_pages(before, after)
                                                      if p not in HEADER_PAGES])]
        for label, images in (("without ordering", unordered), ("with ordering", ordered)):
            outcomes = Counter(_outcome(scratch, image, args.keys) for image in images)
            print(f"{label}: {len(images)} cuts")
            for outcome, count in outcomes.most_common():
                print(f"  {count:4d}: {outcome}")


if __name__ == "__main__":
    main()

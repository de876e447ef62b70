"""Which directory an LMDB environment really lives in, and files LMDB cannot coordinate.

LMDB coordinates every process that uses a data file through the lock file
beside it: opening a directory, it uses ``data.mdb`` and ``lock.mdb`` there
(LMDB's documentation of ``mdb_env_open``; ``lock.mdb`` holds the writer
mutex, the reader table and the id of the last transaction, which readers
use to pick the current meta page). It never asks whether the data file is
also reached from another directory. If it is, processes opening it through
the two directories use two lock files: two writers both hold "the" write
lock, and a writer cannot see the other directory's readers, so it reuses
pages they are reading. Nothing reports this; the file is silently damaged.

So every open goes through ``environment_directory``, which decides the
directory to give LMDB, and ``check_files``, which refuses what LMDB cannot
coordinate:

* **``data.mdb`` a symlink to a file named ``data.mdb``** (the data file put
  on another disk): the target's own directory is opened, so its
  ``lock.mdb`` is used, exactly as by a process (or LMDB's own ``mdb_stat``,
  ``mdb_copy``) opening that directory directly. Chains of links are followed
  to the end. The ``lock.mdb`` beside the link, if any, is never used.
* **A symlink to a file of another name** is refused. Such a file has no
  ``lock.mdb`` that a process opening a directory would use; LMDB's
  ``MDB_NOSUBDIR`` convention (lock file ``<name>-lock``) would add a second
  lock file for files of that shape, used only by programs opening the file
  that way, and renaming it to or from ``data.mdb`` (as a restore does) would
  move it between lock files. One rule — the lock file is the ``lock.mdb``
  beside the file named ``data.mdb`` — keeps every path on one lock file.
* **A ``data.mdb`` with more than one hard link** (``cp -al``, ``ln``) is
  refused: a hard link has no target to follow, every name is as real as the
  other, and LMDB cannot coordinate processes that reach one file through two
  directories. Copy the file instead (``cp``; LMDB's ``mdb_copy``).
* **A ``lock.mdb`` that is a symlink or has another hard link** is refused:
  shared with an environment of another data file, its transaction id would
  make readers of one file pick the other's meta page.
* **A process still using the lock file beside the link** (it opened the
  link's directory with an older release, or another LMDB program) is named,
  and the open refused: it coordinates through that lock file, everyone else
  through the target's (``link_lock_holder``). A process that opens the
  link's directory that way *after* this one opened the target cannot be
  seen from here.
* **Dangling links, link loops, and a ``data.mdb`` or ``lock.mdb`` that is
  not a regular file** (a directory, a device, a FIFO) are refused with the
  path named, instead of an error from deep inside LMDB (or a file created
  at a dangling link's target, which is what ``open(O_CREAT)`` does).

The checks are made when an environment is opened (and reopened, after a
fork); a link made while it is open is seen at the next open. Without the
lock file (``lock=False``: one process, or a read-only mount) nothing is
coordinated anyway, so only the rules for ``data.mdb``'s symlinks and file
type apply then. Programs that do not make these checks (other LMDB
programs, older releases) can still open a linked file under a second lock
file; that is why hard links are refused rather than tolerated.

This module does not import ``lmdb``; ``zarrstore.lmdb_environment`` calls it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct

import attrs

from zarrstore.errors import StorageIOError

__all__ = ["DATA", "LOCK", "EnvironmentFiles", "check_files", "environment_directory",
           "link_lock_holder"]

#: The names LMDB gives the data file and the lock file in an environment's directory.
DATA = "data.mdb"
LOCK = "lock.mdb"

_COPY_INSTEAD = ("LMDB cannot coordinate processes that reach one data file through two "
                 "directories (each would use its own lock.mdb, and writers would overwrite "
                 "pages the others' readers use)")


@attrs.frozen
class EnvironmentFiles:
    """The identities (``st_dev``, ``st_ino``) of a directory's data and lock files.

    ``None`` for a file that does not exist (yet).
    """

    data: tuple[int, int] | None
    lock: tuple[int, int] | None


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageIOError(f"cannot examine {path}: {exc.strerror}") from exc


def _link_target(link: str) -> tuple[str, os.stat_result]:
    """The file at the end of the symlink ``link`` (every link followed), and its ``stat``.

    Raises:
        StorageIOError: the link dangles, loops, or cannot be followed.
    """
    try:
        found = os.stat(link)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise StorageIOError(
                f"{link} is a symlink to {os.readlink(link)!r}, which does not exist; "
                "fix or remove the link (LMDB would create a new data file at its target)"
            ) from exc
        if exc.errno == errno.ELOOP:
            raise StorageIOError(f"{link} is a symlink that loops; fix or remove it") from exc
        raise StorageIOError(f"cannot follow the symlink {link}: {exc.strerror}") from exc
    return os.path.realpath(link), found


def environment_directory(path: str | os.PathLike[str]) -> str:
    """The directory LMDB must open for the environment at ``path`` (absolute, resolved).

    ``path`` itself, symlinks resolved, unless its ``data.mdb`` is a symlink:
    then the directory of the link's final target, which must be a regular
    file named ``data.mdb`` (the module docstring says why).

    Raises:
        StorageIOError: ``data.mdb`` is a dangling or looping symlink, or a
            symlink to something other than a regular file named ``data.mdb``.
    """
    directory = os.path.realpath(path)
    data = os.path.join(directory, DATA)
    found = _lstat(data)
    if found is None or not stat.S_ISLNK(found.st_mode):
        return directory
    target, found = _link_target(data)
    if not stat.S_ISREG(found.st_mode):
        raise StorageIOError(
            f"{data} is a symlink to {target}, which is not a regular file; "
            "an LMDB data file must be one")
    if os.path.basename(target) != DATA:
        raise StorageIOError(
            f"{data} is a symlink to {target}, which is not named {DATA}: LMDB coordinates "
            f"processes through the {LOCK} beside a file named {DATA}, and a file of another "
            f"name has none. Move it into a directory of its own as {DATA} and point the link "
            "there")
    return os.path.dirname(target)


#: ``struct flock`` on 64-bit Linux: type, whence, start, len, pid (and padding).
_FLOCK = "hhqqi4x"


def link_lock_holder(path: str | os.PathLike[str]) -> int | None:
    """A process using the ``lock.mdb`` beside a symlinked ``data.mdb`` in ``path``; its id.

    ``None`` when ``data.mdb`` in ``path`` is no symlink, or nobody has that
    lock file open. Every LMDB opener holds a shared record lock on the lock
    file's first byte while it has the environment open (``mdb_env_excl_lock``
    and ``mdb_env_share_locks`` in LMDB's ``mdb.c``); ``F_GETLK`` names one
    holder. Never call it while this process has the environment in ``path``
    itself open: closing any descriptor of a file drops every POSIX lock the
    process holds on it.
    """
    directory = os.path.realpath(path)
    found = _lstat(os.path.join(directory, DATA))
    if found is None or not stat.S_ISLNK(found.st_mode):
        return None
    try:
        fd = os.open(os.path.join(directory, LOCK), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None  # absent, a symlink (nobody locks through it: LMDB would refuse), unreadable
    try:
        probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 1, 0)
        kind, _, _, _, pid = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, probe))
    except OSError:
        return None
    finally:
        os.close(fd)
    return None if kind == fcntl.F_UNLCK else pid


def check_files(directory: str, *, locked: bool = True) -> EnvironmentFiles:
    """Refuse ``directory``'s ``data.mdb`` and ``lock.mdb`` if LMDB cannot coordinate them.

    ``directory`` is one ``environment_directory`` returned. ``data.mdb`` must
    be a regular file (or absent), not a symlink; with ``locked`` (LMDB uses
    the lock file) it must have no second hard link, and ``lock.mdb`` must be
    a regular file (or absent) with neither a symlink nor a second hard link.
    Without the lock file (``locked=False``) LMDB coordinates nothing, and
    neither hard links nor ``lock.mdb`` are looked at.

    Raises:
        StorageIOError: naming the file and what to do (the module docstring).
    """
    data = os.path.join(directory, DATA)
    lock = os.path.join(directory, LOCK)
    found_data, found_lock = _lstat(data), _lstat(lock)
    if found_data is not None:
        if stat.S_ISLNK(found_data.st_mode):  # changed since environment_directory
            raise StorageIOError(f"{data} became a symlink while being opened; open it again")
        if not stat.S_ISREG(found_data.st_mode):
            raise StorageIOError(f"{data} is not a regular file; an LMDB data file must be one")
        if locked and found_data.st_nlink > 1:
            raise StorageIOError(
                f"{data} has {found_data.st_nlink} hard links (made by ln or cp -al): "
                f"{_COPY_INSTEAD}. Give each directory its own copy (cp, or LMDB's mdb_copy) "
                "instead of a link")
    if locked and found_lock is not None:
        if stat.S_ISLNK(found_lock.st_mode):
            raise StorageIOError(
                f"{lock} is a symlink (to {os.readlink(lock)!r}); LMDB's lock file must be a "
                f"regular file of its own beside {DATA}. Remove the link while no process "
                "has the environment open (LMDB creates a new lock file)")
        if not stat.S_ISREG(found_lock.st_mode):
            raise StorageIOError(
                f"{lock} is not a regular file; remove it while no process has the "
                "environment open (LMDB creates a new lock file)")
        if found_lock.st_nlink > 1:
            raise StorageIOError(
                f"{lock} has {found_lock.st_nlink} hard links: a lock file shared with "
                "another environment mixes up their writers and readers. Remove it while no "
                "process has the environment open (LMDB creates a new lock file)")
    return EnvironmentFiles(
        data=None if found_data is None else (found_data.st_dev, found_data.st_ino),
        lock=None if found_lock is None else (found_lock.st_dev, found_lock.st_ino))

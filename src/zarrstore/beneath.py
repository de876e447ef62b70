"""Paths beneath a root directory, walked by file descriptors, never following a symlink.

The concept under ``FilesystemStore``'s "no escape" guarantee. Resolving a
path and then opening it leaves a window in which another process can swap a
directory for a symlink to elsewhere; so nothing here ever opens a path. A
walk starts from a descriptor of the root and opens each directory relative
to its parent's descriptor with ``O_NOFOLLOW`` (``openat``); the last
component is then acted on relative to its directory (``openat``,
``fstatat``, ``mkdirat``, and the caller's ``renameat`` / ``unlinkat``). A
symlink met anywhere is refused with ``InvalidKeyError``, so every descriptor
handed out names something inside the root, whatever changes concurrently.
(Linux's ``openat2(RESOLVE_BENEATH)`` would do the walk in one call; Python's
standard library does not expose it.)

It sits beside ``keys`` in the layering: it knows only ``zarrstore.errors``.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from zarrstore.errors import InvalidKeyError

__all__ = [
    "CREATE",
    "DIRECTORY",
    "READ",
    "SYMLINK_REFUSED",
    "InTheWay",
    "Missing",
    "entries",
    "lstat_at",
    "open_directory",
    "open_file",
    "unlink_quietly",
]

#: ``open`` flags for a directory on the walk: never through a symlink.
DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: ``open`` flags to read a file: a symlink fails with ``ELOOP``.
READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
#: ``open`` flags to create a new file (a temporary one) that nothing else has.
CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: Why a key through a symlink is refused (the ``InvalidKeyError`` rule).
SYMLINK_REFUSED = (
    "passes through a symlink (the store never follows symlinks, so none can lead outside)"
)
#: How often one step of a walk looks again when the entry changes under it.
_RETRIES = 20
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)


class Missing(Exception):
    """Nothing is there: a directory on the way is missing (or, when reading, is a file)."""


class InTheWay(Exception):
    """A component that must be a directory is a file (``"a"`` when storing ``"a/b"``)."""


def _open_root(root: str, *, create: bool) -> int:
    try:
        return os.open(root, DIRECTORY)
    except FileNotFoundError:
        if not create:
            raise Missing from None
    os.makedirs(root, exist_ok=True)  # the root itself is the caller's, trusted path
    return os.open(root, DIRECTORY)


def open_directory(root: str, parts: Sequence[str], key: str, *, create: bool = False) -> int:
    """A descriptor of the directory ``root/parts...``, every step taken with ``O_NOFOLLOW``.

    The caller closes it. With ``create``, missing directories (and the root)
    are made on the way (``mkdirat``).

    Args:
        root: the trusted root directory (an absolute, resolved path).
        parts: the directory components below it.
        key: the key being served, for the error message.
        create: make missing directories.

    Raises:
        InvalidKeyError: a component is a symlink.
        Missing: a component is missing (and not ``create``), or is a file
            when reading; also when a concurrent erase removes a directory
            while it is being made.
        InTheWay: a component is a file, when ``create``.
    """
    fd = _open_root(root, create=create)
    try:
        for name in parts:
            child = _open_child(fd, name, key, create=create)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_child(parent: int, name: str, key: str, *, create: bool) -> int:
    for _ in range(_RETRIES):
        try:
            return os.open(name, DIRECTORY, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise Missing from None
            try:
                os.mkdir(name, 0o777, dir_fd=parent)
            except FileExistsError:
                pass  # made by a concurrent writer (or a file or link: the open says which)
            except FileNotFoundError:
                raise Missing from None  # ``parent`` itself was pruned
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            info = lstat_at(parent, name)
            if info is None or stat.S_ISDIR(info.st_mode):
                continue  # it changed since the open: look again
            if stat.S_ISLNK(info.st_mode):
                raise InvalidKeyError(key, SYMLINK_REFUSED) from exc
            if create:
                raise InTheWay(f"{name!r} is a file") from exc
            raise Missing from None
    raise Missing


def open_file(directory: int, name: str, key: str, flags: int) -> int | None:
    """Open ``name`` in ``directory`` with ``flags`` (holding ``O_NOFOLLOW``); caller closes it.

    Returns:
        The descriptor; ``None`` only when ``O_DIRECT`` was asked for and the
        filesystem refuses it (``EINVAL``), for the caller to open buffered.

    Raises:
        InvalidKeyError: ``name`` is a symlink.
        Missing: nothing is there.
    """
    try:
        return os.open(name, flags, dir_fd=directory)
    except (FileNotFoundError, NotADirectoryError):
        raise Missing from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidKeyError(key, SYMLINK_REFUSED) from exc
        if exc.errno == errno.EINVAL and flags & _O_DIRECT:
            return None
        if exc.errno == errno.EISDIR:
            raise Missing from None
        raise


def lstat_at(directory: int, name: str) -> os.stat_result | None:
    """``fstatat(directory, name, AT_SYMLINK_NOFOLLOW)``; ``None`` if nothing is there."""
    try:
        return os.stat(name, dir_fd=directory, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None


def entries(directory: int, *, skip: Callable[[str], Any]) -> Iterator[tuple[str, str]]:
    """``(name, "file" | "dir")`` for each entry of ``directory``.

    Symlinks and anything else that is neither a regular file nor a directory
    are left out, and so are names for which ``skip(name)`` is true.
    """
    try:
        found = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in found:
        if skip(entry.name):
            continue
        if entry.is_dir(follow_symlinks=False):
            yield entry.name, "dir"
        elif entry.is_file(follow_symlinks=False):
            yield entry.name, "file"


def unlink_quietly(directory: int, name: str) -> None:
    """Remove ``name`` from ``directory`` (``unlinkat``) if it is there; never raises."""
    try:
        os.unlink(name, dir_fd=directory)
    except OSError:
        pass

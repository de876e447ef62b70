"""``FilesystemStore``: one file per key under a root directory.

Guarantees:

* **No escape, even under a race.** ``..`` segments and absolute keys are
  refused by the key validator. Every operation then walks from a file
  descriptor of ``root``, one component at a time, opening each directory
  relative to its parent with ``O_NOFOLLOW`` (``openat``) and acting on the
  last component relative to its directory (``openat``, ``fstatat``,
  ``unlinkat``, ``renameat``, ``mkdirat``). Symlinks are never followed: a
  key that passes through one raises ``InvalidKeyError``, and listings skip
  them. So no concurrent swap of a directory for a symlink can make a read,
  write, erase or listing reach outside the root; there is no window between
  checking a path and opening it, because no path is ever re-resolved
  (``zarrstore.beneath`` does the walking).
* **Atomic writes.** A value is written to a temporary file in the target
  directory and renamed over the key, so a reader (or a process killed
  mid-write) sees the old value or the new one, never a torn one.
  ``set_if_absent`` hard-links its temporary file to the key instead, which
  fails if the key exists: an atomic create, across processes too. With
  ``durable=True`` the file and its directory are also fsynced, which
  protects against power loss, not only process death.
* **Stable listings.** Keys are listed sorted; temporary files never appear.
* **Direct I/O.** ``direct_io=True`` bypasses the page cache with ``O_DIRECT``
  on Linux (aligned buffers, as the seed's filesystem store does) and falls
  back to buffered I/O where the platform or filesystem refuses it.

A filesystem cannot hold both ``"a"`` and ``"a/b"`` (``a`` would be a file
and a directory); such a write raises ``StorageIOError``.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import stat
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, override

from zarrstore.beneath import (
    CREATE,
    DIRECTORY,
    READ,
    SYMLINK_REFUSED,
    InTheWay,
    Missing,
    entries,
    lstat_at,
    open_directory,
    open_file,
    unlink_quietly,
)
from zarrstore.errors import InvalidKeyError, StorageIOError
from zarrstore.keys import name_max, refuse_long_names
from zarrstore.protocol import DirListing, Storage, ValueInfo
from zarrstore.ranges import ByteRange, resolve
from zarrstore.zarr_bridge import ZarrStore

__all__ = ["FilesystemStorage", "FilesystemStore", "direct_io_supported"]

TEMP_MARK = ".zarrstore-tmp-"
_TEMP_NAME = re.compile(r"\.zarrstore-tmp-[0-9a-f]{32}")
_ALIGN = 4096
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)
#: How often a write retries when a concurrent erase prunes its directory under it.
_PRUNED_RETRIES = 20

T = TypeVar("T")
#: ``link`` errors of a filesystem that has no hard links (``set_if_absent`` then
#: creates the key exclusively instead).
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})


def direct_io_supported() -> bool:
    """Whether this platform has ``O_DIRECT`` at all (a filesystem may still refuse it)."""
    return _O_DIRECT != 0


def _aligned_up(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class FilesystemStorage(Storage):
    """The storage behind ``FilesystemStore``."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        read_only: bool = False,
        direct_io: bool = False,
        durable: bool = False,
    ) -> None:
        super().__init__(read_only=read_only)
        self.root = Path(os.path.realpath(root))
        self.direct_io = direct_io and direct_io_supported()
        self.durable = durable
        self._root_text = str(self.root)
        self._name_max = name_max(self.root)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, FilesystemStorage)
            and self.root == other.root
            and self.read_only == other.read_only
        )

    def __hash__(self) -> int:
        return hash(self.root)

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "writable"
        return f"FilesystemStorage({self._root_text!r}, {mode})"

    def __getstate__(self) -> dict[str, Any]:
        return {
            "root": self._root_text,
            "read_only": self._read_only,
            "direct_io": self.direct_io,
            "durable": self.durable,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        root = state.pop("root")
        self.__init__(root, **state)  # type: ignore[misc]

    # -- walking from the root, never following a symlink ------------------------------

    def _split(self, key: str) -> tuple[list[str], str]:
        """The directory components of ``key`` and its last component.

        Raises:
            InvalidKeyError: the last component is a temporary file's name, or a
                component is longer than the filesystem allows (``NAME_MAX``).
        """
        *parents, name = key.split("/")
        if _TEMP_NAME.fullmatch(name):
            raise InvalidKeyError(key, "names of in-flight temporary files are reserved")
        refuse_long_names(key, [*parents, name], self._name_max)
        return parents, name

    def _open_dir(self, key: str, parts: Sequence[str], *, create: bool = False) -> int:
        """A descriptor of ``root/parts...``, walked by ``beneath.open_directory``."""
        return open_directory(self._root_text, parts, key, create=create)

    # -- reads --------------------------------------------------------------------

    @override
    def _get(self, key: str, byte_range: ByteRange | None) -> bytes | None:
        parents, name = self._split(key)
        try:
            directory = self._open_dir(key, parents)
        except Missing:
            return None
        try:
            fd = open_file(directory, name, key, READ | _O_DIRECT) if self.direct_io else None
            direct = fd is not None
            if fd is None:  # buffered, or the filesystem refuses O_DIRECT (tmpfs)
                fd = open_file(directory, name, key, READ)
        except Missing:
            return None
        finally:
            os.close(directory)
        assert fd is not None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None  # a directory of other keys is not a key
            return _read_direct(fd, byte_range) if direct else _read_buffered(fd, byte_range)
        finally:
            os.close(fd)

    def _file_info(self, key: str) -> os.stat_result | None:
        parents, name = self._split(key)
        try:
            directory = self._open_dir(key, parents)
        except Missing:
            return None
        try:
            info = lstat_at(directory, name)
        finally:
            os.close(directory)
        if info is None or stat.S_ISDIR(info.st_mode):
            return None
        if stat.S_ISLNK(info.st_mode):
            raise InvalidKeyError(key, SYMLINK_REFUSED)
        return info if stat.S_ISREG(info.st_mode) else None

    @override
    def _size(self, key: str) -> int | None:
        info = self._file_info(key)
        return None if info is None else info.st_size

    @override
    def _stat(self, key: str) -> ValueInfo | None:
        # The ETag is Apache's recipe (mtime, size, inode): every write here renames a
        # new file into place, so even a same-length rewrite within one clock tick
        # changes the inode, and so the ETag.
        info = self._file_info(key)
        if info is None:
            return None
        return ValueInfo(
            size=info.st_size,
            etag=f"{info.st_mtime_ns:x}-{info.st_size:x}-{info.st_ino:x}",
            last_modified=datetime.fromtimestamp(info.st_mtime_ns / 1e9, UTC),
        )

    # -- writes -------------------------------------------------------------------

    @override
    def _set(self, key: str, value: bytes) -> None:
        self._store(key, value, self._set_in)

    @override
    def _set_if_absent(self, key: str, value: bytes) -> bool:
        return self._store(key, value, self._create_in)

    def _store(self, key: str, value: bytes,
               store_in: Callable[[int, str, str, bytes], T]) -> T:
        """Open (making) ``key``'s directory and ``store_in`` it; again if it was pruned."""
        parents, name = self._split(key)
        for attempt in range(_PRUNED_RETRIES):
            try:
                directory = self._open_dir(key, parents, create=True)
            except InTheWay as exc:
                raise StorageIOError(
                    f"cannot store {key!r}: a parent of it is already a key ({exc})"
                ) from exc
            except Missing:  # a concurrent erase pruned a directory as it was made
                continue
            try:
                return store_in(directory, key, name, value)
            except Missing:
                if attempt == _PRUNED_RETRIES - 1:
                    raise StorageIOError(
                        f"cannot store {key!r}: its directory keeps being removed"
                    ) from None
            finally:
                os.close(directory)
        raise StorageIOError(f"cannot store {key!r}: its directory keeps being removed")

    def _create_in(self, directory: int, key: str, name: str, value: bytes) -> bool:
        """Store ``value`` at ``name`` only if nothing is there: ``False`` if something was.

        The value is written to a temporary file and hard-linked to ``name``
        (``linkat``, which fails if ``name`` exists), so the create is atomic
        against every writer, other processes included, as zarr's
        ``LocalStore.set_if_not_exists`` (an exclusive open) is, and a reader
        never sees a partly written value. A look-then-write let two racing
        callers both report success, the later value replacing the earlier.
        On a filesystem without hard links (``_NO_HARD_LINKS``) the key is
        created exclusively instead (still one winner; a reader may see the
        value partly written): ``link`` raised a bare ``PermissionError`` there.

        Raises:
            StorageIOError: ``name`` is a directory of other keys.
            InvalidKeyError: ``name`` is a symlink.
        """
        temp = self._write_temp(directory, value)
        try:
            try:
                os.link(temp, name, src_dir_fd=directory, dst_dir_fd=directory,
                        follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINKS:
                    raise
                # A filesystem without hard links (FAT, exFAT, many FUSE and SMB
                # mounts): an exclusive create of the key itself, as zarr's
                # LocalStore does. Still one winner; a reader may see the value
                # partly written meanwhile.
                self._write_file(directory, name, value)
        except FileExistsError:
            info = lstat_at(directory, name)
            if info is not None and stat.S_ISLNK(info.st_mode):
                raise InvalidKeyError(key, SYMLINK_REFUSED) from None
            if info is not None and stat.S_ISDIR(info.st_mode):
                raise StorageIOError(
                    f"cannot store {key!r}: it is already a directory of other keys"
                ) from None
            return False
        except FileNotFoundError:  # the directory, temp file and all, was removed under us
            raise Missing from None
        finally:
            unlink_quietly(directory, temp)
        if self.durable:
            os.fsync(directory)
        return True

    def _set_in(self, directory: int, key: str, name: str, value: bytes) -> None:
        """Write ``value`` to a temporary file in ``directory``, then rename it over ``name``."""
        info = lstat_at(directory, name)
        if info is not None and stat.S_ISLNK(info.st_mode):
            raise InvalidKeyError(key, SYMLINK_REFUSED)
        temp = self._write_temp(directory, value)
        try:
            # renameat replaces whatever ``name`` is now (even a symlink swapped in)
            # inside this directory; it never follows a link.
            os.replace(temp, name, src_dir_fd=directory, dst_dir_fd=directory)
        except FileNotFoundError:  # the directory, temp file and all, was removed under us
            raise Missing from None
        except OSError as exc:
            unlink_quietly(directory, temp)
            if isinstance(exc, IsADirectoryError | NotADirectoryError) or exc.errno in (
                errno.EISDIR,
                errno.ENOTEMPTY,
                errno.EEXIST,
            ):
                raise StorageIOError(
                    f"cannot store {key!r}: it is already a directory of other keys"
                ) from exc
            raise
        if self.durable:
            os.fsync(directory)

    def _write_temp(self, directory: int, value: bytes) -> str:
        """Write ``value`` to a new temporary file in ``directory``; its name.

        Raises:
            Missing: the directory was pruned after it was opened.
        """
        temp = f"{TEMP_MARK}{uuid.uuid4().hex}"
        try:
            self._write_file(directory, temp, value)
        except FileNotFoundError:
            raise Missing from None
        return temp

    def _write_file(self, directory: int, name: str, value: bytes) -> None:
        if self.direct_io and value:
            try:
                fd = os.open(name, CREATE | _O_DIRECT, 0o644, dir_fd=directory)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
            else:
                try:
                    with mmap.mmap(-1, _aligned_up(len(value))) as buffer:
                        buffer[: len(value)] = value
                        os.pwritev(fd, [buffer], 0)
                    os.ftruncate(fd, len(value))
                    if self.durable:
                        os.fsync(fd)
                except BaseException:
                    os.close(fd)
                    unlink_quietly(directory, name)
                    raise
                os.close(fd)
                return
        fd = os.open(name, CREATE, 0o644, dir_fd=directory)
        try:
            view = memoryview(value)
            while view:
                view = view[os.write(fd, view) :]
            if self.durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            unlink_quietly(directory, name)
            raise
        os.close(fd)

    @override
    def _erase(self, key: str) -> None:
        parents, name = self._split(key)
        try:
            directory = self._open_dir(key, parents)
        except Missing:
            return
        try:
            info = lstat_at(directory, name)
            if info is None or stat.S_ISDIR(info.st_mode):
                return  # nothing there, or a directory of other keys: not a key
            if stat.S_ISLNK(info.st_mode):
                raise InvalidKeyError(key, SYMLINK_REFUSED)
            try:
                os.unlink(name, dir_fd=directory)  # unlinkat: removes a swapped-in link itself
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return
        finally:
            os.close(directory)
        self._prune(key, parents)

    def _prune(self, key: str, parents: list[str]) -> None:
        """Remove now-empty directories up to (not including) the root.

        Each is removed relative to a descriptor of its parent (``unlinkat``
        with ``AT_REMOVEDIR``), which only ever removes an empty directory.
        """
        for depth in range(len(parents), 0, -1):
            try:
                parent = self._open_dir(key, parents[: depth - 1])
            except (Missing, InvalidKeyError):
                return
            try:
                os.rmdir(parents[depth - 1], dir_fd=parent)
            except OSError:
                return
            finally:
                os.close(parent)

    @override
    def _erase_prefix(self, prefix: str) -> None:
        for key in list(self._list_prefix(prefix)):
            self._erase(key)

    # -- listing ------------------------------------------------------------------

    def _open_prefix(self, prefix: str) -> int | None:
        parts = prefix[:-1].split("/") if prefix else []
        refuse_long_names(prefix, parts, self._name_max)
        try:
            return self._open_dir(prefix, parts)
        except Missing:
            return None

    @override
    def _list_prefix(self, prefix: str) -> Iterator[str]:
        top = self._open_prefix(prefix)
        if top is None:
            return iter(())
        keys: list[str] = []
        stack = [(top, prefix)]
        while stack:
            directory, base = stack.pop()
            try:
                for name, kind in entries(directory, skip=_TEMP_NAME.fullmatch):
                    if kind == "file":
                        keys.append(base + name)
                        continue
                    try:
                        child = os.open(name, DIRECTORY, dir_fd=directory)
                    except OSError:  # removed or swapped for a link since it was listed
                        continue
                    stack.append((child, f"{base}{name}/"))
            finally:
                os.close(directory)
        keys.sort()
        return iter(keys)

    @override
    def _list_dir(self, prefix: str) -> DirListing:
        directory = self._open_prefix(prefix)
        if directory is None:
            return DirListing()
        keys: list[str] = []
        prefixes: list[str] = []
        try:
            for name, kind in entries(directory, skip=_TEMP_NAME.fullmatch):
                if kind == "file":
                    keys.append(prefix + name)
                else:
                    prefixes.append(f"{prefix}{name}/")
        finally:
            os.close(directory)
        return DirListing(keys=tuple(sorted(keys)), prefixes=tuple(sorted(prefixes)))

    @override
    def _with_read_only(self, read_only: bool) -> FilesystemStorage:
        return FilesystemStorage(
            self.root, read_only=read_only, direct_io=self.direct_io, durable=self.durable
        )


def _read_buffered(fd: int, byte_range: ByteRange | None) -> bytes:
    start, stop = resolve(byte_range, os.fstat(fd).st_size)
    chunks: list[bytes] = []
    offset = start
    while offset < stop:
        chunk = os.pread(fd, stop - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _read_direct(fd: int, byte_range: ByteRange | None) -> bytes:
    start, stop = resolve(byte_range, os.fstat(fd).st_size)
    if stop <= start:
        return b""
    first = start // _ALIGN * _ALIGN
    with mmap.mmap(-1, _aligned_up(stop - first)) as buffer:
        got = os.preadv(fd, [buffer], first)
        return bytes(buffer[start - first : min(stop, first + got) - first])


class FilesystemStore(ZarrStore):
    """A zarr store of one file per key under ``root``.

    Args:
        root: the directory holding the store (created on first write).
        read_only: refuse every write with ``ReadOnlyError``.
        direct_io: use ``O_DIRECT`` on Linux, falling back cleanly elsewhere.
        durable: fsync every write and its directory (survives power loss).
    """

    storage: FilesystemStorage

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        read_only: bool = False,
        direct_io: bool = False,
        durable: bool = False,
    ) -> None:
        super().__init__(
            FilesystemStorage(root, read_only=read_only, direct_io=direct_io, durable=durable)
        )

    @property
    def root(self) -> Path:
        """The directory that holds the store."""
        return self.storage.root

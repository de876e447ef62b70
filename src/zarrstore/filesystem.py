"""``FilesystemStore``: one file per key under a root directory.

Guarantees:

* **No escape.** Every key resolves to a path inside ``root``; ``..``
  segments and absolute keys are refused by the key validator, and a symlink
  that leads outside the root is refused here, for reads and writes alike.
* **Atomic writes.** A value is written to a temporary file in the target
  directory and renamed over the key, so a reader (or a process killed
  mid-write) sees the old value or the new one, never a torn one. With
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
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, override

from zarrstore.errors import InvalidKeyError, StorageIOError
from zarrstore.protocol import DirListing, Storage
from zarrstore.ranges import ByteRange, resolve
from zarrstore.zarr_bridge import ZarrStore

__all__ = ["FilesystemStorage", "FilesystemStore", "direct_io_supported"]

TEMP_MARK = ".zarrstore-tmp-"
_TEMP_NAME = re.compile(r"\.zarrstore-tmp-[0-9a-f]{32}")
_ALIGN = 4096
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)


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

    # -- paths ------------------------------------------------------------------

    def _path(self, key: str) -> str:
        if _TEMP_NAME.fullmatch(key.rpartition("/")[2]):
            raise InvalidKeyError(key, "names of in-flight temporary files are reserved")
        path = os.path.join(self._root_text, key)
        real = os.path.realpath(path)
        if real != path and not real.startswith(self._root_text + os.sep):
            raise InvalidKeyError(key, "resolves outside the store root (symlink)")
        return path

    # -- reads --------------------------------------------------------------------

    @override
    def _get(self, key: str, byte_range: ByteRange | None) -> bytes | None:
        path = self._path(key)
        try:
            if self.direct_io:
                return self._read_direct(path, byte_range)
            with open(path, "rb") as f:
                if byte_range is None:
                    return f.read()
                start, stop = resolve(byte_range, os.fstat(f.fileno()).st_size)
                f.seek(start)
                return f.read(stop - start)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except IsADirectoryError:
            return None

    def _read_direct(self, path: str, byte_range: ByteRange | None) -> bytes:
        try:
            fd = os.open(path, os.O_RDONLY | _O_DIRECT | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            with open(path, "rb") as f:  # the filesystem refuses O_DIRECT (tmpfs)
                data = f.read()
            start, stop = resolve(byte_range, len(data))
            return data[start:stop]
        try:
            start, stop = resolve(byte_range, os.fstat(fd).st_size)
            if stop <= start:
                return b""
            first = start // _ALIGN * _ALIGN
            with mmap.mmap(-1, _aligned_up(stop - first)) as buffer:
                got = os.preadv(fd, [buffer], first)
                return bytes(buffer[start - first : min(stop, first + got) - first])
        finally:
            os.close(fd)

    @override
    def _size(self, key: str) -> int | None:
        try:
            stat = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return stat.st_size if not os.path.isdir(self._path(key)) else None

    # -- writes -------------------------------------------------------------------

    @override
    def _set(self, key: str, value: bytes) -> None:
        path = self._path(key)
        directory = os.path.dirname(path)
        temp = os.path.join(directory, f"{TEMP_MARK}{uuid.uuid4().hex}")
        for attempt in (1, 2):
            try:
                os.makedirs(directory, exist_ok=True)
                self._write_file(temp, value)
                break
            except FileNotFoundError:
                # A concurrent erase pruned the directory between makedirs and open.
                if attempt == 2:
                    raise
            except (NotADirectoryError, FileExistsError) as exc:
                raise StorageIOError(
                    f"cannot store {key!r}: a parent of it is already a key ({exc})"
                ) from exc
        try:
            os.replace(temp, path)
        except OSError as exc:
            _unlink_quietly(temp)
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
            _fsync_directory(directory)

    def _write_file(self, path: str, value: bytes) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        if self.direct_io and value:
            try:
                fd = os.open(path, flags | _O_DIRECT, 0o644)
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
                finally:
                    os.close(fd)
                return
        fd = os.open(path, flags, 0o644)
        try:
            view = memoryview(value)
            while view:
                view = view[os.write(fd, view) :]
            if self.durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink_quietly(path)
            raise
        os.close(fd)

    @override
    def _erase(self, key: str) -> None:
        path = self._path(key)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        except IsADirectoryError:
            return
        self._prune(os.path.dirname(path))

    def _prune(self, directory: str) -> None:
        """Remove now-empty directories up to (not including) the root."""
        while directory != self._root_text and directory.startswith(self._root_text):
            try:
                os.rmdir(directory)
            except OSError:
                return
            directory = os.path.dirname(directory)

    @override
    def _erase_prefix(self, prefix: str) -> None:
        for key in list(self._list_prefix(prefix)):
            self._erase(key)

    # -- listing ------------------------------------------------------------------

    @override
    def _list_prefix(self, prefix: str) -> Iterator[str]:
        top = self._path(prefix[:-1]) if prefix else self._root_text
        keys: list[str] = []
        stack = [(top, prefix)]
        while stack:
            directory, base = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                if _TEMP_NAME.fullmatch(entry.name):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, f"{base}{entry.name}/"))
                elif entry.is_file():
                    keys.append(base + entry.name)
        keys.sort()
        return iter(keys)

    @override
    def _list_dir(self, prefix: str) -> DirListing:
        directory = self._path(prefix[:-1]) if prefix else self._root_text
        keys: list[str] = []
        prefixes: list[str] = []
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return DirListing()
        for entry in entries:
            if _TEMP_NAME.fullmatch(entry.name):
                continue
            if entry.is_dir(follow_symlinks=False):
                prefixes.append(f"{prefix}{entry.name}/")
            elif entry.is_file():
                keys.append(prefix + entry.name)
        return DirListing(keys=tuple(sorted(keys)), prefixes=tuple(sorted(prefixes)))

    @override
    def _with_read_only(self, read_only: bool) -> FilesystemStorage:
        return FilesystemStorage(
            self.root, read_only=read_only, direct_io=self.direct_io, durable=self.durable
        )


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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

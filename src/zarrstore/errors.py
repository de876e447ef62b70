"""Every error that zarrstore raises, in one place.

The tree::

    ZarrStoreError
    ├── InvalidKeyError       (also ValueError)   a key or prefix the protocol refuses
    ├── InvalidByteRangeError (also ValueError)   a negative or reversed byte range
    ├── ReadOnlyError         (also ValueError)   a write to a read-only store
    ├── KeyNotFoundError      (also FileNotFoundError, KeyError) a size asked of a missing key
    ├── UnsupportedOperationError (also NotImplementedError) e.g. listing over plain HTTP
    └── StorageIOError        (also OSError)      the backing failed (HTTP status, object store)
        ├── StorageTimeoutError (also TimeoutError) the backing did not answer in time
        ├── StorageFullError      the disk (or the address space for a map) is full
        ├── CorruptStorageError   the backing's files are damaged (a truncated LMDB file)
        ├── StorageReplacedError  an LMDB path now holds another environment than the one opened
        └── ForkedProcessError    object storage used in a child forked after the parent used it

Each also derives from the builtin that zarr-python and plain Python code
already catch, so existing ``except ValueError`` / ``except FileNotFoundError``
code keeps working. ``ReadOnlyError`` carries zarr's exact wording, which
zarr's own store test-suite matches on.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ClosedStorageError",
    "CorruptStorageError",
    "ForeignEnvironmentError",
    "ForkedProcessError",
    "InvalidByteRangeError",
    "InvalidKeyError",
    "KeyNotFoundError",
    "ReadOnlyError",
    "StorageFullError",
    "StorageIOError",
    "StorageReplacedError",
    "StorageTimeoutError",
    "UnsupportedOperationError",
    "ZarrStoreError",
]

READ_ONLY_MESSAGE = "store was opened in read-only mode and does not support writing"


class ZarrStoreError(Exception):
    """Root of every error raised by zarrstore.

    Every one pickles with its data (``key``, ...), so an error raised in a
    worker process reaches the caller as itself: Python's default would call
    the class with the message, which the errors taking their data refuse.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return rebuild_error, (type(self), self.args, dict(self.__dict__))


def rebuild_error(cls: type[BaseException], args: tuple[Any, ...],
                  state: dict[str, Any]) -> BaseException:
    """Unpickle an error of ``cls`` without calling its ``__init__`` (``__reduce__``'s pair).

    Shared with ``versionstore.errors``, whose errors pickle the same way.
    """
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class InvalidKeyError(ZarrStoreError, ValueError):
    """A key or prefix that the store protocol refuses (see ``zarrstore.keys``)."""

    def __init__(self, key: object, reason: str) -> None:
        super().__init__(f"invalid store key {key!r}: {reason}")
        self.key = key
        self.reason = reason


class InvalidByteRangeError(ZarrStoreError, ValueError):
    """A byte range that cannot be satisfied by any value (negative or reversed)."""


class ReadOnlyError(ZarrStoreError, ValueError):
    """A write, erase or delete was attempted on a read-only store.

    ``detail`` says why, when known (such as a read-only filesystem); the
    message puts it after zarr-python's own wording.
    """

    def __init__(self, detail: str = "") -> None:
        message = READ_ONLY_MESSAGE if not detail else f"{READ_ONLY_MESSAGE} ({detail})"
        super().__init__(message)
        self.detail = detail


class KeyNotFoundError(ZarrStoreError, FileNotFoundError, KeyError):
    """A key that must exist for the operation (such as ``size``) does not."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"key not found: {self.key!r}"


class UnsupportedOperationError(ZarrStoreError, NotImplementedError):
    """The store cannot do this by its nature (listing over plain HTTP, for example)."""


class StorageIOError(ZarrStoreError, OSError):
    """The backing storage failed; the message names the location and the cause."""


class ClosedStorageError(StorageIOError):
    """The handle was closed before the call began (by ``close()``, in this or another thread).

    Nothing was read or written. ``LMDBStore`` itself never lets it out: a
    store closed by another thread as a call begins opens its environment
    again and makes the call (``zarrstore.lmdb``).
    """


class StorageTimeoutError(StorageIOError, TimeoutError):
    """The backing did not answer within the configured timeout."""


class StorageFullError(StorageIOError):
    """The disk under the store is full (or a memory map could not grow); free space, retry."""


class CorruptStorageError(StorageIOError):
    """The store's files are damaged, such as an LMDB data file cut short."""


class ForeignEnvironmentError(StorageIOError):
    """The LMDB environment holds another program's data where named databases were expected.

    Its main database has keys that are not the handle's named databases
    (another store's values, such as a zarrstore ``LMDBStore`` directory):
    creating the databases there would add keys to someone else's data. Nothing
    was written. ``path`` is the directory, ``key`` one of the foreign keys.
    """

    def __init__(self, path: str, key: bytes) -> None:
        super().__init__(
            f"{path!r} holds an LMDB environment of something else (its main database has "
            f"the key {key[:60]!r}); nothing was written there")
        self.path = path
        self.key = key


class StorageReplacedError(StorageIOError):
    """The directory of an LMDB environment now holds another one than the handle opened.

    A store pickled to another process, or inherited through ``fork``,
    reopens its environment by path; if the directory was removed and made
    again, or another environment moved into its place, that is not the
    environment the original wrote to, and writing there would put data
    into someone else's files. A handle that stays open while its files are
    deleted (another process removed the directory) raises it at its next
    write: LMDB would otherwise commit into a file no one can open again.
    ``path`` is the directory; ``expected`` and ``found`` are the
    ``lmdb_environment.EnvironmentIdentity`` values (``found`` is ``None``
    when nothing is there any more, or the handle's own files were deleted).
    """

    def __init__(self, path: str, expected: object, found: object) -> None:
        super().__init__(
            f"{path!r} no longer holds the environment this handle opened (its files were "
            "deleted: the directory was removed, or removed and made again, or replaced): "
            "nothing was written there; open the path anew if its new contents are meant")
        self.path = path
        self.expected = expected
        self.found = found


class ForkedProcessError(StorageIOError):
    """obstore or OpenDAL used in a ``fork`` child of a process that had used it (it would hang).

    See ``zarrstore.rust_runtimes``: use the ``spawn`` or ``forkserver`` start method.
    """

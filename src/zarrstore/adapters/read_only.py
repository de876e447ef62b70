"""``ReadOnly``: a guard that refuses every write, whatever it wraps.

An adapter in the adapter layer. Every store can already be opened read-only,
but ``ReadOnly(store)`` makes the promise in one place for any store, stack of
adapters or versioned session: every write path (``set``, ``set_if_absent``,
``erase``, ``erase_many``, ``erase_prefix``, and zarr's ``set``, ``delete``,
``delete_dir`` and their sync twins) raises ``ReadOnlyError`` before the
wrapped storage is touched. Reads pass through unchanged.

The guard cannot be lifted through itself: ``with_read_only(False)`` raises
``ReadOnlyError`` (write through the store you wrapped instead), so code
handed a ``ReadOnly`` store cannot write by asking for a writable view.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, NoReturn, override

from zarrstore.adapters.base import StoreLike, WrappingStorage, WrappingStore, storage_of
from zarrstore.errors import ReadOnlyError
from zarrstore.keys import validate_key, validate_prefix
from zarrstore.protocol import Storage

if TYPE_CHECKING:
    from typing import Self

__all__ = ["ReadOnly", "ReadOnlyStorage"]


class ReadOnlyStorage(WrappingStorage):
    """The storage behind ``ReadOnly``: reads forward to ``inner``; writes are refused.

    Keys are still validated first, so a bad key reports ``InvalidKeyError``
    as on every other storage.

    Args:
        inner: the storage to guard (it may itself be writable).
    """

    def __init__(self, inner: Storage) -> None:
        super().__init__(inner)
        self._read_only = True

    def _refuse(self) -> NoReturn:
        raise ReadOnlyError(f"{type(self).__name__} refuses every write")

    @property
    @override
    def read_only(self) -> bool:
        return True

    @override
    def _with_inner(self, inner: Storage) -> Self:
        clone = super()._with_inner(inner)
        clone._read_only = True
        return clone

    @override
    def with_read_only(self, read_only: bool = True) -> Self:
        if not read_only:
            raise ReadOnlyError(
                f"{type(self).__name__} cannot be made writable; write through the wrapped store"
            )
        return self

    @override
    def _with_read_only(self, read_only: bool) -> Self:
        return self.with_read_only(read_only)

    @override
    def set(self, key: str, value: bytes) -> None:
        validate_key(key)
        self._refuse()

    @override
    def set_if_absent(self, key: str, value: bytes) -> bool:
        validate_key(key)
        self._refuse()

    @override
    def erase(self, key: str) -> None:
        validate_key(key)
        self._refuse()

    @override
    def erase_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            validate_key(key)
        self._refuse()

    @override
    def erase_prefix(self, prefix: str) -> None:
        validate_prefix(prefix)
        self._refuse()


class ReadOnly(WrappingStore):
    """A zarr store that reads through ``store`` and refuses every write.

    Example::

        published = ReadOnly(FilesystemStore("results.zarr"))
        zarr.open_group(published, mode="r")        # fine
        zarr.open_group(published, mode="a")        # ValueError: the store is read-only

    Args:
        store: any zarr store from this package, or a bare storage.
    """

    storage: ReadOnlyStorage

    def __init__(self, store: StoreLike) -> None:
        super().__init__(ReadOnlyStorage(storage_of(store)))

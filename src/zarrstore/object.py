"""``ObjectStore``: async object storage (S3 and S3-compatible, local, in-memory) over obstore.

obstore is the Python binding of the Rust ``object_store`` crate that the
seed's object-storage stores use, so this is the seed's store in Python: one
client for S3 and every S3-compatible service (MinIO, R2, Ceph, moto), with
native async I/O, its own retries, and the conditional writes the service
offers. The same client has local-filesystem and in-memory backings, which
``ObjectStorage.local`` and ``ObjectStorage.in_memory`` expose.

What each backing gives beyond plain reads and writes:

* partial reads: several ranges of one object in one ``get_many`` become one
  ``get_ranges`` call, which coalesces nearby ranges and fetches concurrently;
* ``list_dir`` is one delimiter listing (``list_with_delimiter``);
* listings hold keys only: a zero-byte "directory marker" that consoles and
  tools leave in buckets (an object named ``"g/"``) is not a key, since no
  ``get`` can read it back, so it is never listed, never as ``""`` and never
  as the listed prefix itself (one ``head`` per zero-byte object tells);
* a key that cannot exist on the local-filesystem backing (``"a/0/0"`` under
  the file ``"a/0"``, or the directory ``"a"``) reads as missing and erases
  as a no-op, as on every other store;
* ``set_if_absent`` is an atomic create (``If-None-Match: *`` on S3);
  ``compare_and_swap`` replaces a value only while its ETag is the one the
  caller read (``If-Match``), where the backing supports it (S3, memory; not
  the local filesystem, which raises ``UnsupportedOperationError``).

This is the one module that imports obstore; its errors become zarrstore
errors here, at the boundary. Sync code uses it through ``AsyncToSync``.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, Unpack, cast, override

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError, NotSupportedError, PreconditionError
from obstore.store import LocalStore, MemoryStore, S3Store

from zarrstore.errors import (
    InvalidKeyError,
    StorageIOError,
    UnsupportedOperationError,
)
from zarrstore.keys import name_max, refuse_unnamable, validate_key
from zarrstore.protocol import AsyncStorage, DirListing, ReadRequest, ValueInfo
from zarrstore.ranges import ByteRange, OffsetRequest, RangeRequest, SuffixRequest, resolve
from zarrstore.rust_runtimes import OBSTORE
from zarrstore.values import value_bytes
from zarrstore.zarr_bridge import ZarrStore

if TYPE_CHECKING:
    from obstore import GetOptions, ObjectMeta
    from obstore.store import ClientConfig, RetryConfig, S3Config, S3CredentialProvider
    from obstore.store import ObjectStore as Backing

__all__ = ["ObjectStorage", "ObjectStore", "S3Options", "absolute_backing"]


def absolute_backing(backing: Backing) -> Backing:
    """``backing``, or a ``LocalStore`` on a relative directory made again on the absolute one.

    obstore resolves a ``LocalStore``'s directory against the working directory
    when it is made, but pickles it as given: a copy sent to a worker running
    elsewhere (a dask worker with another working directory) fails to open, or
    opens another directory (pydata/xarray#1085, dask#2256). Resolved here,
    against the working directory now, as ``FilesystemStore`` and LMDB do.
    Other backings are returned as they are.
    """
    if not isinstance(backing, LocalStore) or backing.prefix is None \
            or os.path.isabs(backing.prefix):
        return backing
    # What the store pickles as: its directory and its options (automatic_cleanup, mkdir).
    args, options = cast("tuple[tuple[Any, ...], dict[str, Any]]",
                         backing.__getnewargs_ex__())  # type: ignore[no-untyped-call]
    return LocalStore(os.path.abspath(args[0]), *args[1:], **options)


class S3Options(TypedDict, total=False):
    """Options for ``ObjectStorage.s3``; anything not given comes from the ``AWS_*`` environment."""

    prefix: str  #: keys live under this prefix in the bucket
    endpoint: str  #: an S3-compatible service's URL (MinIO, R2, a local moto)
    region: str
    access_key_id: str
    secret_access_key: str
    session_token: str
    skip_signature: bool  #: anonymous access to a public bucket
    allow_http: bool  #: defaults to ``True`` for an ``http://`` endpoint
    config: S3Config  #: any further obstore S3 setting
    client_options: ClientConfig
    retry_config: RetryConfig
    credential_provider: S3CredentialProvider  #: e.g. obstore's boto3 provider, for profiles


def _s3_backing(bucket: str, options: S3Options) -> S3Store:
    settings: dict[str, Any] = dict(options)
    endpoint = settings.get("endpoint", "")
    client_options = cast("ClientConfig", dict(settings.pop("client_options", None) or {}))
    if settings.pop("allow_http", endpoint.startswith("http://")):
        client_options["allow_http"] = True
    return S3Store(bucket, client_options=client_options, **settings)


def _obstore_range(byte_range: ByteRange) -> Any:
    if isinstance(byte_range, RangeRequest):
        return (byte_range.start, byte_range.end)
    if isinstance(byte_range, OffsetRequest):
        return {"offset": byte_range.offset}
    return {"suffix": byte_range.suffix}


def _asks_nothing(byte_range: ByteRange | None) -> bool:
    if isinstance(byte_range, RangeRequest):
        return byte_range.end == byte_range.start
    return isinstance(byte_range, SuffixRequest) and byte_range.suffix == 0


#: The names obstore's local-filesystem backing keeps for its temporary files.
_STAGING_NAME = re.compile(r"[^#]*#\d+")


def _is_key_under(path: str, prefix: str) -> bool:
    """Whether a listed ``path`` names something strictly under ``prefix``.

    Drops what object listings may hold besides keys: the marker of the bucket
    root (``""``) and of the listed prefix itself (``"g"`` when listing ``"g/"``).
    """
    return path != "" and path.startswith(prefix) and len(path) > len(prefix)


def _brief(exc: BaseException) -> str:
    """An obstore error's message, without the debug dump after its first blank line."""
    return str(exc).split("\n\n", 1)[0]


class ObjectStorage(AsyncStorage):
    """The storage behind ``ObjectStore``: any obstore backing, keys as object paths.

    Args:
        backing: an obstore store (``S3Store``, ``LocalStore``, ``MemoryStore``, ...);
            the named constructors ``s3``, ``local`` and ``in_memory`` make one.
        read_only: refuse every write with ``ReadOnlyError``.
    """

    def __init__(self, backing: Backing, *, read_only: bool = False) -> None:
        super().__init__(read_only=read_only)
        self.backing = absolute_backing(backing)
        self._name_max: int | None = None  # the local backing's, found on first use

    @classmethod
    def s3(
        cls, bucket: str, *, read_only: bool = False, **options: Unpack[S3Options]
    ) -> ObjectStorage:
        """A bucket (and prefix) on S3 or an S3-compatible service.

        Credentials, region and endpoint not given here come from the
        environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
        ``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``, ...).
        """
        return cls(_s3_backing(bucket, options), read_only=read_only)

    @classmethod
    def local(cls, root: str | os.PathLike[str], *, read_only: bool = False) -> ObjectStorage:
        """The local-filesystem backing of obstore, under ``root`` (created if missing).

        A relative ``root`` is made absolute here, against the current working
        directory, as ``FilesystemStore`` and LMDB do: obstore pickles the root
        as given, so a copy sent to a worker running elsewhere (a dask worker
        with another working directory) would otherwise look for another
        directory (pydata/xarray#1085, dask#2256).
        """
        absolute = os.path.abspath(os.fspath(root))
        os.makedirs(absolute, exist_ok=True)
        return cls(LocalStore(absolute, automatic_cleanup=True), read_only=read_only)

    @classmethod
    def in_memory(cls, *, read_only: bool = False) -> ObjectStorage:
        """The in-memory backing of obstore: nothing persists, and it cannot be pickled."""
        return cls(MemoryStore(), read_only=read_only)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ObjectStorage)
            and self.read_only == other.read_only
            and (self.backing is other.backing or self.backing == other.backing)
        )

    def __hash__(self) -> int:
        return hash(repr(self.backing))  # equal backings (same bucket and prefix) repr alike

    def __repr__(self) -> str:
        text = repr(self.backing)
        if text.startswith("<"):  # obstore's MemoryStore has no repr of its own
            text = f"{type(self.backing).__name__}({id(self.backing):#x})"
        return f"ObjectStorage({text}, {'read-only' if self.read_only else 'writable'})"

    def _is_impossible_path(self, exc: BaseException) -> bool:
        """Whether ``exc`` says a path runs through a file or names a directory.

        Only the local-filesystem backing can say so (object paths elsewhere are
        flat); obstore gives no error code, only the OS error in its message.
        """
        text = str(exc)
        return isinstance(self.backing, LocalStore) and (
            "(os error 20)" in text or "(os error 21)" in text  # ENOTDIR, EISDIR
        )

    @contextmanager
    def _translated(self, operation: str, key: str, *, missing: bool = False) -> Iterator[None]:
        """Turn obstore's errors into zarrstore's, at the boundary.

        Args:
            operation: what was attempted, for the message.
            key: the key (or prefix) it was attempted on.
            missing: let ``FileNotFoundError`` for a missing *object* through,
                for the caller to read as ``None``; a missing bucket is an error.
                A path that cannot name an object on the local backing (through
                a file, or a directory) is a missing object too.
        """
        self._refuse_unstorable(key)
        OBSTORE.refuse_if_forked(f"{operation} {key!r} on {self!r}")
        try:
            yield
        except FileNotFoundError as exc:
            if missing and not self._is_missing_bucket(exc):
                raise
            raise StorageIOError(f"{operation} {key!r} on {self!r}: {_brief(exc)}") from exc
        except (NotSupportedError, NotImplementedError) as exc:
            raise UnsupportedOperationError(
                f"{operation} {key!r} is not supported by {self!r}: {_brief(exc)}"
            ) from exc
        except (BaseError, OSError) as exc:
            if missing and self._is_impossible_path(exc):
                raise FileNotFoundError(f"{operation} {key!r}: no such key") from exc
            raise StorageIOError(f"{operation} {key!r} on {self!r}: {_brief(exc)}") from exc

    def _refuse_unstorable(self, key: str) -> None:
        r"""Refuse, before any request, a key (or prefix) the backing cannot name.

        obstore parses no path holding an ASCII control character (``"\n"``,
        ``"\t"``, ``"\x7f"``, ...): it raised ``ValueError`` from ``get`` and
        ``TypeError`` from ``delete``. On the local-filesystem backing a path
        segment longer than the filesystem's ``NAME_MAX``, or a path longer than
        ``PATH_MAX``, cannot exist either (``ENAMETOOLONG``). These are limits of
        this store, refused on every call with ``InvalidKeyError`` as
        ``LMDBStore`` refuses keys over 511 bytes; so is, there, a name ending
        in ``#`` and digits (``c#12``: obstore's temporary files), which raised
        ``StorageIOError`` even on reads.

        Raises:
            InvalidKeyError: naming the key and the limit it breaks.
        """
        if isinstance(self.backing, LocalStore):
            if self._name_max is None:
                self._name_max = name_max(Path(self.backing.prefix or "/"))
            refuse_unnamable(key, controls=True, root=str(self.backing.prefix or ""),
                             name_limit=self._name_max)
            if not key.endswith("/") and _STAGING_NAME.fullmatch(key.rpartition("/")[2]):
                raise InvalidKeyError(
                    key, "the local-filesystem backing reserves names ending in '#' and "
                    "digits (obstore's temporary files)")
        else:
            refuse_unnamable(key, controls=True)

    def _is_missing_bucket(self, exc: FileNotFoundError) -> bool:
        # S3 answers a missing bucket with 404 as it does a missing key; only the
        # error body's code tells them apart (a key echoed in the body is escaped).
        text = str(exc)
        return (
            isinstance(self.backing, S3Store)
            and "<Code>NoSuchBucket</Code>" in text
            and "<Code>NoSuchKey</Code>" not in text
        )

    # -- reads --------------------------------------------------------------------

    @override
    async def _get(self, key: str, byte_range: ByteRange | None) -> bytes | None:
        if _asks_nothing(byte_range):
            return None if await self._size(key) is None else b""
        options: GetOptions = {}
        if byte_range is not None:
            options["range"] = _obstore_range(byte_range)
        try:
            with self._translated("get", key, missing=True):
                result = await obstore.get_async(self.backing, key, options=options)
                return bytes(await result.bytes_async())
        except FileNotFoundError:
            return None
        except StorageIOError:
            if byte_range is None:
                raise
        # Backings refuse ranges that start at or past the end (S3 answers 416);
        # the protocol clips them instead, which needs the size.
        return (await self._get_ranges(key, [byte_range]))[0]

    @override
    async def _get_many(self, requests: Sequence[ReadRequest]) -> list[bytes | None]:
        results: list[bytes | None] = [None] * len(requests)
        by_key: defaultdict[str, list[int]] = defaultdict(list)
        for index, (key, byte_range) in enumerate(requests):
            if byte_range is not None:
                by_key[key].append(index)
        batched = {key: indexes for key, indexes in by_key.items() if len(indexes) > 1}
        in_batches = {index for indexes in batched.values() for index in indexes}

        async def read_ranges(key: str, indexes: list[int]) -> None:
            picked = [requests[index][1] for index in indexes]
            values = await self._get_ranges(key, [r for r in picked if r is not None])
            for index, value in zip(indexes, values, strict=True):
                results[index] = value

        async def read_one(index: int) -> None:
            results[index] = await self._get(*requests[index])

        await asyncio.gather(
            *(read_ranges(key, indexes) for key, indexes in batched.items()),
            *(read_one(index) for index in range(len(requests)) if index not in in_batches),
        )
        return results

    async def _get_ranges(self, key: str, byte_ranges: list[ByteRange]) -> list[bytes | None]:
        """Several ranges of one object, clipped to its size, fetched by one coalescing call."""
        size = await self._size(key)
        if size is None:
            return [None] * len(byte_ranges)
        spans = [resolve(byte_range, size) for byte_range in byte_ranges]
        starts = [start for start, stop in spans if stop > start]
        ends = [stop for start, stop in spans if stop > start]
        try:
            with self._translated("get_ranges", key, missing=True):
                fetched = iter(
                    await obstore.get_ranges_async(self.backing, key, starts=starts, ends=ends)
                    if starts
                    else []
                )
        except FileNotFoundError:
            return [None] * len(byte_ranges)
        except BaseException as exc:
            # obstore panics (a BaseException) if the object shrank since its size was read.
            if type(exc).__name__ != "PanicException":
                raise
            return list(await asyncio.gather(*(self._get(key, r) for r in byte_ranges)))
        return [bytes(next(fetched)) if stop > start else b"" for start, stop in spans]

    @override
    async def _size(self, key: str) -> int | None:
        try:
            with self._translated("head", key, missing=True):
                return int((await obstore.head_async(self.backing, key))["size"])
        except FileNotFoundError:
            return None

    @override
    async def _stat(self, key: str) -> ValueInfo | None:
        try:
            with self._translated("head", key, missing=True):
                meta = await obstore.head_async(self.backing, key)
        except FileNotFoundError:
            return None
        return ValueInfo(size=int(meta["size"]), etag=meta.get("e_tag"),
                         last_modified=meta.get("last_modified"))

    async def get_with_etag(self, key: str) -> tuple[bytes, str | None] | None:
        """The value at ``key`` and its ETag, read together; ``None`` if missing.

        The ETag is what ``compare_and_swap`` expects, so a read-modify-write
        loop reads with this and writes with that.
        """
        validate_key(key)
        try:
            with self._translated("get", key, missing=True):
                result = await obstore.get_async(self.backing, key)
                return bytes(await result.bytes_async()), result.meta["e_tag"]
        except FileNotFoundError:
            return None

    # -- listing ------------------------------------------------------------------

    async def _objects(self, prefix: str) -> list[ObjectMeta]:
        """The objects under ``prefix`` that may be keys (markers named by path dropped)."""
        try:
            with self._translated("list", prefix, missing=True):
                found = await obstore.list(self.backing, prefix[:-1] or None).collect_async()
        except FileNotFoundError:  # the prefix runs through a file: nothing under it
            return []
        return [meta for meta in found if _is_key_under(meta["path"], prefix)]

    async def _keys(self, metas: Sequence[ObjectMeta]) -> list[str]:
        """The paths of ``metas`` that are keys, sorted: zero-byte markers are dropped.

        A directory marker (an object named ``"g/"``) is listed by obstore as
        ``"g"`` but cannot be read under that name; a real empty value can.
        """
        empty = [meta["path"] for meta in metas if int(meta["size"]) == 0]
        sizes = await asyncio.gather(*(self._size(path) for path in empty))
        markers = {path for path, size in zip(empty, sizes, strict=True) if size is None}
        return sorted(meta["path"] for meta in metas if meta["path"] not in markers)

    @override
    async def _list_prefix(self, prefix: str) -> list[str]:
        return await self._keys(await self._objects(prefix))

    @override
    async def _is_empty(self, prefix: str) -> bool:
        """Reads the listing a page at a time and stops at the first key.

        The default lists every object under ``prefix``: on a bucket of a
        million chunks, a thousand LIST requests to learn that it is not empty.
        """
        stream = obstore.list(self.backing, prefix[:-1] or None)
        while True:
            try:
                with self._translated("list", prefix, missing=True):
                    page = await anext(stream, None)
            except FileNotFoundError:  # the prefix runs through a file: nothing under it
                return True
            if page is None:
                return True
            metas = [meta for meta in page if _is_key_under(meta["path"], prefix)]
            if any(int(meta["size"]) for meta in metas):
                return False
            if metas and await self._keys(metas):  # zero-byte directory markers are not keys
                return False

    @override
    async def _size_prefix(self, prefix: str) -> int:
        return sum(int(meta["size"]) for meta in await self._objects(prefix))

    @override
    async def _list_dir(self, prefix: str) -> DirListing:
        try:
            with self._translated("list_dir", prefix, missing=True):
                listing = await obstore.list_with_delimiter_async(
                    self.backing, prefix[:-1] or None
                )
        except FileNotFoundError:  # the prefix runs through a file: nothing under it
            return DirListing()
        objects = [meta for meta in listing["objects"] if _is_key_under(meta["path"], prefix)]
        subs = {f"{path}/" for path in listing["common_prefixes"]}
        return DirListing(
            keys=tuple(await self._keys(objects)),
            prefixes=tuple(sorted(sub for sub in subs if _is_key_under(sub[:-1], prefix))),
        )

    # -- writes -------------------------------------------------------------------

    @override
    async def _set(self, key: str, value: bytes) -> None:
        with self._translated("put", key):
            await obstore.put_async(self.backing, key, value)

    @override
    async def _set_if_absent(self, key: str, value: bytes) -> bool:
        try:
            with self._translated("put (create)", key):
                await obstore.put_async(self.backing, key, value, mode="create")
        except StorageIOError as exc:
            if not isinstance(exc.__cause__, AlreadyExistsError | PreconditionError):
                raise
            if await self._size(key) is None:  # the local backing: a directory is in the way
                raise StorageIOError(
                    f"cannot store {key!r} on {self!r}: it is already a directory of other keys"
                ) from exc
            return False
        return True

    async def compare_and_swap(self, key: str, expected_etag: str | None, value: bytes) -> bool:
        """Store ``value`` only while ``key``'s ETag is ``expected_etag``; return whether it was.

        ``expected_etag=None`` means "only if absent" (``set_if_absent``). The
        swap is atomic on the service (``If-Match``): of many writers holding
        the same ETag, one wins and the rest get ``False``.

        Raises:
            UnsupportedOperationError: where the backing has no conditional
                update (obstore's local filesystem).
        """
        validate_key(key)
        self._check_writable()
        value = value_bytes(value)
        if expected_etag is None:
            return await self._set_if_absent(key, value)
        try:
            with self._translated("put (if-match)", key, missing=True):
                await obstore.put_async(self.backing, key, value, mode={"e_tag": expected_etag})
        except FileNotFoundError:  # AWS answers a swap on a missing key with 404
            return False
        except StorageIOError as exc:
            if isinstance(exc.__cause__, PreconditionError):
                return False
            raise
        return True

    @override
    async def _erase(self, key: str) -> None:
        try:
            with self._translated("delete", key, missing=True):
                await obstore.delete_async(self.backing, key)
        except FileNotFoundError:  # the local backing reports it; S3 does not
            pass

    @override
    async def _erase_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._refuse_unstorable(key)
        try:
            with self._translated("delete", keys[0], missing=True):
                await obstore.delete_async(self.backing, list(keys))
        except FileNotFoundError:  # one was missing; the rest may be left
            await asyncio.gather(*(self._erase(key) for key in keys))

    @override
    async def _erase_prefix(self, prefix: str) -> None:
        keys = await self._list_prefix(prefix)
        if keys:
            await self._erase_many(keys)

    @override
    def _with_read_only(self, read_only: bool) -> ObjectStorage:
        return ObjectStorage(self.backing, read_only=read_only)


class ObjectStore(ZarrStore):
    """A zarr store over object storage; open with ``s3``, ``local`` or ``in_memory``.

    Args:
        backing: an obstore store, for backings without a named constructor
            (``obstore.store.GCSStore``, ``AzureStore``, ``from_url(...)``).
        read_only: refuse every write with ``ReadOnlyError``.
    """

    storage: ObjectStorage

    def __init__(self, backing: Backing, *, read_only: bool = False) -> None:
        super().__init__(ObjectStorage(backing, read_only=read_only))

    @classmethod
    def s3(
        cls, bucket: str, *, read_only: bool = False, **options: Unpack[S3Options]
    ) -> ObjectStore:
        """A bucket (and prefix) on S3 or an S3-compatible service; see ``S3Options``."""
        return cls(_s3_backing(bucket, options), read_only=read_only)

    @classmethod
    def local(cls, root: str | os.PathLike[str], *, read_only: bool = False) -> ObjectStore:
        """The local-filesystem backing of obstore, under ``root`` (created if missing)."""
        return cls(ObjectStorage.local(root).backing, read_only=read_only)

    @classmethod
    def in_memory(cls, *, read_only: bool = False) -> ObjectStore:
        """The in-memory backing of obstore: nothing persists, and it cannot be pickled."""
        return cls(MemoryStore(), read_only=read_only)

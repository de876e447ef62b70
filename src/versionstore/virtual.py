"""Virtual chunks: serving ``VirtualRef`` entries from files outside the repository.

A virtual chunk is a tree entry that names a byte range of an existing file
(a NetCDF/HDF5/GRIB file on disk, behind HTTP, or in object storage) instead
of holding bytes. The repository records only the URL, the range and a
checksum; *which store serves a URL* is given when the repository is opened
(``Repository.open(storage, virtual_chunk_stores={"s3://bucket/": store})``),
so credentials never reach the repository and one repository can be read
from places that reach the same files differently.

``VirtualChunkStores`` is that mapping: the longest URL prefix that starts a
location picks the store, and the rest of the URL is the store key (for
``file://`` and ``http(s)://`` URLs, percent-escapes are decoded). Reads are
checked by default against the recorded checksum — an ETag must equal the
source's current one, a last-modified time must not be older than the
source's — and a mismatch raises ``VirtualSourceChangedError`` instead of
returning bytes that may be stale. The check is one ``stat`` per source file
per batch of reads, made just before the range reads (a change that lands
between the two is not seen; conditional reads would close that gap).

This module sits beside the session layer: it uses zarrstore stores and the
records, and never writes to the repository.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from urllib.parse import unquote

import attrs

from versionstore.documents import load_document
from versionstore.errors import (
    NoVirtualChunkStoreError,
    VirtualChunkError,
    VirtualSourceChangedError,
    VirtualSourceMissingError,
)
from versionstore.records import VirtualRef
from zarrstore.adapters.base import StoreLike, storage_of
from zarrstore.errors import InvalidKeyError, ZarrStoreError
from zarrstore.keys import validate_key
from zarrstore.protocol import Storage, ValueInfo
from zarrstore.ranges import RangeRequest

__all__ = ["Checksum", "VirtualChunkSpec", "VirtualChunkStores", "checksum_of", "chunk_key",
           "virtual_ref"]

#: What pins a virtual chunk's source: an ETag, a last-modified time, or nothing.
Checksum = str | datetime | None

_DECODED_SCHEMES = ("file://", "http://", "https://")


def _bare_etag(etag: str) -> str:
    """An ETag without its weak marker and quotes (servers differ in how they send them)."""
    return etag.removeprefix("W/").strip('"')


def checksum_of(info: ValueInfo) -> Checksum:
    """The checksum to record for a source that ``stat`` described: its ETag, else its mtime."""
    if info.etag is not None:
        return info.etag
    return info.last_modified


@attrs.frozen(kw_only=True)
class VirtualChunkSpec:
    """One chunk for ``set_virtual_refs`` (icechunk's name): its grid index and its bytes' place."""

    index: tuple[int, ...] = attrs.field(converter=tuple)
    location: str
    offset: int
    length: int
    checksum: str | datetime | None = None


def chunk_key(metadata: bytes, index: Sequence[int]) -> str:
    """The key, relative to the array, of chunk ``index`` under an array's metadata document.

    Follows Zarr v3's ``chunk_key_encoding`` (``default``: ``c/0/1``, or
    ``c.0.1`` with separator ``"."``; ``v2``: ``0.1``) and, for a Zarr v2
    ``.zarray``, its ``dimension_separator`` (default ``"."``).

    Raises:
        ValueError: the document is not array metadata, or ``index`` does
            not have one coordinate per dimension.
    """
    try:
        document = load_document(metadata)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"array metadata is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ValueError("array metadata is not a JSON object")
    if document.get("zarr_format") == 2:
        separator = document.get("dimension_separator") or "."
        ndim = len(document.get("shape", ()))
        prefix = None
    elif document.get("node_type") == "array":
        encoding = document.get("chunk_key_encoding") or {"name": "default"}
        configuration = encoding.get("configuration") or {}
        if encoding.get("name") == "v2":
            separator, prefix = configuration.get("separator", "."), None
        else:
            separator, prefix = configuration.get("separator", "/"), "c"
        ndim = len(document.get("shape", ()))
    else:
        raise ValueError("the metadata document does not describe an array")
    coordinates = [int(i) for i in index]
    if len(coordinates) != ndim or any(i < 0 for i in coordinates):
        raise ValueError(f"chunk index {tuple(index)} does not fit an array of {ndim} "
                         "dimension(s)")
    if prefix is None:
        return separator.join(map(str, coordinates)) if coordinates else "0"
    return separator.join([prefix, *map(str, coordinates)])


def virtual_ref(location: str, offset: int, length: int, checksum: Checksum = None
                ) -> VirtualRef:
    """A checked ``VirtualRef``.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: a negative offset, a length that is not positive (an
            empty chunk decodes to nothing: icechunk refuses it too, its
            issue 2328), a location without a URL scheme or with nothing
            after it (``s3://``), or a last-modified time without a timezone.
    """
    if not isinstance(location, str):
        raise TypeError(f"a virtual chunk location is a URL string, not {location!r}")
    for name, value in (("offset", offset), ("length", length)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int (bytes), not {value!r}")
    if checksum is not None and not isinstance(checksum, str | datetime):
        raise TypeError(f"checksum must be an ETag (str), a datetime or None, not {checksum!r}")
    ref = VirtualRef(location=location, offset=offset, length=length, checksum=checksum)
    ref.check()
    if not location.partition("://")[2].strip("/"):
        # "s3://" alone: a store configured for the whole scheme would accept it, and
        # every read of the chunk would fail far from here.
        raise ValueError(f"a virtual chunk location must name an object after the scheme "
                         f"(s3://bucket/file.nc), not {location!r}")
    if length == 0:
        raise ValueError(f"a virtual chunk cannot be empty: {location!r} at offset {offset} "
                         "has length 0")
    return ref


class VirtualChunkStores:
    """The stores that serve virtual chunks, by URL prefix; given at open, never stored.

    Args:
        stores: URL prefix (``"file:///data/"``, ``"https://host/path/"``,
            ``"s3://bucket/"``) → a zarrstore store (or storage) whose keys
            are the rest of the URL.
        check_checksums: verify each source against the recorded checksum
            before reading it (the default). ``False`` serves whatever the
            source holds now: for sources that are touched without changing.

    Raises:
        TypeError: a prefix is not a URL string, or a store is not a store.
    """

    def __init__(self, stores: Mapping[str, StoreLike] | None = None, *,
                 check_checksums: bool = True) -> None:
        self._stores: dict[str, Storage] = {}
        for given, store in (stores or {}).items():
            if not isinstance(given, str) or "://" not in given:
                raise TypeError(f"virtual chunk store prefixes are URL prefixes such as "
                                f"'s3://bucket/', not {given!r}")
            # A prefix ends at a separator, as icechunk's containers do: "s3://foo"
            # serves "s3://foo/..." and never "s3://foo-dev/...".
            prefix = given if given.endswith("/") else given + "/"
            storage = storage_of(store)
            if self._stores.get(prefix, storage) is not storage:
                raise ValueError(f"two stores given for the virtual chunk prefix {prefix!r}")
            self._stores[prefix] = storage
        if not isinstance(check_checksums, bool):
            raise TypeError(f"check_checksums must be a bool, not {check_checksums!r}")
        self.check_checksums = check_checksums
        self._longest_first = sorted(self._stores, key=len, reverse=True)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, VirtualChunkStores) and self._stores == other._stores
                and self.check_checksums == other.check_checksums)

    def __hash__(self) -> int:
        return hash(tuple(self._longest_first))

    def __repr__(self) -> str:
        return (f"VirtualChunkStores({sorted(self._stores)!r}, "
                f"check_checksums={self.check_checksums})")

    def __bool__(self) -> bool:
        return bool(self._stores)

    @property
    def prefixes(self) -> list[str]:
        """The URL prefixes served, longest first."""
        return list(self._longest_first)

    def resolve(self, location: str) -> tuple[Storage, str]:
        """The store serving ``location`` and the key of the location in it.

        Raises:
            NoVirtualChunkStoreError: no prefix given at open starts ``location``.
        """
        for prefix in self._longest_first:
            if location.startswith(prefix):
                key = location[len(prefix):]
                if location.startswith(_DECODED_SCHEMES):
                    key = unquote(key)
                return self._stores[prefix], key
        raise NoVirtualChunkStoreError(location, self._stores)

    def check(self, location: str) -> None:
        """Refuse ``location`` unless a store serves it and can name it as a key.

        What ``set_virtual_ref`` and the kerchunk import run before staging a
        reference, so a location no read could ever serve fails there.

        Raises:
            NoVirtualChunkStoreError: no prefix given at open starts ``location``.
            ValueError: the rest of the URL is not a store key (an empty,
                ``.`` or ``..`` segment, or a directory ending in ``/``).
        """
        _, key = self.resolve(location)
        try:
            validate_key(key)
        except InvalidKeyError as exc:
            raise ValueError(f"virtual chunk location {location!r}: {key!r} cannot be a key "
                             f"of its store ({exc})") from exc

    def stat(self, location: str) -> ValueInfo | None:
        """What the serving store reports about ``location`` (``None``: it is not there).

        Raises:
            NoVirtualChunkStoreError: no store serves ``location``.
            VirtualChunkError: the store failed (the message names the cause).
        """
        storage, key = self.resolve(location)
        try:
            return storage.stat(key)
        except (ZarrStoreError, OSError) as exc:
            raise VirtualChunkError(location, f"cannot reach virtual chunk source "
                                    f"{location!r}: {exc}") from exc

    def read(self, refs: Sequence[VirtualRef]) -> list[bytes]:
        """The bytes of each reference, in order: one ``stat`` and one batched read per source.

        Raises:
            NoVirtualChunkStoreError: no store serves a location.
            VirtualSourceMissingError: a source is gone or shorter than its range.
            VirtualSourceChangedError: a source no longer matches its checksum
                (only when ``check_checksums``).
            VirtualChunkError: a store failed.
        """
        by_location: dict[str, list[int]] = defaultdict(list)
        for index, ref in enumerate(refs):
            by_location[ref.location].append(index)
        results: list[bytes] = [b""] * len(refs)
        for location, indexes in by_location.items():
            wanted = [refs[i] for i in indexes]
            if self.check_checksums and any(r.checksum is not None for r in wanted):
                info = self.stat(location)
                if info is None:
                    raise VirtualSourceMissingError(
                        location, f"virtual chunk source {location!r} does not exist")
                for ref in wanted:
                    self._check(ref, info)
            storage, key = self.resolve(location)
            try:
                values = storage.get_many(
                    (key, RangeRequest(r.offset, r.offset + r.length)) for r in wanted)
            except (ZarrStoreError, OSError) as exc:
                raise VirtualChunkError(location, f"cannot read virtual chunk source "
                                        f"{location!r}: {exc}") from exc
            for index, ref, value in zip(indexes, wanted, values, strict=True):
                if value is None:
                    raise VirtualSourceMissingError(
                        location, f"virtual chunk source {location!r} does not exist")
                if len(value) != ref.length:
                    raise VirtualSourceMissingError(location, (
                        f"virtual chunk source {location!r} holds {ref.offset + len(value)} "
                        f"bytes, short of the referenced range [{ref.offset}, "
                        f"{ref.offset + ref.length})"))
                results[index] = value
        return results

    def problems(self, refs: Iterable[VirtualRef]) -> list[str]:
        """What is wrong with each source (missing, short, changed, unreachable); for ``verify``.

        Reads no chunk bytes: one ``stat`` per distinct location. Checksums
        are compared even when ``check_checksums`` is off.
        """
        by_location: dict[str, list[VirtualRef]] = defaultdict(list)
        for ref in refs:
            by_location[ref.location].append(ref)
        found = []
        for location, wanted in sorted(by_location.items()):
            try:
                info = self.stat(location)
                if info is None:
                    raise VirtualSourceMissingError(
                        location, f"virtual chunk source {location!r} does not exist")
                end = max(r.offset + r.length for r in wanted)
                if end > info.size:
                    raise VirtualSourceMissingError(location, (
                        f"virtual chunk source {location!r} holds {info.size} bytes, but "
                        f"references reach byte {end}"))
                for ref in wanted:
                    self._check(ref, info)
            except VirtualChunkError as exc:
                found.append(str(exc))
        return found

    @staticmethod
    def _check(ref: VirtualRef, info: ValueInfo) -> None:
        """Raise ``VirtualSourceChangedError`` if ``info`` does not match ``ref.checksum``."""
        expected = ref.checksum
        if expected is None:
            return
        if isinstance(expected, str):
            if info.etag is None:
                raise VirtualChunkError(ref.location, (
                    f"cannot check virtual chunk source {ref.location!r}: its store reports no "
                    "ETag (open with check_virtual_checksums=False to read it unchecked)"))
            if _bare_etag(info.etag) != _bare_etag(expected):
                raise VirtualSourceChangedError(ref.location, expected, info.etag)
            return
        if info.last_modified is None:
            raise VirtualChunkError(ref.location, (
                f"cannot check virtual chunk source {ref.location!r}: its store reports no "
                "modification time (open with check_virtual_checksums=False to read it "
                "unchecked)"))
        if info.last_modified > expected:
            raise VirtualSourceChangedError(ref.location, expected, info.last_modified)

"""The conformance suite every zarrstore store and adapter must pass.

Shipped in the package (as zarr ships ``zarr.testing.store.StoreTests``) so
that third-party stores can run it too. Subclass ``StoreConformance`` in a
test module, provide a ``storage`` fixture and the ``raw_get`` / ``raw_set``
backdoors (which must not go through the storage under test), and pytest
collects every check. ``storage_state_machine`` builds a hypothesis state
machine that runs random operations against a plain ``dict`` model;
``FilesStoreStateMachine`` is zarr's ``ZarrStoreStateMachine`` for stores
kept as files and directories.

Needs pytest and hypothesis (the ``test`` extra).
"""

from __future__ import annotations

import asyncio
import pickle
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import numpy as np
import pytest
import zarr
import zarr.storage
from hypothesis import assume
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from zarr.testing.stateful import MAX_BINARY_SIZE, ZarrStoreStateMachine
from zarr.testing.strategies import keys as zarr_keys

from zarrstore.errors import InvalidKeyError, ReadOnlyError
from zarrstore.mapping import StoreMapping
from zarrstore.protocol import DirListing, Storage
from zarrstore.ranges import ByteRange, OffsetRequest, RangeRequest, SuffixRequest, slice_value
from zarrstore.zarr_bridge import ZarrStore

__all__ = [
    "BAD_KEYS",
    "BAD_PREFIXES",
    "FILES_CANNOT_BE_DIRECTORIES",
    "FilesStoreStateMachine",
    "StoreConformance",
    "storage_state_machine",
]

BAD_KEYS = [
    "", "/abs", "a//b", "a/./b", "a/../b", "..", ".", "a/", "a\\b", "a\x00b", "../x",
    "a/\ud800", "\udfff",
]
#: The skip reason for backings of files, which cannot hold ``"a"`` beside ``"a/b"``.
FILES_CANNOT_BE_DIRECTORIES = (
    "a filesystem cannot hold a key beside keys under it ('g/x' would be a file and a "
    "directory); storing one raises StorageIOError, which the store's own tests check"
)
#: Valid keys that some backings cannot name: ASCII control characters (obstore's paths,
#: FTP's command lines), a segment over 255 bytes (a file name), a key of 5,000 bytes, a
#: name ending in ``#`` and digits (obstore's local temporary files).
ODD_KEYS = ["a/b\nc", "a/b\tc", "a/\x7f", "a/\x01", "a/" + "x" * 300,
            "/".join(["y" * 200] * 25), "a/c#12"]
ODD_KEY_IDS = ["newline", "tab", "DEL", "SOH", "segment-300", "key-5000", "hash-digits"]
BAD_PREFIXES = ["a", "/a/", "a//", "./", "../", "a/../", "a\\b/", "a/\ud800/"]


class FilesStoreStateMachine(ZarrStoreStateMachine):
    """zarr's ``ZarrStoreStateMachine``, never storing a key beside keys under it.

    For stores kept as files and directories (``FILES_CANNOT_BE_DIRECTORIES``):
    after ``0/0`` such a store cannot store ``0``, nor ``0/0`` after ``0``
    (zarr's own ``LocalStore`` cannot either), and says so with
    ``StorageIOError``, which each store's own tests check. Every other rule
    is zarr's.
    """

    @rule(key=zarr_keys(), data=st.binary(min_size=0, max_size=MAX_BINARY_SIZE))
    def set(self, key: str, data: bytes) -> None:
        """The ``set`` rule of zarr's machine, for a key no other key is under or over."""
        assume(not any(other.startswith(f"{key}/") or key.startswith(f"{other}/")
                       for other in self.model))
        super().set(key, data)


EDGE_RANGES: list[tuple[bytes, ByteRange | None]] = [
    (b"", None),
    (b"", RangeRequest(0, 0)),
    (b"", RangeRequest(0, 10)),
    (b"", OffsetRequest(0)),
    (b"", OffsetRequest(5)),
    (b"", SuffixRequest(0)),
    (b"", SuffixRequest(3)),
    (b"0123456789", RangeRequest(2, 5)),
    (b"0123456789", RangeRequest(0, 10)),
    (b"0123456789", RangeRequest(8, 20)),
    (b"0123456789", RangeRequest(12, 20)),
    (b"0123456789", RangeRequest(4, 4)),
    (b"0123456789", OffsetRequest(0)),
    (b"0123456789", OffsetRequest(7)),
    (b"0123456789", OffsetRequest(10)),
    (b"0123456789", OffsetRequest(99)),
    (b"0123456789", SuffixRequest(0)),
    (b"0123456789", SuffixRequest(3)),
    (b"0123456789", SuffixRequest(10)),
    (b"0123456789", SuffixRequest(50)),
]


def _collect(names: AsyncIterator[str]) -> list[str]:
    async def collect() -> list[str]:
        return [name async for name in names]

    return asyncio.run(collect())


def _sibling_arrays() -> dict[str, bytes]:
    """Keys and values of arrays ``u``, ``u10``, ``t`` and ``t2m``, as zarr writes them.

    Sibling names that share a prefix: zarr asks ``list_prefix("u")`` (no
    ``"/"``) for ``u``'s chunks and fails if ``u10``'s keys come back.
    """
    model = zarr.storage.MemoryStore()
    for name, n_chunks in [("u", 2), ("u10", 3), ("t", 1), ("t2m", 4)]:
        array = zarr.create_array(model, name=name, shape=(2 * n_chunks,), chunks=(2,),
                                  dtype="i4", fill_value=-1)
        array[:] = np.arange(2 * n_chunks, dtype="i4")
    return {key: value.to_bytes() for key, value in model._store_dict.items()}


class StoreConformance:
    """Protocol semantics every storage must honour.

    Subclasses provide the ``storage`` fixture and the two backdoors. Stores
    that cannot store values (HTTP) set ``writable = False``; those that cannot
    be pickled set ``picklable = False`` with a ``not_picklable_reason``; those
    whose backing cannot hold a key and keys under it alike (``"g/x"`` and
    ``"g/x/zarr.json"``: a file cannot be a directory) override
    ``why_not_a_key_and_keys_under_it``.
    """

    writable: ClassVar[bool] = True
    picklable: ClassVar[bool] = True
    not_picklable_reason: ClassVar[str] = ""
    #: Whether reading a key that names a directory of other keys gives ``None``. A
    #: web server decides what it answers for a directory (HTTP sets this ``False``).
    directories_read_as_missing: ClassVar[bool] = True

    def why_not_a_key_and_keys_under_it(self, storage: Storage) -> str | None:
        """Why ``storage`` cannot hold ``"g/x"`` beside ``"g/x/zarr.json"``; ``None`` if it can."""
        return None

    def raw_get(self, storage: Storage, key: str) -> bytes | None:
        """Read ``key`` without going through ``storage``."""
        raise NotImplementedError

    def raw_set(self, storage: Storage, key: str, value: bytes) -> None:
        """Write ``key`` without going through ``storage``."""
        raise NotImplementedError

    def _require_writable(self) -> None:
        if not self.writable:
            pytest.skip(
                "read-only store: every write is refused "
                "(test_refuses_writes_when_read_only checks that)"
            )

    def _require_listing(self, storage: Storage) -> None:
        if not storage.supports_listing:
            pytest.skip(
                f"{type(storage).__name__} cannot list keys "
                "(its own tests check that listing raises UnsupportedOperationError)"
            )

    # -- reads --------------------------------------------------------------------

    def test_get_missing_is_none(self, storage: Storage) -> None:
        assert storage.get("missing") is None
        assert storage.get("deep/missing/key", RangeRequest(0, 3)) is None
        assert storage.size("missing") is None
        assert not storage.exists("missing")

    @pytest.mark.parametrize("value", [b"", b"x", b"\x00\xff" * 1000])
    def test_get_whole_value(self, storage: Storage, value: bytes) -> None:
        self.raw_set(storage, "a/b/c", value)
        assert storage.get("a/b/c") == value
        assert storage.size("a/b/c") == len(value)
        assert storage.exists("a/b/c")

    @pytest.mark.parametrize(("value", "byte_range"), EDGE_RANGES)
    def test_byte_ranges_at_edges(
        self, storage: Storage, value: bytes, byte_range: ByteRange | None
    ) -> None:
        self.raw_set(storage, "v", value)
        assert storage.get("v", byte_range) == slice_value(value, byte_range)

    def test_get_many_keeps_order_and_reports_missing(self, storage: Storage) -> None:
        self.raw_set(storage, "k1", b"one")
        self.raw_set(storage, "d/k2", b"two22")
        got = storage.get_many(
            [("d/k2", SuffixRequest(2)), ("nope", None), ("k1", None), ("k1", RangeRequest(1, 2))]
        )
        assert got == [b"22", None, b"one", b"n"]
        assert storage.get_many([]) == []

    def test_size_prefix(self, storage: Storage) -> None:
        for key in ["c/0/0", "c/0/1", "c/1/0", "cc/0", "top"]:
            self.raw_set(storage, key, b"1234")
        assert storage.size_prefix("c/") == 12
        assert storage.size_prefix("c/0/") == 8
        assert storage.size_prefix("") == 20
        assert storage.size_prefix("none/") == 0

    def test_stat_describes_values(self, storage: Storage) -> None:
        assert storage.stat("missing") is None
        self.raw_set(storage, "s/v", b"12345")
        first = storage.stat("s/v")
        assert first is not None and first.size == 5
        if first.last_modified is not None:
            assert first.last_modified.tzinfo is not None
        self.raw_set(storage, "s/v", b"abcdef")
        second = storage.stat("s/v")
        assert second is not None and second.size == 6
        if first.etag is not None and second.etag is not None:
            assert first.etag != second.etag  # an ETag changes whenever the value does

    # -- listing ------------------------------------------------------------------

    def test_list_is_sorted_and_complete(self, storage: Storage) -> None:
        keys = ["b", "a/z", "a/b/c", "a-b", "a/b/d", "zarr.json", "a/b0"]
        for key in keys:
            self.raw_set(storage, key, b"")
        assert list(storage.list()) == sorted(keys)

    def test_list_prefix_nested(self, storage: Storage) -> None:
        keys = ["zarr.json", "a/zarr.json", "a/b/zarr.json", "a/b/c/zarr.json", "ab/zarr.json"]
        for key in keys:
            self.raw_set(storage, key, b"{}")
        for prefix in ["", "a/", "a/b/", "a/b/c/", "x/"]:
            expected = sorted(k for k in keys if k.startswith(prefix))
            assert list(storage.list_prefix(prefix)) == expected

    def test_list_dir_gives_keys_and_prefixes(self, storage: Storage) -> None:
        for key in ["zarr.json", "g/zarr.json", "g/a/c/0", "g/a/zarr.json", "g/b/c/0", "h/x"]:
            self.raw_set(storage, key, b"1")
        assert storage.list_dir("") == DirListing(keys=("zarr.json",), prefixes=("g/", "h/"))
        assert storage.list_dir("g/") == DirListing(
            keys=("g/zarr.json",), prefixes=("g/a/", "g/b/")
        )
        assert storage.list_dir("g/a/c/") == DirListing(keys=("g/a/c/0",))
        assert storage.list_dir("nothing/") == DirListing()

    def test_listings_name_each_child_once(self, storage: Storage) -> None:
        """A key beside a directory of the same name: one child, never ``""`` or the prefix."""
        self._require_listing(storage)
        reason = self.why_not_a_key_and_keys_under_it(storage)
        if reason is not None:
            pytest.skip(reason)
        for key in ["g/zarr.json", "g/x", "g/x/zarr.json"]:
            self.raw_set(storage, key, b'{"zarr_format":3,"node_type":"group","attributes":{}}')
        assert storage.list_dir("g/") == DirListing(
            keys=("g/x", "g/zarr.json"), prefixes=("g/x/",)
        )
        assert list(storage.list_prefix("g/")) == ["g/x", "g/x/zarr.json", "g/zarr.json"]
        store = ZarrStore(storage)
        for path in ["g", "g/"]:
            assert sorted(_collect(store.list_dir(path))) == ["x", "zarr.json"]
        group = zarr.open_group(store, path="g", mode="r")
        assert [name for name, _ in group.members()] == ["x"]

    def test_listings_hold_only_keys_under_the_prefix(self, storage: Storage) -> None:
        self._require_listing(storage)
        for key in ["a/zarr.json", "a/b/c/0", "a/b/zarr.json", "ab/k", "a-b/k", "k"]:
            self.raw_set(storage, key, b"1")
        for prefix in ["", "a/", "a/b/", "a/b/c/", "ab/", "nothing/"]:
            keys = list(storage.list_prefix(prefix))
            listing = storage.list_dir(prefix)
            for key in [*keys, *listing.keys]:
                assert key.startswith(prefix) and key != prefix and not key.endswith("/"), key
            for sub in listing.prefixes:
                assert sub.startswith(prefix) and sub != prefix and sub.endswith("/"), sub
            assert len(set(keys)) == len(keys)
            names = [k[len(prefix) :] for k in listing.keys]
            names += [p[len(prefix) : -1] for p in listing.prefixes]
            assert "" not in names and len(names) == len(set(listing.keys + listing.prefixes))

    def test_list_dir_with_names_sorting_below_slash(self, storage: Storage) -> None:
        """Names with ``-`` or ``.`` sort between ``a`` and ``a/`` (and ``a0`` just after).

        A store that lists a directory by seeking past each child's keys
        (``LMDBStorage``) must still find ``a-x/`` and ``a.y`` before ``a/``,
        and ``a0`` where its seek lands.
        """
        self._require_listing(storage)
        keys = ["a/b", "a-x/c", "a.y", "a/c/0", "a/c/1", "a/c-d/0", "a/c.e", "a0", "b"]
        for key in keys:
            self.raw_set(storage, key, b"1")
        assert storage.list_dir("") == DirListing(keys=("a.y", "a0", "b"),
                                                  prefixes=("a-x/", "a/"))
        assert storage.list_dir("a/") == DirListing(keys=("a/b", "a/c.e"),
                                                    prefixes=("a/c-d/", "a/c/"))
        assert storage.list_dir("a/c/") == DirListing(keys=("a/c/0", "a/c/1"))
        assert _collect(ZarrStore(storage).list_dir("a")) == ["b", "c", "c-d", "c.e"]
        assert _collect(ZarrStore(storage).list_dir("")) == ["a", "a-x", "a.y", "a0", "b"]

    def test_is_empty_looks_under_the_prefix_only(self, storage: Storage) -> None:
        """``is_empty(p)``: no key under ``p``; a key named as ``p`` without its ``/`` is not."""
        self._require_listing(storage)
        assert storage.is_empty("") and storage.is_empty("a/")
        for key in ["a-x/c", "a.y", "a/c/0", "a0"]:
            self.raw_set(storage, key, b"1")
        assert not storage.is_empty("")
        for prefix in ["a/", "a/c/", "a-x/"]:
            assert not storage.is_empty(prefix), prefix
        for prefix in ["a.y/", "a/c/0/", "a/b/", "b/", "a0/"]:
            assert storage.is_empty(prefix), prefix
        store = ZarrStore(storage)
        assert not asyncio.run(store.is_empty("a/c")) and asyncio.run(store.is_empty("a/b"))

    def test_root_is_slash_or_empty_for_zarr(self, storage: Storage) -> None:
        """The root is ``"/"`` or ``""`` for zarr (it calls ``is_empty("/")`` after clearing)."""
        self._require_listing(storage)
        store = ZarrStore(storage)
        assert asyncio.run(store.is_empty("/")) and asyncio.run(store.is_empty(""))
        self.raw_set(storage, "g/zarr.json", b"{}")
        assert not asyncio.run(store.is_empty("/"))
        assert _collect(store.list_prefix("/")) == ["g/zarr.json"]
        assert _collect(store.list_dir("/")) == ["g"]
        assert asyncio.run(store.getsize_prefix("/")) == 2
        if self.writable:
            asyncio.run(store.clear())
            assert asyncio.run(store.is_empty("/"))

    def test_sibling_names_sharing_a_prefix(self, storage: Storage) -> None:
        """``u`` beside ``u10``: zarr's ``list_prefix("u")`` means the directory ``u/``."""
        self._require_listing(storage)
        for key, value in _sibling_arrays().items():
            self.raw_set(storage, key, value)
        store = ZarrStore(storage)
        for name, n_chunks in [("u", 2), ("u10", 3), ("t", 1), ("t2m", 4)]:
            array = zarr.open_array(store, path=name, mode="r")
            assert array.nchunks_initialized == n_chunks
            np.testing.assert_array_equal(array[:], np.arange(2 * n_chunks))
        assert sorted(_collect(store.list_prefix("u"))) == ["u/c/0", "u/c/1", "u/zarr.json"]
        assert asyncio.run(store.is_empty("t2")) and not asyncio.run(store.is_empty("t"))

    def test_impossible_keys_are_missing(self, storage: Storage) -> None:
        """Keys that run through a value (``arr/c/0/0`` under ``arr/c/0``) or name a directory.

        They hold nothing: reads are ``None`` and erases are no-ops, on every store.
        """
        stored = {"arr/zarr.json": b"{}", "arr/c/0": b"0", "arr/c/1": b"1"}
        for key, value in stored.items():
            self.raw_set(storage, key, value)
        impossible = ["arr/c/0/0", "arr/c/1/x/y"]
        if self.directories_read_as_missing:
            impossible += ["arr/c", "arr"]
        for key in impossible:
            assert storage.get(key) is None, key
            assert storage.get(key, RangeRequest(0, 1)) is None, key
            assert storage.get_many([(key, None), ("arr/c/0", None)]) == [None, b"0"], key
            assert storage.size(key) is None, key
            assert not storage.exists(key), key
        if storage.supports_listing:
            for prefix in ["arr/c/0/", "arr/c/0/0/"]:
                assert list(storage.list_prefix(prefix)) == [], prefix
                assert storage.list_dir(prefix) == DirListing(), prefix
                assert storage.size_prefix(prefix) == 0, prefix
        if self.writable:
            storage.erase("arr/c/0/0")
            storage.erase("arr/c")
            storage.erase("arr")
            storage.erase_many(["arr/c/0/0", "arr/c", "arr/c/1/x"])
            storage.erase_prefix("arr/c/0/")
            storage.erase_prefix("arr/c/0/0/")
            store = ZarrStore(storage)
            asyncio.run(store.delete("arr/c/0/0"))
            asyncio.run(store.delete("arr/c"))
            asyncio.run(store.delete_dir("arr/c/0"))
        for key, value in stored.items():
            assert self.raw_get(storage, key) == value, key

    @pytest.mark.parametrize("prefix", BAD_PREFIXES)
    def test_bad_prefixes_are_refused(self, storage: Storage, prefix: str) -> None:
        with pytest.raises(InvalidKeyError):
            list(storage.list_prefix(prefix))
        with pytest.raises(InvalidKeyError):
            storage.list_dir(prefix)
        with pytest.raises(InvalidKeyError):
            storage.size_prefix(prefix)
        with pytest.raises(InvalidKeyError):
            storage.is_empty(prefix)

    # -- keys ---------------------------------------------------------------------

    @pytest.mark.parametrize("key", BAD_KEYS)
    def test_bad_keys_are_refused_everywhere(self, storage: Storage, key: str) -> None:
        calls: list[Callable[[], Any]] = [
            lambda: storage.get(key),
            lambda: storage.size(key),
            lambda: storage.exists(key),
            lambda: storage.get_many([(key, None)]),
        ]
        if self.writable:
            calls += [
                lambda: storage.set(key, b"x"),
                lambda: storage.erase(key),
                lambda: storage.erase_many([key]),
                lambda: storage.set_if_absent(key, b"x"),
            ]
        for call in calls:
            with pytest.raises(InvalidKeyError):
                call()

    # -- writes -------------------------------------------------------------------

    @pytest.mark.parametrize("key", ODD_KEYS, ids=ODD_KEY_IDS)
    def test_a_key_is_stored_or_refused_as_invalid(self, storage: Storage, key: str) -> None:
        """A valid key the backing cannot name is refused with ``InvalidKeyError``.

        Either the store holds it like any other key, or every write raises
        ``InvalidKeyError`` and every read gives nothing or raises it too:
        never a bare ``OSError`` (``ENAMETOOLONG`` on ``FilesystemStore``), a
        ``ValueError`` or ``TypeError`` from a client library (obstore refuses
        control characters; its ``delete`` raised ``TypeError``).
        """
        parent = key.rsplit("/", 1)[0] + "/"

        def refused(call: Callable[[], Any]) -> tuple[Any, bool]:
            try:
                return call(), False
            except InvalidKeyError:
                return None, True

        self._require_writable()
        _, refused_set = refused(lambda: storage.set(key, b"odd"))
        if not refused_set:
            assert storage.get(key) == b"odd"
            assert storage.get(key, RangeRequest(1, 2)) == b"d"
            assert storage.exists(key) and storage.size(key) == 3
            if storage.supports_listing:
                assert key in list(storage.list_prefix(parent))
            storage.erase(key)
            assert storage.get(key) is None and not storage.exists(key)
            return
        reads: list[Callable[[], Any]] = [
            lambda: storage.get(key),
            lambda: storage.get_many([(key, None)])[0],
            lambda: storage.exists(key),
            lambda: storage.size(key),
        ]
        if storage.supports_listing:
            reads += [lambda: list(storage.list_prefix(f"{key}/")),
                      lambda: storage.list_dir(f"{key}/").keys]
        for read in reads:
            value, _ = refused(read)
            assert not value, value
        writes: list[Callable[[], Any]] = [
            lambda: storage.set_if_absent(key, b"odd"),
            lambda: storage.erase(key),
            lambda: storage.erase_many([key]),
        ]
        for write in writes:
            with pytest.raises(InvalidKeyError):
                write()

    @pytest.mark.parametrize("value", [b"", b"v", bytes(range(256)) * 64])
    def test_set_then_get(self, storage: Storage, value: bytes) -> None:
        self._require_writable()
        storage.set("x/y/z", value)
        assert self.raw_get(storage, "x/y/z") == value
        assert storage.get("x/y/z") == value

    def test_set_overwrites(self, storage: Storage) -> None:
        self._require_writable()
        storage.set("k", b"first value")
        storage.set("k", b"2nd")
        assert storage.get("k") == b"2nd"

    def test_set_accepts_bytes_like(self, storage: Storage) -> None:
        self._require_writable()
        storage.set("ba", bytearray(b"abc"))  # type: ignore[arg-type]
        storage.set("mv", memoryview(b"def"))  # type: ignore[arg-type]
        assert storage.get("ba") == b"abc"
        assert storage.get("mv") == b"def"
        wide = memoryview(bytes(range(16))).cast("i")  # four 4-byte items
        storage.set("wide", wide)  # type: ignore[arg-type]
        assert storage.get("wide") == bytes(range(16))
        assert storage.set_if_absent("wide2", wide)  # type: ignore[arg-type]
        assert storage.size("wide2") == 16

    @pytest.mark.parametrize("value", [5, "text", None, [1, 2]], ids=repr)
    def test_set_refuses_what_is_not_bytes_like(self, storage: Storage, value: object) -> None:
        # ``bytes(5)`` is five zero bytes: a number must not be stored as that.
        self._require_writable()
        with pytest.raises(TypeError, match="bytes-like"):
            storage.set("k", value)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="bytes-like"):
            storage.set_if_absent("k", value)  # type: ignore[arg-type]
        assert storage.get("k") is None

    def test_erase(self, storage: Storage) -> None:
        self._require_writable()
        self.raw_set(storage, "a/b", b"1")
        self.raw_set(storage, "a/c", b"2")
        storage.erase("a/b")
        storage.erase("a/b")
        storage.erase("never/was")
        assert storage.get("a/b") is None
        assert list(storage.list()) == ["a/c"]

    def test_erase_many(self, storage: Storage) -> None:
        self._require_writable()
        for key in ["a", "b", "c/d"]:
            self.raw_set(storage, key, b"1")
        storage.erase_many(["a", "c/d", "missing"])
        assert list(storage.list()) == ["b"]

    def test_erase_prefix_spares_siblings(self, storage: Storage) -> None:
        self._require_writable()
        for key in ["zarr.json", "foo/zarr.json", "foo/c/0", "foo-bar/zarr.json", "foobar"]:
            self.raw_set(storage, key, b"1")
        storage.erase_prefix("foo/")
        assert list(storage.list()) == ["foo-bar/zarr.json", "foobar", "zarr.json"]
        assert storage.list_dir("") == DirListing(
            keys=("foobar", "zarr.json"), prefixes=("foo-bar/",)
        )
        storage.erase_prefix("")
        assert list(storage.list()) == []

    def test_set_if_absent(self, storage: Storage) -> None:
        self._require_writable()
        assert storage.set_if_absent("k", b"first")
        assert not storage.set_if_absent("k", b"second")
        assert storage.get("k") == b"first"

    def test_refuses_writes_when_read_only(self, storage: Storage) -> None:
        self.raw_set(storage, "keep", b"safe")
        reader = storage.with_read_only(True)
        assert reader.read_only
        writes: list[Callable[[], Any]] = [
            lambda: reader.set("keep", b"lost"),
            lambda: reader.set("new", b"x"),
            lambda: reader.erase("keep"),
            lambda: reader.erase_many(["keep"]),
            lambda: reader.erase_prefix(""),
            lambda: reader.set_if_absent("new", b"x"),
        ]
        for write in writes:
            with pytest.raises(ReadOnlyError, match="read-only"):
                write()
        assert reader.get("keep") == b"safe"
        assert self.raw_get(storage, "keep") == b"safe"
        assert self.raw_get(storage, "new") is None

    def test_with_read_only_shares_the_backing(self, storage: Storage) -> None:
        self._require_writable()
        reader = storage.with_read_only(True)
        writer = reader.with_read_only(False)
        writer.set("shared", b"1")
        assert reader.get("shared") == b"1"
        assert not writer.read_only

    def test_pickle_round_trip(self, storage: Storage) -> None:
        if not self.picklable:
            pytest.skip(self.not_picklable_reason)
        self.raw_set(storage, "p/q", b"pickled")
        clone = pickle.loads(pickle.dumps(storage))
        assert clone == storage
        assert clone.get("p/q") == b"pickled"

    def test_usable_after_close(self, storage: Storage) -> None:
        """A closed storage serves its next call, as zarr's stores reopen on use.

        zarr's ``Store.close`` only marks a store closed and its next call opens
        it again (``Store._ensure_open``); ``with store:`` blocks and xarray's
        ``close()`` rely on it. ``LMDBStore`` raised ``StorageIOError``.
        """
        self.raw_set(storage, "c/k", b"kept")
        storage.close()
        assert storage.get("c/k") == b"kept"
        if storage.supports_listing:
            assert list(storage.list_prefix("c/")) == ["c/k"]
        storage.close()
        if self.writable:
            storage.set("c/n", b"new")
            assert self.raw_get(storage, "c/n") == b"new"
        storage.close()

    def test_equal_storages_hash_alike(self, storage: Storage) -> None:
        """Views that compare equal have equal hashes, so one finds the other's dict entry.

        Equality is by backing (zarr's ``test_store_eq``); hashing by identity
        (``ZarrStore``, ``MemoryStorage``'s dict, the sync/async bridges'
        inner) broke Python's rule that equal objects hash alike.
        """
        first, second = storage.with_read_only(True), storage.with_read_only(True)
        assert first == second
        assert hash(first) == hash(second)
        assert {first: "found"}.get(second) == "found"
        if self.picklable:
            clone = pickle.loads(pickle.dumps(storage))
            assert clone == storage and hash(clone) == hash(storage)

    def test_mapping_view(self, storage: Storage) -> None:
        self._require_writable()
        view = StoreMapping(storage)
        view["m/1"] = b"one"
        assert view["m/1"] == b"one"
        assert "m/1" in view and "m/2" not in view
        assert list(view) == ["m/1"] and len(view) == 1
        del view["m/1"]
        with pytest.raises(KeyError):
            view["m/1"]
        with pytest.raises(KeyError):
            del view["m/1"]

    def test_set_if_absent_has_one_winner(self, storage: Storage) -> None:
        """Racing ``set_if_absent`` calls on one key: exactly one stores, and its value stays.

        zarr's ``set_if_not_exists`` is an exclusive create in its own stores
        (``LocalStore`` opens with ``"xb"``); a look-then-write lets two
        writers both report success while the later one silently replaces the
        earlier value (``FilesystemStore`` did).
        """
        self._require_writable()
        n_threads, n_keys = 6, 30
        barrier = threading.Barrier(n_threads)
        won: dict[str, list[bytes]] = {f"race/{k}": [] for k in range(n_keys)}
        errors: list[BaseException] = []

        def racer(n: int) -> None:
            try:
                for key in won:
                    value = f"{key}:{n}".encode()
                    barrier.wait()
                    if storage.set_if_absent(key, value):
                        won[key].append(value)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=racer, args=(n,)) for n in range(n_threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        for key, winners in won.items():
            assert len(winners) == 1, (key, winners)
            assert storage.get(key) == winners[0]

    @pytest.mark.parametrize("key", ["", "a/", "/a", "a//b", "a/\ud800"],
                             ids=["empty", "slash-end", "absolute", "empty-segment", "surrogate"])
    def test_mapping_view_has_no_impossible_key(self, storage: Storage, key: str) -> None:
        """A dict view answers a key no store can hold as absent, as a dict would.

        ``"a/" in view`` raised ``InvalidKeyError`` (a ``ValueError``), and so
        did ``view.get("a/")`` and ``view.pop("a/", None)``, where a dict gives
        ``False`` or the default. Storing such a key is still refused.
        """
        view = StoreMapping(storage)
        assert key not in view
        assert view.get(key) is None and view.get(key, b"d") == b"d"
        with pytest.raises(KeyError):
            view[key]
        if self.writable:
            assert view.pop(key, None) is None
            with pytest.raises(KeyError):
                del view[key]
            with pytest.raises(InvalidKeyError):
                view[key] = b"x"

    def test_threads_see_whole_values(self, storage: Storage) -> None:
        self._require_writable()
        values = [bytes([n]) * 50_000 for n in range(4)]
        errors: list[BaseException] = []

        def writer(n: int) -> None:
            try:
                for i in range(25):
                    storage.set(f"t/{n}", values[(n + i) % 4])
                    got = storage.get(f"t/{(n + 1) % 8}")
                    assert got is None or got in values
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        assert all(storage.get(f"t/{n}") in values for n in range(8))


_SEGMENTS = st.sampled_from(["d0", "d1", "d2"])
_LEAVES = st.sampled_from(["k0", "k1", "zarr.json", "c.0"])
KEYS = st.builds(
    lambda dirs, leaf: "/".join([*dirs, leaf]), st.lists(_SEGMENTS, max_size=2), _LEAVES
)
PREFIXES = st.builds(lambda dirs: "".join(d + "/" for d in dirs), st.lists(_SEGMENTS, max_size=2))


def storage_state_machine(make_storage: Callable[[], Storage]) -> type[RuleBasedStateMachine]:
    """A hypothesis state machine checking a storage against a ``dict`` model.

    Keys come from a small alphabet where directory and leaf names differ, so
    every store (including filesystems, which cannot hold ``a`` and ``a/b``)
    can hold every generated key set.
    """

    class StorageStateMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.storage = make_storage()
            self.model: dict[str, bytes] = {}

        @rule(key=KEYS, value=st.binary(max_size=64))
        def set(self, key: str, value: bytes) -> None:
            self.storage.set(key, value)
            self.model[key] = value

        @rule(key=KEYS, value=st.binary(max_size=8))
        def set_if_absent(self, key: str, value: bytes) -> None:
            stored = self.storage.set_if_absent(key, value)
            assert stored == (key not in self.model)
            self.model.setdefault(key, value)

        @rule(key=KEYS)
        def erase(self, key: str) -> None:
            self.storage.erase(key)
            self.model.pop(key, None)

        @rule(prefix=PREFIXES)
        def erase_prefix(self, prefix: str) -> None:
            self.storage.erase_prefix(prefix)
            for key in [k for k in self.model if k.startswith(prefix)]:
                del self.model[key]

        @rule(key=KEYS, start=st.integers(0, 70), length=st.integers(0, 70))
        def get_range(self, key: str, start: int, length: int) -> None:
            expected = self.model.get(key)
            got = self.storage.get(key, RangeRequest(start, start + length))
            assert got == (None if expected is None else expected[start : start + length])

        @rule(key=KEYS, suffix=st.integers(0, 70))
        def get_suffix(self, key: str, suffix: int) -> None:
            expected = self.model.get(key)
            got = self.storage.get(key, SuffixRequest(suffix))
            want = None if expected is None else slice_value(expected, SuffixRequest(suffix))
            assert got == want

        @rule(prefix=PREFIXES)
        def list_dir(self, prefix: str) -> None:
            rests = sorted(k[len(prefix) :] for k in self.model if k.startswith(prefix))
            keys = tuple(prefix + r for r in rests if "/" not in r)
            prefixes = tuple(sorted({prefix + r.split("/")[0] + "/" for r in rests if "/" in r}))
            assert self.storage.list_dir(prefix) == DirListing(keys=keys, prefixes=prefixes)
            assert self.storage.is_empty(prefix) == (not rests)

        @invariant()
        def listing_matches(self) -> None:
            assert list(self.storage.list()) == sorted(self.model)

        @invariant()
        def values_match(self) -> None:
            keys = sorted(self.model)
            assert self.storage.get_many([(k, None) for k in keys]) == [self.model[k] for k in keys]

        def teardown(self) -> None:
            self.storage.close()

    return StorageStateMachine

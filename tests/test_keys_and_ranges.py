from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zarrstore import InvalidByteRangeError, InvalidKeyError
from zarrstore.keys import _check_key, is_plain_key, is_valid_key, validate_key, validate_prefix
from zarrstore.ranges import OffsetRequest, RangeRequest, SuffixRequest, resolve, slice_value
from zarrstore.testing import BAD_KEYS, BAD_PREFIXES


@pytest.mark.parametrize("key", ["a", "zarr.json", "a/b/c", ".zattrs", "a/.zarray", "c/0.0", "ü/ñ"])
def test_good_keys(key: str) -> None:
    assert validate_key(key) == key and is_valid_key(key)


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys(key: str) -> None:
    with pytest.raises(InvalidKeyError) as info:
        validate_key(key)
    assert info.value.key == key and repr(key) in str(info.value)


@given(st.text(alphabet="ab._-/\\\x00ü", max_size=12))
def test_a_plain_key_is_one_the_full_check_accepts(key: str) -> None:
    """The regex fast path (``is_plain_key``) never lets through a key the rules refuse."""
    if is_plain_key(key):
        assert _check_key(key) == key and key.isascii()
    try:
        _check_key(key)
    except InvalidKeyError:
        with pytest.raises(InvalidKeyError):
            validate_key(key)
    else:
        assert validate_key(key) == key


@pytest.mark.parametrize("key", ["a", "zarr.json", "a/c/0/1", ".zattrs", "a/.zarray", "..a/b.",
                                 "a-b_c/..x", "c/0.0"])
def test_plain_keys(key: str) -> None:
    assert is_plain_key(key)


@pytest.mark.parametrize("key", ["", ".", "..", "a/.", "a/../b", "./a", "a/", "/a", "a//b",
                                 "ü", "a b", "a\\b"])
def test_keys_that_are_not_plain(key: str) -> None:
    assert not is_plain_key(key)


def test_non_string_key() -> None:
    with pytest.raises(InvalidKeyError):
        validate_key(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("prefix", ["", "a/", "a/b/", ".x/"])
def test_good_prefixes(prefix: str) -> None:
    assert validate_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", BAD_PREFIXES)
def test_bad_prefixes(prefix: str) -> None:
    with pytest.raises(InvalidKeyError):
        validate_prefix(prefix)


@pytest.mark.parametrize(
    "make", [lambda: RangeRequest(-1, 2), lambda: RangeRequest(3, 2), lambda: OffsetRequest(-1),
             lambda: SuffixRequest(-5), lambda: OffsetRequest(1.5), lambda: RangeRequest(True, 2)]
)
def test_invalid_ranges(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidByteRangeError):
        make()


def test_resolve_rejects_foreign_objects() -> None:
    with pytest.raises(TypeError, match="Unexpected byte_range"):
        resolve((0, 2), 10)  # type: ignore[arg-type]


@given(st.binary(max_size=50), st.integers(0, 60), st.integers(0, 60))
def test_ranges_match_python_slicing(value: bytes, a: int, b: int) -> None:
    start, end = min(a, b), max(a, b)
    assert slice_value(value, RangeRequest(start, end)) == value[start:end]
    assert slice_value(value, OffsetRequest(a)) == value[a:]
    assert slice_value(value, SuffixRequest(a)) == (value[-a:] if a else b"")
    assert slice_value(value, None) == value


@pytest.mark.parametrize("key", ["a/\ud800", "\udfff", "g/x\udc80y/zarr.json"])
def test_a_lone_surrogate_is_an_invalid_key_not_an_encoding_error(key: str) -> None:
    with pytest.raises(InvalidKeyError, match="lone surrogate"):
        validate_key(key)
    with pytest.raises(InvalidKeyError, match="lone surrogate"):
        validate_prefix(key + "/")
    assert not is_valid_key(key)

r"""The one place where store keys and prefixes are validated.

A *key* names one value: slash-separated segments such as ``"a/b/zarr.json"``.
A *prefix* names a directory of keys: the empty string (everything) or a
sequence of segments ending in ``"/"`` (``"a/b/"``). Every store calls these
validators through ``zarrstore.protocol``, so a bad key is refused the same
way everywhere, before any I/O happens.

Refused: empty keys, empty segments (``"a//b"``), ``"."`` and ``".."``
segments, absolute paths (leading ``"/"``), trailing ``"/"`` on a key,
backslashes, NUL characters, and text that is not valid Unicode (a lone
surrogate such as ``"\ud800"``, which no backing can encode as UTF-8). These
are the forms that could escape a filesystem root, mean different things to
different backings, or fail deep inside one with an encoding error.
"""

from __future__ import annotations

import functools
import re

from zarrstore.errors import InvalidKeyError

__all__ = ["is_plain_key", "is_valid_key", "validate_key", "validate_prefix"]

_FORBIDDEN_CHARACTERS = ("\\", "\x00")


def _segment_problem(text: str) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"not valid Unicode: lone surrogate {text[exc.start]!r} at {exc.start}"
    for character in _FORBIDDEN_CHARACTERS:
        if character in text:
            return f"contains forbidden character {character!r}"
    if text.startswith("/"):
        return "absolute paths are not keys"
    for segment in text.split("/"):
        if segment == "":
            return "empty path segment"
        if segment in (".", ".."):
            return f"{segment!r} segments are not allowed"
    return None


#: Segments of ASCII letters, digits, ``_``, ``.`` and ``-``, none of them ``.`` or ``..``:
#: zarr's chunk keys and metadata names, valid by construction.
_PLAIN_KEY = re.compile(r"(?:(?!\.\.?/)[A-Za-z0-9_.\-]+/)*(?!\.\.?\Z)[A-Za-z0-9_.\-]+")


def is_plain_key(key: str) -> bool:
    """Whether ``key`` is a valid key of the common form, decided by one regex match.

    Plain keys are ASCII (one byte per character) and pass ``validate_key``;
    ``False`` says nothing: the key may still be valid (``validate_key`` decides).
    """
    return _PLAIN_KEY.fullmatch(key) is not None


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it is a valid store key.

    Every read and write checks its key, so the last few thousand valid keys
    are remembered (an invalid key is checked, and refused, every time).

    Raises:
        InvalidKeyError: naming the key and the rule it breaks.
    """
    if type(key) is str:
        if _PLAIN_KEY.fullmatch(key) is not None:  # a write of a new chunk key: no cache miss
            return key
        return _valid_key(key)
    return _check_key(key)


@functools.lru_cache(maxsize=4096)
def _valid_key(key: str) -> str:
    return _check_key(key)  # lru_cache keeps results only, never an exception


def _check_key(key: str) -> str:
    if not isinstance(key, str):
        raise InvalidKeyError(key, "keys are str")
    if key == "":
        raise InvalidKeyError(key, "empty key")
    if key.endswith("/"):
        raise InvalidKeyError(key, "a key cannot end with '/' (that is a prefix)")
    problem = _segment_problem(key)
    if problem is not None:
        raise InvalidKeyError(key, problem)
    return key


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` unchanged if it is ``""`` or a valid key followed by ``"/"``.

    Raises:
        InvalidKeyError: naming the prefix and the rule it breaks.
    """
    if not isinstance(prefix, str):
        raise InvalidKeyError(prefix, "prefixes are str")
    if prefix == "":
        return prefix
    if not prefix.endswith("/"):
        raise InvalidKeyError(prefix, "a non-empty prefix must end with '/'")
    problem = _segment_problem(prefix[:-1])
    if problem is not None:
        raise InvalidKeyError(prefix, problem)
    return prefix


def is_valid_key(key: str) -> bool:
    """Whether ``key`` would pass ``validate_key``."""
    try:
        validate_key(key)
    except InvalidKeyError:
        return False
    return True


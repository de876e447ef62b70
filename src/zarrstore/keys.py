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
import os
import re
from collections.abc import Sequence
from pathlib import Path

from zarrstore.errors import InvalidKeyError

__all__ = [
    "is_plain_key",
    "is_valid_key",
    "name_max",
    "refuse_long_names",
    "refuse_unnamable",
    "validate_key",
    "validate_prefix",
]

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


def name_max(root: Path) -> int:
    """The longest file name, in bytes, that the filesystem holding ``root`` takes.

    ``pathconf(PC_NAME_MAX)`` of ``root`` or of its nearest existing parent;
    255 (Linux, macOS, Windows) where the platform cannot tell.
    """
    for place in (root, *root.parents):
        try:
            return int(os.pathconf(place, "PC_NAME_MAX"))
        except (OSError, ValueError, AttributeError):
            continue
    return 255


def refuse_long_names(key: str, parts: Sequence[str], limit: int) -> None:
    """Refuse ``key`` if one of its ``parts`` is longer than ``limit`` bytes of UTF-8.

    Such a file cannot exist, and the OS would answer any call on it with
    ``ENAMETOOLONG`` (a bare ``OSError``, as zarr's ``LocalStore`` lets through);
    a store limit is an ``InvalidKeyError`` on every call, as ``LMDBStore``'s
    511 bytes are.

    Raises:
        InvalidKeyError: naming the key, the part's length and the limit.
    """
    for part in parts:
        size = len(part.encode())
        if size > limit:
            raise InvalidKeyError(
                key, f"a path segment of {size} bytes: this filesystem's names are at most "
                f"{limit} bytes")


#: The longest path Linux opens (``PATH_MAX``), in bytes, its terminating NUL included.
PATH_MAX = 4096

#: ASCII control characters: no object path of obstore's holds one, nor an FTP command.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def refuse_unnamable(key: str, *, controls: bool = False, root: str | None = None,
                     name_limit: int = 255) -> None:
    r"""Refuse a key (or prefix) that a backing cannot name, before any I/O.

    Args:
        key: the key or prefix.
        controls: refuse ASCII control characters (``"
    "``, ``""``, ...):
            obstore parses no path with one, and FTP sends paths in command lines.
        root: for a backing of files opened by full path, the root directory:
            refuse segments over ``name_limit`` bytes (``NAME_MAX``) and a
            ``root/key`` path of ``PATH_MAX`` bytes or more.
        name_limit: the longest file name in bytes.

    Raises:
        InvalidKeyError: naming the key and the limit it breaks (a limit of the
            store, as ``LMDBStore``'s 511 bytes; never the backing's bare
            ``OSError``, ``ValueError`` or ``TypeError``).
    """
    if controls and CONTROL_CHARACTERS.search(key):
        raise InvalidKeyError(key, "this store's paths cannot hold ASCII control characters")
    if root is None:
        return
    refuse_long_names(key, key.rstrip("/").split("/"), name_limit)
    size = len(root.encode()) + 1 + len(key.encode())
    if size >= PATH_MAX:
        raise InvalidKeyError(
            key, f"a path of {size} bytes from the filesystem's root: paths are shorter "
            f"than {PATH_MAX} bytes")

"""Argument checks for the public entry points: a clear ``TypeError`` at the door.

The porcelain (``Repository``'s methods, the storage constructors) calls these
first, so that a wrong type fails where the caller can see it — naming the
parameter, what was given and what to pass — instead of as an
``AttributeError`` from deep inside the engine. This layer sits between
``storage`` and ``repository``: it knows the storage descriptions (a plain
path becomes an LMDB storage) and nothing of sessions or history.
"""

from __future__ import annotations

import os
import re
import reprlib
from collections.abc import Mapping
from datetime import datetime
from typing import TypeGuard

from versionstore.ids import object_id_from_text
from versionstore.storage import LMDBStorage, RepositoryStorage

__all__ = [
    "as_storage",
    "check_flag",
    "check_mapping",
    "check_name",
    "check_optional_name",
    "check_optional_time",
    "looks_like_snapshot_id",
    "looks_like_url",
]

_STORAGE_HINT = (
    "pass vs.lmdb_storage(path), vs.in_memory_storage(), or the path of an LMDB "
    "repository directory as a str or os.PathLike"
)


#: A URL's scheme and "://" (RFC 3986 scheme characters).
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def looks_like_url(text: str) -> bool:
    """Whether ``text`` starts with a URL scheme and ``://`` (``s3://bucket/x``)."""
    return _URL.match(text) is not None


def _shown(value: object) -> str:
    return f"{type(value).__name__} {reprlib.repr(value)}"


def _is_storage(value: object) -> TypeGuard[RepositoryStorage]:
    return callable(getattr(value, "open_backend", None)) and callable(
        getattr(value, "may_hold_repository", None)
    )


def as_storage(value: object, parameter: str = "storage") -> RepositoryStorage:
    """The repository storage ``value`` describes; a path means an LMDB directory.

    Raises:
        TypeError: for anything else (a zarr store, bytes, a number …), saying
            what to pass.
        ValueError: for a ``str`` that is a URL (``s3://bucket/prefix``), naming
            the storages that take one.
    """
    if _is_storage(value):
        return value
    if isinstance(value, str) and looks_like_url(value):
        # Taken as a path, "s3://bucket/x" would become the directory "s3:/bucket/x".
        raise ValueError(
            f"{parameter} {value!r} looks like a URL, but a str names an LMDB directory; "
            "for object storage pass vs.s3_storage(...), vs.gcs_storage(...) or "
            "vs.azure_storage(...), or versionstore.urls.storage_from_url(url) "
            "(write './name' for a directory whose name holds '://')"
        )
    if isinstance(value, str | os.PathLike):
        return LMDBStorage(value)  # its converter refuses a bytes path
    hint = _STORAGE_HINT
    if hasattr(value, "get") and hasattr(value, "set"):
        hint += " (a Zarr store is not a repository: write to session.store instead)"
    raise TypeError(f"{parameter} must be a repository storage; got {_shown(value)}: {hint}")


def check_name(value: object, parameter: str, what: str = "a branch name") -> str:
    """``value`` if it is a ``str``.

    Raises:
        TypeError: naming ``parameter`` and ``what`` it should be.
    """
    if isinstance(value, str):
        return value
    hint = ""
    found_id = getattr(value, "id", None)
    if isinstance(found_id, str):
        hint = f" (did you mean its .id, {found_id!r}?)"
    elif isinstance(getattr(value, "snapshot_id", None), str):
        hint = " (did you mean its .snapshot_id?)"
    raise TypeError(f"{parameter} must be a str ({what}); got {_shown(value)}{hint}")


def check_optional_name(value: object, parameter: str, what: str) -> str | None:
    """``value`` if it is ``None`` or a ``str`` (see ``check_name``)."""
    return None if value is None else check_name(value, parameter, what)


def check_optional_time(value: object, parameter: str = "as_of") -> datetime | None:
    """``value`` if it is ``None`` or a timezone-aware ``datetime``.

    Raises:
        TypeError: if it is not a ``datetime``.
        ValueError: if it has no timezone (``datetime.now(UTC)`` has one).
    """
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError(f"{parameter} must be a datetime; got {_shown(value)}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{parameter} must be timezone-aware (e.g. datetime.now(UTC)); got a naive datetime"
        )
    return value


def check_flag(value: object, parameter: str) -> bool:
    """``value`` if it is a ``bool``.

    Raises:
        TypeError: otherwise (a string such as ``"false"`` would read as true).
    """
    if isinstance(value, bool):
        return value
    raise TypeError(f"{parameter} must be True or False; got {_shown(value)}")


def check_mapping(value: object, parameter: str) -> None:
    """Refuse ``value`` unless it is ``None`` or a mapping (a ``dict``).

    Raises:
        TypeError: otherwise.
    """
    if value is not None and not isinstance(value, Mapping):
        raise TypeError(f"{parameter} must be a dict (or None); got {_shown(value)}")


def looks_like_snapshot_id(name: str) -> bool:
    """Whether ``name`` has the form of a snapshot id (32 base32 characters)."""
    try:
        object_id_from_text(name)
    except ValueError:
        return False
    return True

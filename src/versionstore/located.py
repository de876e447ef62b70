"""Located staging names: where a session's chunk ``PUT`` on object storage puts a chunk.

On object storage a session stages a chunk by one ``PUT`` whose *name*
records what the write means (``docs/format.md``, "Located staging"):

``stage/<session id>/<epoch: 10 digits>/<escaped key>/<stamp: 16 hex>-<id: 40 hex>-<size>``

The body is the chunk's frame, as under ``objects/<id>``. A commit lists
the session's epochs and *absorbs* what it finds into ordinary staged refs
(``LocatedChunkRef`` entries whose hint is the name), one record for all.
This module builds and parses those names, hands out the stamps that order
two writes of one key, and picks the newest write per key from a listing.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable

from versionstore.ids import ID_LENGTH, ObjectId
from versionstore.records import LOCATION_LIMIT, LocatedChunkRef, is_location

__all__ = [
    "MAX_ESCAPED_KEY",
    "epoch_prefix",
    "escape_key",
    "located_name",
    "newest_writes",
    "next_stamp",
    "parse_located",
    "unescape_key",
]

#: Keys whose escaped form is longer than this (bytes) stage as log records instead. The
#: escaped key is one path component of the name, and a file system allows 255 bytes for
#: one (obstore's ``LocalStore``; S3's limit, 1,024 bytes for the whole name, is checked
#: against ``Backend.located_name_limit`` as well). Non-ASCII keys escape to 3 bytes per
#: UTF-8 byte: a 28-character Japanese array name already passes 255.
MAX_ESCAPED_KEY = 255

_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_NAME = re.compile(r"stage/([^/]+)/(\d{10})/([^/]+)/([0-9a-f]{16})-([0-9a-f]{40})-(\d+)\Z")
_stamp_lock = threading.Lock()
_last_stamp = 0


def escape_key(key: str) -> str:
    """``key`` as one path component: bytes other than letters, digits, ``_`` and ``-`` as ``%XX``.

    Dots and slashes are escaped too, so no component is ``.`` or ``..`` and
    one key never reads as a prefix of another's folder.
    """
    raw = key.encode("utf-8", "surrogatepass")
    return "".join(chr(b) if b in _PLAIN else f"%{b:02X}" for b in raw)


def unescape_key(text: str) -> str:
    """The key ``escape_key`` made ``text`` from.

    Raises:
        ValueError: ``text`` is not an escaped key.
    """
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        if c == "%":
            digits = text[i + 1:i + 3]
            if len(digits) != 2 or not all(d in "0123456789ABCDEF" for d in digits):
                raise ValueError(f"malformed escaped key {text!r}")
            out.append(int(digits, 16))
            i += 3
        elif ord(c) in _PLAIN:
            out.append(ord(c))
            i += 1
        else:
            raise ValueError(f"malformed escaped key {text!r}")
    return out.decode("utf-8", "surrogatepass")


def next_stamp() -> int:
    """A stamp for a located write: the clock in ns, strictly increasing within this process."""
    global _last_stamp  # noqa: PLW0603 - one counter per process, as the clock itself
    with _stamp_lock:
        _last_stamp = max(time.time_ns(), _last_stamp + 1)
        return _last_stamp


def epoch_prefix(session_id: str, epoch: int) -> str:
    """The folder of a session's located writes in ``epoch`` (relative, with its ``/``)."""
    return f"stage/{session_id}/{epoch:010d}/"


def located_name(session_id: str, epoch: int, key: str, stamp: int, chunk_id: ObjectId,
                 size: int, limit: int = LOCATION_LIMIT) -> str | None:
    """The name of a located write of ``key``; ``None`` if the key is too long for one.

    ``limit``: the bytes a name may have (``Backend.located_name_limit``: the
    service's limit on object names, less the repository's prefix).
    """
    escaped = escape_key(key)
    if len(escaped) > MAX_ESCAPED_KEY:
        return None
    name = (f"{epoch_prefix(session_id, epoch)}{escaped}/{stamp:016x}-{chunk_id.hex()}-{size}")
    return name if len(name) <= limit and is_location(name) else None


def parse_located(name: str) -> tuple[str, int, str, int, LocatedChunkRef] | None:
    """``(session id, epoch, key, stamp, entry)`` of a located write's name; ``None`` if not one."""
    match = _NAME.match(name)
    if match is None:
        return None
    session_id, epoch, escaped, stamp, hex_id, size = match.groups()
    try:
        key = unescape_key(escaped)
    except (ValueError, UnicodeDecodeError):
        return None
    chunk_id = bytes.fromhex(hex_id)
    if len(chunk_id) != ID_LENGTH:  # pragma: no cover - the pattern has 40 digits
        return None
    entry = LocatedChunkRef(chunk_id=ObjectId(chunk_id), size=int(size), hint=name)
    return session_id, int(epoch), key, int(stamp, 16), entry


def newest_writes(names: Iterable[str], session_id: str) -> dict[str, LocatedChunkRef]:
    """Per key, the newest located write among ``names``: the newest epoch, then stamp.

    Names that are not located writes of ``session_id`` are ignored.
    """
    best: dict[str, tuple[int, int, LocatedChunkRef]] = {}
    for name in names:
        parsed = parse_located(name)
        if parsed is None or parsed[0] != session_id:
            continue
        _, epoch, key, stamp, entry = parsed
        known = best.get(key)
        if known is None or (epoch, stamp) > known[:2]:
            best[key] = (epoch, stamp, entry)
    return {key: entry for key, (_, _, entry) in sorted(best.items())}

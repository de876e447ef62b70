"""Identifiers: object ids (content hashes) and the text forms users see.

Every immutable object — chunk, tree node, snapshot — is named by the first
20 bytes of the BLAKE3 hash of its kind byte and its content. BLAKE3 because
the id *is* the deduplication key: two different values with one id would
silently return the wrong bytes, so the hash must resist deliberate
collisions, not only accidental ones; BLAKE3 does at about 1.5 GB/s per core
in Python, well above the write speed of the storage behind it. 160 bits keep
accidental collisions out of reach (birthday bound 2^80) while keeping tree
leaves small.

Snapshot ids are shown as 32-character base32 text (``SnapshotId``);
session ids are random 16-byte tokens in the same alphabet.
"""

from __future__ import annotations

import base64
import secrets
from typing import NewType

import blake3

__all__ = [
    "ID_LENGTH",
    "MIN_PREFIX",
    "ObjectId",
    "SessionId",
    "SnapshotId",
    "hash_object",
    "new_session_id",
    "object_id_from_text",
    "object_id_prefix",
    "object_id_text",
]

ID_LENGTH = 20
#: Payloads up to this many bytes are hashed as one joined buffer (``hash_object``).
_JOIN_BELOW = 64 << 10

ObjectId = NewType("ObjectId", bytes)
SnapshotId = NewType("SnapshotId", str)
SessionId = NewType("SessionId", str)


def hash_object(kind: int, payload: bytes | memoryview) -> ObjectId:
    """The id of an object of ``kind`` whose content is ``payload``."""
    if len(payload) <= _JOIN_BELOW:
        # One hasher call over a copy is twice as fast as two for small payloads
        # (the binding's per-call cost is about a 4 KiB hash); the id is the same.
        return ObjectId(blake3.blake3(bytes((kind,)) + payload).digest(ID_LENGTH))
    hasher = blake3.blake3(bytes((kind,)))
    hasher.update(payload)
    return ObjectId(hasher.digest(ID_LENGTH))


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
#: Every 10-bit group as its two base32 characters (``base64.b32encode`` is pure
#: Python and costs more than decoding a snapshot; ancestry names thousands of ids).
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_PAIR_VALUES = {pair: value for value, pair in enumerate(_PAIRS)}


def object_id_text(object_id: bytes) -> str:
    """The base32 text form of an object id (what users see)."""
    if len(object_id) != ID_LENGTH:
        return base64.b32encode(object_id).decode("ascii").rstrip("=")
    number = int.from_bytes(object_id, "big")
    return "".join([_PAIRS[(number >> shift) & 1023] for shift in range(150, -10, -10)])


def object_id_from_text(text: str) -> ObjectId:
    """Parse the text form of an object id.

    Raises:
        ValueError: if ``text`` is not a well-formed id.
    """
    if not isinstance(text, str) or len(text) != 32:
        raise ValueError(f"not a snapshot id: {text!r}")
    upper = text.upper()
    if len(upper) != 32:  # a character whose capital is two ("ß")
        raise ValueError(f"not a snapshot id: {text!r}")
    # Ten bits per pair of characters, as ``object_id_text`` writes them: every session
    # opened at a snapshot id parses one, and ``base64.b32decode`` costs several times this.
    number = 0
    try:
        for start in range(0, 32, 2):
            number = (number << 10) | _PAIR_VALUES[upper[start:start + 2]]
    except KeyError as exc:
        raise ValueError(f"not a snapshot id: {text!r}") from exc
    return ObjectId(number.to_bytes(ID_LENGTH, "big"))


#: The shortest snapshot id prefix accepted (the 8 characters the CLI and demo print).
MIN_PREFIX = 8
_BASE32 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")


def object_id_prefix(text: str) -> bytes | None:
    """The whole bytes an id's text prefix fixes, or ``None`` if ``text`` cannot be one.

    A prefix is ``MIN_PREFIX`` to 31 base32 characters (case-insensitive);
    each character fixes 5 bits, so ``n`` characters fix ``5n // 8`` bytes.
    """
    upper = text.upper() if isinstance(text, str) else ""
    if not MIN_PREFIX <= len(upper) < 32 or not set(upper) <= _BASE32:
        return None
    return base64.b32decode(upper.ljust(32, "A"))[: 5 * len(upper) // 8]


def new_session_id() -> SessionId:
    """A fresh random session id."""
    return SessionId(base64.b32encode(secrets.token_bytes(15)).decode("ascii"))

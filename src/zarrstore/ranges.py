"""Byte ranges: the three ways to ask for part of a value.

Mirrors the seed's byte-range kinds and zarr's ``ByteRequest`` family:

* ``RangeRequest(start, end)`` — bytes ``[start, end)``;
* ``OffsetRequest(offset)`` — from ``offset`` to the end;
* ``SuffixRequest(suffix)`` — the last ``suffix`` bytes.

Ranges that run past the end of a value are clipped, as POSIX ``read`` and
HTTP ``Range`` are: a range past the end gives ``b""`` and a suffix longer
than the value gives the whole value. Negative numbers and reversed ranges
are refused with ``InvalidByteRangeError``.
"""

from __future__ import annotations

import attrs

from zarrstore.errors import InvalidByteRangeError

__all__ = [
    "ByteRange",
    "OffsetRequest",
    "RangeRequest",
    "SuffixRequest",
    "resolve",
    "slice_value",
]


def _non_negative(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidByteRangeError(f"{attribute.name} must be a non-negative int, got {value!r}")


@attrs.frozen
class RangeRequest:
    """Bytes ``[start, end)`` of a value."""

    start: int = attrs.field(validator=_non_negative)
    end: int = attrs.field(validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        if self.end < self.start:
            raise InvalidByteRangeError(f"range end {self.end} is before start {self.start}")


@attrs.frozen
class OffsetRequest:
    """Bytes from ``offset`` to the end of a value."""

    offset: int = attrs.field(validator=_non_negative)


@attrs.frozen
class SuffixRequest:
    """The last ``suffix`` bytes of a value."""

    suffix: int = attrs.field(validator=_non_negative)


ByteRange = RangeRequest | OffsetRequest | SuffixRequest


def resolve(byte_range: ByteRange | None, length: int) -> tuple[int, int]:
    """Turn ``byte_range`` into clipped ``(start, stop)`` offsets for a value of ``length``.

    Raises:
        TypeError: if ``byte_range`` is not one of the three request kinds.
    """
    if byte_range is None:
        return 0, length
    if isinstance(byte_range, RangeRequest):
        start = min(byte_range.start, length)
        return start, max(start, min(byte_range.end, length))
    if isinstance(byte_range, OffsetRequest):
        return min(byte_range.offset, length), length
    if isinstance(byte_range, SuffixRequest):
        return max(0, length - byte_range.suffix), length
    raise TypeError(f"Unexpected byte_range, got {byte_range!r}")


def slice_value(value: bytes, byte_range: ByteRange | None) -> bytes:
    """The part of ``value`` that ``byte_range`` asks for."""
    if byte_range is None:
        return value
    start, stop = resolve(byte_range, len(value))
    return value[start:stop]

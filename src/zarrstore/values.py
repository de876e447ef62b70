"""The one place where a value handed to a store is checked: bytes-like, or a clear ``TypeError``.

A value is anything exposing a contiguous or strided buffer (``bytes``,
``bytearray``, ``memoryview``, a NumPy array: Python's buffer protocol), and
is stored as the bytes that buffer holds, in C order. ``bytes(value)``
alone would take an ``int`` as a length (``bytes(5)`` is five zero bytes)
and an iterable of ints as content: a wrong argument would be stored
silently instead of refused.
"""

from __future__ import annotations

__all__ = ["value_bytes"]


def value_bytes(value: object) -> bytes:
    """``value`` as ``bytes`` (itself if it is ``bytes``; otherwise a copy of its buffer).

    Raises:
        TypeError: ``value`` does not support the buffer protocol (an ``int``,
            a ``str``, ``None``, a list ...).
    """
    if type(value) is bytes:
        return value
    try:
        view = memoryview(value)  # type: ignore[arg-type]  # checked here, at run time
    except TypeError:
        raise TypeError(
            f"a store value must be bytes-like (bytes, bytearray, memoryview, or a buffer "
            f"such as a NumPy array), not {type(value).__name__}") from None
    with view:
        return view.tobytes()

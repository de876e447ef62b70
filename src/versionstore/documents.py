"""Reading metadata documents (``zarr.json``, ``.zarray``, ``.zattrs`` …) as JSON.

The engine reads documents users wrote (to tell arrays from groups, to
carry a moved node's views, to compare what a merge changed); zarr parses
them again when it opens the node. Whatever Python's ``json`` cannot make of
a value — not UTF-8, not JSON, or nested so deeply that the parser runs out
of stack (``RecursionError``, at a few thousand levels) — is one kind of
fault here: ``ValueError``, which each reader treats as "not a document".
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["load_document"]


def load_document(value: bytes | str) -> Any:
    """``json.loads(value)``.

    Raises:
        ValueError: ``value`` is not UTF-8 JSON, or nests too deeply to parse.
    """
    try:
        return json.loads(value)
    except RecursionError:
        raise ValueError("the JSON document nests too deeply to parse") from None

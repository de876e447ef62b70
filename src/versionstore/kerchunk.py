"""Importing a kerchunk reference set into a session, as virtual chunks.

kerchunk (and VirtualiZarr's ``to_kerchunk``) describe a Zarr hierarchy over
existing files as one JSON document: ``{"version": 1, "refs": {key: value}}``
(or, version 0, the ``refs`` dict alone), where each value is either

* a string: the value itself, inline (``"base64:..."`` for binary values),
  which is how metadata documents (``.zgroup``, ``.zarray``, ``.zattrs``,
  or ``zarr.json``) travel;
* ``[url, offset, length]``: a chunk that is that byte range of ``url``;
* ``[url]``: a chunk that is the whole of ``url``.

``import_kerchunk`` stages each inline value as a value and each range as a
``VirtualRef``, so committing the session versions the dataset without
copying its data (and without icechunk). ``templates`` (``"{{u}}"`` in
URLs) are expanded; generated references (``gen``) are not supported.
Metadata stays as kerchunk wrote it: kerchunk writes Zarr v2 hierarchies,
which zarr-python and xarray open with ``zarr_format=2``.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from versionstore.errors import VirtualSourceMissingError
from versionstore.records import VirtualRef
from versionstore.virtual import checksum_of, virtual_ref

if TYPE_CHECKING:
    from versionstore.session import Session

__all__ = ["KerchunkImport", "import_kerchunk"]

_TEMPLATE = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@attrs.frozen(kw_only=True)
class KerchunkImport:
    """What ``import_kerchunk`` staged: inline values and virtual chunks, by count."""

    inline_values: int
    virtual_chunks: int
    sources: int


def _load(refs: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    if isinstance(refs, str | os.PathLike):
        document = json.loads(Path(refs).read_text())
    elif isinstance(refs, Mapping):
        document = dict(refs)
    else:
        raise TypeError(f"refs must be a kerchunk reference dict or a JSON file path, not "
                        f"{type(refs).__name__}")
    if "gen" in document and document["gen"]:
        raise ValueError("generated kerchunk references ('gen') are not supported; expand "
                         "them first (kerchunk's or VirtualiZarr's tools write plain refs)")
    if document.get("version") == 1 or "refs" in document:
        templates = {str(k): str(v) for k, v in (document.get("templates") or {}).items()}
        body = document.get("refs")
        if not isinstance(body, Mapping):
            raise ValueError("a version 1 kerchunk reference set needs a 'refs' mapping")
        return {"templates": templates, "refs": dict(body)}
    return {"templates": {}, "refs": document}


def _url(raw: object, templates: Mapping[str, str], key: str) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"kerchunk reference {key!r}: the URL is not a string ({raw!r})")
    url = _TEMPLATE.sub(lambda m: templates.get(m.group(1), m.group(0)), raw)
    if "://" not in url:  # a bare local path, as kerchunk writes for local files
        url = Path(url).absolute().as_uri()
    return url


def _inline(value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    if value.startswith("base64:"):
        return base64.b64decode(value[len("base64:"):])
    return value.encode()


def import_kerchunk(session: Session, refs: Mapping[str, Any] | str | os.PathLike[str],
                    path: str = "", *, record_checksums: bool = True,
                    validate_containers: bool = True) -> KerchunkImport:
    """Stage a kerchunk reference set in ``session`` under node ``path``.

    Args:
        session: a writable session; commit it afterwards.
        refs: the reference set (a dict, as kerchunk and VirtualiZarr's
            ``to_kerchunk`` return) or the path of its JSON file.
        path: the group to import under (``""``: the root).
        record_checksums: ask each source (once per file, through the
            repository's ``virtual_chunk_stores``) for its ETag, else its
            modification time, and record it, so later reads fail loudly if
            the file changes (the default: kerchunk itself records no
            checksums, and a reference without one is never checked).
            ``False`` imports without reaching the sources at all.
        validate_containers: refuse URLs that no configured store serves.

    Returns:
        ``KerchunkImport``: how many inline values, virtual chunks and source
        files were staged.

    Raises:
        ValueError: a malformed reference set, or generated references.
        NoVirtualChunkStoreError: a URL no configured store serves.
        VirtualSourceMissingError: ``record_checksums`` (or a ``[url]``
            reference, whose length must be looked up) and a source is missing.
        ReadOnlySessionError: the session is read-only.
    """
    document = _load(refs)
    templates, body = document["templates"], document["refs"]
    directory = path.strip("/")
    prefix = directory + "/" if directory else ""
    stores = session.repository.virtual_chunks
    inline: list[tuple[str, bytes]] = []
    pending: list[tuple[str, str, int, int | None]] = []
    for key, value in body.items():
        if isinstance(value, str | bytes):
            inline.append((prefix + key, _inline(value)))
        elif isinstance(value, list | tuple) and len(value) in (1, 3):
            url = _url(value[0], templates, key)
            if len(value) == 3:
                offset, length = value[1], value[2]
                if not isinstance(offset, int) or not isinstance(length, int):
                    raise ValueError(f"kerchunk reference {key!r}: offset and length must be "
                                     f"ints, not {value[1:]!r}")
                pending.append((prefix + key, url, offset, length))
            else:
                pending.append((prefix + key, url, 0, None))
        else:
            raise ValueError(f"kerchunk reference {key!r}: expected a string or "
                             f"[url, offset, length], not {value!r}")
    urls = sorted({url for _, url, _, _ in pending})
    if validate_containers or record_checksums:
        for url in urls:
            stores.check(url)
    infos = {}
    needs_stat = {url for _, url, _, length in pending if length is None or record_checksums}
    for url in sorted(needs_stat):
        info = stores.stat(url)
        if info is None:
            raise VirtualSourceMissingError(url, f"virtual chunk source {url!r} does not exist")
        infos[url] = info
    virtual: list[tuple[str, VirtualRef]] = []
    for key, url, offset, length in pending:
        info = infos.get(url)
        size = length if length is not None else info.size - offset if info else 0
        checksum = checksum_of(info) if record_checksums and info is not None else None
        virtual.append((key, virtual_ref(url, offset, size, checksum)))
    if inline:
        session.set_values(inline)
    if virtual:
        session.set_virtual_entries(virtual)
    return KerchunkImport(inline_values=len(inline), virtual_chunks=len(virtual),
                          sources=len(urls))

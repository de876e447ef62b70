"""``HTTPStore``: read-only access to a zarr hierarchy published on a web server.

The seed's read-only HTTP store, over aiohttp. A key is a URL under the base
URL; ``get`` is an HTTP ``GET`` and a byte range becomes a ``Range`` header
(``bytes=a-b``, ``bytes=a-`` or ``bytes=-n``). A ``404`` is a missing key
(``None``); any other failure raises ``StorageIOError`` naming the URL and
the status. A ``206`` answer is cut by its ``Content-Range``; one that does
not hold the range asked is not trusted (the whole value is read and cut).
``size`` is a ``HEAD`` request (``Content-Length``), or a one-byte ``GET``
where ``HEAD`` is refused (403, 405, 501). A key the server redirects to
``key/`` names a directory: it holds nothing (its HTML listing is no value).

Transient failures — a ``5xx`` answer, a dropped or reset connection — are
retried with exponential backoff; a timeout is not, so a hung server costs one
``timeout``, not several. Connections are pooled and reused, one aiohttp
session per event loop (``zarrstore.http_sessions``): zarr's I/O thread,
``AsyncToSync``'s thread and a caller's own ``asyncio.run`` each get theirs.

HTTP has no listing, so ``supports_listing`` is ``False`` and listing raises
``UnsupportedOperationError``. Open a hierarchy through zarr's consolidated
metadata (``zarr.open_consolidated`` / ``xarray.open_zarr(consolidated=True)``),
which needs no listing. Every write raises ``ReadOnlyError``.

This is the one module that imports aiohttp; its errors are translated here.
"""

from __future__ import annotations

import asyncio
import functools
import re
import weakref
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any, override
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp

from zarrstore.errors import StorageIOError, StorageTimeoutError, UnsupportedOperationError
from zarrstore.http_sessions import SessionPool, new_session
from zarrstore.protocol import AsyncStorage, ValueInfo
from zarrstore.ranges import (
    ByteRange,
    OffsetRequest,
    RangeRequest,
    SuffixRequest,
    resolve,
    slice_value,
)
from zarrstore.zarr_bridge import ZarrStore

__all__ = ["HTTPStorage", "HTTPStore"]

#: Statuses worth another try: the server is overloaded, restarting or behind a flaky proxy.
RETRY_STATUSES = frozenset({500, 502, 503, 504})

#: Answers to ``HEAD`` that say nothing of the key: the method is refused (a URL
#: presigned for ``GET`` answers 403, some servers 405 or 501). ``size`` asks with
#: a one-byte ``GET`` instead.
HEAD_REFUSED = frozenset({403, 405, 501})

#: Connection failures worth another try (resets, drops, refused connects, truncated bodies).
_TRANSIENT = (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)
_NOT_TRANSIENT = (aiohttp.ClientSSLError, aiohttp.ServerFingerprintMismatch)

_SETTINGS = ("url", "headers", "timeout", "retries", "backoff", "max_connections")


def _range_header(byte_range: ByteRange | None) -> str | None:
    """The ``Range`` header for ``byte_range``; ``None`` for a whole-value read."""
    if isinstance(byte_range, RangeRequest):
        return f"bytes={byte_range.start}-{byte_range.end - 1}"
    if isinstance(byte_range, OffsetRequest) and byte_range.offset > 0:
        return f"bytes={byte_range.offset}-"
    if isinstance(byte_range, SuffixRequest):
        return f"bytes=-{byte_range.suffix}"
    return None


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)


def _placed(body: bytes, byte_range: ByteRange | None, content_range: str | None) -> bytes | None:
    """The bytes ``byte_range`` asks for, cut from a ``206`` body its ``Content-Range`` places.

    ``None`` when the body does not hold them: a server answered with another
    range than the one asked (sirv answers ``bytes=-n`` with the first bytes;
    some proxies send the whole value under ``206``). Without a
    ``Content-Range`` the body is taken as the range asked, as before.
    """
    if content_range is None:
        return body
    match = _CONTENT_RANGE.fullmatch(content_range.strip())
    if match is None:
        return None
    first = int(match[1])
    total = None if match[3] == "*" else int(match[3])
    if total is None:  # a suffix cannot be placed without the total
        if isinstance(byte_range, SuffixRequest):
            return None
        total = first + len(body)
    start, stop = resolve(byte_range, total)
    if first <= start and stop <= first + len(body):
        return body[start - first : stop - first]
    return None


def _is_empty(byte_range: ByteRange | None) -> bool:
    """Whether ``byte_range`` asks for no bytes whatever the value (no valid ``Range`` says so)."""
    if isinstance(byte_range, RangeRequest):
        return byte_range.end == byte_range.start
    return isinstance(byte_range, SuffixRequest) and byte_range.suffix == 0


class HTTPStorage(AsyncStorage):
    """The storage behind ``HTTPStore``: read-only, over one pooled session per event loop.

    Args:
        url: the base URL; key ``k`` is read from ``{url}/{k}``, with the URL's
            query string (a presigned URL's signature) after the key.
        headers: sent with every request (for example ``{"Authorization": "Bearer ..."}``).
        timeout: seconds allowed for one request, connect to last byte.
        retries: further attempts after a ``5xx`` or a dropped connection.
        backoff: seconds before the first retry; doubled for each further one.
        max_connections: connections open at once per event loop.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.2,
        max_connections: int = 16,
    ) -> None:
        super().__init__(read_only=True)
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"HTTPStorage needs an http:// or https:// URL, got {url!r}")
        parts = urlsplit(url)
        self.url = url if parts.query else url.rstrip("/")
        # A key joins the path; a query (a presigned URL's signature) follows every key.
        self._base = parts._replace(path=parts.path.rstrip("/"), fragment="")
        # identity: a Range applies to the encoded body, so a gzip answer would misplace it.
        self.headers: dict[str, str] = {"Accept-Encoding": "identity", **(headers or {})}
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_connections = max_connections
        self._sessions = SessionPool(
            functools.partial(new_session, self.headers, timeout, max_connections)
        )
        # A storage dropped without close() still hands its connections back.
        weakref.finalize(self, self._sessions.close, wait=1.0)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, HTTPStorage)
            and self.url == other.url
            and self.headers == other.headers
        )

    def __hash__(self) -> int:
        return hash(self.url)

    def __repr__(self) -> str:
        shown = self.url.split("?", 1)[0] + "?…" if self._base.query else self.url
        return f"HTTPStorage({shown!r})"  # a query string may hold a signature

    def __getstate__(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _SETTINGS}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state.pop("url"), **state)  # type: ignore[misc]

    @property
    @override
    def supports_writes(self) -> bool:
        return False

    @property
    @override
    def supports_deletes(self) -> bool:
        return False

    @property
    @override
    def supports_listing(self) -> bool:
        return False

    # -- sessions, one per event loop -------------------------------------------------

    @override
    async def aclose(self) -> None:
        """Close the running loop's session (sessions of closed loops are released too)."""
        await self._sessions.aclose()

    def close(self) -> None:
        """Close every session from synchronous code (``HTTPStore.close`` calls this)."""
        self._sessions.close(wait=self.timeout)

    # -- requests -----------------------------------------------------------------------

    def _key_url(self, key: str) -> str:
        """The URL of ``key``: the base URL's path, ``/``, the quoted key, then its query.

        ``https://host/d.zarr?sig=abc`` reads ``zarr.json`` from
        ``https://host/d.zarr/zarr.json?sig=abc``; appending the key to the
        whole URL put it inside the signature, and the server refused it.
        """
        base = self._base
        return urlunsplit(base._replace(path=f"{base.path}/{quote(key, safe='/')}"))

    def _shown_url(self, key: str) -> str:
        """``_key_url`` for messages: a query string (it may hold a signature) shows as ``?…``."""
        url = self._key_url(key)
        return url if not self._base.query else url.split("?", 1)[0] + "?…"

    async def _request(
        self, method: str, key: str, range_header: str | None = None
    ) -> tuple[int, bytes, int | None, Mapping[str, str]]:
        """One request with retries: ``(status, body, Content-Length, headers)``.

        Raises:
            StorageIOError: on a timeout, a non-transient connection failure, or
                when the retries are spent.
        """
        url = self._key_url(key)
        shown = self._shown_url(key)
        headers = {"Range": range_header} if range_header else None
        session = await self._sessions.session()
        for attempt in range(self.retries + 1):
            delay = self.backoff * 2**attempt
            last = attempt == self.retries
            try:
                async with session.request(method, url, headers=headers) as response:
                    if response.status in RETRY_STATUSES and not last:
                        await response.read()
                        await asyncio.sleep(delay)
                        continue
                    if response.history and response.url.path.endswith("/"):
                        # Redirected to ``key/``: a directory (``http.server``, nginx's
                        # autoindex, Apache), whose listing is no value of the key.
                        await response.read()
                        return 404, b"", None, response.headers
                    body = await response.read() if method == "GET" else b""
                    return response.status, body, response.content_length, response.headers
            except TimeoutError as exc:
                raise StorageTimeoutError(
                    f"{method} {shown} timed out after {self.timeout} s"
                ) from exc
            except _NOT_TRANSIENT as exc:
                raise StorageIOError(f"{method} {shown} failed: {exc}") from exc
            except _TRANSIENT as exc:
                if last:
                    raise StorageIOError(
                        f"{method} {shown} failed after {attempt + 1} attempts: {exc!r}"
                    ) from exc
                await asyncio.sleep(delay)
            except aiohttp.ClientError as exc:
                raise StorageIOError(f"{method} {shown} failed: {exc!r}") from exc
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _failure(self, method: str, key: str, status: int) -> StorageIOError:
        return StorageIOError(f"{method} {self._shown_url(key)} answered HTTP {status}")

    # -- the protocol -----------------------------------------------------------------

    @override
    async def _get(self, key: str, byte_range: ByteRange | None) -> bytes | None:
        if _is_empty(byte_range):
            return None if await self._size(key) is None else b""
        status, body, _, headers = await self._request("GET", key, _range_header(byte_range))
        if status == 206:
            placed = _placed(body, byte_range, headers.get("Content-Range"))
            if placed is not None:
                return placed
            # Not the range asked (a proxy's whole value, a suffix answered with a
            # prefix): the whole value, cut here.
            whole = await self._get(key, None)
            return None if whole is None else slice_value(whole, byte_range)
        if status == 200:  # the server ignored Range and sent the whole value
            return slice_value(body, byte_range)
        if status == 416:  # the value exists, but the range lies wholly past its end
            return b""
        if status == 404:
            return None
        raise self._failure("GET", key, status)

    @override
    async def _size(self, key: str) -> int | None:
        info = await self._stat(key)
        return None if info is None else info.size

    @override
    async def _stat(self, key: str) -> ValueInfo | None:
        status, _, length, headers = await self._request("HEAD", key)
        if status in HEAD_REFUSED:
            return await self._stat_by_get(key)
        if status == 404:
            return None
        if status != 200:
            raise self._failure("HEAD", key, status)
        if length is None:  # no Content-Length (a chunked answer): count the bytes
            value = await self._get(key, None)
            if value is None:
                return None
            length = len(value)
        modified = headers.get("Last-Modified")
        try:
            last_modified = None if modified is None else parsedate_to_datetime(modified)
        except (TypeError, ValueError):  # a malformed date tells nothing
            last_modified = None
        return ValueInfo(size=length, etag=headers.get("ETag"), last_modified=last_modified)

    async def _stat_by_get(self, key: str) -> ValueInfo | None:
        """``_stat`` where ``HEAD`` is refused: a ``GET`` of the first byte tells the size.

        Its ``Content-Range`` (``bytes 0-0/N``) gives ``N``; a ``416`` is an
        empty value; a server that ignores ``Range`` sends the whole value,
        which is counted.

        Raises:
            StorageIOError: the ``GET`` fails too (naming its status).
        """
        status, body, _, headers = await self._request("GET", key, "bytes=0-0")
        if status == 404:
            return None
        if status == 416:
            return ValueInfo(size=0, etag=headers.get("ETag"))
        if status == 206:
            match = _CONTENT_RANGE.fullmatch(headers.get("Content-Range", "").strip())
            if match is not None and match[3] != "*":
                return ValueInfo(size=int(match[3]), etag=headers.get("ETag"))
            value = await self._get(key, None)  # no total given: count the bytes
            return None if value is None else ValueInfo(size=len(value))
        if status == 200:
            return ValueInfo(size=len(body), etag=headers.get("ETag"))
        raise self._failure("GET", key, status)

    @override
    async def _set(self, key: str, value: bytes) -> None:
        raise UnsupportedOperationError("HTTPStorage cannot store values")

    @override
    async def _erase(self, key: str) -> None:
        raise UnsupportedOperationError("HTTPStorage cannot erase values")

    @override
    async def _list_prefix(self, prefix: str) -> list[str]:
        raise UnsupportedOperationError(
            "HTTPStorage cannot list keys; open the hierarchy with consolidated metadata"
        )

    @override
    def _with_read_only(self, read_only: bool) -> HTTPStorage:
        if not read_only:
            raise UnsupportedOperationError("HTTPStorage is read-only; it has no writable form")
        return self


class HTTPStore(ZarrStore):
    """A read-only zarr store over HTTP(S); open hierarchies with consolidated metadata.

    Args:
        url: the base URL of the hierarchy (the directory holding the root ``zarr.json``).
        headers: sent with every request, such as an ``Authorization`` token.
        timeout: seconds allowed for one request.
        retries: further attempts after a ``5xx`` or a dropped connection.
        backoff: seconds before the first retry; doubled each time.
        max_connections: connections open at once per event loop.
        read_only: must be ``True``: HTTP stores cannot store values.

    Raises:
        UnsupportedOperationError: for ``read_only=False``.
    """

    storage: HTTPStorage

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.2,
        max_connections: int = 16,
        read_only: bool = True,
    ) -> None:
        if not read_only:
            raise UnsupportedOperationError("HTTPStore is read-only; it has no writable form")
        super().__init__(
            HTTPStorage(
                url,
                headers=headers,
                timeout=timeout,
                retries=retries,
                backoff=backoff,
                max_connections=max_connections,
            )
        )

    @property
    def url(self) -> str:
        """The base URL of the hierarchy."""
        return self.storage.url

    @override
    def with_read_only(self, read_only: bool = False) -> HTTPStore:
        """A not-yet-open copy; only ``read_only=True`` exists for HTTP.

        Raises:
            UnsupportedOperationError: for ``read_only=False``, in the words zarr expects.
        """
        if not read_only:
            raise UnsupportedOperationError(
                f"with_read_only is not implemented for the {type(self)} store type. "
                "(HTTP stores are read-only.)"
            )
        return super().with_read_only(True)

    @override
    def close(self) -> None:
        """Close the store and its pooled connections."""
        super().close()
        self.storage.close()

"""A serialising, credential-checking, request-counting HTTP proxy in front of moto's S3 server.

moto checks ``If-None-Match``/``If-Match`` and then writes without a lock, so
two racing create-if-absent PUTs can both "win" (measured: a few rounds in a
hundred) and racing overwrites sometimes answer 500 — AWS S3 guarantees one
winner. The proxy forwards every request to moto unchanged but lets only one
*mutating* request (PUT, POST, DELETE) through at a time, which gives moto
the atomicity the real service has; reads pass concurrently. moto also
accepts any access key: the proxy answers requests signed with an unknown
key (or not signed at all) with S3's own ``403 InvalidAccessKeyId`` /
``AccessDenied``. It counts what it forwards, by kind (``put``, ``get``,
``head``, ``list``, ``delete``, ``post``), so tests can assert exact request
numbers. ``stall`` makes it sit on every request (a server that times out),
``stall_matching`` on the requests a pattern matches, ``ignore_conditions``
makes it a service without conditional writes (it drops those headers), and
``lose_answers`` forwards matching requests but answers them ``500`` — a
request the service applied whose answer never arrived. ``age_matching``
answers the ``Last-Modified`` header of matching ``HEAD``/``GET`` requests as
if the object had been stored that much earlier (time passed on the service),
and ``throttle`` answers matching requests ``503 SlowDown`` without
forwarding them (a throttled service), the next ``n`` or all of them.
``omit_newest_listed`` drops the last entry of matching ``LIST`` answers (a
listing that has not caught up with the newest write: an eventually
consistent service, or a page read before a racing writer's object landed).
``deny_matching`` answers matching requests ``403 AccessDenied``
(credentials that may read but not write, say). A ``PUT`` of a key longer
than 1,024 bytes is answered ``400 KeyTooLongError``, as S3 does.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import aiohttp
from aiohttp import web

__all__ = ["S3Proxy", "serve_s3_proxy"]

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")
#: S3 refuses keys longer than 1,024 bytes (UTF-8); moto does not.
_MAX_KEY = 1024
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "date",
               "server", "content-encoding"}


def _error(code: str, message: str, status: int = 403) -> web.Response:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error>")
    return web.Response(status=status, body=body.encode(), content_type="application/xml")


class S3Proxy:
    """The running proxy: its endpoint, what it counted, and its switches."""

    def __init__(self, upstream: str, access_keys: set[str]) -> None:
        self.upstream = upstream
        self.access_keys = access_keys
        self.endpoint = ""
        self.counts: Counter[str] = Counter()
        #: Requests by ``"METHOD /path"`` (to see which objects a workload wrote, and how often).
        self.requests: Counter[str] = Counter()
        self.stall = False
        #: Stall only requests whose ``"METHOD /path"`` matches (e.g. ``"PUT .*/log/"``).
        self.stall_matching: re.Pattern[str] | None = None
        #: Drop ``If-None-Match``/``If-Match``: a service without conditional writes.
        self.ignore_conditions = False
        #: ``(pattern, n)``: forward the next ``n`` requests matching ``pattern`` (as
        #: ``stall_matching``), then answer each ``500 InternalError`` as if the answer
        #: were lost on the way back. ``None``: answer truthfully.
        self.lose_answers: tuple[re.Pattern[str], int] | None = None
        self.answers_lost = 0
        #: ``(pattern, age)``: matching ``HEAD``/``GET`` answers say the object was last
        #: modified ``age`` earlier than it was. ``None``: the true time.
        self.age_matching: tuple[re.Pattern[str], timedelta] | None = None
        #: ``(pattern, n)``: answer the next ``n`` matching requests ``503 SlowDown``
        #: without forwarding them (``n`` of ``None``: every one until switched off).
        self.throttle: tuple[re.Pattern[str], int | None] | None = None
        self.throttled = 0
        #: A pattern: ``LIST`` answers whose ``"METHOD /path?query"`` matches leave out
        #: their last entry. ``None``: list everything.
        self.omit_newest_listed: re.Pattern[str] | None = None
        #: Answer matching requests ``403 AccessDenied`` (credentials without that right).
        self.deny_matching: re.Pattern[str] | None = None
        self.omitted = 0
        self._lock: asyncio.Lock | None = None
        self._session: aiohttp.ClientSession | None = None

    def reset_counts(self) -> None:
        """Forget what was counted so far."""
        self.counts.clear()
        self.requests.clear()

    @property
    def writes(self) -> int:
        """Mutating requests forwarded: PUT, POST (bulk delete) and DELETE."""
        return self.counts["put"] + self.counts["post"] + self.counts["delete"]

    @staticmethod
    def _kind(request: web.Request) -> str:
        if request.method == "GET" and ("list-type" in request.query or "prefix" in request.query
                                        or request.path.strip("/").count("/") == 0):
            return "list"
        return request.method.lower()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.stall or (self.stall_matching is not None
                          and self.stall_matching.search(f"{request.method} {request.path}")):
            await asyncio.sleep(3600)
        if self._throttled(f"{request.method} {request.path}"):
            body = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                    "<Message>Please reduce your request rate.</Message></Error>")
            return web.Response(status=503, body=body.encode(), content_type="application/xml")
        authorization = request.headers.get("Authorization", "")
        match = _CREDENTIAL.search(authorization)
        if match is None:
            return _error("AccessDenied", "Access Denied (the request was not signed)")
        if match.group(1) not in self.access_keys:
            return _error("InvalidAccessKeyId",
                          "The AWS Access Key Id you provided does not exist in our records.")
        if (self.deny_matching is not None
                and self.deny_matching.search(f"{request.method} {request.path}")):
            return _error("AccessDenied", "Access Denied")
        if (request.method == "PUT"
                and len(request.path.lstrip("/").partition("/")[2].encode()) > _MAX_KEY):
            return _error("KeyTooLongError", "Your key is too long", 400)
        body = await request.read()
        mutating = request.method in ("PUT", "POST", "DELETE")
        assert self._lock is not None and self._session is not None
        if mutating:
            await self._lock.acquire()
        try:
            self.counts[self._kind(request)] += 1
            self.requests[f"{request.method} {request.path}"] += 1
            dropped = {"host"} | ({"if-none-match", "if-match"} if self.ignore_conditions
                                  else set())
            headers = {k: v for k, v in request.headers.items() if k.lower() not in dropped}
            async with self._session.request(
                request.method, self.upstream + request.path_qs, headers=headers, data=body,
                allow_redirects=False, auto_decompress=False,
            ) as upstream:
                payload = await upstream.read()
                out_headers = {k: v for k, v in upstream.headers.items()
                               if k.lower() not in _HOP_BY_HOP}
                status = upstream.status
                length = upstream.headers.get("Content-Length")
        finally:
            if mutating:
                self._lock.release()
        if self._lose_answer(f"{request.method} {request.path}"):
            body = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
                    "<Message>We encountered an internal error. Please try again.</Message>"
                    "</Error>")
            return web.Response(status=500, body=body.encode(), content_type="application/xml")
        self._age(f"{request.method} {request.path}", out_headers)
        if (self.omit_newest_listed is not None and self._kind(request) == "list"
                and self.omit_newest_listed.search(f"{request.method} {request.path_qs}")):
            payload = self._omit_newest(payload)
        if request.method == "HEAD":
            response = web.StreamResponse(status=status, headers=out_headers)
            if length is not None:
                response.content_length = int(length)
            await response.prepare(request)
            return response
        return web.Response(status=status, headers=out_headers, body=payload)

    def _throttled(self, line: str) -> bool:
        if self.throttle is None or not self.throttle[0].search(line):
            return False
        pattern, left = self.throttle
        if left is not None:
            self.throttle = (pattern, left - 1) if left > 1 else None
        self.throttled += 1
        return True

    def _omit_newest(self, payload: bytes) -> bytes:
        entries = list(re.finditer(rb"<Contents>.*?</Contents>", payload, re.DOTALL))
        if not entries:
            return payload
        last = entries[-1]
        self.omitted += 1
        payload = payload[:last.start()] + payload[last.end():]
        return re.sub(rb"<KeyCount>(\d+)</KeyCount>",
                      lambda m: b"<KeyCount>%d</KeyCount>" % (int(m.group(1)) - 1), payload)

    def _age(self, line: str, headers: dict[str, str]) -> None:
        if self.age_matching is None or not self.age_matching[0].search(line):
            return
        for name in [k for k in headers if k.lower() == "last-modified"]:
            stamp = email.utils.parsedate_to_datetime(headers[name]) - self.age_matching[1]
            headers[name] = email.utils.format_datetime(stamp, usegmt=True)

    def _lose_answer(self, line: str) -> bool:
        if self.lose_answers is None or not self.lose_answers[0].search(line):
            return False
        pattern, left = self.lose_answers
        self.lose_answers = (pattern, left - 1) if left > 1 else None
        self.answers_lost += 1
        return True

    async def start(self) -> None:
        self._lock = asyncio.Lock()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64), auto_decompress=False)

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()


@contextmanager
def serve_s3_proxy(upstream: str, access_keys: set[str]) -> Iterator[S3Proxy]:
    """Run an ``S3Proxy`` to ``upstream`` on 127.0.0.1 in a background thread."""
    proxy = S3Proxy(upstream, access_keys)
    loop = asyncio.new_event_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
    loop.run_until_complete(proxy.start())
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.SockSite(runner, sock, backlog=256).start())
    proxy.endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    thread = threading.Thread(target=loop.run_forever, name="s3-proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.stall, proxy.stall_matching, proxy.ignore_conditions = False, None, False
        proxy.lose_answers = proxy.age_matching = proxy.throttle = None
        proxy.omit_newest_listed = proxy.deny_matching = None
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        asyncio.run_coroutine_threadsafe(proxy.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()

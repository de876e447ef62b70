"""Real servers on 127.0.0.1 for the remote-store tests, each run in a background thread.

``serve_http(root)`` is an aiohttp server whose ``/data/`` route is aiohttp's
own static handler over ``root`` (it honours ``Range``), plus routes that
misbehave on purpose: ``/flaky/<token>/<n>/`` drops the connection on the
first ``n`` requests of ``token``, ``/slow/`` answers after five seconds,
``/status/<code>/`` always answers ``code``, and ``/auth/`` wants a bearer
token. ``serve_s3()`` is moto's standalone S3 server. ``serve_ftp(home)`` is a
pyftpdlib FTP server over ``home`` with one user. All bind a free port on the
loopback address only, and stop when their ``with`` block ends.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aiohttp import web

__all__ = [
    "AUTH_TOKEN",
    "FTP_PASSWORD",
    "FTP_USER",
    "HTTPServer",
    "SLOW_SECONDS",
    "serve_ftp",
    "serve_http",
    "serve_s3",
]

SLOW_SECONDS = 5.0
AUTH_TOKEN = "Bearer test-token"
FTP_USER = "zarr"
FTP_PASSWORD = "zarr-secret"
#: The query-string signature the ``/signed/`` route of the test HTTP server wants.
SIGNATURE = "s1gn3d"


class HTTPServer:
    """A running test HTTP server: its base URL, and what it has seen."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = ""
        self.requests: list[tuple[str, str, tuple[str, int]]] = []  # (method, path, peer)
        self.drops: Counter[str] = Counter()

    def _file(self, tail: str, request: web.Request) -> web.StreamResponse:
        path = (self.root / tail).resolve()
        if not path.is_relative_to(self.root.resolve()) or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    @web.middleware
    async def _record(self, request: web.Request, handler: web.Handler) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.requests.append((request.method, request.path, peer))
        return await handler(request)

    async def _flaky(self, request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        if self.drops[token] < int(request.match_info["n"]):
            self.drops[token] += 1
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)  # never reaches the client
        return self._file(request.match_info["tail"], request)

    async def _slow(self, request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(SLOW_SECONDS)
        return self._file(request.match_info["tail"], request)

    async def _status(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=int(request.match_info["code"]), text="on purpose")

    async def _auth(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != AUTH_TOKEN:
            raise web.HTTPUnauthorized()
        return self._file(request.match_info["tail"], request)

    async def _signed(self, request: web.Request) -> web.StreamResponse:
        # A presigned URL's signature rides in the query string, as S3's and Azure's do.
        if request.query.get("sig") != SIGNATURE:
            raise web.HTTPForbidden()
        return self._file(request.match_info["tail"], request)

    async def _partial(self, request: web.Request) -> web.StreamResponse:
        """``206`` answers that are not the range asked, each with an honest ``Content-Range``.

        ``/partial/whole/...`` sends the whole value for any ``Range`` (a proxy
        that drops it but keeps the status); ``/partial/head/...`` answers a
        suffix ``bytes=-n`` with the first ``n + 1`` bytes (sirv's bug).
        """
        path = (self.root / request.match_info["tail"]).resolve()
        if not path.is_relative_to(self.root.resolve()) or not path.is_file():
            raise web.HTTPNotFound()
        value = path.read_bytes()
        asked = request.headers.get("Range", "")
        if request.method == "HEAD" or not asked:
            return web.Response(body=value if request.method == "GET" else None,
                                headers={"Content-Length": str(len(value))})
        if request.match_info["how"] == "head" and asked.startswith("bytes=-"):
            value = value[: int(asked.removeprefix("bytes=-")) + 1]
        total = path.stat().st_size
        return web.Response(status=206, body=value, headers={
            "Content-Range": f"bytes 0-{len(value) - 1}/{total}" if value else f"bytes */{total}"})

    async def _no_head(self, request: web.Request) -> web.StreamResponse:
        # A URL signed for GET only (S3's presigned URLs answer HEAD with 403), or a
        # server that does not allow HEAD.
        if request.method == "HEAD":
            raise web.HTTPMethodNotAllowed("HEAD", ["GET"])
        return self._file(request.match_info["tail"], request)

    async def _indexed(self, request: web.Request) -> web.StreamResponse:
        # A directory as Python's http.server, nginx's autoindex and Apache answer it:
        # a redirect to the name with a "/", then an HTML listing.
        tail = request.match_info["tail"]
        path = (self.root / tail).resolve()
        if path.is_relative_to(self.root.resolve()) and path.is_dir():
            if not tail.endswith("/"):
                raise web.HTTPMovedPermanently(f"{request.path}/")
            names = "".join(f'<li><a href="{p.name}">{p.name}</a></li>' for p in path.iterdir())
            return web.Response(text=f"<!DOCTYPE HTML><html><ul>{names}</ul></html>",
                                content_type="text/html")
        return self._file(tail, request)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_static("/data", self.root, follow_symlinks=False)
        app.router.add_route("*", r"/flaky/{token}/{n:\d+}/{tail:.*}", self._flaky)
        app.router.add_get("/slow/{tail:.*}", self._slow)
        app.router.add_route("*", r"/status/{code:\d+}/{tail:.*}", self._status)
        app.router.add_get("/auth/{tail:.*}", self._auth)
        app.router.add_route("*", "/signed/{tail:.*}", self._signed)
        app.router.add_route("*", r"/partial/{how:whole|head}/{tail:.*}", self._partial)
        app.router.add_route("*", "/nohead/{tail:.*}", self._no_head)
        app.router.add_route("*", "/indexed/{tail:.*}", self._indexed)
        return app


@contextmanager
def serve_http(root: Path) -> Iterator[HTTPServer]:
    """Serve ``root`` over HTTP on 127.0.0.1 from a background thread."""
    server = HTTPServer(root)
    loop = asyncio.new_event_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    # Handlers are cancelled when their client goes away, so a slow handler
    # abandoned by a timed-out client does not hold up shutdown.
    runner = web.AppRunner(server.app(), handler_cancellation=True, shutdown_timeout=1.0)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.SockSite(runner, sock).start())
    server.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    thread = threading.Thread(target=loop.run_forever, name="test-http-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


@contextmanager
def serve_s3() -> Iterator[str]:
    """Run moto's S3 server on 127.0.0.1 and yield its endpoint URL.

    The caller sets dummy ``AWS_*`` credentials first, so no client looks
    further (to ``~/.aws`` or an instance-metadata address) for real ones.
    """
    from moto.server import ThreadedMotoServer

    assert os.environ.get("AWS_ACCESS_KEY_ID"), "set dummy AWS credentials before serve_s3()"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@contextmanager
def serve_ftp(home: Path) -> Iterator[str]:
    """Run a pyftpdlib FTP server over ``home`` on 127.0.0.1 and yield its ``ftp://`` endpoint.

    One user (``FTP_USER`` / ``FTP_PASSWORD``) with every permission in ``home``;
    a thread per connection, passive data ports chosen by the kernel. A failed
    login is answered at once (pyftpdlib waits three seconds by default).
    """
    import logging

    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import ThreadedFTPServer

    logging.getLogger("pyftpdlib").setLevel(logging.WARNING)
    authorizer = DummyAuthorizer()
    authorizer.add_user(FTP_USER, FTP_PASSWORD, str(home), perm="elradfmwMT")
    handler = type("TestFTPHandler", (FTPHandler,), {
        "authorizer": authorizer, "auth_failed_timeout": 0.05, "banner": "zarrstore test FTP",
    })
    server = ThreadedFTPServer(("127.0.0.1", 0), handler)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            server.serve_forever(timeout=0.05, blocking=False)
        server.close_all()

    thread = threading.Thread(target=serve, name="test-ftp-server", daemon=True)
    thread.start()
    try:
        yield f"ftp://127.0.0.1:{server.address[1]}"
    finally:
        stop.set()
        thread.join(30)

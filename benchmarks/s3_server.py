"""An S3 server for the object-storage benchmark: moto on 127.0.0.1 behind the counting proxy.

``serve_s3()`` starts moto's ``ThreadedMotoServer`` on an ephemeral port,
creates one bucket, and puts the serialising, request-counting proxy of
``benchmarks.s3_proxy`` (the one the request-count tests use) in front of
it; both systems talk to the proxy's endpoint with the same static
credentials, so their requests are counted the same way, by kind (``put``,
``get``, ``head``, ``list``, ``delete``, ``post``). Server and proxy run in
threads of the calling process — the one worker process of the benchmark
job — so they share its CPU (2 cores here) with the client under test: the
figures are for a local, CPU-bound server, not for a network.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

from benchmarks.s3_proxy import S3Proxy, serve_s3_proxy

__all__ = ["ACCESS_KEY", "BUCKET", "REGION", "SECRET_KEY", "S3Bench", "serve_s3"]

BUCKET = "bench"
ACCESS_KEY = "bench"
SECRET_KEY = "bench-secret"
REGION = "us-east-1"


class S3Bench(NamedTuple):
    """The running server: the endpoint clients use (the proxy's) and the proxy's counts."""

    endpoint: str
    proxy: S3Proxy


@contextmanager
def serve_s3() -> Iterator[S3Bench]:
    """Run moto + the counting proxy on 127.0.0.1 with bucket ``BUCKET``; stop both after."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    # moto's werkzeug server logs every request at INFO: thousands of lines per job.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        upstream = f"http://{host}:{port}"
        client = boto3.client("s3", endpoint_url=upstream, region_name=REGION,
                              aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
        client.create_bucket(Bucket=BUCKET)
        with serve_s3_proxy(upstream, {ACCESS_KEY}) as proxy:
            yield S3Bench(proxy.endpoint, proxy)
    finally:
        server.stop()

"""Shared pieces for the OpenDAL store tests (``test_opendal*.py``).

Four real services, each made empty per test with a backdoor that does not go
through zarrstore: ``fs`` (plain files under a temporary root), ``memory``
(opendal's own calls on the same operator), ``ftp`` (a pyftpdlib server on
127.0.0.1; the backdoor writes the files it serves) and ``s3`` (moto's S3
server, reached with boto3). ``ftp`` and ``s3`` are session fixtures; each
test works under a fresh directory or prefix of them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import opendal
import pytest
from object_support import BUCKET, Backdoor, S3Backdoor, S3Server
from servers import FTP_PASSWORD, FTP_USER, serve_ftp

__all__ = [
    "FTP_NO_EMPTY",
    "MEMORY_NOT_PICKLABLE",
    "FTPServer",
    "Service",
    "fs_service",
    "ftp_fixture",
    "memory_service",
    "s3_service",
]

MEMORY_NOT_PICKLABLE = (
    "opendal's memory service lives in this process: the store refuses to pickle "
    "(opendal would open a new, empty one)"
)
FTP_NO_EMPTY = (
    "FTP through opendal cannot store an empty value (capability write_can_empty is false); "
    "the store refuses it, which test_ftp_refuses_empty_values checks"
)


class Service(NamedTuple):
    """One empty service: how to open it (sync or async), and a way in around zarrstore."""

    scheme: str
    options: dict[str, str]
    backdoor: Backdoor
    shared: opendal.Operator | None = None  # memory: the one operator holding the data

    def operator(self) -> opendal.Operator:
        return self.shared or opendal.Operator(self.scheme, **self.options)

    def async_operator(self) -> opendal.AsyncOperator:
        if self.shared is not None:
            return self.shared.to_async_operator()
        return opendal.AsyncOperator(self.scheme, **self.options)


class FileBackdoor:
    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, key: str, value: bytes) -> None:
        (self.root / key).parent.mkdir(parents=True, exist_ok=True)
        (self.root / key).write_bytes(value)

    def get(self, key: str) -> bytes | None:
        path = self.root / key
        return path.read_bytes() if path.is_file() else None


class OperatorBackdoor:
    def __init__(self, operator: opendal.Operator) -> None:
        self.operator = operator

    def put(self, key: str, value: bytes) -> None:
        self.operator.write(key, value)

    def get(self, key: str) -> bytes | None:
        try:
            return bytes(self.operator.read(key))
        except opendal.exceptions.NotFound:
            return None


def fs_service(tmp_path: Path) -> Service:
    root = tmp_path / f"fs-{uuid.uuid4().hex[:8]}"
    root.mkdir()
    # Without atomic_write_dir, opendal's fs writes in place and a reader can see a torn value.
    options = {"root": str(root), "atomic_write_dir": f"{root}.tmp"}
    return Service("fs", options, FileBackdoor(root))


def memory_service() -> Service:
    operator = opendal.Operator("memory")
    return Service("memory", {}, OperatorBackdoor(operator), shared=operator)


class FTPServer(NamedTuple):
    endpoint: str
    home: Path

    def options(self, **changes: str) -> dict[str, str]:
        return {"endpoint": self.endpoint, "user": FTP_USER, "password": FTP_PASSWORD, **changes}

    def fresh(self) -> Service:
        name = f"t-{uuid.uuid4().hex[:12]}"
        (self.home / name).mkdir()
        return Service("ftp", self.options(root=f"/{name}"), FileBackdoor(self.home / name))


@pytest.fixture(scope="session", name="ftp")
def ftp_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FTPServer]:
    home = tmp_path_factory.mktemp("ftp-home")
    with serve_ftp(home) as endpoint:
        yield FTPServer(endpoint, home)


def s3_service(s3: S3Server) -> Service:
    prefix = f"od-{uuid.uuid4().hex[:12]}"
    options = {
        "bucket": BUCKET,
        "endpoint": s3.endpoint,
        "region": "us-east-1",
        "access_key_id": "testing",
        "secret_access_key": "testing",
        "root": f"/{prefix}",
    }
    return Service("s3", options, S3Backdoor(s3.client, prefix))


def any_service(request: pytest.FixtureRequest, tmp_path: Path) -> Service:
    """The service a parametrized fixture names: ``fs``, ``memory``, ``ftp`` or ``s3``."""
    kind: Any = request.param
    if kind == "fs":
        return fs_service(tmp_path)
    if kind == "memory":
        return memory_service()
    if kind == "ftp":
        return request.getfixturevalue("ftp").fresh()  # type: ignore[no-any-return]
    return s3_service(request.getfixturevalue("s3"))

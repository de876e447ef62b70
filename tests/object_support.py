"""Shared pieces for the object-storage tests (``test_object*.py``).

Three backings of obstore, each made empty per test with a backdoor that
does not go through zarrstore: S3 on moto's server (reached with boto3), the
local filesystem (plain files) and memory (obstore's own calls). ``aws_env``
and ``s3`` are session fixtures: dummy credentials, then one moto server on
127.0.0.1 with one bucket; each test works under a fresh prefix.

Test modules import the ``*_fixture`` functions to use the fixtures they
define (``aws_env``, ``s3``, ``any_fresh``): pytest has no other way to share
fixtures between two modules short of ``conftest.py``.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import boto3
import obstore
import pytest
from obstore.store import MemoryStore as ObstoreMemory
from servers import serve_s3

from zarrstore.object import ObjectStorage

__all__ = [
    "BUCKET",
    "MOTO_RACE",
    "NOT_PICKLABLE",
    "Backdoor",
    "Fresh",
    "InMemory",
    "OnLocalFiles",
    "OnS3",
    "S3Server",
    "any_fresh_fixture",
    "aws_env_fixture",
    "local_fresh",
    "memory_fresh",
    "run",
    "s3_fixture",
]

BUCKET = "zarrstore-test"
MOTO_RACE = ("moto checks a condition and then writes without a lock between, so two racing "
             "conditional writers can both win there; S3 guarantees one winner (and may answer "
             "a racing writer 409 ConditionalRequestConflict, which moto never sends)")
NOT_PICKLABLE = "obstore's in-memory backing cannot be pickled: its data lives in this process"


class Backdoor(Protocol):
    def put(self, key: str, value: bytes) -> None: ...
    def get(self, key: str) -> bytes | None: ...


class Fresh(NamedTuple):
    """An empty backing of one kind, and a way in that does not go through zarrstore."""

    backing: Any
    backdoor: Backdoor


class S3Backdoor:
    def __init__(self, client: Any, prefix: str) -> None:
        self.client, self.prefix = client, prefix

    def put(self, key: str, value: bytes) -> None:
        self.client.put_object(Bucket=BUCKET, Key=f"{self.prefix}/{key}", Body=value)

    def get(self, key: str) -> bytes | None:
        try:
            body = self.client.get_object(Bucket=BUCKET, Key=f"{self.prefix}/{key}")["Body"]
        except self.client.exceptions.NoSuchKey:
            return None
        return bytes(body.read())


class LocalBackdoor:
    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, key: str, value: bytes) -> None:
        (self.root / key).parent.mkdir(parents=True, exist_ok=True)
        (self.root / key).write_bytes(value)

    def get(self, key: str) -> bytes | None:
        path = self.root / key
        return path.read_bytes() if path.is_file() else None


class MemoryBackdoor:
    def __init__(self, backing: ObstoreMemory) -> None:
        self.backing = backing

    def put(self, key: str, value: bytes) -> None:
        obstore.put(self.backing, key, value)

    def get(self, key: str) -> bytes | None:
        try:
            return bytes(obstore.get(self.backing, key).bytes())
        except FileNotFoundError:
            return None


class S3Server(NamedTuple):
    endpoint: str
    client: Any

    def fresh(self) -> Fresh:
        prefix = f"t-{uuid.uuid4().hex[:12]}"
        storage = ObjectStorage.s3(BUCKET, prefix=prefix, endpoint=self.endpoint)
        return Fresh(storage.backing, S3Backdoor(self.client, prefix))


@pytest.fixture(scope="session", name="aws_env")
def aws_env_fixture() -> Iterator[None]:
    """Dummy credentials, and no way for a client to find real ones or leave 127.0.0.1."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("AWS_")]:
            patch.delenv(name)
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.setenv("AWS_REGION", "us-east-1")
        patch.setenv("AWS_CONFIG_FILE", os.devnull)
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield


@pytest.fixture(scope="session", name="s3")
def s3_fixture(aws_env: None) -> Iterator[S3Server]:
    with serve_s3() as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield S3Server(endpoint, client)


def local_fresh(tmp_path: Path) -> Fresh:
    root = tmp_path / f"local-{uuid.uuid4().hex[:8]}"
    return Fresh(ObjectStorage.local(root).backing, LocalBackdoor(root))


def memory_fresh() -> Fresh:
    backing = ObstoreMemory()
    return Fresh(backing, MemoryBackdoor(backing))


class OnS3:
    @pytest.fixture
    def fresh(self, s3: S3Server) -> Fresh:
        return s3.fresh()


class OnLocalFiles:
    @pytest.fixture
    def fresh(self, tmp_path: Path) -> Fresh:
        return local_fresh(tmp_path)


class InMemory:
    @pytest.fixture
    def fresh(self) -> Fresh:
        return memory_fresh()


@pytest.fixture(params=["s3", "local", "memory"], name="any_fresh")
def any_fresh_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Fresh:
    if request.param == "s3":
        return request.getfixturevalue("s3").fresh()  # type: ignore[no-any-return]
    return local_fresh(tmp_path) if request.param == "local" else memory_fresh()



def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)

"""Shared pieces for the tests of repositories on object storage (``test_*object_repo*``).

``s3_repos`` is a session fixture: moto's S3 server on 127.0.0.1 (from
``object_support``) behind the serialising, credential-checking and
request-counting proxy of ``s3_proxy``. Each test makes its storage under a
fresh prefix with ``s3_repos.storage()``. Test modules import the
``*_fixture`` functions to use the fixtures (pytest shares fixtures between
modules only through ``conftest.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest
from object_support import BUCKET, S3Server, aws_env_fixture, s3_fixture
from s3_proxy import S3Proxy, serve_s3_proxy

import versionstore as vs
from versionstore.cloud import ObjectStorage

__all__ = ["ACCESS_KEY", "BUCKET", "S3Repos", "aws_env_fixture", "s3_fixture",
           "s3_repos_fixture"]

ACCESS_KEY = "testing"


class S3Repos(NamedTuple):
    """moto behind the proxy: make storages under fresh prefixes."""

    proxy: S3Proxy
    server: S3Server

    def storage(self, prefix: str | None = None, **options: Any) -> ObjectStorage:
        settings: dict[str, Any] = {
            "bucket": BUCKET, "endpoint_url": self.proxy.endpoint, "allow_http": True,
            "region": "us-east-1", "access_key_id": ACCESS_KEY, "secret_access_key": "secret",
        }
        settings.update(options)
        return vs.s3_storage(prefix=prefix or f"repo-{uuid.uuid4().hex[:12]}", **settings)


@pytest.fixture(scope="session", name="s3_repos")
def s3_repos_fixture(s3: S3Server) -> Iterator[S3Repos]:
    with serve_s3_proxy(s3.endpoint, {ACCESS_KEY}) as proxy:
        yield S3Repos(proxy, s3)

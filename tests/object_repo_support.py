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
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pytest
from object_support import BUCKET, S3Server, aws_env_fixture, s3_fixture
from s3_proxy import S3Proxy, serve_s3_proxy

import versionstore as vs
from versionstore.cloud import ObjectStorage

__all__ = ["ACCESS_KEY", "BUCKET", "S3Repos", "aws_env_fixture", "collect_mid_write",
           "s3_fixture", "s3_repos_fixture"]

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


def collect_mid_write(s3_repos: S3Repos, storage: ObjectStorage, monkeypatch: pytest.MonkeyPatch,
                      *, hook: str, key: str, value: bytes,
                      collect: Callable[[vs.Repository], list[vs.GCSummary]],
                      ) -> list[vs.GCSummary]:
    """Run ``collect`` from a second client while a writer is half-way through a write.

    The writer's backend method ``hook`` (``"_put_objects"`` for an object a
    log record will name, ``"put_located"`` for a located write) stores its
    objects, then — once, before the writer looks at the log — ``collect`` runs
    on a repository opened with its own client, as on another machine. The
    writer then commits; the value must read back and ``verify`` must pass.
    Returns what ``collect`` returned.
    """
    repo = vs.Repository.create(storage)
    collector = vs.Repository.open(s3_repos.storage(storage.prefix,
                                                    client_options={"timeout": "60s"}))
    session = repo.writable_session("main")
    backend: Any = repo.backend
    store = getattr(backend, hook)
    summaries: list[vs.GCSummary] = []

    def store_then_collect(objects: Any) -> None:
        store(objects)  # stored; nothing names it yet
        if objects and not summaries:
            summaries.extend(collect(collector))

    monkeypatch.setattr(backend, hook, store_then_collect)
    session.set_values([(key, value)])
    monkeypatch.undo()
    assert summaries, f"the write never reached {hook}"
    snapshot = session.commit("kept")
    view = repo.readonly_session(snapshot_id=snapshot)
    assert view.read_entries([view.entry(key)]) == [value]
    assert repo.verify().ok
    return summaries

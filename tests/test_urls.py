"""Repository URLs (``versionstore.urls``): what the command line accepts, and what it refuses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import versionstore as vs
from versionstore.urls import ObjectStorageOptions, storage_from_url, storages_from_urls


@pytest.mark.parametrize(("url", "path"), [
    ("my-repo", "my-repo"),
    ("./my-repo", "my-repo"),
    ("lmdb://my-repo", "my-repo"),
    ("LMDB://nested/repo", "nested/repo"),
    ("lmdb:///data/repo", "/data/repo"),
    ("lmdb://~/repo", os.path.expanduser("~/repo")),
    ("./odd:name", "odd:name"),
])
def test_directories_become_lmdb_storage(url: str, path: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert storage_from_url(url) == vs.lmdb_storage(path)


@pytest.mark.parametrize(("url", "message"), [
    ("", "empty"),
    ("   ", "empty"),
    ("memory://", "inside one Python process"),
    ("s3:/bucket/prefix", "did you mean s3://bucket/prefix"),
    ("s3:bucket", "did you mean s3://bucket"),
    ("lmbd://repo", "did you mean lmdb://"),
    ("ftp://host/repo", "unknown repository URL scheme 'ftp'"),
    ("repo:2024", r"or \./repo:2024 for a directory"),
    ("lmdb://", "names no directory"),
    ("s3://", "names no bucket"),
    ("s3:///prefix", "names no bucket"),
    ("s3://My_Bucket/x", "not a valid S3 bucket name"),
    ("s3://a/x", "not a valid S3 bucket name"),
    ("s3://key:secret@bucket/x", "credentials do not belong in a URL"),
    ("s3://bucket/x?region=eu", "no '\\?' or '#' part"),
])
def test_malformed_urls_are_refused_with_a_reason(url: str, message: str) -> None:
    with pytest.raises(vs.RepositoryURLError, match=message) as caught:
        storage_from_url(url)
    assert isinstance(caught.value, ValueError)


def test_a_url_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="must be a str"):
        storage_from_url(Path("repo"))  # type: ignore[arg-type]


def test_object_storage_options_need_an_s3_url() -> None:
    options = ObjectStorageOptions(endpoint_url="http://127.0.0.1:9000", allow_http=True)
    assert options.given() == ["--endpoint-url", "--allow-http"]
    with pytest.raises(vs.RepositoryURLError, match="--endpoint-url, --allow-http apply only"):
        storages_from_urls(["a", "lmdb://b"], options)
    with pytest.raises(vs.RepositoryURLError, match="--anonymous applies only"):
        storages_from_urls(["a"], ObjectStorageOptions(anonymous=True))
    assert storages_from_urls(["a", "b"]) == [vs.lmdb_storage("a"), vs.lmdb_storage("b")]


def test_s3_urls_build_s3_storage_with_the_options() -> None:
    options = ObjectStorageOptions(endpoint_url="http://127.0.0.1:9000", region="eu-west-1",
                                   allow_http=True, anonymous=True)
    made = storage_from_url("s3://bucket/repos/era5/", options)
    expected = vs.s3_storage(bucket="bucket", prefix="repos/era5",
                             region="eu-west-1", endpoint_url="http://127.0.0.1:9000",
                             allow_http=True, anonymous=True)
    assert repr(made) == repr(expected)

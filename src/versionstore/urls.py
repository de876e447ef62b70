"""Repository URLs: how the command line names where a repository lives.

::

    my-repo, ./my-repo, /data/my-repo   an LMDB directory
    lmdb://my-repo, lmdb:///data/repo   the same, said explicitly
    s3://bucket/prefix                  a repository under a prefix of an S3 bucket

``memory://`` is refused: an in-memory repository lives inside one Python
process, and a command line is always another one. ``s3://`` URLs become
``versionstore.s3_storage(bucket=..., prefix=..., ...)`` with the options the
user gave (``ObjectStorageOptions``, icechunk's names); credentials come from
the environment, never from the URL. In a build without object storage
they are refused with an error saying so. Anything that looks like a URL but
is not one of these — a typo such as ``s3:/bucket`` or ``lmbd://x`` — is
refused rather than taken for a directory name. Porcelain for ``cli``.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

import attrs

from versionstore.errors import RepositoryURLError
from versionstore.storage import RepositoryStorage, lmdb_storage

__all__ = ["SCHEMES", "ObjectStorageOptions", "storage_from_url", "storages_from_urls"]

#: The schemes a repository URL may have.
SCHEMES = ("lmdb", "s3", "memory")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]+):(.*)", re.DOTALL)
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_FORMS = "a directory path, lmdb://PATH or s3://BUCKET/PREFIX"


@attrs.frozen(kw_only=True)
class ObjectStorageOptions:
    """How to reach object storage: the settings an ``s3://`` URL cannot carry.

    Named as ``versionstore.s3_storage`` (and icechunk's ``s3_storage``) name them.
    """

    endpoint_url: str | None = None
    region: str | None = None
    allow_http: bool = False
    anonymous: bool = False

    def given(self) -> list[str]:
        """The options set to something other than their default, as ``--option-name``s."""
        return [f"--{field.name.replace('_', '-')}" for field in attrs.fields(type(self))
                if getattr(self, field.name) != field.default]


def _s3(url: str, options: ObjectStorageOptions) -> RepositoryStorage:
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise RepositoryURLError(f"{url!r}: credentials do not belong in a URL; set "
                                 "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead")
    if parts.query or parts.fragment:
        raise RepositoryURLError(f"{url!r}: an s3:// URL has no '?' or '#' part; give "
                                 "settings as options (--endpoint-url, --region, ...)")
    bucket = parts.netloc
    if not bucket:
        raise RepositoryURLError(f"{url!r} names no bucket: write s3://BUCKET/PREFIX")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise RepositoryURLError(f"{bucket!r} is not a valid S3 bucket name (3 to 63 "
                                 "lowercase letters, digits, '.' and '-')")
    try:  # object storage needs obstore (the ``remote`` extra): the CLI works without it
        from versionstore.cloud import s3_storage  # noqa: PLC0415
    except ImportError as exc:
        raise RepositoryURLError(
            f"{url!r}: object storage is not available in this build ({exc.name or 'obstore'} "
            "is not installed); install versionstore with the remote extra: "
            "python -m pip install '/path/to/versionstore[remote]'") from exc
    return s3_storage(
        bucket=bucket, prefix=parts.path.strip("/"), region=options.region,
        endpoint_url=options.endpoint_url, allow_http=options.allow_http,
        anonymous=options.anonymous)


def storage_from_url(url: str, options: ObjectStorageOptions | None = None
                     ) -> RepositoryStorage:
    """The storage a repository URL names (see the module docstring).

    ``options`` apply to an ``s3://`` URL and are ignored for the others.

    Raises:
        RepositoryURLError: an empty or malformed URL, an unknown scheme (with
            a suggestion), ``memory://``, an invalid bucket name, or ``s3://``
            in a build without object storage.
        TypeError: ``url`` is not a ``str``.
    """
    if not isinstance(url, str):
        raise TypeError(f"a repository URL must be a str; got {type(url).__name__}")
    options = options or ObjectStorageOptions()
    if not url.strip():
        raise RepositoryURLError(f"the repository URL is empty: give {_FORMS}")
    match = _SCHEME.fullmatch(url)
    if match is None:
        return lmdb_storage(url)
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme not in SCHEMES:
        close = difflib.get_close_matches(scheme, SCHEMES, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]}://?)" if close else ""
        directory = "" if rest.startswith("//") else f" (or ./{url} for a directory so named)"
        raise RepositoryURLError(f"unknown repository URL scheme {scheme!r} in {url!r}{hint}; "
                                 f"give {_FORMS}{directory}")
    if not rest.startswith("//"):
        raise RepositoryURLError(f"malformed repository URL {url!r}: did you mean "
                                 f"{scheme}://{rest.lstrip('/')}?")
    if scheme == "memory":
        raise RepositoryURLError("memory:// repositories live inside one Python process; "
                                 f"another process cannot reach one: give {_FORMS}")
    if scheme == "s3":
        return _s3(url, options)
    path = rest[2:]
    if not path:
        raise RepositoryURLError(f"{url!r} names no directory: write lmdb://PATH")
    return lmdb_storage(os.path.expanduser(path))


def storages_from_urls(urls: Sequence[str], options: ObjectStorageOptions | None = None
                       ) -> list[RepositoryStorage]:
    """The storage of each URL; object-storage options must be used by at least one of them.

    Raises:
        RepositoryURLError: as ``storage_from_url``, or ``options`` were given
            but no URL is an ``s3://`` one (they would be silently ignored).
    """
    storages = [storage_from_url(url, options) for url in urls]
    given = (options or ObjectStorageOptions()).given()
    if given and not any(url.lower().startswith("s3://") for url in urls):
        verb = "applies" if len(given) == 1 else "apply"
        raise RepositoryURLError(f"{', '.join(given)} {verb} only to s3:// repositories, and "
                                 f"none was given ({', '.join(map(repr, urls))})")
    return storages

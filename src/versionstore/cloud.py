"""Repositories on object storage (cloud buckets): S3 and its kin, GCS, Azure, any obstore store.

``object_storage(store, prefix)`` describes a repository under a prefix of any
obstore store; ``s3_storage``, ``gcs_storage`` and ``azure_storage`` build the
store from the usual settings (``s3_storage`` takes icechunk's parameter
names). Like ``lmdb_storage``, a description is small and picklable — it
holds the store's *configuration*, not a live connection — so a session
pickled to a dask worker reopens the repository there.

Opening one checks that the store can create an object only if it is absent
(the atomic step every commit relies on, ``backend.object``): a store that
cannot is refused with ``UnsafeStorageError`` unless
``unsafe_allow_unconditional_writes=True`` says there is only ever one writer.
"""

from __future__ import annotations

import threading
import uuid
import weakref
from typing import TYPE_CHECKING, Any

import attrs
from obstore.store import AzureStore, GCSStore, S3Store

from versionstore.backend.object import DEFAULT_GC_GRACE, ObjectBackend
from versionstore.backend.object_io import ObjectIO, is_picklable_store
from versionstore.errors import StorageAccessDeniedError, UnsafeStorageError
from zarrstore.object import absolute_backing

if TYPE_CHECKING:
    from obstore.store import ClientConfig, ObjectStore, RetryConfig

    from versionstore.backend.protocol import Backend

__all__ = ["DEFAULT_GC_GRACE", "ObjectStorage", "azure_storage", "gcs_storage", "object_storage",
           "s3_storage"]

_LIVE: weakref.WeakValueDictionary[str, ObjectStorage] = weakref.WeakValueDictionary()
_PROBED: dict[str, bool] = {}
#: One backend per location and process, shared by every repository and session on it
#: (as LMDB shares one environment): its refs are read from the log once, not per open.
_BACKENDS: weakref.WeakValueDictionary[tuple[str, str, bool], ObjectBackend] = (
    weakref.WeakValueDictionary())
_PROBE_LOCK = threading.Lock()
#: The names a repository keeps under its prefix.
_LAYOUT = {"objects", "log", "checkpoint", "probe"}


def _revive(token: str) -> ObjectStorage:
    storage = _LIVE.get(token)
    if storage is None:
        raise RuntimeError(
            "a repository on obstore's in-memory store cannot be unpickled in another process "
            "(its data lives in the process that made it); use S3, GCS, Azure or local files"
        )
    return storage


def _clean_prefix(prefix: str) -> str:
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
    cleaned = prefix.strip("/")
    for segment in cleaned.split("/") if cleaned else ():
        problem = ("an empty segment ('//')" if not segment
                   else f"a {segment!r} segment" if segment in {".", ".."}
                   else next((f"the control character {c!r}" for c in segment
                              if ord(c) < 0x20 or ord(c) == 0x7F), None)
                   or next((f"the lone surrogate {c!r}" for c in segment
                            if 0xD800 <= ord(c) <= 0xDFFF), None))
        if problem:
            raise ValueError(f"invalid object storage prefix {prefix!r}: it has {problem}; use "
                             "'/'-separated names such as 'repos/era5'")
    return cleaned


@attrs.frozen(eq=False)
class ObjectStorage:
    """A repository under ``prefix`` of the obstore store ``store``.

    Two descriptions are equal when their stores are (same kind and
    configuration; obstore's in-memory store: the same object) and their
    prefixes are.
    """

    #: A ``LocalStore`` on a relative directory is made again on the absolute one
    #: (``zarrstore.object.absolute_backing``), so that a pickled copy opens it anywhere.
    store: ObjectStore = attrs.field(converter=absolute_backing)
    prefix: str = attrs.field(default="", converter=_clean_prefix)
    unsafe_allow_unconditional_writes: bool = False
    _token: str = attrs.field(factory=lambda: uuid.uuid4().hex, repr=False)

    def __attrs_post_init__(self) -> None:
        if not is_picklable_store(self.store):
            _LIVE[self._token] = self

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ObjectStorage) and self.prefix == other.prefix
                and (self.store is other.store or bool(self.store == other.store)))

    def __hash__(self) -> int:
        return hash((type(self.store).__name__, self.prefix))

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        if not is_picklable_store(self.store):
            return _revive, (self._token,)
        return ObjectStorage, (self.store, self.prefix, self.unsafe_allow_unconditional_writes)

    def __repr__(self) -> str:
        text = repr(self.store)
        if text.startswith("<"):  # obstore's MemoryStore has no repr of its own
            text = f"{type(self.store).__name__}({id(self.store):#x})"
        return f"ObjectStorage({text}, prefix={self.prefix!r})"

    def _io(self) -> ObjectIO:
        return ObjectIO(self.store, self.prefix, repr(self))

    def _key(self) -> tuple[str, str]:
        """Who this location is, within the process: the store's configuration and prefix."""
        if not is_picklable_store(self.store):
            return str(id(self.store)), self.prefix
        store: Any = self.store
        parts = [type(store).__name__, repr(store)]
        for name in ("config", "client_options", "retry_config"):
            parts.append(repr(getattr(store, name, None)))
        return "|".join(parts), self.prefix

    def _probe(self) -> None:
        """Refuse a store without create-if-absent, unless told it is unsafe but fine."""
        if self.unsafe_allow_unconditional_writes:
            return
        key = self._key()[0]  # a property of the store, not of the prefix: one entry each
        with _PROBE_LOCK:
            supported = _PROBED.get(key)
        if supported is None:
            io = self._io()
            supported = io.run("probing for conditional writes", io.supports_conditional_create())
            if supported:  # a refusal is asked again next time (the service may change)
                with _PROBE_LOCK:
                    _PROBED[key] = supported
        if not supported:
            raise UnsafeStorageError(
                f"{self!r} cannot create an object only if it is absent (a second "
                "create-if-absent of one probe object succeeded), so two writers could both "
                "move a branch and one commit would be lost. Use a store with conditional "
                "writes (AWS S3, GCS, Azure, MinIO, R2, obstore's local or memory store), or "
                "pass unsafe_allow_unconditional_writes=True if only one process ever writes")

    def open_backend(self) -> Backend:
        """An ``ObjectBackend`` on this location (after the conditional-write probe).

        Raises:
            UnsafeStorageError: the store lacks create-if-absent.
            StorageNotFoundError, StorageAccessDeniedError,
            StorageUnreachableError: the store cannot be used at all.
        """
        key = (*self._key(), self.unsafe_allow_unconditional_writes)
        with _PROBE_LOCK:
            backend = _BACKENDS.get(key)
        if backend is not None:
            return backend
        self._probe()
        backend = ObjectBackend(self.store, self.prefix, where=repr(self),
                                conditional=not self.unsafe_allow_unconditional_writes)
        with _PROBE_LOCK:
            return _BACKENDS.setdefault(key, backend)

    def probe_backend(self) -> Backend:
        """``open_backend``: reading the log changes nothing under the prefix."""
        return self.open_backend()

    def may_hold_repository(self) -> bool:
        """Whether the prefix holds a repository's log (one delimiter listing)."""
        io = self._io()
        names = io.run("looking for a repository", io.folders())
        return "log" in names or "checkpoint" in names

    def creation_problem(self) -> str | None:
        """Refuse a prefix that already holds anything but a repository's own layout."""
        io = self._io()
        others = sorted(set(io.run("looking for a repository", io.folders())) - _LAYOUT)
        if others:
            shown = ", ".join(others[:3]) + (" …" if len(others) > 3 else "")
            return (f"{self!r} already holds other objects ({shown}); give an empty prefix "
                    "for the repository")
        return None

    def missing_repository_message(self) -> str:
        """No repository's log under the prefix."""
        return f"no repository in {self!r}"


def object_storage(store: ObjectStore, prefix: str = "", *,
                   unsafe_allow_unconditional_writes: bool = False) -> ObjectStorage:
    """A repository under ``prefix`` of any obstore store (S3, GCS, Azure, local, memory).

    Args:
        store: an ``obstore.store`` store. Its own ``prefix=`` setting, if
            any, is honoured too (the two are joined).
        prefix: where in the store the repository lives (``"repos/era5"``).
        unsafe_allow_unconditional_writes: open a store that cannot create
            an object only if absent. Safe only while a single process
            writes: two concurrent commits could then both "win" and one be
            lost. Off by default; without it such a store raises
            ``UnsafeStorageError``.
    """
    if not isinstance(unsafe_allow_unconditional_writes, bool):
        raise TypeError("unsafe_allow_unconditional_writes must be True or False")
    return ObjectStorage(store, prefix, unsafe_allow_unconditional_writes)


def s3_storage(
    *,
    bucket: str,
    prefix: str = "",
    region: str | None = None,
    endpoint_url: str | None = None,
    allow_http: bool = False,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
    anonymous: bool = False,
    from_env: bool = True,
    client_options: ClientConfig | None = None,
    retry_config: RetryConfig | None = None,
) -> ObjectStorage:
    """A repository in an S3 bucket, or on any S3-compatible service (MinIO, R2, Ceph, moto).

    The parameter names are icechunk's ``s3_storage``'s. Settings not given
    come from the ``AWS_*`` environment (``AWS_REGION``, ``AWS_ENDPOINT_URL``,
    credentials, …) when ``from_env`` is true.

    Args:
        bucket: the bucket (it must exist).
        prefix: the repository's prefix in the bucket.
        region: the bucket's region.
        endpoint_url: an S3-compatible service's URL.
        allow_http: allow a plain ``http://`` endpoint.
        access_key_id: credentials (with ``secret_access_key`` and, for
            temporary ones, ``session_token``).
        secret_access_key: see ``access_key_id``.
        session_token: see ``access_key_id``.
        anonymous: send unsigned requests (public buckets).
        from_env: take what is not given here from the environment. With
            ``False``, credentials must be given (or ``anonymous=True``).
        client_options: obstore's HTTP client settings (``timeout``,
            ``connect_timeout``, …).
        retry_config: obstore's retry settings (``max_retries``, …).

    Raises:
        StorageAccessDeniedError: ``from_env=False`` and no credentials given.
    """
    if not from_env and not anonymous and not (access_key_id and secret_access_key):
        raise StorageAccessDeniedError(
            f"s3_storage(bucket={bucket!r}): no credentials — pass access_key_id and "
            "secret_access_key, anonymous=True for a public bucket, or from_env=True to use "
            "the AWS_* environment")
    config: dict[str, Any] = {}
    for name, value in (("region", region), ("endpoint", endpoint_url),
                        ("access_key_id", access_key_id),
                        ("secret_access_key", secret_access_key), ("token", session_token)):
        if value is not None:
            config[name] = value
    if anonymous:
        config["skip_signature"] = True
    options: dict[str, Any] = dict(client_options or {})
    if allow_http:
        options["allow_http"] = True
    store = S3Store(bucket, config=config, client_options=options or None,  # type: ignore[arg-type]
                    retry_config=retry_config)
    return ObjectStorage(store, prefix)


def gcs_storage(*, bucket: str, prefix: str = "", service_account_path: str | None = None,
                anonymous: bool = False, client_options: ClientConfig | None = None,
                retry_config: RetryConfig | None = None, **config: Any) -> ObjectStorage:
    """A repository in a Google Cloud Storage bucket (obstore's ``GCSStore``).

    Credentials come from ``service_account_path`` or, as obstore does, from
    the environment (``GOOGLE_SERVICE_ACCOUNT``, application default
    credentials). Further ``GCSConfig`` settings pass through ``config``.
    """
    if service_account_path is not None:
        config["service_account_path"] = service_account_path
    if anonymous:
        config["skip_signature"] = True
    store = GCSStore(bucket, config=config or None,  # type: ignore[arg-type]
                     client_options=client_options, retry_config=retry_config)
    return ObjectStorage(store, prefix)


def azure_storage(*, account: str, container: str, prefix: str = "",
                  access_key: str | None = None, sas_token: str | None = None,
                  anonymous: bool = False, client_options: ClientConfig | None = None,
                  retry_config: RetryConfig | None = None, **config: Any) -> ObjectStorage:
    """A repository in an Azure Blob Storage container (obstore's ``AzureStore``).

    Credentials come from ``access_key``, ``sas_token`` or, as obstore does,
    from the ``AZURE_*`` environment. Further ``AzureConfig`` settings pass
    through ``config``.
    """
    config["account_name"] = account
    if access_key is not None:
        config["account_key"] = access_key
    if sas_token is not None:
        config["sas_key"] = sas_token
    if anonymous:
        config["skip_signature"] = True
    store = AzureStore(container, config=config,  # type: ignore[arg-type]
                       client_options=client_options, retry_config=retry_config)
    return ObjectStorage(store, prefix)


"""The opendal boundary shared by ``OpendalStore`` and ``AsyncOpendalStore``.

Part of the OpenDAL stores (``zarrstore.opendal``), apart because it is what
both the blocking and the async storage need of the binding: operators built
from a scheme and options, the capabilities the protocol reports, the one
place where opendal's errors become zarrstore's (``raise ... from exc``; the
answers for an impossible key become a missing one), the gate that keeps
pruning from racing writes, byte
ranges planned from a size, and listings (a directory walk for services with
real directories). It imports opendal, and nothing here knows zarr.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import attrs
import opendal
from opendal import exceptions as opendal_errors

from zarrstore.errors import (
    StorageIOError,
    StorageTimeoutError,
    UnsupportedOperationError,
)
from zarrstore.keys import name_max, refuse_unnamable
from zarrstore.protocol import DirListing
from zarrstore.ranges import ByteRange, OffsetRequest, resolve
from zarrstore.rust_runtimes import OPENDAL

__all__ = [
    "ERRORS",
    "PRUNED_RETRIES",
    "DirectoryPruned",
    "MISSING",
    "NoValueHere",
    "TAKEN",
    "DirectoryGate",
    "Features",
    "IN_PROCESS_SERVICES",
    "OpendalBoundary",
    "Option",
    "absolute_paths",
    "list_children",
    "list_keys",
    "needs_size",
    "open_operator",
    "parents",
    "reopening",
    "run_in_thread",
    "span",
]

T = TypeVar("T")
Option = str | os.PathLike[str] | bool | int

#: Every error the binding raises (its exception classes share no base of their own).
ERRORS: tuple[type[Exception], ...] = tuple(
    value
    for value in vars(opendal_errors).values()
    if isinstance(value, type) and issubclass(value, Exception)
)
TAKEN = (opendal_errors.AlreadyExists, opendal_errors.ConditionNotMatch)


class NoValueHere(Exception):  # noqa: N818 - a signal inside the boundary, not an error
    """The key runs through a value (``a/0/0`` under ``a/0``) or names a directory.

    Raised by ``OpendalBoundary._translated`` in place of the service's
    "Not a directory" / "Is a directory" / "Directory not empty" errors when the
    caller lets ``MISSING`` through: such a key holds nothing, so reads give
    ``None`` and erases do nothing (docs/protocol.md).
    """


class DirectoryPruned(Exception):  # noqa: N818 - a signal inside the boundary, not an error
    """A write found its directory gone: a concurrent erase pruned it as it emptied.

    Raised by ``OpendalBoundary._translated`` in place of ``NotFound`` on a write
    when the caller lets it through; the write is tried again (``PRUNED_RETRIES``).
    """


#: How often a write is tried when concurrent erases keep pruning its directory.
PRUNED_RETRIES = 20

#: What a read reads as a missing key and an erase as nothing to do.
MISSING: tuple[type[Exception], ...] = (opendal_errors.NotFound, NoValueHere)

#: The service's words (OS errors on ``fs``, FTP's 550 replies) for a key that
#: cannot hold a value: a path through a file, or a directory.
_NO_VALUE_HERE = ("not a directory", "is a directory", "directory not empty")

#: Services whose ranged reads must run to the end of the value. opendal's FTP
#: service (0.47) hands a connection back to its pool while a partial transfer
#: is still open, and the next command on it fails ("Data connection is already
#: open"); a read to the end closes the transfer cleanly.
_READS_TO_END = frozenset({"ftp"})

#: Services whose ``stat`` of ``d/n`` lists ``d`` and picks the entry named ``n``
#: (opendal 0.47's FTP): when ``d`` is itself a file named ``n`` (``c/0`` beside
#: ``c/0/0``), the file's own listing answers, and ``stat`` reports ``c/0`` as
#: ``c/0/0``. There a file stat of such a key is confirmed by its parent.
_STATS_BY_LISTING = frozenset({"ftp"})

#: Services whose data lives in the operator object, in this process: opendal's
#: ``memory`` and its in-process caches. Two operators of one of these are two
#: stores whatever their options, and a pickled operator comes back as a new,
#: empty one (opendal rebuilds it from scheme and options), so these stores
#: compare by identity and refuse to pickle. (opendal names the last one
#: ``"mini-moka"`` in a built operator, ``"mini_moka"`` when asked for it.)
IN_PROCESS_SERVICES = frozenset({"memory", "dashmap", "moka", "mini_moka", "mini-moka"})


def _brief(exc: BaseException) -> str:
    """An opendal error's headline and its source, without the context and backtrace."""
    sections = str(exc).split("\n\n")
    text = sections[0]
    for section in sections[1:]:
        head, _, body = section.partition("\n")
        if head.strip() == "Source:":
            text += ": " + " ".join(line.strip() for line in body.splitlines())
    return text


def _names_no_value(exc: BaseException) -> bool:
    """Whether ``exc`` says the path cannot hold a value (see ``NoValueHere``)."""
    text = _brief(exc).lower()
    return any(words in text for words in _NO_VALUE_HERE)


def _operator_options(options: dict[str, Option]) -> dict[str, str]:
    def text(value: Option) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        return os.fspath(value) if isinstance(value, os.PathLike) else str(value)

    return {name: text(value) for name, value in options.items()}


#: Options of OpenDAL's ``fs`` service that name local directories.
_FS_PATH_OPTIONS = ("root", "atomic_write_dir")


def absolute_paths(scheme: str, options: dict[str, str]) -> dict[str, str]:
    """``options`` with the ``fs`` service's directories made absolute (others as given).

    Against the current working directory, where opendal itself resolves a
    relative ``root`` when it builds the operator. A pickled operator carries
    its options as given, so with a relative directory a copy opened by a
    worker in another working directory would read and write a different,
    empty directory (pydata/xarray#1085, dask#2256); ``FilesystemStore`` and
    LMDB resolve their paths at construction for the same reason.
    """
    if scheme != "fs":
        return options
    return {name: os.path.abspath(value) if name in _FS_PATH_OPTIONS and value else value
            for name, value in options.items()}


def reopening(operator: opendal.Operator | opendal.AsyncOperator,
              ) -> tuple[str, dict[str, str]] | None:
    """How to open ``operator`` again anywhere, when its own options would not say.

    ``(scheme, options)`` with absolute directories for an ``fs`` operator
    built on a relative one (made absolute now, as the caller's working
    directory stands when it hands the operator over); ``None`` when the
    operator's options already say where it is.
    """
    scheme, options = operator.__reduce__()[1][:2]
    if not isinstance(options, dict):
        return None
    absolute = absolute_paths(scheme, options)
    return None if absolute == options else (scheme, absolute)


def open_operator(kind: Callable[..., T], scheme: str, options: dict[str, Option]) -> T:
    """``opendal.Operator(scheme, **options)`` (or the async one), its errors translated.

    The ``fs`` service's directories are made absolute first (``absolute_paths``).
    """
    try:
        return kind(scheme, **absolute_paths(scheme, _operator_options(options)))
    except opendal_errors.Unsupported as exc:
        raise UnsupportedOperationError(
            f"opendal cannot open {scheme!r} here: {str(exc).split(chr(10))[0]}"
            f" ({_services_line(exc)})"
        ) from exc
    except opendal_errors.ConfigInvalid as exc:
        raise ValueError(f"invalid options for opendal {scheme!r}: {_brief(exc)}") from exc


def _services_line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        if line.strip().startswith("available:"):
            return line.strip()
    return "see the opendal docs for the services in this build"


def _identity(operator: opendal.Operator | opendal.AsyncOperator,
              reopen: tuple[str, dict[str, str]] | None = None) -> tuple[object, ...]:
    """What makes two operators the same backing: scheme and options (memory: the object).

    ``reopen`` (from ``reopening``) stands for the operator's own options.
    """
    scheme, options = reopen or operator.__reduce__()[1][:2]
    if scheme in IN_PROCESS_SERVICES:  # each such operator is its own store
        return (scheme, id(operator))
    return (scheme, tuple(sorted(options.items())))


def span(byte_range: ByteRange | None, size: int) -> tuple[int, int]:
    """``(offset, length)`` of ``byte_range`` in a value of ``size`` bytes, clipped to it."""
    start, stop = resolve(byte_range, size)
    return start, stop - start


def needs_size(byte_range: ByteRange | None) -> bool:
    """Whether reading ``byte_range`` needs the value's size first (anything but all of it)."""
    return byte_range is not None and not (
        isinstance(byte_range, OffsetRequest) and byte_range.offset == 0
    )


def parents(keys: Sequence[str]) -> list[str]:
    """Every directory holding one of ``keys`` (below the root), deepest first."""
    found: set[str] = set()
    for key in keys:
        cut = key.rfind("/")
        while cut > 0:
            found.add(key[: cut + 1])
            cut = key.rfind("/", 0, cut)
    return sorted(found, key=lambda d: (-d.count("/"), d))


def run_in_thread(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on a fresh event loop in a worker thread, even inside a running loop."""
    box: dict[str, Any] = {}

    def main() -> None:
        try:
            box["value"] = asyncio.run(coroutine)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=main, name="zarrstore-opendal-list", daemon=True)
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


#: How long a write waits, in seconds, before looking again at a directory being pruned.
_GATE_POLL = 0.001


class DirectoryGate:
    """Keeps one storage's pruning of empty directories from racing its own writes.

    On services with real directories a write makes the key's directories and
    then moves the value in (FTP: from a temporary file beside the root); an
    erase prunes the directories it empties. A prune between the two removes
    the directory under the write, whose move then fails and, on FTP, leaves
    opendal's temporary file behind as a stray key. So a directory is pruned
    only while no write under it is in flight, and a write under a directory
    being pruned waits until the prune is done. The gate's lock is held only
    for the bookkeeping (never across I/O), so both storages share it, from
    threads or from an event loop. Writers elsewhere (another storage or
    process) are not seen: their write may still fail and is tried again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._writing: Counter[str] = Counter()
        self._pruning: set[str] = set()
        self._creating: set[str] = set()

    def _try_enter(self, key: str) -> list[str] | None:
        directories = parents([key])
        with self._lock:
            if any(d in self._pruning for d in directories):
                return None
            self._writing.update(directories)
        return directories

    def _leave(self, directories: list[str]) -> None:
        with self._lock:
            self._writing.subtract(directories)
            self._writing += Counter()  # drop the zero counts

    @contextmanager
    def writing(self, key: str) -> Iterator[None]:
        """Hold off prunes of ``key``'s directories while it is written (blocking)."""
        while (directories := self._try_enter(key)) is None:
            time.sleep(_GATE_POLL)
        try:
            yield
        finally:
            self._leave(directories)

    @asynccontextmanager
    async def writing_async(self, key: str) -> AsyncIterator[None]:
        """Hold off prunes of ``key``'s directories while it is written (async)."""
        while (directories := self._try_enter(key)) is None:
            await asyncio.sleep(_GATE_POLL)
        try:
            yield
        finally:
            self._leave(directories)

    def _try_claim(self, key: str) -> bool:
        with self._lock:
            if key in self._creating:
                return False
            self._creating.add(key)
            return True

    def _release(self, key: str) -> None:
        with self._lock:
            self._creating.discard(key)

    @contextmanager
    def creating(self, key: str) -> Iterator[None]:
        """Run one ``set_if_absent`` of ``key`` at a time in this storage (blocking).

        A look-then-write, or a service's create that is not atomic (``fs``
        with ``atomic_write_dir`` renames a temporary file over the key), let
        two racing callers both store and both report success; claimed here,
        the second one sees the first one's value. Callers in other storages
        or processes are not seen.
        """
        while not self._try_claim(key):
            time.sleep(_GATE_POLL)
        try:
            yield
        finally:
            self._release(key)

    @asynccontextmanager
    async def creating_async(self, key: str) -> AsyncIterator[None]:
        """``creating`` for the async storage: waits on the event loop, never blocking it."""
        while not self._try_claim(key):
            await asyncio.sleep(_GATE_POLL)
        try:
            yield
        finally:
            self._release(key)

    def begin_prune(self, directory: str) -> bool:
        """Claim ``directory`` for pruning; ``False`` while a write under it is in flight."""
        with self._lock:
            if self._writing[directory] > 0:
                return False
            self._pruning.add(directory)
            return True

    def end_prune(self, directory: str) -> None:
        """Release a directory claimed by ``begin_prune``."""
        with self._lock:
            self._pruning.discard(directory)


def _renames_into_place(operator: opendal.Operator | opendal.AsyncOperator) -> bool:
    """Whether ``operator`` is ``fs`` writing through ``atomic_write_dir``.

    Its ``if_not_exists`` then looks before it renames the temporary file over
    the key, so two racing creates both succeed (seen with opendal 0.47); it
    is atomic only without ``atomic_write_dir`` (an exclusive open).
    """
    scheme, options = operator.__reduce__()[1][:2]
    return bool(scheme == "fs" and isinstance(options, dict) and options.get("atomic_write_dir"))


@attrs.frozen(kw_only=True)
class Features:
    """What the protocol needs to know of a service, from ``operator.capability()``."""

    writes: bool
    deletes: bool
    listing: bool
    empty_values: bool  #: ``write_can_empty``
    atomic_create: bool  #: ``write_with_if_not_exists``
    real_directories: bool  #: no native recursive listing: directories are walked and pruned
    reads_to_end: bool  #: ranged reads run to the end of the value (FTP)
    stats_by_listing: bool  #: a file stat of ``d/n`` under a file ``d`` named ``n`` lies (FTP)
    local_files: bool  #: the service is this machine's filesystem (``fs``)

    @classmethod
    def of(cls, operator: opendal.Operator | opendal.AsyncOperator) -> Features:
        """The features of ``operator``'s service."""
        capability = operator.capability()
        return cls(
            writes=bool(capability.write),
            deletes=bool(capability.delete),
            listing=bool(capability.list),
            empty_values=bool(capability.write_can_empty),
            atomic_create=bool(capability.write_with_if_not_exists)
            and not _renames_into_place(operator),
            real_directories=not bool(capability.list_with_recursive),
            reads_to_end=operator.__reduce__()[1][0] in _READS_TO_END,
            stats_by_listing=operator.__reduce__()[1][0] in _STATS_BY_LISTING,
            local_files=operator.__reduce__()[1][0] == "fs",
        )


class OpendalBoundary:
    """Shared by both storages: identity, capabilities and the error boundary."""

    _operator: opendal.Operator | opendal.AsyncOperator
    _features: Features
    read_only: bool
    #: ``reopening(operator)``, taken when the storage is made: absolute options
    #: for an ``fs`` operator built on relative directories, else ``None``.
    _reopen: tuple[str, dict[str, str]] | None = None
    #: The longest file name in bytes, on services of real directories; found on first use.
    _name_limit: int | None = None

    def __eq__(self, other: object) -> bool:
        return (
            type(self) is type(other)
            and isinstance(other, OpendalBoundary)
            and self.read_only == other.read_only
            and _identity(self._operator, self._reopen)
            == _identity(other._operator, other._reopen)
        )

    def __hash__(self) -> int:
        return hash(_identity(self._operator, self._reopen))

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "writable"
        return f"{type(self).__name__}({self._operator!r}, {mode})"

    def __getstate__(self) -> dict[str, Any]:
        """The operator (opendal pickles it as its scheme and options) and the mode.

        Raises:
            TypeError: the operator is one of ``IN_PROCESS_SERVICES`` (OpenDAL's
                ``memory``, ``dashmap``, ``moka``, ``mini_moka``). Their data
                lives in this process and opendal rebuilds a pickled operator
                as a new, empty one, so a copy sent to a dask worker would read
                nothing and zarr would fill every chunk with the fill value;
                refused as obstore's in-memory backing refuses.
        """
        scheme = self._operator.__reduce__()[1][0]
        if scheme in IN_PROCESS_SERVICES:
            raise TypeError(
                f"cannot pickle {type(self).__name__} over opendal's {scheme!r} service: its "
                "data lives in this process, and a copy elsewhere would be a new, empty "
                "store; use a service with somewhere to reopen ('fs', 's3', ...)")
        operator = self._operator
        if self._reopen is not None:  # relative directories: send absolute ones
            scheme, options = self._reopen
            operator = type(operator)(scheme, **options)
        return {"operator": operator, "read_only": self.read_only}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["operator"], read_only=state["read_only"])  # type: ignore[misc]

    @property
    def supports_writes(self) -> bool:
        """Whether the service can store values (``capability().write``)."""
        return self._features.writes

    @property
    def supports_deletes(self) -> bool:
        """Whether the service can erase values (``capability().delete``)."""
        return self._features.deletes

    @property
    def supports_listing(self) -> bool:
        """Whether the service can enumerate keys (``capability().list``)."""
        return self._features.listing

    @property
    def supports_empty_values(self) -> bool:
        """Whether the service can store a zero-length value (not FTP)."""
        return self._features.empty_values

    @contextmanager
    def _translated(
        self, operation: str, key: str, *, let_through: tuple[type[Exception], ...] = ()
    ) -> Iterator[None]:
        """Turn opendal's errors into zarrstore's, at the boundary.

        In a ``fork`` child of a process that had used OpenDAL, every request
        would wait forever: ``ForkedProcessError`` instead, before it is made
        (``zarrstore.rust_runtimes``).

        Args:
            operation: what was attempted, for the message.
            key: the key (or prefix) it was attempted on.
            let_through: opendal errors the caller handles itself (``NotFound``
                read as a missing key, ``AlreadyExists`` as a lost create). With
                ``MISSING`` among them, the service's errors for a key that
                cannot hold a value (a path through a file, a directory) come
                out as ``NoValueHere``; elsewhere (a write) they stay errors.
                With ``DirectoryPruned`` among them, a write's ``NotFound`` comes
                out as that.
        """
        self._refuse_unnamable(key)
        OPENDAL.refuse_if_forked(f"{operation} {key!r} on {self!r}")
        try:
            yield
        except let_through:
            raise
        except ERRORS as exc:
            if NoValueHere in let_through and _names_no_value(exc):
                raise NoValueHere(f"{operation} {key!r}: {_brief(exc)}") from exc
            if (
                DirectoryPruned in let_through
                and isinstance(exc, opendal_errors.NotFound)
                and not _names_no_value(exc)
            ):
                raise DirectoryPruned(f"{operation} {key!r}: {_brief(exc)}") from exc
            raise self._translation(operation, key, exc) from exc

    def _refuse_unnamable(self, key: str) -> None:
        """Refuse, before any request, a key (or prefix) the service cannot name.

        ASCII control characters on every service (FTP refuses CR and LF in its
        command lines; S3 through opendal failed as "its directory keeps being
        removed"); on services of real directories (``fs``, FTP, ...) a segment
        over the file-name limit, or a path over ``PATH_MAX`` from the
        filesystem's root (opendal answered "File name too long" as a
        ``StorageIOError`` on writes). ``InvalidKeyError`` on every call, as
        ``LMDBStore`` refuses keys over 511 bytes.

        Raises:
            InvalidKeyError: naming the key and the limit it breaks.
        """
        if not self._features.real_directories:
            refuse_unnamable(key, controls=True)
            return
        if self._name_limit is None:
            root = self._root()
            self._name_limit = name_max(Path(root)) if self._features.local_files else 255
        refuse_unnamable(key, controls=True, root=self._root(), name_limit=self._name_limit)

    def _root(self) -> str:
        """The service's ``root`` option (``""`` where it has none)."""
        options = self._reopen[1] if self._reopen else self._operator.__reduce__()[1][1]
        root = options.get("root", "") if isinstance(options, dict) else ""
        return str(root)

    def _translation(self, operation: str, key: str, exc: Exception) -> Exception:
        """The zarrstore error for opendal's ``exc``, raised by ``_translated``."""
        if isinstance(exc, opendal_errors.Unsupported):
            return UnsupportedOperationError(
                f"{operation} {key!r} is not supported by {self!r}: {_brief(exc)}"
            )
        message = f"{operation} {key!r} on {self!r}: {_brief(exc)}"
        if "timeout" in message.partition(": ")[2].lower():
            return StorageTimeoutError(message)
        return StorageIOError(message)

    def _parent_to_confirm(self, key: str) -> str | None:
        """The directory whose ``stat`` confirms a file ``stat`` of ``key``, if one must.

        Only on services that stat by listing the parent (``stats_by_listing``)
        and only for keys named like their parent (``c/0/0``): the one case such a
        ``stat`` can answer with the parent file itself.
        """
        names = key.split("/")
        if self._features.stats_by_listing and len(names) > 1 and names[-1] == names[-2]:
            return key.rpartition("/")[0] + "/"
        return None

    def _refuse_empty(self, key: str, value: bytes) -> None:
        if not value and not self._features.empty_values:
            raise UnsupportedOperationError(
                f"set {key!r} on {self!r}: this service cannot store an empty value "
                "(opendal's capability write_can_empty is false)"
            )


async def _entries(
    storage: OpendalBoundary, operator: opendal.AsyncOperator, prefix: str
) -> list[tuple[str, bool]]:
    """``(path, is_directory)`` of each direct child of ``prefix``; a missing prefix is empty."""
    try:
        with storage._translated("list", prefix, let_through=MISSING):
            lister = await operator.list(prefix or "/")
            found = [(entry.path, entry.path.endswith("/")) async for entry in lister]
        if any(storage._parent_to_confirm(path) for path, is_dir in found if not is_dir):
            # A listing of a file named like its one entry (FTP's LIST of ``c/0/``
            # answers with the file ``c/0``): the prefix must be a directory.
            with storage._translated("stat", prefix, let_through=MISSING):
                await operator.stat(prefix)
    except MISSING:
        return []
    return [(path, is_dir) for path, is_dir in found if path not in (prefix, "/")]


async def list_keys(
    storage: OpendalBoundary, operator: opendal.AsyncOperator, prefix: str
) -> list[str]:
    """Every key under ``prefix``, sorted.

    Services that list recursively by themselves (object stores) are asked
    once. Directory services are walked here, one listing per directory and a
    level at a time: opendal's own emulated recursive listing never returns
    for a missing directory on FTP (opendal 0.47).
    """
    if not storage._features.real_directories:
        try:
            with storage._translated("list", prefix, let_through=MISSING):
                lister = await operator.list(prefix or "/", recursive=True)
                return sorted([e.path async for e in lister if not e.path.endswith("/")])
        except MISSING:
            return []
    keys: list[str] = []
    level = [prefix]
    while level:
        listings = await asyncio.gather(*(_entries(storage, operator, d) for d in level))
        level = []
        for entries in listings:
            for path, is_dir in entries:
                (level if is_dir else keys).append(path)
    return sorted(keys)


async def has_keys(
    storage: OpendalBoundary, operator: opendal.AsyncOperator, prefix: str
) -> bool:
    """Whether any key lies under ``prefix``: ``list_keys``, stopping at the first key.

    A recursive listing stops at its first key; a walk of directories stops at
    the first level that holds one.
    """
    if not storage._features.real_directories:
        try:
            with storage._translated("list", prefix, let_through=MISSING):
                lister = await operator.list(prefix or "/", recursive=True)
                async for entry in lister:
                    if not entry.path.endswith("/"):
                        return True
                return False
        except MISSING:
            return False
    level = [prefix]
    while level:
        listings = await asyncio.gather(*(_entries(storage, operator, d) for d in level))
        entries = [entry for listing in listings for entry in listing]
        if not all(is_dir for _, is_dir in entries):
            return True
        level = [path for path, _ in entries]
    return False


async def list_children(
    storage: OpendalBoundary, operator: opendal.AsyncOperator, prefix: str
) -> DirListing:
    """The direct children of ``prefix``: one non-recursive listing."""
    entries = await _entries(storage, operator, prefix)
    return DirListing(
        keys=tuple(sorted(path for path, is_dir in entries if not is_dir)),
        prefixes=tuple(sorted(path for path, is_dir in entries if is_dir)),
    )

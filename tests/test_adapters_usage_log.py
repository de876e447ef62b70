"""``UsageLog``: conformance over memory and filesystem, and the documented line format."""

from __future__ import annotations

import io
import itertools
import json
import logging
import pickle
import re
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from adapter_support import FEWER_EXAMPLES, InnermostBackdoor, ZarrBackdoor
from hypothesis.stateful import run_state_machine_as_test
from hypothesis_budget import hierarchy_examples
from zarr.core.buffer import cpu
from zarr.testing.stateful import ZarrHierarchyStateMachine
from zarr.testing.store import StoreTests

from zarrstore import (
    FilesystemStorage,
    FilesystemStore,
    InvalidKeyError,
    MemoryStorage,
    MemoryStore,
    OffsetRequest,
    RangeRequest,
    ReadOnlyError,
    SuffixRequest,
    UsageLog,
)
from zarrstore.adapters import UsageLogStorage
from zarrstore.testing import StoreConformance, storage_state_machine

# -- conformance ---------------------------------------------------------------------


class TestUsageLogOverMemory(InnermostBackdoor, StoreConformance):
    @pytest.fixture
    def storage(self) -> UsageLogStorage:
        return UsageLogStorage(MemoryStorage(), io.StringIO())


class TestUsageLogOverFilesystem(InnermostBackdoor, StoreConformance):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> UsageLogStorage:
        return UsageLogStorage(FilesystemStorage(tmp_path / "store"), io.StringIO())


class TestUsageLogWithZarrOverMemory(ZarrBackdoor, StoreTests[UsageLog, cpu.Buffer]):
    store_cls = UsageLog
    buffer_cls = cpu.Buffer

    @pytest.fixture
    def store_kwargs(self) -> dict[str, Any]:
        return {"store": MemoryStore(), "writer": io.StringIO()}

    def test_store_repr(self, store: UsageLog) -> None:
        assert repr(store) == "UsageLog(UsageLogStorage(MemoryStorage(0 keys, writable)))"


class TestUsageLogWithZarrOverFilesystem(ZarrBackdoor, StoreTests[UsageLog, cpu.Buffer]):
    store_cls = UsageLog
    buffer_cls = cpu.Buffer

    @pytest.fixture
    def store_kwargs(self, tmp_path: Path) -> dict[str, Any]:
        return {"store": FilesystemStore(tmp_path / "zarr"), "writer": io.StringIO()}

    def test_store_repr(self, store: UsageLog) -> None:
        assert repr(store).startswith("UsageLog(UsageLogStorage(FilesystemStorage(")


def test_state_machine_over_memory() -> None:
    machine = storage_state_machine(lambda: UsageLogStorage(MemoryStorage(), io.StringIO()))
    run_state_machine_as_test(machine, settings=FEWER_EXAMPLES)


def test_state_machine_over_filesystem(tmp_path: Path) -> None:
    counter = itertools.count()

    def make() -> UsageLogStorage:
        return UsageLogStorage(FilesystemStorage(tmp_path / f"s{next(counter)}"), io.StringIO())

    run_state_machine_as_test(storage_state_machine(make), settings=FEWER_EXAMPLES)


def test_zarr_hierarchy_state_machine_over_memory() -> None:
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        lambda: ZarrHierarchyStateMachine(UsageLog(MemoryStore(), io.StringIO())),
        settings=hierarchy_examples(),
    )


# -- the line format, parsed back as docs/adapters.md describes it ------------------

LINE = re.compile(r"^(?P<prefix>\d{4} )(?P<operation>[a-z_]+)(?: (?P<arguments>.*))?$")


def parse(line: str) -> tuple[str, str, list[str], str]:
    """Split one line into (prefix, operation, arguments, result)."""
    head, result = line.rsplit(" -> ", 1)  # results never contain " -> "
    match = LINE.match(head)
    assert match, line
    arguments = match["arguments"] or ""
    decoder = json.JSONDecoder()
    tokens: list[str] = []
    position = 0
    while position < len(arguments):
        if arguments[position] == '"':  # a key: JSON string, maybe followed by [range]
            key, position = decoder.raw_decode(arguments, position)
            end = arguments.find(" ", position)
            end = len(arguments) if end < 0 else end
            tokens.append(key + arguments[position:end])
        else:
            end = arguments.find(" ", position)
            end = len(arguments) if end < 0 else end
            tokens.append(arguments[position:end])
        position = end + 1
    return match["prefix"], match["operation"], tokens, result


def counting_prefix() -> Callable[[], str]:
    counter = itertools.count()
    return lambda: f"{next(counter):04d} "


def test_lines_parse_back_in_call_order() -> None:
    writer = io.StringIO()
    storage = UsageLogStorage(MemoryStorage(), writer, prefix=counting_prefix())
    secret = b"SECRET-VALUE-BYTES"
    storage.set("a/b", secret)
    storage.get("a/b")
    storage.get("a/b", RangeRequest(2, 8))
    storage.get("a/b", OffsetRequest(4))
    storage.get("a/b", SuffixRequest(5))
    storage.get("missing")
    storage.get_many([("a/b", None), ("nope", RangeRequest(0, 1)), ("a/b", SuffixRequest(3))])
    storage.size("a/b")
    storage.exists("nope")
    storage.set_if_absent("a/b", b"x")
    storage.set_if_absent("c", b"xyz")
    list(storage.list())
    storage.list_dir("")
    storage.size_prefix("a/")
    storage.erase_many(["c", "d"])
    storage.erase("a/b")
    storage.erase_prefix("a/")
    storage.close()

    lines = writer.getvalue().splitlines()
    assert secret.decode() not in writer.getvalue()
    assert [parse(line) for line in lines] == [
        ("0000 ", "set", ["a/b", "len=18"], "ok"),
        ("0001 ", "get", ["a/b"], "len=18"),
        ("0002 ", "get", ["a/b[2:8]"], "len=6"),
        ("0003 ", "get", ["a/b[4:]"], "len=14"),
        ("0004 ", "get", ["a/b[-5:]"], "len=5"),
        ("0005 ", "get", ["missing"], "None"),
        ("0006 ", "get_many", ["n=3", "a/b", "nope[0:1]", "a/b[-3:]"], "[len=18, None, len=3]"),
        ("0007 ", "size", ["a/b"], "size=18"),
        ("0008 ", "exists", ["nope"], "False"),
        ("0009 ", "set_if_absent", ["a/b", "len=1"], "False"),
        ("0010 ", "set_if_absent", ["c", "len=3"], "True"),
        ("0011 ", "list_prefix", [""], "keys=2"),
        ("0012 ", "list_dir", [""], "keys=1 prefixes=1"),
        ("0013 ", "size_prefix", ["a/"], "size=18"),
        ("0014 ", "erase_many", ["n=2", "c", "d"], "ok"),
        ("0015 ", "erase", ["a/b"], "ok"),
        ("0016 ", "erase_prefix", ["a/"], "ok"),
        ("0017 ", "close", [], "ok"),
    ]


def test_errors_are_logged_by_type_and_still_raised() -> None:
    writer = io.StringIO()
    storage = UsageLogStorage(MemoryStorage(read_only=True), writer, prefix=counting_prefix())
    with pytest.raises(ReadOnlyError):
        storage.set("k", b"v")
    with pytest.raises(InvalidKeyError):
        storage.get("../escape")
    assert [parse(line) for line in writer.getvalue().splitlines()] == [
        ("0000 ", "set", ["k", "len=1"], "error=ReadOnlyError"),
        ("0001 ", "get", ["../escape"], "error=InvalidKeyError"),
    ]


def test_awkward_keys_stay_on_one_line() -> None:
    writer = io.StringIO()
    storage = UsageLogStorage(MemoryStorage(), writer, prefix=counting_prefix())
    key = 'odd "key" -> with\nnewline'
    storage.set(key, b"1")
    lines = writer.getvalue().splitlines()
    assert len(lines) == 1
    assert parse(lines[0]) == ("0000 ", "set", [key, "len=1"], "ok")


def test_default_prefix_is_a_utc_timestamp(capsys: pytest.CaptureFixture[str]) -> None:
    storage = UsageLogStorage(MemoryStorage())  # stdout by default
    storage.get("k")
    out = capsys.readouterr().out
    assert re.fullmatch(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z get "k" -> None\n', out), out


def test_logger_writer() -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("zarrstore.test.usage")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        storage = UsageLogStorage(MemoryStorage(), logger, prefix=lambda: "", level=logging.DEBUG)
        storage.set("k", b"abc")
    finally:
        logger.removeHandler(handler)
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.DEBUG, 'set "k" len=3 -> ok')
    ]


def test_threads_never_interleave_lines() -> None:
    writer = io.StringIO()
    storage = UsageLogStorage(MemoryStorage(), writer, prefix=lambda: "0000 ")
    start = threading.Barrier(8)

    def work(n: int) -> None:
        start.wait()
        for i in range(100):
            storage.set(f"t{n}/{i}", bytes(i))
            storage.get(f"t{n}/{i}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = writer.getvalue().splitlines()
    assert len(lines) == 8 * 100 * 2
    parsed = [parse(line) for line in lines]
    assert sum(op == "set" for _, op, _, _ in parsed) == 800
    for n in range(8):  # each thread's own calls appear in its order
        mine = [
            args[0] for _, op, args, _ in parsed if op == "set" and args[0].startswith(f"t{n}/")
        ]
        assert mine == [f"t{n}/{i}" for i in range(100)]


def test_read_only_view_shares_the_writer() -> None:
    writer = io.StringIO()
    store = UsageLog(MemoryStore(), writer, prefix=counting_prefix())
    reader = store.with_read_only(True)
    reader.storage.get("k")
    store.storage.get("k")
    assert [parse(line)[0] for line in writer.getvalue().splitlines()] == ["0000 ", "0001 "]


def test_pickle_keeps_the_standard_stream() -> None:
    storage = UsageLogStorage(MemoryStorage(), sys.stderr)
    clone = pickle.loads(pickle.dumps(storage))
    assert clone.writer is sys.stderr and clone == storage


# -- through zarr: every read path is seen, sharded reads included --------------------


def test_zarr_sharded_read_is_logged_as_index_then_ranges() -> None:
    writer = io.StringIO()
    store = UsageLog(MemoryStore(), writer, prefix=lambda: "")
    array = zarr.create_array(
        store,
        name="s",
        shape=(16, 16),
        chunks=(4, 4),
        shards=(8, 8),
        dtype="u1",
        compressors=None,
    )
    array[:] = np.ones((16, 16), dtype="u1")
    writer.seek(0)
    writer.truncate()
    reopened = zarr.open_array(store, path="s", mode="r")
    writer.seek(0)
    writer.truncate()
    np.testing.assert_array_equal(reopened[0:4, 0:4], 1)
    # The shard index is the last 4 * 16 + 4 bytes (two uint64 per inner chunk and
    # a crc32c); the one 4x4 chunk of uint8 is 16 bytes, read as a range.
    assert [parse("0000 " + line)[1:] for line in writer.getvalue().splitlines()] == [
        ("get", ["s/c/0/0[-68:]"], "len=68"),
        ("get_many", ["n=1", "s/c/0/0[0:16]"], "[len=16]"),
    ]


@pytest.mark.parametrize("encoding", ["utf-8", "ascii"])
def test_a_line_the_writer_cannot_encode_never_replaces_the_outcome(
    tmp_path: Path, encoding: str
) -> None:
    """A log file that cannot hold a key's characters changes nothing about the call.

    Logged to a UTF-8 file, ``get("a/\\ud800")`` raised ``UnicodeEncodeError`` from
    writing its line instead of the ``InvalidKeyError`` it gets everywhere else;
    to an ASCII file, storing the valid key ``"é/x"`` failed after storing it.
    """
    with open(tmp_path / "usage.log", "w", encoding=encoding) as sink:
        store = UsageLog(MemoryStore(), sink, prefix=lambda: "")
        with pytest.raises(InvalidKeyError, match="surrogate"):
            store.storage.get("a/\ud800")
        store.storage.set("é/x", b"v")
        assert store.storage.get("é/x") == b"v"
    lines = (tmp_path / "usage.log").read_text(encoding=encoding).splitlines()
    assert lines[0].startswith('get "a/') and lines[0].endswith("-> error=InvalidKeyError")
    assert lines[1].startswith("set ") and lines[1].endswith("len=1 -> ok")
    assert lines[2].endswith("-> len=1")


def test_a_value_is_logged_by_its_bytes() -> None:
    """A ``memoryview`` of 4-byte items was logged as ``len=4`` for 16 bytes stored."""
    sink = io.StringIO()
    store = UsageLog(MemoryStore(), sink, prefix=lambda: "")
    store.storage.set("a", memoryview(bytes(range(16))).cast("i"))  # type: ignore[arg-type]
    assert sink.getvalue() == 'set "a" len=16 -> ok\n'

"""Usage reported against xarray, dask, zarr-python and icechunk, replayed on sessions.

Each test names the public report whose *kind* of fault it replays (repository
and number where there is one) and runs on both local backends (in memory and
LMDB); the distributed ones run on LMDB, which worker processes reopen by path.
The oracle is what the same calls do on zarr's own ``MemoryStore`` (xarray's
encoding choices, zarr's errors) and versionstore's documented behaviour.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import os
import pickle
import threading
import warnings
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import zarr
import zarr.api.asynchronous
from http_support import http_server_fixture, served_dir_fixture
from object_support import S3Server, aws_env_fixture, s3_fixture
from obstore.store import LocalStore
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import cpu, default_buffer_prototype

import versionstore as vs
from versionstore.session_store import SessionStore
from zarrstore import FilesystemStore, ReadOnlyError
from zarrstore.http import HTTPStore
from zarrstore.object import ObjectStore

da = pytest.importorskip("dask.array", reason="the usage reports need dask[array]")
dask = pytest.importorskip("dask", reason="the usage reports need dask[array]")
xr = pytest.importorskip("xarray", reason="the usage reports need xarray")

__all__ = ["aws_env_fixture", "http_server_fixture", "s3_fixture", "served_dir_fixture"]

pytestmark = pytest.mark.filterwarnings("ignore::zarr.errors.ZarrUserWarning")

BACKENDS: dict[str, Callable[[Path], Any]] = {
    "memory": lambda tmp: vs.in_memory_storage(),
    "lmdb": lambda tmp: vs.lmdb_storage(tmp / "repo"),
}


@pytest.fixture(params=sorted(BACKENDS))
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[vs.Repository]:
    repository = vs.Repository.create(BACKENDS[request.param](tmp_path))
    yield repository
    repository.close()


def _read(repo: vs.Repository, snapshot: str, **kwargs: Any) -> Any:
    """The dataset a snapshot holds, loaded (``open_zarr`` arguments in ``kwargs``)."""
    return xr.open_zarr(repo.readonly_session(snapshot_id=snapshot).store, **kwargs).load()


def _mixed(times: pd.DatetimeIndex, words: list[str]) -> Any:
    """A dataset of the dtypes xarray encodes itself: strings, datetimes with NaT, bools, NaN."""
    count = len(times)
    stamps = pd.to_datetime(["2000-01-01", "NaT", "2000-01-03", "2000-01-04"][:count])
    return xr.Dataset(
        {"word": ("t", np.array(words, dtype=object)),
         "flag": ("t", np.arange(count) % 3 == 0),
         "seen": ("t", stamps),
         "value": ("t", np.array([1.0, np.nan, 3.0, 4.0][:count], dtype="f4"))},
        coords={"t": times},
    )


# -- xarray: append, region, mode, encoding ---------------------------------------------


def test_appending_along_two_dimensions_in_one_session(repo: vs.Repository) -> None:
    """icechunk#1006: appends along ``x`` then along ``y`` in one session came back with zeros.

    The dask chunks straddle the Zarr chunks of the second append (``safe_chunks=False``,
    as in the report), so each append read-modify-writes chunks the previous one staged.
    """
    rng = np.random.default_rng(1006)
    whole = xr.DataArray(rng.random((30, 20)), dims=("x", "y"), name="v",
                         coords={"x": np.arange(30), "y": np.arange(20)})
    session = repo.writable_session("main")
    chunks = {"x": 7, "y": 5}
    whole.isel(x=slice(0, 14), y=slice(0, 10)).chunk(chunks).to_zarr(session.store, mode="w")
    whole.isel(x=slice(14, 30), y=slice(0, 10)).chunk(chunks).to_zarr(
        session.store, append_dim="x", safe_chunks=False)
    whole.isel(y=slice(10, 20)).chunk(chunks).to_zarr(
        session.store, append_dim="y", safe_chunks=False)
    xr.testing.assert_equal(xr.open_zarr(session.store)["v"].load(), whole)
    snapshot = session.commit("two appends")
    xr.testing.assert_equal(_read(repo, snapshot)["v"], whole)


def test_append_of_strings_datetimes_and_bools_and_time_travel(repo: vs.Repository) -> None:
    """xarray's encoded dtypes (object strings, NaT, bool, NaN fill) survive an append.

    Replays xarray's append reports (pydata/xarray#9767, #8134: ``append_dim`` onto an
    existing store) with every dtype xarray encodes itself; the earlier snapshot
    still reads the dataset as it was.
    """
    first = _mixed(pd.date_range("2020-01-01", periods=4), ["a", "bb", "ccc", "dddd"])
    encoding = {name: {"chunks": (2,)} for name in [*first.data_vars, "t"]}
    session = repo.writable_session("main")
    first.to_zarr(session.store, mode="w", encoding=encoding)
    before = session.commit("four days")

    more = _mixed(pd.date_range("2020-01-05", periods=4), ["eeeee", "f", "", "ghij"])
    session = repo.writable_session("main")
    more.to_zarr(session.store, append_dim="t")
    after = session.commit("four more")
    xr.testing.assert_identical(_read(repo, after), xr.concat([first, more], "t"))
    xr.testing.assert_identical(_read(repo, before), first)


def test_rewriting_the_same_dataset_with_mode_w_is_no_change(repo: vs.Repository) -> None:
    """A rerun of a ``to_zarr(mode="w")`` job stages nothing (docs: identical rewrites).

    ``mode="w"`` deletes the group and writes it again, consolidated metadata
    included; every key ends up as committed, so there is nothing to commit.
    """
    dataset = _mixed(pd.date_range("2020-01-01", periods=4), ["a", "bb", "ccc", "dddd"])
    session = repo.writable_session("main")
    dataset.to_zarr(session.store, mode="w")
    session.commit("once")
    session = repo.writable_session("main")
    dataset.to_zarr(session.store, mode="w")
    assert not session.has_uncommitted_changes
    with pytest.raises(vs.NothingToCommitError):
        session.commit("twice")


def test_region_auto_and_mode_r_plus_write_only_their_chunks(repo: vs.Repository) -> None:
    """pydata/xarray#8434 (``region="auto"``) and ``mode="r+"``: only the region's chunks change.

    Run in two sessions started from the same snapshot; the second commit
    rebases over the first by itself, since the regions share no chunk and
    both leave the (consolidated) metadata as it was.
    """
    template = xr.Dataset({"v": (("x", "y"), da.zeros((8, 3), chunks=(2, 3)))},
                          coords={"x": np.arange(8)}, attrs={"title": "template"})
    session = repo.writable_session("main")
    template.to_zarr(session.store, mode="w", compute=False)
    session.commit("template")

    auto, plus = repo.writable_session("main"), repo.writable_session("main")
    xr.Dataset({"v": (("x", "y"), np.ones((2, 3)))}, coords={"x": [2, 3]}).to_zarr(
        auto.store, region="auto")
    xr.Dataset({"v": (("x", "y"), np.full((2, 3), 2.0))}).to_zarr(
        plus.store, region={"x": slice(6, 8)}, mode="r+")
    assert auto.status().updated_chunks == {"/v": frozenset({(1, 0)})}
    assert plus.status().updated_chunks == {"/v": frozenset({(3, 0)})}
    auto.commit("rows 2 and 3")
    both = plus.commit("rows 6 and 7")
    column = _read(repo, both)["v"].values[:, 0]
    np.testing.assert_array_equal(column, [np.nan] * 2 + [1, 1] + [np.nan] * 2 + [2, 2])
    assert _read(repo, both).attrs == {"title": "template"}


def test_compute_false_template_committed_before_its_data(repo: vs.Repository) -> None:
    """pydata/xarray#8245 / #10147: ``to_zarr(compute=False)`` writes metadata, compute the chunks.

    The template (metadata and the eager coordinates) is committed alone; the
    delayed write, computed afterwards, stages the data chunks into the same
    session, which commits them next.
    """
    values = np.arange(24.0).reshape(6, 4)
    dataset = xr.Dataset({"t": (("time", "x"), da.from_array(values, chunks=(2, 4)))},
                         coords={"time": np.arange(6), "x": np.arange(4)})
    session = repo.writable_session("main")
    delayed = dataset.to_zarr(session.store, mode="w", compute=False)
    assert "/t" not in session.status().updated_chunks
    template = session.commit("template")
    delayed.compute()
    assert session.status().updated_chunks == {"/t": frozenset({(0, 0), (1, 0), (2, 0)})}
    filled = session.commit("data")
    assert np.isnan(_read(repo, template)["t"].values).all()
    np.testing.assert_array_equal(_read(repo, filled)["t"].values, values)


def test_open_group_mode_w_over_committed_data_leaves_only_the_new_hierarchy(
        repo: vs.Repository) -> None:
    """``zarr.open_group(mode="w")`` over committed data: the commit holds only what followed."""
    session = repo.writable_session("main")
    _mixed(pd.date_range("2020-01-01", periods=4), ["a", "b", "c", "d"]).to_zarr(
        session.store, group="old/nested", mode="w")
    session.commit("old data")
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="w")
    root.create_array("fresh", shape=(2,), dtype="i4")[:] = 7
    snapshot = session.commit("start over")
    store = repo.readonly_session(snapshot_id=snapshot).store
    assert sorted(store.storage.list_prefix("")) == ["fresh/c/0", "fresh/zarr.json", "zarr.json"]
    assert list(zarr.open_group(store, mode="r")) == ["fresh"]


def test_write_empty_chunks_false_deletes_committed_chunks(repo: vs.Repository) -> None:
    """zarr's ``write_empty_chunks=False`` deletes a chunk (or shard) that became all fill.

    The deletion of a *committed* chunk is a staged tombstone: zarr counts the
    chunks and stored bytes as on its own store, reads see the fill value, the
    commit drops the key, and the earlier snapshot keeps it.
    """
    empty = {"write_empty_chunks": False}
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="w", shape=(6,), chunks=(2,), dtype="f4",
                      fill_value=0, config=empty)[:] = np.arange(1, 7)
    zarr.create_array(session.store, name="sh", shape=(8,), chunks=(1,), shards=(4,),
                      dtype="i2", fill_value=0, config=empty)[:] = np.arange(1, 9)
    full = session.commit("filled")
    session = repo.writable_session("main")
    emptied_array = zarr.open_array(session.store, path="w", config=empty)
    emptied_array[2:4] = 0
    # What zarr counts of the staged state is what it counts on its own MemoryStore.
    oracle = zarr.create_array(zarr.storage.MemoryStore(), name="w", shape=(6,), chunks=(2,),
                               dtype="f4", fill_value=0, config=empty)
    oracle[:] = np.arange(1, 7)
    oracle[2:4] = 0
    assert emptied_array.nchunks_initialized == oracle.nchunks_initialized == 2
    assert emptied_array.nbytes_stored() == oracle.nbytes_stored()
    sharded = zarr.open_array(session.store, path="sh", config=empty)
    sharded[4:8] = 0
    sharded[1] = 0
    assert sorted(session.store.storage.list_prefix("sh/")) == ["sh/c/0", "sh/zarr.json"]
    emptied = session.commit("emptied")
    store = repo.readonly_session(snapshot_id=emptied).store
    assert sorted(store.storage.list_prefix("w/")) == ["w/c/0", "w/c/2", "w/zarr.json"]
    np.testing.assert_array_equal(zarr.open_array(store, path="w", mode="r")[:], [1, 2, 0, 0, 5, 6])
    np.testing.assert_array_equal(zarr.open_array(store, path="sh", mode="r")[:],
                                  [1, 0, 3, 4, 0, 0, 0, 0])
    np.testing.assert_array_equal(
        zarr.open_array(repo.readonly_session(snapshot_id=full).store, path="w", mode="r")[:],
        np.arange(1, 7))


# -- zarr-python store API over staged and committed layers -----------------------------


def _listed(listing: Any) -> list[str]:
    async def collect() -> list[str]:
        return sorted([name async for name in listing])

    return asyncio.run(collect())


def test_delete_dir_by_prefix_and_at_the_root_over_committed_keys(repo: vs.Repository) -> None:
    """zarr-python#3773 (``"a"`` matched ``"ab/..."``) and #2492 (``delete_dir("")`` missed).

    Here the keys are partly committed and partly staged: ``delete_dir("a")``
    leaves ``ab/`` and ``a.b``, ``delete_dir("")`` empties the session, and
    the commit of that is an empty tree.
    """
    session = repo.writable_session("main")
    store = session.store
    for key in ["a/x", "ab/x", "a/b/y", "a.b", "a0"]:
        store.storage.set(key, b"1")
    session.commit("base")
    store.storage.set("a/new", b"2")
    store.storage.set("ab/new", b"2")
    asyncio.run(store.delete_dir("a"))
    assert _listed(store.list()) == ["a.b", "a0", "ab/new", "ab/x"]
    asyncio.run(store.delete_dir(""))
    assert _listed(store.list()) == []
    snapshot = session.commit("everything deleted")
    assert _listed(repo.readonly_session(snapshot_id=snapshot).store.list()) == []


def test_byte_ranges_at_and_past_the_end_of_staged_and_virtual_chunks(
        repo: vs.Repository, tmp_path: Path) -> None:
    """Range reads past the end and of zero length (lakeFS#9726, arrow-rs-object-store#846).

    On a staged value that replaced a committed one, and on a virtual chunk
    (a byte range of a file with more bytes after it): every request is
    clipped to the chunk, zero-length requests give ``b""`` — never the
    neighbouring bytes of the source, never an error — and
    ``get_partial_values`` answers each alike.
    """
    source = b"HEADER!!" + bytes(range(100)) + b"TRAILER"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "obs.bin").write_bytes(source)
    prefix = (tmp_path / "src").as_uri() + "/"
    repo = vs.Repository.open(repo.storage, virtual_chunk_stores={
        prefix: FilesystemStore(tmp_path / "src")})
    session = repo.writable_session("main")
    store = session.store
    store.storage.set("staged", b"committed value, longer")
    session.commit("base")
    store.storage.set("staged", bytes(range(100)))
    store.set_virtual_ref("virtual", prefix + "obs.bin", 8, 100)
    requests = [None, RangeByteRequest(0, 4), RangeByteRequest(96, 200),
                RangeByteRequest(100, 200), RangeByteRequest(5, 5), OffsetByteRequest(96),
                OffsetByteRequest(100), OffsetByteRequest(150), SuffixByteRequest(4),
                SuffixByteRequest(0), SuffixByteRequest(500)]
    expected = [bytes(range(100)), bytes(range(4)), bytes(range(96, 100)), b"", b"",
                bytes(range(96, 100)), b"", b"", bytes(range(96, 100)), b"", bytes(range(100))]
    prototype = default_buffer_prototype()

    def raw(values: list[Any]) -> list[bytes | None]:
        return [None if value is None else value.to_bytes() for value in values]

    async def check(reader: SessionStore) -> None:
        for key in ["staged", "virtual"]:
            got = [await reader.get(key, prototype, request) for request in requests]
            assert raw(got) == expected, key
            partial = await reader.get_partial_values(
                prototype, [(key, request) for request in requests])
            assert raw(partial) == expected, key
            assert await reader.getsize(key) == 100

    asyncio.run(check(store))
    snapshot = session.commit("staged and virtual")
    asyncio.run(check(repo.readonly_session(snapshot_id=snapshot).store))


def test_set_if_not_exists_sees_committed_and_deleted_keys(repo: vs.Repository) -> None:
    """zarr's ``set_if_not_exists`` (implicit groups' metadata) over a committed, deleted key."""
    session = repo.writable_session("main")
    store = session.store
    store.storage.set("k", b"committed")
    session.commit("k")
    prototype = default_buffer_prototype()

    async def scenario() -> None:
        await store.set_if_not_exists("k", cpu.Buffer.from_bytes(b"other"))
        assert (await store.get("k", prototype)).to_bytes() == b"committed"  # type: ignore[union-attr]
        await store.delete("k")
        await store.set_if_not_exists("k", cpu.Buffer.from_bytes(b"again"))
        assert (await store.get("k", prototype)).to_bytes() == b"again"  # type: ignore[union-attr]

    asyncio.run(scenario())
    assert session.status().updated_keys == frozenset({"k"})


# -- icechunk session workflows -----------------------------------------------------------


def test_reading_uncommitted_writes_then_discarding_them(repo: vs.Repository) -> None:
    """icechunk#789: xarray reads back what the session staged, before any commit.

    Then ``discard_changes`` leaves the session clean, readable at its base and
    writable again; a commit with nothing staged raises ``NothingToCommitError``
    unless ``allow_empty=True``, and the same session commits again afterwards.
    """
    dataset = _mixed(pd.date_range("2020-01-01", periods=4), ["a", "bb", "ccc", "dddd"])
    session = repo.writable_session("main")
    dataset.to_zarr(session.store, mode="w", consolidated=False)
    xr.testing.assert_identical(xr.open_zarr(session.store, consolidated=False).load(), dataset)
    base = session.commit("dataset")

    xr.Dataset({"value": ("t", np.zeros(4, dtype="f4"))}).to_zarr(
        session.store, region={"t": slice(0, 4)}, consolidated=False)
    assert session.has_uncommitted_changes
    session.discard_changes()
    assert not session.has_uncommitted_changes
    xr.testing.assert_identical(xr.open_zarr(session.store, consolidated=False).load(), dataset)
    with pytest.raises(vs.NothingToCommitError):
        session.commit("nothing")
    empty = session.commit("empty on purpose", allow_empty=True)
    assert repo.lookup_snapshot(empty).parent_id == base
    xr.Dataset({"value": ("t", np.ones(4, dtype="f4"))}).to_zarr(
        session.store, region={"t": slice(0, 4)}, consolidated=False)
    latest = session.commit("ones")
    assert (_read(repo, latest, consolidated=False)["value"].values == 1).all()
    xr.testing.assert_identical(_read(repo, base, consolidated=False), dataset)


def test_a_reader_stays_on_its_snapshot_tag_and_time(repo: vs.Repository) -> None:
    """``readonly_session`` by snapshot id, tag and ``as_of`` keeps the data of that version."""
    values = xr.Dataset({"v": ("x", np.arange(4.0))}, coords={"x": np.arange(4)})
    session = repo.writable_session("main")
    values.to_zarr(session.store, mode="w")
    first = session.commit("first")
    written = repo.lookup_snapshot(first).written_at
    repo.create_tag("v1", snapshot_id=first)
    pinned = repo.readonly_session("main")
    (values * 10).to_zarr(session.store, mode="w")
    session.commit("second")

    readers = [pinned, repo.readonly_session(snapshot_id=first), repo.readonly_session(tag="v1"),
               repo.readonly_session("main", as_of=written)]
    for reader in readers:
        xr.testing.assert_identical(xr.open_zarr(reader.store).load(), values)
    assert [info.id for info in repo.ancestry(tag="v1")][0] == first
    xr.testing.assert_identical(xr.open_zarr(repo.readonly_session("main").store).load(),
                                values * 10)


def test_session_and_store_outlive_the_repository_object(repo: vs.Repository) -> None:
    """A notebook keeps ``session`` and drops ``repo``: both go on reading, writing, committing."""
    reopened = vs.Repository.open(repo.storage)
    session = reopened.writable_session("main")
    zarr.create_array(session.store, name="a", shape=(4,), chunks=(2,), dtype="i4")[:] = 3
    reader = reopened.readonly_session("main")
    del reopened
    gc.collect()
    session.commit("after the repository object went")
    assert sorted(reader.store.storage.list_prefix("")) == []  # the empty initial snapshot
    zarr.open_array(session.store, path="a")[0] = 4
    session.commit("again")
    assert list(zarr.open_array(repo.readonly_session("main").store, path="a", mode="r")[:]) == [
        4, 3, 3, 3]


# -- dask: reading and writing through worker processes -----------------------------------


distributed = pytest.importorskip("distributed", reason="the dask reports need distributed")


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """Two spawned worker processes, one thread each, no dashboard."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
            worker_dashboard_address=None,
        ) as cluster, distributed.Client(cluster, set_as_default=False) as connected:
            yield connected


def _write_rows(store: SessionStore, block: int) -> int:
    """In a worker: write rows ``4 * block`` to ``4 * block + 3`` of ``tm/v`` as ``block``."""
    rows = xr.Dataset({"v": (("x", "y"), np.full((4, 3), float(block)))})
    rows.to_zarr(store, group="tm", region={"x": slice(4 * block, 4 * block + 4)},
                 consolidated=False)
    return block


@pytest.mark.timeout(300)
def test_workers_read_uncommitted_data_and_fill_a_committed_template(
        client: Any, tmp_path: Path) -> None:
    """icechunk#964 / #1608 and pydata/xarray#8245, through a ``distributed`` cluster.

    The graph that writes ``dst`` reads ``src`` from the *writable* session
    (staged, not committed) in the workers; icechunk could not pickle that
    session. Then the template pattern: metadata committed with
    ``compute=False``, regions written by separate tasks each holding the
    pickled store, one commit in the client; a read-only session computes on
    the workers too.
    """
    repo = vs.Repository.create(vs.lmdb_storage(tmp_path / "repo"))
    values = np.arange(16 * 6, dtype="f8").reshape(16, 6)
    session = repo.writable_session("main")
    with distributed.Client(client.scheduler.address, set_as_default=True):
        xr.Dataset({"v": (("x", "y"), da.from_array(values, chunks=(4, 3)))}).to_zarr(
            session.store, group="src", mode="w", consolidated=False)
        source = xr.open_zarr(session.store, group="src", consolidated=False, chunks={})
        (source * 2).to_zarr(session.store, group="dst", mode="w", consolidated=False)
        both = session.commit("src and dst")
        np.testing.assert_array_equal(
            _read(repo, both, group="dst", consolidated=False)["v"].values, values * 2)

        template = xr.Dataset({"v": (("x", "y"), da.zeros((16, 3), chunks=(4, 3)))})
        session = repo.writable_session("main")
        template.to_zarr(session.store, group="tm", mode="w", compute=False, consolidated=False)
        session.commit("template")
        session = repo.writable_session("main")
        assert sorted(client.gather(client.map(_write_rows, [session.store] * 4, range(4)))) == [
            0, 1, 2, 3]
        filled = session.commit("four regions")
        got = _read(repo, filled, group="tm", consolidated=False)["v"].values
        np.testing.assert_array_equal(got[:, 0], np.repeat(np.arange(4.0), 4))

        reader = repo.readonly_session(snapshot_id=filled)
        total = xr.open_zarr(reader.store, group="dst", consolidated=False, chunks={})["v"].sum()
        assert float(total.compute()) == float((values * 2).sum())
    repo.close()


# -- round 3: zarr-python store and array semantics -----------------------------------------


def test_resize_shrink_then_grow_matches_zarr_and_keeps_history(repo: vs.Repository) -> None:
    """zarr-python#1017: shrinking to ``(1, 1)`` and growing back keeps the first whole chunk.

    That is what zarr does on its own ``MemoryStore`` (chunks wholly outside the
    smaller shape are deleted, a partly covered one is kept): the session
    answers alike, the commit drops the deleted chunk keys, and the snapshot
    before the resize still reads every value.
    """
    oracle = zarr.create_array(zarr.storage.MemoryStore(), name="a", shape=(4, 6),
                               chunks=(2, 3), dtype="i4", fill_value=0)
    oracle[:] = 1
    oracle.resize((1, 1))
    oracle.resize((4, 6))
    session = repo.writable_session("main")
    array = zarr.create_array(session.store, name="a", shape=(4, 6), chunks=(2, 3), dtype="i4",
                              fill_value=0)
    array[:] = 1
    full = session.commit("ones")
    array.resize((1, 1))
    array.resize((4, 6))
    np.testing.assert_array_equal(array[:], oracle[:])
    resized = session.commit("shrunk and grown")
    store = repo.readonly_session(snapshot_id=resized).store
    assert sorted(store.storage.list_prefix("a/")) == ["a/c/0/0", "a/zarr.json"]
    np.testing.assert_array_equal(zarr.open_array(store, path="a", mode="r")[:], oracle[:])
    before = zarr.open_array(repo.readonly_session(snapshot_id=full).store, path="a", mode="r")
    np.testing.assert_array_equal(before[:], np.ones((4, 6)))


def test_fixed_bytes_unicode_structured_and_nan_fill_round_trip(repo: vs.Repository) -> None:
    """zarr-python#2322 (bytes fill values), #4147 / #275 (structured dtypes), NaN fill.

    Each dtype whose fill value or encoding zarr special-cases is written,
    committed and read back from the snapshot as written; unwritten chunks
    read as the fill value (NaN stays NaN).
    """
    record = np.dtype([("a", "<i4"), ("b", "<f8")])
    records = np.array([(i, i / 2) for i in range(5)], dtype=record)
    session = repo.writable_session("main")
    store = session.store
    zarr.create_array(store, name="rec", shape=(5,), chunks=(2,), dtype=record,
                      zarr_format=2)[:] = records
    zarr.create_array(store, name="fixed", shape=(5,), chunks=(2,), dtype="S3",
                      fill_value=b"X")[:3] = [b"ab", b"", b"xyz"]
    zarr.create_array(store, name="text", shape=(5,), chunks=(2,), dtype=str)[:] = [
        "é", "", "日本語", "x", "y"]
    zarr.create_array(store, name="nan", shape=(5,), chunks=(2,), dtype="f4",
                      fill_value=np.nan)[1] = 1
    snapshot = session.commit("dtypes")
    reader = repo.readonly_session(snapshot_id=snapshot).store

    def read(path: str) -> Any:
        return zarr.open_array(reader, path=path, mode="r")[:]

    np.testing.assert_array_equal(read("rec"), records)
    assert list(read("fixed")) == [b"ab", b"", b"xyz", b"X", b"X"]
    assert list(read("text")) == ["é", "", "日本語", "x", "y"]
    np.testing.assert_array_equal(read("nan"), [np.nan, 1, np.nan, np.nan, np.nan])


def test_zero_and_one_dimensional_arrays_swap_at_one_path(repo: vs.Repository) -> None:
    """pydata/xarray#10147 / zarr-specs#282: a 0-d array's one chunk is the *key* ``a/c``.

    Overwriting a committed 1-d array (chunks under the *directory* ``a/c/``)
    with a 0-d one, and a 0-d one with a 1-d one, in one session: the key and
    the directory of the same name never mix, staged or committed.
    """
    session = repo.writable_session("main")
    store = session.store
    zarr.create_array(store, name="a", shape=(4,), chunks=(2,), dtype="i4")[:] = 3
    zarr.create_array(store, name="b", shape=(), dtype="i4")[...] = 9
    session.commit("1-d a, 0-d b")
    zarr.create_array(store, name="a", shape=(), dtype="i4", overwrite=True)[...] = 7
    zarr.create_array(store, name="b", shape=(4,), chunks=(2,), dtype="i4",
                      overwrite=True)[:] = 5
    expected = ["a/c", "a/zarr.json", "b/c/0", "b/c/1", "b/zarr.json", "zarr.json"]
    assert sorted(store.storage.list_prefix("")) == expected
    assert _listed(store.list_dir("a")) == ["c", "zarr.json"]
    snapshot = session.commit("swapped")
    reader = repo.readonly_session(snapshot_id=snapshot).store
    assert sorted(reader.storage.list_prefix("")) == expected
    assert int(zarr.open_array(reader, path="a", mode="r")[...]) == 7
    assert list(zarr.open_array(reader, path="b", mode="r")[:]) == [5, 5, 5, 5]


def test_read_only_views_refuse_every_write_path(repo: vs.Repository) -> None:
    """icechunk#404 (read-only not respected) and icechunk PR 1021 (``with_read_only``).

    A read-only session refuses xarray's every write mode with zarr's own
    error, refuses ``commit``, and will not become writable through
    ``with_read_only(False)``; a writable session's ``with_read_only(True)``
    view stays read-only when pickled.
    """
    session = repo.writable_session("main")
    xr.Dataset({"v": ("x", np.arange(4.0))}).to_zarr(session.store, mode="w")
    session.commit("data")
    reader = repo.readonly_session("main")
    small = xr.Dataset({"v": ("x", np.arange(2.0))})
    for kwargs in [{"mode": "w"}, {"mode": "a"}, {"append_dim": "x"},
                   {"mode": "r+", "region": {"x": slice(0, 2)}}]:
        with pytest.raises(ValueError, match="read-only"):
            small.to_zarr(reader.store, **kwargs)
    with pytest.raises(vs.ReadOnlySessionError):
        reader.commit("nothing")
    with pytest.raises(vs.ReadOnlySessionError):
        reader.store.with_read_only(False)
    view = pickle.loads(pickle.dumps(session.store.with_read_only(True)))
    assert view.read_only
    with pytest.raises(ReadOnlyError):
        asyncio.run(view.set("v/zarr.json", cpu.Buffer.from_bytes(b"{}")))
    assert not session.has_uncommitted_changes


# -- round 3: xarray and dask ---------------------------------------------------------------


def test_zarr_format_2_dataset_appends_and_time_travels(repo: vs.Repository) -> None:
    """A zarr v2 dataset (``.zarray`` / ``.zmetadata`` keys) appended along time.

    Replays zarr-python#2757 (v2 group members found from ``.zgroup`` keys) and
    xarray's append reports on the v2 format: the append rewrites the
    consolidated ``.zmetadata``, and both snapshots read as written.
    """
    first = xr.Dataset({"v": (("t", "x"), np.arange(12.0).reshape(4, 3))},
                       coords={"t": pd.date_range("2000-01-01", periods=4)})
    session = repo.writable_session("main")
    first.to_zarr(session.store, mode="w", zarr_format=2, encoding={"v": {"chunks": (2, 3)}})
    assert sorted(session.store.storage.list_prefix("")) == [
        ".zattrs", ".zgroup", ".zmetadata", "t/.zarray", "t/.zattrs", "t/0",
        "v/.zarray", "v/.zattrs", "v/0.0", "v/1.0"]
    before = session.commit("v2")
    more = first.assign_coords(t=pd.date_range("2000-01-05", periods=4))
    more.to_zarr(session.store, append_dim="t")
    after = session.commit("append")
    xr.testing.assert_identical(_read(repo, after), xr.concat([first, more], "t"))
    xr.testing.assert_identical(_read(repo, before), first)
    group = zarr.open_group(repo.readonly_session(snapshot_id=after).store, mode="r")
    assert group.metadata.zarr_format == 2
    assert sorted(group.array_keys()) == ["t", "v"]


def test_appending_to_a_null_coordinate(repo: vs.Repository) -> None:
    """pydata/xarray#8383: a dataset of one empty coordinate, then an append along it."""
    session = repo.writable_session("main")
    xr.Dataset(coords={"t": np.array([], dtype=np.int64)}).to_zarr(session.store, mode="w")
    empty = session.commit("empty")
    grown = xr.Dataset({"foo": ("t", np.array([0]))}, coords={"t": np.array([0])})
    grown.to_zarr(session.store, mode="a", append_dim="t")
    one = session.commit("one row")
    xr.testing.assert_identical(_read(repo, one), grown)
    assert _read(repo, empty).sizes["t"] == 0


def test_dask_store_into_sharded_array_with_a_lock(repo: vs.Repository) -> None:
    """zarr-python#3682 and dask#10238 / #12109: dask chunks smaller than the shards.

    Several dask chunks share one shard, so zarr read-modify-writes the shard;
    with ``lock=True`` or a ``threading.Lock`` (the reports' remedy on the
    threaded scheduler) every value arrives, staged and committed, and a
    ``compute=False`` store computed later does too.
    """
    data = np.arange(40 * 40, dtype="f8").reshape(40, 40)
    session = repo.writable_session("main")
    for name, lock in [("a", True), ("b", threading.Lock())]:
        target = zarr.create_array(session.store, name=name, shape=(40, 40), chunks=(10, 10),
                                   shards=(20, 20), dtype="f8")
        with dask.config.set(scheduler="threads", num_workers=4):
            da.store(da.from_array(data, chunks=(10, 10)), target, lock=lock)
        np.testing.assert_array_equal(target[:], data)
    later = da.store(da.from_array(data * 2, chunks=(10, 10)),
                     zarr.open_array(session.store, path="b"), lock=True, compute=False)
    with dask.config.set(scheduler="threads", num_workers=4):
        later.compute()
    snapshot = session.commit("stored")
    reader = repo.readonly_session(snapshot_id=snapshot).store
    np.testing.assert_array_equal(zarr.open_array(reader, path="a", mode="r")[:], data)
    np.testing.assert_array_equal(zarr.open_array(reader, path="b", mode="r")[:], data * 2)


# -- round 3: icechunk sessions ---------------------------------------------------------------


def test_concurrent_appends_to_one_dimension_conflict(repo: vs.Repository) -> None:
    """icechunk#374 / #1012: two jobs append to the same time axis from one snapshot.

    Both resize ``t`` and write its last chunk: the second commit must fail
    with ``ConflictError`` naming those keys, not silently keep one append's
    length with the other's values; the branch keeps the first append whole.
    """
    session = repo.writable_session("main")
    xr.Dataset({"v": ("t", np.arange(4.0))}, coords={"t": np.arange(4)}).to_zarr(
        session.store, mode="w", consolidated=False, encoding={"v": {"chunks": (4,)}})
    session.commit("four")
    first, second = repo.writable_session("main"), repo.writable_session("main")
    xr.Dataset({"v": ("t", [10.0, 11.0])}, coords={"t": [4, 5]}).to_zarr(
        first.store, append_dim="t", consolidated=False)
    xr.Dataset({"v": ("t", [20.0, 21.0, 22.0])}, coords={"t": [4, 5, 6]}).to_zarr(
        second.store, append_dim="t", consolidated=False)
    first.commit("two more")
    with pytest.raises(vs.ConflictError, match="v/zarr.json"):
        second.commit("three more")
    latest = xr.open_zarr(repo.readonly_session("main").store, consolidated=False).load()
    assert list(latest["v"].values) == [0, 1, 2, 3, 10, 11]


def test_time_travel_edges_and_tag_names(repo: vs.Repository) -> None:
    """``as_of`` at the exact commit time, naive datetimes, and deleted tag names (icechunk#622).

    ``as_of`` equal to ``written_at`` finds that commit; a naive datetime is a
    ``ValueError`` (its zone is unknown), a time before any commit
    ``SnapshotNotFoundError``; a deleted tag's name is never given out again
    (icechunk's tag-delete design); tag and branch names may nest (``x`` and
    ``x/y`` both exist).
    """
    session = repo.writable_session("main")
    session.store.storage.set("k", b"1")
    first = session.commit("first")
    written = repo.lookup_snapshot(first).written_at
    session.store.storage.set("k", b"2")
    session.commit("second")
    assert repo.readonly_session("main", as_of=written).snapshot_id == first
    with pytest.raises(ValueError, match="timezone"):
        repo.readonly_session("main", as_of=written.replace(tzinfo=None))
    with pytest.raises(vs.SnapshotNotFoundError):
        repo.readonly_session("main", as_of=written - pd.Timedelta(days=1).to_pytimedelta())
    repo.create_tag("v1", snapshot_id=first)
    repo.delete_tag("v1")
    with pytest.raises(vs.ImmutableTagError):
        repo.create_tag("v1", snapshot_id=first)
    for name in ["x", "x/y"]:
        repo.create_tag(name, snapshot_id=first)
        repo.create_branch(name, snapshot_id=first)
    assert repo.readonly_session(tag="x/y").store.storage.get("k") == b"1"
    assert repo.readonly_session("x").store.storage.get("k") == b"1"


def test_recreating_a_node_in_a_stale_session_rebases(repo: vs.Repository) -> None:
    """icechunk#1741: delete and re-create a node in a session that fell behind the branch.

    The other writer added ``b``; this session re-created group ``a`` (new
    attributes) and array ``x`` (new shape and chunks). The commit rebases
    over ``b``; ``x`` reads only what was written after its re-creation.
    """
    session = repo.writable_session("main")
    zarr.open_group(session.store, path="a", mode="w")
    zarr.create_array(session.store, name="x", shape=(4,), chunks=(2,), dtype="i4")[:] = 1
    session.commit("a and x")
    stale, other = repo.writable_session("main"), repo.writable_session("main")
    zarr.open_group(other.store, path="b", mode="w")
    other.commit("b")
    zarr.open_group(stale.store, path="a", mode="w", attributes={"again": True})
    zarr.create_array(stale.store, name="x", shape=(6,), chunks=(3,), dtype="i4",
                      overwrite=True)[:3] = 9
    snapshot = stale.commit("a and x again")
    root = zarr.open_group(repo.readonly_session(snapshot_id=snapshot).store, mode="r")
    assert sorted(root.group_keys()) == ["a", "b"]
    assert dict(root["a"].attrs) == {"again": True}
    assert list(root["x"][:]) == [9, 9, 9, 0, 0, 0]


def test_two_writers_adding_variables_with_consolidated_metadata_conflict(
        repo: vs.Repository) -> None:
    """icechunk#962 / PR 965: zarr's consolidated metadata goes stale under concurrent writers.

    Two sessions each add a variable with xarray's default ``consolidated=True``:
    each rewrites the root ``zarr.json`` with a consolidated view that lacks
    the other's variable. The second commit must conflict on ``zarr.json``
    rather than publish a consolidated view that hides the first variable.
    """
    session = repo.writable_session("main")
    xr.Dataset({"v": ("x", np.arange(4.0))}).to_zarr(session.store, mode="w")
    session.commit("v")
    first, second = repo.writable_session("main"), repo.writable_session("main")
    xr.Dataset({"a": ("x", np.ones(4))}).to_zarr(first.store, mode="a")
    xr.Dataset({"b": ("x", np.full(4, 2.0))}).to_zarr(second.store, mode="a")
    first.commit("a")
    with pytest.raises(vs.ConflictError, match="zarr.json"):
        second.commit("b")
    latest = repo.readonly_session("main").store
    assert sorted(xr.open_zarr(latest).data_vars) == ["a", "v"]
    assert sorted(xr.open_zarr(latest, consolidated=False).data_vars) == ["a", "v"]


def test_datatree_round_trip_update_and_append_in_a_subgroup(repo: vs.Repository) -> None:
    """pydata/xarray#9858: a ``DataTree`` (empty root and empty child groups) through sessions.

    Written with ``mode="w"``, one node replaced with ``mode="a"``, then one
    group appended to along its dimension: each snapshot opens with
    ``open_datatree`` as that version, empty groups included.
    """
    tree = xr.DataTree.from_dict({
        "/": xr.Dataset(attrs={"title": "tree"}),
        "/a": xr.Dataset({"v": ("x", np.arange(3.0))}),
        "/a/b": xr.Dataset({"w": ("y", np.arange(2))}),
        "/c": xr.Dataset(),
    })
    session = repo.writable_session("main")
    tree.to_zarr(session.store, mode="w")
    written = session.commit("tree")
    changed = tree.copy()
    changed["/a/b"] = xr.Dataset({"w": ("y", np.arange(2) + 10)})
    changed.to_zarr(session.store, mode="a")
    updated = session.commit("node b replaced")
    xr.Dataset({"v": ("x", np.arange(3.0, 5.0))}).to_zarr(session.store, group="a",
                                                          append_dim="x")
    appended = session.commit("a grew")

    def opened(snapshot: str) -> Any:
        store = repo.readonly_session(snapshot_id=snapshot).store
        return xr.open_datatree(store, engine="zarr").load()

    xr.testing.assert_identical(opened(written), tree)
    xr.testing.assert_identical(opened(updated), changed)
    grown = opened(appended)
    assert list(grown["/a"]["v"].values) == [0, 1, 2, 3, 4]
    assert sorted(grown.groups) == ["/", "/a", "/a/b", "/c"]


#: Node names with URL-significant characters: obstore#496 and arrow-rs-object-store#457
#: (a literal ``%20`` re-encoded or decoded), arrow-rs#7148 (``[`` and ``]``), ``#`` and
#: ``?`` that end a URL's path.
URL_SIGNIFICANT_NAMES = ["a b", "x%20y", "p+q", "h#i", "q?r", "ü", "t~u", "c:d", "[e]", "e=f&g"]


@pytest.mark.timeout(300)
def test_url_significant_node_names_across_tools_and_stores(
        served_dir: tuple[Path, str], s3: S3Server) -> None:
    """Arrays named with URL-significant characters, written by zarr's ``LocalStore``.

    The same files read through ``FilesystemStore``, ``ObjectStore`` on the
    directory, ``HTTPStore`` serving it, and ``ObjectStore`` on S3 after an
    upload with boto3 (another tool): every name lists and reads as itself,
    and what ``ObjectStore`` writes to S3 lands under the literal names.
    """
    root, url = served_dir
    group = zarr.open_group(zarr.storage.LocalStore(root), mode="w")
    for value, name in enumerate(URL_SIGNIFICANT_NAMES):
        group.create_array(name, shape=(2,), dtype="i4")[:] = value
    fresh = s3.fresh()
    for path in root.rglob("*"):
        if path.is_file():
            fresh.backdoor.put(path.relative_to(root).as_posix(), path.read_bytes())

    def check(store: Any, *, listable: bool = True) -> None:
        opened = zarr.open_group(store, mode="r")
        if listable:
            assert sorted(opened.array_keys()) == sorted(URL_SIGNIFICANT_NAMES)
        for value, name in enumerate(URL_SIGNIFICANT_NAMES):
            assert list(zarr.open_array(store, path=name, mode="r")[:]) == [value, value], name

    check(FilesystemStore(root))
    check(ObjectStore.local(root))
    check(HTTPStore(url + "/"), listable=False)
    check(ObjectStore(fresh.backing))
    written = s3.fresh()
    mine = zarr.open_group(ObjectStore(written.backing), mode="w")
    for value, name in enumerate(URL_SIGNIFICANT_NAMES):
        mine.create_array(name, shape=(2,), dtype="i4")[:] = value
    for name in URL_SIGNIFICANT_NAMES:
        assert written.backdoor.get(f"{name}/zarr.json") is not None, name


def test_stores_over_opendal_in_process_services_refuse_to_pickle(tmp_path: Path) -> None:
    """icechunk#348 and zarr-python#2006: a store over process memory sent to a worker.

    OpenDAL's ``memory``, ``dashmap``, ``moka`` and ``mini_moka`` services keep
    their data in the operator, in this process; a pickled copy (what dask
    sends a worker) opened a new, *empty* service, so every read there found
    nothing and zarr filled the chunks with the fill value: silently wrong
    data. The stores now refuse to pickle, as obstore's in-memory backing does
    (docs/stores.md: "except over memory"). Two fresh ``dashmap`` stores also
    compared equal (same scheme, same options) while holding different data;
    like two ``memory`` stores they are now two stores. Services with
    somewhere to reopen still pickle.
    """
    opendal = pytest.importorskip("opendal", reason="the OpenDAL stores need opendal")
    from zarrstore import AsyncOpendalStore, OpendalStore, ReadOnly

    sync = OpendalStore.from_scheme("memory")
    zarr.create_array(sync, name="a", shape=(2,), dtype="i4")[:] = 5
    stores: list[Any] = [sync, sync.storage, AsyncOpendalStore.from_scheme("memory"),
                         OpendalStore(opendal.Operator("memory").layer(
                             opendal.layers.RetryLayer())), ReadOnly(sync.storage)]
    for scheme in ["dashmap", "moka", "mini_moka"]:
        one, other = OpendalStore.from_scheme(scheme), OpendalStore.from_scheme(scheme)
        one.storage.set("k", b"v")
        assert other.storage.get("k") is None
        assert one != other and one == one.with_read_only(False), scheme
        stores += [one, AsyncOpendalStore.from_scheme(scheme)]
    for store in stores:
        with pytest.raises(TypeError, match="data lives in this process"):
            pickle.dumps(store)
    assert list(zarr.open_array(sync, path="a", mode="r")[:]) == [5, 5]
    assert sync.with_read_only(True).storage.get("a/c/0") == sync.storage.get("a/c/0")
    on_disk = OpendalStore.from_scheme("fs", root=str(tmp_path))
    assert pickle.loads(pickle.dumps(on_disk)) == on_disk


def test_copying_every_key_between_snapshots_directories_and_repositories(
        repo: vs.Repository, tmp_path: Path) -> None:
    """zarr-python 2's ``copy_store``, done by hand in zarr 3 (list, then get and set each key).

    A committed snapshot copied with concurrent ``get``s and ``set``s into a
    ``FilesystemStore``, from there into a session of another repository, and
    into a new prefix of the same repository: each copy opens as the dataset
    (consolidated metadata included where the root came along).
    """
    prototype = default_buffer_prototype()

    async def copy(source: Any, target: Any, prefix: str = "") -> int:
        keys = [key async for key in source.list()]
        values = await asyncio.gather(*(source.get(key, prototype) for key in keys))
        await asyncio.gather(*(target.set(prefix + key, value)
                               for key, value in zip(keys, values, strict=True)))
        return len(keys)

    dataset = xr.Dataset({"v": (("t", "x"), np.random.default_rng(3).random((20, 12)))},
                         coords={"t": pd.date_range("2000-01-01", periods=20)})
    session = repo.writable_session("main")
    dataset.to_zarr(session.store, mode="w", encoding={"v": {"chunks": (5, 4)}})
    original = session.commit("original")
    directory = FilesystemStore(tmp_path / "copy")
    count = asyncio.run(copy(repo.readonly_session(snapshot_id=original).store, directory))
    xr.testing.assert_identical(xr.open_zarr(directory).load(), dataset)
    other = vs.Repository.create(vs.in_memory_storage())
    into = other.writable_session("main")
    assert asyncio.run(copy(directory, into.store)) == count
    xr.testing.assert_identical(xr.open_zarr(other.readonly_session(
        snapshot_id=into.commit("copied in")).store).load(), dataset)
    asyncio.run(copy(repo.readonly_session(snapshot_id=original).store, session.store, "copy/"))
    both = session.commit("copied under copy/")
    xr.testing.assert_identical(_read(repo, both, group="copy", consolidated=False), dataset)
    xr.testing.assert_identical(_read(repo, both), dataset)


def test_stores_opened_on_relative_paths_reach_the_same_place_from_a_worker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pydata/xarray#1085, dask#2256 / #5210: a worker runs in another working directory.

    Stores made on relative paths, pickled (as dask does) and opened by a
    real process whose working directory is elsewhere, must reach the
    directory the caller meant. ``FilesystemStore`` and LMDB always resolved
    the path at construction; ``ObjectStore.local`` and OpenDAL's ``fs``
    service pickled the relative path, so the worker failed to open
    (obstore) or silently read and wrote an empty directory of its own
    (OpenDAL, where zarr then reads fill values).
    """
    opendal = pytest.importorskip("opendal", reason="the OpenDAL stores need opendal")

    from zarrstore import AsyncOpendalStore, OpendalStore
    from zarrstore.lmdb import LMDBStore

    (tmp_path / "client").mkdir()
    (tmp_path / "worker").mkdir()
    monkeypatch.chdir(tmp_path / "client")
    stores: dict[str, Any] = {
        "FilesystemStore": FilesystemStore("fs"),
        "LMDBStore": LMDBStore("lmdb"),
        "ObjectStore.local": ObjectStore.local("obstore"),
        "ObjectStore(LocalStore)": ObjectStore(LocalStore("backing", mkdir=True)),
        "OpendalStore.from_scheme": OpendalStore.from_scheme(
            "fs", root="opendal", atomic_write_dir="opendal-tmp"),
        "AsyncOpendalStore.from_scheme": AsyncOpendalStore.from_scheme("fs", root="async"),
        "OpendalStore(Operator)": OpendalStore(opendal.Operator("fs", root="operator")),
    }
    for store in stores.values():
        zarr.create_array(store, name="a", shape=(2,), dtype="i4")[:] = 7
    script = ("import pickle, sys, zarr\n"
              "for name, store in pickle.loads(sys.stdin.buffer.read()).items():\n"
              "    print(name, zarr.open_array(store, path='a', mode='r')[:].tolist())\n")
    output = _unpickled_in_worker(tmp_path / "worker", script, stores)
    assert output.splitlines() == [f"{name} [7, 7]" for name in stores]


def _unpickled_in_worker(worker: Path, script: str, payload: object) -> str:
    """Run ``script`` in a new process whose working directory is ``worker`` (empty),
    ``payload`` pickled on its stdin; its stdout. The directory must stay empty: a
    relative path resolved there would have made something in it."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", script], input=pickle.dumps(payload),
                          cwd=worker, capture_output=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert sorted(path.name for path in worker.iterdir()) == []
    return done.stdout.decode()


def test_a_repository_on_a_relative_local_store_opens_from_a_worker_elsewhere(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same reports for ``vs.object_storage`` over an obstore ``LocalStore`` given
    a relative directory: the pickled storage (a dask worker's) opens the repository."""
    (tmp_path / "client").mkdir()
    (tmp_path / "worker").mkdir()
    monkeypatch.chdir(tmp_path / "client")
    storage = vs.object_storage(LocalStore("repo", mkdir=True))
    repo = vs.Repository.create(storage)
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="a", shape=(2,), dtype="i4")[:] = 7
    session.commit("sevens")
    script = ("import pickle, sys, zarr, versionstore as vs\n"
              "repo = vs.Repository.open(pickle.loads(sys.stdin.buffer.read()))\n"
              "print(zarr.open_array(repo.readonly_session('main').store, path='a', "
              "mode='r')[:].tolist())\n")
    assert _unpickled_in_worker(tmp_path / "worker", script, storage).split() == ["[7,", "7]"]


# -- round 4: zarr-python listings, keys and event loops --------------------------------------


def _names_before_the_separator(store: Any) -> None:
    """Groups whose names sort just before or after ``/`` (``-`` and ``.``), and ``0_c``."""
    root = zarr.open_group(store, mode="w")
    for name in ["0", "foo-bar", "foo/baz", "foo.x"]:
        root.create_group(name)
    root.create_array("0_c", shape=(1,), dtype="i4")


def test_names_sorting_before_the_separator_hide_no_node(repo: vs.Repository) -> None:
    """icechunk#1824 / PR 1825: ``foo-bar`` hid ``foo/baz`` (``-`` and ``.`` sort before ``/``).

    Staged, committed, and committed with more staged on top: every node is
    found as on zarr's ``MemoryStore``, and ``list_prefix("0")`` is the
    directory ``0/`` (docs/protocol.md), never ``0_c/`` or ``0-/``.
    """
    oracle = zarr.storage.MemoryStore()
    _names_before_the_separator(oracle)

    def members(store: Any) -> list[str]:
        group = zarr.open_group(store, mode="r")
        return sorted(name for name, _ in group.members(max_depth=None))

    def check(store: Any) -> None:
        assert members(store) == members(oracle)
        for directory in ["", "foo", "foo/"]:
            assert _listed(store.list_dir(directory)) == _listed(oracle.list_dir(directory))
        assert _listed(store.list_prefix("0")) == ["0/zarr.json"]

    session = repo.writable_session("main")
    _names_before_the_separator(session.store)
    check(session.store)
    snapshot = session.commit("names")
    check(repo.readonly_session(snapshot_id=snapshot).store)
    for name in ["foo-bar2", "foo/zz", "0-"]:
        zarr.open_group(session.store).create_group(name)
        zarr.open_group(oracle).create_group(name)
    check(session.store)


#: Chunk key encodings other than the default ``c/0/0``: ``c.0.0``, ``0.0`` and ``0/0``.
CHUNK_KEY_ENCODINGS: dict[str, dict[str, str]] = {
    "dot": {"name": "default", "separator": "."},
    "v2dot": {"name": "v2", "separator": "."},
    "v2slash": {"name": "v2", "separator": "/"},
}


def test_every_chunk_key_encoding_and_an_array_named_c_rebase_by_chunk(
        repo: vs.Repository) -> None:
    """icechunk#2180 / #452: the ``.`` separator and the ``v2`` chunk key encoding were refused.

    Arrays in each encoding, and an array ``c`` in a group ``c``: two sessions
    write disjoint chunks of each, ``status`` names the chunks by coordinates,
    and the second commit rebases over the first.
    """
    session = repo.writable_session("main")
    zarr.open_group(session.store, path="c")
    for name, encoding in CHUNK_KEY_ENCODINGS.items():
        zarr.create_array(session.store, name=name, shape=(4, 4), chunks=(2, 2), dtype="i4",
                          chunk_key_encoding=encoding)[:] = 1  # type: ignore[arg-type]
    zarr.create_array(session.store, name="c/c", shape=(4,), chunks=(2,), dtype="i4")[:] = 1
    base = session.commit("four arrays")
    keys = _listed(session.store.list())
    assert {"dot/c.1.1", "v2dot/1.1", "v2slash/1/1", "c/c/c/1"} <= set(keys)
    top, bottom = repo.writable_session("main"), repo.writable_session("main")
    names = [*CHUNK_KEY_ENCODINGS, "c/c"]
    for name in names:
        zarr.open_array(top.store, path=name)[:2] = 2
        zarr.open_array(bottom.store, path=name)[2:] = 3
    rows = frozenset({(1, 0), (1, 1)})
    assert bottom.status().updated_chunks == {
        **{f"/{name}": rows for name in CHUNK_KEY_ENCODINGS}, "/c/c": frozenset({(1,)})}
    top.commit("top rows")
    snapshot = bottom.commit("bottom rows")
    reader = repo.readonly_session(snapshot_id=snapshot).store
    for name in names:
        column = zarr.open_array(reader, path=name, mode="r")[:].reshape(4, -1)[:, 0]
        assert list(column) == [2, 2, 3, 3], name
    changed = repo.diff(from_snapshot_id=base, to_snapshot_id=snapshot).updated_chunks
    assert changed["/v2slash"] == frozenset({(0, 0), (0, 1), (1, 0), (1, 1)})
    assert changed["/c/c"] == frozenset({(0,), (1,)})


def _chunk_directories(store: Any) -> dict[str, Any]:
    """What zarr users ask of an array's chunk directories: listings, sizes, counts."""
    answers: dict[str, Any] = {
        prefix: _listed(store.list_prefix(prefix))
        for prefix in ["var/c/", "var/c", "var/c/0", "var/c/1/", "v2n/0", "v2n/1/"]}
    answers["list_dir var/c"] = _listed(store.list_dir("var/c"))
    answers["list_dir var/c/1/"] = _listed(store.list_dir("var/c/1/"))
    answers["getsize_prefix var"] = asyncio.run(store.getsize_prefix("var"))
    answers["getsize_prefix var/c"] = asyncio.run(store.getsize_prefix("var/c"))
    nested = zarr.open_array(store, path="v2n", mode="r")
    answers["v2n"] = (nested.nbytes_stored(), nested.nchunks_initialized)
    return answers


def test_listing_and_sizing_an_arrays_chunk_directories(repo: vs.Repository) -> None:
    """dynamical-org/reformatters#402 / #404 and zarr-python#2174 / #253.

    A job counted a sharded array's shards with ``list_prefix("var/c/")``,
    which icechunk began to refuse; zarr 2's ``nbytes_stored`` missed v2 chunk
    keys nested with ``/``. Listings under the chunk directories, their sizes
    and zarr's counts match zarr's ``MemoryStore``, staged and committed.
    """

    def write(store: Any) -> None:
        zarr.create_array(store, name="var", shape=(4, 4), chunks=(1, 1), shards=(2, 2),
                          dtype="i4")[:] = 1
        nested = CHUNK_KEY_ENCODINGS["v2slash"]
        zarr.create_array(store, name="v2n", shape=(4, 4), chunks=(2, 2), dtype="i4",
                          zarr_format=2, chunk_key_encoding=nested)[:] = 2  # type: ignore[arg-type]

    oracle = zarr.storage.MemoryStore()
    write(oracle)
    expected = _chunk_directories(oracle)
    assert expected["var/c/1/"] == ["var/c/1/0", "var/c/1/1"]
    session = repo.writable_session("main")
    write(session.store)
    assert _chunk_directories(session.store) == expected
    snapshot = session.commit("sharded and nested")
    assert _chunk_directories(repo.readonly_session(snapshot_id=snapshot).store) == expected


def test_one_session_store_used_from_several_event_loops(repo: vs.Repository) -> None:
    """zarr-python#2878 / #2909 / #3487: a store used from a second ``asyncio.run`` failed.

    Those stores kept a client bound to the loop that first used them. The
    session store is used from ``asyncio.run`` twice, from zarr's own loop
    (the sync API), and from eight threads each running its own loop; the
    session commits through ``commit_async`` in yet another loop.
    """
    session = repo.writable_session("main")

    async def create() -> None:
        array = await zarr.api.asynchronous.create_array(
            session.store, name="a", shape=(64,), chunks=(1,), dtype="i4")
        await array.setitem(slice(None), np.arange(64))

    async def head() -> list[int]:
        array = await zarr.api.asynchronous.open_array(store=session.store, path="a")
        return list(await array.getitem(slice(0, 10)))

    asyncio.run(create())
    zarr.open_array(session.store, path="a")[:8] = -1
    assert asyncio.run(head()) == [-1] * 8 + [8, 9]
    failures: list[BaseException] = []

    def in_own_loop(block: int) -> None:
        async def fill() -> None:
            array = await zarr.api.asynchronous.open_array(store=session.store, path="a")
            await array.setitem(slice(8 * block, 8 * block + 8), np.full(8, block))

        try:
            asyncio.run(fill())
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            failures.append(error)

    threads = [threading.Thread(target=in_own_loop, args=(block,)) for block in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    snapshot = asyncio.run(session.commit_async("from every loop"))
    values = zarr.open_array(repo.readonly_session(snapshot_id=snapshot).store, path="a",
                             mode="r")[:]
    assert list(values) == [block for block in range(8) for _ in range(8)]


def test_open_modes_over_committed_and_staged_deleted_nodes(repo: vs.Repository) -> None:
    """zarr-python#2491 (``mode="r+"`` created a missing array) and ``w-`` over existing data.

    Over committed nodes zarr's modes raise as on its ``MemoryStore``; once
    the session deletes those nodes (staged tombstones), ``w-`` creates them
    anew, while another session still opens the committed array.
    """
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="a", shape=(2,), dtype="i4")[:] = 1
    zarr.open_group(session.store, path="g")
    session.commit("a and g")
    store = session.store
    with pytest.raises(FileNotFoundError):
        zarr.open_array(store, path="missing", mode="r+")
    with pytest.raises(zarr.errors.ContainsArrayError):
        zarr.create_array(store, name="a", shape=(2,), dtype="i4")
    with pytest.raises(FileExistsError):
        zarr.open_group(store, path="g", mode="w-")
    with pytest.raises(FileExistsError):
        xr.Dataset({"q": ("x", [1])}).to_zarr(store, mode="w-")
    asyncio.run(store.delete_dir("a"))
    asyncio.run(store.delete_dir("g"))
    zarr.create_array(store, name="a", shape=(3,), dtype="i4")[:] = 2
    zarr.open_group(store, path="g", mode="w-")
    assert list(zarr.open_array(repo.writable_session("main").store, path="a", mode="r+")[:]) == [
        1, 1]
    snapshot = session.commit("a and g anew")
    assert list(zarr.open_array(repo.readonly_session(snapshot_id=snapshot).store, path="a",
                                mode="r")[:]) == [2, 2, 2]


# -- round 4: xarray, and writers beside history edits ----------------------------------------


def test_an_append_missing_a_variable_is_caught_before_the_commit(repo: vs.Repository) -> None:
    """pydata/xarray#10766: appending a dataset that lacks one variable broke the store.

    xarray extends ``a`` but not ``b``, on a session as on zarr's own store,
    and the dataset no longer opens; in a session that damage is only staged:
    the check before committing fails, ``discard_changes`` restores the
    committed dataset, and a complete append then commits.
    """
    whole = xr.Dataset({"a": ("x", [1, 2]), "b": ("x", [10, 20])})
    session = repo.writable_session("main")
    whole.to_zarr(session.store, mode="w")
    session.commit("a and b")
    xr.Dataset({"a": ("x", [3, 4])}).to_zarr(session.store, append_dim="x")
    with pytest.raises(ValueError, match="conflicting sizes"):
        xr.open_zarr(session.store)
    session.discard_changes()
    xr.testing.assert_identical(xr.open_zarr(session.store).load(), whole)
    more = xr.Dataset({"a": ("x", [3, 4]), "b": ("x", [30, 40])})
    more.to_zarr(session.store, append_dim="x")
    snapshot = session.commit("both grew")
    xr.testing.assert_identical(_read(repo, snapshot), xr.concat([whole, more], "x"))


def test_the_same_new_group_created_by_two_sessions_rebases(repo: vs.Repository) -> None:
    """zarr-python#658: parallel jobs each open a not-yet-existing group with ``mode="a"``.

    Each job's session writes the group's metadata (v3 ``new``, v2 ``old``)
    and its own array in it: the same document from both sides is no
    conflict, so the second commit rebases and the groups hold both arrays.
    (Threads sharing one store still race inside zarr, which checks for the
    group before writing it, on its ``MemoryStore`` too: that is zarr#658.)
    """
    session = repo.writable_session("main")
    zarr.open_group(session.store, mode="a")
    session.commit("root")
    first, second = repo.writable_session("main"), repo.writable_session("main")
    for job, array in [(first, "x"), (second, "y")]:
        for path, zarr_format in [("new", 3), ("old", 2)]:
            group = zarr.open_group(job.store, path=path, mode="a",
                                    zarr_format=zarr_format)  # type: ignore[arg-type]
            group.create_array(array, shape=(2,), dtype="i4")[:] = 1
    first.commit("x")
    snapshot = second.commit("y")
    reader = repo.readonly_session(snapshot_id=snapshot).store
    for path, zarr_format in [("new", 3), ("old", 2)]:
        group = zarr.open_group(reader, path=path, mode="r",
                                zarr_format=zarr_format)  # type: ignore[arg-type]
        assert sorted(group.array_keys()) == ["x", "y"], path


def test_a_writer_open_while_its_branch_is_reset_amended_or_deleted(repo: vs.Repository) -> None:
    """icechunk PR 1259 (a ``reset_branch`` racing a writer) and icechunk#1532 (``amend``).

    A bad commit is reset away while a writer is open on the branch: the
    writer's commit lands on the reset target with its own change only, and
    does not bring the bad data back. A writer whose chunk the amended tip
    also changed conflicts; one on a branch deleted under it raises
    ``BranchNotFoundError``, keeps its changes, and commits once the branch
    exists again.
    """
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="a", shape=(4,), chunks=(1,), dtype="i4")[:] = 1
    good = session.commit("good")
    zarr.open_array(session.store, path="a")[:2] = 66
    zarr.create_array(session.store, name="bad", shape=(2,), dtype="i4")[:] = 66
    session.commit("bad")
    writer = repo.writable_session("main")
    zarr.open_array(writer.store, path="a")[3] = 7
    repo.reset_branch("main", good)
    after_reset = writer.commit("seven")
    assert repo.lookup_snapshot(after_reset).parent_id == good
    root = zarr.open_group(repo.readonly_session("main").store, mode="r")
    assert list(root.array_keys()) == ["a"]
    assert list(root["a"][:]) == [1, 1, 1, 7]  # type: ignore[index]

    amending, writer = repo.writable_session("main"), repo.writable_session("main")
    zarr.open_array(writer.store, path="a")[0] = 5
    zarr.open_array(amending.store, path="a")[0] = 3
    amending.amend("seven, and a three")
    with pytest.raises(vs.ConflictError, match="a/c/0"):
        writer.commit("five")
    assert writer.has_uncommitted_changes

    repo.create_branch("dev", snapshot_id=good)
    writer = repo.writable_session("dev")
    zarr.open_array(writer.store, path="a")[1] = 9
    repo.delete_branch("dev")
    with pytest.raises(vs.BranchNotFoundError):
        writer.commit("nine")
    repo.create_branch("dev", snapshot_id=after_reset)
    writer.commit("nine")
    assert list(zarr.open_array(repo.readonly_session("dev").store, path="a", mode="r")[:]) == [
        1, 9, 1, 7]


def test_expiring_the_commit_that_wrote_chunks_keeps_those_still_read(
        repo: vs.Repository) -> None:
    """icechunk#865 (is the data of an expired commit gone?) and #731 (a cut-off after the tip).

    The first commit writes half the chunks, the second the other half; a
    cut-off after both expires every snapshot but the tip and the root, and
    ``garbage_collect`` then deletes the expired snapshot but none of its
    chunks, which the tip still reads.
    """
    session = repo.writable_session("main")
    array = zarr.create_array(session.store, name="a", shape=(10,), chunks=(1,), dtype="i4")
    array[:5] = 1
    first = session.commit("first half")
    array[5:] = 2
    tip = session.commit("second half")
    cutoff = repo.lookup_snapshot(tip).written_at + timedelta(seconds=1)
    expired = repo.expire_snapshots(cutoff)
    assert first in expired and tip not in expired
    assert [info.message for info in repo.ancestry(branch="main")] == [
        "second half", "Repository initialized"]
    repo.garbage_collect()
    with pytest.raises(vs.SnapshotNotFoundError):
        repo.readonly_session(snapshot_id=first)
    assert list(zarr.open_array(repo.readonly_session("main").store, path="a", mode="r")[:]) == [
        1] * 5 + [2] * 5
    assert repo.verify().problems == ()


def test_a_merge_resolved_by_side_keeps_one_consolidated_view_until_reconsolidated(
        repo: vs.Repository) -> None:
    """icechunk#962's stale consolidated metadata, reached through a branch merge.

    Two branches each add a variable with xarray's default ``consolidated=True``.
    The merge stops on the root ``zarr.json``; resolved with ``"ours"``, the
    root document (and its consolidated view) is main's, so ``open_zarr``
    misses ``b`` until the result is consolidated again (docs/recipes.md).
    """
    session = repo.writable_session("main")
    xr.Dataset({"v": ("x", np.arange(4.0))}).to_zarr(session.store, mode="w")
    repo.create_branch("dev", snapshot_id=session.commit("v"))
    for branch, name in [("dev", "b"), ("main", "a")]:
        writer = repo.writable_session(branch)
        xr.Dataset({name: ("x", np.ones(4))}).to_zarr(writer.store, mode="a")
        writer.commit(name)
    with pytest.raises(vs.MergeConflictError, match="zarr.json"):
        repo.merge(from_branch="dev", into_branch="main")
    repo.merge(from_branch="dev", into_branch="main", on_conflict="ours")
    merged = repo.readonly_session("main").store
    assert sorted(xr.open_zarr(merged).data_vars) == ["a", "v"]
    assert sorted(xr.open_zarr(merged, consolidated=False).data_vars) == ["a", "b", "v"]
    session = repo.writable_session("main")
    zarr.consolidate_metadata(session.store)
    session.commit("consolidated again")
    assert sorted(xr.open_zarr(repo.readonly_session("main").store).data_vars) == ["a", "b", "v"]


def _members(store: Any, path: str, **kwargs: Any) -> list[str]:
    group = zarr.open_group(store, path=path, mode="r", **kwargs)
    return sorted(name for name, _ in group.members(max_depth=None))


def test_a_move_renames_the_nodes_in_consolidated_views(repo: vs.Repository) -> None:
    """icechunk#329 (``move``) beside zarr-python#2921 (consolidated views gone stale).

    A group's consolidated view copies its subtree's documents. A ``move``
    under such views (v3 root and group views, a v2 ``.zmetadata``) renames
    the entries, drops them from a view that lost the node and adds them to
    one that gained it: zarr opened the moved-away ``/g`` from the stale root
    view and read fill values, and could not open ``/h``. Every view then
    lists what the keys hold; moving back is no change.
    """
    session = repo.writable_session("main")
    store = session.store
    dataset = xr.Dataset({"v": ("x", np.arange(4.0))}, coords={"x": np.arange(4)})
    dataset.to_zarr(store, group="g", mode="w", consolidated=False)
    for path in ["a/x", "b/keep"]:
        zarr.create_array(store, name=path, shape=(2,), dtype="i4")[:] = 5
    zarr.consolidate_metadata(store, path="a")
    zarr.consolidate_metadata(store, path="b")
    zarr.consolidate_metadata(store)
    v2 = zarr.open_group(store, path="old", mode="w", zarr_format=2)
    v2.create_group("p").create_array("q", shape=(2,), dtype="i4")[:] = 6
    zarr.consolidate_metadata(store, path="old", zarr_format=2)
    snapshot = session.commit("consolidated views")

    session.move("/g", "/h")
    session.move("/a/x", "/b/x")
    session.move("/old/p", "/old/r")

    def check(reader: Any) -> None:
        for path, kwargs in [("", {}), ("a", {}), ("b", {}), ("old", {"zarr_format": 2})]:
            assert _members(reader, path, **kwargs) == _members(
                reader, path, use_consolidated=False, **kwargs), path
        xr.testing.assert_identical(xr.open_zarr(reader, group="h").load(), dataset)
        with pytest.raises(KeyError):
            xr.open_zarr(reader, group="g")
        assert _members(reader, "b") == ["keep", "x"]
        assert list(zarr.open_array(reader, path="old/r/q", mode="r", zarr_format=2)[:]) == [6, 6]

    check(store)
    check(repo.readonly_session(snapshot_id=session.commit("moved")).store)
    session.move("/h", "/g")
    session.move("/b/x", "/a/x")
    session.move("/old/r", "/old/p")
    session.commit("moved back")
    assert not repo.diff(from_snapshot_id=snapshot, to_branch="main").updated_keys


@pytest.mark.parametrize(("source", "target"), [
    ("/a/b/c", "/other/c"),              # out of a deep group, into a shallow one
    ("/a/b/c/d", "/other/deep/d"),       # deep to deep: the target's parents are not moved
    ("/other/deep", "/a/b/c/deep"),      # shallow into deep
    ("/a/b", "/other/deep/b"),           # a subtree with arrays at several depths
    ("/a/b/c", "/a/b/e"),                # renamed in place
])
def test_a_move_deep_under_consolidated_metadata_keeps_it_openable(
        repo: vs.Repository, source: str, target: str) -> None:
    """Moving a group deep under a consolidated root (adversarial find).

    zarr writes the root's view flat ("a/b/c/d/x"), each group's own view
    empty. A move added the moved nodes to the views of the groups above
    the destination as well, "deep/d/x" under "other", without "deep": zarr
    could not parse the root document (``GroupNotFoundError`` at ``''``).
    Views are now rewritten flat, as zarr writes them.
    """
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="w")
    b = root.create_group("a").create_group("b")
    c = b.create_group("c")
    arrays = {"a/b/c/d/x": np.arange(4), "a/b/c/y": np.arange(4) + 10, "a/b/z": np.arange(2)}
    c.create_group("d")
    root.create_group("other").create_group("deep")
    for path, data in arrays.items():
        zarr.create_array(session.store, name=path, shape=data.shape, chunks=(2,),
                          dtype="i8")[:] = data
    zarr.consolidate_metadata(session.store)
    session.commit("consolidated")
    session.move(source, target)
    moved = repo.readonly_session(snapshot_id=session.commit("moved")).store
    old, new = source.lstrip("/"), target.lstrip("/")
    for opened in (zarr.open_consolidated(moved, mode="r"),
                   zarr.open_group(moved, mode="r", use_consolidated=False)):
        members = {name for name, _ in opened.members(max_depth=None)}
        for path, data in arrays.items():
            now = new + path[len(old):] if path.startswith(old + "/") else path
            np.testing.assert_array_equal(opened[now][:], data)
            assert now in members
            if now != path:
                assert path not in members
                with pytest.raises(KeyError):
                    opened[path]
        assert not any(m == old or m.startswith(old + "/") for m in members)
    assert _members(moved, "") == _members(moved, "", use_consolidated=False)
    # The view is the one zarr would write afresh.
    fresh = repo.writable_session("main")
    zarr.consolidate_metadata(fresh.store)
    assert json.loads(moved.storage.get("zarr.json")) == json.loads(
        fresh.store.storage.get("zarr.json"))


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_move_into_a_group_the_consolidated_view_does_not_name_keeps_it_openable(
        repo: vs.Repository, zarr_format: int) -> None:
    """A move into a group made after the view was written (adversarial find).

    The view at ``g`` does not name ``y`` (created after consolidating, as
    users do); moving ``x`` to ``y/z`` renamed its entries to ``y/z/...`` in
    the view, without ``y``: ``zarr.open_consolidated`` raised
    ``GroupNotFoundError`` at ``g`` (v2 and v3). The moved nodes now leave a
    view that does not name the destination's parent group.
    """
    session = repo.writable_session("main")
    group = zarr.open_group(session.store, path="g", zarr_format=zarr_format)
    group.create_array("x/a", shape=(3,), dtype="i4")[:] = 7
    zarr.consolidate_metadata(session.store, path="g", zarr_format=zarr_format)
    group.create_group("y")  # after the view was written
    session.commit("stale view")
    session = repo.writable_session("main")
    session.move("/g/x", "/g/y/z")
    moved = repo.readonly_session(snapshot_id=session.commit("moved")).store
    opened = zarr.open_consolidated(moved, path="g", zarr_format=zarr_format, mode="r")
    assert not any(name.startswith("x") for name, _ in opened.members(max_depth=None))
    plain = zarr.open_group(moved, path="g", zarr_format=zarr_format, mode="r",
                            use_consolidated=False)
    np.testing.assert_array_equal(plain["y/z/a"][:], [7, 7, 7])


def test_a_purged_node_leaves_no_trace_in_consolidated_views(repo: vs.Repository) -> None:
    """icechunk#2193: deleting one subject's data on request, from the whole history.

    xarray consolidates by default, so the root and group documents copy each
    variable's attributes into their consolidated views. ``purge`` erased the
    variable's keys but kept those copies: every version still held the
    subject's name, and ``open_zarr`` listed the variable, reading NaN. The
    views of every rewritten version now drop it as well.
    """
    session = repo.writable_session("main")
    people = xr.Dataset({"p042": ("x", np.arange(4.0), {"name": "Jane Doe"}),
                         "p043": ("x", np.ones(4), {"name": "John Roe"})})
    people.to_zarr(session.store, group="people", mode="w")
    session.commit("two people")
    xr.Dataset({"p043": ("x", np.full(4, 2.0))}).to_zarr(
        session.store, group="people", region={"x": slice(0, 4)})
    session.commit("p043 again")
    repo.purge("/people/p042", message="consent withdrawn")
    for info in repo.ancestry(branch="main"):
        reader = repo.readonly_session(snapshot_id=info.id).store
        for key in reader.storage.list_prefix(""):
            assert b"Jane Doe" not in reader.storage.get(key), (info.message, key)
    latest = xr.open_zarr(repo.readonly_session("main").store, group="people").load()
    assert list(latest.data_vars) == ["p043"]
    assert latest["p043"].attrs == {"name": "John Roe"}
    assert repo.verify().problems == ()


# -- round 5: store boundaries, session bookkeeping, amend races -------------------------


def test_deleting_a_directory_or_a_key_outside_the_root_touches_nothing(
        repo: vs.Repository, tmp_path: Path) -> None:
    """zarr-python#2451, #2218 and dandi/dandi-archive#2881 (a ``..`` key escaped the root).

    zarr's ``LocalStore.delete("a")`` removed the whole directory ``a/``, its
    empty directories kept ``is_empty`` and ``list_dir`` answering for deleted
    arrays, and a key ``../x`` was written beside the store's root. Here a
    key that names a directory deletes nothing, a directory emptied by
    deletes is gone from every listing, and ``..``, ``.`` and absolute keys
    are refused (``InvalidKeyError``, a ``ValueError``) before anything is
    written, on the filesystem store and on a session's store alike.
    """
    outer = tmp_path / "outer"
    session = repo.writable_session("main")

    async def check(store: Any) -> None:
        for key in ["a/b", "a/c/d", "e/f/g"]:
            await store.set(key, cpu.Buffer.from_bytes(b"1"))
        await store.delete("a")
        await store.delete("a/c")
        assert sorted([key async for key in store.list()]) == ["a/b", "a/c/d", "e/f/g"]
        await store.delete("e/f/g")
        assert await store.is_empty("e")
        assert sorted([key async for key in store.list_dir("")]) == ["a"]
        for key in ["../x", "a/../../x", "./x", "/x"]:
            with pytest.raises(ValueError, match="invalid store key"):
                await store.set(key, cpu.Buffer.from_bytes(b"2"))
            with pytest.raises(ValueError, match="invalid store key"):
                await store.get(key, default_buffer_prototype())

    asyncio.run(check(FilesystemStore(outer / "fs")))
    assert [path.name for path in outer.iterdir()] == ["fs"]
    asyncio.run(check(session.store))
    snapshot = session.commit("what is left")
    assert _listed(repo.readonly_session(snapshot_id=snapshot).store.list()) == ["a/b", "a/c/d"]


def test_creating_then_deleting_a_group_twice_leaves_nothing_to_commit(
        repo: vs.Repository) -> None:
    """icechunk#486: a second delete of a group created and deleted in the session.

    icechunk recorded the second delete and so allowed an empty commit. Here
    the session has no changes, ``status()`` is empty, and ``commit`` raises
    ``NothingToCommitError``; deleting a committed group twice is one change.
    """
    session = repo.writable_session("main")
    zarr.open_group(session.store, mode="w").create_group("kept")
    session.commit("root")
    group = zarr.open_group(session.store)
    group.create_group("scratch")
    del group["scratch"]
    del group["scratch"]
    assert not session.has_uncommitted_changes
    assert session.status() == vs.Diff()
    with pytest.raises(vs.NothingToCommitError):
        session.commit("nothing")
    del group["kept"]
    del group["kept"]
    assert session.status().deleted_groups == frozenset({"/kept"})
    snapshot = session.commit("kept deleted")
    assert _members(repo.readonly_session(snapshot_id=snapshot).store, "") == []


def test_an_unknown_snapshot_id_is_refused_at_once(repo: vs.Repository) -> None:
    """icechunk#235 (a checkout of a missing snapshot id failed only later) and #882.

    icechunk#882: branches and tags could be created at such ids.
    ``readonly_session``, ``create_branch``, ``create_tag`` and
    ``reset_branch`` raise ``SnapshotNotFoundError`` naming the id, and no
    ref is created or moved.
    """
    session = repo.writable_session("main")
    zarr.open_group(session.store, mode="w")
    tip = session.commit("root")
    bogus = "FOOOBARSPAM123456789"
    calls: list[Callable[[], object]] = [
        lambda: repo.readonly_session(snapshot_id=bogus),
        lambda: repo.create_branch("dev", bogus),
        lambda: repo.create_tag("v1", bogus),
        lambda: repo.reset_branch("main", bogus),
    ]
    for call in calls:
        with pytest.raises(vs.SnapshotNotFoundError, match=bogus):
            call()
    assert repo.list_branches() == {"main"}
    assert repo.list_tags() == set()
    assert repo.lookup_branch("main") == tip


def test_create_array_with_data_and_shards_writes_every_shard(repo: vs.Repository) -> None:
    """zarr-python#3479: ``create_array(data=..., shards=...)`` wrote only part of the data.

    Every shard is written, staged and committed: the array reads back the
    data exactly, with no fill value left, and has the shards zarr's
    ``MemoryStore`` gets for the same call.
    """
    data = np.random.default_rng(7).random((40, 40))

    def create(store: Any) -> Any:
        return zarr.create_array(store, name="s", data=data, chunks=(10, 10), shards=(40, 10),
                                 fill_value=np.nan)

    oracle = zarr.storage.MemoryStore()
    create(oracle)
    session = repo.writable_session("main")
    np.testing.assert_array_equal(create(session.store)[:], data)
    assert _listed(session.store.list_prefix("s/c/")) == _listed(oracle.list_prefix("s/c/"))
    assert _listed(session.store.list_prefix("s/c/")) == [f"s/c/0/{i}" for i in range(4)]
    snapshot = session.commit("sharded")
    stored = zarr.open_array(repo.readonly_session(snapshot_id=snapshot).store, path="s", mode="r")
    np.testing.assert_array_equal(stored[:], data)


def test_workers_amending_one_temporary_branch_keep_every_chunk(repo: vs.Repository) -> None:
    """dynamical-org/reformatters#633: workers that each ``amend`` a shared temporary branch.

    With icechunk the second worker's ``amend`` conflicted, and its
    ``rebase`` failed on the snapshot the first amend had replaced. Here
    each amend from a session opened before the others' amends keeps their
    chunks: the branch ends one commit past its base holding every worker's
    rows, and a later ``commit`` from a stale session rebases by itself.
    """
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="a", shape=(4,), chunks=(1,), dtype="i4", fill_value=-1)
    base = session.commit("setup")
    repo.create_branch("tmp", base)
    workers = [repo.writable_session("tmp") for _ in range(4)]
    for row, worker in enumerate(workers):
        zarr.open_array(worker.store, path="a")[row] = row * 10
    for row, worker in enumerate(workers[:3]):
        worker.amend(f"rows up to {row}")
    workers[3].commit("last row")
    tip = repo.readonly_session("tmp")
    assert zarr.open_array(tip.store, path="a", mode="r")[:].tolist() == [0, 10, 20, 30]
    assert [info.message for info in repo.ancestry(branch="tmp")] == [
        "last row", "rows up to 2", "Repository initialized"]
    assert repo.verify().problems == ()


def test_a_refused_append_leaves_the_session_unchanged(repo: vs.Repository) -> None:
    """pydata/xarray#9053 / #6329: ``open_zarr(mask_and_scale=False)`` then ``mode="a"``.

    xarray refuses the write because ``_FillValue`` is now an attribute; it
    does so with the same ``ValueError`` as on zarr's ``MemoryStore``, before
    staging anything, and the documented workaround (drop the attribute)
    then appends.
    """
    session = repo.writable_session("main")
    xr.Dataset({"A": ("t", [1.0, np.nan])}).to_zarr(session.store, mode="w", consolidated=False)
    session.commit("A")
    raw = xr.open_zarr(session.store, mask_and_scale=False, consolidated=False)
    with pytest.raises(ValueError, match="_FillValue"):
        raw.to_zarr(session.store, mode="a", consolidated=False)
    assert not session.has_uncommitted_changes
    del raw["A"].attrs["_FillValue"]
    raw.to_zarr(session.store, append_dim="t", consolidated=False)
    snapshot = session.commit("appended")
    back = xr.open_zarr(repo.readonly_session(snapshot_id=snapshot).store, consolidated=False)
    np.testing.assert_array_equal(back["A"].values, [1.0, np.nan, 1.0, np.nan])


def test_nan_and_infinite_attributes_survive_commit_move_merge_and_consolidation(
        repo: vs.Repository) -> None:
    """zarr-python#412 / #3279: NaN and infinities in attributes (JSON's ``NaN`` tokens).

    zarr writes them as bare ``NaN`` / ``Infinity``, which strict JSON parsers
    refuse. Through a commit, a ``move``, consolidation and a merge in which
    both branches set the same NaN attribute (NaN is not equal to itself, so
    a comparison of parsed values would see a conflict), the values read back
    as written and a rewrite of an unchanged NaN attribute is no change.
    """
    session = repo.writable_session("main")
    group = zarr.open_group(session.store, mode="w")
    group.attrs.update({"nan": float("nan"), "inf": float("inf")})
    group.create_group("sub").create_array("a", shape=(2,), dtype="f4").attrs["low"] = -np.inf
    base = session.commit("attributes")
    repo.create_branch("dev", base)
    for branch in ["main", "dev"]:
        writer = repo.writable_session(branch)
        zarr.open_array(writer.store, path="sub/a").attrs["missing"] = float("nan")
        writer.commit(f"missing on {branch}")
    repo.merge(from_branch="dev", into_branch="main")
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="sub/a").attrs["missing"] = float("nan")
    assert not session.has_uncommitted_changes
    session.move("/sub", "/moved")
    zarr.consolidate_metadata(session.store)
    snapshot = session.commit("moved and consolidated")
    reader = repo.readonly_session(snapshot_id=snapshot).store
    root = zarr.open_consolidated(reader, mode="r")
    assert np.isnan(root.attrs["nan"]) and root.attrs["inf"] == float("inf")
    attrs = dict(zarr.open_array(reader, path="moved/a", mode="r").attrs)
    assert attrs["low"] == -np.inf and np.isnan(attrs["missing"])
    assert repo.verify().problems == ()


def test_virtual_prefixes_end_at_a_separator_and_unservable_locations_are_refused_early(
        repo: vs.Repository, tmp_path: Path) -> None:
    """icechunk#1125 / PR 1137 (``s3://foo`` also served ``s3://foo-dev/``) and PR 2219.

    A prefix given without its final ``/`` is taken to end there: it serves
    ``.../src/f.bin`` (which otherwise became the key ``/f.bin``, unreadable)
    and not ``.../src-other/f.bin``, which is refused when set. A location
    whose rest its store cannot name as a key (``//``, ``.``, ``..``, a
    directory) is refused with ``ValueError`` when set, staging nothing,
    instead of failing at every read after the commit.
    """
    for name in ["src", "src-other"]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "f.bin").write_bytes(bytes(range(100)))
    prefix = (tmp_path / "src").as_uri()
    repo = vs.Repository.open(repo.storage, virtual_chunk_stores={
        prefix: FilesystemStore(tmp_path / "src")})
    assert repo.virtual_chunks.prefixes == [prefix + "/"]
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="v", shape=(4,), chunks=(1,), dtype="u1",
                      compressors=None)
    session.commit("array")
    store = session.store
    with pytest.raises(vs.NoVirtualChunkStoreError, match="src-other"):
        store.set_virtual_ref("v/c/0", (tmp_path / "src-other").as_uri() + "/f.bin", 0, 1)
    for bad in ["//f.bin", "/./f.bin", "/../src-other/f.bin", "/", "/sub/"]:
        with pytest.raises(ValueError, match="cannot be a key of its store"):
            store.set_virtual_ref("v/c/0", prefix + bad, 0, 1)
    with pytest.raises(ValueError, match="cannot be a key of its store"):
        store.set_virtual_refs("v", [
            vs.VirtualChunkSpec(index=(0,), location=prefix + "/f.bin", offset=0, length=1),
            vs.VirtualChunkSpec(index=(1,), location=prefix + "//f.bin", offset=1, length=1)])
    assert not session.has_uncommitted_changes
    store.set_virtual_refs("v", [
        vs.VirtualChunkSpec(index=(i,), location=prefix + "/f.bin", offset=10 * i, length=1)
        for i in range(4)])
    snapshot = session.commit("virtual")
    stored = zarr.open_array(repo.readonly_session(snapshot_id=snapshot).store, path="v", mode="r")
    assert stored[:].tolist() == [0, 10, 20, 30]


def test_sessions_writing_inner_chunks_of_one_shard_conflict_on_the_shard(
        repo: vs.Repository) -> None:
    """zarr-python#3514 / #3682 (partial shard writes lost) between two sessions.

    Each session rewrites the whole shard, so the second commit raises
    ``ConflictError`` naming the shard's key instead of losing the first
    session's inner chunk; ``keep="ours"`` keeps our shard whole (documented),
    and rewriting after ``discard_changes`` and ``rebase`` keeps both writes.
    """
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="a", shape=(8,), chunks=(2,), shards=(4,), dtype="i4",
                      fill_value=0)
    session.commit("base")
    first, second = repo.writable_session("main"), repo.writable_session("main")
    zarr.open_array(first.store, path="a")[0:2] = 1
    zarr.open_array(second.store, path="a")[2:4] = 2
    first.commit("first inner chunk")
    with pytest.raises(vs.ConflictError) as caught:
        second.commit("second inner chunk")
    assert caught.value.keys == frozenset({"a/c/0"})
    second.discard_changes()
    second.rebase()
    zarr.open_array(second.store, path="a")[2:4] = 2
    second.commit("second inner chunk, rewritten on the new tip")
    tip = zarr.open_array(repo.readonly_session("main").store, path="a", mode="r")
    assert tip[:].tolist() == [1, 1, 2, 2, 0, 0, 0, 0]
    third, fourth = repo.writable_session("main"), repo.writable_session("main")
    zarr.open_array(third.store, path="a")[0:2] = 3
    zarr.open_array(fourth.store, path="a")[2:4] = 4
    third.commit("third")
    with pytest.raises(vs.ConflictError):
        fourth.commit("fourth")
    fourth.rebase(keep="ours")
    fourth.commit("fourth, ours")
    tip = zarr.open_array(repo.readonly_session("main").store, path="a", mode="r")
    assert tip[:].tolist() == [1, 1, 4, 4, 0, 0, 0, 0]


def test_a_writable_session_on_a_tag_says_it_is_a_tag(repo: vs.Repository) -> None:
    """treeverse/lakeFS#9903 ("branch not found" on selecting a tag), for sessions.

    ``writable_session("v1")`` where ``v1`` is a tag raises
    ``BranchNotFoundError`` saying that it is a tag and how to write from it,
    as ``readonly_session("v1")`` already says ``tag="v1"``; following the
    hint gives a branch at the tag's snapshot.
    """
    session = repo.writable_session("main")
    zarr.open_group(session.store, mode="w")
    tagged = session.commit("root")
    repo.create_tag("v1", tagged)
    with pytest.raises(vs.BranchNotFoundError, match=r"'v1' is a tag.*create_branch"):
        repo.writable_session("v1")
    with pytest.raises(vs.BranchNotFoundError, match=r"did you mean tag='v1'"):
        repo.readonly_session("v1")
    with pytest.raises(vs.BranchNotFoundError) as plain:
        repo.writable_session("nope")
    assert "tag" not in str(plain.value)
    repo.create_branch("from-v1", repo.lookup_tag("v1"))
    assert repo.writable_session("from-v1").snapshot_id == tagged


def test_virtual_chunks_over_a_server_that_ignores_range_requests(
        repo: vs.Repository, tmp_path: Path) -> None:
    """fsspec/filesystem_spec#1140 and arrow-rs#4841: a ``200`` answer to a ``Range`` request.

    Python's own ``http.server`` ignores ``Range`` and sends the whole file.
    fsspec returned the file's first bytes for a read at an offset; here
    ``HTTPStore`` serves exactly the requested range, so virtual chunks at
    offsets into a file on such a server read back right, staged and
    committed.
    """
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "obs.bin").write_bytes(b"HEADER" + bytes(range(40)))
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
        Quiet, directory=str(tmp_path / "www")))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        store = HTTPStore(url)
        ranges = [RangeByteRequest(6, 10), OffsetByteRequest(42), SuffixByteRequest(2)]
        got = [asyncio.run(store.get("obs.bin", default_buffer_prototype(), r)) for r in ranges]
        assert [value.to_bytes() for value in got if value is not None] == [
            bytes(range(4)), bytes(range(36, 40)), bytes([38, 39])]
        repo = vs.Repository.open(repo.storage, virtual_chunk_stores={url + "/": store})
        session = repo.writable_session("main")
        zarr.create_array(session.store, name="v", shape=(4,), chunks=(1,), dtype="u1",
                          compressors=None)
        session.store.set_virtual_refs("v", [
            vs.VirtualChunkSpec(index=(i,), location=f"{url}/obs.bin", offset=6 + 10 * i,
                                length=1) for i in range(4)])
        assert zarr.open_array(session.store, path="v")[:].tolist() == [0, 10, 20, 30]
        snapshot = session.commit("virtual over plain http")
        stored = zarr.open_array(repo.readonly_session(snapshot_id=snapshot).store, path="v",
                                 mode="r")
        assert stored[:].tolist() == [0, 10, 20, 30]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_expiring_with_ref_deletion_keeps_refs_on_snapshots_that_stay(
        repo: vs.Repository) -> None:
    """icechunk#1534 and #1520: which tags and branches ``delete_expired_*`` deletes.

    With a cut-off after every commit, icechunk 2 expires only the middle
    snapshot and keeps the tags on ``main``'s tip and on the first snapshot
    (which never expire); icechunk 1 deleted those tags too, and that was the
    bug. A branch whose tip is ``main``'s tip stays as well; a tag or branch
    on the expired snapshot goes, and the expired snapshot with it.
    """
    first = repo.lookup_branch("main")
    session = repo.writable_session("main")
    zarr.open_group(session.store, mode="w").attrs["x"] = 1
    middle = session.commit("middle")
    zarr.open_group(session.store).attrs["x"] = 2
    head = session.commit("head")
    for name, snapshot in [("tag-first", first), ("tag-middle", middle), ("tag-head", head)]:
        repo.create_tag(name, snapshot)
    repo.create_branch("old", middle)
    repo.create_branch("same-as-main", head)
    cut_off = repo.lookup_snapshot(head).written_at + timedelta(microseconds=1)
    expired = repo.expire_snapshots(cut_off, delete_expired_branches=True,
                                    delete_expired_tags=True)
    assert expired == {middle}
    assert repo.list_tags() == {"tag-first", "tag-head"}
    assert repo.list_branches() == {"main", "same-as-main"}
    assert [info.message for info in repo.ancestry(branch="main")] == [
        "head", "Repository initialized"]
    assert repo.lookup_tag("tag-first") == first

"""Virtual chunk references: chunks that are byte ranges of files outside the repository.

Sources are real: raw binary files on disk with known offsets, the same files
behind the test HTTP server, objects in moto's S3 server, and an HDF5 file
written by h5py and described by kerchunk. Reads go through zarr and xarray
and are compared byte for byte with the source.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr
from click.testing import CliRunner
from http_support import http_server_fixture, served_dir_fixture
from object_support import BUCKET, S3Server, aws_env_fixture, s3_fixture

import versionstore as vs
from versionstore.cli import cli
from versionstore.codec import (
    KIND_CHUNK,
    KIND_STAGED,
    _frame,
    decode_chunk,
    decode_node,
    decode_staged,
    encode_node,
    encode_staged,
    frame_kind,
)
from versionstore.errors import UnsupportedFormatError
from versionstore.records import ChunkRef, Leaf, VirtualRef
from zarrstore import (
    FilesystemStore,
    HTTPStore,
    MemoryStore,
    ObjectStore,
    PerformanceMetrics,
    RangeRequest,
    SuffixRequest,
)

__all__ = ["aws_env_fixture", "http_server_fixture", "s3_fixture", "served_dir_fixture"]

HEADER = b"HEADER!!"  # the data starts 8 bytes into each source file
VALUES = np.arange(100, dtype="<i4")
CHUNK = 25  # elements per chunk: 100 bytes


def write_source(path: Path, values: np.ndarray = VALUES) -> Path:
    """A raw binary file: an 8-byte header, then ``values`` as little-endian int32."""
    path.write_bytes(HEADER + values.astype("<i4").tobytes())
    return path


def specs(url: str, checksum: str | datetime | None = None) -> list[vs.VirtualChunkSpec]:
    return [
        vs.VirtualChunkSpec(index=(i,), location=url, offset=len(HEADER) + i * CHUNK * 4,
                            length=CHUNK * 4, checksum=checksum)
        for i in range(len(VALUES) // CHUNK)
    ]


def make_array(session: vs.Session, name: str = "x") -> zarr.Array:
    return zarr.create_array(session.store, name=name, shape=(100,), chunks=(CHUNK,),
                             dtype="<i4", compressors=None, fill_value=-1,
                             dimension_names=["t"], overwrite=True)


def etag_of(store: FilesystemStore, key: str) -> str:
    info = store.storage.stat(key)
    assert info is not None and info.etag is not None
    return info.etag


@pytest.fixture
def sources(tmp_path: Path) -> tuple[Path, FilesystemStore, str]:
    """A directory of source files, its store, and its ``file://`` URL prefix."""
    root = tmp_path / "sources"
    root.mkdir()
    return root, FilesystemStore(root), root.as_uri() + "/"


@pytest.fixture
def repo(sources: tuple[Path, FilesystemStore, str]) -> vs.Repository:
    _, store, prefix = sources
    return vs.Repository.create(vs.in_memory_storage(), virtual_chunk_stores={prefix: store})


def commit_virtual(repo: vs.Repository, url: str, checksum: str | datetime | None = None,
                   name: str = "x") -> str:
    session = repo.writable_session()
    make_array(session, name)
    session.store.set_virtual_refs(name, specs(url, checksum))
    return session.commit(f"{name} from {url}")


# -- reading ---------------------------------------------------------------------------


def test_zarr_reads_virtual_chunks_byte_exact(repo: vs.Repository, sources: Any) -> None:
    root, store, prefix = sources
    source = write_source(root / "a.bin")
    commit_virtual(repo, prefix + "a.bin", etag_of(store, "a.bin"))
    array = zarr.open_array(repo.readonly_session().store, path="x", mode="r")
    np.testing.assert_array_equal(array[:], VALUES)
    np.testing.assert_array_equal(array[30:60], VALUES[30:60])  # partial chunks
    raw = repo.readonly_session().store.storage.get("x/c/1")
    assert raw == source.read_bytes()[len(HEADER) + 100 : len(HEADER) + 200]


def test_xarray_reads_virtual_chunks(repo: vs.Repository, sources: Any) -> None:
    root, store, prefix = sources
    write_source(root / "a.bin")
    session = repo.writable_session()
    make_array(session)
    session.store.set_virtual_refs("x", specs(prefix + "a.bin", etag_of(store, "a.bin")))
    session.commit("dataset")
    ds = xr.open_zarr(repo.readonly_session().store, consolidated=False)
    np.testing.assert_array_equal(ds["x"].values, VALUES)


def test_set_virtual_ref_one_key_and_size(repo: vs.Repository, sources: Any) -> None:
    root, _, prefix = sources
    write_source(root / "a.bin")
    session = repo.writable_session()
    make_array(session)
    session.store.set_virtual_ref("x/c/2", prefix + "a.bin", len(HEADER) + 200, 100)
    array = zarr.open_array(session.store, path="x", mode="r")
    np.testing.assert_array_equal(array[50:75], VALUES[50:75])
    assert array[0] == -1  # the other chunks are unwritten: fill value
    assert session.store.storage.size("x/c/2") == 100


def test_a_range_of_a_virtual_chunk_reads_only_that_range(sources: Any) -> None:
    root, _, prefix = sources
    source = write_source(root / "a.bin")
    metered = PerformanceMetrics(FilesystemStore(root))
    repo = vs.Repository.create(vs.in_memory_storage(), virtual_chunk_stores={prefix: metered})
    commit_virtual(repo, prefix + "a.bin")
    storage = repo.readonly_session().store.storage
    metered.reset()
    assert storage.get("x/c/1", RangeRequest(10, 14)) == source.read_bytes()[118:122]
    assert storage.get_many([("x/c/0", SuffixRequest(4)), ("x/zarr.json", None)])[0] == (
        source.read_bytes()[104:108])
    assert metered.bytes_read == 8  # never the whole 100-byte chunks


def test_urls_with_escapes_resolve_to_the_file(repo: vs.Repository, sources: Any) -> None:
    root, _, prefix = sources
    write_source(root / "my data.bin")
    commit_virtual(repo, prefix + "my%20data.bin")
    np.testing.assert_array_equal(zarr.open_array(repo.readonly_session().store, path="x")[:],
                                  VALUES)


def test_time_travel_across_snapshots_on_different_sources(repo: vs.Repository,
                                                           sources: Any) -> None:
    root, store, prefix = sources
    write_source(root / "v1.bin", VALUES)
    write_source(root / "v2.bin", VALUES * 10)
    first = commit_virtual(repo, prefix + "v1.bin", etag_of(store, "v1.bin"))
    second = commit_virtual(repo, prefix + "v2.bin", etag_of(store, "v2.bin"))
    old = zarr.open_array(repo.readonly_session(snapshot_id=first).store, path="x")
    new = zarr.open_array(repo.readonly_session(snapshot_id=second).store, path="x")
    np.testing.assert_array_equal(old[:], VALUES)
    np.testing.assert_array_equal(new[:], VALUES * 10)
    diff = repo.diff(from_snapshot_id=first, to_snapshot_id=second)
    assert diff.updated_chunks == {"/x": frozenset({(0,), (1,), (2,), (3,)})}
    assert diff.virtual_keys == frozenset({"x/c/0", "x/c/1", "x/c/2", "x/c/3"})
    assert "virtual_keys: 4 key(s)" in str(diff)


def test_status_and_du_report_virtual_chunks(repo: vs.Repository, sources: Any) -> None:
    root, _, prefix = sources
    write_source(root / "a.bin")
    session = repo.writable_session()
    make_array(session)
    session.store.set_virtual_refs("x", specs(prefix + "a.bin"))
    status = session.status()
    assert status.new_arrays == frozenset({"/x"})
    assert len(status.virtual_keys) == 4
    session.commit("virtual")
    usage = repo.du()
    assert (usage.virtual_chunks, usage.virtual_bytes) == (4, 400)
    row = usage.arrays["/x"]
    assert (row.virtual_chunks, row.virtual_bytes, row.chunks) == (4, 400, 4)
    # Only the metadata is held (its frame has a 13-byte header), never the 400 bytes.
    assert row.logical_bytes - row.stored_bytes >= 400 - 13


def test_virtual_and_real_chunks_mix_and_overwrite(repo: vs.Repository, sources: Any) -> None:
    root, _, prefix = sources
    write_source(root / "a.bin")
    commit_virtual(repo, prefix + "a.bin")
    session = repo.writable_session()
    array = zarr.open_array(session.store, path="x", mode="a")
    array[0:25] = np.full(25, 7, dtype="<i4")  # a real chunk replaces a virtual one
    session.commit("patched")
    expected = VALUES.copy()
    expected[:25] = 7
    np.testing.assert_array_equal(zarr.open_array(repo.readonly_session().store, path="x")[:],
                                  expected)
    assert repo.du().virtual_chunks == 3


def test_cli_du_and_diff_show_virtual_chunks(tmp_path: Path, sources: Any) -> None:
    root, store, prefix = sources
    write_source(root / "a.bin")
    with vs.Repository.create(tmp_path / "repo", virtual_chunk_stores={prefix: store}) as repo:
        first = repo.lookup_branch("main")
        second = commit_virtual(repo, prefix + "a.bin")
    runner = CliRunner()
    usage = json.loads(runner.invoke(cli, ["du", str(tmp_path / "repo"), "--json"],
                                     catch_exceptions=False).output)
    assert (usage["virtual_chunks"], usage["virtual_bytes"]) == (4, 400)
    assert usage["arrays"]["/x"]["virtual_chunks"] == 4
    table = runner.invoke(cli, ["du", str(tmp_path / "repo")], catch_exceptions=False).output
    assert "virtual: 4 chunk(s)" in table
    diff = json.loads(runner.invoke(cli, ["diff", str(tmp_path / "repo"), first, second,
                                          "--json"], catch_exceptions=False).output)
    assert diff["virtual_keys"] == ["x/c/0", "x/c/1", "x/c/2", "x/c/3"]


def test_pickled_session_keeps_its_virtual_stores(repo: vs.Repository, sources: Any) -> None:
    root, _, prefix = sources
    write_source(root / "a.bin")
    commit_virtual(repo, prefix + "a.bin")
    copy = pickle.loads(pickle.dumps(repo.readonly_session()))
    assert copy.repository.virtual_chunks == repo.virtual_chunks
    np.testing.assert_array_equal(zarr.open_array(copy.store, path="x")[:], VALUES)


def test_lmdb_repository_reopened_with_stores(tmp_path: Path, sources: Any) -> None:
    root, store, prefix = sources
    write_source(root / "a.bin")
    with vs.Repository.create(tmp_path / "repo", virtual_chunk_stores={prefix: store}) as repo:
        commit_virtual(repo, prefix + "a.bin", etag_of(store, "a.bin"))
    with vs.Repository.open(tmp_path / "repo") as bare:
        with pytest.raises(vs.NoVirtualChunkStoreError, match="virtual_chunk_stores"):
            zarr.open_array(bare.readonly_session().store, path="x")[:]
    with vs.Repository.open(tmp_path / "repo", virtual_chunk_stores={prefix: store}) as repo:
        np.testing.assert_array_equal(
            zarr.open_array(repo.readonly_session().store, path="x")[:], VALUES)


def test_longest_prefix_wins(tmp_path: Path) -> None:
    outer, inner = tmp_path / "outer", tmp_path / "outer" / "inner"
    inner.mkdir(parents=True)
    write_source(inner / "a.bin")
    stores = vs.VirtualChunkStores({outer.as_uri() + "/": MemoryStore(),
                                    inner.as_uri() + "/": FilesystemStore(inner)})
    storage, key = stores.resolve((inner / "a.bin").as_uri())
    assert key == "a.bin" and storage.get(key) == (inner / "a.bin").read_bytes()


# -- failures: clear, typed, never stale bytes ---------------------------------------------


def rewrite_same_length(path: Path, values: np.ndarray) -> None:
    """Replace the file's content with other bytes of the same length (a new file renamed in)."""
    temp = path.with_suffix(".tmp")
    write_source(temp, values)
    os.replace(temp, path)


def test_changed_source_is_refused(repo: vs.Repository, sources: Any) -> None:
    root, store, prefix = sources
    source = write_source(root / "a.bin")
    commit_virtual(repo, prefix + "a.bin", etag_of(store, "a.bin"))
    rewrite_same_length(source, VALUES[::-1])
    array = zarr.open_array(repo.readonly_session().store, path="x")
    with pytest.raises(vs.VirtualSourceChangedError) as caught:
        array[:]
    assert caught.value.location == prefix + "a.bin"
    assert "changed since it was referenced" in str(caught.value)
    # Opting out serves what the file holds now.
    unchecked = vs.Repository(repo.storage, repo.backend,
                              vs.VirtualChunkStores({prefix: store}, check_checksums=False))
    np.testing.assert_array_equal(
        zarr.open_array(unchecked.readonly_session().store, path="x")[:], VALUES[::-1])


def test_last_modified_checksum(repo: vs.Repository, sources: Any) -> None:
    root, store, prefix = sources
    source = write_source(root / "a.bin")
    info = store.storage.stat("a.bin")
    assert info is not None and info.last_modified is not None
    commit_virtual(repo, prefix + "a.bin", info.last_modified)
    np.testing.assert_array_equal(zarr.open_array(repo.readonly_session().store, path="x")[:],
                                  VALUES)
    later = source.stat().st_mtime_ns + 10**9
    source.write_bytes(HEADER + VALUES[::-1].tobytes())
    os.utime(source, ns=(later, later))
    with pytest.raises(vs.VirtualSourceChangedError):
        zarr.open_array(repo.readonly_session().store, path="x")[:]


def test_missing_and_short_sources(repo: vs.Repository, sources: Any) -> None:
    root, store, prefix = sources
    source = write_source(root / "a.bin")
    commit_virtual(repo, prefix + "a.bin")
    source.write_bytes(source.read_bytes()[:250])  # cut inside chunk 2
    array = zarr.open_array(repo.readonly_session().store, path="x")
    np.testing.assert_array_equal(array[:50], VALUES[:50])
    with pytest.raises(vs.VirtualSourceMissingError, match="short of the referenced range"):
        array[50:]
    source.unlink()
    with pytest.raises(vs.VirtualSourceMissingError, match="does not exist"):
        array[:]


def test_location_without_store(repo: vs.Repository, tmp_path: Path) -> None:
    session = repo.writable_session()
    make_array(session)
    elsewhere = "s3://other-bucket/a.nc"
    with pytest.raises(vs.NoVirtualChunkStoreError, match="other-bucket"):
        session.store.set_virtual_ref("x/c/0", elsewhere, 0, 100)
    session.store.set_virtual_ref("x/c/0", elsewhere, 0, 100, validate_container=False)
    with pytest.raises(vs.NoVirtualChunkStoreError) as caught:
        zarr.open_array(session.store, path="x")[:]
    assert caught.value.location == elsewhere


def test_bad_references_are_refused(repo: vs.Repository, sources: Any) -> None:
    _, _, prefix = sources
    session = repo.writable_session()
    make_array(session)
    store = session.store
    with pytest.raises(ValueError, match="metadata document"):
        store.set_virtual_ref("x/zarr.json", prefix + "a.bin", 0, 10)
    with pytest.raises(ValueError):
        store.set_virtual_ref("x/c/0", prefix + "a.bin", -1, 10)
    with pytest.raises(ValueError, match="timezone"):
        store.set_virtual_ref("x/c/0", prefix + "a.bin", 0, 10, checksum=datetime(2024, 1, 1))
    for nowhere in ("s3://", "file:///", "s3:////"):  # a scheme and nothing it names
        with pytest.raises(ValueError, match="must name an object"):
            store.set_virtual_ref("x/c/0", nowhere, 0, 10, validate_container=False)
    with pytest.raises(TypeError):
        store.set_virtual_ref("x/c/0", prefix + "a.bin", 0, 10, checksum=12)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dimension"):
        store.set_virtual_refs("x", [vs.VirtualChunkSpec(index=(0, 0), location=prefix + "a",
                                                         offset=0, length=1)])
    with pytest.raises(KeyError, match="no array metadata"):
        store.set_virtual_refs("nothing", [])
    assert session.status().virtual_keys == frozenset()  # nothing virtual was staged
    read_only = repo.readonly_session()
    with pytest.raises(vs.ReadOnlySessionError):
        read_only.store.set_virtual_ref("x/c/0", prefix + "a.bin", 0, 10)


# -- maintenance: gc, verify, merge ------------------------------------------------------


def test_gc_never_touches_sources(repo: vs.Repository, sources: Any) -> None:
    root, store, prefix = sources
    source = write_source(root / "a.bin")
    before = (source.read_bytes(), source.stat().st_mtime_ns)
    commit_virtual(repo, prefix + "a.bin", etag_of(store, "a.bin"))
    repo.reset_branch("main", next(iter(repo.ancestry())).parent_id or "")  # orphan it
    summary = repo.garbage_collect()
    assert summary.deleted > 0
    assert (source.read_bytes(), source.stat().st_mtime_ns) == before
    assert sorted(os.listdir(root)) == ["a.bin"]


def test_gc_keeps_the_tree_of_virtual_chunks(repo: vs.Repository, sources: Any) -> None:
    root, _, prefix = sources
    write_source(root / "a.bin")
    commit_virtual(repo, prefix + "a.bin")
    repo.garbage_collect()
    assert repo.verify().ok
    np.testing.assert_array_equal(zarr.open_array(repo.readonly_session().store, path="x")[:],
                                  VALUES)


def test_clone_and_push_carry_references_not_sources(tmp_path: Path, sources: Any) -> None:
    root, store, prefix = sources
    source = write_source(root / "a.bin")
    before = (source.read_bytes(), source.stat().st_mtime_ns)
    local = vs.Repository.create(vs.lmdb_storage(tmp_path / "local"),
                                 virtual_chunk_stores={prefix: store})
    commit_virtual(local, prefix + "a.bin", etag_of(store, "a.bin"))
    remote_storage = vs.lmdb_storage(tmp_path / "remote")
    summary = vs.copy_repository(local.storage, remote_storage, progress=False)
    remote = vs.Repository.open(remote_storage, virtual_chunk_stores={prefix: store})
    np.testing.assert_array_equal(
        zarr.open_array(remote.readonly_session().store, path="x")[:], VALUES)
    write_source(root / "b.bin", VALUES * 3)
    commit_virtual(local, prefix + "b.bin", etag_of(store, "b.bin"))
    local.push(remote, progress=False)
    np.testing.assert_array_equal(
        zarr.open_array(remote.readonly_session().store, path="x")[:], VALUES * 3)
    # the source bytes were never copied: what moved is the trees that point at them
    assert summary.objects_copied > 0
    stored = remote.backend.get_objects(list(remote.backend.iter_object_ids()))
    chunks = [decode_chunk("", d) for d in stored if d is not None and frame_kind(d) == KIND_CHUNK]
    assert all(json.loads(chunk)["node_type"] == "array" for chunk in chunks)  # metadata only
    assert (source.read_bytes(), source.stat().st_mtime_ns) == before
    without_stores = vs.Repository.open(remote_storage)
    with pytest.raises(vs.NoVirtualChunkStoreError):
        zarr.open_array(without_stores.readonly_session().store, path="x")[:]


def test_verify_checks_sources_on_request(repo: vs.Repository, sources: Any) -> None:
    root, store, prefix = sources
    a = write_source(root / "a.bin")
    write_source(root / "b.bin")
    commit_virtual(repo, prefix + "a.bin", etag_of(store, "a.bin"), name="a")
    commit_virtual(repo, prefix + "b.bin", name="b")
    session = repo.writable_session()
    session.store.set_virtual_ref("b/c/0", "s3://nowhere/b.bin", 0, 4, validate_container=False)
    assert repo.verify(check_virtual=True).ok is False  # the staged one has no store
    session.discard_changes()
    assert repo.verify(check_virtual=True).ok
    rewrite_same_length(a, VALUES + 1)
    (root / "b.bin").unlink()
    problems = repo.verify(check_virtual=True).problems
    assert len(problems) == 2
    assert any("a.bin" in p and "changed" in p for p in problems)
    assert any("b.bin" in p and "does not exist" in p for p in problems)
    assert repo.verify().ok  # without the option, sources are not asked


def test_merge_carries_virtual_refs(repo: vs.Repository, sources: Any) -> None:
    root, _, prefix = sources
    write_source(root / "a.bin")
    write_source(root / "b.bin", VALUES * 3)
    base = commit_virtual(repo, prefix + "a.bin")
    repo.create_branch("other", base)
    session = repo.writable_session("other")
    make_array(session, "y")
    session.store.set_virtual_refs("y", specs(prefix + "b.bin"))
    session.commit("y on other")
    session = repo.writable_session()
    session.store.set_virtual_ref("x/c/0", prefix + "b.bin", len(HEADER), 100)
    session.commit("x patched on main")
    repo.merge("other", "main")
    head = repo.readonly_session()
    np.testing.assert_array_equal(zarr.open_array(head.store, path="y")[:], VALUES * 3)
    expected = VALUES.copy()
    expected[:25] = VALUES[:25] * 3
    np.testing.assert_array_equal(zarr.open_array(head.store, path="x")[:], expected)


# -- other sources: HTTP and S3 ---------------------------------------------------------------


def test_http_sources(served_dir: tuple[Path, str], tmp_path: Path) -> None:
    directory, url = served_dir
    source = write_source(directory / "a.bin")
    http = HTTPStore(url)
    repo = vs.Repository.create(vs.in_memory_storage(),
                                virtual_chunk_stores={url + "/": http})
    info = repo.virtual_chunks.stat(url + "/a.bin")
    assert info is not None and info.size == source.stat().st_size and info.etag
    commit_virtual(repo, url + "/a.bin", info.etag)
    np.testing.assert_array_equal(zarr.open_array(repo.readonly_session().store, path="x")[:],
                                  VALUES)
    later = source.stat().st_mtime_ns + 2 * 10**9
    source.write_bytes(HEADER + (VALUES * 2).tobytes())
    os.utime(source, ns=(later, later))  # the server's ETag is mtime and size
    with pytest.raises(vs.VirtualSourceChangedError):
        zarr.open_array(repo.readonly_session().store, path="x")[:]
    source.unlink()
    problems = repo.verify(check_virtual=True).problems
    assert len(problems) == 1 and "does not exist" in problems[0]


def test_s3_sources(s3: S3Server) -> None:
    prefix = f"v-{uuid.uuid4().hex[:8]}"
    body = HEADER + VALUES.tobytes()
    s3.client.put_object(Bucket=BUCKET, Key=f"{prefix}/a.bin", Body=body)
    store = ObjectStore.s3(BUCKET, endpoint=s3.endpoint)
    repo = vs.Repository.create(vs.in_memory_storage(),
                                virtual_chunk_stores={f"s3://{BUCKET}/": store})
    url = f"s3://{BUCKET}/{prefix}/a.bin"
    info = repo.virtual_chunks.stat(url)
    assert info is not None and info.etag
    commit_virtual(repo, url, info.etag)
    np.testing.assert_array_equal(zarr.open_array(repo.readonly_session().store, path="x")[:],
                                  VALUES)
    s3.client.put_object(Bucket=BUCKET, Key=f"{prefix}/a.bin",
                         Body=HEADER + VALUES[::-1].tobytes())
    with pytest.raises(vs.VirtualSourceChangedError):
        zarr.open_array(repo.readonly_session().store, path="x")[:]


# -- kerchunk ----------------------------------------------------------------------------------


def test_import_kerchunk_reference_set(repo: vs.Repository, sources: Any) -> None:
    root, _, prefix = sources
    write_source(root / "a.bin")
    zarray = ('{"shape":[100],"chunks":[25],"dtype":"<i4","fill_value":null,"order":"C",'
              '"filters":null,"compressor":null,"zarr_format":2}')
    refs = {
        "version": 1,
        "templates": {"u": prefix + "a.bin"},
        "refs": {
            ".zgroup": '{"zarr_format":2}',
            ".zattrs": "base64:" + base64.b64encode(b'{"title":"t"}').decode(),
            "v/.zarray": zarray,
            "v/.zattrs": '{"_ARRAY_DIMENSIONS":["t"]}',
            **{f"v/{i}": ["{{u}}", len(HEADER) + 100 * i, 100] for i in range(4)},
        },
    }
    session = repo.writable_session()
    summary = vs.import_kerchunk(session, refs, "group", record_checksums=True)
    assert (summary.inline_values, summary.virtual_chunks, summary.sources) == (4, 4, 1)
    session.commit("kerchunk")
    ds = xr.open_zarr(repo.readonly_session().store, group="group", zarr_format=2,
                      consolidated=False)
    np.testing.assert_array_equal(ds["v"].values, VALUES)
    assert ds.attrs == {"title": "t"}


def test_import_kerchunk_version_0_and_whole_files(repo: vs.Repository, sources: Any,
                                                    tmp_path: Path) -> None:
    root, _, prefix = sources
    (root / "whole.bin").write_bytes(VALUES[:25].tobytes())
    refs = {
        ".zgroup": '{"zarr_format":2}',
        "w/.zarray": ('{"shape":[25],"chunks":[25],"dtype":"<i4","fill_value":0,"order":"C",'
                      '"filters":null,"compressor":null,"zarr_format":2}'),
        "w/0": [str(root / "whole.bin")],  # a bare path, as kerchunk writes for local files
    }
    path = tmp_path / "refs.json"
    path.write_text(json.dumps(refs))
    session = repo.writable_session()
    summary = vs.import_kerchunk(session, path)
    assert summary.virtual_chunks == 1
    array = zarr.open_array(session.store, path="w", zarr_format=2)
    np.testing.assert_array_equal(array[:], VALUES[:25])
    entry = session.entry("w/0")
    assert isinstance(entry, VirtualRef) and entry.checksum is not None  # recorded by default
    absent = {"v/0": [prefix + "absent.bin", 0, 4]}
    with pytest.raises(vs.VirtualSourceMissingError):
        vs.import_kerchunk(session, absent)
    vs.import_kerchunk(session, absent, record_checksums=False)  # sources are not reached
    assert session.entry("v/0") == VirtualRef(location=prefix + "absent.bin", offset=0, length=4)
    with pytest.raises(ValueError, match="gen"):
        vs.import_kerchunk(session, {"version": 1, "refs": {}, "gen": [{"key": "a"}]})
    with pytest.raises(ValueError, match="expected a string"):
        vs.import_kerchunk(session, {"a/0": 5})


def test_hdf5_through_kerchunk_to_xarray(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py", reason="h5py is not installed (the test extra has it)")
    hdf = pytest.importorskip("kerchunk.hdf", reason="kerchunk is not installed (test extra)")
    root = tmp_path / "archive"
    root.mkdir()
    path = root / "obs.h5"
    temperature = np.random.default_rng(3).random((8, 12)).astype("f4")
    with h5py.File(path, "w") as f:
        dataset = f.create_dataset("temperature", data=temperature, chunks=(4, 6))
        dataset.attrs["units"] = "K"
        f.create_dataset("time", data=np.arange(8, dtype="i8"), fillvalue=-1)
    refs = hdf.SingleHdf5ToZarr(str(path), inline_threshold=0).translate()
    assert any(isinstance(v, list) for v in refs["refs"].values())  # real byte ranges
    stores = {root.as_uri() + "/": FilesystemStore(root)}
    repo = vs.Repository.create(vs.in_memory_storage(), virtual_chunk_stores=stores)
    session = repo.writable_session()
    vs.import_kerchunk(session, refs, record_checksums=True)
    session.commit("obs.h5, virtually")
    ds = xr.open_zarr(repo.readonly_session().store, zarr_format=2, consolidated=False)
    np.testing.assert_array_equal(ds["temperature"].values, temperature)
    assert ds["temperature"].attrs["units"] == "K"
    np.testing.assert_array_equal(ds["time"].values, np.arange(8))
    # The HDF5 file is rewritten in place with new values: reads refuse it.
    copy = tmp_path / "copy.h5"
    shutil.copy(path, copy)
    with h5py.File(copy, "r+") as f:
        f["temperature"][...] = temperature + 1
    os.replace(copy, path)
    reopened = xr.open_zarr(repo.readonly_session().store, zarr_format=2, consolidated=False)
    with pytest.raises(vs.VirtualSourceChangedError):
        reopened["temperature"].load()


# -- the format ------------------------------------------------------------------------------


def test_leaves_without_virtual_refs_keep_format_1() -> None:
    plain = Leaf(keys=("a", "b"), entries=(b"x", ChunkRef(chunk_id=b"\0" * 20, size=600)))
    _, frame = encode_node(plain)
    assert decode_node("n", frame) == plain
    stamp = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    virtual = Leaf(keys=("a", "b", "c"), entries=(
        b"x",
        VirtualRef(location="s3://b/k.nc", offset=10, length=20, checksum='"etag"'),
        VirtualRef(location="file:///d/k.nc", offset=0, length=5, checksum=stamp),
    ))
    _, vframe = encode_node(virtual)
    assert decode_node("n", vframe) == virtual
    # The record versions: 1 for ordinary leaves (ids unchanged), 2 where virtual refs are.
    assert frame[13:15] == b"\x93\x01" and vframe[13:15] == b"\x93\x02"


def test_staged_virtual_entries_round_trip_and_newer_versions_refused() -> None:
    ref = VirtualRef(location="https://h/f.nc", offset=3, length=4,
                     checksum=datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=1))
    raw = encode_staged("stage/s/x/c/0", ref)
    assert decode_staged("stage/s/x/c/0", raw) == ref
    payload = raw[13:]
    assert payload[:2] == b"\x93\x03"  # staged format 3: a virtual reference
    newer = _frame(KIND_STAGED, b"\x93\x09" + payload[2:], compress=False)
    with pytest.raises(UnsupportedFormatError):
        decode_staged("stage/s/x/c/0", newer)

"""Object storage: small-chunk write + commit and one-chunk commit latency over one S3 server.

Each job starts one S3 server (``benchmarks.s3_server``: moto on 127.0.0.1
behind the serialising, request-counting proxy the request-count tests use)
and runs one object-storage system against it: ``vs-s3``
(``versionstore.s3_storage``) or ``icechunk-s3`` (``icechunk.s3_storage``
with ``endpoint_url`` and ``allow_http=True``), each with its default
settings, under a fresh key prefix per repository (moto keeps its state
process-wide, so a second run in one process must not reuse a prefix).

(a) Small-chunk write + commit: for each zarr ``async.concurrency`` in
``s3_concurrency`` (zarr's default is 10), a new repository, one float32
array of ``s3_chunks`` chunks of ``s3_chunk_kib`` KiB (created untimed and
uncounted), written with one ``array[:] = data`` call, then one commit.
Timed: the write, the commit, both. Counted (by the proxy, per request
kind): the write's requests and the commit's requests apart, and their sum.

(b) One-chunk commit latency: a repository holding an array of 100 such
chunks (committed, untimed), then ``s3_commit_samples`` times: write one
chunk in a writable session (untimed), commit (timed, and its requests
counted). Reported: median over the samples.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
import zarr

from benchmarks.data import normal_block
from benchmarks.measure import Recorder
from benchmarks.systems import System

NAME = "s3"
TITLE = "Object storage (moto S3 on 127.0.0.1): small-chunk write + commit, 1-chunk commit"
OBJECT_STORAGE = True
PATH = "small"
KINDS = ("put", "get", "head", "list", "delete")
LATENCY_CHUNKS = 100


def phases(system: type[System], params: dict[str, Any]) -> list[str]:
    return ["run"] if system.object_storage else []


def run(phase: str, system: System, params: dict[str, Any], rec: Recorder,
        fixtures: dict[str, Any]) -> None:
    from benchmarks.s3_server import serve_s3

    elems = params["s3_chunk_kib"] * 1024 // 4
    n = params["s3_chunks"]
    rec.note("chunks", n)
    rec.note("chunk_bytes", elems * 4)
    data = normal_block(n * elems, seed=1)
    with serve_s3() as s3:
        for concurrency in params["s3_concurrency"]:
            _write_commit(system, s3, concurrency, n, elems, data, rec)
        _commit_latency(system, s3, elems, params["s3_commit_samples"], rec)


def _open(system: System, s3: Any, name: str) -> System:
    instance = type(system)(system.root / name)
    instance.endpoint = s3.endpoint
    # moto keeps its buckets in process-wide state, which outlives one server: a fresh prefix.
    instance.prefix = f"{system.name}-{name}-{uuid.uuid4().hex[:8]}"
    instance.create()
    return instance


def _counts(rec: Recorder, label: str, counts: dict[str, int], by_kind: bool = True) -> None:
    """Requests by kind (a bulk-delete POST counts among ``writes`` only), writes, all."""
    for kind in KINDS if by_kind else ():
        rec.add(f"{label} {kind.upper()}", counts.get(kind, 0), "requests")
    rec.add(f"{label} writes", sum(counts.get(k, 0) for k in ("put", "post", "delete")),
            "requests")
    rec.add(f"{label} all", sum(counts.values()), "requests")


def _write_commit(system: System, s3: Any, concurrency: int, n: int, elems: int,
                  data: np.ndarray, rec: Recorder) -> None:
    instance = _open(system, s3, f"c{concurrency}")
    array = zarr.create_array(instance.write_store(), name=PATH, shape=(n * elems,),
                              chunks=(elems,), dtype="float32")
    s3.proxy.reset_counts()
    with zarr.config.set({"async.concurrency": concurrency}):
        start = time.perf_counter()
        array[:] = data
        middle = time.perf_counter()
    writing = dict(s3.proxy.counts)
    s3.proxy.reset_counts()
    instance.commit("small chunks")
    end = time.perf_counter()
    committing = dict(s3.proxy.counts)
    label = f"c={concurrency}"
    rec.add(f"write s ({label})", middle - start, "s")
    rec.add(f"commit s ({label})", end - middle, "s")
    rec.add(f"write+commit s ({label})", end - start, "s")
    rec.add(f"write+commit chunks/s ({label})", n / (end - start), "chunks/s", "higher")
    _counts(rec, f"requests: write ({label})", writing, by_kind=False)
    _counts(rec, f"requests: commit ({label})", committing)
    total = {k: writing.get(k, 0) + committing.get(k, 0) for k in {*writing, *committing}}
    _counts(rec, f"requests: write+commit ({label})", total)
    check = zarr.open_array(instance.read_store(), path=PATH, mode="r")
    if not np.array_equal(check[-elems:], data[-elems:]):
        raise AssertionError(f"{system.name}: committed data differs ({label})")
    instance.close()


def _commit_latency(system: System, s3: Any, elems: int, samples: int, rec: Recorder) -> None:
    instance = _open(system, s3, "latency")
    array = zarr.create_array(instance.write_store(), name=PATH,
                              shape=(LATENCY_CHUNKS * elems,), chunks=(elems,), dtype="float32")
    array[:] = normal_block(LATENCY_CHUNKS * elems, seed=2)
    instance.commit("load")
    rng = np.random.default_rng(11)
    value = np.full(elems, 0, dtype="float32")
    for s in range(samples):
        index = int(rng.integers(LATENCY_CHUNKS))
        array = zarr.open_array(instance.write_store(), path=PATH)
        value[:] = -(s + 1)
        array[index * elems:(index + 1) * elems] = value
        s3.proxy.reset_counts()
        t0 = time.perf_counter()
        instance.commit(f"one chunk {s}")
        rec.add("1-chunk commit ms", (time.perf_counter() - t0) * 1000, "ms")
        _counts(rec, "requests: 1-chunk commit", dict(s3.proxy.counts))
    check = zarr.open_array(instance.read_store(), path=PATH, mode="r")
    if check[index * elems] != -samples:
        raise AssertionError(f"{system.name}: last commit not visible")
    instance.close()

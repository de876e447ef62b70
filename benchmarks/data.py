"""Deterministic benchmark data, identical for every system.

Values are float32 draws from a normal distribution (what zarr's default
zstd compresses a little, like real measurements), shifted by a different
constant for each slab or version so that no two chunks hold the same bytes:
a content-addressed store must not get to deduplicate its way to a better
number. Encoded chunk bytes (for raw LMDB and the key-level workloads) come
from zarr itself, writing the same array into a ``MemoryStore`` with the same
codecs, so every system stores exactly the same bytes under the same keys.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import zarr

__all__ = ["encode_1d", "encoded_chunks", "normal_block", "shifted", "tiny_values"]

FLOAT = np.dtype("float32")


@functools.lru_cache(maxsize=4)
def normal_block(elements: int, seed: int) -> np.ndarray:
    """``elements`` float32 normal draws from ``seed`` (cached; do not modify)."""
    block = np.random.default_rng(seed).standard_normal(elements, dtype=np.float32)
    block.setflags(write=False)
    return block


def shifted(block: np.ndarray, shift: float) -> np.ndarray:
    """A new array: ``block + shift`` (distinct bytes for every distinct shift)."""
    return block + np.float32(shift)


def encoded_chunks(path: str, shape: tuple[int, ...], chunks: tuple[int, ...],
                   writes: Iterator[tuple[slice, np.ndarray]], dtype: str = "float32"
                   ) -> Iterator[dict[str, bytes]]:
    """Write through zarr into a ``MemoryStore``; after each write yield the keys it set.

    The first item is the array metadata (``{path}/zarr.json``); each later item
    holds the encoded chunks one ``(selection, values)`` write produced.
    """
    store = zarr.storage.MemoryStore()
    array = zarr.create_array(store, name=path, shape=shape, chunks=chunks, dtype=dtype)
    yield {k: v.to_bytes() for k, v in store._store_dict.items()}
    for selection, values in writes:
        before = dict(store._store_dict)
        array[selection] = values
        changed = {k: v.to_bytes() for k, v in store._store_dict.items() if before.get(k) is not v}
        # Keep memory bounded for big arrays: the chunks are yielded, not kept.
        for key in changed:
            if key.startswith(path + "/c"):
                del store._store_dict[key]
        yield changed


def tiny_values(count: int) -> list[bytes]:
    """Encoded single-element int32 chunks holding 1..count, encoded by zarr."""
    store = zarr.storage.MemoryStore()
    array = zarr.create_array(store, name="v", shape=(count,), chunks=(1,), dtype="int32")
    array[:] = np.arange(1, count + 1, dtype="int32")
    return [store._store_dict[f"v/c/{i}"].to_bytes() for i in range(count)]


def encode_1d(path: str, data: np.ndarray, chunk_elems: int) -> dict[str, bytes]:
    """Every key zarr would store for ``data`` as a 1-D array: metadata and encoded chunks.

    Writing tens of thousands of chunks through zarr costs about a millisecond
    each (its per-chunk async scheduling), so when the array's codecs are
    zarr's defaults (little-endian bytes + zstd) the chunks are encoded with
    the very codec zarr calls (``numcodecs.Zstd``) — after checking, on the
    first chunks, that the bytes are identical to what zarr itself stores.
    Any other codec chain goes through zarr.
    """
    import numcodecs
    from zarr.codecs import BytesCodec, ZstdCodec

    n = -(-len(data) // chunk_elems)
    sample = min(n, 4)
    store = zarr.storage.MemoryStore()
    array = zarr.create_array(store, name=path, shape=data.shape, chunks=(chunk_elems,),
                              dtype=data.dtype)
    array[: sample * chunk_elems] = data[: sample * chunk_elems]
    items = {k: v.to_bytes() for k, v in store._store_dict.items()}
    codecs = array.metadata.codecs
    if (len(codecs) == 2 and isinstance(codecs[0], BytesCodec) and codecs[0].endian == "little"
            and isinstance(codecs[1], ZstdCodec) and len(data) % chunk_elems == 0):
        zstd = numcodecs.Zstd(level=codecs[1].level, checksum=codecs[1].checksum)

        def encode(i: int) -> bytes:
            return bytes(zstd.encode(data[i * chunk_elems:(i + 1) * chunk_elems].tobytes()))

        if all(encode(i) == items[f"{path}/c/{i}"] for i in range(sample)):
            items.update({f"{path}/c/{i}": encode(i) for i in range(sample, n)})
            return items
    array[:] = data
    return {k: v.to_bytes() for k, v in store._store_dict.items()}

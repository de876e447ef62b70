"""Deterministic benchmark data, identical for every system.

Values are float32 draws from a normal distribution (what zarr's default
zstd compresses a little, like real measurements), shifted by a different
constant for each slab or version so that no two chunks hold the same bytes:
a content-addressed store must not get to deduplicate its way to a better
number. Encoded chunk bytes (for raw LMDB and the key-level workloads) are
what zarr stores for the same array with the same codecs (``ChunkEncoder``),
so every system stores exactly the same bytes under the same keys.
"""

from __future__ import annotations

import functools

import numpy as np
import zarr

__all__ = ["ChunkEncoder", "encode_1d", "normal_block", "shifted", "tiny_values"]

@functools.lru_cache(maxsize=4)
def normal_block(elements: int, seed: int) -> np.ndarray:
    """``elements`` float32 normal draws from ``seed`` (cached; do not modify)."""
    block = np.random.default_rng(seed).standard_normal(elements, dtype=np.float32)
    block.setflags(write=False)
    return block


def shifted(block: np.ndarray, shift: float) -> np.ndarray:
    """A new array: ``block + shift`` (distinct bytes for every distinct shift)."""
    return block + np.float32(shift)


def tiny_values(count: int) -> list[bytes]:
    """Encoded single-element int32 chunks holding 1..count, encoded by zarr."""
    store = zarr.storage.MemoryStore()
    array = zarr.create_array(store, name="v", shape=(count,), chunks=(1,), dtype="int32")
    array[:] = np.arange(1, count + 1, dtype="int32")
    return [store._store_dict[f"v/c/{i}"].to_bytes() for i in range(count)]


class ChunkEncoder:
    """Encodes the chunks of a 1-D array exactly as zarr stores them.

    Writing tens of thousands of chunks through zarr costs about a millisecond
    each (its per-chunk async scheduling), so when the array's codecs are
    zarr's defaults (little-endian bytes + zstd) chunks are encoded with the
    very codec zarr calls (``numcodecs.Zstd``), after checking on the first
    chunks that the bytes are identical to what zarr itself stores. Any other
    codec chain (or a mismatch) goes through zarr for every chunk.
    """

    CHECKS = 4

    def __init__(self, path: str, length: int, chunk_elems: int, dtype: str = "float32") -> None:
        import numcodecs
        from zarr.codecs import BytesCodec, ZstdCodec

        self.path = path
        self._store = zarr.storage.MemoryStore()
        self._array = zarr.create_array(self._store, name=path, shape=(length,),
                                        chunks=(chunk_elems,), dtype=dtype)
        self._chunk = chunk_elems
        #: The metadata documents zarr wrote for the array (and its root group).
        self.metadata = {k: v.to_bytes() for k, v in self._store._store_dict.items()}
        codecs = self._array.metadata.codecs
        self._zstd = None
        if (len(codecs) == 2 and isinstance(codecs[0], BytesCodec)
                and codecs[0].endian == "little" and isinstance(codecs[1], ZstdCodec)):
            self._zstd = numcodecs.Zstd(level=codecs[1].level, checksum=codecs[1].checksum)
        self._checked = 0

    def _through_zarr(self, index: int, values: np.ndarray) -> bytes:
        key = f"{self.path}/c/{index}"
        self._array[index * self._chunk:(index + 1) * self._chunk] = values
        return self._store._store_dict.pop(key).to_bytes()

    def encode(self, index: int, values: np.ndarray) -> tuple[str, bytes]:
        """The key and stored bytes of chunk ``index`` holding ``values`` (a full chunk)."""
        key = f"{self.path}/c/{index}"
        if self._zstd is None:
            return key, self._through_zarr(index, values)
        encoded = bytes(self._zstd.encode(np.ascontiguousarray(values).tobytes()))
        if self._checked < self.CHECKS:
            self._checked += 1
            reference = self._through_zarr(index, values)
            if reference != encoded:
                self._zstd = None
                return key, reference
        return key, encoded


def encode_1d(path: str, data: np.ndarray, chunk_elems: int) -> dict[str, bytes]:
    """Every key zarr stores for ``data`` as a 1-D array: metadata and encoded chunks."""
    encoder = ChunkEncoder(path, len(data), chunk_elems, str(data.dtype))
    items = dict(encoder.metadata)
    for i in range(-(-len(data) // chunk_elems)):
        key, value = encoder.encode(i, data[i * chunk_elems:(i + 1) * chunk_elems])
        items[key] = value
    return items

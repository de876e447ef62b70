"""The main job: write and read an array through each zarrstore store.

Run with ``scripts/demo``. (This grows into the versioned demo.)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import zarr

from zarrstore import FilesystemStore, MemoryStore


def main() -> None:
    """Write an array through every store and read it back."""
    data = np.arange(100 * 100, dtype="f4").reshape(100, 100)
    with tempfile.TemporaryDirectory() as tmp:
        for store in (MemoryStore(), FilesystemStore(Path(tmp) / "fs")):
            zarr.create_array(store, name="t", shape=data.shape, chunks=(10, 10), dtype="f4")[:] = data
            back = zarr.open_array(store, path="t", mode="r")[:]
            assert np.array_equal(back, data)
            print(f"{type(store).__name__:16} wrote and read {data.nbytes} bytes "
                  f"in {len(list(store.mapping()))} keys")


if __name__ == "__main__":
    main()

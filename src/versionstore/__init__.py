"""versionstore: git-like history for Zarr data."""

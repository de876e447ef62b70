"""Adapters: stores that wrap other stores to add a behaviour.

``AsyncToSync`` / ``SyncToAsync`` bridge the sync and async store protocols.
"""

from zarrstore.adapters.sync_async import AsyncToSync, SyncToAsync, run_in_background_loop

__all__ = ["AsyncToSync", "SyncToAsync", "run_in_background_loop"]

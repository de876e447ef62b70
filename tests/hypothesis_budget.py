"""Example budgets for slow property tests, derived from the active hypothesis profile.

Tests whose every step does real I/O (files, LMDB, zarr's event-loop hop) run
a fraction of the profile's examples, so the whole suite stays within minutes
while the ``ci`` profile keeps them fixed and derandomized.
"""

from __future__ import annotations

from hypothesis import settings


def fewer_examples(divisor: int = 4) -> settings:
    """The active profile with ``max_examples`` divided by ``divisor`` (at least 10)."""
    current = settings()
    return settings(current, max_examples=max(10, current.max_examples // divisor))

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


def hierarchy_examples() -> settings:
    """Budget for zarr's ``ZarrHierarchyStateMachine``, run on every store and adapter.

    Each of its steps makes, rewrites or deletes whole arrays and groups through
    zarr (and checks them against zarr's own ``MemoryStore``), so each store runs
    a fortieth of the profile's examples (at least 5) of at most 20 steps.
    """
    current = settings()
    return settings(
        current,
        max_examples=max(5, current.max_examples // 40),
        stateful_step_count=min(20, current.stateful_step_count),
    )

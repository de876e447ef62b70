"""Shared fixtures and the hypothesis profiles.

``ci`` (the default under ``.ci/run``) runs a fixed, generous number of
examples with derandomized generation, so CI is repeatable; ``dev`` is
quicker for local iteration. Select with ``--hypothesis-profile``.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=200,
    stateful_step_count=40,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "dev",
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("dev")

"""Suite-wide settings."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

# CI shares two cores between the suite, real Envoys and server processes: a property is judged on its
# examples, not on how fast a loaded machine produced them.
settings.register_profile(
    "suite", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.load_profile("suite")

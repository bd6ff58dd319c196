"""Suite-wide settings."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

# CI shares two cores between the suite, real Envoys and server processes: a property is judged on its
# examples, not on how fast a loaded machine produced them.
settings.register_profile(
    "suite", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.load_profile("suite")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `slow` start first, each module's order kept otherwise: the suite runs on two xdist workers
    that take one test at a time (pyproject's addopts), and a minute-long test left to the end runs alone while
    the other worker idles (two workers in collection order: 366 s, the last 100 s of it on the longest two).
    Nothing is deselected: the mark orders, it does not choose."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)

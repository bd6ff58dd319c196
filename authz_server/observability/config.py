"""Configuration of metrics and HTTP health (section `metrics`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = ""
    """HOST:PORT of the Prometheus /metrics, /healthz and /readyz endpoint ('' = off)."""

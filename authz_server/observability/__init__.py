"""Metrics and health: Prometheus series, /healthz and /readyz on the operator's HTTP port.

Attributes are imported on first use: `authz_server.config` imports this
package's `config` module, and that must not pull in prometheus-client and the decision path.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from authz_server.observability.config import MetricsConfig
    from authz_server.observability.health import Phase, Readiness
    from authz_server.observability.http import OpsServer
    from authz_server.observability.metrics import DecisionMetrics, ServerCollector, StageClock
    from authz_server.observability.process import Observability

_EXPORTS = {
    "MetricsConfig": "authz_server.observability.config",
    "Phase": "authz_server.observability.health",
    "Readiness": "authz_server.observability.health",
    "OpsServer": "authz_server.observability.http",
    "DecisionMetrics": "authz_server.observability.metrics",
    "ServerCollector": "authz_server.observability.metrics",
    "StageClock": "authz_server.observability.metrics",
    "Observability": "authz_server.observability.process",
}

__all__ = [
    "DecisionMetrics",
    "MetricsConfig",
    "Observability",
    "OpsServer",
    "Phase",
    "Readiness",
    "ServerCollector",
    "StageClock",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

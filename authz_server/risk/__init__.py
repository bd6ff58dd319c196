"""Stage 4, risk: behavioural features against per-edge baselines, an ONNX surprise model under a latency budget,
bands (see README.md here).

`authz_server.decision` imports `risk.outcome`, so this package's own import stays light: the model, the
state and onnxruntime load on first use of the names below, not when the request path's modules do.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from authz_server.risk.bands import ELEVATED, HIGH, LOW, band_for
from authz_server.risk.config import RiskConfig
from authz_server.risk.outcome import RISK_DISABLED, RiskAction, RiskFactor, RiskOutcome, RiskStatus

if TYPE_CHECKING:
    from authz_server.risk.baseline import Baseline
    from authz_server.risk.features import FEATURE_NAMES, FEATURE_SCHEMA, FEATURES, BehaviourState
    from authz_server.risk.model import AnomalyModel, ModelError
    from authz_server.risk.model_source import RiskLoadError, RiskSource
    from authz_server.risk.scorer import RiskCounters, RiskScorer

_LAZY = {
    "FEATURES": "authz_server.risk.features",
    "FEATURE_NAMES": "authz_server.risk.features",
    "FEATURE_SCHEMA": "authz_server.risk.features",
    "BehaviourState": "authz_server.risk.features",
    "Baseline": "authz_server.risk.baseline",
    "AnomalyModel": "authz_server.risk.model",
    "ModelError": "authz_server.risk.model",
    "RiskCounters": "authz_server.risk.scorer",
    "RiskScorer": "authz_server.risk.scorer",
    "RiskLoadError": "authz_server.risk.model_source",
    "RiskSource": "authz_server.risk.model_source",
}


def source(config: RiskConfig) -> RiskSource:
    """The `StageSource[RiskStage]` for this configuration."""
    from authz_server.risk.model_source import RiskSource

    return RiskSource(config)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "ELEVATED",
    "FEATURES",
    "FEATURE_NAMES",
    "FEATURE_SCHEMA",
    "HIGH",
    "LOW",
    "RISK_DISABLED",
    "AnomalyModel",
    "Baseline",
    "BehaviourState",
    "ModelError",
    "RiskAction",
    "RiskConfig",
    "RiskCounters",
    "RiskFactor",
    "RiskLoadError",
    "RiskOutcome",
    "RiskScorer",
    "RiskSource",
    "RiskStatus",
    "band_for",
    "source",
]

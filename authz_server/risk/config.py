"""Configuration of the risk stage (section `risk`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RiskConfig:
    enabled: bool = True
    budget_ms: float = 2.0
    """Upper bound on the time the scoring stage may take for one call."""
    model: str = ""
    """Path of the ONNX anomaly model; empty: the default model bundled with the package. Watched and reloaded."""
    model_poll_interval_s: float = 2.0
    """How often the model file is checked for changes."""
    allow_below: float = 0.3
    """Band `low`: a score below this is allowed and only carries x-authz-risk."""
    default_max_risk: float = 0.9
    """Risk ceiling for rules that set no maxRisk. Band `elevated` (allow_below up to the ceiling) is allowed and
    annotated with x-authz-risk-factors; band `high` (above the ceiling) is denied with reason `risk`."""
    shadow: bool = False
    """Compute, log and annotate scores everywhere but never enforce them (canarying a new model)."""
    warmup_s: float = 600.0
    """From the first call, scores are in shadow this long while the online state fills (with the bundled model every
    edge is new then)."""
    top_factors: int = 3
    """How many factors x-authz-risk-factors names, largest first."""
    window_s: float = 60.0
    """The short window of `ids_short` (distinct ids on an edge's template in the last one to two windows)."""
    max_identities: int = 50000
    """Callers (their subnets) and certificates (their source addresses) remembered; least recently seen first out."""
    identity_ttl_s: float = 86400.0
    """An edge idle this long starts afresh: its recent activity and what it learned online (a day, so a nightly
    job's edge keeps what it learned last night)."""
    max_edges: int = 100000
    """Caller -> callee edges remembered (recent activity and what was learned online: templates, methods, hours)."""

    def validate(self) -> list[str]:
        problems = []
        if self.budget_ms <= 0:
            problems.append(f"budget_ms: must be > 0, got {self.budget_ms}")
        if self.model_poll_interval_s <= 0:
            problems.append(f"model_poll_interval_s: must be > 0, got {self.model_poll_interval_s}")
        if not 0 <= self.allow_below <= 1:
            problems.append(f"allow_below: must be within 0..1, got {self.allow_below}")
        if not 0 <= self.default_max_risk <= 1:
            problems.append(f"default_max_risk: must be within 0..1, got {self.default_max_risk}")
        if self.default_max_risk < self.allow_below:
            problems.append(
                f"default_max_risk: must be >= allow_below ({self.allow_below}), got {self.default_max_risk}"
            )
        if self.warmup_s < 0:
            problems.append(f"warmup_s: must be >= 0, got {self.warmup_s}")
        if not 0 <= self.top_factors <= 12:
            problems.append(f"top_factors: must be within 0..12, got {self.top_factors}")
        for key in ("window_s", "identity_ttl_s"):
            if getattr(self, key) <= 0:
                problems.append(f"{key}: must be > 0, got {getattr(self, key)}")
        for key in ("max_identities", "max_edges"):
            if getattr(self, key) < 1:
                problems.append(f"{key}: must be >= 1, got {getattr(self, key)}")
        return problems

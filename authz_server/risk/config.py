"""Configuration of the risk stage (section `risk`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RiskConfig:
    enabled: bool = True
    budget_ms: float = 2.0
    """Upper bound on the time the scoring stage may take for one call."""

    def validate(self) -> list[str]:
        return [] if self.budget_ms > 0 else [f"budget_ms: must be > 0, got {self.budget_ms}"]

"""What the risk stage concludes for one call."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from authz_server.values import fast_init

if TYPE_CHECKING:
    from authz_server.risk.features import CallFacts


class RiskStatus(StrEnum):
    SCORED = "scored"
    SKIPPED = "skipped"
    """Scoring could not finish within the budget or the gRPC deadline."""
    DISABLED = "disabled"
    """No model is configured, or risk scoring is switched off."""


class RiskAction(StrEnum):
    ALLOW = "allow"
    ANNOTATE = "annotate"
    DENY = "deny"


@fast_init
@dataclass(frozen=True, slots=True)
class RiskFactor:
    name: str
    contribution: float
    """The feature's surprise in decades: -log10 of how often benign traffic shows a value this far out."""


@fast_init
@dataclass(frozen=True, slots=True)
class RiskOutcome:
    status: RiskStatus
    score: float | None = None
    factors: tuple[RiskFactor, ...] = ()
    model_version: str = ""
    band: str = ""
    """Name of the configured band the score fell in."""
    action: RiskAction = RiskAction.ALLOW
    shadow: bool = False
    """Score computed and annotated but not enforced (global or per-declaration shadow mode)."""
    features: tuple[float, ...] = ()
    """The feature vector that was scored, in the model's schema order (decision log, retraining, replay)."""
    feature_schema: str = ""
    """Version of the feature schema `features` follows."""
    at: float | None = None
    """The time behaviour was scored at (Envoy's request time bounded by the server clock): what training replays."""
    alarmed: frozenset[str] = frozenset()
    """Features at or past the model's alarm edge on their own: what the online state may not learn from."""
    facts: CallFacts | None = field(default=None, compare=False, repr=False)
    """What the features read of the call: `observe` counts the same call from them instead of reading it again
    (folding the path, bounding the strings: ~8% of the stage's assess plus observe, py-spy)."""

    @property
    def header_value(self) -> str:
        if self.status is RiskStatus.SCORED and self.score is not None:
            return f"{self.score:.3f}"
        return self.status.value


RISK_DISABLED = RiskOutcome(status=RiskStatus.DISABLED)

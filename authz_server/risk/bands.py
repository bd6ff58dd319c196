"""From score to action: transparent bands, documented defaults, one rule per band.

    score <  allow_below                -> band `low`:      allow (x-authz-risk only)
    allow_below <= score <= max_risk     -> band `elevated`: allow, annotate x-authz-risk-factors
    score >  max_risk                    -> band `high`:     deny, reason `risk`

`max_risk` is the matching rule's `maxRisk`, else `risk.default_max_risk`. A rule
stricter than the allow band (maxRisk below allow_below) denies above its maxRisk all the same.
"""

from __future__ import annotations

from authz_server.risk.outcome import RiskAction

LOW = "low"
ELEVATED = "elevated"
HIGH = "high"


def band_for(score: float, allow_below: float, max_risk: float) -> tuple[str, RiskAction]:
    if score > max_risk:
        return HIGH, RiskAction.DENY
    if score >= allow_below:
        return ELEVATED, RiskAction.ANNOTATE
    return LOW, RiskAction.ALLOW

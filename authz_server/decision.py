"""Stage 5, decide: combine identity, policy and risk into one verdict.

The precedence is fixed and documented in README ("How a verdict is reached"):
identity first (no verified caller, no call), then policy (default deny;
dry-run documents let would-be denials through, marked), then risk (only
ever tightens what the enforced policy let through, and only as its bands
say; a dry-run mark never exempts a call from it).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from authz_server.identity.result import Identity, IdentityFailure, IdentityResult
from authz_server.policy.outcome import PolicyOutcome, RiskTimeoutAction
from authz_server.risk.outcome import RiskAction, RiskOutcome, RiskStatus
from authz_server.values import fast_init


class Verdict(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    DRY_RUN_DENY = "dry-run-deny"
    """Policy would deny, but the deciding declaration is in dry-run: the call goes through."""

    @property
    def lets_through(self) -> bool:
        return self is not Verdict.DENY


ALLOWED = "allowed"
RISK = "risk"
RISK_TIMEOUT = "risk-timeout"


@fast_init
@dataclass(frozen=True, slots=True)
class Decision:
    decision_id: str
    verdict: Verdict
    reason: str
    """Reason code: one of IdentityReason, PolicyReason, 'risk', 'risk-timeout' or 'allowed'."""
    http_status: int
    """200 when the call goes through; 401 or 403 when it is denied."""
    identity: IdentityResult
    policy: PolicyOutcome | None = None
    risk: RiskOutcome | None = None

    @property
    def caller(self) -> Identity | None:
        return self.identity if isinstance(self.identity, Identity) else None


def decide(
    decision_id: str,
    identity: IdentityResult,
    policy: PolicyOutcome | None,
    risk: RiskOutcome | None,
) -> Decision:
    if isinstance(identity, IdentityFailure):
        return Decision(decision_id, Verdict.DENY, identity.reason.value, identity.http_status, identity)
    assert policy is not None, "a verified caller always has a policy outcome"

    if not policy.allowed:
        return Decision(decision_id, Verdict.DENY, policy.reason.value, 403, identity, policy, risk)

    # The enforced policy lets the call through, so risk applies, whatever a dry-run document would say.
    if risk is not None and not risk.shadow:
        if risk.action is RiskAction.DENY:
            return Decision(decision_id, Verdict.DENY, RISK, 403, identity, policy, risk)
        if risk.status is RiskStatus.SKIPPED and policy.on_risk_timeout is RiskTimeoutAction.DENY:
            return Decision(decision_id, Verdict.DENY, RISK_TIMEOUT, 403, identity, policy, risk)
    if policy.dry_run_denied:
        return Decision(decision_id, Verdict.DRY_RUN_DENY, policy.reason.value, 200, identity, policy, risk)
    return Decision(decision_id, Verdict.ALLOW, ALLOWED, 200, identity, policy, risk)

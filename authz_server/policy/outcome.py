"""What the policy stage concludes for one call."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from authz_server.values import fast_init


class PolicyReason(StrEnum):
    ALLOWED = "allowed"
    NO_MATCHING_RULE = "no-matching-rule"
    DENIED_BY_RULE = "denied-by-rule"
    QUARANTINED = "quarantined"
    INVALID_PATH = "invalid-path"
    UNKNOWN_WORKLOAD = "unknown-workload"
    NO_POLICY = "no-policy"


class Mode(StrEnum):
    ENFORCE = "enforce"
    DRY_RUN = "dry-run"


class RiskTimeoutAction(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


@fast_init
@dataclass(frozen=True, slots=True)
class PolicyOutcome:
    allowed: bool
    """Whether the enforced documents let the call through. A dry-run document never changes this: where it would
    deny, `mode` is dry-run and reason, document and rule name the dry-run denial (`dry_run_denied`)."""
    reason: PolicyReason
    version: str
    """Content hash of the policy set that decided."""
    document: str | None = None
    """`namespace/name` of the declaration that decided, if any."""
    rule: str | None = None
    """Name of the rule that decided, if any."""
    mode: Mode = Mode.ENFORCE
    normalized_path: str | None = None
    max_risk: float | None = None
    """The matching allow rule's risk ceiling (None: the configured default band applies)."""
    on_risk_timeout: RiskTimeoutAction = RiskTimeoutAction.ALLOW
    risk_shadow: bool = False
    """The declaration asks for scores to be computed and annotated but never enforced."""
    detail: str | None = None
    """Words for the decision log, never for the caller (e.g. the quarantine entry's reason)."""

    @property
    def dry_run_denied(self) -> bool:
        """A dry-run document would refuse this call: it goes through (if nothing else refuses it), marked."""
        return self.mode is Mode.DRY_RUN and self.reason is not PolicyReason.ALLOWED

    @property
    def granted(self) -> bool:
        """Allowed, and no dry-run document would deny it: the call would go through were every document enforced."""
        return self.allowed and not self.dry_run_denied

    @property
    def label(self) -> str:
        """`name@version` for the x-authz-policy header."""
        name = self.document or "default-deny"
        return f"{name}@{self.version}"

"""`authz-server replay`: decide logged calls again under a candidate policy set (and model) before it goes live.

Each logged call with a verified caller is rebuilt from its line and put
through the candidate's `evaluate` and the same `decide` the server uses, at
the time it was logged (rule and quarantine expiries as they were then).
Risk is taken from the line unless a candidate model is given; then the
logged feature vector is scored again and mapped to a band with the server's
thresholds. Calls whose identity failed are reported but not replayed: no
policy or model change can alter an identity verdict.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from authz_server.decision import Decision, decide
from authz_server.identity.result import Identity
from authz_server.ops.logfile import ReadStats
from authz_server.ops.reconstruct import NotReplayable, has_redacted_headers, logged_call, logged_identity, logged_risk
from authz_server.policy.outcome import PolicyOutcome
from authz_server.risk.bands import band_for
from authz_server.risk.config import RiskConfig
from authz_server.risk.outcome import RiskAction, RiskOutcome, RiskStatus
from authz_server.stages import PolicyStage


class ScoreModel(Protocol):
    """What replay needs of a candidate model (authz_server.risk.model.AnomalyModel satisfies it)."""

    version: str

    def score(self, row: list[float]) -> tuple[float, Any]: ...


@dataclass(frozen=True)
class VerdictChange:
    decision_id: str
    time: str
    caller: str
    destination: str
    method: str
    path: str
    before_verdict: str
    before_reason: str
    before_policy: str
    after_verdict: str
    after_reason: str
    after_policy: str
    before_score: float | None = None
    after_score: float | None = None
    note: str = ""
    """Why this outcome is less certain than the others, when it is."""


@dataclass
class ReplayReport:
    policy_version: str
    model_version: str | None
    read: ReadStats
    replayed: int = 0
    unchanged: int = 0
    changes: list[VerdictChange] = field(default_factory=list)
    """Calls whose verdict the candidate changes."""
    reason_changes: list[VerdictChange] = field(default_factory=list)
    """Calls with the same verdict for a different reason (e.g. denied by a new deny rule instead of by default)."""
    not_replayed: collections.Counter[str] = field(default_factory=collections.Counter)
    """Lines not decided again, by why (an identity failure, a line missing fields)."""
    redacted_headers: int = 0
    """Replayed lines carrying redacted headers: a rule matching on those headers cannot be replayed exactly."""
    unscored: int = 0
    """Calls the candidate lets through that have no logged risk assessment (policy refused them at the time)."""

    @property
    def transitions(self) -> dict[str, int]:
        counts = collections.Counter(f"{c.before_verdict} -> {c.after_verdict}" for c in self.changes)
        return dict(sorted(counts.items()))

    def to_json(self) -> dict[str, Any]:
        return {
            "policy_version": self.policy_version,
            "model_version": self.model_version,
            "lines": {
                "decisions": self.read.decisions,
                "skipped": self.read.skipped,
                "problems": self.read.problems,
            },
            "replayed": self.replayed,
            "unchanged": self.unchanged,
            "changed": len(self.changes),
            "reasons_changed": len(self.reason_changes),
            "transitions": self.transitions,
            "not_replayed": dict(sorted(self.not_replayed.items())),
            "redacted_headers": self.redacted_headers,
            "unscored": self.unscored,
            "changes": [dataclasses.asdict(c) for c in self.changes],
            "reason_changes": [dataclasses.asdict(c) for c in self.reason_changes],
        }


class RiskBands:
    """Score -> (band, action) with the server's thresholds, as the risk stage maps them."""

    def __init__(self, config: RiskConfig) -> None:
        self._config = config

    def classify(self, score: float, policy: PolicyOutcome) -> tuple[str, RiskAction]:
        ceiling = policy.max_risk if policy.max_risk is not None else self._config.default_max_risk
        return band_for(score, self._config.allow_below, ceiling)


def _policy_label(record: Mapping[str, Any]) -> str:
    policy = record.get("policy")
    return str(policy.get("label", "")) if isinstance(policy, Mapping) else ""


class Replayer:
    def __init__(
        self,
        policies: PolicyStage,
        model: ScoreModel | None = None,
        risk: RiskConfig | None = None,
    ) -> None:
        self.policies = policies
        self.model = model
        self.bands = RiskBands(risk or RiskConfig())

    def _risk(
        self, record: Mapping[str, Any], identity: Identity, policy: PolicyOutcome, report: ReplayReport
    ) -> tuple[RiskOutcome | None, str]:
        logged = logged_risk(record)
        if not policy.allowed:
            return logged, ""  # refused by policy: risk never tightens a denial, so it is irrelevant
        if logged is None:
            report.unscored += 1
            return None, "not scored at the time (policy refused it then): no risk objection assumed"
        if logged.status is not RiskStatus.SCORED or logged.score is None:
            return logged, ""
        # Without a candidate model the logged score stands, but the candidate's risk terms (maxRisk, shadow)
        # still decide what it does: a lowered ceiling must show up as changed verdicts.
        score = logged.score
        model_version = logged.model_version
        if self.model is not None and logged.features:
            score, _errors = self.model.score(list(logged.features))
            model_version = self.model.version
        band, action = self.bands.classify(score, policy)
        logged_policy = record.get("policy") or {}
        # Shadow came either from the declaration (which the candidate may change) or from the server.
        server_shadow = logged.shadow and not logged_policy.get("risk_shadow", False)
        return (
            dataclasses.replace(
                logged,
                score=score,
                band=band,
                action=action,
                model_version=model_version,
                shadow=server_shadow or policy.risk_shadow,
            ),
            "",
        )

    def replay_one(self, record: Mapping[str, Any], report: ReplayReport) -> VerdictChange | None:
        identity = logged_identity(record)
        call = logged_call(record)
        now = call.received_at
        policy = self.policies.evaluate(call, identity, now)
        risk, note = self._risk(record, identity, policy, report)
        decision: Decision = decide(str(record["decision_id"]), identity, policy, risk)
        report.replayed += 1
        if has_redacted_headers(record):
            report.redacted_headers += 1
        before = str(record.get("verdict"))
        before_reason = str(record.get("reason"))
        if decision.verdict.value == before and decision.reason == before_reason:
            report.unchanged += 1
            return None
        request = record.get("request") or {}
        logged = record.get("risk") or {}
        return VerdictChange(
            decision_id=decision.decision_id,
            time=str(record.get("time", "")),
            caller=identity.spiffe_id,
            destination=str(record.get("destination", "")),
            method=str(request.get("method", "")),
            path=str(request.get("path", "")),
            before_verdict=before,
            before_reason=before_reason,
            before_policy=_policy_label(record),
            after_verdict=decision.verdict.value,
            after_reason=decision.reason,
            after_policy=policy.label,
            before_score=logged.get("score") if isinstance(logged, Mapping) else None,
            after_score=risk.score if risk is not None else None,
            note=note,
        )

    def replay(self, records: Iterable[Mapping[str, Any]], read: ReadStats) -> ReplayReport:
        report = ReplayReport(self.policies.version, self.model.version if self.model else None, read)
        for record in records:
            try:
                change = self.replay_one(record, report)
            except NotReplayable as exc:
                report.not_replayed[str(exc)] += 1
                continue
            if change is None:
                continue
            if change.before_verdict != change.after_verdict:
                report.changes.append(change)
            else:
                report.reason_changes.append(change)
        return report

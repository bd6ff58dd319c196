"""`authz-server incidents`: fold denials and high-risk calls into cases an operator can read.

An event is a logged call that was denied (or would have been, in dry-run) or
whose risk score fell in the `high` band. Events of the same caller (the
verified SPIFFE ID; for identity failures the source address, since a
claimed name proves nothing) belong to one incident while each follows the
previous within `window`; a longer quiet gap starts a new incident. With
`split_by_reason`, one caller's events are further split by what was wrong
(reason code and top risk factors). Each incident keeps its evidence: every
decision id, the reasons and factors with counts, the routes touched.

Severity, highest first:
- high: a call denied for risk or quarantine, `burst` or more denials, or
  denials on `probe_routes` or more distinct routes (someone exploring);
- medium: three or more events;
- low: anything else (a one-off denial, usually a misconfiguration).
"""

from __future__ import annotations

import collections
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from authz_server.ops.reconstruct import caller_of

SEVERITIES = ("high", "medium", "low")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """'90s', '5m', '1h', '300' (seconds) -> seconds; raises ValueError naming the text."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"expected a duration such as 30s, 5m or 1h, got {text!r}")
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise ValueError(f"a duration must be > 0, got {text!r}")
    return seconds


@dataclass(frozen=True)
class IncidentRules:
    window_s: float = 300.0
    """A caller's events no further apart than this belong to one incident."""
    min_score: float | None = None
    """Also count calls scoring at least this as high-risk (besides the `high` band and risk denials)."""
    split_by_reason: bool = False
    burst: int = 10
    probe_routes: int = 5
    min_events: int = 1
    """Report only incidents with at least this many events."""


@dataclass
class Incident:
    caller: str
    first_ts: float
    last_ts: float
    first_time: str
    last_time: str
    signature: str = ""
    decision_ids: list[str] = field(default_factory=list)
    denied: int = 0
    dry_run_denied: int = 0
    high_risk: int = 0
    max_score: float | None = None
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    factors: collections.Counter[str] = field(default_factory=collections.Counter)
    routes: collections.Counter[str] = field(default_factory=collections.Counter)
    denied_routes: set[str] = field(default_factory=set)
    destinations: collections.Counter[str] = field(default_factory=collections.Counter)
    policies: collections.Counter[str] = field(default_factory=collections.Counter)
    identity_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    severity: str = "low"

    @property
    def events(self) -> int:
        return len(self.decision_ids)

    @property
    def id(self) -> str:
        """Stable across runs over the same log: derived from the caller and the first decision."""
        digest = hashlib.sha256(f"{self.caller}\n{self.decision_ids[0]}".encode()).hexdigest()
        return f"inc-{digest[:10]}"

    def add(self, record: Mapping[str, Any], ts: float, high_risk: bool) -> None:
        self.decision_ids.append(str(record.get("decision_id")))
        self.last_ts, self.last_time = ts, str(record.get("time", ""))
        verdict = record.get("verdict")
        reason = str(record.get("reason", ""))
        self.reasons[reason] += 1
        request = record.get("request") or {}
        route = f"{request.get('method', '')} {request.get('path', '')}".strip()
        self.routes[route] += 1
        self.destinations[str(record.get("destination", ""))] += 1
        if verdict == "deny":
            self.denied += 1
            self.denied_routes.add(route)
        elif verdict == "dry-run-deny":
            self.dry_run_denied += 1
            self.denied_routes.add(route)
        policy = record.get("policy")
        if isinstance(policy, Mapping) and policy.get("label"):
            rule = policy.get("rule")
            self.policies[f"{policy['label']}" + (f" rule {rule}" if rule else "")] += 1
        error = record.get("identity_error")
        if isinstance(error, Mapping):
            self.identity_errors[str(error.get("reason", ""))] += 1
        risk = record.get("risk")
        if isinstance(risk, Mapping):
            score = risk.get("score")
            if isinstance(score, int | float):
                self.max_score = score if self.max_score is None else max(self.max_score, score)
            for factor in risk.get("factors") or ():
                self.factors[str(factor.get("name", ""))] += 1
        if high_risk:
            self.high_risk += 1

    def grade(self, rules: IncidentRules) -> None:
        denials = self.denied + self.dry_run_denied
        if (
            self.reasons.get("risk", 0)
            or self.reasons.get("quarantined", 0)
            or denials >= rules.burst
            or len(self.denied_routes) >= rules.probe_routes
        ):
            self.severity = "high"
        elif self.events >= 3:
            self.severity = "medium"
        else:
            self.severity = "low"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "severity": self.severity,
            "caller": self.caller,
            "first": self.first_time,
            "last": self.last_time,
            "duration_s": round(self.last_ts - self.first_ts, 3),
            "events": self.events,
            "denied": self.denied,
            "dry_run_denied": self.dry_run_denied,
            "high_risk": self.high_risk,
            "max_score": self.max_score,
            "reasons": dict(self.reasons.most_common()),
            "factors": dict(self.factors.most_common()),
            "routes": dict(self.routes.most_common()),
            "destinations": dict(self.destinations.most_common()),
            "policies": dict(self.policies.most_common()),
            "identity_errors": dict(self.identity_errors.most_common()),
            "decision_ids": list(self.decision_ids),
        }


def is_high_risk(record: Mapping[str, Any], rules: IncidentRules) -> bool:
    risk = record.get("risk")
    if not isinstance(risk, Mapping) or risk.get("status") != "scored":
        return False
    if risk.get("band") == "high" or risk.get("action") == "deny":
        return True
    score = risk.get("score")
    return rules.min_score is not None and isinstance(score, int | float) and score >= rules.min_score


def _signature(record: Mapping[str, Any]) -> str:
    risk = record.get("risk")
    factors = []
    if isinstance(risk, Mapping):
        factors = sorted(str(f.get("name", "")) for f in (risk.get("factors") or ())[:2])
    return "|".join([str(record.get("reason", "")), *factors])


def find_incidents(records: Iterable[Mapping[str, Any]], rules: IncidentRules) -> list[Incident]:
    events: list[tuple[float, int, Mapping[str, Any], bool]] = []
    for order, record in enumerate(records):
        high = is_high_risk(record, rules)
        if record.get("verdict") in ("deny", "dry-run-deny") or high:
            ts = record.get("ts")
            events.append((float(ts) if isinstance(ts, int | float) else 0.0, order, record, high))
    # Several files (rotated, or one per worker) interleave in time; order within a file breaks ties.
    events.sort(key=lambda e: (e[0], e[1]))
    open_incidents: dict[tuple[str, str], Incident] = {}
    done: list[Incident] = []
    for ts, _, record, high in events:
        caller = caller_of(record)
        signature = _signature(record) if rules.split_by_reason else ""
        key = (caller, signature)
        incident = open_incidents.get(key)
        if incident is not None and ts - incident.last_ts > rules.window_s:
            done.append(incident)
            incident = None
        if incident is None:
            time_text = str(record.get("time", ""))
            incident = open_incidents[key] = Incident(caller, ts, ts, time_text, time_text, signature)
        incident.add(record, ts, high)
    done.extend(open_incidents.values())
    kept = [i for i in done if i.events >= rules.min_events]
    for incident in kept:
        incident.grade(rules)
    kept.sort(key=lambda i: (SEVERITIES.index(i.severity), -i.events, i.first_ts))
    return kept


def _top(counter: Mapping[str, int], limit: int = 5) -> str:
    items = sorted(counter.items(), key=lambda kv: -kv[1])
    text = ", ".join(f"{name} x{count}" for name, count in items[:limit])
    return text + (f", +{len(items) - limit} more" if len(items) > limit else "")


def render_text(incidents: list[Incident], events: int, decisions: int, show_ids: int = 20) -> str:
    lines = [f"{len(incidents)} incident(s) from {events} event(s) in {decisions} logged decision(s)"]
    for incident in incidents:
        data = incident.to_json()
        lines.append("")
        lines.append(f"[{incident.severity}] {incident.id}  {incident.caller}")
        lines.append(f"  when:      {incident.first_time} .. {incident.last_time} ({data['duration_s']:g}s)")
        parts = [f"{incident.events} event(s)", f"{incident.denied} denied"]
        if incident.dry_run_denied:
            parts.append(f"{incident.dry_run_denied} dry-run denied")
        if incident.high_risk:
            parts.append(f"{incident.high_risk} high-risk (max score {incident.max_score:.3f})")
        lines.append("  what:      " + ", ".join(parts))
        lines.append(f"  reasons:   {_top(incident.reasons)}")
        if incident.factors:
            lines.append(f"  factors:   {_top(incident.factors)}")
        if incident.identity_errors:
            lines.append(f"  identity:  {_top(incident.identity_errors)}")
        lines.append(f"  routes:    {_top(incident.routes)}")
        lines.append(f"  callees:   {_top(incident.destinations, 3)}")
        if incident.policies:
            lines.append(f"  policies:  {_top(incident.policies, 3)}")
        ids = incident.decision_ids
        more = f" (+{len(ids) - show_ids} more; --json lists all)" if len(ids) > show_ids else ""
        lines.append(f"  evidence:  {' '.join(ids[:show_ids])}{more}")
    return "\n".join(lines) + "\n"

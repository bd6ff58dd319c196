"""Why a call gets the verdict it gets: the deciding rule, and for a denial, why the nearest rules did not match.

Used by `authz-server policy explain` and `policy test`; runs the very same
PolicySet.evaluate the server runs, on a call built from the command line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from spiffe import SpiffeId

from authz_server.call import Call, check_request, parse_call
from authz_server.decision import Verdict, decide
from authz_server.identity.result import Identity, Proof
from authz_server.policy.model import Rule
from authz_server.policy.outcome import Mode, PolicyOutcome, PolicyReason
from authz_server.policy.paths import normalize_path
from authz_server.policy.policyset import PolicySet


def synthetic_call(
    caller: str,
    callee: str,
    method: str,
    target: str,
    headers: Mapping[str, str] | None = None,
    workload_key: str | None = None,
    key_name: str = "workload",
    now: float = 0.0,
) -> tuple[Call, Identity]:
    """A Call as Envoy would describe it, and the verified identity of its caller."""
    parsed = SpiffeId(caller)
    identity = Identity(caller, parsed.trust_domain.name, parsed.path, Proof.CERTIFICATE, None)
    request = check_request(
        request_id="explain",
        source_principal=caller,
        source_address="127.0.0.1",
        destination_principal=callee,
        method=method.upper(),
        target=target,
        scheme="https",
        protocol="HTTP/1.1",
        headers=headers,
        context_extensions={key_name: workload_key} if workload_key else None,
        received_at=now,
    )
    return parse_call(request), identity


@dataclass(frozen=True)
class NearMiss:
    rule: Rule
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Explanation:
    outcome: PolicyOutcome
    verdict: Verdict
    """What the decision stage makes of the outcome before risk (risk only ever tightens it)."""
    deciding_rule: Rule | None
    near_misses: tuple[NearMiss, ...] = field(default=())

    def lines(self) -> list[str]:
        outcome = self.outcome
        out = [f"verdict: {self.verdict} ({outcome.reason.value})", f"policy version: {outcome.version}"]
        if outcome.normalized_path is not None:
            out.append(f"normalised path: {outcome.normalized_path}")
        if outcome.document:
            out.append(f"document: {outcome.document} (mode {outcome.mode.value})")
        rule = self.deciding_rule
        if rule is not None:
            out.append(f"deciding rule: {rule.name} ({rule.action}) at {rule.file}:{rule.line}")
        elif outcome.rule:
            out.append(f"matched: {outcome.rule}")
        if outcome.detail:
            out.append(f"detail: {outcome.detail}")
        hint = _HINTS.get(outcome.reason)
        if hint:
            out.append(hint)
        if outcome.allowed and outcome.max_risk is not None:
            out.append(f"maxRisk: {outcome.max_risk:g}, onRiskTimeout: {outcome.on_risk_timeout.value}")
        if self.near_misses:
            out.append("nearest rules and why they did not match:")
            for miss in self.near_misses:
                rule = miss.rule
                out.append(f"  {rule.name} ({rule.action}, {rule.document}, {rule.file}:{rule.line}):")
                out.extend(f"    - {reason}" for reason in miss.reasons)
        return out


_HINTS = {
    PolicyReason.INVALID_PATH: (
        "the path cannot be normalised safely (encoded slash or backslash, ';' parameters, '..' above the root, "
        "bad percent-encoding or characters outside visible ASCII), so it is refused whatever the rules say"
    ),
    PolicyReason.UNKNOWN_WORKLOAD: "no AllowedCalls declaration names this callee (spec.workload or spec.workloadKey)",
    PolicyReason.NO_POLICY: "the policy set is empty: every call is denied",
}


def _mismatches(rule: Rule, caller: str, call: Call, path: str | None, now: float, enforced: bool) -> list[str]:
    reasons = []
    if not rule.live(now):
        reasons.append("the rule has expired")
    if enforced and rule.mode is Mode.DRY_RUN and not rule.deny:
        reasons.append("the rule is in a dry-run document and this workload has enforced ones")
    if not any(c.matches(caller) for c in rule.callers):
        reasons.append(f"caller {caller} is not in from: {', '.join(str(c) for c in rule.callers)}")
    if path is None:
        return reasons
    # Report the route that comes closest, so the message names the one condition to fix.
    best: list[str] | None = None
    for route in rule.routes:
        route_reasons = []
        if not route.method_matches(call.method):
            route_reasons.append(f"method {call.method} is not one of {route.describe().split(' ')[0]}")
        if not route.path_matches(path):
            patterns = ", ".join(p.text for p in route.all_patterns)
            route_reasons.append(f"path {path} does not match {patterns}")
        for header in route.headers:
            if not header.holds(call.headers):
                route_reasons.append(f"header condition not met: {header}")
        if best is None or len(route_reasons) < len(best):
            best = route_reasons
    return reasons + (best or [])


def explain(policy_set: PolicySet, call: Call, identity: Identity, now: float, nearest: int = 3) -> Explanation:
    outcome = policy_set.evaluate(call, identity, now)
    callee = policy_set.callee(call.destination_principal, call.context_extensions)
    rules = callee.rules if callee is not None else ()
    deciding = next((r for r in rules if r.document == outcome.document and r.name == outcome.rule), None)
    verdict = decide("explain", identity, outcome, None).verdict
    if callee is None or outcome.reason not in (PolicyReason.NO_MATCHING_RULE, PolicyReason.DENIED_BY_RULE):
        return Explanation(outcome, verdict, deciding)
    path = normalize_path(call.path)
    misses = []
    for rule in rules:
        if rule.deny:
            continue
        reasons = _mismatches(rule, identity.spiffe_id, call, path, now, callee.enforced)
        misses.append(NearMiss(rule, tuple(reasons) or ("it matches, but the deny rule above wins",)))
    misses.sort(key=lambda m: len(m.reasons))
    return Explanation(outcome, verdict, deciding, tuple(misses[:nearest]))

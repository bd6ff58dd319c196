"""The decide stage and the authorizer around it: what a dry-run mark, a risk score and a deadline do to a verdict.

Real stages throughout: certificates minted for a throwaway trust domain, declarations compiled from disk, the
bundled ONNX model scoring every call.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.authorizer import Authorizer
from authz_server.decision import Verdict, decide
from authz_server.identity.result import Identity, IdentityFailure, IdentityReason, Proof
from authz_server.policy.outcome import Mode, PolicyOutcome, PolicyReason, RiskTimeoutAction
from authz_server.risk.outcome import RiskAction, RiskOutcome, RiskStatus
from tests.ops.ops_support import CHECKOUT, PAYMENTS, Workspace, read_lines, risk_authorizer, run_log

# An enforced grant with a strict risk ceiling (any score above 0 is too much), and a dry-run proposal that
# would deny refunds: the proposal must not switch the ceiling off for the calls it would deny.
ENFORCED_WITH_DRY_RUN = f"""\
apiVersion: authz-server.dev/v1alpha1
kind: AllowedCalls
metadata: {{name: payments-api, namespace: payments}}
spec:
  workload: {PAYMENTS}
  rules:
    - name: checkout
      from: [{{id: {CHECKOUT}}}]
      to: [{{methods: [POST], paths: [/v1/charges, /v1/refunds/*]}}]
      maxRisk: 0
---
apiVersion: authz-server.dev/v1alpha1
kind: AllowedCalls
metadata: {{name: proposal, namespace: payments}}
spec:
  workload: {PAYMENTS}
  mode: dry-run
  rules:
    - name: no-refunds
      action: deny
      from: [{{id: {CHECKOUT}}}]
      to: [{{methods: [POST], paths: [/v1/refunds/*]}}]
"""


def _status_and_headers(response: bytes) -> tuple[int, dict[str, str]]:
    reply = external_auth_pb2.CheckResponse.FromString(response)
    if reply.HasField("denied_response"):
        denied = reply.denied_response
        return denied.status.code, {h.header.key: h.header.value for h in denied.headers}
    return 200, {h.header.key: h.header.value for h in reply.ok_response.headers}


def test_a_dry_run_deny_never_switches_off_risk_enforcement(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path, declarations=ENFORCED_WITH_DRY_RUN)
    log_path = tmp_path / "decisions.log"
    log = run_log(log_path)
    authorizer = risk_authorizer(workspace, log)
    charge = _status_and_headers(authorizer.check(workspace.request(CHECKOUT, "POST", "/v1/charges")))
    refund = _status_and_headers(authorizer.check(workspace.request(CHECKOUT, "POST", "/v1/refunds/r1")))
    log.close()
    assert charge[0] == 403 and charge[1]["x-authz-reason"] == "risk"
    # On main this was `dry-run-deny`, 200: adding a dry-run document had loosened what is enforced.
    assert refund[0] == 403 and refund[1]["x-authz-reason"] == "risk"
    lines = read_lines(log_path)
    assert [line["verdict"] for line in lines] == ["deny", "deny"]
    assert [line["reason"] for line in lines] == ["risk", "risk"]


def test_a_dry_run_deny_is_still_marked_when_risk_lets_the_call_through(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path, declarations=ENFORCED_WITH_DRY_RUN.replace("maxRisk: 0", "maxRisk: 1"))
    log = run_log(tmp_path / "decisions.log")
    authorizer = risk_authorizer(workspace, log)
    status, headers = _status_and_headers(authorizer.check(workspace.request(CHECKOUT, "POST", "/v1/refunds/r1")))
    log.close()
    assert (status, headers["x-authz-decision"], headers["x-authz-reason"]) == (200, "dry-run-deny", "denied-by-rule")


def test_an_expired_grpc_deadline_decides_on_policy_alone(tmp_path: Path) -> None:
    """The risk budget is clamped to the time the gRPC deadline leaves, less the response margin."""
    workspace = Workspace(tmp_path, declarations=ENFORCED_WITH_DRY_RUN.replace("maxRisk: 0", "maxRisk: 1"))
    log = run_log(tmp_path / "decisions.log")
    authorizer = risk_authorizer(workspace, log)
    margin = authorizer.runtime.deadline_margin_s
    request = workspace.request(CHECKOUT, "POST", "/v1/charges")
    scored = _status_and_headers(authorizer.check(request, time_remaining_s=None))
    clamped = _status_and_headers(authorizer.check(request, time_remaining_s=margin / 2))
    log.close()
    assert scored[0] == 200 and scored[1]["x-authz-risk"] not in ("skipped", "disabled")
    assert clamped[0] == 200 and clamped[1]["x-authz-risk"] == "skipped"


def test_an_expired_deadline_denies_where_the_rule_says_on_risk_timeout_deny(tmp_path: Path) -> None:
    declarations = ENFORCED_WITH_DRY_RUN.replace("maxRisk: 0", "maxRisk: 1\n      onRiskTimeout: deny")
    workspace = Workspace(tmp_path, declarations=declarations)
    log = run_log(tmp_path / "decisions.log")
    authorizer = risk_authorizer(workspace, log)
    status, headers = _status_and_headers(
        authorizer.check(workspace.request(CHECKOUT, "POST", "/v1/charges"), time_remaining_s=0.0)
    )
    log.close()
    assert (status, headers["x-authz-reason"]) == (403, "risk-timeout")


# --- decide() on its own: the precedence README "How a verdict is reached" documents ------------------------

CALLER = Identity(f"{CHECKOUT}", "example.org", "/ns/checkout/sa/checkout", Proof.CERTIFICATE, 2e9)
GRANT = PolicyOutcome(True, PolicyReason.ALLOWED, "v1", "payments/payments-api", "checkout", max_risk=0.5)
DRY_RUN_DENIAL = PolicyOutcome(
    True, PolicyReason.DENIED_BY_RULE, "v1", "payments/proposal", "no-refunds", Mode.DRY_RUN, max_risk=0.5
)
REFUSAL = PolicyOutcome(False, PolicyReason.NO_MATCHING_RULE, "v1", "payments/payments-api")
HIGH = RiskOutcome(RiskStatus.SCORED, 0.95, band="high", action=RiskAction.DENY)
LOW = RiskOutcome(RiskStatus.SCORED, 0.1, band="low", action=RiskAction.ALLOW)
SKIPPED = RiskOutcome(RiskStatus.SKIPPED)


@pytest.mark.parametrize(
    ("policy", "risk", "verdict", "reason", "status"),
    [
        (GRANT, LOW, Verdict.ALLOW, "allowed", 200),
        (GRANT, HIGH, Verdict.DENY, "risk", 403),
        (GRANT, RiskOutcome(RiskStatus.SCORED, 0.95, action=RiskAction.DENY, shadow=True), Verdict.ALLOW, "allowed",
         200),
        (DRY_RUN_DENIAL, LOW, Verdict.DRY_RUN_DENY, "denied-by-rule", 200),
        (DRY_RUN_DENIAL, HIGH, Verdict.DENY, "risk", 403),
        (REFUSAL, LOW, Verdict.DENY, "no-matching-rule", 403),
        (GRANT, SKIPPED, Verdict.ALLOW, "allowed", 200),
        (PolicyOutcome(True, PolicyReason.ALLOWED, "v1", on_risk_timeout=RiskTimeoutAction.DENY), SKIPPED,
         Verdict.DENY, "risk-timeout", 403),
    ],
)  # fmt: skip
def test_decide_precedence(
    policy: PolicyOutcome, risk: RiskOutcome, verdict: Verdict, reason: str, status: int
) -> None:
    decision = decide("d1", CALLER, policy, risk)
    assert (decision.verdict, decision.reason, decision.http_status) == (verdict, reason, status)


def test_decide_refuses_an_unverified_caller_whatever_else_is_known() -> None:
    failure = IdentityFailure(IdentityReason.EXPIRED, "expired an hour ago")
    decision = decide("d1", failure, None, None)
    assert (decision.verdict, decision.reason, decision.http_status) == (Verdict.DENY, "expired", 401)


def _answer(response: bytes) -> tuple[int, list[tuple[str, str]]]:
    """What Envoy acts on: the status and the headers, without the decision id (random per process)."""
    reply = external_auth_pb2.CheckResponse.FromString(response)
    headers = [*reply.ok_response.headers, *reply.denied_response.headers]
    kept = [(h.header.key, h.header.value) for h in headers if h.header.key != "x-authz-decision-id"]
    return reply.status.code, kept


def test_calls_decided_together_get_what_one_at_a_time_gives(tmp_path: Path) -> None:
    """The h2 transport hands over every Check one read completed at once (one model run for them): the answers, the
    risk scores and what the behavioural state learns are those of deciding the same calls one by one."""
    from tests.ops.ops_support import BILLING, INTRUDER

    workspace = Workspace(tmp_path)
    # A burst from one caller over fresh ids (its rate and distinct ids rise call by call) beside other callers'
    # calls, a refusal, a caller without a certificate and a route policy denies: the calls a read carries.
    requests = []
    for k in range(40):
        requests.append(workspace.request(BILLING, "GET", f"/v1/charges/{1000 + k}"))
        if k % 3 == 0:
            requests.append(workspace.request(CHECKOUT, "POST", "/v1/charges"))
        if k % 7 == 0:
            requests.append(workspace.request(INTRUDER, "GET", "/v1/charges/1"))
        if k % 11 == 0:
            requests.append(workspace.request(None))
    now = requests[-1].attributes.request.time.ToNanoseconds() / 1e9

    def authorizer(name: str) -> Authorizer:
        built = risk_authorizer(workspace, run_log(tmp_path / f"{name}.jsonl"))
        return Authorizer(built.runtime, built._sink, clock=lambda: now)

    one_by_one, together = authorizer("one"), authorizer("together")
    expected = [_answer(one_by_one.check(request, 1.0)) for request in requests]
    answers = [_answer(response) for response in together.check_many([(request, 1.0) for request in requests])]

    assert answers == expected
    scores = [dict(headers).get("x-authz-risk") for _, headers in expected if dict(headers).get("x-authz-risk")]
    assert len(set(scores)) > 3, f"the burst moved no score: {scores}"  # else equal answers would prove little

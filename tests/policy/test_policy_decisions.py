"""What the policy stage decides: default deny, deny wins, callers, routes, expiry, quarantine, dry-run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_support import (
    BILLING,
    CHECKOUT,
    EXAMPLES,
    PAYMENTS,
    STRANGER,
    allowed_calls,
    compile_text,
    decide,
    quarantine,
)

from authz_server.policy import Mode, PolicyReason, PolicySet, RiskTimeoutAction, load_policies

PAYMENTS_SPEC = f"""
workload: {PAYMENTS}
rules:
  - name: checkout-charges
    from:
      - id: {CHECKOUT}
      - namespace: billing
    to:
      - methods: [POST]
        paths: [/v1/charges, /v1/refunds/*]
    maxRisk: 0.8
    onRiskTimeout: deny
  - name: reports
    from: [{{prefix: "spiffe://example.org/ns/billing/*"}}]
    to:
      - methods: [GET]
        paths: [/v1/reports/**]
        headers: [{{name: X-Tenant, values: [eu, us]}}]
  - name: public
    from: [{{prefix: "spiffe://example.org/*"}}]
    to: [{{methods: ["*"], paths: ["/public/**"]}}]
  - name: no-admin
    action: deny
    from: [{{prefix: "spiffe://example.org/*"}}]
    to: [{{methods: ["*"], paths: ["/v1/admin/**", "/public/secret"]}}]
"""


@pytest.fixture
def payments(tmp_path: Path) -> PolicySet:
    return compile_text(tmp_path, allowed_calls("payments-api", PAYMENTS_SPEC))


def test_allowed_route_names_document_rule_and_risk_settings(payments: PolicySet) -> None:
    outcome = decide(payments, CHECKOUT, "POST", "/v1/charges")
    assert outcome.allowed and outcome.reason is PolicyReason.ALLOWED
    assert (outcome.document, outcome.rule, outcome.mode) == ("payments/payments-api", "checkout-charges", Mode.ENFORCE)
    assert outcome.max_risk == 0.8 and outcome.on_risk_timeout is RiskTimeoutAction.DENY
    assert outcome.version == payments.version and outcome.normalized_path == "/v1/charges"
    assert outcome.label == f"payments/payments-api@{payments.version}"


@pytest.mark.parametrize(
    ("caller", "method", "path"),
    [
        (CHECKOUT, "GET", "/v1/charges"),  # wrong method
        (CHECKOUT, "POST", "/v1/charges/x"),  # wrong path
        (CHECKOUT, "POST", "/v1/charges/"),  # a trailing slash is another path
        (CHECKOUT, "POST", "/v1/refunds"),  # * needs one segment
        (CHECKOUT, "POST", "/v1/refunds/a/b"),  # and exactly one
        (STRANGER, "POST", "/v1/charges"),  # caller not listed
        ("spiffe://other.org/ns/billing/sa/invoicer", "POST", "/v1/charges"),  # namespace form keeps the callee's TD
        ("spiffe://example.org/ns/billingx/sa/a", "GET", "/v1/reports/1"),  # prefixes are segment-wise
    ],
)
def test_default_deny(payments: PolicySet, caller: str, method: str, path: str) -> None:
    outcome = decide(payments, caller, method, path, headers={"x-tenant": "eu"})
    assert not outcome.allowed
    assert outcome.reason is PolicyReason.NO_MATCHING_RULE and outcome.mode is Mode.ENFORCE
    assert outcome.document == "payments/payments-api" and outcome.rule is None


def test_callers_by_id_namespace_and_prefix(payments: PolicySet) -> None:
    assert decide(payments, BILLING, "POST", "/v1/refunds/r1").rule == "checkout-charges"
    assert decide(payments, "spiffe://example.org/ns/billing/sa/x", "GET", "/v1/reports", headers={"x-tenant": "us"})
    assert decide(payments, STRANGER, "DELETE", "/public/a/b").rule == "public"


def test_double_star_covers_the_path_itself_and_everything_below(payments: PolicySet) -> None:
    for path in ("/v1/reports", "/v1/reports/", "/v1/reports/2026/05"):
        assert decide(payments, BILLING, "GET", path, headers={"x-tenant": "eu"}).allowed, path
    assert not decide(payments, BILLING, "GET", "/v1/reportsx", headers={"x-tenant": "eu"}).allowed


def test_header_conditions(payments: PolicySet) -> None:
    assert decide(payments, BILLING, "GET", "/v1/reports/1", headers={"x-tenant": "eu"}).allowed
    assert not decide(payments, BILLING, "GET", "/v1/reports/1", headers={"x-tenant": "apac"}).allowed
    assert not decide(payments, BILLING, "GET", "/v1/reports/1").allowed


def test_query_string_never_takes_part(payments: PolicySet) -> None:
    outcome = decide(payments, CHECKOUT, "POST", "/v1/charges?x=/v1/admin")
    assert outcome.allowed and outcome.normalized_path == "/v1/charges"


def test_deny_rules_win_over_allow_rules(payments: PolicySet) -> None:
    outcome = decide(payments, STRANGER, "GET", "/public/secret")
    assert not outcome.allowed
    assert (outcome.reason, outcome.rule) == (PolicyReason.DENIED_BY_RULE, "no-admin")


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/v1/charges/../admin/users", PolicyReason.DENIED_BY_RULE),
        ("/v1/%2e%2e/v1/admin", PolicyReason.DENIED_BY_RULE),
        ("//v1/admin", PolicyReason.DENIED_BY_RULE),
        ("/public/../v1/admin/x", PolicyReason.DENIED_BY_RULE),
        ("/public/..;/v1/admin", PolicyReason.INVALID_PATH),
        ("/public;x/../v1/admin", PolicyReason.INVALID_PATH),
        ("/public/a%2F..%2F..%2Fv1/admin", PolicyReason.INVALID_PATH),
        ("/public/%5C../v1/admin", PolicyReason.INVALID_PATH),
        ("/public/../../v1/admin", PolicyReason.INVALID_PATH),
    ],
)
def test_path_confusion_never_reaches_admin(payments: PolicySet, path: str, reason: PolicyReason) -> None:
    outcome = decide(payments, STRANGER, "GET", path)
    assert not outcome.allowed
    assert outcome.reason is reason
    assert outcome.mode is Mode.ENFORCE


def test_normalised_path_is_what_matches(payments: PolicySet) -> None:
    outcome = decide(payments, CHECKOUT, "POST", "//v1/./refunds/%72%31")
    assert outcome.allowed and outcome.normalized_path == "/v1/refunds/r1"


def test_unknown_workload_and_empty_set(tmp_path: Path, payments: PolicySet) -> None:
    other = decide(payments, CHECKOUT, "POST", "/v1/charges", callee="spiffe://example.org/ns/x/sa/y")
    assert (other.allowed, other.reason, other.document) == (False, PolicyReason.UNKNOWN_WORKLOAD, None)
    (tmp_path / "empty").mkdir()
    empty = load_policies([str(tmp_path / "empty")])
    outcome = decide(empty, CHECKOUT, "POST", "/v1/charges")
    assert (outcome.allowed, outcome.reason) == (False, PolicyReason.NO_POLICY)
    assert load_policies([]).version == empty.version


def test_workload_key_for_proxies_without_spiffe_id(tmp_path: Path) -> None:
    spec = """
        workloadKey: legacy-inventory
        rules:
          - name: reads
            from: [{namespace: shop, serviceAccount: orders, trustDomain: example.org}]
            to: [{methods: [GET], paths: ["/stock/*"]}]
        """
    policies = compile_text(tmp_path, allowed_calls("legacy", spec, "shop"))
    orders = "spiffe://example.org/ns/shop/sa/orders"
    extensions = {"workload": "legacy-inventory"}
    assert decide(policies, orders, "GET", "/stock/1", callee="", context_extensions=extensions).allowed
    assert not decide(policies, orders, "GET", "/stock/1", callee="", context_extensions={"workload": "x"}).allowed
    other_sa = "spiffe://example.org/ns/shop/sa/frontend"
    assert not decide(policies, other_sa, "GET", "/stock/1", callee="", context_extensions=extensions).allowed


def test_expired_rules_stop_matching_without_a_reload(tmp_path: Path) -> None:
    expires = time.time() + 60
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
    spec = f"""
        workload: {PAYMENTS}
        rules:
          - name: jit
            from: [{{id: {CHECKOUT}}}]
            to: [{{methods: [GET], paths: [/v1/charges]}}]
            expires: {stamp}
        """
    policies = compile_text(tmp_path, allowed_calls("jit", spec))
    at = int(expires)
    assert decide(policies, CHECKOUT, "GET", "/v1/charges", now=at - 1).allowed
    late = decide(policies, CHECKOUT, "GET", "/v1/charges", now=at)
    assert (late.allowed, late.reason) == (False, PolicyReason.NO_MATCHING_RULE)


def test_quarantine_wins_everywhere_until_it_expires(tmp_path: Path) -> None:
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    entries = f"""
        - id: {CHECKOUT}
          reason: INC-1 leaked key
          expires: {later}
        - prefix: spiffe://example.org/ns/billing/*
          reason: INC-2 namespace compromised
          expires: {later}
        """
    policies = compile_text(tmp_path, allowed_calls("payments-api", PAYMENTS_SPEC), quarantine("incidents", entries))
    outcome = decide(policies, CHECKOUT, "POST", "/v1/charges")
    assert (outcome.allowed, outcome.reason, outcome.mode) == (False, PolicyReason.QUARANTINED, Mode.ENFORCE)
    assert outcome.document == "security/incidents" and outcome.detail == "INC-1 leaked key"
    prefixed = decide(policies, BILLING, "GET", "/v1/reports", headers={"x-tenant": "eu"})
    assert prefixed.reason is PolicyReason.QUARANTINED
    # Everywhere: even for callees with no declaration at all.
    elsewhere = decide(policies, BILLING, "GET", "/", callee="spiffe://example.org/ns/x/sa/y")
    assert elsewhere.reason is PolicyReason.QUARANTINED
    assert decide(policies, STRANGER, "GET", "/public/x").allowed
    assert decide(policies, CHECKOUT, "POST", "/v1/charges", now=time.time() + 7200).allowed


DRY_RUN_SPEC = f"""
workload: {PAYMENTS}
mode: dry-run
riskShadow: true
rules:
  - name: proposed-reads
    from: [{{id: {CHECKOUT}}}]
    to: [{{methods: [GET], paths: ["/v1/charges/*"]}}]
  - name: proposed-deny
    action: deny
    from: [{{id: {CHECKOUT}}}]
    to: [{{methods: [POST], paths: ["/v1/refunds/*"]}}]
"""


def test_dry_run_only_document_lets_would_be_denials_through_marked(tmp_path: Path) -> None:
    policies = compile_text(tmp_path, allowed_calls("proposed", DRY_RUN_SPEC))
    allowed = decide(policies, CHECKOUT, "GET", "/v1/charges/c1")
    assert (allowed.allowed, allowed.mode, allowed.risk_shadow) == (True, Mode.DRY_RUN, True)
    unmatched = decide(policies, STRANGER, "GET", "/v1/charges/c1")
    # Nothing enforced refuses these: through (allowed), carrying the dry-run denial as a mark.
    assert (unmatched.allowed, unmatched.dry_run_denied, unmatched.reason) == (
        True,
        True,
        PolicyReason.NO_MATCHING_RULE,
    )
    denied = decide(policies, CHECKOUT, "POST", "/v1/refunds/r1")
    assert (denied.allowed, denied.dry_run_denied, denied.rule) == (True, True, "proposed-deny")
    # Refusals that are not the document's verdict stay enforced.
    assert decide(policies, CHECKOUT, "GET", "/v1/charges;x").mode is Mode.ENFORCE


def test_dry_run_document_never_loosens_an_enforced_one(tmp_path: Path) -> None:
    policies = compile_text(
        tmp_path, allowed_calls("payments-api", PAYMENTS_SPEC), allowed_calls("proposed", DRY_RUN_SPEC)
    )
    # Enforced documents allow (so `allowed`); the dry-run deny would refuse: a mark beside it.
    canary = decide(policies, CHECKOUT, "POST", "/v1/refunds/r1")
    assert (canary.allowed, canary.dry_run_denied, canary.document, canary.rule) == (
        True,
        True,
        "payments/proposed",
        "proposed-deny",
    )
    assert canary.max_risk == 0.8  # the enforced grant's settings still govern the call
    # The dry-run allow does not open what the enforced documents deny.
    closed = decide(policies, CHECKOUT, "GET", "/v1/charges/c1")
    assert (closed.allowed, closed.mode, closed.reason) == (False, Mode.ENFORCE, PolicyReason.NO_MATCHING_RULE)
    assert decide(policies, CHECKOUT, "POST", "/v1/charges").allowed


def test_several_documents_for_one_workload_add_up(tmp_path: Path) -> None:
    grant = f"""
        workload: {PAYMENTS}
        rules:
          - name: grant
            from: [{{id: {STRANGER}}}]
            to: [{{methods: [GET], paths: [/v1/charges]}}]
        """
    policies = compile_text(tmp_path, allowed_calls("payments-api", PAYMENTS_SPEC), allowed_calls("grant-x", grant))
    assert decide(policies, STRANGER, "GET", "/v1/charges").document == "payments/grant-x"
    assert decide(policies, CHECKOUT, "POST", "/v1/charges").document == "payments/payments-api"


def test_exact_caller_rule_decides_before_prefix_rules(tmp_path: Path) -> None:
    spec = f"""
        workload: {PAYMENTS}
        rules:
          - name: everyone
            from: [{{prefix: "spiffe://example.org/*"}}]
            to: [{{methods: [GET], paths: ["/**"]}}]
            maxRisk: 0.9
          - name: checkout
            from: [{{id: {CHECKOUT}}}]
            to: [{{methods: [GET], paths: ["/v1/**"]}}]
            maxRisk: 0.3
        """
    policies = compile_text(tmp_path, allowed_calls("p", spec))
    outcome = decide(policies, CHECKOUT, "GET", "/v1/x")
    assert (outcome.rule, outcome.max_risk) == ("checkout", 0.3)
    assert decide(policies, STRANGER, "GET", "/v1/x").rule == "everyone"


def test_examples_load_and_decide() -> None:
    policies = load_policies([str(EXAMPLES)])
    assert decide(policies, CHECKOUT, "POST", "/v1/charges").allowed
    assert not decide(policies, BILLING, "GET", "/v1/admin/users").allowed


# --- properties ---------------------------------------------------------------

confusing_segments = st.sampled_from(
    ["", ".", "..", "%2e", "%2e%2e", ".%2E", "admin", "v1", "public", "x", "%61dmin", ";", "..;", "%2f", "%5c", "A"]
)
confusing_paths = st.lists(confusing_segments, max_size=7).map(lambda parts: "/" + "/".join(parts))


@settings(max_examples=300, deadline=None)
@given(confusing_paths)
def test_no_spelling_of_a_denied_path_gets_through(path: str) -> None:
    policies = _property_policies()
    outcome = decide(policies, STRANGER, "GET", path)
    if outcome.allowed:
        normal = outcome.normalized_path
        assert normal is not None and (normal == "/public" or normal.startswith("/public/"))
        assert not (normal == "/v1/admin" or normal.startswith("/v1/admin/")) and normal != "/public/secret"


_CACHED: list[PolicySet] = []


def _property_policies() -> PolicySet:
    if not _CACHED:
        import tempfile

        with tempfile.TemporaryDirectory() as directory:
            _CACHED.append(compile_text(Path(directory), allowed_calls("payments-api", PAYMENTS_SPEC)))
    return _CACHED[0]


# --- path patterns against a segment-by-segment reference -------------------------

pattern_segments = st.lists(st.sampled_from(["a", "b", "v1", "*"]), max_size=4)
path_segments = st.lists(st.sampled_from(["a", "b", "v1", "x", ""]), max_size=5)


def _reference(pattern: list[str], double_star: bool, path: list[str]) -> bool:
    """`*` is one non-empty segment; a final `**` is zero or more further segments (even empty ones)."""
    if len(path) < len(pattern) or (not double_star and len(path) != len(pattern)):
        return False
    head = path[: len(pattern)]
    return all(p == s if p != "*" else s != "" for p, s in zip(pattern, head, strict=True))


@settings(max_examples=300, deadline=None)
@given(pattern_segments, st.booleans(), path_segments)
def test_path_patterns_match_like_the_reference(pattern: list[str], double_star: bool, path: list[str]) -> None:
    from authz_server.policy.matching import PathPattern

    text = "/" + "/".join(pattern + (["**"] if double_star else []))
    if text == "/" and not double_star:
        return
    compiled = PathPattern.parse(text)
    request = "/" + "/".join(path)
    assert compiled.matches(request) == _reference(pattern, double_star, path), (text, request)

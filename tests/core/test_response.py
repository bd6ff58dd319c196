"""The CheckResponse bytes say exactly what the decision says, whichever decisions came before.

response.py caches the encoded pieces that repeat from call to call (per verdict, reason,
caller and policy label) and splices in each call's own id and risk entries; these tests read
the bytes back with the generated protobuf classes and compare them with `annotation_values`,
the decision's x-authz-* values computed without any cache.
"""

from __future__ import annotations

import json

import pytest

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.decision import Decision, decide
from authz_server.identity.result import Identity, IdentityFailure, IdentityReason, Proof
from authz_server.policy.outcome import Mode, PolicyOutcome, PolicyReason
from authz_server.response import METADATA, annotation_values, build_response
from authz_server.risk.outcome import RiskAction, RiskFactor, RiskOutcome, RiskStatus


def _caller(name: str) -> Identity:
    return Identity(f"spiffe://example.org/ns/shop/sa/{name}", "example.org", f"/ns/shop/sa/{name}",
                    Proof.CERTIFICATE, expires_at=2e9)  # fmt: skip


ALLOWED = PolicyOutcome(True, PolicyReason.ALLOWED, "3f2a9c", document="shop/payments", rule="charges")
DRY_RUN = PolicyOutcome(True, PolicyReason.NO_MATCHING_RULE, "3f2a9c", document="shop/payments",
                        mode=Mode.DRY_RUN)  # fmt: skip
REFUSED = PolicyOutcome(False, PolicyReason.NO_MATCHING_RULE, "3f2a9c", document="shop/payments")
FACTORS = (RiskFactor("new_edge", 0.5), RiskFactor("route_rarity", 0.25), RiskFactor("size_vs_norm", 0.125))


def _risk(score: float, action: RiskAction, shadow: bool = False) -> RiskOutcome:
    return RiskOutcome(RiskStatus.SCORED, score, FACTORS, "m1", "band", action, shadow)


def _decisions() -> list[Decision]:
    alice, bob = _caller("alice"), _caller("bob")
    return [
        decide("id-1", alice, ALLOWED, _risk(0.1, RiskAction.ALLOW)),
        decide("id-2", bob, ALLOWED, _risk(0.1, RiskAction.ALLOW)),  # same rule, another caller
        decide("id-3", alice, ALLOWED, _risk(0.55, RiskAction.ANNOTATE)),
        decide("id-4", alice, ALLOWED, _risk(0.97, RiskAction.DENY)),  # denied by risk, 403
        decide("id-5", alice, ALLOWED, _risk(0.97, RiskAction.DENY, shadow=True)),  # shadow: let through
        decide("id-6", bob, ALLOWED, RiskOutcome(RiskStatus.SKIPPED)),
        decide("id-7", bob, ALLOWED, None),
        decide("id-8", alice, DRY_RUN, None),
        decide("id-9", alice, REFUSED, None),
        decide("id-10", IdentityFailure(IdentityReason.EXPIRED, "notAfter 2026-01-01"), None, None),
        decide("x" * 300, alice, ALLOWED, _risk(0.2, RiskAction.ALLOW)),  # lengths past one varint byte
        decide('quote"and\\slash', alice, REFUSED, None),
    ]


def _read_back(wire: bytes) -> tuple[external_auth_pb2.CheckResponse, dict[str, str], dict[str, str]]:
    response = external_auth_pb2.CheckResponse.FromString(wire)
    kind = response.WhichOneof("http_response")
    headers = getattr(response, kind).headers
    assert all(option.append_action == 2 for option in headers)  # OVERWRITE_IF_EXISTS_OR_ADD
    pairs = {option.header.key: option.header.value for option in headers}
    metadata = {key: value.string_value for key, value in response.dynamic_metadata.fields.items()}
    return response, pairs, metadata


@pytest.mark.parametrize("rounds", [1, 3])
def test_every_response_carries_exactly_its_own_decisions_values_in_headers_and_metadata(rounds: int) -> None:
    for _ in range(rounds):  # later rounds are served from the caches the first one filled
        for decision in _decisions():
            response, headers, metadata = _read_back(build_response(decision, {"accept": "*/*"}))
            values = annotation_values(decision)
            expected_headers = dict(values)
            if not decision.verdict.lets_through:
                expected_headers["content-type"] = "application/json"
            assert headers == expected_headers, decision.decision_id
            carried = {k: v for k, v in values.items() if k in METADATA}  # decision, reason, decision id
            assert metadata == {k.removeprefix("x-authz-").replace("-", "_"): v for k, v in carried.items()}
            if decision.verdict.lets_through:
                assert response.status.code == 0
                assert response.ok_response.headers[0].header.key == "x-authz-decision"
            else:
                assert response.status.code == (16 if decision.http_status == 401 else 7)
                assert response.status.message == decision.reason
                assert response.denied_response.status.code == decision.http_status
                assert json.loads(response.denied_response.body) == {
                    "decision": "deny", "reason": decision.reason, "decision_id": decision.decision_id
                }  # fmt: skip


def test_risk_factors_are_shown_when_risk_annotates_denies_or_is_in_shadow_and_never_otherwise() -> None:
    shown = {d.decision_id: "x-authz-risk-factors" in _read_back(build_response(d, {}))[1] for d in _decisions()}
    assert shown["id-1"] is False and shown["id-2"] is False
    assert shown["id-3"] is True and shown["id-5"] is True
    assert _read_back(build_response(_decisions()[2], {}))[1]["x-authz-risk-factors"] == (
        "new_edge=0.50,route_rarity=0.25,size_vs_norm=0.12"
    )


def test_client_sent_x_authz_headers_are_removed_unless_the_response_overwrites_them() -> None:
    with_factors, without = _decisions()[2], _decisions()[0]
    sent = {"x-authz-risk-factors": "forged", "x-authz-risk": "0", "x-authz-forged": "1", "accept": "*/*",
            "my-x-authz-thing": "kept"}  # fmt: skip
    removed_with = list(_read_back(build_response(with_factors, sent))[0].ok_response.headers_to_remove)
    removed_without = list(_read_back(build_response(without, sent))[0].ok_response.headers_to_remove)
    assert removed_with == ["x-authz-forged"]
    assert removed_without == ["x-authz-risk-factors", "x-authz-forged"]
    assert list(_read_back(build_response(without, {"accept": "*/*"}))[0].ok_response.headers_to_remove) == []


def test_underscore_look_alikes_of_the_annotations_are_removed() -> None:
    """CGI/WSGI upstreams read x_authz_source and x-authz-source as one variable, HTTP_X_AUTHZ_SOURCE."""
    allowed = _decisions()[0]
    sent = {"x_authz_source": "spiffe://example.org/ns/admin/sa/root", "x-authz_decision": "allow",
            "x_authz-policy": "forged", "x_request_id": "kept", "accept": "*/*"}  # fmt: skip
    removed = list(_read_back(build_response(allowed, sent))[0].ok_response.headers_to_remove)
    assert removed == ["x_authz_source", "x-authz_decision", "x_authz-policy"]

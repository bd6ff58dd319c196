"""The project's own ext_authz messages against envoy-data-plane's independent classes.

envoy-data-plane is generated from Envoy's published API by another toolchain
(betterproto2); agreeing with it on the wire is agreeing with Envoy.
"""

from __future__ import annotations

import datetime as dt
import json

from envoy_data_plane.envoy.config.core.v3 import Address, SocketAddress
from envoy_data_plane.envoy.service.auth.v3 import (
    AttributeContext,
    AttributeContextHttpRequest,
    AttributeContextPeer,
    AttributeContextRequest,
    AttributeContextTlsSession,
)
from envoy_data_plane.envoy.service.auth.v3 import CheckRequest as EnvoyCheckRequest
from envoy_data_plane.envoy.service.auth.v3 import CheckResponse as EnvoyCheckResponse

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.call import parse_call
from authz_server.decision import decide
from authz_server.identity.result import Identity, IdentityFailure, IdentityReason, Proof
from authz_server.policy.outcome import PolicyOutcome, PolicyReason
from authz_server.response import build_response
from authz_server.risk.outcome import RiskAction, RiskFactor, RiskOutcome, RiskStatus

CERT = "-----BEGIN%20CERTIFICATE-----%0AMIIB...%0A-----END%20CERTIFICATE-----%0A"


def _envoy_request() -> EnvoyCheckRequest:
    return EnvoyCheckRequest(
        attributes=AttributeContext(
            source=AttributeContextPeer(
                address=Address(socket_address=SocketAddress(address="10.1.2.3", port_value=43210)),
                service="checkout",
                labels={"app": "checkout"},
                principal="spiffe://example.org/ns/shop/sa/checkout",
                certificate=CERT,
            ),
            destination=AttributeContextPeer(
                address=Address(socket_address=SocketAddress(address="10.1.2.4", port_value=8443)),
                principal="spiffe://example.org/ns/shop/sa/payments",
            ),
            request=AttributeContextRequest(
                time=dt.datetime(2026, 11, 23, 12, 0, 1, 500000, tzinfo=dt.UTC),
                http=AttributeContextHttpRequest(
                    id="4f1c",
                    method="POST",
                    headers={":path": "/v1/charges?amount=3", "content-type": "application/json", "x-b3": "1"},
                    path="/v1/charges?amount=3#frag",
                    host="payments.shop.svc",
                    scheme="https",
                    protocol="HTTP/2",
                    size=321,
                    body="{}",
                ),
            ),
            context_extensions={"workload": "payments"},
            tls_session=AttributeContextTlsSession(sni="payments.shop.svc"),
        )
    )


def test_a_fully_populated_envoy_check_request_parses_with_every_field_the_server_reads() -> None:
    wire = bytes(_envoy_request())
    call = parse_call(external_auth_pb2.CheckRequest.FromString(wire))

    assert call.request_id == "4f1c"
    assert call.source.principal == "spiffe://example.org/ns/shop/sa/checkout"
    assert call.source.certificate == CERT
    assert (call.source.address, call.source.port) == ("10.1.2.3", 43210)
    assert call.destination_principal == "spiffe://example.org/ns/shop/sa/payments"
    assert call.method == "POST"
    assert call.path == "/v1/charges"
    assert call.query == "amount=3"
    assert call.host == "payments.shop.svc"
    assert call.scheme == "https"
    assert call.protocol == "HTTP/2"
    assert call.headers["content-type"] == "application/json"
    assert dict(call.context_extensions) == {"workload": "payments"}
    assert call.size == 321
    assert call.sni == "payments.shop.svc"
    assert call.received_at == dt.datetime(2026, 11, 23, 12, 0, 1, 500000, tzinfo=dt.UTC).timestamp()


def _identity() -> Identity:
    return Identity(
        "spiffe://example.org/ns/shop/sa/checkout",
        "example.org",
        "/ns/shop/sa/checkout",
        Proof.CERTIFICATE,
        expires_at=2e9,
    )


def test_an_allow_response_reads_back_in_envoy_data_plane_with_the_same_values() -> None:
    policy = PolicyOutcome(True, PolicyReason.ALLOWED, "3f2a9c", document="shop/payments", rule="charges")
    risk = RiskOutcome(
        RiskStatus.SCORED, 0.42, (RiskFactor("distinct_paths", 0.7),), "m1", "annotate", RiskAction.ANNOTATE
    )
    decision = decide("d-1", _identity(), policy, risk)
    ours = build_response(decision, {"x-authz-source": "forged", "x-authz-extra": "1", "accept": "*/*"})

    theirs = EnvoyCheckResponse.parse(ours)
    assert external_auth_pb2.CheckResponse.FromString(ours).ok_response.headers[0].header.key == "x-authz-decision"

    assert theirs.status.code == 0
    assert theirs.denied_response is None
    headers = {h.header.key: (h.header.value, h.append_action.name) for h in theirs.ok_response.headers}
    assert headers == {
        "x-authz-decision": ("allow", "OVERWRITE_IF_EXISTS_OR_ADD"),
        "x-authz-decision-id": ("d-1", "OVERWRITE_IF_EXISTS_OR_ADD"),
        "x-authz-source": ("spiffe://example.org/ns/shop/sa/checkout", "OVERWRITE_IF_EXISTS_OR_ADD"),
        "x-authz-policy": ("shop/payments@3f2a9c", "OVERWRITE_IF_EXISTS_OR_ADD"),
        "x-authz-risk": ("0.420", "OVERWRITE_IF_EXISTS_OR_ADD"),
        "x-authz-risk-factors": ("distinct_paths=0.70", "OVERWRITE_IF_EXISTS_OR_ADD"),
    }
    # Overwritten headers need no removal; every other client-sent x-authz-* header goes.
    assert theirs.ok_response.headers_to_remove == ["x-authz-extra"]
    metadata = theirs.dynamic_metadata.to_dict()
    assert metadata["decision"] == "allow" and metadata["decision_id"] == "d-1"


def test_a_deny_response_reads_back_in_envoy_data_plane_with_status_headers_and_body() -> None:
    decision = decide("d-2", IdentityFailure(IdentityReason.EXPIRED, "notAfter 2026-01-01"), None, None)
    theirs = EnvoyCheckResponse.parse(build_response(decision, {}))

    assert theirs.status.code == 16  # UNAUTHENTICATED
    assert theirs.denied_response.status.code.value == 401
    headers = {h.header.key: h.header.value for h in theirs.denied_response.headers}
    assert headers["x-authz-decision"] == "deny"
    assert headers["x-authz-reason"] == "expired"
    assert headers["x-authz-decision-id"] == "d-2"
    body = json.loads(theirs.denied_response.body)
    assert body == {"decision": "deny", "reason": "expired", "decision_id": "d-2"}
    assert "notAfter" not in theirs.denied_response.body
    assert theirs.dynamic_metadata.to_dict()["reason"] == "expired"

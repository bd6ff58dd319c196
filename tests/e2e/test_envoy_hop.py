"""The ext_authz hop through a real Envoy 1.40 with mTLS, for both gRPC transports.

Envoy's listener requires a client certificate from the test trust domain; its
ext_authz filter calls the server (V3, peer certificate included, fail closed)
and forwards allowed calls to an upstream that echoes the headers it received.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz_server.dev.mesh import TRUST_DOMAIN, LocalMesh

pytestmark = pytest.mark.e2e

CHECKOUT = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/checkout"
FRONTEND = f"spiffe://{TRUST_DOMAIN}/ns/web/sa/frontend"

DECLARATIONS = f"""
apiVersion: authz-server.dev/v1alpha1
kind: AllowedCalls
metadata: {{name: payments, namespace: shop}}
spec:
  workload: spiffe://{TRUST_DOMAIN}/ns/shop/sa/payments
  rules:
    - name: checkout-charges
      from: [{{id: {CHECKOUT}}}]
      to: [{{methods: [GET, POST], paths: [/v1/charges, /v1/charges/*]}}]
"""


@pytest.fixture(scope="module", params=["sync", "aio", "h2"])
def mesh(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    transport = request.param
    with LocalMesh(
        tmp_path_factory.mktemp(f"mesh-{transport}"),
        DECLARATIONS,
        server_config={"transport": transport, "risk": {"enabled": False}},
    ) as running:
        yield running


def test_an_allowed_call_reaches_the_upstream_with_the_annotations(mesh: LocalMesh) -> None:
    reply = mesh.call(CHECKOUT, "POST", "/v1/charges?amount=3", body=b"{}")

    assert reply.status == 200
    seen = reply.upstream_headers
    assert seen["x-authz-decision"] == "allow"
    assert seen["x-authz-source"] == CHECKOUT
    assert seen["x-authz-policy"].startswith("shop/payments@")
    assert seen["x-authz-risk"] == "disabled"
    logged = mesh.logged(seen["x-authz-decision-id"])
    assert logged["verdict"] == "allow"
    assert logged["source"]["spiffe_id"] == CHECKOUT
    assert logged["policy"]["rule"] == "checkout-charges"


def test_client_sent_authz_headers_never_reach_the_upstream(mesh: LocalMesh) -> None:
    forged = {
        "x-authz-source": "spiffe://example.org/ns/kube-system/sa/admin",
        "x-authz-decision": "allow",
        "x-authz-admin": "true",
        "X-Authz-Risk-Factors": "none",
        "x-authz-decision-id": "forged",
    }
    reply = mesh.call(CHECKOUT, "GET", "/v1/charges/ch_1", headers=forged)

    assert reply.status == 200
    seen = reply.upstream_headers
    assert seen["x-authz-source"] == CHECKOUT
    assert "x-authz-admin" not in seen
    assert "x-authz-risk-factors" not in seen
    assert seen["x-authz-decision"] == "allow"
    assert seen["x-authz-decision-id"] not in ("forged", "")
    assert "forged" not in seen["x-authz-decision-id"]


def test_underscore_look_alikes_of_the_annotations_never_reach_the_upstream(mesh: LocalMesh) -> None:
    forged = {"x_authz_source": "spiffe://example.org/ns/admin/sa/root", "x_authz_decision": "allow"}
    reply = mesh.call(CHECKOUT, "GET", "/v1/charges", headers=forged)
    assert reply.status == 200, reply.body
    seen = reply.upstream_headers
    assert seen["x-authz-source"] == CHECKOUT
    assert not [name for name in seen if "_" in name], seen


def test_a_denied_call_gets_status_reason_and_decision_id_and_never_reaches_the_upstream(mesh: LocalMesh) -> None:
    assert mesh.echo is not None
    before = mesh.echo.requests

    reply = mesh.call(FRONTEND, "POST", "/v1/charges")

    assert reply.status == 403
    assert reply.headers["x-authz-decision"] == "deny"
    assert reply.headers["x-authz-reason"] == "no-matching-rule"
    body = reply.json
    assert body == {
        "decision": "deny",
        "reason": "no-matching-rule",
        "decision_id": reply.headers["x-authz-decision-id"],
    }
    assert mesh.echo.requests == before
    logged = mesh.logged(body["decision_id"])
    assert logged["source"]["spiffe_id"] == FRONTEND
    assert logged["http_status"] == 403


def test_envoys_access_log_prints_each_calls_decision_reason_and_id(mesh: LocalMesh) -> None:
    # The three annotations that travel as the filter's dynamic metadata, for allowed and denied calls alike.
    allowed = mesh.call(CHECKOUT, "GET", "/v1/charges/ch_2").upstream_headers["x-authz-decision-id"]
    denied = mesh.call(FRONTEND, "GET", "/v1/charges/ch_2").json["decision_id"]
    expected = [f"decision=allow reason=- decision_id={allowed}", f"decision=deny reason=no-matching-rule "
                f"decision_id={denied}"]  # fmt: skip
    assert mesh.envoy is not None
    log = mesh.envoy.log_path
    deadline = time.monotonic() + 15  # Envoy flushes its stdout access log every second
    while not all(line in log.read_text() for line in expected):
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.2)


def test_a_wrong_method_on_a_granted_path_is_denied(mesh: LocalMesh) -> None:
    reply = mesh.call(CHECKOUT, "DELETE", "/v1/charges/ch_1")
    assert reply.status == 403
    assert reply.headers["x-authz-reason"] == "no-matching-rule"


def test_with_the_server_gone_envoy_fails_closed(tmp_path: Path) -> None:
    with LocalMesh(tmp_path, DECLARATIONS, server_config={"risk": {"enabled": False}}) as mesh:
        assert mesh.call(CHECKOUT, "GET", "/v1/charges").status == 200
        assert mesh.server is not None and mesh.echo is not None
        assert mesh.server.stop() == 0, "a graceful stop exits 0"
        before = mesh.echo.requests

        reply = mesh.call(CHECKOUT, "GET", "/v1/charges")

        assert reply.status == 503, "status_on_error: no decision point is 'not now', never a pass"
        assert mesh.echo.requests == before

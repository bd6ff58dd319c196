"""The policy stage decides, end to end, through a real Envoy 1.40 with mTLS in front of an echo upstream.

Envoy's listener normalises paths itself (normalize_path, merge_slashes, escaped slashes kept unchanged);
the server normalises again and refuses what upstreams read differently, so both layers are exercised.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from authz_server.dev.mesh import TRUST_DOMAIN, LocalMesh, Reply

pytestmark = pytest.mark.e2e

CALLEE = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/payments"
FRONTEND = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/frontend"
SUPPORT = f"spiffe://{TRUST_DOMAIN}/ns/support/sa/oncall"
COMPROMISED = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/frontend-canary"

DECLARATIONS = f"""
apiVersion: authz-server.dev/v1alpha1
kind: AllowedCalls
metadata: {{name: payments, namespace: shop}}
spec:
  workload: {CALLEE}
  rules:
    - name: frontend-orders
      from: [{{id: {FRONTEND}}}, {{id: {COMPROMISED}}}]
      to: [{{methods: [GET, POST], paths: [/orders, "/orders/*"]}}]
    - name: no-admin
      action: deny
      from: [{{prefix: "spiffe://{TRUST_DOMAIN}/*"}}]
      to: [{{methods: ["*"], paths: ["/admin/**"]}}]
---
apiVersion: authz-server.dev/v1alpha1
kind: AllowedCalls
metadata: {{name: payments-proposed, namespace: shop}}
spec:
  workload: {CALLEE}
  mode: dry-run
  rules:
    - name: no-bulk-orders
      action: deny
      from: [{{id: {FRONTEND}}}]
      to: [{{methods: [POST], paths: [/orders/bulk]}}]
---
apiVersion: authz-server.dev/v1alpha1
kind: Quarantine
metadata: {{name: incidents, namespace: security}}
spec:
  entries:
    - id: {COMPROMISED}
      reason: INC-9 leaked key
      expires: 2099-01-01T00:00:00Z
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    with LocalMesh(
        tmp_path_factory.mktemp("policy-mesh"),
        DECLARATIONS,
        callee=CALLEE,
        server_config={"risk": {"enabled": False}, "policy": {"poll_interval_s": 0.2}},
    ) as running:
        yield running


def _upstream_count(mesh: LocalMesh) -> int:
    assert mesh.echo is not None
    return int(mesh.echo.requests)


def _denied(mesh: LocalMesh, reply: Reply, reason: str, before: int) -> dict[str, Any]:
    assert reply.status == 403, reply.body
    assert reply.headers["x-authz-decision"] == "deny"
    assert reply.headers["x-authz-reason"] == reason
    assert reply.json["reason"] == reason
    assert _upstream_count(mesh) == before, "a denied call reached the upstream"
    logged = mesh.logged(reply.headers["x-authz-decision-id"])
    assert logged["policy"]["reason"] == reason
    return logged


def _version(mesh: LocalMesh) -> str:
    reply = mesh.call(FRONTEND, "GET", "/orders")
    label = reply.upstream_headers["x-authz-policy"]
    return str(label.rsplit("@", 1)[1])


def test_allowed_route_reaches_the_upstream_annotated(mesh: LocalMesh) -> None:
    reply = mesh.call(FRONTEND, "GET", "/orders/o-1?expand=items")
    assert reply.status == 200, reply.body
    seen = reply.upstream_headers
    assert seen["x-authz-decision"] == "allow"
    assert seen["x-authz-source"] == FRONTEND
    assert seen["x-authz-policy"].startswith("shop/payments@")
    logged = mesh.logged(seen["x-authz-decision-id"])
    assert (logged["policy"]["document"], logged["policy"]["rule"]) == ("shop/payments", "frontend-orders")


def test_wrong_method(mesh: LocalMesh) -> None:
    before = _upstream_count(mesh)
    _denied(mesh, mesh.call(FRONTEND, "DELETE", "/orders/o-1"), "no-matching-rule", before)


def test_wrong_path(mesh: LocalMesh) -> None:
    before = _upstream_count(mesh)
    _denied(mesh, mesh.call(FRONTEND, "GET", "/orders/o-1/items"), "no-matching-rule", before)


def test_unknown_caller(mesh: LocalMesh) -> None:
    before = _upstream_count(mesh)
    _denied(mesh, mesh.call(SUPPORT, "GET", "/orders"), "no-matching-rule", before)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/orders/../admin/users", "denied-by-rule"),  # Envoy resolves the dot segment; the deny rule wins
        ("/orders/%2e%2e/admin/users", "denied-by-rule"),
        ("//admin/users", "denied-by-rule"),
        # Observed: Envoy 1.40's normalize_path itself reads `..;` as `..` (as Tomcat would), so the server
        # sees /admin/users; the server's own refusal of `;` is covered in test_policy_decisions.py.
        ("/orders/..;/admin/users", "denied-by-rule"),
        ("/orders/o-1;jsessionid=x", "invalid-path"),
        ("/orders/x%2F..%2F..%2Fadmin", "invalid-path"),  # Envoy keeps escaped slashes; the server refuses them
    ],
)
def test_path_confusion_is_refused(mesh: LocalMesh, path: str, reason: str) -> None:
    before = _upstream_count(mesh)
    logged = _denied(mesh, mesh.call(FRONTEND, "GET", path), reason, before)
    assert logged["policy"]["mode"] == "enforce"


def test_quarantined_caller_is_denied_despite_its_grant(mesh: LocalMesh) -> None:
    before = _upstream_count(mesh)
    logged = _denied(mesh, mesh.call(COMPROMISED, "GET", "/orders"), "quarantined", before)
    assert logged["policy"]["detail"] == "INC-9 leaked key"
    assert logged["policy"]["document"] == "security/incidents"


def test_dry_run_document_lets_the_would_be_denial_through_marked(mesh: LocalMesh) -> None:
    before = _upstream_count(mesh)
    reply = mesh.call(FRONTEND, "POST", "/orders/bulk", body=b"[]")
    assert reply.status == 200, reply.body
    assert _upstream_count(mesh) == before + 1
    seen = reply.upstream_headers
    assert seen["x-authz-decision"] == "dry-run-deny"
    assert seen["x-authz-reason"] == "denied-by-rule"
    logged = mesh.logged(seen["x-authz-decision-id"])
    assert logged["verdict"] == "dry-run-deny"
    assert (logged["policy"]["document"], logged["policy"]["rule"]) == ("shop/payments-proposed", "no-bulk-orders")


def test_hot_added_grant_works_then_expires_without_a_reload(mesh: LocalMesh) -> None:
    old_version = _version(mesh)
    expires_at = int(time.time()) + 6
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires_at))
    grant = f"""
apiVersion: authz-server.dev/v1alpha1
kind: AllowedCalls
metadata: {{name: grant-oncall, namespace: shop}}
spec:
  workload: {CALLEE}
  rules:
    - name: grant
      from: [{{id: {SUPPORT}}}]
      to: [{{methods: [GET], paths: [/orders]}}]
      expires: {stamp}
"""
    (mesh.policy_dir / "grant.yaml").write_text(grant)
    deadline = time.monotonic() + 10
    reply = mesh.call(SUPPORT, "GET", "/orders")
    while reply.status != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
        reply = mesh.call(SUPPORT, "GET", "/orders")
    assert reply.status == 200, "the new grant was never loaded"
    assert reply.upstream_headers["x-authz-policy"].startswith("shop/grant-oncall@")
    assert _version(mesh) != old_version
    time.sleep(max(0.0, expires_at - time.time()) + 0.2)
    before = _upstream_count(mesh)
    _denied(mesh, mesh.call(SUPPORT, "GET", "/orders"), "no-matching-rule", before)


def test_invalid_change_keeps_the_last_good_set_serving(mesh: LocalMesh) -> None:
    version = _version(mesh)
    (mesh.policy_dir / "broken.yaml").write_text("apiVersion: authz-server.dev/v1alpha1\nkind: AllowedCalls\n")
    try:
        time.sleep(1.0)  # several poll intervals
        assert _version(mesh) == version
        assert mesh.call(FRONTEND, "GET", "/orders").status == 200
    finally:
        (mesh.policy_dir / "broken.yaml").unlink()

"""From a mesh in dry-run to enforced least privilege, through a real Envoy: the README's adoption path.

A simulated mesh calls one workload while its only declaration is a dry-run catch-all; `policy suggest` turns
the decision log into a declaration; `replay` shows what enforcing it would change; once it is enforced, the
same traffic is all allowed and everything beside it is denied.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from authz_server.dev.mesh import TRUST_DOMAIN, LocalMesh, Reply
from authz_server.dev.trust_domain import TrustDomainCA
from authz_server.policy import load_policies
from tests.policy.policy_support import cli

pytestmark = pytest.mark.e2e

CALLEE = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/payments"
FRONTEND = f"spiffe://{TRUST_DOMAIN}/ns/web/sa/frontend"
INVOICER = f"spiffe://{TRUST_DOMAIN}/ns/billing/sa/invoicer"
CANARY = f"spiffe://{TRUST_DOMAIN}/ns/web/sa/frontend-canary"
SUPPORT = f"spiffe://{TRUST_DOMAIN}/ns/support/sa/oncall"

QUARANTINE = f"""\
apiVersion: authz-server.dev/v1alpha1
kind: Quarantine
metadata: {{name: incidents, namespace: security}}
spec:
  entries:
    - id: {CANARY}
      reason: INC-7 leaked key
      expires: 2099-01-01T00:00:00Z
"""

# Step 1 of the adoption path. Reads are let through by a catch-all allow rule, writes by dry-run itself (as
# would-be denials): both are what the mesh does today, and both count. The deny rule marks what must never
# be granted, whatever the traffic.
ADOPTION = f"""\
apiVersion: authz-server.dev/v1alpha1
kind: AllowedCalls
metadata: {{name: payments-adoption, namespace: shop}}
spec:
  workload: {CALLEE}
  mode: dry-run
  rules:
    - name: no-admin
      action: deny
      from: [{{prefix: "spiffe://{TRUST_DOMAIN}/*"}}]
      to: [{{methods: ["*"], paths: ["/admin/**"]}}]
    - name: reads-while-adopting
      from: [{{prefix: "spiffe://{TRUST_DOMAIN}/*"}}]
      to: [{{methods: [GET], paths: ["/**"]}}]
---
{QUARANTINE}"""

MESH_TRAFFIC = [
    (FRONTEND, "GET", "/orders"),
    (FRONTEND, "GET", "/orders/o-1001"),
    (FRONTEND, "GET", "/orders/o-1002?expand=items"),
    (FRONTEND, "POST", "/orders"),
    (FRONTEND, "POST", "/orders"),
    (INVOICER, "GET", "/invoices/inv_20001"),
    (INVOICER, "PUT", "/invoices/inv_20002"),
    (INVOICER, "GET", "/invoices/inv_20003/pdf"),
]
"""The mesh's ordinary traffic: what the suggestion must keep allowed."""

OUTSIDE = [
    (FRONTEND, "DELETE", "/orders/o-1001"),  # a method never used on that route
    (FRONTEND, "GET", "/orders/o-1001/items"),  # a route never called
    (FRONTEND, "PUT", "/invoices/inv_20002"),  # another caller's route
    (INVOICER, "GET", "/orders"),
    (SUPPORT, "GET", "/orders"),  # a caller never seen
    (FRONTEND, "GET", "/admin/users"),  # called during adoption, but a deny rule named it
]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    with LocalMesh(
        tmp_path_factory.mktemp("suggest-mesh"),
        ADOPTION,
        callee=CALLEE,
        accept_untrusted_clients=True,  # so a forged certificate reaches the server, which refuses it
        server_config={"policy": {"poll_interval_s": 0.2}},
    ) as running:
        yield running


def _decision(reply: Reply) -> tuple[int, str, str]:
    headers = reply.upstream_headers if reply.status == 200 else reply.headers
    return reply.status, headers["x-authz-decision"], headers.get("x-authz-policy", "")


def test_dry_run_traffic_to_suggestion_to_enforcement(mesh: LocalMesh, tmp_path: Path) -> None:
    # 1. Dry-run: everything the mesh does goes through, marked; so do the calls a suggestion must not grant.
    for caller, method, path in MESH_TRAFFIC:
        reply = mesh.call(caller, method, path, body=b"{}" if method in ("POST", "PUT") else None)
        assert reply.status == 200, reply.body
        assert reply.upstream_headers["x-authz-decision"] in ("allow", "dry-run-deny")
    admin = mesh.call(FRONTEND, "GET", "/admin/users")
    assert (admin.status, admin.upstream_headers["x-authz-reason"]) == (200, "denied-by-rule")  # dry-run deny rule
    assert mesh.call(CANARY, "GET", "/orders").status == 403  # quarantine is enforced even in dry-run
    now = dt.datetime.now(dt.UTC)
    forged = TrustDomainCA.create(TRUST_DOMAIN).issue(FRONTEND, not_before=now - dt.timedelta(minutes=5))
    assert mesh.call(mesh.write_svid(forged), "POST", "/orders").status == 401
    last = mesh.call(FRONTEND, "GET", "/orders")
    mesh.logged(last.upstream_headers["x-authz-decision-id"])  # the writer keeps order: every earlier line is in

    # 2. Suggest, into a review directory, compared with what the server loads today.
    review = tmp_path / "review"
    done = cli("policy", "suggest", "--from", str(mesh.decision_log), "--policies", str(mesh.policy_dir),
                "--out", str(review))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "not counted: denied-by-rule 1, identity-failed 1, quarantined 1" in done.stdout, done.stdout
    document, tests = yaml.safe_load_all((review / "shop.payments.yaml").read_text())
    assert tests["kind"] == "AllowedCallsTest" and tests["spec"]["policies"] == ["shop.payments.yaml"]
    assert document["spec"] == {
        "workload": CALLEE,
        "mode": "enforce",
        "rules": [
            {
                "name": "from-billing-invoicer",
                "from": [{"id": INVOICER}],
                "to": [
                    {"methods": ["GET"], "paths": ["/invoices/*/pdf"]},
                    {"methods": ["GET", "PUT"], "paths": ["/invoices/*"]},
                ],
            },
            {
                "name": "from-web-frontend",
                "from": [{"id": FRONTEND}],
                "to": [
                    {"methods": ["GET"], "paths": ["/orders/*"]},
                    {"methods": ["GET", "POST"], "paths": ["/orders"]},
                ],
            },
        ],
    }
    assert cli("policy", "validate", "--strict", str(review)).returncode == 0
    tested = cli("policy", "test", str(review))
    assert tested.returncode == 0, tested.stdout

    # 3. Before enforcing: replay the log under the candidate set. No call the mesh made turns into a denial;
    #    only the one a deny rule named does (and the would-be-denied writes become plain allows).
    candidate = tmp_path / "candidate"
    candidate.mkdir()
    (candidate / "payments.yaml").write_text((review / "shop.payments.yaml").read_text())
    (candidate / "quarantine.yaml").write_text(QUARANTINE)
    replayed = cli("replay", "--log", str(mesh.decision_log), "--policies", str(candidate), "--json")
    assert replayed.returncode == 0, replayed.stderr
    report = json.loads(replayed.stdout)
    assert report["transitions"] == {"dry-run-deny -> allow": 3, "dry-run-deny -> deny": 1}
    (to_deny,) = [c for c in report["changes"] if c["after_verdict"] == "deny"]
    assert (to_deny["path"], to_deny["after_reason"]) == ("/admin/users", "no-matching-rule")

    # 4. Enforce: the suggestion replaces the catch-all.
    (mesh.policy_dir / "payments.yaml").write_text((review / "shop.payments.yaml").read_text())
    (mesh.policy_dir / "declarations.yaml").write_text(QUARANTINE)
    version = load_policies([str(mesh.policy_dir)]).version
    deadline = time.monotonic() + 20
    while _decision(mesh.call(FRONTEND, "GET", "/orders"))[2] != f"shop/payments@{version}":
        assert time.monotonic() < deadline, "the enforced suggestion was never loaded"
        time.sleep(0.1)

    for caller, method, path in MESH_TRAFFIC:
        reply = mesh.call(caller, method, path, body=b"{}" if method in ("POST", "PUT") else None)
        assert _decision(reply) == (200, "allow", f"shop/payments@{version}"), (caller, method, path, reply.body)
    for caller, method, path in OUTSIDE:
        reply = mesh.call(caller, method, path)
        assert reply.status == 403, (caller, method, path)
        assert reply.headers["x-authz-reason"] == "no-matching-rule"
    assert mesh.call(CANARY, "GET", "/orders").headers["x-authz-reason"] == "quarantined"

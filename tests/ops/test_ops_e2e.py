"""Operating the server behind a real Envoy: the decision log, metrics and incidents for traffic through the mesh."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from authz_server.audit.schema import decision_log_schema
from authz_server.cli import main
from authz_server.dev.mesh import TRUST_DOMAIN, LocalMesh, free_port
from tests.ops.test_metrics_health import get, samples, value

pytestmark = pytest.mark.e2e

CALLEE = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/payments"
CHECKOUT = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/checkout"
STOREFRONT = f"spiffe://{TRUST_DOMAIN}/ns/web/sa/storefront"
DECLARATIONS = f"""
apiVersion: authz-server.dev/v1alpha1
kind: AllowedCalls
metadata: {{name: payments, namespace: shop}}
spec:
  workload: {CALLEE}
  rules:
    - name: checkout-charges
      from: [{{id: {CHECKOUT}}}]
      to: [{{methods: [GET, POST], paths: [/v1/charges, /v1/charges/*]}}]
"""
PROBES = ["/admin", "/v1/charges", "/v1/refunds/1", "/.git/config", "/v1/charges/1", "/internal/metrics"]


@pytest.fixture(scope="module")
def mesh_and_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalMesh, int]]:
    """The mesh, and the server's metrics port."""
    port = free_port()
    with LocalMesh(
        tmp_path_factory.mktemp("ops-mesh"),
        DECLARATIONS,
        server_config={"metrics": {"listen": f"127.0.0.1:{port}"}, "log": {"flush_interval_ms": 20}},
    ) as running:
        yield running, port


def wait_lines(mesh: LocalMesh, ids: list[str]) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = {line["decision_id"]: line for line in mesh.decisions()}
        if set(ids) <= set(lines):
            return lines
        time.sleep(0.05)
    raise AssertionError("decisions missing from the log")


def test_calls_through_envoy_are_logged_counted_and_grouped(
    mesh_and_metrics: tuple[LocalMesh, int], capsys: pytest.CaptureFixture[str]
) -> None:
    mesh, port = mesh_and_metrics
    assert get(port, "/readyz")[0] == 200

    allowed = []
    for i in range(4):
        reply = mesh.call(CHECKOUT, "GET", f"/v1/charges/{i}?card=4111111111111111", headers={"authorization": "t0k"})
        assert reply.status == 200
        allowed.append(reply.upstream_headers["x-authz-decision-id"])
    probes = []
    for path in PROBES:
        reply = mesh.call(STOREFRONT, "GET", path)
        assert reply.status == 403
        probes.append(reply.headers["x-authz-decision-id"])

    lines = wait_lines(mesh, allowed + probes)
    validator = jsonschema.Draft202012Validator(decision_log_schema())
    for decision in allowed + probes:
        validator.validate(lines[decision])
    first = lines[allowed[0]]
    assert first["request"]["path"] == "/v1/charges/0" and first["request"]["headers"]["authorization"] == "[redacted]"
    assert first["source"]["spiffe_id"] == CHECKOUT and first["risk"]["status"] in ("scored", "skipped")
    assert "4111111111111111" not in mesh.decision_log.read_text()

    text = get(port, "/metrics")[1]
    counted = sum(v for (name, _), v in samples(text).items() if name == "authz_decisions_total")
    assert counted >= len(allowed) + len(probes)
    assert value(text, "authz_stage_up", stage="risk", state="ok") == 1

    assert main(["incidents", "--log", str(mesh.decision_log), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (storefront,) = [i for i in report["incidents"] if i["caller"] == STOREFRONT]
    assert storefront["decision_ids"] == probes and storefront["severity"] == "high"

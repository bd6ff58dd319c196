"""What a caller sees through a real Envoy when the server cannot decide its call in time: 503, retry later.

`admission.reserve_ms` far above Envoy's 250 ms ext_authz timeout makes every call one whose deadline cannot be
met, so the server answers each at once without deciding it; Envoy must turn that into a 503 with `retry-after`
for the caller and let nothing through to the upstream.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from authz_server.dev.mesh import TRUST_DOMAIN, LocalMesh

pytestmark = pytest.mark.e2e

CHECKOUT = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/checkout"
DECLARATIONS = f"""
apiVersion: authz-server.dev/v1alpha1
kind: AllowedCalls
metadata: {{name: payments, namespace: shop}}
spec:
  workload: spiffe://{TRUST_DOMAIN}/ns/shop/sa/payments
  rules:
    - name: checkout-charges
      from: [{{id: {CHECKOUT}}}]
      to: [{{methods: [GET], paths: [/v1/charges]}}]
"""


@pytest.mark.parametrize("transport", ["aio", "sync", "h2"])
def test_a_call_that_cannot_be_decided_in_time_is_a_503_to_retry_and_never_reaches_the_upstream(
    tmp_path: Path, transport: str
) -> None:
    config = {"transport": transport, "risk": {"enabled": False}, "admission": {"reserve_ms": 60_000}}
    with LocalMesh(tmp_path, DECLARATIONS, server_config=config) as mesh:
        assert mesh.echo is not None
        before = mesh.echo.requests
        reply = mesh.call(CHECKOUT, "GET", "/v1/charges")
        assert reply.status == 503
        assert reply.headers["retry-after"] == "1"
        assert reply.headers["x-authz-reason"] == "overloaded"
        assert reply.json == {"decision": "deny", "reason": "overloaded"}
        assert mesh.echo.requests == before

"""What a caller sees through a real Envoy when the server cannot decide its call in time: 503, retry later.

`admission.reserve_ms` far above Envoy's 250 ms ext_authz timeout makes every call one whose deadline cannot be
met, so the server answers each at once without deciding it; Envoy must turn that into a 503 with `retry-after`
for the caller and let nothing through to the upstream.
"""

from __future__ import annotations

import http.client
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from authz_server.dev.mesh import TRUST_DOMAIN, LocalMesh
from authz_server.envoy.bootstrap import EXT_AUTHZ_CLUSTER

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


OVERFLOWS = ("active", "pending")


def burst(mesh: LocalMesh, caller: str, count: int) -> list[int]:
    """`count` requests sent at once, each on its own connection already through the TLS handshake; the statuses."""
    cert, key = mesh.svid_files(caller)
    context = ssl.create_default_context(cafile=str(mesh.bundle_path))
    context.check_hostname = False
    context.load_cert_chain(str(cert), str(key))
    connections = [
        http.client.HTTPSConnection(mesh.listener.host, mesh.listener.port, context=context, timeout=30)
        for _ in range(count)
    ]
    start = threading.Barrier(count, timeout=30)

    def one(connection: http.client.HTTPSConnection) -> int:
        connection.connect()
        start.wait()
        connection.request("GET", "/v1/charges")
        response = connection.getresponse()
        response.read()
        connection.close()
        return response.status

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, connections))


@pytest.mark.parametrize("transport", ["aio", "h2"])
def test_checks_past_envoys_circuit_breakers_are_refused_by_envoy_at_once_and_never_reach_the_server(
    tmp_path: Path, transport: str
) -> None:
    # The answer to overload that costs the server nothing: Envoy holds at most max_requests Checks at the server and
    # max_pending_requests waiting, and answers the rest status_on_error (503) itself. A 10 s timeout: every 503 here
    # is a refusal by the circuit breakers, none a Check that took too long on a busy machine.
    mesh = LocalMesh(
        tmp_path,
        DECLARATIONS,
        server_config={"transport": transport, "risk": {"enabled": False}},
        authz_timeout_s=10.0,
        authz_max_requests=1,
        authz_max_pending_requests=1,
    )
    with mesh:
        assert mesh.envoy is not None
        assert mesh.call(CHECKOUT, "GET", "/v1/charges").status == 200
        statuses: list[int] = []
        for _ in range(5):  # a burst of 32 on one Envoy worker overflows 1 + 1 at once; more rounds for a slow box
            statuses += burst(mesh, CHECKOUT, 32)
            if 503 in statuses:
                break
        stats = mesh.envoy.stats(f"cluster.{EXT_AUTHZ_CLUSTER}.upstream_rq_")
    # Envoy counts a refusal at max_requests as upstream_rq_active_overflow, one at max_pending_requests as
    # upstream_rq_pending_overflow.
    overflowed = sum(stats.get(f"cluster.{EXT_AUTHZ_CLUSTER}.upstream_rq_{kind}_overflow", 0) for kind in OVERFLOWS)
    decided = [line for line in mesh.decisions() if line.get("decision_id")]
    counts = {status: statuses.count(status) for status in set(statuses)}
    assert set(counts) <= {200, 503}, counts
    assert counts.get(503, 0) > 0, counts
    assert overflowed == counts[503]
    # The server decided the first call and every call that came back 200, nothing else: it never saw the excess.
    assert len(decided) == 1 + counts.get(200, 0)


@pytest.mark.parametrize("transport", ["aio", "h2"])
def test_64_concurrent_requests_through_one_sidecar_are_all_decided_not_refused(tmp_path: Path, transport: str) -> None:
    # 64 concurrent requests make the sidecar keep 64 Checks outstanding at the server (Envoy sends their HEADERS
    # frames first, then their bodies). Deciding them all takes ~64 x 0.5 ms, far inside the timeout; the bounds of
    # 8 + 24 calls refused 27% (h2) to 64% (aio) of such Checks, each a 503 for a request that was allowed. A 10 s
    # timeout: a 503 here is a refusal by the server, not a Check that took too long on a busy machine.
    mesh = LocalMesh(
        tmp_path, DECLARATIONS, server_config={"transport": transport, "risk": {"enabled": False}}, authz_timeout_s=10.0
    )
    with mesh:
        assert mesh.call(CHECKOUT, "GET", "/v1/charges").status == 200
        statuses = burst(mesh, CHECKOUT, 64) + burst(mesh, CHECKOUT, 64)
    assert statuses == [200] * 128, {status: statuses.count(status) for status in set(statuses)}

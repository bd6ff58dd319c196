"""End to end through a real Envoy 1.40: a caller that suddenly enumerates paths is annotated, then denied past its
rule's maxRisk; a steady caller next to it is not. The bundled model, the real policy stage, the real decision log."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from authz_server.dev.mesh import TRUST_DOMAIN, LocalMesh, Reply

pytestmark = pytest.mark.e2e

CALLEE = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/catalog"
STEADY = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/checkout"
PROBER = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/frontend"
WARMUP_S = 15.0
"""Long enough to cover the mesh's start-up and a few seconds of ordinary traffic (it counts from server start)."""
LEARN_S = 4.0
MAX_RISK = 0.6

DECLARATIONS = f"""
apiVersion: authz-server.dev/v1alpha1
kind: AllowedCalls
metadata: {{name: catalog, namespace: shop}}
spec:
  workload: {CALLEE}
  rules:
    - name: checkout-prices
      from: [{{id: {STEADY}}}]
      to: [{{methods: [GET], paths: ["/prices/*"]}}]
    - name: frontend-products
      from: [{{id: {PROBER}}}]
      to: [{{methods: [GET], paths: ["/products/*"]}}]
      maxRisk: {MAX_RISK}
"""
PROBES = ["/admin", "/.env", "/internal/config", "/debug/vars", "/backup", "/api/v1/users", "/actuator/env"]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    # A generous budget: this test is about bands, not about a loaded CI machine missing 2 ms.
    config = {"risk": {"warmup_s": WARMUP_S, "budget_ms": 100}, "policy": {"poll_interval_s": 0.5}}
    with LocalMesh(tmp_path_factory.mktemp("risk-mesh"), DECLARATIONS, callee=CALLEE, server_config=config) as m:
        m.ready_at = time.monotonic()  # type: ignore[attr-defined]
        yield m


def _risk(reply: Reply) -> tuple[float | None, str | None]:
    """Score and factors the upstream received (None when the call did not get through)."""
    if reply.status != 200:
        return None, None
    headers = reply.upstream_headers
    return float(headers["x-authz-risk"]), headers.get("x-authz-risk-factors")



def test_an_enumerating_caller_is_annotated_then_denied_while_a_steady_one_is_not(mesh: LocalMesh) -> None:
    ready_at: float = mesh.ready_at  # type: ignore[attr-defined]
    assert time.monotonic() - ready_at < WARMUP_S - LEARN_S, "the mesh took too long to start for this test"
    # Warm-up (shadow: the server started after ready_at - its start-up, so it is still warming up): both callers
    # go about their business and the server learns the edges.
    while time.monotonic() - ready_at < LEARN_S:
        assert mesh.call(STEADY, "GET", "/prices/7").status == 200
        assert mesh.call(PROBER, "GET", f"/products/{int(time.monotonic() * 10) % 4}").status == 200
        time.sleep(0.1)
    # The warm-up ended at the latest WARMUP_S after ready_at; from here on, scores are enforced.
    time.sleep(max(0.0, ready_at + WARMUP_S + 0.5 - time.monotonic()))

    for i in range(5):
        score, factors = _risk(mesh.call(STEADY, "GET", f"/prices/{7 + i % 2}"))
        assert score is not None and score < 0.3 and factors is None

    annotated: list[tuple[float, str]] = []
    denied: Reply | None = None
    for i in range(300):
        if i % 6 == 3:
            assert mesh.call(PROBER, "GET", PROBES[i % len(PROBES)]).status == 403  # no grant: policy refuses
            continue
        reply = mesh.call(PROBER, "GET", f"/products/{1000 + i}")
        if reply.status == 403:
            denied = reply
            break
        score, factors = _risk(reply)
        assert score is not None
        if factors is not None:
            annotated.append((score, factors))
        if i % 10 == 0:
            steady_score, steady_factors = _risk(mesh.call(STEADY, "GET", "/prices/7"))
            assert steady_score is not None and steady_score < 0.3 and steady_factors is None

    assert annotated, "the enumerating caller was never annotated before it was denied"
    score, factors = annotated[-1]
    assert 0.3 <= score <= MAX_RISK
    names = [f.split("=")[0] for f in factors.split(",")]
    assert len(names) == 3 and {"recent_denies", "distinct_paths", "rate_vs_baseline"} & set(names)

    assert denied is not None, "the enumerating caller was never denied"
    assert denied.json["reason"] == "risk"
    line = mesh.logged(denied.json["decision_id"])
    assert line["verdict"] == "deny" and line["reason"] == "risk"
    risk = line["risk"]
    assert risk["band"] == "high" and risk["score"] > MAX_RISK
    assert risk["model_version"].startswith("ae-v1-") and risk["feature_schema"] == "v1"
    assert len(risk["features"]) == 11 and len(risk["factors"]) == 3

    # The steady caller is still served, unannotated.
    score, factors = _risk(mesh.call(STEADY, "GET", "/prices/8"))
    assert score is not None and score < 0.3 and factors is None

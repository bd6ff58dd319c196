"""The per-decision series as Prometheus reads them: bucket edges, cumulative counts, labels."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.authorizer import StageTimings
from authz_server.call import parse_call
from authz_server.decision import decide
from authz_server.identity.result import IdentityFailure, IdentityReason
from authz_server.observability.metrics import DecisionMetrics


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _observe(metrics: DecisionMetrics, total_us: float) -> None:
    call = parse_call(external_auth_pb2.CheckRequest())
    decision = decide("d1", IdentityFailure(IdentityReason.NO_IDENTITY, "no certificate"), None, None)
    # parse + identity + policy + risk + response = total
    metrics.observe(call, decision, StageTimings(total_us, 0.0, 0.0, 0.0, 0.0))


def test_a_value_on_a_bucket_edge_counts_in_that_bucket_and_every_bucket_above() -> None:
    registry = CollectorRegistry()
    metrics = DecisionMetrics(registry)
    for total_us in (100.0, 100.0, 150.0, 400_000.0):  # 100 µs is exactly the 0.0001 s edge; 0.4 s is past the last
        _observe(metrics, total_us)

    found = _samples(registry)
    bucket = "authz_decision_duration_seconds_bucket"
    assert found[(bucket, (("le", "5e-05"),))] == 0
    assert found[(bucket, (("le", "0.0001"),))] == 2
    assert found[(bucket, (("le", "0.00015"),))] == 3
    assert found[(bucket, (("le", "0.1"),))] == 3
    assert found[(bucket, (("le", "+Inf"),))] == 4
    assert found[("authz_decision_duration_seconds_count", ())] == 4
    assert found[("authz_decision_duration_seconds_sum", ())] == pytest.approx(0.40035)
    assert found[("authz_decisions_total", (("mode", "enforce"), ("reason", "no-identity"), ("verdict", "deny")))] == 4
    # No policy outcome: the policy stage never ran, so it is not observed.
    assert found[("authz_stage_duration_seconds_count", (("stage", "policy"),))] == 0
    assert found[("authz_stage_duration_seconds_count", (("stage", "parse"),))] == 4


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_exposition() -> None:
    registry = CollectorRegistry()
    metrics = DecisionMetrics(registry)
    _observe(metrics, 120.0)
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=generate_latest(registry), capture_output=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

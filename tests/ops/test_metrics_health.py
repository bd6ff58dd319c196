"""Metrics and probes over real HTTP: the series an operator scrapes, and readiness across the lifecycle."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from authz_server.audit.config import LogConfig
from authz_server.audit.log import DecisionLog
from authz_server.authorizer import Authorizer, Runtime
from authz_server.identity.source import IdentitySource
from authz_server.observability.config import MetricsConfig
from authz_server.observability.process import Observability
from authz_server.policy import load_policies
from tests.ops.ops_support import BILLING, CHECKOUT, INTRUDER, Workspace


def get(port: int, path: str) -> tuple[int, str]:
    """Status and body of an HTTP GET; status 0 when nothing listens (yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except (urllib.error.URLError, ConnectionError) as error:
        return 0, str(error)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    found = samples(text)
    assert key in found, f"{name}{labels} not in the scrape"
    return found[key]


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


def test_scraped_metrics_count_every_decision_and_report_the_stages(workspace: Workspace) -> None:
    log = DecisionLog(LogConfig(decisions="off", flush_interval_ms=10))
    identity = IdentitySource(workspace.identity_config)
    ops = Observability(MetricsConfig(listen="127.0.0.1:0"), log, lambda: {"identity": identity.status})
    ops.start()
    log.start()
    try:
        assert ops.port is not None
        verifier = identity.load()
        ops.clock.loaded("identity")
        authorizer = Authorizer(Runtime(identity=verifier, policy=load_policies([str(workspace.policies)])), log)
        for _ in range(7):
            authorizer.check(workspace.request(BILLING, "GET", "/v1/charges/1"))
        for _ in range(3):
            authorizer.check(workspace.request(INTRUDER, "GET", "/v1/charges/1"))
        for _ in range(2):
            authorizer.check(workspace.request(None))
        authorizer.check(workspace.request(CHECKOUT, "POST", "/v1/charges"))
        log.close()  # the writer thread has now fed every decision to the metrics

        status, text = get(ops.port, "/metrics")
        assert status == 200
        assert value(text, "authz_decisions_total", verdict="allow", reason="allowed", mode="enforce") == 8
        assert value(text, "authz_decisions_total", verdict="deny", reason="no-matching-rule", mode="enforce") == 3
        assert value(text, "authz_decisions_total", verdict="deny", reason="no-identity", mode="enforce") == 2
        assert value(text, "authz_decision_duration_seconds_count") == 13
        assert value(text, "authz_stage_duration_seconds_count", stage="identity") == 13
        assert value(text, "authz_stage_duration_seconds_count", stage="policy") == 11
        assert value(text, "authz_decision_log_dropped_total") == 0
        version = identity.status()["version"]
        assert value(text, "authz_stage_info", stage="identity", version=version) == 1
        assert value(text, "authz_stage_up", stage="identity", state="ok") == 1
        # Three callers' certificates, each verified once and then served from the cache.
        assert value(text, "authz_cache_misses_total", cache="identity") == 3
        assert value(text, "authz_cache_hits_total", cache="identity") == 8
        assert value(text, "authz_cache_hit_ratio", cache="identity") == pytest.approx(8 / 11)
        assert 0 <= value(text, "authz_stage_age_seconds", stage="identity") < 60
        assert value(text, "authz_identity_bundle_expiry_timestamp_seconds") > 0
        assert "process_resident_memory_bytes" in text
    finally:
        ops.close()
        identity.close()


def test_readiness_follows_the_lifecycle_and_liveness_stays_up(workspace: Workspace) -> None:
    log = DecisionLog(LogConfig(decisions="off"))
    ops = Observability(MetricsConfig(listen="127.0.0.1:0", process_metrics=False), log, dict)
    ops.start()
    try:
        assert ops.port is not None
        assert get(ops.port, "/healthz") == (200, "ok\n")
        status, body = get(ops.port, "/readyz")
        assert status == 503 and "still loading" in body
        assert value(get(ops.port, "/metrics")[1], "authz_ready") == 0

        ops.readiness.loaded()
        assert get(ops.port, "/readyz")[0] == 200
        assert value(get(ops.port, "/metrics")[1], "authz_ready") == 1

        ops.readiness.stopping()
        status, body = get(ops.port, "/readyz")
        assert status == 503 and "shutting down" in body
        assert get(ops.port, "/healthz")[0] == 200
        assert get(ops.port, "/nowhere")[0] == 404
    finally:
        ops.close()


def test_a_metrics_port_in_use_is_a_clear_error(workspace: Workspace) -> None:
    log = DecisionLog(LogConfig(decisions="off"))
    first = Observability(MetricsConfig(listen="127.0.0.1:0", process_metrics=False), log, dict)
    first.start()
    try:
        taken = f"127.0.0.1:{first.port}"
        second = Observability(MetricsConfig(listen=taken, process_metrics=False), DecisionLog(LogConfig()), dict)
        with pytest.raises(OSError, match=f"metrics.listen: cannot listen on {taken}"):
            second.start()
    finally:
        first.close()

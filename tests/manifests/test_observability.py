"""The observability pack: alerts that promtool accepts and that fire when they should, and a dashboard and rules
whose every metric a live server or a live Envoy really exports.

The names are taken from real scrapes: a LocalMesh (this server behind a real Envoy 1.40, some calls allowed
and some denied) and a second server with the caller check on (`callers.mode: xfcc`, which registers the refusal
counter). A metric renamed in the code, or misspelt in a rule, fails here instead of leaving an alert that can
never fire.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from manifest_support import MANIFESTS, Object, build, container, find, labels_match

from authz_server.dev.mesh import TRUST_DOMAIN, LocalMesh, ServerProcess, free_port

OBSERVABILITY = MANIFESTS / "observability"
PREFIXES = ("authz_", "envoy_", "istio_", "process_", "python_")
DECLARATIONS = MANIFESTS / "base" / "declarations" / "payments-api.yaml"
CALLEE = f"spiffe://{TRUST_DOMAIN}/ns/payments/sa/payments-api"
CALLER = f"spiffe://{TRUST_DOMAIN}/ns/checkout/sa/checkout"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`; .ci/run installs it)")
    return path


def _rules() -> Object:
    return find(build("observability"), "PrometheusRule", "authz-server")


def _rules_file(directory: Path) -> Path:
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": _rules()["spec"]["groups"]}))
    return path


def test_promtool_accepts_the_alert_rules(tmp_path: Path) -> None:
    result = subprocess.run([promtool(), "check", "rules", str(_rules_file(tmp_path))], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alerts_fire_on_trouble_and_stay_quiet_otherwise(tmp_path: Path) -> None:
    _rules_file(tmp_path)
    shutil.copy(OBSERVABILITY / "prometheusrule.test.yaml", tmp_path)
    result = subprocess.run(
        [promtool(), "test", "rules", "prometheusrule.test.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_the_issue_asks_for_are_there() -> None:
    expressions = {r["alert"]: r["expr"] for g in _rules()["spec"]["groups"] for r in g["rules"]}
    wanted = {
        "AuthzExtAuthzErrors": "envoy_http_ext_authz_error",
        "AuthzExtAuthzTimeouts": "envoy_cluster_upstream_rq_timeout",
        "AuthzChecksRefusedBySidecars": "envoy_cluster_upstream_rq_active_overflow",
        "AuthzDenyRateHigh": "by (reason)",
        "AuthzReloadFailing": 'result="failure"',
        "AuthzTrustBundleExpiring": "authz_identity_bundle_expiry_timestamp_seconds",
        "AuthzWorkloadApiLost": "workload_api=",
    }
    for alert, needle in wanted.items():
        assert needle in expressions[alert], alert


def test_istio_sidecars_export_every_cluster_statistic_the_rules_and_the_dashboard_read() -> None:
    # Istio's sidecars export a cluster statistic only when meshConfig's proxyStatsMatcher includes it (Envoy matches
    # the whole name): a rule on one left out could never fire. Istio names the server's cluster after the provider.
    mesh = yaml.safe_load((MANIFESTS / "overlays/istio/istiod-values.yaml").read_text())["meshConfig"]
    (provider,) = mesh["extensionProviders"]
    grpc = provider["envoyExtAuthzGrpc"]
    cluster = f"outbound|{grpc['port']}||{grpc['service']}"
    regexps = mesh["defaultConfig"]["proxyStatsMatcher"]["inclusionRegexps"]
    read = {name for query in _queries() for name in metric_names(query) if name.startswith("envoy_cluster_")}
    assert {"envoy_cluster_upstream_rq_active_overflow", "envoy_cluster_upstream_rq_pending_overflow"} <= read
    missing = [
        name
        for name in sorted(read)
        if not any(re.fullmatch(r, f"cluster.{cluster}.{name.removeprefix('envoy_cluster_')}") for r in regexps)
    ]
    assert not missing
    # The server's cluster only: another upstream's statistics stay out of every sidecar's scrape.
    assert not any(
        re.fullmatch(r, "cluster.outbound|8080||ledger.billing.svc.cluster.local.upstream_rq_timeout") for r in regexps
    )


def _queries() -> list[str]:
    dashboard = json.loads((OBSERVABILITY / "dashboard.json").read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    queries += [r["expr"] for g in _rules()["spec"]["groups"] for r in g["rules"]]
    return queries


def metric_names(query: str) -> set[str]:
    """Metric names a PromQL expression reads (label matchers and grouping labels removed first)."""
    query = re.sub(r"\{[^}]*\}", "", query)
    query = re.sub(r"\b(by|without)\s*\([^)]*\)", "", query)
    return set(re.findall(r"\b(?:" + "|".join(PREFIXES) + r")[a-zA-Z0-9_:]*", query))


def test_metric_name_extraction_ignores_labels() -> None:
    query = 'sum by (envoy_cluster_name) (rate(envoy_a_b{envoy_cluster_name=~"x"}[5m])) / authz_c'
    assert metric_names(query) == {"envoy_a_b", "authz_c"}


def _exported(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    names: set[str] = set()
    port = free_port()
    config = {"metrics": {"listen": f"127.0.0.1:{port}"}, "risk": {"enabled": False}}
    # The shipped example declaration: checkout may POST /v1/charges to payments-api.
    declarations = DECLARATIONS.read_text()
    with LocalMesh(tmp_path_factory.mktemp("scrape-mesh"), declarations, callee=CALLEE, server_config=config) as mesh:
        assert mesh.call(CALLER, "POST", "/v1/charges").status == 200
        assert mesh.call(f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/intruder", "POST", "/v1/charges").status == 403
        assert mesh.envoy is not None
        names |= _exported(_scrape(f"http://127.0.0.1:{port}/metrics"))
        names |= _exported(_scrape(f"{mesh.envoy.admin_url}/stats/prometheus"))
    tmp = tmp_path_factory.mktemp("scrape-callers")
    bundle = mesh.ca.write_bundle(tmp / "bundle.pem")
    port = free_port()
    (tmp / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "identity": {"trust_domains": {TRUST_DOMAIN: {"bundle": str(bundle)}}},
                "metrics": {"listen": f"127.0.0.1:{port}"},
                "log": {"decisions": "off"},
                "risk": {"enabled": False},
                "callers": {"mode": "xfcc"},
            }
        )
    )
    server = ServerProcess(tmp / "config.yaml", free_port(), tmp / "server.log").start()
    try:
        names |= _exported(_scrape(f"http://127.0.0.1:{port}/metrics"))
    finally:
        server.stop()
    yield names


def test_every_metric_the_dashboard_and_the_rules_name_is_exported(exported: set[str]) -> None:
    missing = {}
    for query in _queries():
        names = metric_names(query)
        assert names, f"no metric of ours in {query!r}"
        if names - exported:
            missing[query] = sorted(names - exported)
    assert not missing, "\n".join(f"{names}: {query}" for query, names in missing.items())


def test_the_pod_monitor_scrapes_the_servers_metrics_port() -> None:
    monitor = find(build("observability"), "PodMonitor", "authz-server")
    assert set(monitor["spec"]) == {"selector", "podMetricsEndpoints"}
    pod = find(build("overlays/istio"), "Deployment", "authz-server")["spec"]["template"]
    assert labels_match(monitor["spec"]["selector"], pod["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    ports = {p["name"]: p["containerPort"] for p in container(pod["spec"], "authz-server")["ports"]}
    assert ports[endpoint["port"]] == 9090 and endpoint["path"] == "/metrics"
    # Not through the sidecar: Prometheus needs no mesh certificate.
    assert "9090" in pod["metadata"]["annotations"]["traffic.sidecar.istio.io/excludeInboundPorts"]


def test_the_dashboard_reaches_grafanas_sidecar() -> None:
    config_map = find(build("observability"), "ConfigMap", "authz-server-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["authz-server.json"])
    assert dashboard["uid"] == "authz-server" and len(dashboard["panels"]) >= 10

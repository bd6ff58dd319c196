"""overlays/sidecar: authz-server in each workload's pod, reached by its Envoy over a Unix socket."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml
from manifest_support import MANIFESTS, build, config_show, container, find
from test_manifest_consistency import hardening_problems, network_policy_admits
from test_manifest_schemas import validate_object

from authz_server.envoy.bootstrap import EXT_AUTHZ_CLUSTER
from authz_server.envoy.process import envoy_binary

OVERLAY = "overlays/sidecar"
SERVER = "authz-server"


def _pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = find(objects, "Deployment", "payments-api")["spec"]["template"]["spec"]
    return spec


def _config_map(objects: list[dict[str, Any]], volume: str) -> dict[str, Any]:
    (source,) = [v["configMap"]["name"] for v in _pod(objects)["volumes"] if v["name"] == volume]
    return find(objects, "ConfigMap", source)


def _server_config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(_config_map(objects, "authz-config")["data"]["config.yaml"])
    return config


def _mounts(pod: dict[str, Any], name: str) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in container(pod, name).get("volumeMounts", [])}


def test_every_object_is_valid_and_the_pod_is_hardened() -> None:
    objects = build(OVERLAY)
    problems = [f"{o['kind']}/{o['metadata']['name']}: {p}" for o in objects for p in validate_object(o)]
    problems += hardening_problems(
        "Deployment/payments-api", find(objects, "Deployment", "payments-api")["spec"]["template"]
    )
    assert not problems, "\n".join(problems)


def test_envoy_calls_the_socket_the_server_listens_on_in_a_directory_both_mount() -> None:
    objects = build(OVERLAY)
    pod = _pod(objects)
    listen = _server_config(objects)["listen"]
    assert listen.startswith("unix:/")
    socket = Path(listen.removeprefix("unix:"))

    bootstrap = yaml.safe_load(_config_map(objects, "envoy-config")["data"]["envoy-bootstrap.yaml"])
    (cluster,) = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == EXT_AUTHZ_CLUSTER]
    (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"] == {"pipe": {"path": str(socket)}}

    (volume,) = [v for v in pod["volumes"] if "emptyDir" in v and _mounts(pod, "envoy").get(v["name"])]
    assert _mounts(pod, SERVER)[volume["name"]] == _mounts(pod, "envoy")[volume["name"]] == str(socket.parent)
    # The server makes its socket group-writable; fsGroup is the group both containers get.
    assert pod["securityContext"]["fsGroup"]


def test_the_server_accepts_its_configuration_and_reads_the_mounted_declarations(tmp_path: Path) -> None:
    objects = build(OVERLAY)
    config = tmp_path / "config.yaml"
    config.write_text(_config_map(objects, "authz-config")["data"]["config.yaml"])
    result = config_show(config)
    assert result.returncode == 0, result.stderr
    effective = yaml.safe_load(result.stdout)
    assert effective["workers"] == 1
    pod = _pod(objects)
    mounts = _mounts(pod, SERVER)
    assert effective["policy"]["paths"] == [mounts["authz-declarations"]]
    assert "AllowedCalls" in _config_map(objects, "authz-declarations")["data"]["payments-api.yaml"]
    assert effective["identity"]["workload_api_socket"] == f"unix://{mounts['spiffe-workload-api']}/spire-agent.sock"
    # The kubelet cannot probe a socket file: the probes ask the metrics port's /readyz and /healthz.
    server = container(pod, SERVER)
    port = next(p["containerPort"] for p in server["ports"] if p["name"] == server["readinessProbe"]["httpGet"]["port"])
    assert effective["metrics"]["listen"] == f"0.0.0.0:{port}"
    assert server["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_the_workload_no_longer_claims_the_central_servers_proxy_label() -> None:
    labels = find(build(OVERLAY), "Deployment", "payments-api")["spec"]["template"]["metadata"]["labels"]
    assert "authz-server.dev/proxy" not in labels


def test_envoy_accepts_the_socket_bootstrap() -> None:
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(MANIFESTS / OVERLAY / "envoy-bootstrap.yaml"),
         "--log-level", "error"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_metrics_port_is_open_to_monitoring_only_and_the_server_has_no_network_port() -> None:
    objects = build(OVERLAY)
    policy = find(objects, "NetworkPolicy", "payments-api")
    pod_labels = find(objects, "Deployment", "payments-api")["spec"]["template"]["metadata"]["labels"]
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}
    assert network_policy_admits(policy, 9090, monitoring, {})
    assert not network_policy_admits(policy, 9090, {"kubernetes.io/metadata.name": "payments"}, pod_labels)
    # Checks arrive over the socket only: the server's container publishes no gRPC port.
    assert [p["containerPort"] for p in container(_pod(objects), SERVER)["ports"]] == [9090]

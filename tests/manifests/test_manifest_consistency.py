"""Names, ports and labels agree across objects, and the pods are hardened the way the install guide says."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from manifest_support import (
    MANIFESTS,
    Object,
    build,
    build_with_components,
    container,
    find,
    find_all,
    labels_match,
    pod_templates,
)

from authz_server.envoy.bootstrap import EXT_AUTHZ_FILTER

SERVER = "authz-server"
NAMESPACE = "authz-system"
CONFIG = yaml.safe_load((MANIFESTS / "base" / "config" / "config.yaml").read_text())


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", duration)
    assert match, f"not a duration: {duration!r}"
    value, unit = float(match[1]), match[2]
    return value / 1000 if unit == "ms" else value * 60 if unit == "m" else value


def cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def named_port(pod_container: Object, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in pod_container["ports"] if p["name"] == port]
    return int(number)


@pytest.fixture(scope="module", params=["overlays/istio", "overlays/envoy"])
def objects(request: pytest.FixtureRequest) -> list[Object]:
    return build(request.param)


def server_pod(objects: list[Object]) -> Object:
    template: Object = find(objects, "Deployment", SERVER)["spec"]["template"]
    return template


def test_service_selects_the_server_pods_and_targets_its_ports(objects: list[Object]) -> None:
    service = find(objects, "Service", SERVER)
    pod = server_pod(objects)
    assert labels_match({"matchLabels": service["spec"]["selector"]}, pod["metadata"]["labels"])
    server = container(pod["spec"], SERVER)
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["appProtocol"] == "grpc"
    assert named_port(server, ports["grpc"]["targetPort"]) == port_of(CONFIG["listen"]) == ports["grpc"]["port"]
    assert named_port(server, ports["http-metrics"]["targetPort"]) == port_of(CONFIG["metrics"]["listen"])
    # No other pod of the overlay is selected by accident.
    for name, template in pod_templates(objects):
        if name != f"Deployment/{SERVER}":
            assert not labels_match({"matchLabels": service["spec"]["selector"]}, template["metadata"]["labels"])


def test_probes_ask_the_grpc_health_service_on_the_grpc_port(objects: list[Object]) -> None:
    server = container(server_pod(objects)["spec"], SERVER)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert named_port(server, server[probe]["grpc"]["port"]) == port_of(CONFIG["listen"]), probe
    startup = server["startupProbe"]
    startup_budget_s = startup["periodSeconds"] * startup["failureThreshold"]
    assert startup_budget_s > CONFIG["identity"]["workload_api_start_timeout_s"]


def test_termination_outlasts_pre_stop_and_the_servers_drain(objects: list[Object]) -> None:
    pod = server_pod(objects)["spec"]
    pre_stop = container(pod, SERVER)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + CONFIG["grace_period_s"]


def test_workers_match_the_cpu_limit_and_sizing_is_as_benchmarked(objects: list[Object]) -> None:
    resources = container(server_pod(objects)["spec"], SERVER)["resources"]
    assert CONFIG["workers"] == cpu_cores(resources["limits"]["cpu"])
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"] == "1"


# Resident memory of one worker, measured (benchmarks/RESULTS.md, "Memory at the caps").
BASELINE_MIB = 110  # every stage loaded, after the first calls
IDENTITY_MIB_PER_10K = 5.1 + 8.3  # 10,000 cached results and 10,000 cached failures
RISK_KIB_PER_EDGE = 2.5  # behavioural state, 2 templates learned an edge (benchmarks/bench_risk.py, tracemalloc)
MESSAGE_MIB = 4  # gRPC's receive cap per call in flight (SERVER_OPTIONS)
FRAGMENTATION = 1.25


def test_the_memory_limit_holds_one_worker_at_every_configured_cap(objects: list[Object]) -> None:
    from authz_server.config import load_config

    config = load_config(MANIFESTS / "base" / "config" / "config.yaml", environ={}, overrides={})
    bound = FRAGMENTATION * (
        BASELINE_MIB
        + IDENTITY_MIB_PER_10K * config.identity.cache_size / 10_000
        + config.log.queue_max_bytes / 2**20
        + MESSAGE_MIB * config.admission.max_in_flight
        + RISK_KIB_PER_EDGE * config.risk.max_edges / 1024
    )
    resources = container(server_pod(objects)["spec"], SERVER)["resources"]
    limit = memory_mib(resources["limits"]["memory"])
    assert bound <= limit, f"{bound:.0f} MiB at the configured caps, limit {limit} MiB"
    assert resources["requests"]["memory"] == resources["limits"]["memory"], "Guaranteed: the last pod evicted"


def memory_mib(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * (1024 if unit == "Gi" else 1)


def test_server_reads_its_config_declarations_and_workload_api_from_mounted_volumes(objects: list[Object]) -> None:
    pod = server_pod(objects)["spec"]
    server = container(pod, SERVER)
    mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_path = server["command"][server["command"].index("--config") + 1]
    (config_mount,) = [m for m in server["volumeMounts"] if m["mountPath"] == config_path]
    config_map = find(objects, "ConfigMap", volumes[config_mount["name"]]["configMap"]["name"])
    assert yaml.safe_load(config_map["data"][config_mount["subPath"]]) == CONFIG
    # Declarations must be a directory mount (no subPath), or the kubelet never updates them in place.

    (declarations,) = CONFIG["policy"]["paths"]
    assert not [m for m in server["volumeMounts"] if m["mountPath"] == declarations and "subPath" in m]
    declarations_map = find(objects, "ConfigMap", volumes[mounts[declarations]]["configMap"]["name"])
    kinds = {yaml.safe_load(text)["kind"] for text in declarations_map["data"].values()}
    assert kinds == {"AllowedCalls", "Quarantine"}

    socket = Path(CONFIG["identity"]["workload_api_socket"].removeprefix("unix://"))
    assert volumes[mounts[str(socket.parent)]]["csi"] == {"driver": "csi.spiffe.io", "readOnly": True}


def test_no_volume_is_mounted_inside_another(objects: list[Object]) -> None:
    for name, template in pod_templates(objects):
        for c in template["spec"]["containers"]:
            paths = [m["mountPath"] for m in c.get("volumeMounts", []) if "subPath" not in m]
            nested = [(a, b) for a in paths for b in paths if a != b and b.startswith(a.rstrip("/") + "/")]
            assert not nested, f"{name} container {c['name']}: {nested}"


def test_pdb_and_hpa_target_the_deployment(objects: list[Object]) -> None:
    deployment = find(objects, "Deployment", SERVER)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = find(objects, "PodDisruptionBudget", SERVER)
    assert labels_match(pdb["spec"]["selector"], pod_labels)
    assert pdb["spec"]["maxUnavailable"] < deployment["spec"]["replicas"]
    hpa = find(objects, "HorizontalPodAutoscaler", SERVER)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": SERVER}
    assert hpa["spec"]["minReplicas"] >= deployment["spec"]["replicas"] >= 2


def test_replicas_spread_over_nodes_and_zones(objects: list[Object]) -> None:
    pod = server_pod(objects)
    keys = {c["topologyKey"] for c in pod["spec"]["topologySpreadConstraints"]}
    assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for constraint in pod["spec"]["topologySpreadConstraints"]:
        assert labels_match(constraint["labelSelector"], pod["metadata"]["labels"])


def hardening_problems(name: str, template: Object) -> list[str]:
    spec = template["spec"]
    problems = []
    if spec.get("automountServiceAccountToken") is not False:
        problems.append(f"{name}: mounts a service account token")
    pod_security = spec.get("securityContext", {})
    if pod_security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{name}: seccompProfile is not RuntimeDefault")
    for c in spec["containers"] + spec.get("initContainers", []):
        security = c.get("securityContext", {})
        where = f"{name} container {c['name']}"
        if not (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
            problems.append(f"{where}: may run as root")
        if security.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: writable root filesystem")
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: privilege escalation allowed")
        if security.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{where}: capabilities not all dropped")
        if "limits" not in c.get("resources", {}) or "requests" not in c.get("resources", {}):
            problems.append(f"{where}: no resource requests and limits")
    return problems


def test_every_pod_is_hardened() -> None:
    problems = []
    for overlay in ("overlays/istio", "overlays/envoy"):
        for name, template in pod_templates(build_with_components(overlay, "components/retraining")):
            problems += hardening_problems(f"{overlay} {name}", template)
    assert not problems, "\n".join(problems)


def test_hardening_check_notices_a_root_container() -> None:
    template = server_pod(build("base"))
    container(template["spec"], SERVER)["securityContext"].pop("runAsNonRoot")
    template["spec"]["securityContext"].pop("runAsNonRoot")
    assert hardening_problems("Deployment/authz-server", template)


def network_policy_admits(
    policy: Object, port: int, namespace_labels: dict[str, str], pod_labels: dict[str, str]
) -> bool:
    for rule in policy["spec"]["ingress"]:
        if not any(p["port"] == port for p in rule.get("ports", [])):
            continue
        for peer in rule["from"]:
            namespace_ok = "namespaceSelector" in peer and labels_match(peer["namespaceSelector"], namespace_labels)
            pod_ok = labels_match(peer.get("podSelector", {}), pod_labels)
            if namespace_ok and pod_ok:
                return True
    return False


def test_network_policy_protects_the_server_pods(objects: list[Object]) -> None:
    policy = find(objects, "NetworkPolicy", SERVER)
    assert labels_match(policy["spec"]["podSelector"], server_pod(objects)["metadata"]["labels"])
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    grpc, metrics = port_of(CONFIG["listen"]), port_of(CONFIG["metrics"]["listen"])
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}
    elsewhere = {"kubernetes.io/metadata.name": "default"}
    assert network_policy_admits(policy, metrics, monitoring, {"app": "prometheus"})
    assert not network_policy_admits(policy, metrics, elsewhere, {"app": "prometheus"})
    # A pod without a proxy, anywhere, cannot call Check directly.
    assert not network_policy_admits(policy, grpc, elsewhere, {"app": "curl"})
    assert not network_policy_admits(policy, grpc, monitoring, {"app": "prometheus"})


def test_istio_network_policy_admits_sidecars_and_gateways_only() -> None:
    policy = find(build("overlays/istio"), "NetworkPolicy", SERVER)
    namespace = {"kubernetes.io/metadata.name": "payments", "istio-injection": "enabled"}
    # The label Istio's injector puts on every pod it gives a sidecar.
    assert network_policy_admits(policy, 9191, namespace, {"app": "payments", "security.istio.io/tlsMode": "istio"})
    assert not network_policy_admits(policy, 9191, namespace, {"app": "payments"})
    # Gateways carry no tlsMode label: the classic ingress gateway, and Gateway API gateways (and waypoints).
    system = {"kubernetes.io/metadata.name": "istio-system"}
    assert network_policy_admits(policy, 9191, system, {"app": "istio-ingressgateway", "istio": "ingressgateway"})
    gateway_api = {"gateway.networking.k8s.io/gateway-name": "public", "istio.io/gateway-name": "public"}
    assert network_policy_admits(policy, 9191, {"kubernetes.io/metadata.name": "edge"}, gateway_api)


def test_istio_network_policy_lets_monitoring_scrape_the_sidecars_merged_metrics() -> None:
    policy = find(build("overlays/istio"), "NetworkPolicy", SERVER)
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}
    for port in (15020, 15090):
        assert network_policy_admits(policy, port, monitoring, {"app": "prometheus"})
        assert not network_policy_admits(policy, port, {"kubernetes.io/metadata.name": "default"}, {})


def test_envoy_network_policy_admits_the_example_workloads_sidecar() -> None:
    objects = build("overlays/envoy")
    policy = find(objects, "NetworkPolicy", SERVER)
    workload = find(objects, "Deployment", "payments-api")
    namespace = find(objects, "Namespace", "payments")
    namespace_labels = {**namespace["metadata"].get("labels", {}), "kubernetes.io/metadata.name": "payments"}
    pod_labels = workload["spec"]["template"]["metadata"]["labels"]
    assert network_policy_admits(policy, port_of(CONFIG["listen"]), namespace_labels, pod_labels)


def extension_providers() -> list[Object]:
    istio = MANIFESTS / "overlays" / "istio"
    values = yaml.safe_load((istio / "istiod-values.yaml").read_text())["meshConfig"]["extensionProviders"]
    operator = yaml.safe_load((istio / "istio-operator.yaml").read_text())["spec"]["meshConfig"]["extensionProviders"]
    assert values == operator, "istiod-values.yaml and istio-operator.yaml declare different providers"
    providers: list[Object] = values
    return providers


# The fields of Istio's MeshConfig.ExtensionProvider.EnvoyExternalAuthorizationGrpcProvider (mesh/v1alpha1/
# config.proto); meshConfig is not a CRD, so there is no published schema to validate against.
GRPC_PROVIDER_FIELDS = {"service", "port", "timeout", "failOpen", "statusOnError", "includeRequestBodyInCheck"}


def test_extension_provider_points_at_the_service_and_fails_closed() -> None:
    (provider,) = extension_providers()
    objects = build("overlays/istio")
    service = find(objects, "Service", SERVER)
    grpc = provider["envoyExtAuthzGrpc"]
    assert set(grpc) <= GRPC_PROVIDER_FIELDS, set(grpc) - GRPC_PROVIDER_FIELDS
    namespace = service["metadata"]["namespace"]
    assert grpc["service"] == f"{service['metadata']['name']}.{namespace}.svc.cluster.local"
    (grpc_port,) = [p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert grpc["port"] == grpc_port
    assert grpc["failOpen"] is False
    assert grpc["statusOnError"] == "403"
    # Istio's default (600 s) would hold requests for ten minutes; the server's own budget must fit inside.
    assert CONFIG["risk"]["budget_ms"] / 1000 < seconds(grpc["timeout"]) <= 1.0


def test_custom_authorization_policy_names_the_provider_and_selects_a_workload() -> None:
    (provider,) = extension_providers()
    example = build("overlays/istio/workload-example")
    policy = find(example, "AuthorizationPolicy")
    assert policy["spec"]["action"] == "CUSTOM"
    assert policy["spec"]["provider"]["name"] == provider["name"]
    assert policy["spec"]["selector"]["matchLabels"]
    peer = find(example, "PeerAuthentication")
    assert peer["metadata"]["namespace"] == policy["metadata"]["namespace"]
    assert peer["spec"]["mtls"]["mode"] == "STRICT"


def test_envoy_filter_adds_the_peer_certificate_to_istios_ext_authz_filter() -> None:
    envoy_filter = find(build("overlays/istio"), "EnvoyFilter")
    assert envoy_filter["metadata"]["namespace"] == "istio-system"
    assert "workloadSelector" not in envoy_filter["spec"]
    patch, chain = envoy_filter["spec"]["configPatches"]
    assert patch["applyTo"] == "HTTP_FILTER"
    assert patch["match"]["context"] == "SIDECAR_INBOUND"
    assert patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] == EXT_AUTHZ_FILTER
    assert patch["patch"]["operation"] == "MERGE"
    typed: dict[str, Any] = patch["patch"]["value"]["typed_config"]
    assert typed["@type"].endswith("filters.http.ext_authz.v3.ExtAuthz")
    assert typed["include_peer_certificate"] is True
    # The chain, for leaves under an intermediate CA: in the XFCC element the sidecar appends.
    assert chain["applyTo"] == "NETWORK_FILTER" and chain["match"]["context"] == "SIDECAR_INBOUND"
    assert (
        chain["match"]["listener"]["filterChain"]["filter"]["name"] == "envoy.filters.network.http_connection_manager"
    )
    assert chain["patch"]["operation"] == "MERGE"
    hcm = chain["patch"]["value"]["typed_config"]
    assert hcm["@type"].endswith("http_connection_manager.v3.HttpConnectionManager")
    assert hcm["set_current_client_cert_details"] == {"chain": True}


def test_istio_server_pod_and_peer_authentication() -> None:
    objects = build("overlays/istio")
    namespace = find(objects, "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["istio-injection"] == "enabled"
    peer = find(objects, "PeerAuthentication", SERVER)
    assert labels_match(peer["spec"]["selector"], server_pod(objects)["metadata"]["labels"])
    assert peer["spec"]["mtls"]["mode"] == "STRICT"
    annotations = server_pod(objects)["metadata"]["annotations"]
    # Metrics bypass the sidecar; the gRPC port never does.
    excluded = annotations["traffic.sidecar.istio.io/excludeInboundPorts"].split(",")
    assert str(port_of(CONFIG["metrics"]["listen"])) in excluded
    assert str(port_of(CONFIG["listen"])) not in excluded


def test_declarations_are_hot_reloaded_and_configuration_changes_roll() -> None:
    objects = build("base")
    names = {c["metadata"]["name"] for c in find_all(objects, "ConfigMap")}
    assert "authz-server-declarations" in names, "declarations must keep a stable name to be reloaded in place"
    assert any(re.fullmatch(r"authz-server-config-[a-z0-9]{10}", n) for n in names), names

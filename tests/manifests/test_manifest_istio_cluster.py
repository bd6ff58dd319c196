"""What a real Istio cluster needs beyond schema validity (sources in mesh_manifests/README.md, "Istio notes").

The certificate-source switch, the server's own sidecar under SPIRE, the ALLOW policy a root-namespace
allow-nothing requires, the admission policy that refuses CUSTOM policies which cannot work (a mesh-wide one
would loop; ambient mode drops them), and the caller check. CEL is not evaluated here; the admission policy is
checked against the Kubernetes schema with the other objects, and here for the cases it must name.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from manifest_support import MANIFESTS, Object, build, build_with_components, config_show, container, find, kubectl

from authz_server.envoy.bootstrap import SidecarSpec

COMPONENTS = MANIFESTS / "components" / "istio-certificates"


def _server_pod(objects: list[Object]) -> Object:
    pod: Object = find(objects, "Deployment", "authz-server")["spec"]["template"]
    return pod


def _overlay_components() -> list[str]:
    components: list[str] = yaml.safe_load((MANIFESTS / "overlays/istio/kustomization.yaml").read_text())["components"]
    return components


def test_the_overlay_picks_exactly_one_certificate_source() -> None:
    sources = [c for c in _overlay_components() if "istio-certificates" in c]
    assert sources == ["../../components/istio-certificates/spire"]
    assert sorted(p.name for p in COMPONENTS.iterdir() if (p / "kustomization.yaml").exists()) == ["istio-ca", "spire"]


def test_spire_position_gives_the_servers_own_sidecar_a_spire_svid_and_the_istio_socket_name() -> None:
    pod = _server_pod(build("overlays/istio"))
    assert pod["metadata"]["annotations"]["inject.istio.io/templates"] == "sidecar,spire"
    env = {e["name"]: e.get("value") for e in container(pod["spec"], "authz-server")["env"]}
    # Istio's SPIRE guide: the agent's socket is <dir>/socket; the CSI driver mounts <dir> at /spiffe-workload-api.
    assert env["AUTHZ_IDENTITY_WORKLOAD_API_SOCKET"] == "unix:///spiffe-workload-api/socket"
    mounts = {m["name"]: m["mountPath"] for m in container(pod["spec"], "authz-server")["volumeMounts"]}
    assert mounts["spiffe-workload-api"] == "/spiffe-workload-api"


def _with_istio_ca(tmp_path: Path) -> list[Object]:
    """overlays/istio with the switch turned to istio-ca, as an operator edits it (a copy of the overlay)."""
    tree = tmp_path / "mesh_manifests"
    shutil.copytree(MANIFESTS, tree)
    path = tree / "overlays/istio/kustomization.yaml"
    path.write_text(path.read_text().replace("istio-certificates/spire", "istio-certificates/istio-ca"))
    result = subprocess.run([kubectl(), "kustomize", str(path.parent)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_istio_ca_position_trusts_istiods_published_root_and_needs_no_spire(tmp_path: Path) -> None:
    objects = _with_istio_ca(tmp_path)
    pod = _server_pod(objects)
    assert "inject.istio.io/templates" not in pod["metadata"].get("annotations", {})
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert "spiffe-workload-api" not in volumes, "without SPIRE's CSI driver the pod would never start"
    assert volumes["istio-ca-root-cert"]["configMap"]["name"] == "istio-ca-root-cert"
    server = container(pod["spec"], "authz-server")
    mounts = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}
    assert mounts["istio-ca-root-cert"] == "/etc/istio-ca"
    (config_map,) = [
        o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("authz-server-config")
    ]
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    assert "workload_api_socket" not in config["identity"]
    assert {td["bundle"] for td in config["identity"]["trust_domains"].values()} == {"/etc/istio-ca/root-cert.pem"}
    # The intermediate of a plug-in CA comes in the XFCC Chain of the destination's own sidecar.
    assert config["identity"]["xfcc_trusted_proxies"] == ["destination"]
    written = tmp_path / "config.yaml"
    written.write_text(config_map["data"]["config.yaml"])
    assert config_show(written).returncode == 0


def test_checks_are_allowed_through_the_servers_sidecar_under_a_root_allow_nothing() -> None:
    objects = build("overlays/istio")
    allow = find(objects, "AuthorizationPolicy", "authz-server-checks")
    assert allow["metadata"]["namespace"] == "authz-system" and allow["spec"]["action"] == "ALLOW"
    labels = _server_pod(objects)["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in allow["spec"]["selector"]["matchLabels"].items())
    (rule,) = allow["spec"]["rules"]
    assert rule["to"] == [{"operation": {"ports": ["9191"]}}]
    assert rule["from"] == [{"source": {"principals": ["*"]}}], "only mTLS-authenticated peers"


def test_only_the_proxies_may_ask_in_the_istio_overlay() -> None:
    objects = build("overlays/istio")
    env = {e["name"]: e.get("value") for e in container(_server_pod(objects)["spec"], "authz-server")["env"]}
    assert env["AUTHZ_CALLERS_MODE"] == "xfcc"
    # The plain-Envoy hop carries no identity: there the check stays off (and the server says so at start).
    envoy_env = container(_server_pod(build("overlays/envoy"))["spec"], "authz-server").get("env", [])
    assert "AUTHZ_CALLERS_MODE" not in {e["name"] for e in envoy_env}


def _admission_policy() -> Object:
    return find(build("overlays/istio"), "ValidatingAdmissionPolicy", "authz-server-custom-policies")


def test_admission_policy_watches_authorization_policies_and_is_bound_to_deny() -> None:
    objects = build("overlays/istio")
    policy = _admission_policy()
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["apiGroups"] == ["security.istio.io"] and rule["resources"] == ["authorizationpolicies"]
    assert set(rule["operations"]) == {"CREATE", "UPDATE"}
    assert policy["spec"]["failurePolicy"] == "Fail"
    binding = find(objects, "ValidatingAdmissionPolicyBinding", "authz-server-custom-policies")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("mesh-wide loop", ["istio-system", "variables.attached"]),
        ("policy on the server itself", ["authz-system"]),
        ("ambient namespace", ["istio.io/dataplane-mode", "ambient"]),
    ],
)
def test_admission_policy_refuses_each_custom_policy_that_cannot_work(case: str, words: list[str]) -> None:
    validations = _admission_policy()["spec"]["validations"]
    matching = [v for v in validations if all(w in v["expression"] for w in words)]
    assert len(matching) == 1, case
    assert matching[0]["expression"].startswith("!variables.ours"), "must only concern authz-server's policies"
    assert len(matching[0]["message"]) > 60, "the refusal must say why"


def test_retraining_job_runs_without_a_sidecar_under_istio() -> None:
    objects = build_with_components("overlays/istio", "components/retraining")
    cron = find(objects, "CronJob", "authz-server-retrain")
    labels = cron["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    # An injected (non-native) sidecar never exits, so the Job never completes (Istio 1.22-1.26 defaults).
    assert labels["sidecar.istio.io/inject"] == "false"


def test_callers_sidecars_refuse_checks_past_the_same_circuit_breakers_as_the_rendered_envoy() -> None:
    # The provider's host is where every sidecar's ext_authz cluster points; its DestinationRule sets that cluster's
    # circuit breakers, which must be the ones the Envoy overlays render.
    objects = build("overlays/istio")
    rule = find(objects, "DestinationRule", "authz-server")
    values = yaml.safe_load((MANIFESTS / "overlays/istio/istiod-values.yaml").read_text())
    providers = values["meshConfig"]["extensionProviders"]
    service = next(p["envoyExtAuthzGrpc"]["service"] for p in providers if p["name"] == "authz-server")
    assert rule["spec"]["host"] == service
    assert rule["metadata"]["namespace"] == service.split(".")[1]
    pool = rule["spec"]["trafficPolicy"]["connectionPool"]["http"]
    assert pool == {
        "http2MaxRequests": SidecarSpec.authz_max_requests,
        "http1MaxPendingRequests": SidecarSpec.authz_max_pending_requests,
    }
    assert "tls" not in rule["spec"]["trafficPolicy"]  # Istio's auto mTLS stays on

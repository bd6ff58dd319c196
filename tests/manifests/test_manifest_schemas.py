"""Every kustomization builds, and every object it renders is valid for the API server that will receive it:
core objects against the Kubernetes schemas, Istio objects against Istio's CRDs, ours against our CRDs."""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest
from manifest_support import (
    KUBERNETES_VERSION,
    KUSTOMIZATIONS,
    Object,
    build,
    build_with_components,
    errors,
    find,
    istio_validators,
    project_crd_validators,
)

ISTIO_GROUPS = ("networking.istio.io/", "security.istio.io/", "telemetry.istio.io/", "extensions.istio.io/")


def kubernetes_problems(obj: Object) -> list[str]:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(str(p) for p in exc.path)}: {exc.message}"]
    return []


def validate_object(obj: Object) -> list[str]:
    """Problems with one object, whatever API it belongs to; an API we cannot check is itself a problem."""
    api, kind = obj["apiVersion"], obj["kind"]
    if api.startswith(ISTIO_GROUPS):
        validator = istio_validators().get((api, kind))
        return errors(validator, obj) if validator else [f"no Istio CRD serves {api} {kind}"]
    if api.startswith("authz-server.dev/"):
        validator = project_crd_validators().get((api, kind))
        return errors(validator, obj) if validator else [f"no CRD of ours serves {api} {kind}"]
    try:
        return kubernetes_problems(obj)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no Kubernetes {KUBERNETES_VERSION} schema for {api} {kind}"]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_object_of_every_kustomization_is_valid(kustomization: str) -> None:
    objects = build(kustomization)
    assert objects, f"{kustomization} rendered nothing"
    problems = [f"{o['kind']}/{o['metadata']['name']}: {problem}" for o in objects for problem in validate_object(o)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", ["overlays/istio", "overlays/envoy"])
def test_overlays_with_the_retraining_component_are_valid(overlay: str) -> None:
    objects = build_with_components(overlay, "components/retraining")
    find(objects, "CronJob", "authz-server-retrain")
    problems = [f"{o['kind']}/{o['metadata']['name']}: {problem}" for o in objects for problem in validate_object(o)]
    assert not problems, "\n".join(problems)


def test_kubernetes_validation_catches_a_misspelt_field() -> None:
    deployment = copy.deepcopy(find(build("base"), "Deployment", "authz-server"))
    security = deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    security["readOnlyRootFileSystem"] = security.pop("readOnlyRootFilesystem")
    assert kubernetes_problems(deployment), "a misspelt securityContext field went unnoticed"


def test_istio_validation_catches_a_wrong_value_and_a_misplaced_field() -> None:
    objects = build("overlays/istio")
    peer = copy.deepcopy(find(objects, "PeerAuthentication"))
    peer["spec"]["mtls"]["mode"] = "STRICTER"
    assert validate_object(peer)
    envoy_filter = copy.deepcopy(find(objects, "EnvoyFilter"))
    envoy_filter["spec"]["configPatches"][0]["match"]["contxt"] = "SIDECAR_INBOUND"
    assert validate_object(envoy_filter)


def test_every_namespaced_object_names_its_namespace() -> None:
    cluster_scoped = {
        "Namespace",
        "CustomResourceDefinition",
        "ClusterSPIFFEID",
        "ClusterFederatedTrustDomain",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    for kustomization in KUSTOMIZATIONS:
        for obj in build(kustomization):
            if obj["kind"] not in cluster_scoped:
                assert obj["metadata"].get("namespace"), f"{kustomization}: {obj['kind']}/{obj['metadata']['name']}"

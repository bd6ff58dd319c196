"""spiffe/: the SPIRE registrations give the server and the example workloads the identities the manifests and
declarations expect, and the dev tool mints a trust domain the server accepts."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from manifest_support import (
    MANIFESTS,
    ROOT,
    SPIFFE_DIR,
    build,
    build_path,
    config_show,
    labels_match,
    load_script,
)

from authz_server.dev.trust_domain import TrustDomainCA

MINT = load_script(SPIFFE_DIR / "mint_dev_trust_domain.py", "spiffe_mint_dev_trust_domain")
CONFIG = yaml.safe_load((MANIFESTS / "base" / "config" / "config.yaml").read_text())

_SELECTOR: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
# spire.spiffe.io/v1alpha1 spec fields, as the SPIRE controller manager's CRDs define them (no schema file of
# theirs is vendored here, so the shape is restated and unknown fields are refused).
CLUSTER_SPIFFE_ID_SPEC = {
    "type": "object",
    "additionalProperties": False,
    "required": ["spiffeIDTemplate"],
    "properties": {
        "spiffeIDTemplate": {"type": "string", "pattern": r"^spiffe://"},
        "namespaceSelector": _SELECTOR,
        "podSelector": _SELECTOR,
        "federatesWith": {"type": "array", "items": {"type": "string"}},
        "dnsNameTemplates": {"type": "array", "items": {"type": "string"}},
        "workloadSelectorTemplates": {"type": "array", "items": {"type": "string"}},
        "ttl": {"type": "string"},
        "jwtTtl": {"type": "string"},
        "admin": {"type": "boolean"},
        "downstream": {"type": "boolean"},
        "autoPopulateDNSNames": {"type": "boolean"},
        "className": {"type": "string"},
    },
}
CLUSTER_FEDERATED_TRUST_DOMAIN_SPEC = {
    "type": "object",
    "additionalProperties": False,
    "required": ["trustDomain", "bundleEndpointURL", "bundleEndpointProfile"],
    "properties": {
        "trustDomain": {"type": "string"},
        "bundleEndpointURL": {"type": "string", "pattern": r"^https://"},
        "bundleEndpointProfile": {
            "type": "object",
            "additionalProperties": False,
            "required": ["type"],
            "properties": {
                "type": {"enum": ["https_web", "https_spiffe"]},
                "endpointSPIFFEID": {"type": "string", "pattern": r"^spiffe://"},
            },
        },
        "trustDomainBundle": {"type": "string"},
        "className": {"type": "string"},
    },
}


def spire_objects() -> list[dict[str, Any]]:
    return [doc for path in sorted(SPIFFE_DIR.rglob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())
            if doc and doc.get("apiVersion", "").startswith("spire.spiffe.io/")]  # fmt: skip


def render_template(template: str, trust_domain: str, namespace: str, service_account: str) -> str:
    """The controller manager's Go template, for the fields these registrations use."""
    return (
        template.replace("{{ .TrustDomain }}", trust_domain)
        .replace("{{ .PodMeta.Namespace }}", namespace)
        .replace("{{ .PodSpec.ServiceAccountName }}", service_account)
    )


def test_spire_objects_have_the_controller_managers_shape() -> None:
    objects = spire_objects()
    assert {o["kind"] for o in objects} == {"ClusterSPIFFEID", "ClusterFederatedTrustDomain"}
    for obj in objects:
        assert obj["apiVersion"] == "spire.spiffe.io/v1alpha1"
        schema = CLUSTER_SPIFFE_ID_SPEC if obj["kind"] == "ClusterSPIFFEID" else CLUSTER_FEDERATED_TRUST_DOMAIN_SPEC
        jsonschema.validate(obj["spec"], schema)


def test_spire_shape_check_refuses_a_misspelt_field() -> None:
    spec = dict(spire_objects()[0]["spec"], spiffeIdTemplate="spiffe://x/y")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(spec, CLUSTER_SPIFFE_ID_SPEC)


def registration_for(namespace: str, pod_labels: dict[str, str]) -> list[dict[str, Any]]:
    namespace_labels = {"kubernetes.io/metadata.name": namespace}
    return [
        o for o in spire_objects() if o["kind"] == "ClusterSPIFFEID"
        and labels_match(o["spec"].get("namespaceSelector", {}), namespace_labels)
        and labels_match(o["spec"].get("podSelector", {}), pod_labels)
    ]  # fmt: skip


def test_the_server_pods_get_exactly_one_identity_in_the_configured_trust_domain() -> None:
    deployment = next(o for o in build("base") if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]
    (registration,) = registration_for(deployment["metadata"]["namespace"], pod["metadata"]["labels"])
    (trust_domain,) = CONFIG["identity"]["trust_domains"]
    spiffe_id = render_template(
        registration["spec"]["spiffeIDTemplate"],
        trust_domain,
        deployment["metadata"]["namespace"],
        pod["spec"]["serviceAccountName"],
    )
    assert spiffe_id == f"spiffe://{trust_domain}/ns/authz-system/sa/authz-server"


def test_every_workload_named_in_the_example_declarations_is_registered() -> None:
    declarations = MANIFESTS / "base" / "declarations"
    named: set[str] = set()
    for path in declarations.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "AllowedCalls":
                named.add(doc["spec"]["workload"])
                named |= {c["id"] for rule in doc["spec"]["rules"] for c in rule["from"] if "id" in c}
    assert named
    for spiffe_id in named:
        _, _, id_path = spiffe_id.removeprefix("spiffe://").partition("/")
        _, namespace, _, service_account = id_path.split("/")
        registrations = registration_for(namespace, {"app.kubernetes.io/name": service_account})
        assert len(registrations) == 1, f"{spiffe_id}: {len(registrations)} registrations"
        template = registrations[0]["spec"]["spiffeIDTemplate"]
        assert render_template(template, "example.org", namespace, service_account) == spiffe_id


def test_mint_writes_a_trust_domain_the_server_accepts(tmp_path: Path) -> None:
    ids = ["spiffe://example.org/ns/checkout/sa/checkout", "spiffe://example.org/ns/payments/sa/payments-api"]
    minted = MINT.mint(tmp_path, ids, dt.timedelta(hours=1))
    assert minted.trust_domain == "example.org"
    root = x509.load_pem_x509_certificate(minted.bundle.read_bytes())
    for spiffe_id, (cert_path, key_path) in minted.svids.items():
        leaf = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
        leaf.verify_directly_issued_by(root)
        uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe_id]
        assert key_path.stat().st_mode & 0o077 == 0
    assert sorted(p.name for p in (tmp_path / "svids").iterdir()) == [
        "checkout.checkout.key", "checkout.checkout.pem", "payments.payments-api.key", "payments.payments-api.pem",
    ]  # fmt: skip
    result = config_show(minted.config)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["identity"]["trust_domains"]["example.org"]["bundle"] == str(minted.bundle)


def test_an_svid_from_another_ca_does_not_chain_to_the_minted_bundle(tmp_path: Path) -> None:
    minted = MINT.mint(tmp_path, ["spiffe://example.org/ns/a/sa/b"])
    root = x509.load_pem_x509_certificate(minted.bundle.read_bytes())
    stranger = TrustDomainCA.create("example.org").issue("spiffe://example.org/ns/a/sa/b")
    with pytest.raises((ValueError, InvalidSignature)):
        stranger.certificate.verify_directly_issued_by(root)


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (["spiffe://a.example/x", "spiffe://b.example/y"], "share one trust domain"),
        (["not-a-spiffe-id"], "not-a-spiffe-id"),
    ],
)
def test_mint_cli_refuses_bad_ids_with_a_message(tmp_path: Path, ids: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, str(SPIFFE_DIR / "mint_dev_trust_domain.py"), "--out", str(tmp_path / "td"), *ids],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "td").exists()


@pytest.mark.parametrize("kustomization", ["spiffe", "spiffe/federation"])
def test_spiffe_kustomizations_build_to_spire_objects_only(kustomization: str) -> None:
    objects = build_path(ROOT / kustomization)
    assert objects
    assert {o["apiVersion"] for o in objects} == {"spire.spiffe.io/v1alpha1"}

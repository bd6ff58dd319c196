"""The CEL rules the API server runs, evaluated offline with a CEL interpreter (cel-python).

- The AllowedCalls CRD: exactly one of workload and workloadKey (x-kubernetes-validations, generated from
  authz_server/policy/schema.py, the schema the server validates with).
- crds/admission-policy.yaml: AllowedCalls and Quarantine objects are refused, pointing to the ConfigMap.
- overlays/istio/admission-policy.yaml: CUSTOM policies for authz-server that would loop or be dropped by
  ambient mode are refused; every other AuthorizationPolicy passes.

cel-python implements CEL's core; the Kubernetes extension libraries are not used by these rules.
"""

from __future__ import annotations

from typing import Any

import celpy
import pytest
from celpy.adapter import json_to_cel
from manifest_support import Object, build, find, project_crds

Json = dict[str, Any]


def _evaluate(expression: str, activation: Json) -> Any:
    environment = celpy.Environment()
    program = environment.program(environment.compile(expression))
    return program.evaluate({name: json_to_cel(value) for name, value in activation.items()})


def _allowed_calls_rules() -> list[Json]:
    crd = next(c for c in project_crds() if c["spec"]["names"]["kind"] == "AllowedCalls")
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules: list[Json] = spec["x-kubernetes-validations"]
    return rules


@pytest.mark.parametrize(
    ("spec", "valid"),
    [
        ({"workload": "spiffe://example.org/ns/a/sa/b", "rules": []}, True),
        ({"workloadKey": "legacy-billing", "rules": []}, True),
        ({"workload": "spiffe://example.org/ns/a/sa/b", "workloadKey": "legacy-billing", "rules": []}, False),
        ({"rules": []}, False),
    ],
)
def test_allowed_calls_needs_exactly_one_of_workload_and_workload_key(spec: Json, valid: bool) -> None:
    (rule,) = _allowed_calls_rules()
    assert bool(_evaluate(rule["rule"], {"self": spec})) is valid
    assert "exactly one of workload and workloadKey" in rule["message"]


def test_the_crd_rule_is_the_servers_own() -> None:
    from authz_server.policy import schema

    assert _allowed_calls_rules() == [dict(rule) for rule in schema.ALLOWED_CALLS_CEL_RULES]


def _admit(policy: Object, obj: Json, namespace: Json | None = None) -> list[str]:
    """The messages of the validations that refuse `obj` (empty: admitted)."""
    activation: Json = {"object": obj, "namespaceObject": namespace}
    variables = {v["name"]: _evaluate(v["expression"], activation) for v in policy["spec"].get("variables", [])}
    activation["variables"] = {k: bool(v) for k, v in variables.items()}
    refused = []
    for validation in policy["spec"]["validations"]:
        if not _evaluate(validation["expression"], activation):
            message = validation.get("message")
            if "messageExpression" in validation:
                message = str(_evaluate(validation["messageExpression"], activation))
            refused.append(message)
    return refused


def test_allowed_calls_and_quarantines_are_refused_with_the_configmap_path() -> None:
    policy = find(build("crds"), "ValidatingAdmissionPolicy")
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert set(rule["resources"]) == {"allowedcalls", "quarantines"}
    quarantine = {"kind": "Quarantine", "metadata": {"name": "incident-7"}, "spec": {"entries": []}}
    (message,) = _admit(policy, quarantine)
    assert message.startswith("Quarantine incident-7 passed the schema")
    assert "mesh_manifests/base/declarations/" in message and "authz-server-declarations" in message
    binding = find(build("crds"), "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"] and binding["spec"]["validationActions"] == [
        "Deny"
    ]


def _authorization_policy(namespace: str, provider: str = "authz-server", **spec: Any) -> Json:
    body: Json = {"action": "CUSTOM", "provider": {"name": provider}, **spec}
    return {"kind": "AuthorizationPolicy", "metadata": {"name": "p", "namespace": namespace}, "spec": body}


SIDECAR_NAMESPACE = {"metadata": {"name": "payments", "labels": {"istio-injection": "enabled"}}}
AMBIENT_NAMESPACE = {"metadata": {"name": "payments", "labels": {"istio.io/dataplane-mode": "ambient"}}}
SELECTOR: Json = {"selector": {"matchLabels": {"app": "payments-api"}}}


ROOT_NAMESPACE = {"metadata": {"name": "istio-system"}}
WAYPOINT: Json = {"targetRefs": [{"kind": "Service", "group": "", "name": "payments-api"}]}
GATEWAY: Json = {"selector": {"matchLabels": {"istio": "ingressgateway"}}}
ALLOW_NOTHING = {"kind": "AuthorizationPolicy", "metadata": {"name": "deny", "namespace": "istio-system"}, "spec": {}}


@pytest.mark.parametrize(
    ("case", "policy", "namespace", "refusal"),
    [
        ("workload policy", _authorization_policy("payments", **SELECTOR), SIDECAR_NAMESPACE, None),
        ("namespace-wide policy", _authorization_policy("payments"), SIDECAR_NAMESPACE, None),
        ("ingress gateway", _authorization_policy("istio-system", **GATEWAY), ROOT_NAMESPACE, None),
        ("another provider", _authorization_policy("istio-system", provider="oauth2-proxy"), ROOT_NAMESPACE, None),
        ("allow-nothing", ALLOW_NOTHING, ROOT_NAMESPACE, None),
        ("mesh-wide CUSTOM", _authorization_policy("istio-system"), ROOT_NAMESPACE, "loop"),
        ("on the server", _authorization_policy("authz-system", **SELECTOR), {"metadata": {"name": "x"}}, "itself"),
        ("ambient namespace", _authorization_policy("payments", **SELECTOR), AMBIENT_NAMESPACE, "ambient"),
        ("ambient, on a waypoint", _authorization_policy("payments", **WAYPOINT), AMBIENT_NAMESPACE, "ambient"),
    ],
)
def test_istio_admission_policy(case: str, policy: Json, namespace: Json, refusal: str | None) -> None:
    admission = find(build("overlays/istio"), "ValidatingAdmissionPolicy")
    refused = _admit(admission, policy, namespace)
    if refusal is None:
        assert refused == [], case
    else:
        assert len(refused) == 1 and refusal in refused[0], (case, refused)

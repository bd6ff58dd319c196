"""The published shape of the declarations: the openAPIV3Schema of each kind's `spec`.

These are the schemas the CRDs in mesh_manifests/ publish, so they keep to the
structural subset Kubernetes accepts (one type per node, no
`additionalProperties` beside `properties`). The server checks documents
against the same schemas made strict (`strict_schema`), so an unknown key is
reported instead of silently pruned, then runs its semantic checks
(validation.py) on top.
"""

from __future__ import annotations

import copy
from typing import Any

API_GROUP = "authz-server.dev"
API_VERSION = "v1alpha1"
GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"

ALLOWED_CALLS = "AllowedCalls"
QUARANTINE = "Quarantine"
ALLOWED_CALLS_TEST = "AllowedCallsTest"

SPIFFE_ID_PATTERN = r"^spiffe://[^/]+(/.*)?$"
CALLER_PREFIX_PATTERN = r"^spiffe://[^/*]+(/[^/*]+)*/\*$"
PATH_PATTERN = r"^/"
METHOD_PATTERN = r"^([A-Z]+|\*)$"
HEADER_NAME_PATTERN = r"^:?[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
K8S_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
SERVICE_ACCOUNT_PATTERN = r"^([a-z0-9]([-.a-z0-9]*[a-z0-9])?|\*)$"


def _string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _caller_schema() -> dict[str, Any]:
    """One caller matcher: exactly one of `id`, `prefix` or `namespace` (checked semantically)."""
    return {
        "type": "object",
        "description": (
            "One caller: `id` (an exact SPIFFE ID), `prefix` (every SPIFFE ID under a trust domain or path, "
            "written with a final /*), or `namespace` with optional `serviceAccount` and `trustDomain` "
            "(the Kubernetes /ns/NS/sa/SA convention)."
        ),
        "properties": {
            "id": _string("Exact SPIFFE ID of the caller.", pattern=SPIFFE_ID_PATTERN),
            "prefix": _string(
                "spiffe://TD/* (the whole trust domain) or spiffe://TD/some/path/* (every ID below that path, "
                "segment by segment).",
                pattern=CALLER_PREFIX_PATTERN,
            ),
            "namespace": _string("Kubernetes namespace of the caller.", pattern=K8S_NAME_PATTERN),
            "serviceAccount": _string(
                "Service account of the caller in `namespace`; * (the default) for any.",
                pattern=SERVICE_ACCOUNT_PATTERN,
            ),
            "trustDomain": _string(
                "Trust domain of the caller; defaults to the callee's (required with spec.workloadKey)."
            ),
        },
    }


def _route_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Methods and paths the rule covers; every listed condition must hold.",
        "required": ["methods", "paths"],
        "properties": {
            "methods": {
                "type": "array",
                "description": "HTTP methods in upper case, or * for any.",
                "minItems": 1,
                "items": _string("An HTTP method.", pattern=METHOD_PATTERN),
            },
            "paths": {
                "type": "array",
                "description": (
                    "Normalised paths: /exact, /v1/refunds/* (* is exactly one segment), /v1/admin/** "
                    "(the path itself and everything below it). No query strings."
                ),
                "minItems": 1,
                "items": _string("A path pattern.", pattern=PATH_PATTERN),
            },
            "headers": {
                "type": "array",
                "description": "Header conditions; all must hold.",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": _string("Header name (case-insensitive).", pattern=HEADER_NAME_PATTERN),
                        "values": {
                            "type": "array",
                            "description": "The header's value must equal one of these.",
                            "minItems": 1,
                            "items": {"type": "string"},
                        },
                        "present": {
                            "type": "boolean",
                            "description": "true: the header must be present (any value); false: it must be absent.",
                        },
                    },
                },
            },
        },
    }


def _rule_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["name", "from", "to"],
        "properties": {
            "name": _string("Unique within the document; named in decisions and logs.", pattern=K8S_NAME_PATTERN),
            "action": _string("allow (the default) or deny; deny rules win over allow rules.", enum=["allow", "deny"]),
            "from": {"type": "array", "description": "Who may call.", "minItems": 1, "items": _caller_schema()},
            "to": {"type": "array", "description": "What they may call.", "minItems": 1, "items": _route_schema()},
            "maxRisk": {
                "type": "number",
                "description": "Highest anomaly score (0..1) this grant tolerates; unset: the configured bands.",
                "minimum": 0,
                "maximum": 1,
            },
            "onRiskTimeout": _string(
                "What happens when scoring misses its budget: allow (the default) or deny.", enum=["allow", "deny"]
            ),
            "expires": _string(
                "RFC 3339 time after which the rule stops matching (a time-boxed grant).", format="date-time"
            ),
        },
    }


ALLOWED_CALLS_CEL_RULES = (
    {"rule": "has(self.workload) != has(self.workloadKey)", "message": "give exactly one of workload and workloadKey"},
)
"""x-kubernetes-validations of the AllowedCalls CRD's spec: the API server's form of a rule the server's own
validation applies in Python (policy/validation.py). Kept apart from the JSON Schema, which the server compiles."""


def allowed_calls_openapi_schema() -> dict[str, Any]:
    """openAPIV3Schema of AllowedCalls.spec."""
    return {
        "type": "object",
        "description": "Who may call one workload, on which methods and paths. Everything else is denied.",
        "required": ["rules"],
        "properties": {
            "workload": _string(
                "SPIFFE ID of the callee, matched against the destination principal Envoy reports.",
                pattern=SPIFFE_ID_PATTERN,
            ),
            "workloadKey": _string(
                "For proxies without a SPIFFE ID: matched against the `workload` context extension "
                "set on the proxy's ext_authz filter. Exactly one of workload and workloadKey."
            ),
            "mode": _string("enforce (the default) or dry-run.", enum=["enforce", "dry-run"]),
            "riskShadow": {
                "type": "boolean",
                "description": "Compute and annotate risk scores for this workload but never act on them.",
            },
            "rules": {"type": "array", "items": _rule_schema()},
        },
    }


def quarantine_openapi_schema() -> dict[str, Any]:
    """openAPIV3Schema of Quarantine.spec."""
    return {
        "type": "object",
        "description": "Callers denied everywhere, whatever any AllowedCalls grants, until each entry expires.",
        "required": ["entries"],
        "properties": {
            "entries": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["reason", "expires"],
                    "properties": {
                        "id": _string("Exact SPIFFE ID to quarantine.", pattern=SPIFFE_ID_PATTERN),
                        "prefix": _string(
                            "spiffe://TD/* or spiffe://TD/path/*: every ID below it.", pattern=CALLER_PREFIX_PATTERN
                        ),
                        "reason": _string("Why (an incident reference); logged with every denial.", minLength=1),
                        "expires": _string("RFC 3339 time at which the entry lapses.", format="date-time"),
                    },
                },
            }
        },
    }


def allowed_calls_test_schema() -> dict[str, Any]:
    """spec of AllowedCallsTest: owner-written cases run by `authz-server policy test` (not a CRD)."""
    return {
        "type": "object",
        "required": ["cases"],
        "properties": {
            "policies": {
                "type": "array",
                "description": "Files or directories to test, relative to this file; default: its directory.",
                "items": {"type": "string"},
            },
            "at": _string("Evaluate as of this RFC 3339 time (default: now).", format="date-time"),
            "cases": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name", "from", "method", "path", "expect"],
                    "properties": {
                        "name": _string("What the case checks."),
                        "from": _string("Caller SPIFFE ID.", pattern=SPIFFE_ID_PATTERN),
                        "to": _string("Callee SPIFFE ID.", pattern=SPIFFE_ID_PATTERN),
                        "workloadKey": _string("Callee key, for callees declared with spec.workloadKey."),
                        "method": _string("HTTP method.", pattern=r"^[A-Z]+$"),
                        "path": _string("Request path as the client sends it (may include a query)."),
                        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                        "at": _string("Evaluate this case as of this RFC 3339 time.", format="date-time"),
                        "expect": _string("Expected verdict.", enum=["allow", "deny", "dry-run-deny"]),
                        "reason": _string("Expected reason code (optional)."),
                        "rule": _string("Expected deciding rule name (optional)."),
                    },
                },
            },
        },
    }


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The same schema with `additionalProperties: false` on every object that lists its properties (what the
    Kubernetes API server would prune silently is refused instead), except where the schema keeps unknown fields
    (`x-kubernetes-preserve-unknown-fields`)."""
    strict = copy.deepcopy(schema)

    def tighten(node: Any) -> None:
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                tighten(value)
        elif isinstance(node, list):
            for value in node:
                tighten(value)

    tighten(strict)
    return strict


SPEC_SCHEMAS = {
    ALLOWED_CALLS: allowed_calls_openapi_schema,
    QUARANTINE: quarantine_openapi_schema,
    ALLOWED_CALLS_TEST: allowed_calls_test_schema,
}

"""Stage 6, respond: a Decision becomes the CheckResponse Envoy enforces.

Allowed calls carry annotations for the upstream, set with overwrite
semantics, and every other `x-authz-*` header the client sent is removed so an
upstream can trust what it sees. Denied calls get a small JSON body that names
the reason code and decision id and nothing of the policy behind them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from google.protobuf import struct_pb2

from authz_server._proto.envoy.config.core.v3 import base_pb2
from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.decision import Decision, Verdict
from authz_server.risk.outcome import RiskAction

HEADER_PREFIX = "x-authz-"
DECISION = "x-authz-decision"
REASON = "x-authz-reason"
SOURCE = "x-authz-source"
POLICY = "x-authz-policy"
RISK = "x-authz-risk"
RISK_FACTORS = "x-authz-risk-factors"
DECISION_ID = "x-authz-decision-id"

# google.rpc.Code values Envoy reads from CheckResponse.status.
_GRPC_OK = 0
_GRPC_PERMISSION_DENIED = 7
_GRPC_UNAUTHENTICATED = 16

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
# The namespace Envoy files the filter's dynamic metadata under is the filter's
# name; access logs read e.g. %DYNAMIC_METADATA(envoy.filters.http.ext_authz:decision_id)%.
METADATA_FIELDS = ("decision", "reason", "decision_id", "source", "policy", "risk")


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value), append_action=_OVERWRITE)


def annotation_values(decision: Decision) -> dict[str, str]:
    """The x-authz-* values describing a decision (also what the decision log and metadata carry)."""
    values = {DECISION: decision.verdict.value, DECISION_ID: decision.decision_id}
    if decision.verdict is Verdict.DENY:
        values[REASON] = decision.reason
        return values
    caller = decision.caller
    if caller is not None:
        values[SOURCE] = caller.spiffe_id
    if decision.policy is not None:
        values[POLICY] = decision.policy.label
    if decision.verdict is Verdict.DRY_RUN_DENY:
        values[REASON] = decision.reason
    risk = decision.risk
    if risk is not None:
        values[RISK] = risk.header_value
        if risk.factors and (risk.action is not RiskAction.ALLOW or risk.shadow):
            values[RISK_FACTORS] = ",".join(f"{f.name}={f.contribution:.2f}" for f in risk.factors)
    return values


def _metadata(values: Mapping[str, str]) -> struct_pb2.Struct:
    metadata = struct_pb2.Struct()
    for key, value in values.items():
        metadata.fields[key.removeprefix(HEADER_PREFIX).replace("-", "_")].string_value = value
    return metadata


def build_response(decision: Decision, request_headers: Mapping[str, str]) -> external_auth_pb2.CheckResponse:
    values = annotation_values(decision)
    response = external_auth_pb2.CheckResponse(dynamic_metadata=_metadata(values))
    if decision.verdict.lets_through:
        response.status.code = _GRPC_OK
        ok = response.ok_response
        ok.headers.extend(_header(k, v) for k, v in values.items())
        ok.headers_to_remove.extend(
            name for name in request_headers if name.startswith(HEADER_PREFIX) and name not in values
        )
        return response

    response.status.code = _GRPC_UNAUTHENTICATED if decision.http_status == 401 else _GRPC_PERMISSION_DENIED
    response.status.message = decision.reason
    denied = response.denied_response
    denied.status.code = decision.http_status  # type: ignore[assignment]
    denied.headers.extend(_header(k, v) for k, v in values.items())
    denied.headers.append(_header("content-type", "application/json"))
    denied.body = json.dumps(
        {"decision": decision.verdict.value, "reason": decision.reason, "decision_id": decision.decision_id},
        separators=(",", ":"),
    )
    return response

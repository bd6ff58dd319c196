"""Stage 6, respond: a Decision becomes the CheckResponse Envoy enforces.

Allowed calls carry annotations for the upstream, set with overwrite
semantics, and every other `x-authz-*` header the client sent is removed so an
upstream can trust what it sees. Denied calls get a small JSON body that names
the reason code and decision id and nothing of the policy behind them.

The response is encoded straight to protobuf wire bytes (field numbers from
proto/envoy/service/auth/v3/external_auth.proto): building it through the
generated classes cost ~50 µs a call, mostly in creating header messages one
by one; this costs a few. Header entries that repeat from call to call (the
verdict, the caller, the policy version) are encoded once and cached.
tests/core/test_conformance.py reads these bytes back with Envoy's own message
definitions (envoy-data-plane) and with the generated classes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import lru_cache

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
GRPC_OK = 0
GRPC_PERMISSION_DENIED = 7
GRPC_UNAUTHENTICATED = 16

# envoy.config.core.v3.HeaderValueOption.HeaderAppendAction
OVERWRITE_IF_EXISTS_OR_ADD = 2


# --- protobuf wire encoding (only what CheckResponse needs) -----------------


_ONE_BYTE_VARINTS = tuple(bytes((i,)) for i in range(0x80))


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _ONE_BYTE_VARINTS[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _bytes_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: strings, bytes and embedded messages."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _string_field(number: int, text: str) -> bytes:
    return _bytes_field(number, text.encode())


def _varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _header_option(key: str, value: str) -> bytes:
    """HeaderValueOption{header: HeaderValue{key, value}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}."""
    header = _string_field(1, key) + _string_field(2, value)
    return _bytes_field(1, header) + _varint_field(3, OVERWRITE_IF_EXISTS_OR_ADD)


@lru_cache(maxsize=4096)
def _cached_header_option(key: str, value: str) -> bytes:
    return _bytes_field(2, _header_option(key, value))


@lru_cache(maxsize=4096)
def _cached_metadata_entry(key: str, value: str) -> bytes:
    # Struct.fields is map<string, Value>: each entry a message {1: key, 2: Value{3: string_value}}.
    return _bytes_field(1, _string_field(1, key) + _bytes_field(2, _string_field(3, value)))


def _metadata_name(header: str) -> str:
    return header.removeprefix(HEADER_PREFIX).replace("-", "_")


# --- the response -------------------------------------------------------------


def annotation_values(decision: Decision) -> dict[str, str]:
    """The x-authz-* values describing a decision (also what dynamic metadata carries)."""
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


def _headers(values: Mapping[str, str]) -> bytes:
    """Repeated `headers` (field 2 of both OkHttpResponse and DeniedHttpResponse)."""
    parts = []
    for key, value in values.items():
        if key == DECISION_ID:  # unique per call: not worth a cache slot
            parts.append(_bytes_field(2, _header_option(key, value)))
        else:
            parts.append(_cached_header_option(key, value))
    return b"".join(parts)


def _dynamic_metadata(values: Mapping[str, str]) -> bytes:
    entries = []
    for key, value in values.items():
        if key == DECISION_ID:
            entries.append(_bytes_field(1, _string_field(1, "decision_id") + _bytes_field(2, _string_field(3, value))))
        else:
            entries.append(_cached_metadata_entry(_metadata_name(key), value))
    return _bytes_field(4, b"".join(entries))


def _removals(request_headers: Iterable[str], values: Mapping[str, str]) -> bytes:
    """Repeated OkHttpResponse.headers_to_remove (field 5): client-sent x-authz-* we do not overwrite."""
    return b"".join(
        _string_field(5, name) for name in request_headers if name.startswith(HEADER_PREFIX) and name not in values
    )


def deny_body(decision: Decision) -> str:
    return json.dumps(
        {"decision": decision.verdict.value, "reason": decision.reason, "decision_id": decision.decision_id},
        separators=(",", ":"),
    )


def build_response(decision: Decision, request_headers: Iterable[str]) -> bytes:
    """The serialized envoy.service.auth.v3.CheckResponse for a decision."""
    values = annotation_values(decision)
    metadata = _dynamic_metadata(values)
    if decision.verdict.lets_through:
        status = _bytes_field(1, b"")  # google.rpc.Status{code: OK}: every field at its default
        ok = _headers(values) + _removals(request_headers, values)
        return status + _bytes_field(3, ok) + metadata

    code = GRPC_UNAUTHENTICATED if decision.http_status == 401 else GRPC_PERMISSION_DENIED
    status = _bytes_field(1, _varint_field(1, code) + _string_field(2, decision.reason))
    denied = (
        _bytes_field(1, _varint_field(1, decision.http_status))
        + _headers(values)
        + _cached_header_option("content-type", "application/json")
        + _string_field(3, deny_body(decision))
    )
    return status + _bytes_field(2, denied) + metadata

"""Stage 6, respond: a Decision becomes the CheckResponse Envoy enforces.

Allowed calls carry annotations for the upstream, set with overwrite
semantics, and every other `x-authz-*` header the client sent is removed so an
upstream can trust what it sees. Denied calls get a small JSON body that names
the reason code and decision id and nothing of the policy behind them. The
decision, its reason and its id also travel as the ext_authz filter's dynamic
metadata, for Envoy's access log (METADATA).

The response is encoded straight to protobuf wire bytes (field numbers from
proto/envoy/service/auth/v3/external_auth.proto): building it through the
generated classes cost ~50 µs a call, mostly in creating header messages one
by one; this costs a few. Everything but the decision id and the risk score is
the same for every call of one caller under one rule with one verdict, so those
parts of the headers, the dynamic metadata and the denied body are encoded once
per (verdict, reason, caller, policy label) and cached; a call only splices in
its own id and risk entries. tests/core/test_conformance.py reads these bytes
back with Envoy's own message definitions (envoy-data-plane) and with the
generated classes.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from json.encoder import encode_basestring_ascii

from authz_server.decision import Decision, Verdict
from authz_server.risk.outcome import RiskAction, RiskFactor, RiskOutcome

HEADER_PREFIX = "x-authz-"
DECISION = "x-authz-decision"
REASON = "x-authz-reason"
SOURCE = "x-authz-source"
POLICY = "x-authz-policy"
RISK = "x-authz-risk"
RISK_FACTORS = "x-authz-risk-factors"
DECISION_ID = "x-authz-decision-id"

METADATA = frozenset((DECISION, REASON, DECISION_ID))
"""The annotations that are also dynamic metadata (`decision`, `reason`, `decision_id`): what an access log prints
for every call, a denied one included (the rendered bootstrap's format prints these three). The others are on the
request Envoy forwards, where an access log reads them too (`%REQ(x-authz-source)%`). Sending them twice cost the
sidecar Envoy ~10 µs a request, 4% of its CPU per request (benchmarks/RESULTS.md, "What Envoy spends on the
answer")."""

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


def _header_entry(key: str, value: str) -> bytes:
    """One element of the repeated `headers` (field 2 of both OkHttpResponse and DeniedHttpResponse)."""
    return _bytes_field(2, _header_option(key, value))


def _metadata_entry(name: str, value: str) -> bytes:
    # Struct.fields is map<string, Value>: each entry a message {1: key, 2: Value{3: string_value}}.
    return _bytes_field(1, _string_field(1, name) + _bytes_field(2, _string_field(3, value)))


def _metadata_name(header: str) -> str:
    return header.removeprefix(HEADER_PREFIX).replace("-", "_")


def _entries(values: Iterable[tuple[str, str]]) -> tuple[bytes, bytes]:
    """(header entries, dynamic metadata entries of those in METADATA) for some annotations, in order."""
    pairs = list(values)
    headers = b"".join(_header_entry(key, value) for key, value in pairs)
    metadata = b"".join(_metadata_entry(_metadata_name(key), value) for key, value in pairs if key in METADATA)
    return headers, metadata


# --- the response -------------------------------------------------------------


def _risk_factors_value(factors: tuple[RiskFactor, ...]) -> str:
    return ",".join(f"{f.name}={f.contribution:.2f}" for f in factors)


def _shows_factors(risk: RiskOutcome) -> bool:
    return bool(risk.factors) and (risk.action is not RiskAction.ALLOW or risk.shadow)


def annotation_values(decision: Decision) -> dict[str, str]:
    """The x-authz-* values describing a decision (those in METADATA are dynamic metadata too)."""
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
        if _shows_factors(risk):
            values[RISK_FACTORS] = _risk_factors_value(risk.factors)
    return values


class _Fixed:
    """The encoded pieces of a response that depend only on (verdict, reason, caller, policy label)."""

    __slots__ = ("after_id", "body_prefix", "head", "metadata_after_id", "metadata_head", "status", "values")

    def __init__(self, verdict: Verdict, reason: str, source: str | None, label: str | None, http_status: int) -> None:
        fixed: list[tuple[str, str]] = []
        if verdict is Verdict.DENY:
            fixed.append((REASON, reason))
        else:
            if source is not None:
                fixed.append((SOURCE, source))
            if label is not None:
                fixed.append((POLICY, label))
            if verdict is Verdict.DRY_RUN_DENY:
                fixed.append((REASON, reason))
        self.values = frozenset(key for key, _ in fixed) | {DECISION, DECISION_ID}
        """Annotation names this response sets whatever the risk outcome (RISK and RISK_FACTORS aside)."""
        self.head, self.metadata_head = _entries([(DECISION, verdict.value)])
        self.after_id, self.metadata_after_id = _entries(fixed)
        if verdict.lets_through:
            self.status = _bytes_field(1, b"")  # google.rpc.Status{code: OK}: every field at its default
            self.body_prefix = b""
        else:
            code = GRPC_UNAUTHENTICATED if http_status == 401 else GRPC_PERMISSION_DENIED
            self.status = _bytes_field(1, _varint_field(1, code) + _string_field(2, reason))
            self.body_prefix = (
                '{"decision":' + encode_basestring_ascii(verdict.value)
                + ',"reason":' + encode_basestring_ascii(reason) + ',"decision_id":'
            ).encode()  # fmt: skip


@lru_cache(maxsize=4096)
def _fixed(verdict: Verdict, reason: str, source: str | None, label: str | None, http_status: int) -> _Fixed:
    return _Fixed(verdict, reason, source, label, http_status)


_OVERWRITE = _varint_field(3, OVERWRITE_IF_EXISTS_OR_ADD)
_CONTENT_TYPE = _header_entry("content-type", "application/json")


class _Annotation:
    """An annotation whose value changes from call to call: its key's encoding is done once."""

    __slots__ = ("header_key", "metadata_key")

    def __init__(self, header: str) -> None:
        self.header_key = _string_field(1, header)
        self.metadata_key = _string_field(1, _metadata_name(header)) if header in METADATA else None

    def entries(self, text: str) -> tuple[bytes, bytes]:
        """The same as _entries([(this header, text)]), in a few concatenations."""
        value = text.encode()
        size = _varint(len(value))
        header = self.header_key + b"\x12" + size + value  # HeaderValue.value is field 2
        option = b"\x0a" + _varint(len(header)) + header + _OVERWRITE
        if self.metadata_key is None:
            return b"\x12" + _varint(len(option)) + option, b""
        struct_value = b"\x1a" + size + value  # Value.string_value is field 3
        entry = self.metadata_key + b"\x12" + _varint(len(struct_value)) + struct_value
        return b"\x12" + _varint(len(option)) + option, b"\x0a" + _varint(len(entry)) + entry


_DECISION_ID = _Annotation(DECISION_ID)
_RISK_FACTORS = _Annotation(RISK_FACTORS)


@lru_cache(maxsize=2048)
def _risk_header(value: str) -> bytes:
    return _header_entry(RISK, value)


def _removals(request_headers: Iterable[str], values: frozenset[str]) -> bytes:
    """Repeated OkHttpResponse.headers_to_remove (field 5): client-sent x-authz-* we do not overwrite.

    Underscore look-alikes (`x_authz_source`, `x-authz_source`) go too: CGI and WSGI upstreams fold `-` and `_`
    into one variable (HTTP_X_AUTHZ_SOURCE), so a forged look-alike would read as the server's annotation.
    """
    # Almost no request carries x-authz-*: one join and one substring search rule it out for about the cost of
    # walking the protobuf map once, where testing each name cost three times that. A hit only means "look".
    names = "\n".join(request_headers)
    if _LOOK_ALIKE_MARK not in names:
        return b""
    # The names again from the joined text (HTTP forbids a newline in a name, Envoy refuses one), not from the map:
    # each walk of the protobuf map makes every name anew. With a forged x-authz-decision among 14 headers this
    # cost 3.1 µs where walking the map and testing every name cost 9.6.
    return b"".join(
        [
            _string_field(5, name)
            for name in names.split("\n")
            if _LOOK_ALIKE_MARK in name and name.replace("_", "-").startswith(HEADER_PREFIX) and name not in values
        ]
    )


_LOOK_ALIKE_MARK = "authz"
"""In every spelling of the prefix, x-authz-, x_authz_ and their mixes."""


def build_response(decision: Decision, request_headers: Iterable[str]) -> bytes:
    """The serialized envoy.service.auth.v3.CheckResponse for a decision."""
    verdict = decision.verdict
    caller = decision.caller
    policy = decision.policy
    fixed = _fixed(
        verdict,
        decision.reason,
        None if caller is None else caller.spiffe_id,
        None if policy is None else policy.label,
        decision.http_status,
    )
    id_header, id_metadata = _DECISION_ID.entries(decision.decision_id)
    headers = fixed.head + id_header + fixed.after_id
    metadata = fixed.metadata_head + id_metadata + fixed.metadata_after_id
    if verdict is Verdict.DENY:
        body = fixed.body_prefix + encode_basestring_ascii(decision.decision_id).encode() + b"}"
        denied = (
            (_DENIED_HTTP_STATUS.get(decision.http_status) or _bytes_field(1, _varint_field(1, decision.http_status)))
            + headers
            + _CONTENT_TYPE
            + b"\x1a"
            + _varint(len(body))
            + body
        )
        return fixed.status + b"\x12" + _varint(len(denied)) + denied + b"\x22" + _varint(len(metadata)) + metadata

    values = fixed.values
    risk = decision.risk
    if risk is not None:
        headers += _risk_header(risk.header_value)
        if _shows_factors(risk):
            headers += _RISK_FACTORS.entries(_risk_factors_value(risk.factors))[0]
            values = values | _RISK_BOTH
        else:
            values = values | _RISK_ONLY
    ok = headers + _removals(request_headers, values)
    return fixed.status + b"\x1a" + _varint(len(ok)) + ok + b"\x22" + _varint(len(metadata)) + metadata


_RISK_ONLY = frozenset((RISK,))
_RISK_BOTH = frozenset((RISK, RISK_FACTORS))
_DENIED_HTTP_STATUS = {status: _bytes_field(1, _varint_field(1, status)) for status in (401, 403)}

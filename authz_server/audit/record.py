"""One decision as the plain, JSON-ready mapping a decision log line holds.

The layout is the documented schema (README.md in this package,
decision-log.schema.json); `SCHEMA_VERSION` changes whenever a field is
renamed or removed, never when one is added.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from authz_server.identity.result import Identity, IdentityFailure
from authz_server.policy.outcome import Mode
from authz_server.risk.features import request_size
from authz_server.routes import route_template

if TYPE_CHECKING:
    from authz_server.authorizer import StageTimings
    from authz_server.call import Call
    from authz_server.decision import Decision
    from authz_server.risk.outcome import RiskOutcome

SCHEMA_VERSION = 1
REDACTED = "[redacted]"
MAX_VALUE_BYTES = 4096
"""Default cap on each text value a line copies from the request (path, host, header values, ...)."""
TRUNCATED = "...[truncated "
"""Marks a value cut at the cap: `/a/b...[truncated 61440 bytes]`; the field is also named in `truncated`."""


class _Clipper:
    """Cuts request-controlled text to `limit` UTF-8 bytes and remembers which fields it cut.

    Envoy passes request lines and headers up to 60 KiB by default (more when raised); a line must not grow with
    them, or one caller sending long paths fills the log and the writer's memory."""

    __slots__ = ("cut", "limit", "quick")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.quick = limit // 4  # at most 4 UTF-8 bytes per character: shorter text needs no encoding
        self.cut: list[str] = []

    def __call__(self, field: str, value: str) -> str:
        if len(value) <= self.quick:
            return value
        data = value.encode("utf-8", "surrogatepass")
        if len(data) <= self.limit:
            return value
        self.cut.append(field)
        kept = data[: self.limit].decode("utf-8", "ignore")  # a character split by the cut is dropped whole
        return f"{kept}{TRUNCATED}{len(data) - self.limit} bytes]"


class HeaderFilter:
    """Keeps only the configured headers and hides the values of sensitive ones."""

    def __init__(self, keep: tuple[str, ...], redact: tuple[str, ...]) -> None:
        self._keep = tuple(dict.fromkeys(name.lower() for name in keep))
        self._redact = frozenset(name.lower() for name in redact)

    def __call__(self, headers: Mapping[str, str], clip: _Clipper | None = None) -> dict[str, str]:
        kept = {}
        for name in self._keep:
            value = headers.get(name)
            if value is not None:
                if name in self._redact:
                    value = REDACTED
                elif clip is not None:
                    value = clip(f"request.headers.{name}", value)
                kept[name] = value
        return kept


class _LastSecond:
    """The last whole second formatted: lines come in time order, so formatting one is mostly a lookup."""

    entry: tuple[int, str] = (0, "1970-01-01T00:00:00")


def rfc3339(ts: float) -> str:
    """UTC with microseconds, e.g. 2026-11-24T12:00:00.123456Z."""
    whole = int(ts)
    micros = round((ts - whole) * 1e6)
    if micros == 1_000_000:
        whole, micros = whole + 1, 0
    entry = _LastSecond.entry  # one tuple, read and replaced whole: safe from any thread
    if entry[0] != whole:
        entry = _LastSecond.entry = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{entry[1]}.{micros:06d}Z"


def decision_mode(decision: Decision) -> str:
    """enforce, dry-run (the deciding declaration only reports) or shadow (risk scored but not enforced)."""
    if decision.policy is not None and decision.policy.mode is Mode.DRY_RUN:
        return "dry-run"
    if decision.risk is not None and decision.risk.shadow:
        return "shadow"
    return "enforce"


def risk_fields(risk: RiskOutcome | None) -> dict[str, Any] | None:
    if risk is None:
        return None
    return {
        "status": risk.status,
        "score": risk.score,
        "band": risk.band,
        "action": risk.action,
        "shadow": risk.shadow,
        "model_version": risk.model_version,
        "factors": [{"name": f.name, "contribution": round(f.contribution, 6)} for f in risk.factors],
        "features": list(risk.features),
        "feature_schema": risk.feature_schema,
        "alarmed": sorted(risk.alarmed),
        "at": risk.at,
    }


def _us(value: float) -> float:
    return round(value, 1)


def build_shed_record(shed: Mapping[str, int], since: float, until: float) -> dict[str, Any]:
    """The counted line for calls answered `overloaded` without a decision between `since` and `until`."""
    return {
        "schema": SCHEMA_VERSION,
        "kind": "shed",
        "time": rfc3339(until),
        "ts": round(until, 6),
        "since": round(since, 6),
        "shed": dict(shed),
        "count": sum(shed.values()),
    }


def build_record(
    call: Call,
    decision: Decision,
    timings: StageTimings,
    decided_at: float,
    headers: HeaderFilter,
    max_value_bytes: int = MAX_VALUE_BYTES,
) -> dict[str, Any]:
    identity = decision.identity
    policy = decision.policy
    clip = _Clipper(max_value_bytes)
    source: dict[str, Any] | None = None
    identity_error: dict[str, str] | None = None
    if isinstance(identity, Identity):
        source = {
            "spiffe_id": clip("source.spiffe_id", identity.spiffe_id),
            "trust_domain": identity.trust_domain,
            "proof": identity.proof,
            "expires_at": identity.expires_at,
            "not_before": identity.issued_at,
            "serial": identity.serial,
            "address": call.source.address,
        }
    elif isinstance(identity, IdentityFailure):
        identity_error = {"reason": identity.reason, "detail": clip("identity_error.detail", identity.detail)}
    path = policy.normalized_path if policy is not None and policy.normalized_path is not None else call.path
    record = {
        "schema": SCHEMA_VERSION,
        "decision_id": decision.decision_id,
        "time": rfc3339(decided_at),
        "ts": round(decided_at, 6),
        "verdict": decision.verdict,
        "reason": decision.reason,
        "http_status": decision.http_status,
        "mode": decision_mode(decision),
        "source": source,
        "identity_error": identity_error,
        "peer": {"principal": clip("peer.principal", call.source.principal), "address": call.source.address},
        "destination": clip("destination", call.destination_principal),
        "request": {
            "id": clip("request.id", call.request_id),
            "method": clip("request.method", call.method),
            "path": clip("request.path", path),
            "host": clip("request.host", call.host),
            "scheme": call.scheme,
            "protocol": call.protocol,
            "size": call.size,
            "content_length": request_size(call.headers.get("content-length"), call.size),
            "template": route_template(path),
            "received_at": round(call.received_at, 6),
            "headers": headers(call.headers, clip),
            "context_extensions": {
                k: clip(f"request.context_extensions.{k}", v) for k, v in call.context_extensions.items()
            },
        },
        "policy": None
        if policy is None
        else {
            "version": policy.version,
            "document": policy.document,
            "rule": policy.rule,
            "mode": policy.mode,
            "reason": policy.reason,
            "label": policy.label,
            "detail": policy.detail,
            "max_risk": policy.max_risk,
            "on_risk_timeout": policy.on_risk_timeout,
            "risk_shadow": policy.risk_shadow,
        },
        "risk": risk_fields(decision.risk),
        "latency_us": {
            "parse": _us(timings.parse_us),
            "identity": _us(timings.identity_us),
            "policy": _us(timings.policy_us),
            "risk": _us(timings.risk_us),
            "response": _us(timings.response_us),
            "total": _us(timings.total_us),
        },
    }
    if clip.cut:
        record["truncated"] = clip.cut
    return record

"""A logged decision back into the values the decision path works on: a Call, an Identity, a RiskOutcome.

Only what the log holds comes back: headers not listed in `log.headers` are
absent and redacted ones read '[redacted]', so a rule matching on such a
header cannot be replayed faithfully (replay says how many lines those were).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from authz_server.audit.record import REDACTED
from authz_server.call import Call, check_request, parse_call
from authz_server.identity.result import Identity, Proof
from authz_server.risk.outcome import RiskAction, RiskFactor, RiskOutcome, RiskStatus


class NotReplayable(ValueError):
    """The line holds too little to decide again (no verified caller, a field missing)."""


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def logged_call(record: Mapping[str, Any]) -> Call:
    request = record.get("request")
    if not isinstance(request, Mapping):
        raise NotReplayable("no request")
    peer = record.get("peer") or {}
    headers = request.get("headers") or {}
    extensions = request.get("context_extensions") or {}
    size = request.get("size")
    ts = record.get("ts")
    return parse_call(
        check_request(
            request_id=_text(request.get("id")),
            source_principal=_text(peer.get("principal")),
            source_address=_text(peer.get("address")),
            destination_principal=_text(record.get("destination")),
            method=_text(request.get("method")),
            target=_text(request.get("path")),
            host=_text(request.get("host")),
            scheme=_text(request.get("scheme")),
            protocol=_text(request.get("protocol")),
            headers={str(k): str(v) for k, v in headers.items()},
            context_extensions={str(k): str(v) for k, v in extensions.items()},
            size=size if isinstance(size, int) and not isinstance(size, bool) and -1 <= size < 2**63 else -1,
            received_at=float(ts) if isinstance(ts, int | float) else 0.0,
        )
    )


def has_redacted_headers(record: Mapping[str, Any]) -> bool:
    headers = (record.get("request") or {}).get("headers") or {}
    return any(value == REDACTED for value in headers.values())


def logged_identity(record: Mapping[str, Any]) -> Identity:
    source = record.get("source")
    if not isinstance(source, Mapping) or not source.get("spiffe_id"):
        error = record.get("identity_error") or {}
        raise NotReplayable(f"no verified caller ({error.get('reason', 'identity unknown')})")
    spiffe_id = str(source["spiffe_id"])
    trust_domain = _text(source.get("trust_domain"))
    path = spiffe_id.removeprefix("spiffe://").partition("/")[2]
    try:
        proof = Proof(_text(source.get("proof")))
    except ValueError:
        proof = Proof.PRINCIPAL
    expires = source.get("expires_at")
    return Identity(
        spiffe_id=spiffe_id,
        trust_domain=trust_domain,
        path="/" + path if path else "",
        proof=proof,
        expires_at=float(expires) if isinstance(expires, int | float) else None,
    )


def logged_risk(record: Mapping[str, Any]) -> RiskOutcome | None:
    risk = record.get("risk")
    if not isinstance(risk, Mapping):
        return None
    try:
        status = RiskStatus(_text(risk.get("status")))
        action = RiskAction(_text(risk.get("action")) or "allow")
    except ValueError as exc:
        raise NotReplayable(f"risk: {exc}") from exc
    score = risk.get("score")
    return RiskOutcome(
        status=status,
        score=float(score) if isinstance(score, int | float) else None,
        factors=tuple(
            RiskFactor(str(f.get("name", "")), float(f.get("contribution", 0.0))) for f in risk.get("factors") or ()
        ),
        model_version=_text(risk.get("model_version")),
        band=_text(risk.get("band")),
        action=action,
        shadow=bool(risk.get("shadow", False)),
        features=tuple(float(v) for v in risk.get("features") or ()),
        feature_schema=_text(risk.get("feature_schema")),
    )


def caller_of(record: Mapping[str, Any]) -> str:
    """Who made the call, as an operator would name them: the verified SPIFFE ID, else what is known."""
    source = record.get("source")
    if isinstance(source, Mapping) and source.get("spiffe_id"):
        return str(source["spiffe_id"])
    # Without a verified identity the claimed principal proves nothing; the address is what is known.
    peer = record.get("peer") or {}
    return f"unverified@{_text(peer.get('address')) or 'unknown'}"

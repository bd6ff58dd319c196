"""JWT-SVID verification with the trust domain's JWT bundle (the `spiffe` package's validator)."""

from __future__ import annotations

import jwt
from spiffe import JwtSvid

from authz_server.identity.bundles import BundleSet
from authz_server.identity.result import Identity, IdentityFailure, IdentityReason, Proof
from authz_server.identity.spiffe_ids import parse_workload_id


def bearer_token(header_value: str) -> str:
    """The token of an `Authorization: Bearer <token>` value, or the value itself."""
    scheme, _, rest = header_value.partition(" ")
    if rest and scheme.lower() == "bearer":
        return rest.strip()
    return header_value.strip()


def verify_jwt_svid(token: str, audience: str, bundles: BundleSet) -> Identity | IdentityFailure:
    """Signature, `exp` and `aud` are checked by spiffe's JwtSvid against the bundle of the token's own
    trust domain (the unverified `sub` only chooses which bundle; nothing else is believed before that)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        return IdentityFailure(IdentityReason.JWT_INVALID, f"not a JWT: {exc}")
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        return IdentityFailure(IdentityReason.JWT_INVALID, "JWT has no 'sub' claim")
    spiffe_id = parse_workload_id(subject)
    if isinstance(spiffe_id, str):
        return IdentityFailure(IdentityReason.MALFORMED_SPIFFE_ID, f"JWT 'sub': {spiffe_id}")
    trust_domain = spiffe_id.trust_domain.name
    bundle = bundles.get(trust_domain)
    if bundle is None:
        return IdentityFailure(
            IdentityReason.UNTRUSTED_TRUST_DOMAIN, f"trust domain {trust_domain!r} is not trusted by this server"
        )
    if bundle.jwt_authorities is None or not bundle.jwt_authorities.jwt_authorities:
        return IdentityFailure(IdentityReason.JWT_INVALID, f"no JWT-SVID keys are known for {trust_domain!r}")
    try:
        svid = JwtSvid.parse_and_validate(token, bundle.jwt_authorities, {audience})
    except Exception as exc:
        return IdentityFailure(IdentityReason.JWT_INVALID, f"{type(exc).__name__}: {exc}")
    issued = claims.get("iat")
    return Identity(
        str(svid.spiffe_id),
        trust_domain,
        svid.spiffe_id.path,
        Proof.JWT,
        float(svid.expiry),
        float(issued) if isinstance(issued, int | float) else None,
    )

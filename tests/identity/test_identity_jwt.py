"""JWT-SVIDs in a header, checked with the trust domain's JWT bundle and the destination as audience."""

from __future__ import annotations

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from identity_support import CALLEE, CALLER, TRUST_DOMAIN, call, jwk, mint_jwt, now, verifier

from authz_server.dev.trust_domain import TrustDomainCA
from authz_server.identity import Identity, IdentityFailure, IdentityReason, IdentityVerifier, Proof
from authz_server.identity.config import IdentityConfig

JWT_ONLY = IdentityConfig(sources=("jwt",))


@pytest.fixture(scope="module")
def ca() -> TrustDomainCA:
    return TrustDomainCA.create(TRUST_DOMAIN)


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def stage(ca: TrustDomainCA, key: ec.EllipticCurvePrivateKey) -> IdentityVerifier:
    return verifier(ca, config=JWT_ONLY, **{TRUST_DOMAIN: jwk(key, "k1")})


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _reason(stage: IdentityVerifier, token: str) -> IdentityReason:
    result = stage.verify(call(headers=_bearer(token)), now())
    assert isinstance(result, IdentityFailure), result
    return result.reason


def test_a_valid_jwt_svid_for_this_destination_is_an_identity(
    stage: IdentityVerifier, key: ec.EllipticCurvePrivateKey
) -> None:
    token = mint_jwt(key, "k1", CALLER)
    result = stage.verify(call(headers=_bearer(token)), now())
    assert isinstance(result, Identity)
    assert (result.spiffe_id, result.trust_domain, result.proof) == (CALLER, TRUST_DOMAIN, Proof.JWT)
    assert result.expires_at == jwt.decode(token, options={"verify_signature": False})["exp"]
    # Several audiences are fine as long as the destination is one of them.
    many = mint_jwt(key, "k1", CALLER, audience=["spiffe://example.org/other", CALLEE])
    assert isinstance(stage.verify(call(headers=_bearer(many)), now()), Identity)


def test_a_token_for_another_audience_is_refused(stage: IdentityVerifier, key: ec.EllipticCurvePrivateKey) -> None:
    token = mint_jwt(key, "k1", CALLER, audience="spiffe://example.org/ns/shop/sa/other")
    assert _reason(stage, token) is IdentityReason.JWT_INVALID


def test_an_expired_token_is_refused(stage: IdentityVerifier, key: ec.EllipticCurvePrivateKey) -> None:
    assert _reason(stage, mint_jwt(key, "k1", CALLER, ttl=-10)) is IdentityReason.JWT_INVALID


def test_a_token_signed_with_an_unknown_or_wrong_key_is_refused(stage: IdentityVerifier) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    assert _reason(stage, mint_jwt(stranger, "k1", CALLER)) is IdentityReason.JWT_INVALID  # known kid, wrong key
    assert _reason(stage, mint_jwt(stranger, "k9", CALLER)) is IdentityReason.JWT_INVALID  # unknown kid


def test_unsigned_and_symmetric_tokens_are_refused(stage: IdentityVerifier) -> None:
    claims = {"sub": CALLER, "aud": CALLEE, "exp": int(now()) + 300}
    unsigned = jwt.encode(claims, "", algorithm="none", headers={"kid": "k1"})
    hmac = jwt.encode(claims, "a-shared-secret-of-32-bytes-length", algorithm="HS256", headers={"kid": "k1"})
    assert _reason(stage, unsigned) is IdentityReason.JWT_INVALID
    assert _reason(stage, hmac) is IdentityReason.JWT_INVALID


def test_a_subject_that_is_no_spiffe_id_or_from_a_foreign_domain_is_refused(
    stage: IdentityVerifier, key: ec.EllipticCurvePrivateKey
) -> None:
    assert _reason(stage, mint_jwt(key, "k1", "frontend@example.org")) is IdentityReason.MALFORMED_SPIFFE_ID
    # A validly signed token for the trust domain itself still names no workload.
    assert _reason(stage, mint_jwt(key, "k1", f"spiffe://{TRUST_DOMAIN}")) is IdentityReason.MALFORMED_SPIFFE_ID
    assert _reason(stage, mint_jwt(key, "k1", "spiffe://evil.example/x")) is IdentityReason.UNTRUSTED_TRUST_DOMAIN


def test_garbage_is_refused(stage: IdentityVerifier) -> None:
    assert _reason(stage, "not.a.jwt") is IdentityReason.JWT_INVALID


def test_a_trust_domain_without_jwt_keys_cannot_vouch_for_tokens(
    ca: TrustDomainCA, key: ec.EllipticCurvePrivateKey
) -> None:
    pem_only = verifier(ca, config=JWT_ONLY)
    result = pem_only.verify(call(headers=_bearer(mint_jwt(key, "k1", CALLER))), now())
    assert isinstance(result, IdentityFailure) and result.reason is IdentityReason.JWT_INVALID


def test_the_audience_and_header_are_configurable(ca: TrustDomainCA, key: ec.EllipticCurvePrivateKey) -> None:
    config = IdentityConfig(sources=("jwt",), jwt_header="X-Spiffe-JWT", jwt_audience="orders-api")
    stage = verifier(ca, config=config, **{TRUST_DOMAIN: jwk(key, "k1")})
    token = mint_jwt(key, "k1", CALLER, audience="orders-api")
    assert isinstance(stage.verify(call(headers={"x-spiffe-jwt": token}), now()), Identity)
    no_destination = stage.verify(call(headers={"x-spiffe-jwt": mint_jwt(key, "k1", CALLER)}, destination=""), now())
    assert isinstance(no_destination, IdentityFailure) and no_destination.reason is IdentityReason.JWT_INVALID

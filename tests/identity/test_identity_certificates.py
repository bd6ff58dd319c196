"""X.509-SVIDs from attributes.source.certificate: every way one is refused, and what a good one yields."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from identity_support import CALLER, TRUST_DOMAIN, call, now, url_encoded, verifier

from authz_server.dev.trust_domain import TrustDomainCA
from authz_server.identity import Identity, IdentityFailure, IdentityReason, Proof
from authz_server.identity.config import IdentityConfig

HOUR = dt.timedelta(hours=1)


@pytest.fixture(scope="module")
def ca() -> TrustDomainCA:
    return TrustDomainCA.create(TRUST_DOMAIN)


def _reason(result: object) -> IdentityReason:
    assert isinstance(result, IdentityFailure), result
    return result.reason


def test_a_good_svid_yields_its_spiffe_id_trust_domain_path_expiry_and_fingerprint(ca: TrustDomainCA) -> None:
    svid = ca.issue(CALLER)
    result = verifier(ca).verify(call(certificate=svid.cert_pem, principal=CALLER), now())
    assert isinstance(result, Identity)
    assert (result.spiffe_id, result.trust_domain, result.path) == (CALLER, TRUST_DOMAIN, "/ns/shop/sa/frontend")
    assert result.proof is Proof.CERTIFICATE
    assert result.expires_at == svid.certificate.not_valid_after_utc.timestamp()
    der = svid.certificate.public_bytes(serialization.Encoding.DER)
    assert result.fingerprint == hashlib.sha256(der).hexdigest()


def test_an_expired_svid_is_refused_and_clock_skew_is_tolerated(ca: TrustDomainCA) -> None:
    start = dt.datetime.now(dt.UTC) - 2 * HOUR
    expired = ca.issue(CALLER, not_before=start, not_after=start + HOUR)
    failure = verifier(ca).verify(call(certificate=expired.cert_pem), now())
    assert _reason(failure) is IdentityReason.EXPIRED
    assert isinstance(failure, IdentityFailure) and failure.http_status == 401

    just_expired = ca.issue(CALLER, not_before=start, not_after=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=20))
    lenient, strict = IdentityConfig(clock_skew_s=60), IdentityConfig(clock_skew_s=0)
    assert isinstance(verifier(ca, config=lenient).verify(call(certificate=just_expired.cert_pem), now()), Identity)
    assert _reason(verifier(ca, config=strict).verify(call(certificate=just_expired.cert_pem), now())) is (
        IdentityReason.EXPIRED
    )


def test_an_svid_not_yet_valid_is_refused_unless_within_clock_skew(ca: TrustDomainCA) -> None:
    future = ca.issue(CALLER, not_before=dt.datetime.now(dt.UTC) + HOUR)
    assert _reason(verifier(ca).verify(call(certificate=future.cert_pem), now())) is IdentityReason.NOT_YET_VALID
    soon = ca.issue(CALLER, not_before=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=20))
    assert isinstance(verifier(ca).verify(call(certificate=soon.cert_pem), now()), Identity)


def test_a_foreign_trust_domain_is_refused_with_403(ca: TrustDomainCA) -> None:
    foreign = TrustDomainCA.create("evil.example")
    failure = verifier(ca).verify(call(certificate=foreign.issue("spiffe://evil.example/x").cert_pem), now())
    assert _reason(failure) is IdentityReason.UNTRUSTED_TRUST_DOMAIN
    assert isinstance(failure, IdentityFailure) and failure.http_status == 403


def test_federation_trusts_each_domain_with_its_own_bundle_only(ca: TrustDomainCA) -> None:
    partner = TrustDomainCA.create("partner.example")
    both = verifier(ca, partner)
    assert isinstance(
        both.verify(call(certificate=partner.issue("spiffe://partner.example/a").cert_pem), now()), Identity
    )
    # Our CA signing a certificate for the partner's domain proves nothing about the partner's workloads.
    crossed = ca.issue("spiffe://partner.example/a").cert_pem
    assert _reason(both.verify(call(certificate=crossed), now())) is IdentityReason.CHAIN_INVALID


def test_a_forgery_claiming_our_trust_domain_signed_by_another_ca_is_refused(ca: TrustDomainCA) -> None:
    impostor = TrustDomainCA.create(TRUST_DOMAIN)  # same name, same subject, different key
    forged = impostor.issue(CALLER).cert_pem
    failure = verifier(ca).verify(call(certificate=forged, principal=CALLER), now())
    assert _reason(failure) is IdentityReason.CHAIN_INVALID
    assert isinstance(failure, IdentityFailure) and "signature" in failure.detail


def test_two_uri_sans_are_refused(ca: TrustDomainCA) -> None:
    svid = ca.issue(CALLER, extra_uris=(f"spiffe://{TRUST_DOMAIN}/admin",))
    assert _reason(verifier(ca).verify(call(certificate=svid.cert_pem), now())) is IdentityReason.MULTIPLE_URI_SANS


@pytest.mark.parametrize(
    ("spiffe_id", "dns_names"),
    [
        (None, ("frontend.shop.svc",)),  # no URI SAN at all
        ("https://example.org/ns/shop/sa/frontend", ()),  # a URI, not a SPIFFE ID
        (f"spiffe://{TRUST_DOMAIN}/ns//frontend", ()),  # empty path segment
        (f"spiffe://{TRUST_DOMAIN}/ns/../admin", ()),  # dot segment
        ("spiffe://exa mple.org/x", ()),  # bad trust domain
        (f"spiffe://{TRUST_DOMAIN}", ()),  # the trust domain itself: a leaf's SPIFFE ID must have a path
    ],
)
def test_a_missing_or_malformed_spiffe_id_is_refused(
    ca: TrustDomainCA, spiffe_id: str | None, dns_names: tuple[str, ...]
) -> None:
    svid = ca.issue(spiffe_id, dns_names=dns_names)
    assert _reason(verifier(ca).verify(call(certificate=svid.cert_pem), now())) is IdentityReason.MALFORMED_SPIFFE_ID


def test_a_ca_certificate_used_as_leaf_is_refused(ca: TrustDomainCA) -> None:
    as_leaf = ca.issue(CALLER, is_ca=True)
    assert _reason(verifier(ca).verify(call(certificate=as_leaf.cert_pem), now())) is IdentityReason.NOT_A_LEAF


def test_a_leaf_without_digital_signature_usage_is_refused(ca: TrustDomainCA) -> None:
    svid = ca.issue(CALLER, digital_signature=False)
    failure = verifier(ca).verify(call(certificate=svid.cert_pem), now())
    assert _reason(failure) is IdentityReason.NOT_A_LEAF
    assert isinstance(failure, IdentityFailure) and "digitalSignature" in failure.detail


@pytest.mark.parametrize(
    "certificate",
    [
        url_encoded(b"\x00\x01garbage\xff".decode("latin-1").encode()),
        "not%20a%20certificate",
        "-----BEGIN%20CERTIFICATE-----%0AMIIB%2Fz%3D%3D%0A-----END%20CERTIFICATE-----%0A",  # armour, junk inside
    ],
    ids=["garbage-bytes", "text", "junk-inside-pem"],
)
def test_bytes_that_are_no_certificate_are_refused(ca: TrustDomainCA, certificate: str) -> None:
    result = verifier(ca).verify(call(certificate=certificate), now())
    assert _reason(result) is IdentityReason.MALFORMED_CERTIFICATE


def test_a_truncated_pem_is_refused(ca: TrustDomainCA) -> None:
    pem = ca.issue(CALLER).cert_pem
    for cut in (len(pem) // 2, len(pem) - 30):
        result = verifier(ca).verify(call(certificate=pem[:cut]), now())
        assert _reason(result) is IdentityReason.MALFORMED_CERTIFICATE


def test_a_principal_other_than_the_certificate_spiffe_id_is_refused(ca: TrustDomainCA) -> None:
    svid = ca.issue(CALLER)
    other = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/admin"
    failure = verifier(ca).verify(call(certificate=svid.cert_pem, principal=other), now())
    assert _reason(failure) is IdentityReason.PRINCIPAL_MISMATCH
    assert isinstance(failure, IdentityFailure) and failure.http_status == 403
    # The same certificate is fine when the principal agrees (and the cached result is not reused wrongly).
    assert isinstance(verifier(ca).verify(call(certificate=svid.cert_pem, principal=CALLER), now()), Identity)


def test_no_credential_at_all_is_no_identity_and_the_detail_says_what_envoy_sent(ca: TrustDomainCA) -> None:
    failure = verifier(ca).verify(call(), now())
    assert _reason(failure) is IdentityReason.NO_IDENTITY
    only_principal = verifier(ca).verify(call(principal=CALLER), now())
    assert _reason(only_principal) is IdentityReason.NO_IDENTITY
    assert isinstance(only_principal, IdentityFailure) and "include_peer_certificate" in only_principal.detail


def test_an_svid_from_an_intermediate_needs_the_intermediate(ca: TrustDomainCA) -> None:
    intermediate = ca.intermediate()
    svid = intermediate.issue(CALLER)
    # Envoy forwards the leaf only: with a root-only bundle there is no path.
    assert _reason(verifier(ca).verify(call(certificate=svid.cert_pem), now())) is IdentityReason.CHAIN_INVALID
    # Leaf followed by its intermediate: verified through it.
    assert isinstance(verifier(ca).verify(call(certificate=svid.chain_pem), now()), Identity)


def test_intermediates_in_the_bundle_complete_the_chain(ca: TrustDomainCA) -> None:
    from authz_server.identity import BundleSet, IdentityVerifier, parse_bundle

    intermediate = ca.intermediate()
    bundle = parse_bundle(
        TRUST_DOMAIN, ca.bundle_pem + intermediate.certificate.public_bytes(serialization.Encoding.PEM)
    )
    stage = IdentityVerifier(IdentityConfig(), BundleSet({TRUST_DOMAIN: bundle}))
    assert isinstance(stage.verify(call(certificate=intermediate.issue(CALLER).cert_pem), now()), Identity)


def test_a_path_length_constraint_is_enforced(ca: TrustDomainCA) -> None:
    # The intermediate allows no CA below it; a second-level intermediate violates that.
    second = ca.intermediate().intermediate()
    svid = second.issue(CALLER)
    failure = verifier(ca).verify(call(certificate=svid.chain_pem), now())
    assert _reason(failure) is IdentityReason.CHAIN_INVALID
    assert isinstance(failure, IdentityFailure) and "allows 0 intermediates" in failure.detail


def test_a_leaf_outliving_its_expired_bundle_authority_is_refused() -> None:
    short_lived = TrustDomainCA.create(TRUST_DOMAIN, ttl=dt.timedelta(days=1))
    svid = short_lived.issue(CALLER, ttl=dt.timedelta(days=3))
    stage = verifier(short_lived)
    assert isinstance(stage.verify(call(certificate=svid.cert_pem), now()), Identity)
    later = now() + 2 * 86400
    failure = stage.verify(call(certificate=svid.cert_pem), later)
    assert _reason(failure) is IdentityReason.CHAIN_INVALID
    assert isinstance(failure, IdentityFailure) and "expired" in failure.detail

"""Credentials built to hurt the server rather than to pass: each is a bounded, precise denial."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from identity_support import CALLER, PROXY, TRUST_DOMAIN, call, now, url_encoded, verifier

from authz_server.dev.trust_domain import TrustDomainCA
from authz_server.identity import Identity, IdentityFailure, IdentityReason
from authz_server.identity.config import IdentityConfig
from authz_server.identity.x509svid import MAX_PRESENTED_CERTIFICATES

XFCC_ONLY = IdentityConfig(sources=("xfcc",), xfcc_trusted_proxies=(PROXY,))


@pytest.fixture(scope="module")
def ca() -> TrustDomainCA:
    return TrustDomainCA.create(TRUST_DOMAIN)


def _reason(result: object) -> IdentityReason:
    assert isinstance(result, IdentityFailure), result
    return result.reason


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def test_a_chain_of_mutually_signing_intermediates_is_refused_after_bounded_work(ca: TrustDomainCA) -> None:
    # 12 such intermediates are 12!/4! orderings at depth 8: hours of signature checks without a budget.
    leaf, tangle = ca.tangled_chain(CALLER, 12)
    header = f"By={PROXY};Cert={url_encoded(_pem(leaf))};Chain={url_encoded(_pem(leaf, *tangle))}"
    failure = verifier(ca, config=XFCC_ONLY).verify(call(headers={"x-forwarded-client-cert": header}), now())
    assert _reason(failure) is IdentityReason.CHAIN_INVALID
    assert isinstance(failure, IdentityFailure) and "signature checks" in failure.detail

    # The same through attributes.source.certificate (a proxy that forwards the whole presented chain).
    failure = verifier(ca).verify(call(certificate=_pem(leaf, *tangle)), now())
    assert _reason(failure) is IdentityReason.CHAIN_INVALID


def test_more_presented_intermediates_than_any_real_chain_has_are_refused(ca: TrustDomainCA) -> None:
    svid = ca.intermediate().issue(CALLER)
    padding = [ca.intermediate().certificate for _ in range(MAX_PRESENTED_CERTIFICATES)]
    failure = verifier(ca).verify(call(certificate=svid.chain_pem + _pem(*padding)), now())
    assert _reason(failure) is IdentityReason.CHAIN_INVALID
    assert isinstance(failure, IdentityFailure) and f"at most {MAX_PRESENTED_CERTIFICATES}" in failure.detail
    # A real chain, repeated in Cert and Chain as some proxies do, is counted once.
    header = f"By={PROXY};Cert={url_encoded(svid.chain_pem)};Chain={url_encoded(svid.chain_pem * 3)}"
    result = verifier(ca, config=XFCC_ONLY).verify(call(headers={"x-forwarded-client-cert": header}), now())
    assert isinstance(result, Identity)


def test_a_certificate_with_an_invalid_version_field_is_malformed(ca: TrustDomainCA) -> None:
    der = bytearray(ca.issue(CALLER).certificate.public_bytes(serialization.Encoding.DER))
    version = der.index(bytes.fromhex("a003020102"))  # [0] EXPLICIT INTEGER 2 (v3)
    der[version + 4] = 1  # cryptography raises InvalidVersion, which is no ValueError
    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(bytes(der)) + b"-----END CERTIFICATE-----\n"
    assert _reason(verifier(ca).verify(call(certificate=pem), now())) is IdentityReason.MALFORMED_CERTIFICATE


@pytest.mark.parametrize("key", ["By", "Cert", "Hash", "Chain", "Subject"])
def test_an_xfcc_element_repeating_a_single_valued_key_is_refused(ca: TrustDomainCA, key: str) -> None:
    svid = ca.issue(CALLER)
    digest = hashlib.sha256(svid.certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
    pairs = {"By": PROXY, "Hash": digest, "Cert": url_encoded(svid.cert_pem), "Subject": '"O=SPIRE"'}
    pairs["Chain"] = pairs["Cert"]
    header = ";".join(f"{k}={v}" for k, v in pairs.items())
    intruder = TrustDomainCA.create("evil.example").issue("spiffe://evil.example/x")
    extra = {"By": PROXY, "Cert": url_encoded(intruder.cert_pem), "Chain": url_encoded(intruder.cert_pem)}
    header += f";{key}={extra.get(key, pairs[key])}"
    failure = verifier(ca, config=XFCC_ONLY).verify(call(headers={"x-forwarded-client-cert": header}), now())
    assert _reason(failure) is IdentityReason.UNTRUSTED_XFCC
    assert isinstance(failure, IdentityFailure) and key.lower() in failure.detail


def test_a_flood_of_bad_certificates_does_not_evict_good_identities(ca: TrustDomainCA) -> None:
    stage = verifier(ca, config=IdentityConfig(cache_size=4))
    good = call(certificate=ca.issue(CALLER).cert_pem)
    assert isinstance(stage.verify(good, now()), Identity)
    for i in range(20):
        assert _reason(stage.verify(call(certificate=f"junk-{i}"), now())) is IdentityReason.MALFORMED_CERTIFICATE
    hits = stage.cache_stats().hits
    assert isinstance(stage.verify(good, now()), Identity)
    assert stage.cache_stats().hits == hits + 1

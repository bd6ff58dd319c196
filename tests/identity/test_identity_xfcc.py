"""x-forwarded-client-cert: the parser, and which statements by which proxies are believed."""

from __future__ import annotations

import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from identity_support import CALLEE, CALLER, PROXY, TRUST_DOMAIN, call, now, url_encoded, verifier

from authz_server.dev.trust_domain import Svid, TrustDomainCA
from authz_server.identity import Identity, IdentityFailure, IdentityReason, Proof
from authz_server.identity.config import IdentityConfig
from authz_server.identity.xfcc import XfccError, parse_xfcc

XFCC_ONLY = IdentityConfig(sources=("xfcc",), xfcc_trusted_proxies=(PROXY,))


@pytest.fixture(scope="module")
def ca() -> TrustDomainCA:
    return TrustDomainCA.create(TRUST_DOMAIN)


def element(svid: Svid, by: str = PROXY, *, chain: bool = False, uri: str | None = None, digest: str = "") -> str:
    der = svid.certificate.public_bytes(serialization.Encoding.DER)
    parts = [
        f"By={by}",
        f"Hash={digest or hashlib.sha256(der).hexdigest()}",
        f"Cert={url_encoded(svid.cert_pem)}",
    ]
    if chain:
        parts.append(f"Chain={url_encoded(svid.chain_pem)}")
    parts.append('Subject="O=SPIRE,CN=frontend; \\"blue\\""')
    san = svid.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    parts.append(f"URI={uri if uri is not None else san.get_values_for_type(x509.UniformResourceIdentifier)[0]}")
    return ";".join(parts)


# --- parser ---------------------------------------------------------------------


def test_elements_pairs_and_quoted_values_with_commas_semicolons_and_escaped_quotes() -> None:
    header = (
        'By=spiffe://a/gw;Hash=ab12;Subject="CN=x,O=\\"Acme; Inc.\\",L=Berlin";URI=spiffe://a/x;DNS=x.svc;DNS=y.svc,'
        "By=spiffe://a/sidecar;URI=spiffe://a/gw"
    )
    first, second = parse_xfcc(header)
    assert first["by"] == ("spiffe://a/gw",)
    assert first["subject"] == ('CN=x,O="Acme; Inc.",L=Berlin',)
    assert first["dns"] == ("x.svc", "y.svc")
    assert first["uri"] == ("spiffe://a/x",)
    assert second == {"by": ("spiffe://a/sidecar",), "uri": ("spiffe://a/gw",)}


def test_keys_are_case_insensitive_and_a_quoted_value_may_hold_an_equals_sign() -> None:
    (only,) = parse_xfcc('by=spiffe://a/gw;SUBJECT="CN=a=b";uri=spiffe://a/x')
    assert only == {"by": ("spiffe://a/gw",), "subject": ("CN=a=b",), "uri": ("spiffe://a/x",)}


@pytest.mark.parametrize(
    "header",
    ["", "By", 'By=spiffe://a;Subject="CN=unterminated', "By=a,", 'Subject="CN=a"junk;By=b', "By=a,,By=b", "By=a;\n"],
)
def test_malformed_headers_are_rejected(header: str) -> None:
    with pytest.raises(XfccError):
        parse_xfcc(header)


# --- the xfcc source ----------------------------------------------------------------


def test_a_trusted_proxy_statement_with_a_verifiable_cert_is_an_identity(ca: TrustDomainCA) -> None:
    result = verifier(ca, config=XFCC_ONLY).verify(
        call(headers={"x-forwarded-client-cert": element(ca.issue(CALLER))}), now()
    )
    assert isinstance(result, Identity)
    assert result.spiffe_id == CALLER and result.proof is Proof.XFCC


def test_only_the_last_element_counts(ca: TrustDomainCA) -> None:
    stage = verifier(ca, config=XFCC_ONLY)
    # A client-supplied element in front of the trusted proxy's own one changes nothing.
    forged = f"By={PROXY};URI=spiffe://{TRUST_DOMAIN}/ns/admin/sa/root"
    header = f"{forged},{element(ca.issue(CALLER))}"
    result = stage.verify(call(headers={"x-forwarded-client-cert": header}), now())
    assert isinstance(result, Identity) and result.spiffe_id == CALLER
    # A trusted element followed by an untrusted proxy's one is refused.
    header = f"{element(ca.issue(CALLER))},{element(ca.issue(CALLER), by='spiffe://example.org/ns/x/sa/any')}"
    result = stage.verify(call(headers={"x-forwarded-client-cert": header}), now())
    assert isinstance(result, IdentityFailure) and result.reason is IdentityReason.UNTRUSTED_XFCC


@pytest.mark.parametrize(
    "by", ["spiffe://example.org/ns/shop/sa/frontend", "spiffe://other.example/ns/edge/sa/gateway", ""]
)
def test_a_statement_by_an_untrusted_or_unnamed_proxy_is_refused_with_403(ca: TrustDomainCA, by: str) -> None:
    header = element(ca.issue(CALLER), by=by)
    if not by:
        header = header.removeprefix("By=;")
    result = verifier(ca, config=XFCC_ONLY).verify(call(headers={"x-forwarded-client-cert": header}), now())
    assert isinstance(result, IdentityFailure) and result.reason is IdentityReason.UNTRUSTED_XFCC
    assert result.http_status == 403


def test_a_malformed_header_is_refused(ca: TrustDomainCA) -> None:
    result = verifier(ca, config=XFCC_ONLY).verify(call(headers={"x-forwarded-client-cert": 'By="open'}), now())
    assert isinstance(result, IdentityFailure) and result.reason is IdentityReason.UNTRUSTED_XFCC


def test_the_cert_is_verified_in_full(ca: TrustDomainCA) -> None:
    stage = verifier(ca, config=XFCC_ONLY)
    forged = TrustDomainCA.create(TRUST_DOMAIN).issue(CALLER)
    result = stage.verify(call(headers={"x-forwarded-client-cert": element(forged)}), now())
    assert isinstance(result, IdentityFailure) and result.reason is IdentityReason.CHAIN_INVALID
    garbage = f"By={PROXY};Cert=%2D%2D%2D%2D%2DBEGIN%20CERTIFICATE%2D%2D%2D%2D%2D%0Agarbage"
    result = stage.verify(call(headers={"x-forwarded-client-cert": garbage}), now())
    assert isinstance(result, IdentityFailure) and result.reason is IdentityReason.MALFORMED_CERTIFICATE


def test_a_chain_lets_intermediates_be_verified(ca: TrustDomainCA) -> None:
    svid = ca.intermediate().issue(CALLER)
    stage = verifier(ca, config=XFCC_ONLY)
    without = stage.verify(call(headers={"x-forwarded-client-cert": element(svid)}), now())
    assert isinstance(without, IdentityFailure) and without.reason is IdentityReason.CHAIN_INVALID
    with_chain = stage.verify(call(headers={"x-forwarded-client-cert": element(svid, chain=True)}), now())
    assert isinstance(with_chain, Identity) and with_chain.spiffe_id == CALLER


def test_a_uri_or_hash_disagreeing_with_the_cert_is_refused(ca: TrustDomainCA) -> None:
    stage = verifier(ca, config=XFCC_ONLY)
    svid = ca.issue(CALLER)
    other = stage.verify(
        call(headers={"x-forwarded-client-cert": element(svid, uri=f"spiffe://{TRUST_DOMAIN}/x")}), now()
    )
    assert isinstance(other, IdentityFailure) and other.reason is IdentityReason.PRINCIPAL_MISMATCH
    wrong_hash = stage.verify(call(headers={"x-forwarded-client-cert": element(svid, digest="00" * 32)}), now())
    assert isinstance(wrong_hash, IdentityFailure) and wrong_hash.reason is IdentityReason.UNTRUSTED_XFCC


def test_an_element_without_cert_proves_nothing(ca: TrustDomainCA) -> None:
    header = f"By={PROXY};URI={CALLER}"
    result = verifier(ca, config=XFCC_ONLY).verify(call(headers={"x-forwarded-client-cert": header}), now())
    assert isinstance(result, IdentityFailure) and result.reason is IdentityReason.NO_IDENTITY
    assert "set_current_client_cert_details" in result.detail


def test_the_certificate_comes_first_when_both_are_configured(ca: TrustDomainCA) -> None:
    config = IdentityConfig(sources=("certificate", "xfcc"), xfcc_trusted_proxies=(PROXY,))
    stage = verifier(ca, config=config)
    gateway = ca.issue(PROXY)
    xfcc = {"x-forwarded-client-cert": element(ca.issue(CALLER))}
    direct = stage.verify(call(certificate=gateway.cert_pem, headers=xfcc), now())
    assert isinstance(direct, Identity) and direct.spiffe_id == PROXY and direct.proof is Proof.CERTIFICATE
    forwarded = stage.verify(call(headers=xfcc), now())
    assert isinstance(forwarded, Identity) and forwarded.spiffe_id == CALLER and forwarded.proof is Proof.XFCC
    # A bad certificate is a denial; it never falls through to the weaker source.
    refused = stage.verify(call(certificate="junk", headers=xfcc), now())
    assert isinstance(refused, IdentityFailure) and refused.reason is IdentityReason.MALFORMED_CERTIFICATE


def test_destination_trusts_the_element_the_local_proxy_appended(ca: TrustDomainCA) -> None:
    # Istio's sidecars append with By = their own identity, which Envoy reports as the destination principal.
    config = IdentityConfig(sources=("xfcc",), xfcc_trusted_proxies=("destination",))
    stage = verifier(ca, config=config)
    header = {"x-forwarded-client-cert": element(ca.issue(CALLER), by=CALLEE)}
    result = stage.verify(call(headers=header, destination=CALLEE), now())
    assert isinstance(result, Identity) and result.spiffe_id == CALLER
    # The same header reaching another destination was not appended by that destination's proxy.
    elsewhere = stage.verify(call(headers=header, destination=f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/stock"), now())
    assert isinstance(elsewhere, IdentityFailure) and elsewhere.reason is IdentityReason.UNTRUSTED_XFCC
    no_destination = stage.verify(
        call(headers={"x-forwarded-client-cert": element(ca.issue(CALLER), by="")}, destination=""), now()
    )
    assert isinstance(no_destination, IdentityFailure) and no_destination.reason is IdentityReason.UNTRUSTED_XFCC

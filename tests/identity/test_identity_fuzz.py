"""Hostile input never crashes the identity stage: it always answers with an identity or a reason.

Property tests (hypothesis) over the two parsers a caller can feed directly, the XFCC header and the
certificate decoder, and over the verifier that sits on top of them.
"""

from __future__ import annotations

import base64
import json
import urllib.parse

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from identity_support import CALLER, PROXY, TRUST_DOMAIN, call, jwk, now, url_encoded, verifier

from authz_server.dev.trust_domain import TrustDomainCA
from authz_server.identity import Identity, IdentityFailure, IdentityReason, IdentityVerifier
from authz_server.identity.config import IdentityConfig
from authz_server.identity.x509svid import decode_pem_certificates
from authz_server.identity.xfcc import XfccError, parse_xfcc

FUZZ = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

_CA = TrustDomainCA.create(TRUST_DOMAIN)
_SVID = _CA.issue(CALLER)
_DER = _SVID.certificate.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def stage() -> IdentityVerifier:
    return verifier(_CA, config=IdentityConfig(sources=("certificate",), negative_cache_ttl_s=0))


@pytest.fixture(scope="module")
def jwt_stage() -> IdentityVerifier:
    key = ec.generate_private_key(ec.SECP256R1())
    config = IdentityConfig(sources=("jwt",), negative_cache_ttl_s=0)
    return verifier(_CA, config=config, **{TRUST_DOMAIN: jwk(key, "k1")})


@pytest.fixture(scope="module")
def xfcc_stage() -> IdentityVerifier:
    return verifier(_CA, config=IdentityConfig(sources=("xfcc",), xfcc_trusted_proxies=(PROXY,)))


# --- XFCC -----------------------------------------------------------------------

_KEYS = st.sampled_from(["By", "Hash", "Cert", "Chain", "Subject", "URI", "DNS", "uri", "dns"])
# Printable ASCII, so every separator, quote and escape character the grammar knows shows up in values.
_VALUES = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=24)
_ELEMENTS = st.lists(st.lists(st.tuples(_KEYS, _VALUES), min_size=1, max_size=5), min_size=1, max_size=4)


def _encode_value(value: str) -> str:
    """Quote the way Envoy does when a value holds a separator or a quote; escape quotes and backslashes."""
    if any(c in value for c in ',;="\\'):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


@FUZZ
@given(_ELEMENTS)
def test_any_header_built_by_the_grammar_parses_back_to_its_values(elements: list[list[tuple[str, str]]]) -> None:
    header = ",".join(";".join(f"{key}={_encode_value(value)}" for key, value in pairs) for pairs in elements)
    parsed = parse_xfcc(header)
    assert len(parsed) == len(elements)
    for got, pairs in zip(parsed, elements, strict=True):
        expected: dict[str, list[str]] = {}
        for key, value in pairs:
            expected.setdefault(key.lower(), []).append(value)
        assert {k: list(v) for k, v in got.items()} == expected


@FUZZ
@given(st.text(max_size=200))
def test_any_text_either_parses_or_is_rejected_with_xfcc_error(header: str) -> None:
    try:
        elements = parse_xfcc(header)
    except XfccError:
        return
    assert elements and all(element for element in elements)


@FUZZ
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300))
def test_an_xfcc_header_from_a_trusted_proxy_with_junk_is_always_a_denial(
    xfcc_stage: IdentityVerifier, junk: str
) -> None:
    for header in (f"By={PROXY};{junk}", f"By={PROXY};Cert={junk}", f"{junk},By={PROXY};Cert={junk}"):
        result = xfcc_stage.verify(call(headers={"x-forwarded-client-cert": header}), now())
        assert isinstance(result, IdentityFailure)
        assert isinstance(result.http_status, int)


# --- certificates ---------------------------------------------------------------


@FUZZ
@given(st.text(max_size=400))
def test_the_decoder_returns_certificates_or_malformed_for_any_text(text: str) -> None:
    for candidate in (text, f"-----BEGIN CERTIFICATE-----\n{text}\n-----END CERTIFICATE-----\n"):
        decoded = decode_pem_certificates(candidate)
        if isinstance(decoded, IdentityFailure):
            assert decoded.reason is IdentityReason.MALFORMED_CERTIFICATE
        else:
            assert decoded  # a list of certificates, never an empty success


@FUZZ
@given(st.binary(max_size=600))
def test_arbitrary_bytes_in_pem_armour_are_malformed(stage: IdentityVerifier, der: bytes) -> None:
    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n"
    result = stage.verify(call(certificate=pem), now())
    assert isinstance(result, IdentityFailure)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(_DER) - 1), st.integers(0, 255)), min_size=1, max_size=4))
def test_a_corrupted_svid_is_refused_or_still_the_same_identity(
    stage: IdentityVerifier, edits: list[tuple[int, int]]
) -> None:
    der = bytearray(_DER)
    for position, value in edits:
        der[position] = value
    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(bytes(der)) + b"-----END CERTIFICATE-----\n"
    result = stage.verify(call(certificate=pem), now())
    if isinstance(result, Identity):
        # Only bytes the signature does not cover may change and still verify; the identity cannot.
        assert result.spiffe_id == CALLER
    else:
        assert isinstance(result, IdentityFailure)


@FUZZ
@given(st.text(max_size=300))
def test_any_url_encoded_text_as_the_certificate_is_a_result(stage: IdentityVerifier, text: str) -> None:
    for raw in (text, urllib.parse.quote(text, safe=""), url_encoded(_SVID.cert_pem)[: len(text)]):
        result = stage.verify(call(certificate=raw), now())
        assert isinstance(result, Identity | IdentityFailure)
        if raw and isinstance(result, Identity):
            assert raw == url_encoded(_SVID.cert_pem)


# --- JWT-SVIDs ------------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)


def _segment(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


@FUZZ
@given(
    st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit"]), _JSON, max_size=4),
    st.dictionaries(st.sampled_from(["sub", "aud", "exp", "iat", "iss"]), _JSON, max_size=5),
    st.text(alphabet="ABCDEFabcdef0123456789-_", max_size=90),
)
def test_any_token_shaped_value_is_refused_without_an_exception(
    jwt_stage: IdentityVerifier, header: dict[str, object], claims: dict[str, object], signature: str
) -> None:
    token = f"{_segment(header)}.{_segment(claims)}.{signature}"
    for value in (f"Bearer {token}", token, token[: len(token) // 2]):
        result = jwt_stage.verify(call(headers={"authorization": value}), now())
        assert isinstance(result, IdentityFailure)

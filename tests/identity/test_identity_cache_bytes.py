"""The identity cache holds what a credential proves, not the text a caller wrapped it in.

A certificate field is Envoy's URL-encoded PEM, but text before the PEM block still parses: 100 KiB of junk in
front of a valid certificate is a valid field. Each such field must cost the cache a fixed few bytes and must not
be verified again when its certificate already was.
"""

from __future__ import annotations

import gc
import tracemalloc
import urllib.parse

import pytest
from identity_support import CALLER, TRUST_DOMAIN, call, now, url_encoded, verifier

from authz_server.dev.trust_domain import TrustDomainCA
from authz_server.identity import Identity, IdentityFailure, IdentityReason
from authz_server.identity.x509svid import TrustStore


@pytest.fixture(scope="module")
def ca() -> TrustDomainCA:
    return TrustDomainCA.create(TRUST_DOMAIN)


def wrapped(pem: bytes, index: int, size: int = 100 * 1024) -> str:
    """`size` bytes of distinct junk, then the certificate: what a hostile caller over direct gRPC can send."""
    junk = f"junk {index:06d} " * (size // 12)
    return urllib.parse.quote(junk, safe="") + url_encoded(pem)


def test_junk_before_a_valid_certificate_still_proves_its_identity(ca: TrustDomainCA) -> None:
    result = verifier(ca).verify(call(certificate=wrapped(ca.issue(CALLER).cert_pem, 0)), now())
    assert isinstance(result, Identity) and result.spiffe_id == CALLER


def test_a_certificate_in_many_wrappings_is_verified_once(ca: TrustDomainCA, monkeypatch: pytest.MonkeyPatch) -> None:
    verified = []
    real = TrustStore.verify

    def counting(self: TrustStore, *args: object, **kwargs: object) -> object:
        verified.append(1)
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(TrustStore, "verify", counting)
    stage = verifier(ca)
    pem = ca.issue(CALLER).cert_pem
    results = [stage.verify(call(certificate=wrapped(pem, i, 4096)), now()) for i in range(50)]
    assert all(isinstance(r, Identity) and r.spiffe_id == CALLER for r in results)
    assert len(verified) == 1


@pytest.mark.slow
def test_a_hundred_100_kib_fields_leave_the_cache_kilobytes_not_megabytes(ca: TrustDomainCA) -> None:
    stage = verifier(ca)
    pem = ca.issue(CALLER).cert_pem
    stage.verify(call(certificate=url_encoded(pem)), now())  # the first verification's own allocations
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index in range(100):
            assert isinstance(stage.verify(call(certificate=wrapped(pem, index)), now()), Identity)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # 100 fields of 100 KiB are 10 MiB of text; a fixed-size key and a shared result are ~200 bytes each.
    assert kept < 100 * 1024, f"the cache kept {kept / 2**20:.1f} MiB for 100 fields"


def test_junk_without_a_certificate_is_refused_and_not_kept(ca: TrustDomainCA) -> None:
    stage = verifier(ca)
    result = stage.verify(call(certificate="x" * 100 * 1024), now())
    assert isinstance(result, IdentityFailure) and result.reason is IdentityReason.MALFORMED_CERTIFICATE

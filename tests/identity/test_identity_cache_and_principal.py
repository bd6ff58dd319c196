"""The result cache, the bare-principal source, and the identity configuration checks."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest
import yaml
from identity_support import CALLER, TRUST_DOMAIN, call, now, verifier

from authz_server.config import ConfigError, load_config
from authz_server.dev.trust_domain import TrustDomainCA
from authz_server.identity import Identity, IdentityFailure, IdentityReason, Proof
from authz_server.identity.config import IdentityConfig, TrustDomainConfig


@pytest.fixture(scope="module")
def ca() -> TrustDomainCA:
    return TrustDomainCA.create(TRUST_DOMAIN)


def test_the_second_call_with_the_same_certificate_is_a_cache_hit(ca: TrustDomainCA) -> None:
    stage = verifier(ca)
    pem = ca.issue(CALLER).cert_pem
    first = stage.verify(call(certificate=pem), now())
    second = stage.verify(call(certificate=pem), now())
    assert isinstance(first, Identity) and second is first
    assert (stage.cache_stats().hits, stage.cache_stats().misses) == (1, 1)


def test_a_cached_identity_ends_with_its_certificate(ca: TrustDomainCA) -> None:
    stage = verifier(ca, config=IdentityConfig(clock_skew_s=0))
    svid = ca.issue(CALLER, ttl=dt.timedelta(minutes=10))
    assert isinstance(stage.verify(call(certificate=svid.cert_pem), now()), Identity)
    after = svid.certificate.not_valid_after_utc.timestamp() + 1
    result = stage.verify(call(certificate=svid.cert_pem), after)
    assert isinstance(result, IdentityFailure) and result.reason is IdentityReason.EXPIRED


def test_failures_are_remembered_for_the_negative_ttl_only(ca: TrustDomainCA) -> None:
    stage = verifier(ca, config=IdentityConfig(negative_cache_ttl_s=30))
    forged = TrustDomainCA.create(TRUST_DOMAIN).issue(CALLER).cert_pem
    t = now()
    stage.verify(call(certificate=forged), t)
    stage.verify(call(certificate=forged), t + 10)
    assert stage.cache_stats().hits == 1
    stage.verify(call(certificate=forged), t + 31)
    assert stage.cache_stats().misses == 2


def test_a_not_yet_valid_certificate_is_not_remembered_as_refused(ca: TrustDomainCA) -> None:
    stage = verifier(ca, config=IdentityConfig(clock_skew_s=0))
    start = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    svid = ca.issue(CALLER, not_before=start)
    refused = stage.verify(call(certificate=svid.cert_pem), now())
    assert isinstance(refused, IdentityFailure) and refused.reason is IdentityReason.NOT_YET_VALID
    assert isinstance(stage.verify(call(certificate=svid.cert_pem), start.timestamp() + 1), Identity)


def test_the_cache_is_bounded(ca: TrustDomainCA) -> None:
    stage = verifier(ca, config=IdentityConfig(cache_size=2))
    for index in range(4):
        stage.verify(call(certificate=ca.issue(f"{CALLER}-{index}").cert_pem), now())
    assert stage.cache_stats().size == 2


def test_concurrent_calls_share_one_verifier_safely(ca: TrustDomainCA) -> None:
    stage = verifier(ca, config=IdentityConfig(cache_size=4))
    pems = [ca.issue(f"{CALLER}-{i}").cert_pem for i in range(6)]  # more certificates than cache slots
    errors: list[object] = []

    def worker(offset: int) -> None:
        for i in range(60):
            pem = pems[(offset + i) % len(pems)]
            result = stage.verify(call(certificate=pem), now())
            if not isinstance(result, Identity):
                errors.append(result)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


# --- principal ------------------------------------------------------------------------

TRUST_PROXY = IdentityConfig(sources=("certificate", "principal"), trust_proxy_principal=True)


def test_a_bare_principal_is_accepted_only_when_trusting_the_proxy(ca: TrustDomainCA) -> None:
    result = verifier(ca, config=TRUST_PROXY).verify(call(principal=CALLER), now())
    assert isinstance(result, Identity)
    assert result.proof is Proof.PRINCIPAL and result.expires_at is None and result.fingerprint is None
    refused = verifier(ca).verify(call(principal=CALLER), now())
    assert isinstance(refused, IdentityFailure) and refused.reason is IdentityReason.NO_IDENTITY


@pytest.mark.parametrize(
    ("principal", "reason"),
    [
        ("frontend.shop.svc.cluster.local", IdentityReason.MALFORMED_SPIFFE_ID),
        ("spiffe://evil.example/ns/shop/sa/frontend", IdentityReason.UNTRUSTED_TRUST_DOMAIN),
        (f"spiffe://{TRUST_DOMAIN}", IdentityReason.MALFORMED_SPIFFE_ID),  # the trust domain, not a workload
    ],
)
def test_a_bare_principal_must_still_be_a_spiffe_id_of_a_trusted_domain(
    ca: TrustDomainCA, principal: str, reason: IdentityReason
) -> None:
    result = verifier(ca, config=TRUST_PROXY).verify(call(principal=principal), now())
    assert isinstance(result, IdentityFailure) and result.reason is reason


def test_a_certificate_still_wins_over_the_principal(ca: TrustDomainCA) -> None:
    forged = TrustDomainCA.create(TRUST_DOMAIN).issue(CALLER).cert_pem
    result = verifier(ca, config=TRUST_PROXY).verify(call(certificate=forged, principal=CALLER), now())
    assert isinstance(result, IdentityFailure) and result.reason is IdentityReason.CHAIN_INVALID


# --- configuration --------------------------------------------------------------------


def _problems(tmp_path: Path, **identity: object) -> list[str]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"identity": identity}))
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    return [p.removesuffix(f" (in {path})") for p in raised.value.problems]


def test_unsafe_or_inconsistent_settings_are_named(tmp_path: Path) -> None:
    assert _problems(tmp_path, sources=["principal"]) == [
        "identity.sources: 'principal' requires trust_proxy_principal: true"
    ]
    assert _problems(tmp_path, sources=["xfcc"]) == [
        "identity.xfcc_trusted_proxies: required when sources include 'xfcc'"
    ]
    assert any("unknown source 'cookie'" in p for p in _problems(tmp_path, sources=["certificate", "cookie"]))
    bad_proxy = _problems(tmp_path, sources=["xfcc"], xfcc_trusted_proxies=["gateway"])
    assert any(p.startswith("identity.xfcc_trusted_proxies: ") for p in bad_proxy)
    assert _problems(tmp_path, cache_size=0) == ["identity.cache_size: must be >= 1, got 0"]
    for socket in ("tcp://1.2.3.4:1", "unix://agent/sock", "run/spire/sockets/agent.sock"):
        assert _problems(tmp_path, workload_api_socket=socket) == [
            f"identity.workload_api_socket: expected unix:///absolute/path (or /absolute/path), got {socket!r}"
        ]
    for socket in ("unix:///run/spire/sockets/agent.sock", "unix:/run/spire/sockets/agent.sock", "/run/agent.sock"):
        assert IdentityConfig(workload_api_socket=socket).validate() == []


def test_scalar_settings_come_from_the_environment_too() -> None:
    config = load_config(environ={"AUTHZ_IDENTITY_CLOCK_SKEW_S": "5", "AUTHZ_IDENTITY_TRUST_PROXY_PRINCIPAL": "yes"})
    assert config.identity.clock_skew_s == 5.0 and config.identity.trust_proxy_principal is True


def test_a_trust_domain_needs_a_bundle_file_or_the_workload_api() -> None:
    config = IdentityConfig(trust_domains={TRUST_DOMAIN: TrustDomainConfig()})
    assert config.validate() == [f"trust_domains.{TRUST_DOMAIN}.bundle: required unless workload_api_socket is set"]
    assert IdentityConfig(trust_domains={"Example.ORG": TrustDomainConfig(bundle="/b.pem")}).validate() == [
        "trust_domains.Example.ORG: write the trust domain in lower case"
    ]
    assert (
        IdentityConfig(trust_domains={TRUST_DOMAIN: TrustDomainConfig()}, workload_api_socket="unix:///s").validate()
        == []
    )
    assert IdentityConfig().validate() == []

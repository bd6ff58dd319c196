"""Trust bundles from files: formats, reloads (also the Kubernetes ConfigMap symlink swap), bad files."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from identity_support import CALLER, TRUST_DOMAIN, call, jwk, mint_jwt, now, spiffe_bundle

from authz_server.dev.trust_domain import TrustDomainCA
from authz_server.identity import Identity, IdentityFailure, IdentityLoadError, IdentityReason, IdentityVerifier, source
from authz_server.identity.config import IdentityConfig, TrustDomainConfig


def _config(bundle: Path, **settings: object) -> IdentityConfig:
    return IdentityConfig(trust_domains={TRUST_DOMAIN: TrustDomainConfig(bundle=str(bundle))}, **settings)  # type: ignore[arg-type]


def _accepts(stage: IdentityVerifier, ca: TrustDomainCA) -> bool:
    return isinstance(stage.verify(call(certificate=ca.issue(CALLER).cert_pem), now()), Identity)


def _replace_file(path: Path, data: bytes) -> None:
    """Write the way tools that update files safely do: a new file renamed over the old one."""
    staging = path.with_suffix(".tmp")
    staging.write_bytes(data)
    os.replace(staging, path)


def test_a_changed_bundle_file_builds_a_new_verifier_with_an_empty_cache(tmp_path: Path) -> None:
    old_ca, new_ca = TrustDomainCA.create(TRUST_DOMAIN), TrustDomainCA.create(TRUST_DOMAIN)
    bundle = old_ca.write_bundle(tmp_path / "bundle.pem")
    identity = source(_config(bundle))
    first = identity.load()
    applied: list[IdentityVerifier] = []
    identity.start(applied.append)
    try:
        pem = old_ca.issue(CALLER).cert_pem
        first.verify(call(certificate=pem), now())
        first.verify(call(certificate=pem), now())
        assert first.cache_stats().hits == 1

        identity.poll_files()
        assert applied == []  # nothing changed, nothing rebuilt

        _replace_file(bundle, new_ca.bundle_pem)
        identity.poll_files()
        (second,) = applied
        assert second.version != first.version and second.cache_stats().hits == 0
        refused = second.verify(call(certificate=pem), now())
        assert isinstance(refused, IdentityFailure) and refused.reason is IdentityReason.CHAIN_INVALID
        assert _accepts(second, new_ca)
        assert identity.status()["bundle_reloads"] == "1"
    finally:
        identity.close()


def test_a_configmap_style_symlink_swap_is_picked_up_by_the_watcher_thread(tmp_path: Path) -> None:
    old_ca, new_ca = TrustDomainCA.create(TRUST_DOMAIN), TrustDomainCA.create(TRUST_DOMAIN)
    # The kubelet's layout: bundle.pem -> ..data/bundle.pem, ..data -> ..<timestamp>/
    for version, ca in (("..v1", old_ca), ("..v2", new_ca)):
        ca.write_bundle(tmp_path / version / "bundle.pem")
    (tmp_path / "..data").symlink_to("..v1")
    (tmp_path / "bundle.pem").symlink_to("..data/bundle.pem")
    # Same size, and mtime granularity may hide the change: only the resolved target tells.
    mtime = os.stat(tmp_path / "..v1" / "bundle.pem").st_mtime_ns
    os.utime(tmp_path / "..v2" / "bundle.pem", ns=(mtime, mtime))

    identity = source(_config(tmp_path / "bundle.pem", bundle_poll_interval_s=0.05))
    assert _accepts(identity.load(), old_ca)
    applied: list[IdentityVerifier] = []
    identity.start(applied.append)
    try:
        (tmp_path / "..data_tmp").symlink_to("..v2")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        deadline = time.monotonic() + 5
        while not applied and time.monotonic() < deadline:
            time.sleep(0.02)
        assert applied, "the symlink swap was not noticed"
        assert _accepts(applied[-1], new_ca) and not _accepts(applied[-1], old_ca)
    finally:
        identity.close()


def test_an_invalid_bundle_on_reload_is_rejected_and_the_last_good_one_keeps_serving(tmp_path: Path) -> None:
    ca, next_ca = TrustDomainCA.create(TRUST_DOMAIN), TrustDomainCA.create(TRUST_DOMAIN)
    bundle = ca.write_bundle(tmp_path / "bundle.pem")
    identity = source(_config(bundle))
    stage = identity.load()
    applied: list[IdentityVerifier] = []
    identity.start(applied.append)
    try:
        for junk in (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", b'{"keys": 3}', b""):
            _replace_file(bundle, junk)
            identity.poll_files()
        assert applied == [] and _accepts(stage, ca)
        status = identity.status()
        assert status["state"] == "degraded" and status["bundle_reload_failures"] == "3"
        assert str(bundle) in status["problems"]

        _replace_file(bundle, next_ca.bundle_pem)
        identity.poll_files()
        assert len(applied) == 1 and _accepts(applied[0], next_ca)
        assert identity.status()["state"] == "ok"
    finally:
        identity.close()


def test_a_leaf_certificate_is_no_bundle(tmp_path: Path) -> None:
    ca = TrustDomainCA.create(TRUST_DOMAIN)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(ca.issue(CALLER).cert_pem)
    with pytest.raises(IdentityLoadError, match=r"identity.trust_domains.example.org.bundle: .*is not a CA"):
        source(_config(bundle)).load()


def test_start_up_fails_with_the_key_and_path_when_a_bundle_cannot_be_read(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(
        IdentityLoadError, match=r"identity.trust_domains.example.org.bundle: .*missing.pem: cannot read"
    ):
        source(_config(missing)).load()
    with pytest.raises(IdentityLoadError, match="no trust domain is trusted"):
        source(IdentityConfig()).load()


def test_a_spiffe_bundle_document_carries_x509_and_jwt_authorities(tmp_path: Path) -> None:
    ca, key = TrustDomainCA.create(TRUST_DOMAIN), ec.generate_private_key(ec.SECP256R1())
    bundle = tmp_path / "bundle.json"
    document = spiffe_bundle(ca, jwk(key, "k1"))
    document["keys"].append({"use": "something-new", "kty": "oct"})  # unknown uses are ignored
    bundle.write_text(json.dumps(document))
    stage = source(_config(bundle, sources=("certificate", "jwt"))).load()
    assert _accepts(stage, ca)
    token = mint_jwt(key, "k1", CALLER)
    assert isinstance(stage.verify(call(headers={"authorization": f"Bearer {token}"}), now()), Identity)


def test_jwt_keys_may_come_from_their_own_file(tmp_path: Path) -> None:
    ca, key = TrustDomainCA.create(TRUST_DOMAIN), ec.generate_private_key(ec.SECP256R1())
    pem = ca.write_bundle(tmp_path / "bundle.pem")
    jwks = tmp_path / "jwt.json"
    jwks.write_text(json.dumps({"keys": [jwk(key, "k1")]}))
    config = IdentityConfig(
        trust_domains={TRUST_DOMAIN: TrustDomainConfig(bundle=str(pem), jwt_bundle=str(jwks))}, sources=("jwt",)
    )
    stage = source(config).load()
    token = mint_jwt(key, "k1", CALLER)
    assert isinstance(stage.verify(call(headers={"authorization": f"Bearer {token}"}), now()), Identity)


def test_status_reports_string_facts_that_health_and_metrics_read(tmp_path: Path) -> None:
    ca = TrustDomainCA.create(TRUST_DOMAIN)
    identity = source(_config(ca.write_bundle(tmp_path / "bundle.pem")))
    stage = identity.load()
    try:
        stage.verify(call(certificate=ca.issue(CALLER).cert_pem), now())
        status = identity.status()
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in status.items())
        assert status["source"] == "files" and status["workload_api"] == "off" and status["state"] == "ok"
        assert status["version"] == stage.version and status["trust_domains"] == TRUST_DOMAIN
        assert (status["bundle_reloads"], status["bundle_reload_failures"]) == ("0", "0")
        assert (status["cache_hits"], status["cache_misses"]) == ("0", "1")
        expires = dt.datetime.fromisoformat(status["bundles_expire_at"])
        assert expires == ca.certificate.not_valid_after_utc
        assert "problems" not in status
    finally:
        identity.close()


def test_a_bundle_change_between_load_and_start_reaches_the_server(tmp_path: Path) -> None:
    # The server loads identity, then policy and the risk model (seconds), then starts the watchers.
    old_ca, new_ca = TrustDomainCA.create(TRUST_DOMAIN), TrustDomainCA.create(TRUST_DOMAIN)
    bundle = old_ca.write_bundle(tmp_path / "bundle.pem")
    identity = source(_config(bundle))
    serving = identity.load()
    _replace_file(bundle, new_ca.bundle_pem)
    identity.poll_files()
    applied: list[IdentityVerifier] = []
    identity.start(applied.append)
    try:
        (fresh,) = applied
        assert fresh.version != serving.version
        assert _accepts(fresh, new_ca) and not _accepts(fresh, old_ca)
    finally:
        identity.close()

"""Bundles from the SPIFFE Workload API: a real gRPC agent on a unix socket, rotated and stopped mid-test."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from identity_support import CALLER, TRUST_DOMAIN, call, jwk, mint_jwt, now
from spiffe._proto import workload_pb2, workload_pb2_grpc

from authz_server.dev.trust_domain import TrustDomainCA
from authz_server.identity import (
    Identity,
    IdentityFailure,
    IdentityLoadError,
    IdentityReason,
    IdentityVerifier,
    source,
)
from authz_server.identity.config import IdentityConfig, TrustDomainConfig

PARTNER = "partner.example"
JWT_ONLY = "tokens.example"


def _der(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.DER) for c in certs)


class FakeAgent(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
    """Speaks the Workload API like a SPIRE agent: each stream sends the current state, then every change."""

    def __init__(self, own_ca: TrustDomainCA) -> None:
        self._svid = own_ca.issue(f"spiffe://{TRUST_DOMAIN}/ns/authz/sa/authz-server")
        self._changed = threading.Condition()
        self._generation = 0
        self.bundles: dict[str, list[x509.Certificate]] = {TRUST_DOMAIN: [own_ca.certificate]}
        self.jwt_keys: dict[str, list[dict[str, Any]]] = {}
        self.x509_bundle_der: bytes | None = None
        """When set, sent as the trust domain's bundle instead of `bundles` (to send a broken one)."""

    def publish(self, **changes: Any) -> None:
        with self._changed:
            for name, value in changes.items():
                setattr(self, name, value)
            self._generation += 1
            self._changed.notify_all()

    def _stream(self, context: grpc.ServicerContext, build: Callable[[], Any]) -> Iterator[Any]:
        if dict(context.invocation_metadata()).get("workload.spiffe.io") != "true":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")
        seen = -1
        while context.is_active():
            with self._changed:
                if seen == self._generation:
                    self._changed.wait(0.05)
                    continue
                seen, response = self._generation, build()
            yield response

    def _x509(self) -> workload_pb2.X509SVIDResponse:
        svid = workload_pb2.X509SVID(
            spiffe_id=f"spiffe://{TRUST_DOMAIN}/ns/authz/sa/authz-server",
            x509_svid=_der([self._svid.certificate]),
            x509_svid_key=self._svid.key.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            bundle=self.x509_bundle_der or _der(self.bundles[TRUST_DOMAIN]),
        )
        federated = {f"spiffe://{n}": _der(c) for n, c in self.bundles.items() if n != TRUST_DOMAIN}
        return workload_pb2.X509SVIDResponse(svids=[svid], federated_bundles=federated)

    def _jwt(self) -> workload_pb2.JWTBundlesResponse:
        return workload_pb2.JWTBundlesResponse(
            bundles={n: json.dumps({"keys": keys}).encode() for n, keys in self.jwt_keys.items()}
        )

    def FetchX509SVID(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        yield from self._stream(context, self._x509)

    def FetchJWTBundles(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        yield from self._stream(context, self._jwt)


class AgentProcess:
    """The gRPC server around a FakeAgent, on a unix socket in a fresh short directory."""

    def __init__(self, agent: FakeAgent) -> None:
        self.agent = agent
        self.directory = tempfile.mkdtemp(prefix="spire-", dir="/tmp")  # unix socket paths are short
        self.path = os.path.join(self.directory, "agent.sock")
        self.server: grpc.Server | None = None

    @property
    def endpoint(self) -> str:
        return f"unix://{self.path}"

    def start(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(self.agent, self.server)  # type: ignore[no-untyped-call]
        self.server.add_insecure_port(f"unix:{self.path}")
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(0).wait()
            self.server = None


@pytest.fixture
def agent_process() -> Iterator[AgentProcess]:
    process = AgentProcess(FakeAgent(TrustDomainCA.create(TRUST_DOMAIN)))
    process.start()
    yield process
    process.stop()
    shutil.rmtree(process.directory, ignore_errors=True)


def _eventually(condition: Callable[[], bool], what: str, timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


def _accepts(stage: IdentityVerifier | None, ca: TrustDomainCA, spiffe_id: str = CALLER) -> bool:
    assert stage is not None
    return isinstance(stage.verify(call(certificate=ca.issue(spiffe_id).cert_pem), now()), Identity)


def test_bundles_rotate_live_survive_an_agent_outage_and_recover(agent_process: AgentProcess) -> None:
    agent = agent_process.agent
    first_ca = TrustDomainCA.create(TRUST_DOMAIN)
    agent.publish(bundles={TRUST_DOMAIN: [first_ca.certificate]})
    identity = source(IdentityConfig(workload_api_socket=agent_process.endpoint, workload_api_start_timeout_s=5))
    stage = identity.load()
    applied: list[IdentityVerifier] = []
    identity.start(applied.append)
    try:
        assert _accepts(stage, first_ca)
        status = identity.status()
        assert (status["source"], status["state"], status["workload_api"]) == ("workload-api", "ok", "ok")
        assert status["version"] == stage.version and status["bundle_reloads"] == "0"
        # A caller verified (and cached) under the first root, who keeps calling through the rotation.
        regular = call(certificate=first_ca.issue(CALLER).cert_pem)
        assert isinstance(stage.verify(regular, now()), Identity)
        assert isinstance(stage.verify(regular, now()), Identity) and stage.cache_stats().hits == 1

        # Rotation as SPIRE does it: the new root joins the bundle, later the old one leaves.
        second_ca = TrustDomainCA.create(TRUST_DOMAIN)
        agent.publish(bundles={TRUST_DOMAIN: [first_ca.certificate, second_ca.certificate]})
        _eventually(lambda: bool(applied) and _accepts(applied[-1], second_ca), "the new root is trusted")
        assert _accepts(applied[-1], first_ca)
        agent.publish(bundles={TRUST_DOMAIN: [second_ca.certificate]})
        _eventually(lambda: not _accepts(applied[-1], first_ca), "the old root is dropped")
        # The cached identity went with the root that vouched for it: the next call is checked afresh.
        refused = applied[-1].verify(regular, now())
        assert isinstance(refused, IdentityFailure) and refused.reason is IdentityReason.CHAIN_INVALID
        assert identity.status()["version"] == applied[-1].version != stage.version
        assert int(identity.status()["bundle_reloads"]) >= 2

        # The agent goes away: health says degraded, the last bundles keep serving.
        serving = len(applied)
        agent_process.stop()
        _eventually(lambda: identity.status()["state"] == "degraded", "the outage is reported")
        status = identity.status()
        assert status["workload_api"] == "degraded" and "workload API" in status["problems"]
        assert len(applied) == serving and _accepts(applied[-1], second_ca)

        # It comes back with a newer bundle: recovery needs nothing from anyone.
        third_ca = TrustDomainCA.create(TRUST_DOMAIN)
        agent.publish(bundles={TRUST_DOMAIN: [third_ca.certificate]})
        agent_process.start()
        _eventually(lambda: identity.status()["state"] == "ok", "the agent is back")
        _eventually(lambda: _accepts(applied[-1], third_ca), "the bundle it brought is used")
        assert identity.status()["workload_api_disconnects"] == "1"
    finally:
        identity.close()


def test_during_an_outage_the_last_bundles_serve_until_their_authorities_expire(agent_process: AgentProcess) -> None:
    agent = agent_process.agent
    short_lived = TrustDomainCA.create(TRUST_DOMAIN, ttl=dt.timedelta(seconds=3))
    agent.publish(bundles={TRUST_DOMAIN: [short_lived.certificate]})
    identity = source(IdentityConfig(workload_api_socket=agent_process.endpoint, clock_skew_s=0))
    stage = identity.load()
    identity.start(lambda _: None)
    try:
        regular = call(certificate=short_lived.issue(CALLER, ttl=dt.timedelta(hours=1)).cert_pem)
        assert isinstance(stage.verify(regular, now()), Identity)
        agent_process.stop()
        _eventually(lambda: identity.status()["workload_api"] == "degraded", "the outage is reported")
        expires_at = short_lived.certificate.not_valid_after_utc.timestamp()
        assert identity.status()["bundles_expire_at"] == short_lived.certificate.not_valid_after_utc.isoformat()

        # The cached identity holds no longer than the authority that vouched for it.
        _eventually(lambda: time.time() > expires_at + 0.1, "the bundle authority expires", timeout=10)
        refused = stage.verify(regular, now())
        assert isinstance(refused, IdentityFailure) and refused.reason is IdentityReason.CHAIN_INVALID
        assert "expired" in refused.detail
        assert "a trust bundle authority has expired" in identity.status()["problems"]
    finally:
        identity.close()


def test_an_agent_sending_a_broken_bundle_changes_nothing_but_the_state(agent_process: AgentProcess) -> None:
    agent = agent_process.agent
    good = TrustDomainCA.create(TRUST_DOMAIN)
    agent.publish(bundles={TRUST_DOMAIN: [good.certificate]})
    # A bare path works as well as unix:///path.
    identity = source(IdentityConfig(workload_api_socket=agent_process.path))
    stage = identity.load()
    applied: list[IdentityVerifier] = []
    identity.start(applied.append)
    try:
        agent.publish(x509_bundle_der=b"\x30\x03garbage")
        _eventually(lambda: identity.status()["workload_api"] != "ok", "the bad update is reported")
        assert applied == [] and _accepts(stage, good)
        assert identity.status()["state"] == "degraded"

        agent.publish(x509_bundle_der=None)
        _eventually(lambda: identity.status()["state"] == "ok", "a good update heals it")
        assert _accepts(applied[-1] if applied else stage, good)
    finally:
        identity.close()


def test_federated_bundles_and_jwt_keys_come_from_the_agent(agent_process: AgentProcess) -> None:
    agent = agent_process.agent
    own, partner, key = (
        TrustDomainCA.create(TRUST_DOMAIN),
        TrustDomainCA.create(PARTNER),
        ec.generate_private_key(ec.SECP256R1()),
    )
    agent.publish(
        bundles={TRUST_DOMAIN: [own.certificate], PARTNER: [partner.certificate]},
        jwt_keys={TRUST_DOMAIN: [jwk(key, "k1")], JWT_ONLY: [jwk(key, "k2")]},
    )
    config = IdentityConfig(
        workload_api_socket=agent_process.endpoint,
        sources=("certificate", "jwt", "principal"),
        trust_proxy_principal=True,
    )
    identity = source(config)
    try:
        stage = identity.load()
        assert _accepts(stage, own) and _accepts(stage, partner, f"spiffe://{PARTNER}/billing")
        token = mint_jwt(key, "k1", CALLER)
        assert isinstance(stage.verify(call(headers={"authorization": f"Bearer {token}"}), now()), Identity)
        # A domain federated for JWT-SVIDs only vouches for tokens, never for certificates or principals.
        token = mint_jwt(key, "k2", f"spiffe://{JWT_ONLY}/batch")
        assert isinstance(stage.verify(call(headers={"authorization": f"Bearer {token}"}), now()), Identity)
        foreign_ca = TrustDomainCA.create(JWT_ONLY)
        for refused in (
            stage.verify(call(certificate=foreign_ca.issue(f"spiffe://{JWT_ONLY}/batch").cert_pem), now()),
            stage.verify(call(principal=f"spiffe://{JWT_ONLY}/batch"), now()),
        ):
            assert isinstance(refused, IdentityFailure) and refused.reason is IdentityReason.UNTRUSTED_TRUST_DOMAIN
    finally:
        identity.close()

    # Listing trust domains narrows what the agent's federation brings in.
    narrowed = source(
        IdentityConfig(workload_api_socket=agent_process.endpoint, trust_domains={TRUST_DOMAIN: TrustDomainConfig()})
    )
    try:
        stage = narrowed.load()
        assert _accepts(stage, own) and not _accepts(stage, partner, f"spiffe://{PARTNER}/billing")
        assert narrowed.status()["state"] == "ok"
    finally:
        narrowed.close()

    # A listed trust domain the agent does not federate with is named, not silently untrusted.
    expecting = source(
        IdentityConfig(
            workload_api_socket=agent_process.endpoint,
            trust_domains={TRUST_DOMAIN: TrustDomainConfig(), "absent.example": TrustDomainConfig()},
        )
    )
    try:
        expecting.load()
        status = expecting.status()
        assert status["state"] == "degraded" and "absent.example" in status["problems"]
        assert status["trust_domains"] == TRUST_DOMAIN
    finally:
        expecting.close()


def test_start_up_fails_clearly_when_no_agent_answers(tmp_path: Any) -> None:
    config = IdentityConfig(workload_api_socket="unix:///tmp/no-such-agent.sock", workload_api_start_timeout_s=0.3)
    identity = source(config)
    try:
        with pytest.raises(IdentityLoadError, match=r"no bundles from unix:///tmp/no-such-agent\.sock within 0\.3s"):
            identity.load()
        assert identity.status()["state"] == "degraded"
    finally:
        identity.close()

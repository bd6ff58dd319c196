"""Bundles from the SPIFFE Workload API: a real gRPC agent on a unix socket, rotated and stopped mid-test."""

from __future__ import annotations

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
from authz_server.identity import Identity, IdentityLoadError, IdentityVerifier, source
from authz_server.identity.config import IdentityConfig, TrustDomainConfig

PARTNER = "partner.example"


def _der(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.DER) for c in certs)


class FakeAgent(workload_pb2_grpc.SpiffeWorkloadAPIServicer):  # type: ignore[misc]
    """Speaks the Workload API like a SPIRE agent: each stream sends the current state, then every change."""

    def __init__(self, own_ca: TrustDomainCA) -> None:
        self._svid = own_ca.issue(f"spiffe://{TRUST_DOMAIN}/ns/authz/sa/authz-server")
        self._changed = threading.Condition()
        self._generation = 0
        self.bundles: dict[str, list[x509.Certificate]] = {TRUST_DOMAIN: [own_ca.certificate]}
        self.jwt_keys: dict[str, list[dict[str, Any]]] = {}

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
            bundle=_der(self.bundles[TRUST_DOMAIN]),
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
        workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(self.agent, self.server)
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
        assert identity.status()["source"] == "workload-api" and identity.status()["state"] == "ok"

        # Rotation as SPIRE does it: the new root joins the bundle, later the old one leaves.
        second_ca = TrustDomainCA.create(TRUST_DOMAIN)
        agent.publish(bundles={TRUST_DOMAIN: [first_ca.certificate, second_ca.certificate]})
        _eventually(lambda: bool(applied) and _accepts(applied[-1], second_ca), "the new root is trusted")
        assert _accepts(applied[-1], first_ca)
        agent.publish(bundles={TRUST_DOMAIN: [second_ca.certificate]})
        _eventually(lambda: not _accepts(applied[-1], first_ca), "the old root is dropped")

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


def test_federated_bundles_and_jwt_keys_come_from_the_agent(agent_process: AgentProcess) -> None:
    agent = agent_process.agent
    own, partner, key = (
        TrustDomainCA.create(TRUST_DOMAIN),
        TrustDomainCA.create(PARTNER),
        ec.generate_private_key(ec.SECP256R1()),
    )
    agent.publish(
        bundles={TRUST_DOMAIN: [own.certificate], PARTNER: [partner.certificate]},
        jwt_keys={TRUST_DOMAIN: [jwk(key, "k1")]},
    )
    config = IdentityConfig(workload_api_socket=agent_process.endpoint, sources=("certificate", "jwt"))
    identity = source(config)
    try:
        stage = identity.load()
        assert _accepts(stage, own) and _accepts(stage, partner, f"spiffe://{PARTNER}/billing")
        token = mint_jwt(key, "k1", CALLER)
        assert isinstance(stage.verify(call(headers={"authorization": f"Bearer {token}"}), now()), Identity)
    finally:
        identity.close()

    # Listing trust domains narrows what the agent's federation brings in.
    narrowed = source(
        IdentityConfig(workload_api_socket=agent_process.endpoint, trust_domains={TRUST_DOMAIN: TrustDomainConfig()})
    )
    try:
        stage = narrowed.load()
        assert _accepts(stage, own) and not _accepts(stage, partner, f"spiffe://{PARTNER}/billing")
    finally:
        narrowed.close()


def test_start_up_fails_clearly_when_no_agent_answers(tmp_path: Any) -> None:
    config = IdentityConfig(workload_api_socket="unix:///tmp/no-such-agent.sock", workload_api_start_timeout_s=0.3)
    identity = source(config)
    try:
        with pytest.raises(IdentityLoadError, match=r"no bundles from unix:///tmp/no-such-agent\.sock within 0\.3s"):
            identity.load()
        assert identity.status()["state"] == "degraded"
    finally:
        identity.close()

"""Only the proxies may ask: a meshed pod cannot send Checks about calls to someone else.

A real server (both transports) with `callers.mode: xfcc`, as in the Istio overlay: the identity of whoever sent
the Check is the `URI` of the last x-forwarded-client-cert element, the one the server's own sidecar appends.
It must be the call's destination, or a configured gateway. Everything else is PERMISSION_DENIED (Envoy,
failing closed, answers 403), counted on /metrics by reason, and never reaches the decision log.
"""

from __future__ import annotations

import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from authz_server.dev.mesh import TRUST_DOMAIN, ServerProcess, free_port
from authz_server.dev.trust_domain import TrustDomainCA

PAYMENTS = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/payments"
CHECKOUT = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/checkout"
INTRUDER = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/compromised"
GATEWAY = f"spiffe://{TRUST_DOMAIN}/ns/istio-system/sa/istio-ingressgateway-service-account"
SERVER_SIDECAR = f"spiffe://{TRUST_DOMAIN}/ns/authz-system/sa/authz-server"


class Running:
    def __init__(self, server: ServerProcess, metrics_port: int, ca: TrustDomainCA, log: Path) -> None:
        self.server, self.metrics_port, self.ca, self.decision_log = server, metrics_port, ca, log

    def check(
        self, sender: str | None, destination: str = PAYMENTS, prefix: str = "", request_id: str = "r1"
    ) -> grpc.StatusCode:
        request = external_auth_pb2.CheckRequest()
        request.attributes.source.certificate = urllib.parse.quote(self.ca.issue(CHECKOUT).cert_pem.decode(), safe="")
        request.attributes.destination.principal = destination
        http = request.attributes.request.http
        http.method, http.path, http.host, http.id = "GET", "/v1/charges", "payments", request_id
        # What Istio's sidecar inbound appends (APPEND_FORWARD, Subject/URI/DNS), after whatever the client sent.
        metadata = []
        if sender is not None:
            metadata.append(("x-forwarded-client-cert", f'{prefix}By={SERVER_SIDECAR};Subject="";URI={sender}'))
        with grpc.insecure_channel(f"127.0.0.1:{self.server.port}") as channel:
            try:
                stub = external_auth_pb2_grpc.AuthorizationStub(channel)  # type: ignore[no-untyped-call]
                stub.Check(request, timeout=5, metadata=metadata)
            except grpc.RpcError as exc:
                return exc.code()
        return grpc.StatusCode.OK

    def refused(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        counts = {}
        for line in text.splitlines():
            if line.startswith("authz_check_callers_refused_total{"):
                labels, value = line.rsplit(" ", 1)
                counts[labels.split('reason="', 1)[1].split('"', 1)[0]] = float(value)
        return counts

    def logged(self, request_id: str) -> bool:
        return self.decision_log.exists() and f'"{request_id}"' in self.decision_log.read_text()


@pytest.fixture(scope="module", params=["aio", "sync", "h2"])
def running(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp(f"callers-{request.param}")
    ca = TrustDomainCA.create(TRUST_DOMAIN)
    metrics_port = free_port()
    decision_log = tmp / "decisions.jsonl"
    config = {
        "transport": request.param,
        "identity": {"trust_domains": {TRUST_DOMAIN: {"bundle": str(ca.write_bundle(tmp / "bundle.pem"))}}},
        "risk": {"enabled": False},
        "log": {"decisions": str(decision_log)},
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        "callers": {"mode": "xfcc", "gateways": [GATEWAY]},
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    server = ServerProcess(tmp / "config.yaml", free_port(), tmp / "server.log").start()
    try:
        yield Running(server, metrics_port, ca, decision_log)
    finally:
        server.stop()


def _logged_eventually(running: Running, request_id: str) -> bool:
    """The decision log is written off the request path: wait for a line with this request id."""
    deadline = time.monotonic() + 10
    while not running.logged(request_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    return running.logged(request_id)


def test_the_destinations_own_sidecar_may_ask(running: Running) -> None:
    assert running.check(PAYMENTS, request_id="asked-by-destination") is grpc.StatusCode.OK
    assert _logged_eventually(running, "asked-by-destination")


def test_a_gateway_may_ask_about_any_destination(running: Running) -> None:
    assert running.check(GATEWAY) is grpc.StatusCode.OK
    assert running.check(GATEWAY, destination=CHECKOUT) is grpc.StatusCode.OK


def test_a_pod_asking_about_calls_to_someone_else_is_refused_and_counted(running: Running) -> None:
    before = running.refused()

    assert running.check(INTRUDER, request_id="asked-by-intruder") is grpc.StatusCode.PERMISSION_DENIED

    assert running.refused()["not-the-destination"] == before["not-the-destination"] + 1
    # Lines are written in order: once a later allowed Check is logged, the refused one would be there too.
    assert running.check(PAYMENTS, request_id="after-the-intruder") is grpc.StatusCode.OK
    assert _logged_eventually(running, "after-the-intruder")
    assert not running.logged("asked-by-intruder"), "a refused Check reached the decision log (and the baseline)"


def test_an_element_the_client_wrote_before_the_sidecars_does_not_count(running: Running) -> None:
    # The intruder writes an element naming the destination; the sidecar's element (last) names the intruder.
    forged = f"By={SERVER_SIDECAR};URI={PAYMENTS},"
    assert running.check(INTRUDER, prefix=forged) is grpc.StatusCode.PERMISSION_DENIED


def test_a_check_without_the_sidecars_xfcc_is_refused(running: Running) -> None:
    before = running.refused()
    assert running.check(None) is grpc.StatusCode.PERMISSION_DENIED
    assert running.refused()["no-caller-identity"] == before["no-caller-identity"] + 1


def test_a_header_that_does_not_parse_is_refused_every_time(running: Running) -> None:
    before = running.refused()
    # Remembered after the first parse: the second identical header must be refused the same way.
    for _ in range(2):
        assert running.check(PAYMENTS, prefix='By="unterminated;') is grpc.StatusCode.PERMISSION_DENIED
    assert running.refused()["malformed-xfcc"] == before["malformed-xfcc"] + 2


def test_the_refusal_is_logged_with_its_reason(running: Running) -> None:
    running.check(INTRUDER)
    assert "Check refused (not-the-destination" in running.server.log_tail()
    assert f"sender {INTRUDER} may not ask about calls to {PAYMENTS}" in running.server.log_tail()

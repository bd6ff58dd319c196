"""`authz-server serve` as an operator runs it: bad configuration, workers, graceful stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from authz_server.dev.mesh import TRUST_DOMAIN, free_port
from authz_server.dev.trust_domain import TrustDomainCA
from authz_server.transport.serve import EXIT_CANNOT_START


def _authz_server(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authz_server", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_an_invalid_configuration_names_every_bad_key_and_does_not_start(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("listen: nowhere\nrisk:\n  budget_ms: -1\nidentity:\n  sources: [certificate, telepathy]\n")

    result = _authz_server("serve", "--config", str(config), "--workers", "1")

    assert result.returncode == 2
    assert "listen: expected HOST:PORT or unix:/PATH, got 'nowhere'" in result.stderr
    assert "risk.budget_ms: must be > 0, got -1.0" in result.stderr
    assert "identity.sources: unknown source 'telepathy'" in result.stderr


def test_config_show_prints_the_effective_configuration(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("workers: 3\nrisk:\n  budget_ms: 5\n")

    result = _authz_server(
        "config", "show", "--config", str(config), "--threads", "8", env={"AUTHZ_RISK_BUDGET_MS": "1.5"}
    )

    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["workers"] == 3
    assert shown["threads"] == 8
    assert shown["risk"]["budget_ms"] == 1.5


def _sigterm(server: subprocess.Popen[bytes]) -> int:
    """Stop the server as Kubernetes does; its exit status."""
    server.send_signal(signal.SIGTERM)
    return server.wait(timeout=30)


def _kill_if_running(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.kill()
        server.wait()


def _check_request(ca: TrustDomainCA, caller: str) -> external_auth_pb2.CheckRequest:
    import urllib.parse

    request = external_auth_pb2.CheckRequest()
    source = request.attributes.source
    source.principal = caller
    source.certificate = urllib.parse.quote(ca.issue(caller).cert_pem.decode(), safe="")
    request.attributes.destination.principal = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/payments"
    http = request.attributes.request.http
    http.method, http.path, http.host, http.id = "GET", "/v1/charges", "payments", "r1"
    return request


@pytest.mark.parametrize("transport", ["aio", "sync", "h2"])
def test_workers_share_the_port_and_stop_gracefully_on_sigterm(tmp_path: Path, transport: str) -> None:
    ca = TrustDomainCA.create(TRUST_DOMAIN)
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": f"127.0.0.1:{port}",
                "workers": 2,
                "transport": transport,
                "identity": {"trust_domains": {TRUST_DOMAIN: {"bundle": str(ca.write_bundle(tmp_path / "b.pem"))}}},
                "risk": {"enabled": False},
                "log": {"decisions": "off"},
            }
        )
    )
    log = tmp_path / "server.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "authz_server", "serve", "--config", str(config)], stdout=sink, stderr=sink
        )
    try:
        deadline = time.monotonic() + 60
        while log.read_text().count("serving on") < 2 and time.monotonic() < deadline:
            assert server.poll() is None, log.read_text()
            time.sleep(0.1)
        request = _check_request(ca, f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/checkout")
        answered = 0
        while time.monotonic() < deadline and answered < 10:
            # A fresh channel per call is a fresh connection, which SO_REUSEPORT hands to either worker.
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if health.status != health_pb2.HealthCheckResponse.SERVING:
                        continue
                    response = external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=2)
                except grpc.RpcError:
                    time.sleep(0.1)
                    continue
                # No policy is loaded: default deny, for a caller whose certificate verified.
                assert response.status.code == 7
                assert response.denied_response.status.code == 403
                answered += 1
        assert answered == 10
        assert _sigterm(server) == 0
    finally:
        _kill_if_running(server)
    output = log.read_text()
    assert "started 2 workers" in output
    assert output.count("serving on") == 2, output


def _serve_on_socket(
    tmp_path: Path, ca: TrustDomainCA, path: Path, log: Path, transport: str
) -> subprocess.Popen[bytes]:
    config = tmp_path / "socket-config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": f"unix:{path}",
                "transport": transport,
                "identity": {"trust_domains": {TRUST_DOMAIN: {"bundle": str(ca.write_bundle(tmp_path / "b.pem"))}}},
                "risk": {"enabled": False},
                "log": {"decisions": "off"},
            }
        )
    )
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "authz_server", "serve", "--config", str(config)], stdout=sink, stderr=sink
        )


@pytest.mark.parametrize("transport", ["aio", "h2"])
def test_a_unix_socket_left_by_a_crashed_server_is_replaced_and_answers_checks(tmp_path: Path, transport: str) -> None:
    import socket as sockets
    import stat

    ca = TrustDomainCA.create(TRUST_DOMAIN)
    path = tmp_path / "run" / "authz.sock"
    path.parent.mkdir()
    # What a killed server leaves on the pod's shared volume: a socket file nobody listens on.
    leftover = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
    leftover.bind(str(path))
    leftover.close()
    log = tmp_path / "server.log"
    server = _serve_on_socket(tmp_path, ca, path, log, transport)
    try:
        request = _check_request(ca, f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/checkout")
        deadline = time.monotonic() + 60
        response = None
        while response is None and time.monotonic() < deadline:
            assert server.poll() is None, log.read_text()
            with grpc.insecure_channel(f"unix:{path}") as channel:
                try:
                    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if health.status == health_pb2.HealthCheckResponse.SERVING:
                        response = external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=2)
                except grpc.RpcError:
                    pass
            time.sleep(0.1)
        assert response is not None, log.read_text()
        assert response.denied_response.status.code == 403  # no policy loaded: default deny, identity verified
        # The pod's Envoy runs as another user sharing the volume's group: it must be able to connect.
        assert stat.S_IMODE(path.stat().st_mode) == 0o660

        # A second server on the same socket is refused while the first one serves.
        second = _authz_server("serve", "--config", str(tmp_path / "socket-config.yaml"))
        assert second.returncode == EXIT_CANNOT_START
        assert f"{path} is in use by another server" in second.stderr

        assert _sigterm(server) == 0
    finally:
        _kill_if_running(server)
    assert not path.exists()


def test_a_unix_socket_is_served_by_one_process(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("listen: unix:relative.sock\nworkers: 2\n")

    result = _authz_server("serve", "--config", str(config))

    assert result.returncode == 2
    assert "listen: expected unix:/ABSOLUTE/PATH, got 'unix:relative.sock'" in result.stderr
    assert "workers: a Unix socket is served by one process, got 2" in result.stderr

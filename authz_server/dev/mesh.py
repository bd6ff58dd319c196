"""A whole mesh hop on one machine: a trust domain, this server, a real Envoy, a toy upstream.

The demo and the end-to-end tests both drive the server through this, so the
demo shows what the tests prove. Everything binds 127.0.0.1 and is torn down
on exit.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz_server.dev.echo import EchoServer
from authz_server.dev.trust_domain import Svid, TrustDomainCA
from authz_server.envoy.bootstrap import Endpoint, SidecarSpec, TlsFiles
from authz_server.envoy.process import EnvoyProcess

TRUST_DOMAIN = "example.org"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Reply:
    """What the caller saw, and (when the call got through) what the upstream received."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def upstream_headers(self) -> dict[str, str]:
        """Headers the upstream received (only for calls Envoy let through)."""
        received: dict[str, str] = json.loads(self.body)["headers"]
        return received

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class ServerProcess:
    """`authz-server serve` as a child process, ready once its gRPC health says SERVING."""

    def __init__(self, config_path: Path, port: int, log_path: Path, workers: int = 1) -> None:
        self.config_path = config_path
        self.port = port
        self.log_path = log_path
        self.workers = workers
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> ServerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "authz_server", "serve", "--config", str(self.config_path),
             "--listen", f"127.0.0.1:{self.port}", "--workers", str(self.workers)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        self.wait_serving(timeout_s)
        return self

    def health(self) -> int | None:
        """The gRPC health status of the server, or None when it does not answer."""
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                return None
            return int(reply.status)

    def wait_serving(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"authz-server exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.health() == health_pb2.HealthCheckResponse.SERVING:
                return
            time.sleep(0.1)
        raise RuntimeError(f"authz-server not SERVING after {timeout_s}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


@dataclass
class LocalMesh:
    """Mint certificates, write configuration, start everything; `call()` as any workload."""

    workdir: Path
    declarations: str
    """YAML of the AllowedCalls (and Quarantine) documents the server loads."""
    callee: str = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/payments"
    server_config: dict[str, Any] = field(default_factory=dict)
    """Extra configuration merged over the defaults (section by section)."""
    accept_untrusted_clients: bool = False
    forward_client_cert: str = "SANITIZE"
    workers: int = 1
    intermediate_ca: bool = False
    """Issue every SVID (Envoy's too) from an intermediate below the root in the bundle, as Istio's plug-in CA
    and SPIRE with an UpstreamAuthority do: peers then present leaf + intermediate."""
    max_request_headers_kb: int | None = None
    """Raise Envoy's 60 KiB cap on request headers (tests sending longer paths)."""
    authz_timeout_s: float = 0.25
    """Envoy's ext_authz timeout (a test measuring memory, not latency, raises it on a busy machine)."""
    authz_max_requests: int = SidecarSpec.authz_max_requests
    authz_max_pending_requests: int = SidecarSpec.authz_max_pending_requests
    """Envoy's circuit breakers on the ext_authz cluster (SidecarSpec)."""

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.root = TrustDomainCA.create(TRUST_DOMAIN)
        self.ca = self.root.intermediate() if self.intermediate_ca else self.root
        self.bundle_path = self.ca.write_bundle(self.workdir / "bundle.pem")
        self.policy_dir = self.workdir / "policies"
        self.policy_dir.mkdir(exist_ok=True)
        self.decision_log = self.workdir / "decisions.jsonl"
        self._svids: dict[str, tuple[Path, Path]] = {}
        self._written = 0
        self.server: ServerProcess | None = None
        self.envoy: EnvoyProcess | None = None
        self.echo: EchoServer | None = None

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "identity": {"trust_domains": {TRUST_DOMAIN: {"bundle": str(self.bundle_path)}}},
            "policy": {"paths": [str(self.policy_dir)]},
            "log": {"decisions": str(self.decision_log)},
            "grace_period_s": 5,
        }
        for section, values in self.server_config.items():
            if isinstance(values, dict) and isinstance(config.get(section), dict):
                config[section] = {**config[section], **values}
            else:
                config[section] = values
        return config

    def svid_files(self, spiffe_id: str) -> tuple[Path, Path]:
        """Certificate and key files of a good SVID for spiffe_id, minted by the mesh's CA once."""
        if spiffe_id not in self._svids:
            # Named after the workload (ns-shop-sa-checkout.pem), so a kept demo directory says whose each is.
            name = spiffe_id.removeprefix(f"spiffe://{TRUST_DOMAIN}/").replace("/", "-")
            self._svids[spiffe_id] = self.ca.issue(spiffe_id).write(self.workdir / "svids", name)
        return self._svids[spiffe_id]

    def write_svid(self, svid: Svid) -> tuple[Path, Path]:
        """Files for any certificate, good or bad, to present with `call()`."""
        self._written += 1
        return svid.write(self.workdir / "svids", f"svid-{self._written}")

    def start(self) -> LocalMesh:
        (self.policy_dir / "declarations.yaml").write_text(self.declarations)
        config_path = self.workdir / "config.yaml"
        config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        self.server = ServerProcess(config_path, free_port(), self.workdir / "server.log", self.workers).start()
        self.echo = EchoServer().start()
        envoy_cert, envoy_key = self.svid_files(self.callee)
        self.listener = Endpoint("127.0.0.1", free_port())
        spec = SidecarSpec(
            listener=self.listener,
            upstream=Endpoint("127.0.0.1", self.echo.port),
            authz=Endpoint("127.0.0.1", self.server.port),
            tls=TlsFiles(str(envoy_cert), str(envoy_key), str(self.bundle_path)),
            admin=Endpoint("127.0.0.1", free_port()),
            accept_untrusted_clients=self.accept_untrusted_clients,
            forward_client_cert=self.forward_client_cert,  # type: ignore[arg-type]
            max_request_headers_kb=self.max_request_headers_kb,
            authz_timeout_s=self.authz_timeout_s,
            authz_max_requests=self.authz_max_requests,
            authz_max_pending_requests=self.authz_max_pending_requests,
        )
        self.envoy = EnvoyProcess(spec, self.workdir / "envoy").start()
        return self

    def call(
        self,
        caller: str | tuple[Path, Path],
        method: str = "GET",
        path: str = "/",
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Reply:
        """One HTTPS request through Envoy presenting the caller's SVID (a SPIFFE ID or cert/key files)."""
        cert, key = self.svid_files(caller) if isinstance(caller, str) else caller
        context = ssl.create_default_context(cafile=str(self.bundle_path))
        context.check_hostname = False  # SVIDs name workloads by URI SAN, not by host name
        context.load_cert_chain(str(cert), str(key))
        connection = http.client.HTTPSConnection(self.listener.host, self.listener.port, context=context, timeout=10)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            connection.close()

    def decisions(self) -> list[dict[str, Any]]:
        """Decision log lines written so far."""
        if not self.decision_log.exists():
            return []
        return [json.loads(line) for line in self.decision_log.read_text().splitlines() if line.strip()]

    def logged(self, decision_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
        """The decision log line of one decision; the log is written off the hot path, so this waits for it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.decisions():
                if line.get("decision_id") == decision_id:  # counted `kind: shed` lines have none
                    return line
            time.sleep(0.05)
        raise AssertionError(f"decision {decision_id} never reached the decision log {self.decision_log}")

    def stop(self) -> None:
        if self.envoy is not None:
            self.envoy.stop()
        if self.echo is not None:
            self.echo.stop()
        if self.server is not None:
            self.server.stop()

    def __enter__(self) -> LocalMesh:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

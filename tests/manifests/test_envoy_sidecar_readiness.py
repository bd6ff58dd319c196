"""The plain-Envoy sidecar reports ready only once it holds its SVID and bundle: a real Envoy on the shipped bootstrap.

Envoy opens its listeners (the readiness one included) only when initialisation is over, and the bootstrap
tells it to wait for the SPIRE agent's SDS secrets without a time limit (Envoy's default gives up after 15 s
and starts anyway, with an mTLS listener that refuses every handshake). Here the agent's socket does not exist:
the readiness port must stay closed. The same listener on a bootstrap with file certificates answers at once.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from manifest_support import MANIFESTS

from authz_server.dev.mesh import free_port
from authz_server.dev.trust_domain import TrustDomainCA
from authz_server.envoy.bootstrap import Endpoint, SidecarSpec, TlsFiles
from authz_server.envoy.process import EnvoyProcess, envoy_binary

BOOTSTRAP = MANIFESTS / "overlays" / "envoy" / "workload-example" / "envoy-bootstrap.yaml"


def _rebind(config: dict[str, Any], tmp: Path) -> tuple[dict[str, Any], int]:
    """The shipped bootstrap on free local ports, with the SPIRE agent's socket somewhere nothing listens."""
    for listener in config["static_resources"]["listeners"]:
        address = listener["address"]["socket_address"]
        address["address"], address["port_value"] = "127.0.0.1", free_port()
    config["admin"]["address"]["socket_address"]["port_value"] = free_port()
    for cluster in config["static_resources"]["clusters"]:
        for group in cluster["load_assignment"]["endpoints"]:
            for endpoint in group["lb_endpoints"]:
                if "pipe" in endpoint["endpoint"]["address"]:
                    endpoint["endpoint"]["address"]["pipe"]["path"] = str(tmp / "no-agent" / "socket")
    (readiness,) = [lst for lst in config["static_resources"]["listeners"] if lst["name"] == "readiness"]
    return config, readiness["address"]["socket_address"]["port_value"]


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.mark.slow
def test_without_its_sds_secrets_the_sidecar_never_reports_ready(tmp_path: Path) -> None:
    config, ready_port = _rebind(yaml.safe_load(BOOTSTRAP.read_text()), tmp_path)
    admin = config["admin"]["address"]["socket_address"]["port_value"]
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [envoy_binary(), "-c", str(path), "--log-level", "warn", "--base-id", str(admin), "--disable-hot-restart"]
    with (tmp_path / "envoy.log").open("wb") as log:
        envoy = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        states = set()
        # Longer than Envoy's default initial_fetch_timeout (15 s) would not be needed to see it start without
        # secrets; 20 s shows the bootstrap overrides it.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert envoy.poll() is None, (tmp_path / "envoy.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/server_info", timeout=1) as response:
                    states.add(json.loads(response.read())["state"])
            except OSError:
                pass
            assert not _answers(ready_port), "ready without an SVID"
            time.sleep(0.5)
        assert states and states <= {"PRE_INITIALIZING", "INITIALIZING"}, states
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", ready_port)) != 0, "the readiness listener is open"
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)


def test_with_its_certificates_the_sidecar_answers_ready(tmp_path: Path) -> None:
    ca = TrustDomainCA.create("example.org")
    cert, key = ca.issue("spiffe://example.org/ns/payments/sa/payments-api").write(tmp_path, "svid")
    ready = Endpoint("127.0.0.1", free_port())
    spec = SidecarSpec(
        listener=Endpoint("127.0.0.1", free_port()),
        upstream=Endpoint("127.0.0.1", free_port()),
        authz=Endpoint("127.0.0.1", free_port()),
        tls=TlsFiles(str(cert), str(key), str(ca.write_bundle(tmp_path / "bundle.pem"))),
        admin=Endpoint("127.0.0.1", free_port()),
        readiness=ready,
    )
    with EnvoyProcess(spec, tmp_path / "envoy"):
        deadline = time.monotonic() + 10
        while not _answers(ready.port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _answers(ready.port)

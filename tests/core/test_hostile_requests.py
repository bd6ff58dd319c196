"""What a client that sends garbage or a hostile certificate gets back from the real server: a plain answer."""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from authz_server.dev.mesh import free_port
from tests.ops.ops_support import CHECKOUT, Workspace, read_lines
from tests.ops.test_server_ops import server, stop, wait_for

KEY_USAGE = bytes([6, 3, 0x55, 0x1D, 0x0F])  # OID 2.5.29.15
EXTENDED_KEY_USAGE = bytes([6, 3, 0x55, 0x1D, 0x25])  # OID 2.5.29.37


def _ready(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            external_auth_pb2_grpc.AuthorizationStub(channel).Check(external_auth_pb2.CheckRequest(), timeout=2)
        except grpc.RpcError:
            return False
    return True


@pytest.fixture(scope="module", params=["aio", "sync", "h2"])
def running(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Workspace, int, Path]]:
    """One server per transport for the module: its tests only call it (a start is ~1 s of a busy CI core)."""
    tmp_path = tmp_path_factory.mktemp(f"running-{request.param}")
    workspace = Workspace(tmp_path)
    port = free_port()
    log = tmp_path / "decisions.log"
    config = workspace.server_config(
        listen=f"127.0.0.1:{port}", transport=request.param, log={"decisions": str(log), "flush_interval_ms": 20}
    )
    with server(workspace, tmp_path, config) as process:
        wait_for(lambda: _ready(port), 60, "the server serving", process, tmp_path)
        yield workspace, port, log
        assert stop(process) == 0


def test_an_undecodable_request_gets_a_plain_invalid_argument(running: tuple[Workspace, int, Path]) -> None:
    _, port, log = running
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        check = channel.unary_unary("/envoy.service.auth.v3.Authorization/Check")
        with pytest.raises(grpc.RpcError) as raised:
            check(b"\xff\xff\xff", timeout=10)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "the request is not a valid envoy.service.auth.v3.CheckRequest message"
    stderr = (log.parent / "stderr").read_text()
    assert "DecodeError" not in stderr and "Traceback" not in stderr


def test_a_leaf_with_a_duplicate_extension_is_denied_with_a_reason(running: tuple[Workspace, int, Path]) -> None:
    workspace, port, log = running
    request = workspace.request(CHECKOUT, "POST", "/v1/charges")
    der = x509.load_pem_x509_certificate(urllib.parse.unquote(request.attributes.source.certificate).encode())
    tampered = der.public_bytes(Encoding.DER).replace(EXTENDED_KEY_USAGE, KEY_USAGE, 1)
    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(tampered) + b"-----END CERTIFICATE-----\n"
    request.attributes.source.certificate = urllib.parse.quote(pem.decode(), safe="")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=10)
    assert reply.denied_response.status.code == 401
    assert json.loads(reply.denied_response.body)["reason"] == "malformed-certificate"
    request_id = request.attributes.request.http.id
    deadline = time.monotonic() + 10
    lines: list[dict[str, object]] = []
    while not lines and time.monotonic() < deadline:
        time.sleep(0.05)
        lines = [e for e in read_lines(log) if e["request"]["id"] == request_id] if log.exists() else []
    (line,) = lines
    assert line["reason"] == "malformed-certificate"
    assert "Duplicate 2.5.29.15 extension" in json.dumps(line)
    assert "Traceback" not in (log.parent / "stderr").read_text()

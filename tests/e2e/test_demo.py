"""`authz-server demo` is the newcomer's first contact: it must work and tell the truth."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from authz_server.dev.demo import ENUMERATION_CALLS, run_demo
from authz_server.dev.mesh import LocalMesh

pytestmark = pytest.mark.e2e


@pytest.mark.slow
def test_the_demo_shows_each_kind_of_decision_and_cleans_up() -> None:
    out = io.StringIO()
    meshes: list[LocalMesh] = []

    assert run_demo(out=out, on_mesh=meshes.append) == 0

    text = out.getvalue()
    table = text[text.index("caller ") : text.index("decision log: ")]
    lines = [" ".join(line.split()) for line in table.splitlines()]

    def row(*parts: str) -> bool:
        return any(all(part in line for part in parts) for line in lines)

    assert row("example.org/ns/shop/sa/checkout POST /v1/charges 200 allow")
    assert row("example.org/ns/web/sa/frontend POST /v1/charges 403 deny no-matching-rule")
    assert row("GET /v1/admin/export 403 deny denied-by-rule")
    assert row("..%2F..%2Fadmin/export 403 deny invalid-path"), "an encoded slash never reaches a route"
    assert row("forged example.org/ns/shop/sa/checkout", "401 deny chain-invalid")
    assert row("expired example.org/ns/shop/sa/checkout", "401 deny expired")
    assert row("partner.example/ns/shop/sa/checkout", "403 deny untrusted-trust-domain")
    # A body thousands of times the usual charge is denied for risk, naming size_unusual; policy allowed it.
    assert row("example.org/ns/shop/sa/checkout POST /v1/charges 403 deny risk")
    # The reporting job's walk: its first calls allowed (the bundled model has no baseline of its pace yet).
    assert row("example.org/ns/finance/sa/reporting GET /v1/charges/ch_5000 [call 1 of", "200 allow")

    log_path = Path(text.split("decision log: ", 1)[1].split()[0])
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    decisions = [d for d in lines if d.get("kind") != "shed"]  # counted overload lines decide nothing
    assert len(decisions) >= 10 + ENUMERATION_CALLS
    assert {d["reason"] for d in decisions} >= {"allowed", "no-matching-rule", "expired", "risk"}
    exfiltration = [d for d in decisions if d["reason"] == "risk"]
    assert exfiltration[0]["risk"]["factors"][0]["name"] == "size_unusual"
    workdir = log_path.parent
    assert [p.name for p in workdir.iterdir()] == [log_path.name], "certificates and keys are removed"
    assert meshes[0].server is not None and meshes[0].server.process is not None
    assert meshes[0].server.process.poll() is not None, "the server was stopped"
    log_path.unlink()
    workdir.rmdir()


@pytest.mark.slow
def test_demo_keep_leaves_a_configuration_and_certificates_the_readme_can_serve_and_call(tmp_path: Path) -> None:
    """README, "Running the server": `demo --keep`, then `serve` its configuration and `check` a call."""
    import shutil
    import subprocess
    import sys

    from authz_server.dev.mesh import ServerProcess, free_port

    out = io.StringIO()
    assert run_demo(keep=True, out=out) == 0
    kept = Path(out.getvalue().split("kept: certificates, configuration, server and Envoy logs in ", 1)[1].split()[0])
    try:
        assert (kept / "config.yaml").is_file() and (kept / "svids" / "ns-shop-sa-checkout.pem").is_file()
        port = free_port()
        server = ServerProcess(kept / "config.yaml", port, tmp_path / "server.log").start()
        try:
            command = [
                sys.executable, "-m", "authz_server", "check", "--server", f"127.0.0.1:{port}",
                "--cert", str(kept / "svids" / "ns-shop-sa-checkout.pem"),
                "--to", "spiffe://example.org/ns/shop/sa/payments", "--method", "POST", "--path", "/v1/charges",
            ]  # fmt: skip
            allowed = subprocess.run(command, capture_output=True, text=True, timeout=60)
            assert allowed.returncode == 0, allowed.stderr
            assert allowed.stdout.startswith("HTTP 200\n") and "x-authz-decision: allow" in allowed.stdout
            command[command.index("--cert") + 1] = str(kept / "svids" / "ns-web-sa-frontend.pem")
            denied = subprocess.run(command, capture_output=True, text=True, timeout=60)
            assert denied.stdout.startswith("HTTP 403\n") and "x-authz-reason: no-matching-rule" in denied.stdout
        finally:
            assert server.stop() == 0
    finally:
        shutil.rmtree(kept)

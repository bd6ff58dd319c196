"""The load generators and the Envoy chain against real processes, for a second or two each."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from benchmarks.envoy_answer_cost import ANSWERS
from benchmarks.envoy_chain import Chain, ChainSpec, start_chain
from benchmarks.loadgen import grpc_body_file, h2load_grpc, wrk, wrk_script
from benchmarks.opa_peer import opa_server
from benchmarks.pipeline import write_inputs
from benchmarks.servers import (
    CHECK_METHOD,
    DecisionServerSpec,
    check_response_ok,
    decision_server,
    floor_server,
    probe_check,
)
from benchmarks.workload import CALLER_HEADER, Kind, Sample, TrustDomainFixture, Workload

needs_h2load = pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load not installed (nghttp2-client)")
needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")


@pytest.fixture(scope="module")
def workload() -> Workload:
    return Workload(TrustDomainFixture.create(replicas=1))


@needs_h2load
def test_h2load_drives_grpc_checks_at_the_floor_server(workload: Workload, tmp_path: Path) -> None:
    probe = workload.samples(1, kinds=[Kind.ALLOWED])[0].serialized
    with floor_server(tmp_path, "aio").start(probe) as server:
        assert check_response_ok(probe_check(server.port, probe))
        cpu_before = server.cpu_seconds()
        result = h2load_grpc(
            f"http://127.0.0.1:{server.port}{CHECK_METHOD}", grpc_body_file(probe, tmp_path),
            clients=1, streams=4, seconds=1.0, warmup_s=0.2,
        )  # fmt: skip
        assert server.cpu_seconds() > cpu_before
        assert server.peak_rss_bytes() > 10 * 2**20
    assert result.requests > 50 and result.errors == 0
    assert 0 < result.latency_us["p50"] <= result.latency_us["p99.9"]


def test_the_floor_answers_its_file_and_switches_on_sighup(workload: Workload, tmp_path: Path) -> None:
    # benchmarks/envoy_answer_cost.py rotates the answers over the floors with this between rounds.
    probe = workload.samples(1, kinds=[Kind.ALLOWED])[0].serialized
    answer_file = tmp_path / "answer.bin"
    answer_file.write_bytes(ANSWERS["6 headers + 6 metadata (main)"])
    with floor_server(tmp_path, "h2", answer=answer_file).start(probe) as server:
        assert probe_check(server.port, probe) == ANSWERS["6 headers + 6 metadata (main)"]
        answer_file.write_bytes(ANSWERS["bare OK"])
        server.processes[0].send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while probe_check(server.port, probe) != ANSWERS["bare OK"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert check_response_ok(probe_check(server.port, probe))


def _assert_statuses(chain: Chain, allowed: list[Sample], denied: list[Sample]) -> None:
    for sample, status in [*((s, "200") for s in allowed), *((s, "403") for s in denied)]:
        reply = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", sample.method,
             "-H", f"{CALLER_HEADER}: {sample.caller}", chain.url + sample.path],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        assert reply.stdout == status, (sample.kind, sample.caller, sample.method, sample.path)


@pytest.mark.e2e
@needs_wrk
def test_rbac_sidecar_enforces_the_workload_policy_through_mtls(workload: Workload, tmp_path: Path) -> None:
    """The in-Envoy floor enforces the same grants as the declarations: allowed calls 200, others 403."""
    allowed = workload.samples(6, kinds=[Kind.ALLOWED])
    denied = workload.samples(6, kinds=[Kind.POLICY_DENIED])
    with start_chain(workload, tmp_path, ChainSpec("rbac")) as chain:
        _assert_statuses(chain, allowed, denied)
        result = wrk(chain.url, wrk_script(allowed + denied, tmp_path), connections=2, seconds=1)
    assert result.requests > 20 and result.errors == 0
    # Half the script's requests are denied by RBAC: wrk counts them as non-2xx, never as errors.
    assert 0.3 < result.non_2xx / result.requests < 0.7


@pytest.mark.e2e
def test_the_sidecar_reaches_the_server_over_its_unix_socket(workload: Workload, tmp_path: Path) -> None:
    """The sidecar layout: Envoy's ext_authz cluster is the server's socket file, and the grants hold through it."""
    allowed = workload.samples(4, kinds=[Kind.ALLOWED])
    denied = workload.samples(4, kinds=[Kind.POLICY_DENIED])
    bundle, policies = write_inputs(workload, tmp_path / "inputs")
    spec = DecisionServerSpec(unix_socket=True)
    with decision_server(tmp_path / "server", bundle, policies, spec).start(allowed[0].serialized) as server:
        assert server.socket is not None and Path(server.socket).is_socket()
        with start_chain(workload, tmp_path / "chain", ChainSpec("ext_authz", authz_socket=server.socket)) as chain:
            _assert_statuses(chain, allowed, denied)


def _opa_binary() -> Path | None:
    """The peer binary, when AUTHZ_BENCH_OPA names one (the project never ships it: benchmarks/opa_peer.py)."""
    named = os.environ.get("AUTHZ_BENCH_OPA")
    return Path(named) if named else None


@pytest.mark.e2e
@pytest.mark.skipif(_opa_binary() is None, reason="no OPA-Envoy binary (set AUTHZ_BENCH_OPA to an opa-envoy-plugin)")
def test_opa_envoy_grants_what_the_declarations_grant(workload: Workload, tmp_path: Path) -> None:
    """The benchmark's Rego and data answer every allowed and policy-denied sample as authz-server does."""
    binary = _opa_binary()
    assert binary is not None
    samples = workload.samples(300)
    checked = 0
    with opa_server(tmp_path, binary).start(samples[0].serialized) as server:
        for sample in samples:
            if sample.kind is Kind.IDENTITY_DENIED:
                continue  # OPA trusts Envoy's handshake: these never reach it through a sidecar
            allowed = check_response_ok(probe_check(server.port, sample.serialized))
            assert allowed is (sample.kind is not Kind.POLICY_DENIED), (sample.caller, sample.method, sample.path)
            checked += 1
    assert checked > 250

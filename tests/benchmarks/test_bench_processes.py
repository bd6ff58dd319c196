"""The load generators and the Envoy chain against real processes, for a second or two each."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks.envoy_chain import ChainSpec, start_chain
from benchmarks.loadgen import grpc_body_file, h2load_grpc, wrk, wrk_script
from benchmarks.servers import CHECK_METHOD, check_response_ok, floor_server, probe_check
from benchmarks.workload import CALLER_HEADER, Kind, TrustDomainFixture, Workload

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


@pytest.mark.e2e
@needs_wrk
def test_rbac_sidecar_enforces_the_workload_policy_through_mtls(workload: Workload, tmp_path: Path) -> None:
    """The in-Envoy floor enforces the same grants as the declarations: allowed calls 200, others 403."""
    allowed = workload.samples(6, kinds=[Kind.ALLOWED])
    denied = workload.samples(6, kinds=[Kind.POLICY_DENIED])
    with start_chain(workload, tmp_path, ChainSpec("rbac")) as chain:
        for sample, status in [*((s, "200") for s in allowed), *((s, "403") for s in denied)]:
            reply = subprocess.run(
                ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", sample.method,
                 "-H", f"{CALLER_HEADER}: {sample.caller}", chain.url + sample.path],
                capture_output=True, text=True, timeout=10,
            )  # fmt: skip
            assert reply.stdout == status, (sample.kind, sample.caller, sample.method, sample.path)
        result = wrk(chain.url, wrk_script(allowed + denied, tmp_path), connections=2, seconds=1)
    assert result.requests > 20 and result.errors == 0
    # Half the script's requests are denied by RBAC: wrk counts them as non-2xx, never as errors.
    assert 0.3 < result.non_2xx / result.requests < 0.7

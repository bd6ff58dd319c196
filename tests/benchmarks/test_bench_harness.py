"""The benchmark harness, run for real at tiny scale so it cannot rot (no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.decision import Verdict
from benchmarks.ci_gate import GateConfig, GateConfigError
from benchmarks.inprocess import run_inprocess
from benchmarks.pipeline import STAGES, build_pipeline
from benchmarks.pipeline_cpu import measure as measure_pipeline_cpu
from benchmarks.report import plot_latency_vs_load, table
from benchmarks.stats import percentile, summarize
from benchmarks.workload import ROUTES, Kind, TrustDomainFixture, Workload, grpc_frame


@pytest.fixture(scope="module")
def workload() -> Workload:
    return Workload(TrustDomainFixture.create(replicas=2))


def test_samples_are_check_requests_envoy_would_send(workload: Workload) -> None:
    samples = workload.samples(400)
    assert {s.kind for s in samples} == set(Kind)
    callers = {s.request.attributes.source.principal for s in samples if s.kind is Kind.ALLOWED}
    assert len(callers) >= 8
    for sample in samples:
        parsed = external_auth_pb2.CheckRequest.FromString(sample.serialized)
        http = parsed.attributes.request.http
        assert http.method == sample.method and http.path == sample.path
        assert http.headers[":path"] == sample.path
        if sample.kind is not Kind.IDENTITY_DENIED:
            assert parsed.attributes.source.certificate.startswith("-----BEGIN%20CERTIFICATE-----")


def test_samples_are_deterministic_for_a_seed(workload: Workload) -> None:
    first = [(s.kind, s.caller, s.method, s.path) for s in workload.samples(50)]
    again = [(s.kind, s.caller, s.method, s.path) for s in workload.samples(50)]
    assert first == again


def test_grpc_frame_carries_the_message_length() -> None:
    framed = grpc_frame(b"abc")
    assert framed == b"\x00\x00\x00\x00\x03abc"


def test_pipeline_decides_each_kind_as_the_workload_says(workload: Workload, tmp_path: Path) -> None:
    """The workload's labels are what the real stages conclude, so the mix measured is the mix intended."""
    pipeline = build_pipeline(workload, tmp_path, 1000, decision_log=False)
    try:
        for sample in workload.samples(300):
            response = external_auth_pb2.CheckResponse.FromString(pipeline.authorizer.check(sample.request))
            headers = {h.header.key: h.header.value for h in response.ok_response.headers} | {
                h.header.key: h.header.value for h in response.denied_response.headers
            }
            verdict = headers["x-authz-decision"]
            if sample.kind in (Kind.ALLOWED, Kind.ANOMALOUS):
                assert verdict == Verdict.ALLOW.value, (sample.kind, sample.caller, sample.method, sample.path, headers)
            elif sample.kind is Kind.POLICY_DENIED:
                assert (verdict, response.denied_response.status.code) == ("deny", 403), (sample.caller, sample.path)
            else:
                assert verdict == "deny" and headers["x-authz-reason"] in (
                    "untrusted-trust-domain", "expired", "no-identity"
                ), headers  # fmt: skip
    finally:
        pipeline.close()


def test_inprocess_runner_times_every_stage(workload: Workload, tmp_path: Path) -> None:
    pipeline = build_pipeline(workload, tmp_path, 200, decision_log=False)
    try:
        result = run_inprocess(pipeline, [s.serialized for s in workload.samples(100)], calls=200, seconds=30)
    finally:
        pipeline.close()
    assert result.calls == 200
    assert set(result.stage_us) == set(STAGES)
    assert all(summary["n"] == 200 for summary in result.stage_us.values())
    assert 0.5 < result.allowed_share < 1.0
    assert result.decision_us["p50"] <= result.decision_us["p99"] <= result.decision_us["max"]
    json.dumps(result.as_dict())


def test_rbac_config_grants_exactly_the_routes(workload: Workload) -> None:
    policies = workload.rbac_config()["rules"]["policies"]
    assert set(policies) == {route.name for route in ROUTES}
    for route in ROUTES:
        principals = policies[route.name]["principals"]
        assert len(principals) == len(route.callers)


def test_percentiles_use_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 99.9) == 100.0
    summary = summarize(reversed(values))
    assert (summary["n"], summary["p90"], summary["max"]) == (100.0, 90.0, 100.0)


def test_table_and_plot_are_written(tmp_path: Path) -> None:
    text = table(["configuration", "req/s"], [["floor aio", 2500.0], ["authz sync w1", 2300.0]])
    assert "floor aio" in text.splitlines()[2] and "2,500" in text
    point = {"rps": 1000.0, "latency_us": {"p50": 500.0, "p90": 700.0, "p99": 900.0, "p99.9": 1200.0}}
    path = plot_latency_vs_load({"floor": [point], "authz": [point]}, tmp_path / "plot.png", "test")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_shipped_gate_configuration_loads() -> None:
    config = GateConfig.load(Path(__file__).parents[2] / "benchmarks" / "ci_gate.yaml")
    assert config.inprocess.rounds >= 1 and config.grpc.min_rps > 0


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("inprocess: {rounds: 0}", "inprocess.rounds: must be >= 1"),
        ("inprocess: {p99_budget: 1}", "inprocess.p99_budget: unknown key"),
        ("grpc: {min_rps: fast}", "grpc.min_rps: expected a number"),
        ("latency: {}", "latency: unknown section"),
        ("grpc: [1, 2]", "grpc: expected a mapping"),
        ("inprocess: {clock: sundial}", "inprocess.clock: expected 'cpu' or 'wall'"),
        ("inprocess: {rounds: 2.5}", "inprocess.rounds: expected a whole number"),
    ],
)
def test_a_bad_gate_configuration_names_the_key(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "gate.yaml"
    path.write_text(text)
    with pytest.raises(GateConfigError, match=problem.replace(".", r"\.")):
        GateConfig.load(path)


def test_the_sidecar_answers_directly_only_when_asked() -> None:
    from authz_server.envoy.bootstrap import UPSTREAM_CLUSTER, Endpoint, SidecarSpec, TlsFiles, render_bootstrap

    def route(spec: SidecarSpec) -> dict[str, object]:
        listener = render_bootstrap(spec)["static_resources"]["listeners"][0]
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        routes: list[dict[str, object]] = hcm["route_config"]["virtual_hosts"][0]["routes"]
        return routes[0]

    tls = TlsFiles("cert.pem", "key.pem", "bundle.pem")
    spec = SidecarSpec(Endpoint("127.0.0.1", 1), Endpoint("127.0.0.1", 2), Endpoint("127.0.0.1", 3), tls)
    assert route(spec)["route"] == {"cluster": UPSTREAM_CLUSTER, "timeout": "15s"}
    direct = route(SidecarSpec(spec.listener, spec.upstream, spec.authz, tls, upstream_direct_response="ok"))
    assert direct["direct_response"] == {"status": 200, "body": {"inline_string": "ok"}}
    assert "route" not in direct


def test_the_pipeline_cpu_figure_includes_the_decision_log_writers_work(tmp_path: Path) -> None:
    # Every decided call (warm-up and measured) is a line the writer built and wrote before the round's CPU was read.
    rounds = measure_pipeline_cpu(tmp_path, 60, 2, samples=40)
    lines = (tmp_path / "decisions.jsonl").read_text().splitlines()
    decided = [json.loads(line) for line in lines if json.loads(line).get("kind") != "shed"]
    warmup = len([s for s in Workload(TrustDomainFixture.create()).samples(40) if s.kind is not Kind.IDENTITY_DENIED])
    assert len(decided) == warmup + 2 * 60
    assert all(process >= thread > 0 for process, thread in rounds)

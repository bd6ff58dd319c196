"""The CI latency gate: a short benchmark that fails the build on a real latency or throughput regression.

    .venv/bin/python -m benchmarks.ci_gate [--config benchmarks/ci_gate.yaml] [--json out.json]

Two steps, about a minute together on 2 cores (always under two):

1. in-process: `Authorizer.check` over the benchmark workload, in `rounds`
   independent rounds; fails when the median of the rounds' p99 exceeds the
   risk budget (risk.budget_ms unless `p99_budget_ms` is set), or when calls/s
   fall below `min_calls_per_s`.
2. grpc: the real server under h2load, alternating with the Python floor (an
   always-allow server on the same transport); fails when requests/s fall
   below `min_rps`, below `min_floor_share` of the floor's, or transport
   errors exceed `max_error_share`. The share is what a change to the
   decision path moves; a slower runner moves both.

It prints a table, writes the measurements as JSON, and exits 1 naming every
threshold that was crossed. Thresholds live in ci_gate.yaml (README.md here).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from authz_server.config import Config
from benchmarks.inprocess import InProcessResult, run_inprocess
from benchmarks.loadgen import LoadResult, grpc_body_file, h2load_grpc
from benchmarks.pipeline import build_pipeline, write_inputs
from benchmarks.report import stage_table, table, write_json
from benchmarks.servers import (
    CHECK_METHOD,
    DecisionServerSpec,
    check_response_ok,
    decision_server,
    floor_server,
    probe_check,
)
from benchmarks.workload import Kind, TrustDomainFixture, Workload

DEFAULT_CONFIG = Path(__file__).with_name("ci_gate.yaml")
OUT = Path(__file__).parent / "out" / "ci_gate.json"
IN_PROCESS_TARGET_US = 200.0
"""The project's target for the in-process decision p99 (reported, not gated: the budget is the gate)."""


class GateConfigError(ValueError):
    pass


@dataclass(frozen=True)
class InProcessGate:
    rounds: int = 3
    calls_per_round: int = 20000
    seconds_per_round: float = 12.0
    p99_budget_ms: float | None = None
    max_p50_us: float = 1000.0
    """Median cost per call: robust to noise, so it catches a uniform slowdown long before the p99 budget does."""
    min_calls_per_s: float = 500.0
    decision_log: bool = False
    clock: str = "cpu"
    """cpu: the thread's CPU time per call (immune to preemption by neighbours); wall: elapsed time."""

    def validate(self) -> list[str]:
        problems = []
        if self.clock not in ("cpu", "wall"):
            problems.append(f"inprocess.clock: expected 'cpu' or 'wall', got {self.clock!r}")
        if self.rounds < 1:
            problems.append(f"inprocess.rounds: must be >= 1, got {self.rounds}")
        if self.calls_per_round < 100:
            problems.append(f"inprocess.calls_per_round: must be >= 100, got {self.calls_per_round}")
        if self.seconds_per_round <= 0:
            problems.append(f"inprocess.seconds_per_round: must be > 0, got {self.seconds_per_round}")
        if self.p99_budget_ms is not None and self.p99_budget_ms <= 0:
            problems.append(f"inprocess.p99_budget_ms: must be > 0 or null, got {self.p99_budget_ms}")
        if self.max_p50_us <= 0:
            problems.append(f"inprocess.max_p50_us: must be > 0, got {self.max_p50_us}")
        if self.min_calls_per_s < 0:
            problems.append(f"inprocess.min_calls_per_s: must be >= 0, got {self.min_calls_per_s}")
        return problems


@dataclass(frozen=True)
class GrpcGate:
    enabled: bool = True
    seconds: float = 8.0
    warmup_seconds: float = 2.0
    concurrency: int = 16
    min_rps: float = 400.0
    min_floor_share: float = 0.2
    """The server's requests/s as a share of the Python floor's in the same run (alternating halves)."""
    max_error_share: float = 0.0

    def validate(self) -> list[str]:
        problems = []
        if self.seconds <= 0 or self.warmup_seconds < 0:
            problems.append("grpc.seconds must be > 0 and grpc.warmup_seconds >= 0")
        if self.concurrency < 1:
            problems.append(f"grpc.concurrency: must be >= 1, got {self.concurrency}")
        if self.min_rps < 0:
            problems.append(f"grpc.min_rps: must be >= 0, got {self.min_rps}")
        if not 0 <= self.min_floor_share <= 1:
            problems.append(f"grpc.min_floor_share: must be within 0..1, got {self.min_floor_share}")
        if not 0 <= self.max_error_share <= 1:
            problems.append(f"grpc.max_error_share: must be within 0..1, got {self.max_error_share}")
        return problems


@dataclass(frozen=True)
class GateConfig:
    inprocess: InProcessGate = field(default_factory=InProcessGate)
    grpc: GrpcGate = field(default_factory=GrpcGate)

    @classmethod
    def load(cls, path: Path) -> GateConfig:
        """Read and validate the file; every problem is reported with its key."""
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise GateConfigError(f"{path}: {exc}") from exc
        if not isinstance(data, dict):
            raise GateConfigError(f"{path}: expected a mapping with `inprocess` and `grpc`")
        problems: list[str] = []
        sections: dict[str, Any] = {}
        known: dict[str, type[Any]] = {"inprocess": InProcessGate, "grpc": GrpcGate}
        for name in sorted(set(data) - set(known)):
            problems.append(f"{name}: unknown section (known: {', '.join(known)})")
        for name, section_type in known.items():
            values = data.get(name) or {}
            if not isinstance(values, dict):
                problems.append(f"{name}: expected a mapping, got {values!r}")
                continue
            sections[name] = _section(section_type, name, values, problems)
        config = cls(**sections) if not problems else cls()
        problems += config.inprocess.validate() + config.grpc.validate()
        if problems:
            raise GateConfigError(f"{path}:\n  " + "\n  ".join(problems))
        return config


def _section(section_type: type[Any], name: str, values: dict[str, Any], problems: list[str]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(section_type)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            problems.append(f"{name}.{key}: unknown key (known: {', '.join(fields)})")
            continue
        default: Any = fields[key].default
        if value is None and key == "p99_budget_ms":
            kwargs[key] = None
        elif isinstance(default, str):
            if not isinstance(value, str):
                problems.append(f"{name}.{key}: expected a string, got {value!r}")
            kwargs[key] = str(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                problems.append(f"{name}.{key}: expected true or false, got {value!r}")
            kwargs[key] = value
        elif isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{name}.{key}: expected a number, got {value!r}")
        elif isinstance(default, int) and value != int(value):
            problems.append(f"{name}.{key}: expected a whole number, got {value!r}")
        else:
            kwargs[key] = float(value) if default is None or isinstance(default, float) else int(value)
    return section_type(**kwargs)


@dataclass
class Verdict:
    failures: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    measurements: dict[str, Any] = field(default_factory=dict)


def inprocess_step(config: InProcessGate, workload: Workload, workdir: Path, verdict: Verdict) -> None:
    budget_ms = config.p99_budget_ms if config.p99_budget_ms is not None else Config().risk.budget_ms
    requests = [s.serialized for s in workload.samples(4000)]
    rounds: list[InProcessResult] = []
    for index in range(config.rounds):
        pipeline = build_pipeline(
            workload, workdir / f"round-{index}", config.calls_per_round, decision_log=config.decision_log
        )
        try:
            rounds.append(
                run_inprocess(pipeline, requests, calls=config.calls_per_round, seconds=config.seconds_per_round)
            )
        finally:
            pipeline.close()

    def gated(result: InProcessResult) -> dict[str, float]:
        return result.decision_cpu_us if config.clock == "cpu" else result.decision_us

    p99_us = statistics.median(gated(r)["p99"] for r in rounds)
    p50_us = statistics.median(gated(r)["p50"] for r in rounds)
    rate = statistics.median(r.calls_per_s for r in rounds)
    best = min(rounds, key=lambda r: abs(gated(r)["p99"] - p99_us))
    print(f"in-process decision path ({config.rounds} rounds; stages: " + _stages(best.stages) + ")")
    print(
        table(
            ["round", "calls", "calls/s", "CPU p50 µs", "CPU p99 µs", "CPU p99.9 µs", "wall p50 µs", "wall p99 µs"],
            [
                [str(i + 1), r.calls, round(r.calls_per_s)]
                + [round(r.decision_cpu_us[k], 1) for k in ("p50", "p99", "p99.9")]
                + [round(r.decision_us[k], 1) for k in ("p50", "p99")]
                for i, r in enumerate(rounds)
            ],
        )
    )
    print(stage_table(best.stage_us, "\nper stage (the round closest to the median p99)"))
    verdict.measurements["inprocess"] = {
        "clock": config.clock,
        "median_p99_us": p99_us,
        "median_p50_us": p50_us,
        "max_p50_us": config.max_p50_us,
        "median_calls_per_s": rate,
        "budget_us": budget_ms * 1000,
        "min_calls_per_s": config.min_calls_per_s,
        "rounds": [r.as_dict() for r in rounds],
    }
    if p99_us > budget_ms * 1000:
        verdict.failures.append(
            f"in-process decision p99 ({config.clock} time) {p99_us:.0f} µs exceeds the risk budget "
            f"{budget_ms * 1000:.0f} µs"
        )
    if p50_us > config.max_p50_us:
        verdict.failures.append(
            f"in-process decision p50 ({config.clock} time) {p50_us:.0f} µs exceeds {config.max_p50_us:.0f} µs"
        )
    if rate < config.min_calls_per_s:
        verdict.failures.append(
            f"in-process throughput {rate:.0f} calls/s is below the floor {config.min_calls_per_s:.0f}"
        )
    if p99_us > IN_PROCESS_TARGET_US:
        verdict.notices.append(f"in-process p99 {p99_us:.0f} µs is above the {IN_PROCESS_TARGET_US:.0f} µs target")


def grpc_step(config: GrpcGate, workload: Workload, workdir: Path, verdict: Verdict) -> None:
    if not config.enabled:
        verdict.notices.append("grpc step disabled in the gate configuration")
        return
    if shutil.which("h2load") is None:
        verdict.notices.append("grpc step skipped: h2load is not installed (apt-get install nghttp2-client)")
        return
    probe = next(s for s in workload.samples(200) if s.kind is Kind.ALLOWED).serialized
    bundle, policies = write_inputs(workload, workdir / "inputs")
    spec = DecisionServerSpec(transport=Config().transport)
    body = grpc_body_file(probe, workdir)
    clients = min(2, config.concurrency)
    loads: dict[str, list[LoadResult]] = {"server": [], "floor": []}
    cpu_s = 0.0
    with (
        decision_server(workdir / "server", bundle, policies, spec).start(probe) as server,
        floor_server(workdir / "floor", spec.transport).start(probe) as floor,
    ):
        if not check_response_ok(probe_check(server.port, probe)):
            verdict.failures.append(
                "the server denied the benchmark's allowed probe: the gate setup or the build is broken"
            )
            return
        # Two halves each, alternating, so a noisy stretch of a shared runner lands on both.
        order = [("server", server), ("floor", floor), ("floor", floor), ("server", server)]
        for name, group in order:
            before = group.cpu_seconds()
            load = h2load_grpc(
                f"http://127.0.0.1:{group.port}{CHECK_METHOD}", body, clients=clients,
                streams=max(1, config.concurrency // clients), seconds=config.seconds / 2,
                warmup_s=config.warmup_seconds / 2,
            )  # fmt: skip
            loads[name].append(load)
            if name == "server":
                cpu_s += (group.cpu_seconds() - before) * config.seconds / (config.seconds + config.warmup_seconds)
    served = sum(load.requests for load in loads["server"])
    seconds = sum(load.seconds for load in loads["server"])
    rps = served / seconds if seconds else 0.0
    floor_rps = sum(load.requests for load in loads["floor"]) / max(1e-9, sum(load.seconds for load in loads["floor"]))
    share = rps / floor_rps if floor_rps else 0.0
    errors = sum(load.errors for load in loads["server"])
    cpu_us = cpu_s / max(1, served) * 1e6
    latency = {
        k: statistics.median(load.latency_us[k] for load in loads["server"]) for k in ("p50", "p90", "p99", "p99.9")
    }
    error_share = errors / max(1, served + errors)
    print(f"\ngRPC, `authz-server serve` transport {spec.transport}, h2load, {config.concurrency} in flight")
    print(
        table(
            ["req/s", "floor req/s", "share", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "CPU µs/req", "errors"],
            [
                [round(rps), round(floor_rps), round(share, 2)]
                + [round(latency[k] / 1000, 2) for k in ("p50", "p90", "p99", "p99.9")]
                + [round(cpu_us), errors]
            ],
        )
    )
    verdict.measurements["grpc"] = {
        "rps": rps,
        "floor_rps": floor_rps,
        "floor_share": share,
        "latency_us": latency,
        "server_cpu_us_per_request": cpu_us,
        "errors": errors,
        "min_rps": config.min_rps,
        "min_floor_share": config.min_floor_share,
    }
    if rps < config.min_rps:
        verdict.failures.append(f"gRPC throughput {rps:.0f} req/s is below the floor {config.min_rps:.0f}")
    if share < config.min_floor_share:
        verdict.failures.append(
            f"gRPC throughput is {share:.2f} of the Python floor's ({rps:.0f} against {floor_rps:.0f} req/s), "
            f"below {config.min_floor_share:.2f}"
        )
    if error_share > config.max_error_share:
        verdict.failures.append(
            f"gRPC transport errors {100 * error_share:.2f}% exceed {100 * config.max_error_share:.2f}%"
        )


def _stages(stages: dict[str, str]) -> str:
    return ", ".join(f"{name} {state}" for name, state in stages.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ci_gate", description="the CI latency gate")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--json", type=Path, default=OUT, help="where the measurements are written")
    args = parser.parse_args(argv)
    try:
        config = GateConfig.load(args.config)
    except GateConfigError as exc:
        print(f"ci_gate: invalid configuration: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    verdict = Verdict()
    workload = Workload(TrustDomainFixture.create())
    with tempfile.TemporaryDirectory(prefix="authz-ci-gate-") as tmp:
        inprocess_step(config.inprocess, workload, Path(tmp) / "inprocess", verdict)
        grpc_step(config.grpc, workload, Path(tmp) / "grpc", verdict)
    elapsed = time.monotonic() - started
    write_json({"config": dataclasses.asdict(config), "seconds": round(elapsed, 1), **verdict.measurements}, args.json)
    print()
    for notice in verdict.notices:
        print(f"ci_gate: note: {notice}")
    for failure in verdict.failures:
        print(f"ci_gate: FAIL: {failure}")
    print(f"ci_gate: {'FAILED' if verdict.failures else 'passed'} in {elapsed:.0f}s (measurements: {args.json})")
    return 1 if verdict.failures else 0


if __name__ == "__main__":
    sys.exit(main())

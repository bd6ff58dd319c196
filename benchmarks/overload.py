"""Overload: does the server keep deciding in time when offered more than it can decide?

`python -m benchmarks.overload` starts the real server (`authz-server serve`, one worker) pinned to one core,
measures its capacity (h2load, closed loop, no deadline), then offers 1.2x, 1.5x and 2x that rate open loop
with `grpc-timeout: 250m` on every call, as Envoy sends its ext_authz timeout. For each level it reports

- the share of capacity decided within deadline: calls the server admitted and decided, less those whose answer
  left after their deadline (the server's own `authz_admission_decided_total` and `authz_admission_late_total`),
  per second, over the capacity;
- p99 latency of decided calls, from a probe: a separate client sending one call every 20 ms (with the same
  250 ms deadline) beside the load, which sees each answer and can tell a decision from a shed;
- recovery: once the load stops, how long until the probe's calls are decided again within 5x the unloaded p99;
- in the JSON rows, h2load's own latency percentiles over every answer it got (decided, shed or refused): the wait
  in the socket before the server reads a call, which the server's counts cannot see.

The unloaded p99 is the probe's alone, measured before each level's capacity run; the table's ratios use the lowest
of the run for that configuration, recovery the lowest seen so far (neighbours only ever add latency). The server
runs under `taskset -c SERVER_CPUS` and h2load under `taskset -c GENERATOR_CPUS`; on a 2-core machine that is one
core each. Every configuration (transport, `--admission` settings, `--compare-unbounded`) has its own server, all
started at once and measured level by level in turn, so that a shared machine's noisy minute hits them alike. A
health probe (grpc.health.v1 on the serving port, as kubelet's probes) runs beside each load.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.dev.mesh import free_port
from authz_server.transport.config import AdmissionConfig
from benchmarks.envoy_chain import Chain, ChainSpec, start_chain
from benchmarks.loadgen import Answered, grpc_body_file, h2load_grpc, h2load_requests
from benchmarks.pipeline import write_inputs
from benchmarks.run import machine
from benchmarks.servers import CHECK_METHOD, ServerGroup, check_response_ok, pinned, probe_check
from benchmarks.stats import percentile
from benchmarks.workload import CALLER_HEADER, TRUST_DOMAIN, Kind, Sample, TrustDomainFixture, Workload

DEADLINE_S = 0.25
GRPC_TIMEOUT = "250m"
PROBE_INTERVAL_S = 0.02
FACTORS = (1.2, 1.5, 2.0)
_UNAVAILABLE = 14
RECOVERY_RUN = 10
SHARE_TARGET = 0.9
P99_TARGET_RATIO = 5.0
RECOVERY_TARGET_S = 1.0
"""Issue 16's targets: >= 90% of capacity decided in time, p99 of decided calls <= 5x the unloaded p99, recovery
within a second."""
UNBOUNDED = {"max_in_flight": 100_000, "max_queued": 100_000, "reserve_ms": 0}
"""Admission lifted, for comparison: gRPC's own defaults hold every call, only calls already past their deadline
are shed (what the server did before admission, less the decisions of dead calls)."""


def start_server(
    workdir: Path,
    bundle: Path,
    policies: Path,
    transport: str,
    cpus: str | None,
    probe: bytes,
    admission: dict[str, Any] | None = None,
) -> tuple[ServerGroup, int]:
    port, metrics_port = free_port(), free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "transport": transport,
        "identity": {"trust_domains": {TRUST_DOMAIN: {"bundle": str(bundle)}}},
        "policy": {"paths": [str(policies)]},
        "log": {"decisions": str(workdir / f"decisions-{transport}.jsonl")},
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        "grace_period_s": 2,
    }
    if admission:
        config["admission"] = admission
    config_path = workdir / f"overload-{transport}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    command = [sys.executable, "-m", "authz_server", "serve", "--config", str(config_path),
               "--listen", f"127.0.0.1:{port}", "--workers", "1"]  # fmt: skip
    group = ServerGroup(f"overload-{transport}", [pinned(command, cpus)], workdir, port).start(probe)
    return group, metrics_port


def counters(metrics_port: int) -> dict[str, float]:
    """The admission counters, summed over labels: decided, late, shed."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    wanted = {"authz_admission_decided": "decided", "authz_admission_late": "late", "authz_shed": "shed"}
    found = dict.fromkeys(wanted.values(), 0.0)
    for family in text_string_to_metric_families(text):
        name = wanted.get(family.name)
        if name is not None:
            found[name] += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return found


@dataclass
class ProbeCall:
    sent: float
    latency_s: float
    outcome: str
    """decided, shed (503 'overloaded'), or the gRPC status name of a refusal."""


@dataclass
class Probe:
    """One call every PROBE_INTERVAL_S with a 250 ms deadline, recording what came back and when."""

    port: int
    request: bytes
    calls: list[ProbeCall] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Probe:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[ProbeCall]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.calls

    def _run(self) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            check = channel.unary_unary(CHECK_METHOD, request_serializer=None, response_deserializer=None)
            next_at = time.monotonic()
            while not self._stop.is_set():
                sent = time.time()
                started = time.perf_counter()
                try:
                    reply = check(self.request, timeout=DEADLINE_S)
                    status = external_auth_pb2.CheckResponse.FromString(reply).status.code
                    outcome = "shed" if status == _UNAVAILABLE else "decided"
                except grpc.RpcError as exc:
                    outcome = exc.code().name
                self.calls.append(ProbeCall(sent, time.perf_counter() - started, outcome))
                next_at += PROBE_INTERVAL_S
                self._stop.wait(max(0.0, next_at - time.monotonic()))


HEALTH_INTERVAL_S = 0.1
HEALTH_TIMEOUT_S = 2.0
"""The Deployment's readiness probe: grpc.health.v1 on the serving port, timeoutSeconds 2."""


@dataclass
class HealthProbe:
    """One grpc.health.v1 Check every HEALTH_INTERVAL_S, as kubelet's probes send them on the serving port: a
    server that sheds its health checks under overload is restarted or taken out of its Service."""

    port: int
    failed: int = 0
    answered: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> HealthProbe:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> HealthProbe:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self

    def _run(self) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            while not self._stop.is_set():
                try:
                    reply = check(health_pb2.HealthCheckRequest(), timeout=HEALTH_TIMEOUT_S)
                    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
                except grpc.RpcError:
                    serving = False
                self.answered += serving
                self.failed += not serving
                self._stop.wait(HEALTH_INTERVAL_S)


def p99_ms(calls: Sequence[ProbeCall]) -> float:
    return percentile(sorted(c.latency_s for c in calls if c.outcome == "decided"), 99.0) * 1000


def recovery_s(calls: Sequence[ProbeCall], load_ended: float, bound_s: float) -> float | None:
    """Seconds from the end of the load until the probe's calls are decided within `bound_s` again: the first call
    that, with the RECOVERY_RUN calls after it, was decided, each within `bound_s` but for one (a shared machine's
    hiccup is not a server that has not recovered)."""
    after = [c for c in calls if c.sent >= load_ended]
    for index in range(len(after) - RECOVERY_RUN):
        run = after[index : index + RECOVERY_RUN + 1]
        if all(c.outcome == "decided" for c in run) and sum(c.latency_s > bound_s for c in run) <= 1:
            return max(0.0, after[index].sent - load_ended)
    return None


CAPACITY_CALLS = 16
"""Calls a capacity run keeps in flight (2 connections x 8 streams), fewer when the admission bounds hold fewer: a
closed loop past the bounds would measure the refusals' cost, not the server's capacity."""


def capacity(
    group: ServerGroup, metrics_port: int, body: Path, seconds: float, cpus: str | None, in_flight: int
) -> tuple[float, float]:
    """Decisions per second and per CPU-second of the server in a closed loop of `in_flight` calls without
    deadline, counted by the server."""
    before, cpu = counters(metrics_port), group.cpu_seconds()
    started = time.time()
    url = f"http://127.0.0.1:{group.port}{CHECK_METHOD}"
    clients = 2 if in_flight >= 2 else 1
    h2load_grpc(url, body, clients=clients, streams=in_flight // clients, seconds=seconds, warmup_s=0.0, cpus=cpus)
    decided = counters(metrics_port)["decided"] - before["decided"]
    return decided / (time.time() - started), decided / max(group.cpu_seconds() - cpu, 1e-9)


OFFER_CLIENTS = 4
OFFER_IN_FLIGHT = 1024
"""Calls h2load may have outstanding at once over its OFFER_CLIENTS connections by default: as many Envoys without
circuit breakers would send."""


def offer(port: int, body: Path, rate: float, seconds: float, cpus: str | None, in_flight: int) -> dict[str, Any]:
    """h2load open loop at `rate` calls/s for `seconds`, every call with grpc-timeout 250m, at most `in_flight`
    outstanding (h2load holds the next call back until one is answered, as Envoy's `max_requests` circuit breaker
    refuses it: either way the server never sees it)."""
    clients = OFFER_CLIENTS
    result = h2load_grpc(
        f"http://127.0.0.1:{port}{CHECK_METHOD}",
        body,
        clients=clients,
        streams=max(1, in_flight // clients),
        seconds=seconds,
        warmup_s=0.0,
        rps_per_client=rate / clients,
        cpus=cpus,
        extra_headers=(f"grpc-timeout: {GRPC_TIMEOUT}",),
    )
    return {
        "answered": result.requests,
        "errors": result.errors,
        "seconds": result.seconds,
        "latency_us": result.latency_us,
    }


@dataclass
class Subject:
    """One configuration under test: its own server, measured level by level between the others'."""

    name: str
    transport: str
    admission: dict[str, Any] | None
    group: ServerGroup
    metrics_port: int
    request: bytes
    client_in_flight: int = OFFER_IN_FLIGHT
    best_capacity: float = 0.0
    best_unloaded_p99_ms: float = float("inf")
    levels: list[dict[str, Any]] = field(default_factory=list)

    @property
    def capacity_calls(self) -> int:
        bounds = AdmissionConfig(**(self.admission or {}))
        return min(CAPACITY_CALLS, bounds.max_in_flight + bounds.max_queued)

    def unloaded_p99_ms(self, seconds: float) -> float:
        probe = Probe(self.group.port, self.request).start()
        time.sleep(seconds)
        return p99_ms(probe.stop())

    def level(self, factor: float, body: Path, options: argparse.Namespace) -> dict[str, Any]:
        """The unloaded p99 and the capacity just before (both drift with a shared machine's neighbours), then
        `factor` x capacity offered with deadlines, then the recovery."""
        group, metrics_port = self.group, self.metrics_port
        unloaded = self.unloaded_p99_ms(options.unloaded_seconds)
        # Neighbours only ever add latency: the lowest unloaded p99 seen is the closest to the server's own.
        self.best_unloaded_p99_ms = min(self.best_unloaded_p99_ms, unloaded)
        runs = [
            capacity(group, metrics_port, body, options.capacity_seconds, options.generator_cpus, self.capacity_calls)
            for _ in range(options.repeats)
        ]
        # Neighbours only ever take capacity away: the best rate seen is the closest to the server's own.
        self.best_capacity = cap = max(self.best_capacity, *(rate for rate, _ in runs))
        per_cpu = statistics.median(per for _, per in runs)
        time.sleep(0.5)
        before, cpu = counters(metrics_port), group.cpu_seconds()
        probe = Probe(group.port, self.request).start()
        health = HealthProbe(group.port).start()
        started = time.time()
        load = offer(group.port, body, cap * factor, options.seconds, options.generator_cpus, self.client_in_flight)
        ended = time.time()
        health.stop()
        after, cpu = counters(metrics_port), group.cpu_seconds() - cpu
        time.sleep(options.recovery_seconds)
        calls = probe.stop()
        during = [c for c in calls if c.sent < ended]
        elapsed = ended - started
        in_time = (after["decided"] - before["decided"]) - (after["late"] - before["late"])
        outcomes: dict[str, int] = {}
        for call in during:
            outcomes[call.outcome] = outcomes.get(call.outcome, 0) + 1
        row = {
            **_level_rates(factor, unloaded, self.best_unloaded_p99_ms, cap, in_time, elapsed),
            # The same share per CPU-second the server got: robust to neighbours taking its core.
            "share_per_cpu": round(in_time / max(cpu, 1e-9) / per_cpu, 3),
            "server_cpu_share": round(cpu / elapsed, 2),
            "late": int(after["late"] - before["late"]),
            "shed_503": int(after["shed"] - before["shed"]),
            "answered_by_h2load": load["answered"],
            "h2load_latency_ms": {k: round(v / 1000, 1) for k, v in load["latency_us"].items()},
            "p99_decided_ms": round(p99_ms(during), 2),
            "p50_decided_ms": round(
                percentile(sorted(c.latency_s for c in during if c.outcome == "decided"), 50.0) * 1000, 2
            ),
            "probe_outcomes": outcomes,
            "health_failed": f"{health.failed}/{health.failed + health.answered}",
            "recovery_s": recovery_s(calls, ended, P99_TARGET_RATIO * self.best_unloaded_p99_ms / 1000),
            # Neighbours on a shared machine move every figure: the 1-minute load average beside each.
            "load_average": round(os.getloadavg()[0], 2),
        }
        self.levels.append(row)
        return row

    def result(self) -> dict[str, Any]:
        return {
            "config": self.name,
            "transport": self.transport,
            "admission": self.admission,
            "client_in_flight": self.client_in_flight,
            "levels": self.levels,
        }


ENVOY_PROBE_RPS = 50
"""The unloaded and recovery probes through Envoy: one request every 20 ms, as the direct probe."""


@dataclass
class EnvoySubject(Subject):
    """The same server behind the sidecar Envoy this project renders (h2load -> client Envoy -> mTLS -> sidecar
    Envoy with ext_authz -> the server; the sidecar answers allowed requests itself): what a mesh user gets. A
    request is decided in time when it comes back 200 (the sample is allowed): Envoy turns a Check it refused at
    its circuit breakers, one the server refused or shed, and one that outlived the 250 ms timeout into 503."""

    chain: Chain | None = None
    sample: Sample | None = None

    def _headers(self) -> list[str]:
        assert self.sample is not None
        skip = {"content-length", "content-type"}
        pairs = [f"{name}: {value}" for name, value in self.sample.headers if name not in skip]
        return [*pairs, f"{CALLER_HEADER}: {self.sample.caller}", "host: payments.shop.svc.cluster.local"]

    def _url(self) -> str:
        assert self.chain is not None and self.sample is not None
        return self.chain.url + self.sample.path

    def _probe(self, seconds: float, cpus: str | None) -> list[Answered]:
        return h2load_requests(
            self._url(), clients=1, streams=1, seconds=seconds, rps_per_client=ENVOY_PROBE_RPS, cpus=cpus,
            headers=self._headers(),
        )  # fmt: skip

    def level(self, factor: float, body: Path, options: argparse.Namespace) -> dict[str, Any]:
        group, metrics_port, cpus = self.group, self.metrics_port, options.generator_cpus
        unloaded = _p99_ok_ms(self._probe(options.unloaded_seconds, cpus))
        self.best_unloaded_p99_ms = min(self.best_unloaded_p99_ms, unloaded)
        rates = []
        for _ in range(options.repeats):
            rows = h2load_requests(
                self._url(), clients=2, streams=8, seconds=options.capacity_seconds, cpus=cpus, headers=self._headers()
            )
            rates.append(sum(r.status == 200 for r in rows) / options.capacity_seconds)
        self.best_capacity = cap = max(self.best_capacity, *rates)
        time.sleep(0.5)
        before, cpu = counters(metrics_port), group.cpu_seconds()
        health = HealthProbe(group.port).start()
        started = time.time()
        load = h2load_requests(
            self._url(), clients=4, streams=256, seconds=options.seconds, rps_per_client=cap * factor / 4, cpus=cpus,
            headers=self._headers(),
        )  # fmt: skip
        ended = time.time()
        health.stop()
        after, cpu = counters(metrics_port), group.cpu_seconds() - cpu
        probe = self._probe(options.recovery_seconds, cpus)
        elapsed = ended - started
        statuses: dict[str, int] = {}
        for answered in load:
            statuses[str(answered.status)] = statuses.get(str(answered.status), 0) + 1
        in_time = sum(r.status == 200 and r.latency_s <= DEADLINE_S for r in load)
        bound_s = P99_TARGET_RATIO * self.best_unloaded_p99_ms / 1000
        calls = [ProbeCall(r.started_s, r.latency_s, "decided" if r.status == 200 else str(r.status)) for r in probe]
        row = {
            **_level_rates(factor, unloaded, self.best_unloaded_p99_ms, cap, in_time, elapsed),
            "share_per_cpu": float("nan"),
            "server_cpu_share": round(cpu / elapsed, 2),
            "late": int(after["late"] - before["late"]),
            "shed_503": statuses.get("503", 0),
            "server_shed": int(after["shed"] - before["shed"]),
            "server_decided": int(after["decided"] - before["decided"]),
            "answered_by_h2load": len(load),
            "statuses": statuses,
            "p99_decided_ms": round(_p99_ok_ms(load), 2),
            "health_failed": f"{health.failed}/{health.failed + health.answered}",
            "recovery_s": recovery_s(calls, ended, bound_s),
            "load_average": round(os.getloadavg()[0], 2),
        }
        self.levels.append(row)
        return row


def _level_rates(
    factor: float, unloaded_ms: float, best_unloaded_ms: float, capacity: float, in_time: float, elapsed: float
) -> dict[str, Any]:
    """The columns every load level reports, whoever sent the load: what was offered and what was decided in time."""
    return {
        "factor": factor,
        "unloaded_p99_ms": round(unloaded_ms, 2),
        "best_unloaded_p99_ms": round(best_unloaded_ms, 2),
        "capacity_per_s": round(capacity),
        "offered_per_s": round(capacity * factor),
        "decided_in_time_per_s": round(in_time / elapsed),
        "share_of_capacity": round(in_time / elapsed / capacity, 3),
    }


def _p99_ok_ms(rows: Sequence[Answered]) -> float:
    return percentile(sorted(r.latency_s for r in rows if r.status == 200), 99.0) * 1000


def missed(row: dict[str, Any], unloaded_p99_ms: float) -> list[str]:
    """The issue's targets this level misses (share of capacity, p99 ratio, recovery)."""
    misses = []
    if row["share_of_capacity"] < SHARE_TARGET:
        misses.append("share")
    if row["p99_decided_ms"] > P99_TARGET_RATIO * unloaded_p99_ms:
        misses.append("p99")
    if row["recovery_s"] is None or row["recovery_s"] > RECOVERY_TARGET_S:
        misses.append("recovery")
    return misses


def markdown(results: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| configuration | unloaded p99 (lowest) | offered (x capacity/s) | decided in time/s | share of capacity "
        "| per CPU-second | p99 decided | p99 / unloaded | shed 503 | late | recovery | health checks failed "
        "| targets | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        # The lowest over the whole run: neighbours only ever add latency.
        unloaded = min(row["unloaded_p99_ms"] for row in result["levels"])
        for row in result["levels"]:
            recovery = "none" if row["recovery_s"] is None else f"{row['recovery_s']:.2f} s"
            misses = missed(row, unloaded)
            targets = "met" if not misses else "missed: " + ", ".join(misses)
            per_cpu = "-" if row["share_per_cpu"] != row["share_per_cpu"] else f"{row['share_per_cpu']:.0%}"
            lines.append(
                f"| {result['config']} | {unloaded} ms "
                f"| {row['factor']}x {row['capacity_per_s']:,} = {row['offered_per_s']:,}/s "
                f"| {row['decided_in_time_per_s']:,} "
                f"| {row['share_of_capacity']:.0%} | {per_cpu} | {row['p99_decided_ms']} ms "
                f"| {row['p99_decided_ms'] / max(unloaded, 1e-9):.1f}x "
                f"| {row['shed_503']:,} "
                f"| {row['late']:,} | {recovery} | {row['health_failed']} | {targets} "
                f"| {row['load_average']} |"
            )
    return "\n".join(lines)


def header(argv: Sequence[str]) -> str:
    """What a table needs beside it: when, where, which code, which command."""
    about = machine()
    return (
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {about['cpus']} x {about['cpu']}, "
        f"commit {about['commit'][:12]}, grpcio {about['grpcio']}, load average at start "
        f"{', '.join(f'{x:.2f}' for x in about['load_average_at_start'])}\n"
        f"`python -m benchmarks.overload {' '.join(argv)}`".rstrip()
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overload", description=__doc__.split("\n")[0])
    parser.add_argument("--transports", default="aio,sync")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each load level")
    parser.add_argument("--capacity-seconds", type=float, default=4.0, help="length of each capacity run")
    parser.add_argument("--repeats", type=int, default=1, help="capacity runs before each level (median used)")
    parser.add_argument(
        "--compare-unbounded", action="store_true", help="also run each transport with the bounds lifted (as before)"
    )
    parser.add_argument("--unloaded-seconds", type=float, default=5.0)
    parser.add_argument("--recovery-seconds", type=float, default=3.0)
    parser.add_argument("--server-cpus", default="1", help="taskset CPU list for the server ('' = unpinned)")
    parser.add_argument("--generator-cpus", default="0", help="taskset CPU list for h2load ('' = unpinned)")
    parser.add_argument(
        "--admission",
        action="append",
        default=[],
        help='server `admission` settings as JSON, e.g. {"max_queued": 8}; repeat to compare several in one run',
    )
    parser.add_argument(
        "--via",
        choices=("direct", "envoy"),
        default="direct",
        help="direct: h2load and the probe call the server; envoy: through the sidecar Envoy this project renders",
    )
    parser.add_argument(
        "--envoy-breakers",
        action="append",
        default=[],
        help="with --via envoy: the ext_authz cluster's MAX_REQUESTS,MAX_PENDING (default: the rendered ones); "
        "repeat to compare",
    )
    parser.add_argument(
        "--client-in-flight",
        action="append",
        default=[],
        help=f"direct: calls h2load keeps outstanding at most (default {OFFER_IN_FLIGHT}); repeat to compare",
    )
    parser.add_argument("--json", type=Path, default=Path("benchmarks/out/overload.json"))
    return parser.parse_args(argv)


def _chain_spec(port: int, breaker: str, options: argparse.Namespace) -> ChainSpec:
    """The Envoy chain in front of one server: both Envoys on the generator's CPUs, the rendered circuit breakers
    unless `breaker` ("MAX_REQUESTS,MAX_PENDING") says otherwise."""
    cpus = options.generator_cpus
    spec = ChainSpec("ext_authz", port, sidecar_cpus=cpus, client_cpus=cpus)
    if breaker:
        max_requests, max_pending = (int(x) for x in breaker.split(","))
        spec = dataclasses.replace(spec, authz_max_requests=max_requests, authz_max_pending_requests=max_pending)
    return spec


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    options.server_cpus = options.server_cpus or None
    options.generator_cpus = options.generator_cpus or None
    workload = Workload(TrustDomainFixture.create())
    # An allowed GET: through Envoy h2load sends it as is (method, path, headers, caller).
    sample = next(s for s in workload.samples(200) if s.kind is Kind.ALLOWED and s.method == "GET")
    request = sample.serialized
    started = header(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as tmp:
        workdir = Path(tmp)
        body = grpc_body_file(request, workdir)
        bundle, policies = write_inputs(workload, workdir / "inputs")
        configs: list[tuple[str, str, dict[str, Any] | None, str]] = []
        variants = options.envoy_breakers if options.via == "envoy" else options.client_in_flight
        for transport in options.transports.split(","):
            for settings in options.admission or [""]:
                admission = json.loads(settings) if settings else None
                name = f"{transport} {settings}" if len(options.admission) > 1 else transport
                for variant in variants or [""]:
                    label = "breakers" if options.via == "envoy" else "client in flight"
                    configs.append((f"{name}, {label} {variant}" if len(variants) > 1 else name, transport,
                                    admission, variant))  # fmt: skip
            if options.compare_unbounded:
                configs.append((f"{transport}, unbounded", transport, UNBOUNDED, ""))
        subjects: list[Subject] = []
        try:
            for name, transport, admission, variant in configs:
                where = workdir / f"{len(subjects)}-{transport}"
                group, metrics_port = start_server(
                    where, bundle, policies, transport, options.server_cpus, request, admission
                )
                if options.via == "envoy":
                    chain = start_chain(workload, where / "envoy", _chain_spec(group.port, variant, options))
                    envoy = EnvoySubject(name, transport, admission, group, metrics_port, request, chain=chain)
                    envoy.sample = sample
                    subjects.append(envoy)
                else:
                    in_flight = int(variant) if variant else OFFER_IN_FLIGHT
                    subjects.append(Subject(name, transport, admission, group, metrics_port, request, in_flight))
                if not check_response_ok(probe_check(group.port, request)):
                    raise RuntimeError("the probe request was not allowed: the benchmark setup is broken")
            # Level by level, every configuration in turn: a noisy minute on a shared machine then hits all alike.
            for factor in FACTORS:
                for subject in subjects:
                    row = subject.level(factor, body, options)
                    print(json.dumps({"config": subject.name, **row}), flush=True)
        finally:
            for subject in subjects:
                if isinstance(subject, EnvoySubject) and subject.chain is not None:
                    subject.chain.stop()
                subject.group.stop()
        results = [subject.result() for subject in subjects]
    print(started)
    print()
    print(markdown(results))
    options.json.parent.mkdir(parents=True, exist_ok=True)
    options.json.write_text(json.dumps({"results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

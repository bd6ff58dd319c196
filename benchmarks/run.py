"""The benchmark runner: in-process, gRPC straight at the server, and end to end through Envoy with mTLS.

    .venv/bin/python -m benchmarks.run                      # everything, ~15 minutes on 2 cores
    .venv/bin/python -m benchmarks.run --parts inprocess,grpc --seconds 5 --repeats 1

One machine, one run. Every configuration is started once and kept up; the
measured runs then go round-robin over configurations, concurrency levels and
repeats, so a slow minute on a shared box spreads over all of them instead of
landing on one. Each run is preceded by a warm-up at the same concurrency.
Results: a table on the terminal, benchmarks/out/results.json, and PNG plots
of latency percentiles against load (benchmarks/README.md explains them).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from authz_server.envoy.process import envoy_binary
from benchmarks.envoy_chain import LOCAL_HEADER, Chain, ChainSpec, start_chain
from benchmarks.inprocess import InProcessResult, run_inprocess
from benchmarks.loadgen import LoadResult, grpc_body_file, h2load_grpc, wrk, wrk_script
from benchmarks.opa_peer import missing_note, opa_server
from benchmarks.pipeline import build_pipeline, write_inputs
from benchmarks.report import latency_columns, percentile_headers, plot_latency_vs_load, stage_table, table, write_json
from benchmarks.servers import (
    CHECK_METHOD,
    DecisionServerSpec,
    ServerGroup,
    check_response_ok,
    decision_server,
    floor_server,
    probe_check,
    stage_timings,
)
from benchmarks.workload import Kind, Sample, TrustDomainFixture, Workload

OUT = Path(__file__).parent / "out"
PARTS = ("inprocess", "grpc", "rate", "envoy")


# --- what one measured run records ----------------------------------------------------


@dataclass
class Run:
    part: str
    config: str
    concurrency: int
    repeat: int
    load: LoadResult
    server_cpu_s: float = 0.0
    envoy_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    window: tuple[float, float] = (0.0, 0.0)

    def as_dict(self) -> dict[str, Any]:
        n = max(self.load.requests, 1)
        return {
            "part": self.part,
            "config": self.config,
            "concurrency": self.concurrency,
            "repeat": self.repeat,
            "requests": self.load.requests,
            "seconds": round(self.load.seconds, 3),
            "rps": round(self.load.rps, 1),
            "latency_us": self.load.latency_us,
            "errors": self.load.errors,
            "non_2xx": self.load.non_2xx,
            "server_cpu_us_per_request": round(self.server_cpu_s / n * 1e6, 1),
            "sidecar_envoy_cpu_us_per_request": round(self.envoy_cpu_s / n * 1e6, 1),
            "client_envoy_cpu_us_per_request": round(self.client_cpu_s / n * 1e6, 1),
        }


@dataclass
class Target:
    """One configuration under load: how to drive it and whose CPU to charge."""

    name: str
    drive: Callable[[int, float, float], LoadResult]
    """(concurrency, seconds, warmup_s) -> result."""
    server: ServerGroup | None = None
    chain: Chain | None = None
    runs: list[Run] = field(default_factory=list)


def _cpu(target: Target) -> tuple[float, float, float]:
    server = target.server.cpu_seconds() if target.server is not None else 0.0
    envoy = target.chain.sidecar_tree.cpu_seconds() if target.chain is not None else 0.0
    client = target.chain.client_tree.cpu_seconds() if target.chain is not None else 0.0
    return server, envoy, client


def measure(target: Target, part: str, concurrency: int, repeat: int, seconds: float, warmup_s: float) -> Run:
    before = _cpu(target)
    started = time.time()
    load = target.drive(concurrency, seconds, warmup_s)
    ended = time.time()
    after = _cpu(target)
    # CPU is sampled around warm-up and run together; scale to the measured share of the time.
    share = seconds / (seconds + warmup_s) if warmup_s else 1.0
    run = Run(
        part,
        target.name,
        concurrency,
        repeat,
        load,
        (after[0] - before[0]) * share,
        (after[1] - before[1]) * share,
        (after[2] - before[2]) * share,
        (ended - seconds, ended) if warmup_s else (started, ended),
    )
    target.runs.append(run)
    return run


def round_robin(
    targets: Sequence[Target], levels: Sequence[int], repeats: int, part: str, seconds: float, warmup_s: float
) -> Iterator[Run]:
    for repeat in range(repeats):
        for concurrency in levels:
            # Alternate the order each round so no configuration always follows the same neighbour.
            order = targets if (repeat + levels.index(concurrency)) % 2 == 0 else list(reversed(targets))
            for target in order:
                yield measure(target, part, concurrency, repeat, seconds, warmup_s)


# --- aggregation -------------------------------------------------------------------------


def median_point(runs: Sequence[Run]) -> dict[str, Any]:
    """Median over repeats of throughput, latency percentiles and CPU per request."""
    rows = [r.as_dict() for r in runs]
    point: dict[str, Any] = {
        "config": rows[0]["config"],
        "concurrency": rows[0]["concurrency"],
        "repeats": len(rows),
        "rps": statistics.median(r["rps"] for r in rows),
        "rps_min": min(r["rps"] for r in rows),
        "rps_max": max(r["rps"] for r in rows),
        "errors": sum(r["errors"] for r in rows),
        "non_2xx_share": sum(r["non_2xx"] for r in rows) / max(1, sum(r["requests"] for r in rows)),
        "latency_us": {key: statistics.median(r["latency_us"][key] for r in rows) for key in rows[0]["latency_us"]},
    }
    for key in ("server_cpu_us_per_request", "sidecar_envoy_cpu_us_per_request", "client_envoy_cpu_us_per_request"):
        point[key] = statistics.median(r[key] for r in rows)
    return point


def points_by_config(targets: Sequence[Target], levels: Sequence[int]) -> dict[str, list[dict[str, Any]]]:
    series: dict[str, list[dict[str, Any]]] = {}
    for target in targets:
        for level in levels:
            runs = [r for r in target.runs if r.concurrency == level]
            if runs:
                series.setdefault(target.name, []).append(median_point(runs))
    return series


def added_latency(series: dict[str, list[dict[str, Any]]], baseline: str) -> None:
    """Annotate each point with the latency it adds over `baseline` at the same concurrency."""
    base = {p["concurrency"]: p for p in series.get(baseline, [])}
    for points in series.values():
        for point in points:
            reference = base.get(point["concurrency"])
            if reference is not None:
                point["added_us"] = {
                    key: point["latency_us"][key] - reference["latency_us"][key]
                    for key in ("p50", "p90", "p99", "p99.9")
                }


def load_table(series: dict[str, list[dict[str, Any]]], title: str, with_added: bool = False) -> str:
    headers = ["configuration", "conc", "req/s", *percentile_headers("ms")]
    if with_added:
        headers += ["+p50 ms", "+p99 ms"]
    headers += ["srv CPU µs/req", "envoy CPU µs/req", "errors", "denied %"]
    rows = []
    for name, points in series.items():
        for p in points:
            row: list[Any] = [name, p["concurrency"], round(p["rps"])]
            row += [round(v, 2) for v in latency_columns(p["latency_us"], 1000.0)]
            if with_added:
                added = p.get("added_us", {})
                row += [
                    round(added.get("p50", float("nan")) / 1000, 2),
                    round(added.get("p99", float("nan")) / 1000, 2),
                ]
            row += [
                round(p["server_cpu_us_per_request"]) if p["server_cpu_us_per_request"] else "-",
                round(p["sidecar_envoy_cpu_us_per_request"]) if p["sidecar_envoy_cpu_us_per_request"] else "-",
                p["errors"],
                f"{100 * p['non_2xx_share']:.1f}",
            ]
            rows.append(row)
    return table(headers, rows, title)


# --- the machine ---------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = memory = ""
    with suppress(OSError):
        models = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        cpu = models[0].split(":", 1)[1].strip() if models else ""
    with suppress(OSError):
        memory = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    root = Path(__file__).resolve().parents[1]
    commit = _command(["git", "-C", str(root), "rev-parse", "HEAD"])
    dirty = bool(_command(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"]))
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "envoy": _command([envoy_binary(), "--version"]).split("version:")[-1].strip(),
        "h2load": _command(["h2load", "--version"]),
        "wrk": _command(["wrk", "--version"]).splitlines()[0] if _command(["wrk", "--version"]) else "",
        "commit": commit + ("+uncommitted changes" if dirty else ""),
        "load_average_at_start": os.getloadavg(),
    }


def _command(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout or done.stderr).strip()


# --- the parts -------------------------------------------------------------------------------


def inprocess_part(
    workload: Workload, samples: Sequence[Sample], workdir: Path, calls: int, seconds: float
) -> dict[str, Any]:
    """The decision path alone (no decision log: the number held to the budget), then with the log."""
    requests = [s.serialized for s in samples]
    results: dict[str, InProcessResult] = {}
    for name, log in (("decision path", False), ("decision path + decision log", True)):
        pipeline = build_pipeline(workload, workdir / f"inprocess-{int(log)}", calls, decision_log=log)
        try:
            results[name] = run_inprocess(pipeline, requests, calls=calls, seconds=seconds / 2)
        finally:
            pipeline.close()
    return {name: r.as_dict() for name, r in results.items()}


def grpc_url(port: int) -> str:
    return f"http://127.0.0.1:{port}{CHECK_METHOD}"


def h2load_driver(port: int, body: Path, cpus: str | None) -> Callable[[int, float, float], LoadResult]:
    def drive(concurrency: int, seconds: float, warmup_s: float) -> LoadResult:
        # Two connections (Envoy with two worker threads), streams multiplexed on each.
        clients = min(concurrency, 2)
        return h2load_grpc(
            grpc_url(port), body, clients=clients, streams=max(1, concurrency // clients), seconds=seconds,
            warmup_s=warmup_s, cpus=cpus,
        )  # fmt: skip

    return drive


def wrk_driver(url: str, script: Path, cpus: str | None) -> Callable[[int, float, float], LoadResult]:
    def drive(concurrency: int, seconds: float, warmup_s: float) -> LoadResult:
        if warmup_s:
            wrk(url, script, connections=concurrency, seconds=warmup_s, cpus=cpus)
        return wrk(url, script, connections=concurrency, seconds=seconds, cpus=cpus)

    return drive


@dataclass(frozen=True)
class Options:
    seconds: float
    warmup_s: float
    repeats: int
    grpc_levels: tuple[int, ...]
    envoy_levels: tuple[int, ...]
    transports: tuple[str, ...]
    workers: tuple[int, ...]
    streams_cap: int
    generator_cpus: str | None
    rate: int
    opa: Path | None = None
    """An opa-envoy-plugin binary to measure beside this server (benchmarks/opa_peer.py)."""
    unix_socket: bool = True
    """Through Envoy, also measure one worker on a Unix socket (the sidecar layout) next to TCP."""
    baseline: Path | None = None
    """Another checkout of the repository (e.g. `git worktree add /tmp/base main`) measured as `authz baseline`."""


def representative(samples: Sequence[Sample]) -> Sample:
    """The one request h2load repeats: an allowed call with a certificate (the common case)."""
    return next(s for s in samples if s.kind is Kind.ALLOWED)


def grpc_part(
    workload: Workload, samples: Sequence[Sample], workdir: Path, options: Options, stack: ExitStack
) -> dict[str, Any]:
    probe = representative(samples).serialized
    body = grpc_body_file(probe, workdir)
    bundle, policies = write_inputs(workload, workdir / "inputs")
    targets: list[Target] = []
    for transport in options.transports:
        group = stack.enter_context(floor_server(workdir / "servers", transport).start(probe))
        targets.append(Target(f"floor {transport}", h2load_driver(group.port, body, options.generator_cpus), group))
    if missing_note(options.opa) is None:
        assert options.opa is not None
        opa = stack.enter_context(opa_server(workdir / "servers", options.opa).start(probe))
        targets.append(Target("OPA-Envoy", h2load_driver(opa.port, body, options.generator_cpus), opa))
    for transport in options.transports:
        for workers in options.workers:
            spec = DecisionServerSpec(transport=transport, workers=workers)
            group = stack.enter_context(decision_server(workdir / "servers", bundle, policies, spec).start(probe))
            if not check_response_ok(probe_check(group.port, probe)):
                raise RuntimeError("the representative request was not allowed: the benchmark setup is broken")
            name = f"authz {transport} w{workers}"
            targets.append(Target(name, h2load_driver(group.port, body, options.generator_cpus), group))
    if options.baseline is not None:
        spec = DecisionServerSpec(transport=options.transports[0], source_tree=options.baseline)
        group = stack.enter_context(decision_server(workdir / "servers", bundle, policies, spec).start(probe))
        name = f"authz baseline {options.transports[0]} w1"
        targets.append(Target(name, h2load_driver(group.port, body, options.generator_cpus), group))
    runs = list(round_robin(targets, options.grpc_levels, options.repeats, "grpc", options.seconds, options.warmup_s))
    series = points_by_config(targets, options.grpc_levels)
    stages = {}
    for target in targets:
        decisions = target.server.decisions if target.server is not None else None
        if decisions is not None and target.runs:
            top = max(options.grpc_levels)
            windows = [r.window for r in target.runs if r.concurrency == top]
            stages[target.name] = stage_timings(decisions, min(w[0] for w in windows), max(w[1] for w in windows))
        if target.server is not None:
            for point in series.get(target.name, []):
                point["peak_rss_mb"] = round(target.server.peak_rss_bytes() / 2**20, 1)
    return {
        "request": "one representative allowed call (h2load repeats one body)",
        "runs": [r.as_dict() for r in runs],
        "series": series,
        "server_stage_us_at_top_concurrency": stages,
    }


def rate_part(
    workload: Workload, samples: Sequence[Sample], workdir: Path, options: Options, stack: ExitStack
) -> dict[str, Any]:
    """A steady `rate` requests/s (open loop): the latency a normally loaded server shows, next to the floor's."""
    probe = representative(samples).serialized
    body = grpc_body_file(probe, workdir)
    bundle, policies = write_inputs(workload, workdir / "inputs")
    results = {}
    servers: list[tuple[str, ServerGroup]] = []
    for transport in options.transports:
        servers.append((f"floor {transport}", stack.enter_context(floor_server(workdir, transport).start(probe))))
        spec = DecisionServerSpec(transport=transport)
        group = stack.enter_context(decision_server(workdir / "servers", bundle, policies, spec).start(probe))
        servers.append((f"authz {transport} w1", group))
    for name, group in servers:
        before = group.cpu_seconds()
        started = time.time()
        load = h2load_grpc(
            grpc_url(group.port), body, clients=2, streams=8, seconds=options.seconds, warmup_s=options.warmup_s,
            rps_per_client=options.rate / 2, cpus=options.generator_cpus,
        )  # fmt: skip
        ended = time.time()
        cpu = group.cpu_seconds() - before
        time.sleep(0.5)  # the decision log writes every 200 ms
        server = stage_timings(group.decisions, ended - options.seconds, ended) if group.decisions else {}
        results[name] = {
            "target_rps": options.rate,
            "rps": round(load.rps, 1),
            "client_latency_us": load.latency_us,
            "server_stage_us": server,
            "server_cpu_share_of_one_core": round(cpu / (ended - started), 3),
            "errors": load.errors,
        }
    return results


def envoy_decision_servers(
    transport: str,
    workers: int,
    bundle: Path,
    policies: Path,
    probe: bytes,
    workdir: Path,
    options: Options,
    stack: ExitStack,
    chain: Callable[[str, ChainSpec, ServerGroup], Chain],
) -> None:
    """This server behind the sidecar: over TCP, and beside it the baseline, the Unix socket or a streams cap."""
    spec = DecisionServerSpec(transport=transport, workers=workers)
    group = stack.enter_context(decision_server(workdir / "servers", bundle, policies, spec).start(probe))
    chain(f"ext_authz: authz {transport} w{workers}", ChainSpec("ext_authz", group.port), group)
    if workers == 1 and options.baseline is not None and transport == options.transports[0]:
        spec = DecisionServerSpec(transport=transport, workers=1, source_tree=options.baseline)
        base = stack.enter_context(decision_server(workdir / "servers", bundle, policies, spec).start(probe))
        chain(f"ext_authz: authz baseline {transport} w1", ChainSpec("ext_authz", base.port), base)
    if workers == 1 and options.unix_socket:
        spec = DecisionServerSpec(transport=transport, workers=1, unix_socket=True)
        local = stack.enter_context(decision_server(workdir / "servers", bundle, policies, spec).start(probe))
        chain(f"ext_authz: authz {transport} w1 unix", ChainSpec("ext_authz", authz_socket=local.socket), local)
    if workers > 1 and options.streams_cap:
        capped = stack.enter_context(decision_server(workdir / "servers", bundle, policies, spec).start(probe))
        chain(
            f"ext_authz: authz {transport} w{workers} cap{options.streams_cap}",
            ChainSpec("ext_authz", capped.port, max_concurrent_streams=options.streams_cap),
            capped,
        )


def envoy_part(
    workload: Workload, samples: Sequence[Sample], workdir: Path, options: Options, stack: ExitStack
) -> dict[str, Any]:
    """wrk -> client Envoy -> mTLS -> sidecar Envoy: no authz, RBAC, ext_authz to the floor and to this server."""
    probe = representative(samples).serialized
    e2e = [s for s in samples if s.kind is not Kind.IDENTITY_DENIED]  # refused in the TLS handshake, never reach HTTP
    script = wrk_script(e2e, workdir)
    bundle, policies = write_inputs(workload, workdir / "inputs")
    targets: list[Target] = []

    def chain(name: str, spec: ChainSpec, server: ServerGroup | None = None) -> Chain:
        started = stack.enter_context(start_chain(workload, workdir / name.replace(" ", "-"), spec))
        targets.append(Target(name, wrk_driver(started.url, script, options.generator_cpus), server, started))
        return started

    baseline = chain("envoy, no authz", ChainSpec("none"))
    chain("envoy + RBAC", ChainSpec("rbac"))
    for transport in options.transports:
        floor = stack.enter_context(floor_server(workdir / "servers", transport).start(probe))
        chain(f"ext_authz: floor {transport}", ChainSpec("ext_authz", floor.port), floor)
    if missing_note(options.opa) is None:
        assert options.opa is not None
        opa = stack.enter_context(opa_server(workdir / "servers", options.opa).start(probe))
        chain("ext_authz: OPA-Envoy", ChainSpec("ext_authz", opa.port), opa)
    for transport in options.transports:
        for workers in options.workers:
            envoy_decision_servers(transport, workers, bundle, policies, probe, workdir, options, stack, chain)
    # The generator's ceiling: wrk and the client Envoy alone (the client answers x-bench-local itself).
    (workdir / "local").mkdir(parents=True, exist_ok=True)
    local_script = wrk_script(e2e[:200], workdir / "local", {LOCAL_HEADER: "1"})
    ceiling_target = Target("generator ceiling (wrk + client envoy)", wrk_driver(baseline.url, local_script, None))
    ceiling = measure(ceiling_target, "envoy", max(options.envoy_levels), 0, options.seconds, options.warmup_s)
    h2_ceiling = h2load_grpc(
        baseline.url + "/", grpc_body_file(probe, workdir / "local"), clients=2, streams=32,
        seconds=options.seconds, warmup_s=options.warmup_s,
    )  # fmt: skip
    runs = list(round_robin(targets, options.envoy_levels, options.repeats, "envoy", options.seconds, options.warmup_s))
    series = points_by_config(targets, options.envoy_levels)
    added_latency(series, "envoy, no authz")
    return {
        "mix": "allowed, policy-denied and anomalous calls from 12 caller identities (identity failures end in TLS)",
        "runs": [r.as_dict() for r in runs],
        "series": series,
        "generator_ceiling": {
            "wrk_via_client_envoy_rps": round(ceiling.load.rps, 1),
            "h2load_rps": round(h2_ceiling.rps, 1),
        },
    }


# --- entry point ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measured run")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up before each measured run (seconds)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over every configuration and level")
    parser.add_argument("--grpc-concurrency", default="1,8,32", help="requests in flight for the direct gRPC runs")
    parser.add_argument("--envoy-concurrency", default="4,16,64", help="wrk connections for the Envoy runs")
    parser.add_argument("--transports", default="h2,aio", help="server transports (aio, sync, h2), each with its floor")
    parser.add_argument("--workers", default=f"1,{os.cpu_count() or 1}", help="server process counts to compare")
    parser.add_argument("--streams-cap", type=int, default=8, help="Envoy max_concurrent_streams for workers > 1")
    parser.add_argument("--rate", type=int, default=1000, help="steady requests/s for the `rate` part")
    parser.add_argument("--calls", type=int, default=100_000, help="in-process calls (upper bound)")
    parser.add_argument("--samples", type=int, default=4000, help="distinct requests in the workload")
    parser.add_argument("--generator-cpus", default=None, help="taskset CPU list for h2load/wrk (e.g. 0)")
    parser.add_argument("--opa", type=Path, default=None, help="opa-envoy-plugin binary to measure alongside")
    parser.add_argument("--no-unix-socket", action="store_true", help="skip the Unix socket configuration")
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout to measure as a baseline")
    parser.add_argument("--out", type=Path, default=OUT, help="directory for results.json and the plots")
    return parser.parse_args(argv)


def _levels(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        print(f"unknown part(s): {', '.join(sorted(unknown))} (known: {', '.join(PARTS)})", file=sys.stderr)
        return 2
    options = Options(
        seconds=args.seconds,
        warmup_s=args.warmup,
        repeats=args.repeats,
        grpc_levels=_levels(args.grpc_concurrency),
        envoy_levels=_levels(args.envoy_concurrency),
        transports=tuple(t.strip() for t in args.transports.split(",") if t.strip()),
        workers=_levels(args.workers),
        streams_cap=args.streams_cap,
        generator_cpus=args.generator_cpus,
        rate=args.rate,
        opa=args.opa,
        unix_socket=not args.no_unix_socket,
        baseline=args.baseline,
    )
    started = time.monotonic()
    document: dict[str, Any] = {
        "benchmark": "authz-server latency",
        "command": shlex.join([Path(sys.executable).name, "-m", "benchmarks.run", *(argv or sys.argv[1:])]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()},
    }
    opa_note = missing_note(options.opa)
    if opa_note is not None and {"grpc", "envoy"} & set(parts):
        print(opa_note)
        document["notes"] = [opa_note]
    elif options.opa is not None:
        document["machine"]["opa_envoy"] = _command([str(options.opa), "version"]).splitlines()[0]
    workload = Workload(TrustDomainFixture.create())
    samples = workload.samples(args.samples)
    with tempfile.TemporaryDirectory(prefix="authz-bench-") as tmp:
        workdir = Path(tmp)
        if "inprocess" in parts:
            document["inprocess"] = inprocess_part(workload, samples, workdir, args.calls, args.seconds * 2)
            _print_inprocess(document["inprocess"])
        for name, part in (("grpc", grpc_part), ("rate", rate_part), ("envoy", envoy_part)):
            if name in parts:
                with ExitStack() as servers:
                    document[name] = part(workload, samples, workdir / name, options, servers)
                _print_part(name, document[name])
    document["seconds"] = round(time.monotonic() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    path = write_json(document, args.out / "results.json")
    plots = _plots(document, args.out)
    print(f"\nwrote {path}" + "".join(f", {p}" for p in plots) + f" in {document['seconds']}s")
    return 0


def _print_inprocess(results: dict[str, Any]) -> None:
    for name, result in results.items():
        print(f"\n== in-process: {name} ({result['calls']} calls, {result['calls_per_s']:.0f} calls/s, one thread)")
        print("stages: " + ", ".join(f"{k}: {v}" for k, v in result["stages"].items()))
        rows = {
            "Authorizer.check (wall)": result["decision_us"],
            "Authorizer.check (CPU)": result["decision_cpu_us"],
            "protobuf parse": result["deserialize_us"],
            **result["stage_us"],
        }
        print(stage_table(rows, ""))


def _print_part(name: str, result: dict[str, Any]) -> None:
    if name == "grpc":
        print()
        print(load_table(result["series"], "== gRPC straight at the server (h2load, " + result["request"] + ")"))
        for config, stages in result["server_stage_us_at_top_concurrency"].items():
            if stages:
                print(stage_table(stages, f"\nserver-side stages, {config}, highest concurrency"))
    elif name == "rate":
        for config, r in result.items():
            total = r["server_stage_us"].get("total", {})
            client = r["client_latency_us"]
            server = f", server p50/p99 {total['p50']:.0f}/{total['p99']:.0f} µs" if total else ""
            print(
                f"== steady {r['target_rps']} req/s, {config}: achieved {r['rps']:.0f}/s, client p50/p99 "
                f"{client['p50'] / 1000:.2f}/{client['p99'] / 1000:.2f} ms{server}, "
                f"server CPU {100 * r['server_cpu_share_of_one_core']:.0f}% of a core"
            )
    elif name == "envoy":
        print()
        print(
            load_table(result["series"], "== end to end through Envoy with mTLS (wrk -> client envoy -> sidecar)", True)
        )
        ceiling = result["generator_ceiling"]
        print(
            f"generator ceiling: wrk + client envoy {ceiling['wrk_via_client_envoy_rps']:.0f} req/s, "
            f"h2load {ceiling['h2load_rps']:.0f} req/s"
        )


def _plots(document: dict[str, Any], out: Path) -> list[Path]:
    made = []
    for name, title in (("grpc", "gRPC straight at the server"), ("envoy", "through Envoy with mTLS")):
        if name in document:
            path = plot_latency_vs_load(document[name]["series"], out / f"{name}-latency.png", title)
            if path is not None:
                made.append(path)
    return made


if __name__ == "__main__":
    sys.exit(main())

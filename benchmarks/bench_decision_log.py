"""Decision log cost: what `record()` adds to a check, and how many lines a second the writer thread keeps up with.

    .venv/bin/python benchmarks/bench_decision_log.py [--calls 50000] [--repeats 5]

`record()` runs on the request path, so it is timed per call (perf_counter_ns
around each call, the timer's own cost subtracted) while the writer thread
drains to a real file in the background, as in the server. The writer's
throughput is the time to serialise, feed the metrics observer and write a
batch of queued decisions (allowed with a policy outcome, denied by
default, identity failures: the mix the log sees).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.audit.config import LogConfig
from authz_server.audit.log import DecisionLog
from authz_server.authorizer import Authorizer, Runtime, StageTimings
from authz_server.decision import Decision
from authz_server.dev.trust_domain import TrustDomainCA
from authz_server.identity.config import IdentityConfig, TrustDomainConfig
from authz_server.identity.source import IdentitySource
from authz_server.policy import load_policies

TD = "example.org"
CALLEE = f"spiffe://{TD}/ns/payments/sa/payments-api"
POLICY = f"""apiVersion: authz-server.dev/v1alpha1
kind: AllowedCalls
metadata: {{name: payments-api, namespace: payments}}
spec:
  workload: {CALLEE}
  rules:
    - name: billing-reads
      from: [{{namespace: billing}}]
      to: [{{methods: [GET], paths: ["/v1/charges/**"]}}]
"""


class Capture:
    """A DecisionSink keeping what the Authorizer produced, to replay it into the log under the timer."""

    def __init__(self) -> None:
        self.records: list[tuple[object, Decision, StageTimings]] = []

    def record(self, call: object, decision: Decision, timings: StageTimings) -> None:
        self.records.append((call, decision, timings))


class NullSink:
    def record(self, call: object, decision: Decision, timings: StageTimings) -> None:
        pass


def requests(directory: Path) -> tuple[Runtime, list[external_auth_pb2.CheckRequest]]:
    """The real identity and policy stages, and one request each: allowed, denied by default, no identity."""
    ca = TrustDomainCA.create(TD)
    bundle = ca.write_bundle(directory / "bundle.pem")
    (directory / "policies").mkdir(exist_ok=True)
    (directory / "policies" / "p.yaml").write_text(POLICY)
    identity = IdentitySource(IdentityConfig(trust_domains={TD: TrustDomainConfig(bundle=str(bundle))})).load()
    runtime = Runtime(identity, load_policies([str(directory / "policies")]))
    made = []
    for caller in (f"spiffe://{TD}/ns/billing/sa/invoices", f"spiffe://{TD}/ns/web/sa/storefront", None):
        request = external_auth_pb2.CheckRequest()
        if caller:
            request.attributes.source.certificate = urllib.parse.quote(ca.issue(caller).cert_pem.decode(), safe="")
        request.attributes.destination.principal = CALLEE
        http = request.attributes.request.http
        http.method, http.path, http.host = "GET", "/v1/charges/42?x=1", "payments"
        http.headers.update({"user-agent": "bench/1.0", "authorization": "Bearer abc", "x-request-id": "r-1"})
        made.append(request)
    return runtime, made


def decisions(directory: Path) -> list[tuple[object, Decision, StageTimings]]:
    runtime, made = requests(directory)
    capture = Capture()
    authorizer = Authorizer(runtime, capture)
    for request in made:
        authorizer.check(request)
    return capture.records


def bench_check(directory: Path, calls: int, with_log: bool) -> dict[str, float]:
    """Authorizer.check wall time per call, with the decision log (and its writer thread) or a no-op sink."""
    runtime, made = requests(directory)
    log = DecisionLog(LogConfig(decisions=str(directory / "check.jsonl"), queue_size=calls + 1))
    if with_log:
        from prometheus_client import CollectorRegistry

        from authz_server.observability.metrics import DecisionMetrics

        log.add_observer(DecisionMetrics(CollectorRegistry()))
        log.start()
    authorizer = Authorizer(runtime, log if with_log else NullSink())
    check = authorizer.check
    ns = time.perf_counter_ns
    samples = []
    for i in range(calls):
        request = made[i % len(made)]
        start = ns()
        check(request)
        samples.append((ns() - start) / 1000)
    if with_log:
        log.close()
    return {"p50_us": percentile(samples, 0.5), "p99_us": percentile(samples, 0.99)}


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def bench_record(records: list[tuple[object, Decision, StageTimings]], calls: int, path: Path) -> dict[str, float]:
    log = DecisionLog(LogConfig(decisions=str(path), queue_size=calls + 1))
    log.start()
    record = log.record
    ns = time.perf_counter_ns
    overhead = min(-(ns() - ns()) for _ in range(1000))
    samples = []
    for i in range(calls):
        call, decision, timings = records[i % len(records)]
        start = ns()
        record(call, decision, timings)  # type: ignore[arg-type]
        samples.append(ns() - start - overhead)
    log.close()
    return {
        "p50_ns": percentile(samples, 0.5),
        "p99_ns": percentile(samples, 0.99),
        "mean_ns": statistics.fmean(samples),
        "dropped": float(log.dropped),
    }


def bench_serialise_cpu(records: list[tuple[object, Decision, StageTimings]], rounds: int = 30) -> float:
    """CPU µs to turn one decision into its JSON line (thread CPU clock: immune to other processes)."""
    from authz_server.audit.log import encode_line
    from authz_server.audit.record import HeaderFilter, build_record

    headers = HeaderFilter(LogConfig().headers, LogConfig().redact)
    batch = records * 100
    best = float("inf")
    for _ in range(rounds):
        start = time.thread_time_ns()
        for call, decision, timings in batch:
            encode_line(build_record(call, decision, timings, 1.8e9, headers))  # type: ignore[arg-type]
        best = min(best, (time.thread_time_ns() - start) / len(batch) / 1000)
    return best


def bench_writer(records: list[tuple[object, Decision, StageTimings]], calls: int, path: Path, metrics: bool) -> float:
    log = DecisionLog(LogConfig(decisions=str(path), queue_size=calls + 1, flush_interval_ms=10_000))
    if metrics:
        from prometheus_client import CollectorRegistry

        from authz_server.observability.metrics import DecisionMetrics

        log.add_observer(DecisionMetrics(CollectorRegistry()))
    log.start()
    for i in range(calls):
        call, decision, timings = records[i % len(records)]
        log.record(call, decision, timings)  # type: ignore[arg-type]
    start = time.perf_counter()
    log.close()  # drains everything queued on the writer thread, then returns
    elapsed = time.perf_counter() - start
    assert log.written == calls, (log.written, calls)
    return calls / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        records = decisions(directory)
        runs = [bench_record(records, args.calls, directory / f"r{i}.jsonl") for i in range(args.repeats)]
        best = min(runs, key=lambda r: r["p50_ns"])
        print(
            f"record(): p50 {best['p50_ns']:.0f} ns, p99 {best['p99_ns']:.0f} ns, mean {best['mean_ns']:.0f} ns "
            f"per call (best of {args.repeats} x {args.calls}; dropped {best['dropped']:.0f})"
        )
        print(f"serialise one line: {bench_serialise_cpu(records):.1f} µs CPU (min of 30 rounds)")
        for with_log in (False, True, False, True):
            result = bench_check(directory, args.calls // 2, with_log)
            label = "decision log + metrics" if with_log else "no-op sink"
            print(f"Authorizer.check with {label}: p50 {result['p50_us']:.1f} µs, p99 {result['p99_us']:.1f} µs")
        for metrics in (False, True):
            rates = [bench_writer(records, args.calls, directory / f"w{i}.jsonl", metrics) for i in range(args.repeats)]
            label = "serialise + metrics + write" if metrics else "serialise + write"
            print(f"writer thread ({label}): {max(rates):,.0f} lines/s (best of {args.repeats} x {args.calls})")


if __name__ == "__main__":
    main()

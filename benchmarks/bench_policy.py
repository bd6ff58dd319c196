"""Policy stage cost: per-call decision time with 10 and 10,000 callee workloads, reload time and memory.

    .venv/bin/python benchmarks/bench_policy.py [--callees 10 10000] [--calls 20000]

Each callee gets 10 rules (exact callers, namespace and trust-domain prefixes,
exact / single-segment / `**` paths, a header condition, a deny rule), so
10,000 callees make 100,000 rules. Decisions go through PolicySet.evaluate on
calls parsed from real CheckRequests; the mix is allowed (exact caller),
allowed (prefix caller), denied by rule, and denied by default, with paths
that need normalisation one time in four.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.call import Call, parse_call
from authz_server.identity.result import Identity, Proof
from authz_server.policy import PolicySet, load_policies
from authz_server.policy.config import PolicyConfig
from authz_server.policy.source import PolicySource

TD = "example.org"
DOCS_PER_FILE = 100


def callee_id(i: int) -> str:
    return f"spiffe://{TD}/ns/team-{i % 500}/sa/svc-{i}"


def declaration(i: int) -> str:
    me = callee_id(i)
    peers = [callee_id((i + k) % 100_000) for k in (1, 2, 3)]
    return f"""apiVersion: authz-server.dev/v1alpha1
kind: AllowedCalls
metadata: {{name: svc-{i}, namespace: team-{i % 500}}}
spec:
  workload: {me}
  rules:
    - name: r1
      from: [{{id: "{peers[0]}"}}]
      to: [{{methods: [GET, POST], paths: [/v1/items, "/v1/items/*"]}}]
    - name: r2
      from: [{{id: "{peers[1]}"}}, {{id: "{peers[2]}"}}]
      to: [{{methods: [GET], paths: ["/v1/reports/**"]}}]
    - name: r3
      from: [{{namespace: ops}}]
      to: [{{methods: [GET], paths: [/healthz, /metrics]}}]
    - name: r4
      from: [{{prefix: "spiffe://{TD}/ns/team-{i % 500}/*"}}]
      to: [{{methods: [GET], paths: ["/v1/catalog/*/price"]}}]
    - name: r5
      from: [{{id: "{peers[0]}"}}]
      to: [{{methods: [PUT], paths: ["/v1/items/*/stock"]}}]
      maxRisk: 0.7
    - name: r6
      from: [{{id: "{peers[1]}"}}]
      to: [{{methods: [DELETE], paths: ["/v1/items/*"], headers: [{{name: x-confirm, values: ["yes"]}}]}}]
    - name: r7
      from: [{{prefix: "spiffe://partner.example/*"}}]
      to: [{{methods: [GET], paths: [/v1/public]}}]
    - name: r8
      from: [{{id: "{peers[2]}"}}]
      to: [{{methods: [POST], paths: [/v1/batch]}}]
      onRiskTimeout: deny
    - name: r9
      from: [{{namespace: audit, serviceAccount: reader}}]
      to: [{{methods: [GET], paths: ["/v1/audit/**"]}}]
    - name: no-admin
      action: deny
      from: [{{prefix: "spiffe://{TD}/*"}}]
      to: [{{methods: ["*"], paths: ["/admin/**"]}}]
"""


def write_set(directory: Path, callees: int) -> None:
    for start in range(0, callees, DOCS_PER_FILE):
        docs = [declaration(i) for i in range(start, min(start + DOCS_PER_FILE, callees))]
        (directory / f"decl-{start:06d}.yaml").write_text("---\n".join(docs))


def make_call(caller: str, callee: str, method: str, path: str) -> tuple[Call, Identity]:
    request = external_auth_pb2.CheckRequest()
    request.attributes.source.principal = caller
    request.attributes.destination.principal = callee
    request.attributes.request.http.method = method
    request.attributes.request.http.path = path
    request.attributes.request.http.headers["user-agent"] = "bench"
    td, _, rest = caller.removeprefix("spiffe://").partition("/")
    return parse_call(request), Identity(caller, td, "/" + rest, Proof.CERTIFICATE, None)


def workload(callees: int, count: int, seed: int = 7) -> list[tuple[Call, Identity]]:
    rng = random.Random(seed)
    calls = []
    for n in range(count):
        i = rng.randrange(callees)
        peer = callee_id((i + 1) % 100_000)
        kind = n % 4
        if kind == 0:
            call = make_call(peer, callee_id(i), "GET", f"/v1/items/{n}")  # allowed, exact caller
        elif kind == 1:
            neighbour = f"spiffe://{TD}/ns/team-{i % 500}/sa/other"
            call = make_call(neighbour, callee_id(i), "GET", f"/v1//catalog/./sku-{n}/price")  # prefix, normalised
        elif kind == 2:
            call = make_call(peer, callee_id(i), "GET", "/admin/users")  # deny rule
        else:
            call = make_call(peer, callee_id(i), "POST", "/v1/unknown")  # default deny
        calls.append(call)
    return calls


def decide_all(policies: PolicySet, sample: list[tuple[Call, Identity]]) -> tuple[list[int], int]:
    now = time.time()
    evaluate = policies.evaluate
    for call, identity in sample[:2000]:  # warm up
        evaluate(call, identity, now)
    timings = []
    allowed = 0
    ns = time.perf_counter_ns
    for call, identity in sample:
        t = ns()
        outcome = evaluate(call, identity, now)
        timings.append(ns() - t)
        allowed += outcome.allowed
    timings.sort()
    return timings, allowed


def measure(callees: int, calls: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        write_set(directory, callees)
        gc.collect()
        t0, c0 = time.perf_counter(), time.process_time()
        policies = load_policies([str(directory)])
        load_s, load_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        del policies
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        policies = load_policies([str(directory)])
        gc.collect()
        retained, peak = tracemalloc.get_traced_memory()
        retained, peak = retained - base, peak - base
        tracemalloc.stop()

        # Reloads: nothing changed (the poll every interval), then one file of many edited.
        policy_source = PolicySource(PolicyConfig(paths=(str(directory),), gc_freeze=False))
        policy_source.load()
        t0 = time.perf_counter()
        policy_source.poll()
        idle_poll_s = time.perf_counter() - t0
        edited = directory / "decl-000000.yaml"
        edited.write_text(edited.read_text().replace("/healthz", "/livez"))
        t0, c0 = time.perf_counter(), time.process_time()
        assert policy_source.poll(), "the edit was not picked up"
        reload_s, reload_cpu_s = time.perf_counter() - t0, time.process_time() - c0

        sample = workload(callees, calls)
        timings, allowed = decide_all(policies, sample)
        # The same after gc.freeze(): a large policy set is a million long-lived objects that every full
        # collection walks; freezing them (as a server can after a reload) shows what that costs the tail.
        t0 = time.perf_counter()
        gc.collect()
        full_gc_s = time.perf_counter() - t0
        gc.freeze()
        frozen, _ = decide_all(policies, sample)
        gc.unfreeze()
        return {
            "callees": callees,
            "rules": policies.summary.rules,
            "load_s": load_s,
            "retained_mib": retained / 2**20,
            "peak_mib": peak / 2**20,
            "idle_poll_ms": idle_poll_s * 1000,
            "reload_s": reload_s,
            "p50_us": timings[len(timings) // 2] / 1000,
            "p99_us": timings[int(len(timings) * 0.99)] / 1000,
            "p99_frozen_us": frozen[int(len(frozen) * 0.99)] / 1000,
            "max_us": timings[-1] / 1000,
            "load_cpu_s": load_cpu_s,
            "full_gc_ms": full_gc_s * 1000,
            "reload_cpu_s": reload_cpu_s,
            "mean_us": statistics.fmean(timings) / 1000,
            "allowed_share": allowed / len(sample),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--callees", type=int, nargs="+", default=[10, 10_000])
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    for callees in args.callees:
        r = measure(callees, args.calls)
        print(f"callees {r['callees']:.0f}, rules {r['rules']:.0f}")
        print(f"  decision  p50 {r['p50_us']:.1f} µs, p99 {r['p99_us']:.1f} µs (after gc.freeze: "
              f"{r['p99_frozen_us']:.1f} µs), mean {r['mean_us']:.1f} µs, max {r['max_us']:.0f} µs, "
              f"allowed {r['allowed_share']:.0%}")  # fmt: skip
        print(f"  full gc   {r['full_gc_ms']:.0f} ms (one full collection with the set alive)")
        print(f"  load      {r['load_s']:.2f} s wall, {r['load_cpu_s']:.2f} s CPU")
        print(f"  reload    one file of {max(1, callees // DOCS_PER_FILE)} changed: {r['reload_s']:.2f} s wall, "
              f"{r['reload_cpu_s']:.2f} s CPU; idle poll {r['idle_poll_ms']:.1f} ms")  # fmt: skip
        print(f"  memory    {r['retained_mib']:.1f} MiB retained by the set, "
              f"{r['peak_mib']:.1f} MiB peak while loading")  # fmt: skip


if __name__ == "__main__":
    main()

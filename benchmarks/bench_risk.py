"""Cost of the risk stage per call (features, model, whole stage, observe), alone and under concurrency; state bytes.

    .venv/bin/python benchmarks/bench_risk.py [--calls 20000] [--threads 4] [--identities 10000]

Prints p50/p99 microseconds and writes benchmarks/out/risk.json. `--clock cpu` times each call by the thread's CPU
time (what the stage costs, whatever else the box runs); `wall` (default) by elapsed time. The traffic: 40
workloads on 120 edges with their own rates, routes, ids, body sizes and 1 h SVIDs. Two days of it become
decision-log lines and a site model is trained from them (`authz_server.risklab.training`, as `model train
--baseline` does), so the stage reads a real per-edge baseline; the third day is replayed through the real stage
(RiskScorer.assess then observe), one onnxruntime intra-op thread, the default 2 ms budget. "Concurrent" runs the
same stage from N threads at once.
Memory: tracemalloc around filling the state with `--identities` callers, each on 3 edges with 2 templates, ids,
sizes and its own certificate: the bytes per identity the manifests size from.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import threading
import time
import tracemalloc
from pathlib import Path
from types import MappingProxyType
from typing import Any

from authz_server.call import Call, Peer
from authz_server.identity.result import Identity, Proof
from authz_server.policy.outcome import PolicyOutcome, PolicyReason
from authz_server.risk import AnomalyModel, BehaviourState, RiskConfig, RiskScorer
from authz_server.risk.features import Learning, facts_from_call
from authz_server.risk.outcome import RiskStatus
from authz_server.transport.serve import collect_as_serving

OUT = Path(__file__).parent / "out" / "risk.json"
TRUST_DOMAIN = "example.org"
START = 1772409600.0
_CLOCKS = {"wall": time.perf_counter_ns, "cpu": time.thread_time_ns}
_clock = time.perf_counter_ns
_Sample = tuple[Call, Identity, PolicyOutcome]


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000

    return {"n": len(ordered), "p50_us": pick(0.50), "p99_us": pick(0.99), "max_us": ordered[-1] / 1000}


def _traffic(days: float, seed: int = 3) -> list[_Sample]:
    """The mesh's calls in time order, each as the server would see it after parse and identity."""
    rng = random.Random(seed)
    edges = []
    for w in range(40):
        caller = f"spiffe://{TRUST_DOMAIN}/ns/team{w % 8}/sa/workload{w}"
        for k in range(3):
            callee = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/service{(w + k) % 12}"
            routes = [(rng.choice(("GET", "GET", "POST")), f"/api/r{w % 5}{j}/{{}}") for j in range(3)]
            edges.append((caller, callee, routes, rng.uniform(0.5, 6.0), f"10.{w % 4}.{w}.{k + 7}"))
    calls: list[_Sample] = []
    for minute in range(int(days * 1440)):
        hour = minute // 60 % 24
        for caller, callee, routes, rate, address in edges:
            level = rate * (1.0 if 7 <= hour < 22 else 0.3)
            for _ in range(int(level) + (rng.random() < level % 1)):
                ts = START + minute * 60 + rng.random() * 60
                method, route = rng.choice(routes)
                issued = ts - ts % 1800
                identity = Identity(caller, TRUST_DOMAIN, caller.split(TRUST_DOMAIN, 1)[1], Proof.CERTIFICATE,
                                    issued + 3600, issued, None, f"{abs(hash((caller, issued))):x}")  # fmt: skip
                path = route.format(int(rng.paretovariate(1.1)) % 5000)
                headers = _EMPTY
                if method == "POST":
                    headers = MappingProxyType({"content-length": str(int(rng.lognormvariate(6, 0.4)))})
                call = Call(f"b{len(calls)}", Peer(caller, "", address, 40000), callee, method, path, "", "svc",
                            "https", "HTTP/1.1", headers, _EMPTY, 0, "", ts)  # fmt: skip
                calls.append((call, identity, PolicyOutcome(True, PolicyReason.ALLOWED, "bench", normalized_path=path)))
    calls.sort(key=lambda sample: sample[0].received_at)
    return calls


_EMPTY: MappingProxyType[str, str] = MappingProxyType({})


def _site_model(history: list[_Sample]) -> AnomalyModel:
    """Trained on the history as `model train --baseline` trains on a decision log."""
    from authz_server.risklab.training import train_site

    facts = [facts_from_call(c, i, c.path, c.received_at) for c, i, _ in history]
    trained = train_site(facts, source="bench_risk traffic")
    return AnomalyModel.from_bytes(trained.blob, "bench-site-model")


def _single(scorer: RiskScorer, stream: list[_Sample]) -> dict[str, Any]:
    features_ns, model_ns, stage_ns, observe_ns = [], [], [], []
    skipped = 0
    state, model = scorer.state, scorer.model
    for call, identity, policy in stream:
        now = call.received_at
        t0 = _clock()
        row = state.features(facts_from_call(call, identity, call.path, now), model.baseline)
        t1 = _clock()
        model.score(row)
        t2 = _clock()
        outcome = scorer.assess(call, identity, policy, now, 0.002)
        t3 = _clock()
        scorer.observe(call, identity, policy, outcome, now)
        observe_ns.append(_clock() - t3)
        features_ns.append(t1 - t0)
        model_ns.append(t2 - t1)
        stage_ns.append(t3 - t2)
        skipped += outcome.status is RiskStatus.SKIPPED
    return {
        "skipped": skipped,
        "features": _percentiles(features_ns),
        "model": _percentiles(model_ns),
        "stage": _percentiles(stage_ns),
        "observe": _percentiles(observe_ns),
    }


def _concurrent(scorer: RiskScorer, stream: list[_Sample], threads: int) -> dict[str, Any]:
    samples: list[list[int]] = [[] for _ in range(threads)]
    skipped = [0] * threads
    barrier = threading.Barrier(threads)

    def run(k: int) -> None:
        mine = stream[k::threads]
        barrier.wait()
        for call, identity, policy in mine:
            now = call.received_at
            t0 = _clock()
            outcome = scorer.assess(call, identity, policy, now, 0.002)
            samples[k].append(_clock() - t0)
            scorer.observe(call, identity, policy, outcome, now)
            skipped[k] += outcome.status is RiskStatus.SKIPPED

    workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    result = _percentiles([s for per in samples for s in per])
    result.update(threads=threads, skipped=sum(skipped), calls_per_s=round(len(stream) / elapsed))
    return result


def _memory(identities: int) -> dict[str, Any]:
    """Bytes the state holds once `identities` callers are active: each on 3 edges, 2 templates an edge (one with
    ids), a POST size learned, its own certificate and subnet; everything learned (the most the state keeps)."""
    config = RiskConfig(max_identities=identities, max_edges=identities * 3)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    state = BehaviourState(config)
    for i in range(identities):
        caller = f"spiffe://{TRUST_DOMAIN}/ns/team{i % 200}/sa/workload{i}"
        identity = Identity(caller, TRUST_DOMAIN, caller.split(TRUST_DOMAIN, 1)[1], Proof.CERTIFICATE, START + 3600,
                            START, None, f"{i:032x}")  # fmt: skip
        for j in range(6):
            callee = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/service{(i + j) % 3}"
            path, method = (f"/items/{(i * 7 + j) % 1000}", "GET") if j % 2 else ("/carts/current", "POST")
            headers = MappingProxyType({"content-length": "512"})
            call = Call("m", Peer(caller, "", f"10.{i % 250}.{i // 250 % 250}.9", 0), callee, method, path, "", "h",
                        "https", "HTTP/1.1", headers, _EMPTY, 0, "", START + j)  # fmt: skip
            state.observe(facts_from_call(call, identity, path, START + j), Learning.EVERYTHING)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    sizes = state.sizes()
    return {
        "identities": identities,
        **sizes,
        "bytes": held,
        "bytes_per_identity": round(held / identities),
        "bytes_per_edge": round(held / max(1, sizes["edges"])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--identities", type=int, default=10000)
    parser.add_argument(
        "--clock",
        choices=sorted(_CLOCKS),
        default="wall",
        help="wall: elapsed time; cpu: the thread's CPU time, immune to neighbours preempting it on a shared box",
    )
    args = parser.parse_args()
    global _clock
    _clock = _CLOCKS[args.clock]

    traffic = _traffic(3.0)
    cut = next(i for i, (call, _, _) in enumerate(traffic) if call.received_at >= START + 2 * 86400)
    model = _site_model(traffic[:cut])
    day = traffic[cut : cut + args.calls]
    warm, measured = day[: len(day) // 2], day[len(day) // 2 :]
    config = RiskConfig(warmup_s=0)
    results: dict[str, Any] = {
        "python": platform.python_version(),
        "budget_us": config.budget_ms * 1000,
        "clock": args.clock,
    }
    for name, scored_by in (("site", model), ("bundled", AnomalyModel.load(""))):
        scorer = RiskScorer(scored_by, config, BehaviourState(config), started_at=START)
        for call, identity, _ in traffic[:cut]:  # the state has seen the history, as a running server's has
            scorer.state.observe(facts_from_call(call, identity, call.path, call.received_at), Learning.EVERYTHING)
        collect_as_serving()
        _single(scorer, warm)
        results[name] = {
            "model": scored_by.version,
            "baseline_edges": len(scored_by.baseline.edges),
            "single_thread": _single(scorer, measured),
            "concurrent": _concurrent(scorer, measured, args.threads),
        }
    results["memory"] = _memory(args.identities)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")

    print(f"budget {results['budget_us']:.0f} µs, {len(measured)} measured calls after {len(warm)} warm-up calls, "
          f"{args.clock} clock")  # fmt: skip
    for name in ("site", "bundled"):
        r = results[name]
        print(f"{name} model {r['model']} ({r['baseline_edges']} baseline edges)")
        single = r["single_thread"]
        for part in ("features", "model", "stage", "observe"):
            p = single[part]
            print(f"  {part:9} p50 {p['p50_us']:7.1f} µs   p99 {p['p99_us']:7.1f} µs")
        print(f"  skipped (budget) {single['skipped']}")
        c = r["concurrent"]
        print(f"  {c['threads']} threads: stage p50 {c['p50_us']:.1f} µs  p99 {c['p99_us']:.1f} µs  "
              f"({c['calls_per_s']} calls/s, {c['skipped']} skipped)")  # fmt: skip
    m = results["memory"]
    print(f"state at {m['identities']} identities: {m['bytes'] / 1e6:.1f} MB ({m['bytes_per_identity']} B an identity, "
          f"{m['bytes_per_edge']} B an edge; {m['edges']} edges, {m['templates']} templates, "
          f"{m['certificates']} certificates)")  # fmt: skip
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

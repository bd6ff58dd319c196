"""Cost of the risk stage per call (features, model, whole stage), alone and under concurrency; state memory.

    .venv/bin/python benchmarks/bench_risk.py [--calls 20000] [--threads 4]

Prints p50/p99 microseconds and writes benchmarks/out/risk.json. The calls are
the synthetic mesh's own traffic (authz_server.risk.synthetic) replayed through
the real stage: RiskScorer.assess then observe, with the bundled model, one
onnxruntime intra-op thread, the default 2 ms budget. "Concurrent" runs the same
stage from N threads at once (the sync transport's handler threads share one
stage per process). Memory: tracemalloc around filling the behavioural state
with 10,000 active identities. Model family: single-row and 64-row batch cost of
the bundled autoencoder (the case for or against micro-batching).
"""

from __future__ import annotations

import argparse
import json
import platform
import threading
import time
import tracemalloc
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from authz_server.call import Call, Peer
from authz_server.decision import Verdict
from authz_server.identity.result import Identity, Proof
from authz_server.policy.outcome import PolicyOutcome, PolicyReason
from authz_server.risk import AnomalyModel, BehaviourState, RiskConfig, RiskScorer
from authz_server.risk.features import N_FEATURES
from authz_server.risk.synthetic import TRUST_DOMAIN, MeshTraffic, spiffe_id

OUT = Path(__file__).parent / "out" / "risk.json"
_EMPTY: MappingProxyType[str, str] = MappingProxyType({})
_clock = time.perf_counter_ns


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000

    return {"n": len(ordered), "p50_us": pick(0.50), "p99_us": pick(0.99), "max_us": ordered[-1] / 1000}


def _stream(n: int, seed: int = 3) -> list[tuple[Call, Identity, PolicyOutcome]]:
    """n calls of the synthetic mesh, each as the server would see it."""
    traffic = MeshTraffic(seed)
    out = []
    now = time.time()
    for i, event in enumerate(traffic.events(traffic.start + 30 * 86400)):
        if i >= n:
            break
        sid = spiffe_id(event.caller)
        identity = Identity(sid, TRUST_DOMAIN, sid.split(TRUST_DOMAIN, 1)[1], Proof.CERTIFICATE, now + 3000, now - 600)
        call = Call(
            f"bench-{i}", Peer(sid, "", "10.0.0.1", 0), spiffe_id(event.callee), event.method, event.path, "", "host",
            "https", "HTTP/1.1", _EMPTY, _EMPTY, event.size, "", event.ts,
        )  # fmt: skip
        policy = PolicyOutcome(True, PolicyReason.ALLOWED, "bench", normalized_path=event.path, max_risk=0.7)
        out.append((call, identity, policy))
    return out


class _Decision:
    """What RiskScorer.observe reads of a Decision."""

    def __init__(self, identity: Identity, policy: PolicyOutcome) -> None:
        self.caller = identity
        self.policy = policy
        self.verdict = Verdict.ALLOW


def _single(scorer: RiskScorer, stream: list[tuple[Call, Identity, PolicyOutcome]]) -> dict[str, Any]:
    features_ns, model_ns, stage_ns, observe_ns = [], [], [], []
    skipped = 0
    state, model = scorer.state, scorer.model
    for call, identity, policy in stream:
        t0 = _clock()
        row = state.features(call, identity, call.path, call.received_at)
        t1 = _clock()
        model.score(row)
        t2 = _clock()
        outcome = scorer.assess(call, identity, policy, time.time(), 0.002)
        decision = _Decision(identity, policy)
        t3 = _clock()
        scorer.observe(call, decision)  # type: ignore[arg-type]
        observe_ns.append(_clock() - t3)
        features_ns.append(t1 - t0)
        model_ns.append(t2 - t1)
        stage_ns.append(t3 - t2)
        skipped += outcome.status.value == "skipped"
    return {
        "skipped": skipped,
        "features": _percentiles(features_ns),
        "model": _percentiles(model_ns),
        "stage": _percentiles(stage_ns),
        "observe": _percentiles(observe_ns),
    }


def _concurrent(scorer: RiskScorer, stream: list[tuple[Call, Identity, PolicyOutcome]], threads: int) -> dict[str, Any]:
    samples: list[list[int]] = [[] for _ in range(threads)]
    skipped = [0] * threads
    barrier = threading.Barrier(threads)

    def run(k: int) -> None:
        mine = stream[k::threads]
        barrier.wait()
        for call, identity, policy in mine:
            t0 = _clock()
            outcome = scorer.assess(call, identity, policy, time.time(), 0.002)
            samples[k].append(_clock() - t0)
            scorer.observe(call, _Decision(identity, policy))  # type: ignore[arg-type]
            skipped[k] += outcome.status.value == "skipped"

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
    """Bytes held by the behavioural state once `identities` callers are active (5 calls each, 3 callees)."""
    config = RiskConfig(max_identities=identities * 2, max_edges=identities * 4)
    now = time.time()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    state = BehaviourState(config)
    for i in range(identities):
        sid = f"spiffe://{TRUST_DOMAIN}/ns/team{i % 200}/sa/workload{i}"
        identity = Identity(sid, TRUST_DOMAIN, sid.split(TRUST_DOMAIN, 1)[1], Proof.CERTIFICATE, now + 3000, now - 600)
        for j in range(5):
            callee = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/service{(i + j) % 3}"
            path = f"/items/{(i * 7 + j) % 1000}"
            call = Call(
                "m", Peer(sid, "", "10.0.0.1", 0), callee, "GET", path, "", "h", "https", "HTTP/1.1", _EMPTY, _EMPTY,
                0, "", now + j,
            )  # fmt: skip
            state.features(call, identity, path, now + j)
            state.observe(call, identity, path, True)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    sizes = state.sizes()
    return {"identities": identities, **sizes, "bytes": held, "bytes_per_identity": round(held / identities)}


def _batching(model: AnomalyModel, repeats: int = 2000) -> dict[str, float]:
    row = [0.1] * N_FEATURES
    batch = np.full((64, N_FEATURES), 0.1, dtype=np.float32)
    single, batched = [], []
    for _ in range(repeats):
        t0 = _clock()
        model.score(row)
        t1 = _clock()
        model.score_rows(batch)
        t2 = _clock()
        single.append(t1 - t0)
        batched.append(t2 - t1)
    return {
        "single_row_p50_us": _percentiles(single)["p50_us"],
        "single_row_p99_us": _percentiles(single)["p99_us"],
        "batch_64_p50_us": _percentiles(batched)["p50_us"],
        "batch_64_p99_us": _percentiles(batched)["p99_us"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--identities", type=int, default=10000)
    args = parser.parse_args()

    model = AnomalyModel.load("")
    config = RiskConfig(warmup_s=0)
    stream = _stream(args.calls)
    warm, measured = stream[: len(stream) // 2], stream[len(stream) // 2 :]
    scorer = RiskScorer(model, config, BehaviourState(config))
    _single(scorer, warm)  # the state learns the mesh first, as a running server's has
    results: dict[str, Any] = {
        "model": model.version,
        "budget_us": config.budget_ms * 1000,
        "single_thread": _single(scorer, measured),
        "concurrent": _concurrent(scorer, measured, args.threads),
        "memory": _memory(args.identities),
        "model_batching": _batching(model),
        "python": platform.python_version(),
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    single = results["single_thread"]
    print(f"model {model.version}, budget {results['budget_us']:.0f} µs, {len(measured)} measured calls")
    for name in ("features", "model", "stage", "observe"):
        r = single[name]
        print(f"  {name:9} p50 {r['p50_us']:7.1f} µs   p99 {r['p99_us']:7.1f} µs")
    print(f"  skipped (budget) {single['skipped']}")
    c = results["concurrent"]
    print(f"  {c['threads']} threads: stage p50 {c['p50_us']:.1f} µs  p99 {c['p99_us']:.1f} µs  "
          f"({c['calls_per_s']} calls/s, {c['skipped']} skipped)")  # fmt: skip
    m = results["memory"]
    print(f"  state at {m['identities']} identities: {m['bytes'] / 1e6:.1f} MB ({m['bytes_per_identity']} B each; "
          f"{m['edges']} edges, {m['routes']} routes)")  # fmt: skip
    b = results["model_batching"]
    print(f"  model: 1 row p50 {b['single_row_p50_us']:.1f} µs, 64 rows p50 {b['batch_64_p50_us']:.1f} µs")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

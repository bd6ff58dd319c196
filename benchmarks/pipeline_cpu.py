"""CPU per decision of the whole pipeline as `serve` wires it, without a transport, and what the model run costs in it.

    .venv/bin/python -m benchmarks.pipeline_cpu [--calls 5000] [--rounds 3] [--batch N] [--tree DIR] [--no-model-run]

`serve`'s own pieces decide the benchmark workload's envoy mix (no identity failures, as through Envoy): the
request bytes are admitted and decoded as a transport hands them over (`decide_admitted`), then identity, policy,
risk with the bundled model, the response, the decision log to a file on its writer thread and the metrics
observer. Per round it prints the process's CPU time per call (the deciding thread and the writer: what the
server's CPU per decision holds beyond the transport) and the deciding thread's own; then the median round.

Timed with the CPU clocks, so a busy neighbour stretches a round's wall time but barely its figure; compare two
trees in alternating runs all the same (`--tree`: decide with another checkout's `authz_server`, e.g. a
`git worktree` of main).

`--batch N` hands the calls over N at a time, as the h2 transport hands over the Checks one read completed
(`decide_admitted_many`: one model run for each group of calls from distinct callers).

`--no-model-run` answers every risk score from one model run made at start instead of running onnxruntime per call
(the outcomes are then wrong: for measuring only). A call's own run costs ~10 µs in a loop of nothing else; the
difference between the two modes is what it costs among the rest of the pipeline, whose code and data it pushes
out of the CPU caches and the other way round.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline_cpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=4000, help="distinct requests drawn from the workload")
    parser.add_argument("--tree", type=Path, default=None, help="decide with the authz_server of another checkout")
    parser.add_argument("--batch", type=int, default=1, help="calls handed over together")
    parser.add_argument("--no-model-run", action="store_true", help="score from one model run made at start")
    args = parser.parse_args(argv)
    if args.tree is not None:
        sys.path.insert(0, str(args.tree.resolve()))  # before anything imports authz_server
    with tempfile.TemporaryDirectory(prefix="authz-pipeline-cpu-") as tmp:
        rounds = measure(
            Path(tmp), args.calls, args.rounds, samples=args.samples, model_run=not args.no_model_run, batch=args.batch
        )
    for process_us, thread_us in rounds:
        print(f"round: process {process_us:6.1f} µs/call, deciding thread {thread_us:6.1f}")
    process_us, thread_us = sorted(rounds)[len(rounds) // 2]
    writer_us = process_us - thread_us
    print(f"median round: process {process_us:.1f} µs/call, deciding thread {thread_us:.1f}, writer {writer_us:.1f}")
    return 0


def measure(
    workdir: Path, calls: int, rounds: int, *, samples: int = 4000, model_run: bool = True, batch: int = 1
) -> list[tuple[float, float]]:
    """[(process CPU µs per call, deciding thread CPU µs per call)] for each round."""
    import gc

    import yaml

    import authz_server
    from authz_server.config import load_config
    from authz_server.transport.grpc_server import decide_admitted_many
    from authz_server.transport.serve import ServerProcess, load_authorizer
    from benchmarks.pipeline import write_inputs
    from benchmarks.workload import TRUST_DOMAIN, Kind, TrustDomainFixture, Workload

    print(f"authz_server from {Path(authz_server.__file__).parent.parent}")
    workload = Workload(TrustDomainFixture.create())
    requests = [s.serialized for s in workload.samples(samples) if s.kind is not Kind.IDENTITY_DENIED]
    bundle, policies = write_inputs(workload, workdir / "inputs")
    config_file = workdir / "config.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "identity": {"trust_domains": {TRUST_DOMAIN: {"bundle": str(bundle)}}},
                "policy": {"paths": [str(policies)]},
                "log": {"decisions": str(workdir / "decisions.jsonl")},
                # Every call scored, however long a busy box or valgrind stretches it past the 2 ms default: the
                # figure is what scoring costs, not how often the budget ran out (under callgrind, 88% of calls did).
                "risk": {"budget_ms": 1000},
            }
        )
    )
    config = load_config(config_file)
    server = ServerProcess(config)
    server.sink.start()
    authorizer = load_authorizer(config, server.sources, server.sink, server.ops.clock.loaded)
    risk: Any = authorizer.runtime.risk
    if not model_run and risk is not None:
        score, surprise = risk.model.score([0.0] * len(risk.model.card.feature_names))
        risk.model.score_many = lambda rows: [(score, list(surprise)) for _ in rows]
    admission, sink = server.admission, server.sink
    try:
        for data in requests:  # every certificate verified once, every cache warm
            decide_admitted_many(authorizer, admission, [(data, 0.2, None)])
        _drained(sink)
        gc.collect()
        gc.freeze()  # as serve does once loaded
        gc.set_threshold(10_000, *gc.get_threshold()[1:])
        results = []
        for _ in range(rounds):
            process0, thread0 = time.process_time(), time.thread_time()
            for k in range(0, calls, batch):
                group = [(requests[(k + i) % len(requests)], 0.2, None) for i in range(batch)]
                decide_admitted_many(authorizer, admission, group)
            thread1 = time.thread_time()
            _drained(sink)
            decided = -(-calls // batch) * batch
            results.append(((time.process_time() - process0) / decided * 1e6, (thread1 - thread0) / decided * 1e6))
        return results
    finally:
        sink.close()
        server.sources.close()


def _drained(sink: Any) -> None:
    """Wait (sleeping, no CPU) until the writer has taken everything queued and finished its batch."""
    deadline = time.monotonic() + 60
    while sink.queued and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(0.05)


if __name__ == "__main__":
    raise SystemExit(main())

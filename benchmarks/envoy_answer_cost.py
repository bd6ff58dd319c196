"""What the sidecar Envoy spends on each part of a CheckResponse, read within one run.

    .venv/bin/python -m benchmarks.envoy_answer_cost [--opa /tmp/opa_envoy] [--rate 200] [--rounds 8]

Python floors (h2 transport) answer every Check with one fixed CheckResponse each: the bare OK, OPA-Envoy's
answer for the same grant, and this server's annotations a part at a time (headers set on the upstream request,
dynamic metadata, headers_to_remove), each floor behind its own chain (client Envoy -> mTLS -> sidecar -> direct
response, as `benchmarks.run --parts envoy`). Three choices make differences of a few µs readable on a shared
2-core machine:
- a fixed rate per chain (h2load, one allowed GET of the mix): Envoy's CPU per request falls as its load rises
  (more requests share each wake-up), so wrk's closed loop would charge a slower server's answers more;
- every chain driven at once in each round, and the difference to the bare OK taken within the round;
- the answers rotate over the floors from round to round (the floor re-reads its answer file on SIGHUP), so a
  chain that happens to cost more weighs on every answer alike.
CPU comes from the scheduler's nanosecond counters. The real server (`authz h2 w1`) and OPA-Envoy (`--opa`)
run in the same rounds for reference (not rotated). `--wrk N` and `--one-at-a-time` give the closed loop and
the sequential order instead.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.response import DECISION, DECISION_ID, POLICY, RISK, RISK_FACTORS, SOURCE
from benchmarks.envoy_chain import Chain, ChainSpec, start_chain
from benchmarks.loadgen import LoadResult, h2load_requests, wrk_script
from benchmarks.opa_peer import missing_note, opa_server
from benchmarks.pipeline import write_inputs
from benchmarks.run import representative, wrk_driver
from benchmarks.servers import DecisionServerSpec, ProcessTree, ServerGroup, decision_server, floor_server, probe_check
from benchmarks.workload import CALLER_HEADER, Kind, Sample, TrustDomainFixture, Workload

# What the real server answers for an allowed call whose score was annotated (values as one such call had).
ANNOTATIONS = {
    DECISION: "allow",
    DECISION_ID: "525898d18f22-00000002",
    SOURCE: "spiffe://example.org/ns/shop/sa/orders",
    POLICY: "shop/payments@60e7ad6ba5e2",
    RISK: "0.259",
    RISK_FACTORS: "edge_novelty=2.93,ids_short=0.15,ids_long=0.05",
}


def answer(
    headers: Sequence[str] = (), metadata: Sequence[str] = (), remove: Sequence[str] = (), ok: bool = True
) -> bytes:
    """An OK CheckResponse setting `headers`, carrying `metadata` (the same annotations under their short names)
    and removing `remove`; `ok=False` leaves ok_response out, as OPA-Envoy does."""
    response = external_auth_pb2.CheckResponse(status={"code": 0})
    if ok:
        response.ok_response.SetInParent()
    for name in headers:
        option = response.ok_response.headers.add(append_action=2)  # OVERWRITE_IF_EXISTS_OR_ADD
        option.header.key, option.header.value = name, ANNOTATIONS[name]
    response.ok_response.headers_to_remove.extend(remove)
    for name in metadata:
        response.dynamic_metadata[name.removeprefix("x-authz-").replace("-", "_")] = ANNOTATIONS[name]
    return response.SerializeToString()


ALL = tuple(ANNOTATIONS)
ANSWERS = {
    "bare OK": answer(),
    "OPA's answer (metadata: decision_id)": answer(metadata=[DECISION_ID], ok=False),
    "1 header (decision-id)": answer([DECISION_ID]),
    "2 headers (decision-id + source)": answer([DECISION_ID, SOURCE]),
    "6 headers": answer(ALL),
    "6 metadata only": answer(metadata=ALL),
    "6 headers + 6 metadata (main)": answer(ALL, ALL),
    "6 headers + 2 metadata (decision + id)": answer(ALL, [DECISION, DECISION_ID]),
    "bare + 6 removals": answer(remove=ALL),
}


RATE_CLIENTS = 4


def rate_driver(url: str, sample: Sample) -> Callable[[int, float, float], LoadResult]:
    """h2load at a fixed rate (the level is requests/s) repeating one allowed call of the mix: the sidecar's CPU
    per request at a given rate does not depend on how fast the server behind it answers, as wrk's closed loop
    does (the sidecar spends less per request the more requests share each wake-up)."""
    headers = [f"{name}: {value}" for name, value in sample.headers if name != "content-length"]
    headers.append(f"{CALLER_HEADER}: {sample.caller}")

    def drive(rate: int, seconds: float, warmup_s: float) -> LoadResult:
        target = url + sample.path
        if warmup_s:
            h2load_requests(target, clients=RATE_CLIENTS, streams=1, seconds=warmup_s,
                            rps_per_client=rate / RATE_CLIENTS, headers=headers)  # fmt: skip
        rows = h2load_requests(target, clients=RATE_CLIENTS, streams=1, seconds=seconds,
                               rps_per_client=rate / RATE_CLIENTS, headers=headers)  # fmt: skip
        ok = sum(1 for r in rows if 200 <= r.status < 300)
        failed = sum(1 for r in rows if r.status < 0)
        latency = sorted(r.latency_s * 1e6 for r in rows) or [0.0]
        percentiles = {"p50": latency[len(latency) // 2], "p99": latency[int(len(latency) * 0.99)]}
        return LoadResult(len(rows), seconds, percentiles, failed, len(rows) - ok - failed)

    return drive


def on_cpu_seconds(tree: ProcessTree) -> float:
    """Time on CPU of every thread of the tree, from the scheduler's nanosecond counters (/proc/PID/task/*/schedstat):
    /proc/PID/stat counts 10 ms ticks, 8 µs a request at 200 requests/s for 6 s, about the size of what is measured."""
    total = 0
    for pid in tree.pids():
        for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            with contextlib.suppress(OSError):
                total += int(task.read_text().split()[0])
    return total / 1e9


@dataclass
class Slot:
    """One configuration under load: a server, the chain in front of it, and what it answers this round."""

    name: str
    server: ServerGroup
    chain: Chain
    drive: Callable[[int, float, float], LoadResult]
    answer_file: Path | None = None
    """A floor's: the file it answers from, rewritten and re-read (SIGHUP) when the answers rotate."""

    def serve(self, name: str, probe: bytes) -> None:
        """Make this floor answer ANSWERS[name] from now on."""
        assert self.answer_file is not None
        self.answer_file.write_bytes(ANSWERS[name])
        for process in self.server.processes:
            process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while probe_check(self.server.port, probe) != ANSWERS[name]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the floor on {self.server.port} did not switch to {name!r}")
            time.sleep(0.05)
        self.name = name


def measure(slot: Slot, level: int, seconds: float, warmup_s: float) -> dict[str, float]:
    """One run: requests/s and CPU µs per request of the server, the sidecar and the client Envoy."""
    trees = [*slot.server.trees, slot.chain.sidecar_tree, slot.chain.client_tree]
    before = [on_cpu_seconds(t) for t in trees]
    load = slot.drive(level, seconds, warmup_s)
    used = [on_cpu_seconds(t) - b for t, b in zip(trees, before, strict=True)]
    # CPU is read around warm-up and run together: the measured share of it.
    per_request = seconds / (seconds + warmup_s) / max(load.requests, 1) * 1e6
    return {
        "rps": load.rps,
        "server_us": sum(used[:-2]) * per_request,
        "sidecar_us": used[-2] * per_request,
        "client_us": used[-1] * per_request,
        "non_2xx": load.non_2xx + load.errors,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=0, help="default: one per answer, so each serves behind each")
    parser.add_argument("--rate", type=int, default=200, help="requests/s each configuration gets (h2load)")
    parser.add_argument("--wrk", type=int, default=0, help="instead: wrk's closed loop on this many connections")
    parser.add_argument("--answers", default="", help="comma-separated subset of the answers (default: all)")
    parser.add_argument("--opa", type=Path, default=None, help="opa-envoy-plugin binary to measure alongside")
    parser.add_argument("--no-server", action="store_true", help="leave the real server out")
    parser.add_argument(
        "--one-at-a-time", action="store_true",
        help="drive the configurations one after another instead of all at once (each then has the machine alone)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    chosen = [a.strip() for a in args.answers.split(",") if a.strip()] or list(ANSWERS)
    unknown = set(chosen) - set(ANSWERS)
    if unknown:
        print(f"unknown answers: {sorted(unknown)}; known: {list(ANSWERS)}", file=sys.stderr)
        return 2
    level = args.wrk or args.rate
    rounds = args.rounds or len(chosen)
    workload = Workload(TrustDomainFixture.create())
    samples = workload.samples(2000)
    probe = representative(samples).serialized
    # h2load sends GETs: an allowed GET, so the real server and OPA-Envoy grant it as the floors do.
    sample = next(s for s in samples if s.kind is Kind.ALLOWED and s.method == "GET")
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="authz-answer-cost-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        script = wrk_script([s for s in samples if s.kind is not Kind.IDENTITY_DENIED], workdir)
        slots: list[Slot] = []

        def add(name: str, server: ServerGroup, answer_file: Path | None = None) -> None:
            spec = ChainSpec("ext_authz", server.port)
            chain = stack.enter_context(start_chain(workload, workdir / f"chain-{len(slots)}", spec))
            drive = wrk_driver(chain.url, script, None) if args.wrk else rate_driver(chain.url, sample)
            slots.append(Slot(name, server, chain, drive, answer_file))

        for i, name in enumerate(chosen):
            path = workdir / f"answer-{i}.bin"
            path.write_bytes(ANSWERS[name])
            add(name, stack.enter_context(floor_server(workdir / "servers", "h2", answer=path).start(probe)), path)
        if not args.no_server:
            bundle, policies = write_inputs(workload, workdir / "inputs")
            spec = DecisionServerSpec(transport="h2")
            server = decision_server(workdir / "servers", bundle, policies, spec)
            add("authz h2 w1 (real server)", stack.enter_context(server.start(probe)))
        if missing_note(args.opa) is None:
            assert args.opa is not None
            add("OPA-Envoy", stack.enter_context(opa_server(workdir / "servers", args.opa).start(probe)))
        floors = [slot for slot in slots if slot.answer_file is not None]
        for round_ in range(rounds):
            # Rotate: every answer is served behind every floor's chain in turn, so a chain that happens to cost
            # more (where its threads run, what it shares a core with) weighs on each answer alike.
            for i, slot in enumerate(floors):
                slot.serve(chosen[(i + round_) % len(chosen)], probe)
            order = slots if round_ % 2 == 0 else slots[::-1]
            if args.one_at_a_time:
                measured = [measure(slot, level, args.seconds, args.warmup) for slot in order]
            else:
                with ThreadPoolExecutor(max_workers=len(order)) as pool:
                    measured = list(pool.map(lambda s: measure(s, level, args.seconds, args.warmup), order))
            for slot, run in zip(order, measured, strict=True):
                results.setdefault(slot.name, []).append(run)
    print(report(results, chosen[0], args, level, rounds))
    return 0


def report(results: dict[str, list[dict[str, float]]], reference: str, args: argparse.Namespace, level: int,
           rounds: int) -> str:  # fmt: skip
    how = "one at a time" if args.one_at_a_time else "all at once"
    load = f"wrk -c {level}" if args.wrk else f"{level} req/s each"
    lines = [
        f"== sidecar Envoy CPU per request by answer ({rounds} rounds x {args.seconds:g} s, {load}, {how})",
        f"{'answer':38} {'bytes':>5} {'req/s':>6} {'sidecar µs/req':>14} {'Δ paired':>9} {'server µs/req':>13}"
        f"  sidecar per round",
    ]
    base = results[reference]
    for name, runs in results.items():
        sidecar = [r["sidecar_us"] for r in runs]
        # Paired within a round: both were driven in the same window, so the machine's noise largely cancels.
        delta = statistics.median(r["sidecar_us"] - b["sidecar_us"] for r, b in zip(runs, base, strict=True))
        size = str(len(ANSWERS[name])) if name in ANSWERS else "-"
        failed = sum(r["non_2xx"] for r in runs)
        lines.append(
            f"{name:38} {size:>5} {statistics.median(r['rps'] for r in runs):>6.0f} {statistics.median(sidecar):>14.1f}"
            f" {delta:>+9.1f} {statistics.median(r['server_us'] for r in runs):>13.1f}  "
            + "/".join(f"{v:.0f}" for v in sidecar)
            + (f"  ({failed} not 2xx)" if failed else "")
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""Where a decision server's CPU goes under load: py-spy samples of `authz-server serve`, summarised.

    .venv/bin/pip install py-spy
    .venv/bin/python -m benchmarks.profile                          # h2load straight at the server, 15 s
    .venv/bin/python -m benchmarks.profile --via envoy --native      # wrk through both Envoys, C frames too

The server runs exactly as `benchmarks.run` starts it (every stage real, the
decision log to a file), from this tree or from `--source-tree` (another checkout, to profile a
baseline the same way). py-spy samples every thread of it (`--nonblocking`
unless `--native`: the server is never paused, so what it measures is what runs) while the load
generator drives it; the collapsed stacks land in `--out` and a table of the
frames holding the most samples is printed: "self" is where the CPU was,
"total" is what it was for, both also as µs per request. py-spy counts a
thread waiting inside C code it cannot see into (uvloop's epoll_pwait, grpcio's
poller) as busy, so those frames' shares overstate; Python frames are exact.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from benchmarks.envoy_chain import ChainSpec, start_chain
from benchmarks.loadgen import LoadResult, grpc_body_file, h2load_grpc, wrk, wrk_script
from benchmarks.pipeline import write_inputs
from benchmarks.run import grpc_url, representative
from benchmarks.servers import DecisionServerSpec, decision_server
from benchmarks.workload import Kind, TrustDomainFixture, Workload

OUT = Path(__file__).parent / "out"


def _frame(frame: str) -> str:
    """'check (authz_server/authorizer.py:98)' -> 'check (authz_server/authorizer.py)': lines split one function."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def summarise(collapsed: Path, top: int) -> tuple[int, list[tuple[str, int, int]]]:
    """(samples, [(frame, self samples, total samples)]) from py-spy's raw (collapsed stack) output."""
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = [_frame(f) for f in stack.split(";")[1:]]  # the first entry names the thread
        if frames:
            self_counts[frames[-1]] += count
        for frame in set(frames):
            total_counts[frame] += count
    ranked = sorted(total_counts, key=lambda f: (self_counts[f], total_counts[f]), reverse=True)[:top]
    return samples, [(f, self_counts[f], total_counts[f]) for f in ranked]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--via", choices=("grpc", "envoy"), default="grpc", help="h2load straight, or wrk via Envoy")
    parser.add_argument("--transport", default="aio", help="aio (the default), h2 or sync")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=int, default=400, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="sample C frames too (py-spy --native)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--source-tree", type=Path, default=None, help="profile the server of another checkout")
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy not found: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    workload = Workload(TrustDomainFixture.create())
    samples = workload.samples(4000)
    probe = representative(samples).serialized
    args.out.mkdir(parents=True, exist_ok=True)
    collapsed = args.out / f"profile-{args.via}-{args.transport}{'-native' if args.native else ''}.txt"
    with tempfile.TemporaryDirectory(prefix="authz-profile-") as tmp:
        workdir = Path(tmp)
        bundle, policies = write_inputs(workload, workdir / "inputs")
        spec = DecisionServerSpec(transport=args.transport, source_tree=args.source_tree)
        with decision_server(workdir / "servers", bundle, policies, spec).start(probe) as server:
            pid = server.processes[0].pid
            record = [spy, "record", "-p", str(pid), "-d", str(round(args.seconds)), "-r", str(args.rate),
                      "--format", "raw", "-o", str(collapsed)]  # fmt: skip
            # py-spy reads C stacks only from a paused thread; Python-only sampling never pauses the server.
            record.append("--native" if args.native else "--nonblocking")
            if args.via == "grpc":
                body = grpc_body_file(probe, workdir)

                def drive() -> None:
                    clients = min(args.concurrency, 2)
                    streams = max(1, args.concurrency // clients)
                    loads.append(
                        h2load_grpc(
                            grpc_url(server.port), body, clients=clients, streams=streams, seconds=args.seconds + 2
                        )
                    )
            else:
                chain = start_chain(workload, workdir / "chain", ChainSpec("ext_authz", server.port))
                script = wrk_script([s for s in samples if s.kind is not Kind.IDENTITY_DENIED], workdir)

                def drive() -> None:
                    loads.append(wrk(chain.url, script, connections=args.concurrency, seconds=args.seconds + 3))

            loads: list[LoadResult] = []
            load = threading.Thread(target=drive)
            load.start()
            try:
                subprocess.run(record, check=True, capture_output=True, timeout=args.seconds + 60)
            finally:
                load.join()
                if args.via == "envoy":
                    chain.stop()
    total, rows = summarise(collapsed, args.top)
    rps = loads[0].rps if loads else 0.0
    # One sample stands for 1/rate s of a thread's time, spread over the requests served while sampling.
    us_per_sample = 1e6 / (args.rate * rps * args.seconds) if rps else float("nan")
    print(f"{total} samples from pid {pid} ({args.via}, {args.transport}, {args.concurrency} in flight, "
          f"{rps:.0f} requests/s) -> {collapsed}")  # fmt: skip
    print(f"{'self %':>7} {'total %':>8} {'self µs/req':>12} {'total µs/req':>13}  frame")
    for frame, own, inclusive in rows:
        print(
            f"{100 * own / max(total, 1):7.1f} {100 * inclusive / max(total, 1):8.1f} "
            f"{own * us_per_sample:12.1f} {inclusive * us_per_sample:13.1f}  {frame}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

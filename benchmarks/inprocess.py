"""The decision path measured in-process: `Authorizer.check` called directly, where noise is lowest.

Each call is timed twice over: protobuf deserialization (what grpcio does
before the handler runs) and `Authorizer.check` itself, whose stage timings
the TimingSink keeps. No network, no gRPC, one thread: this is the number the
CI gate holds to the risk budget.

`Authorizer.check` is timed on two clocks. Wall time is what a caller waits,
but on a shared machine it includes every moment the scheduler gave the core
to someone else (a 50 µs call that straddles a 4 ms preemption reads 4 ms).
The thread's CPU time (`time.thread_time_ns`, a ~1.5 µs system call, included
in the figure) counts only the work done, so it moves when the code gets slower
and stays put when the neighbours get busier: the CI gate reads that one.
"""

from __future__ import annotations

import gc
import time
from array import array
from dataclasses import dataclass
from typing import Any

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from benchmarks.pipeline import Pipeline
from benchmarks.stats import summarize

_ns = time.perf_counter_ns
_cpu_ns = time.thread_time_ns


@dataclass(frozen=True)
class InProcessResult:
    calls: int
    seconds: float
    decision_us: dict[str, float]
    """Authorizer.check, parse to response (plus the sink), wall clock."""
    decision_cpu_us: dict[str, float]
    """The same calls on the thread's CPU clock: immune to preemption by other processes."""
    deserialize_us: dict[str, float]
    stage_us: dict[str, dict[str, float]]
    allowed_share: float
    stages: dict[str, str]

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "seconds": round(self.seconds, 3),
            "calls_per_s": round(self.calls_per_s, 1),
            "decision_us": self.decision_us,
            "decision_cpu_us": self.decision_cpu_us,
            "deserialize_us": self.deserialize_us,
            "stage_us": self.stage_us,
            "allowed_share": round(self.allowed_share, 4),
            "stages": self.stages,
        }


def run_inprocess(
    pipeline: Pipeline,
    requests: list[bytes],
    *,
    calls: int,
    seconds: float,
    warmup_calls: int | None = None,
) -> InProcessResult:
    """Decide `calls` requests (cycling through `requests`), stopping early after `seconds`."""
    if not requests:
        raise ValueError("no requests to decide")
    parse = external_auth_pb2.CheckRequest.FromString
    check = pipeline.authorizer.check
    sink = pipeline.sink
    # Warm-up: every distinct certificate verified once, caches and code paths hot.
    for raw in requests[: warmup_calls if warmup_calls is not None else len(requests)]:
        check(parse(raw), None)
    sink.reset()
    calls = min(calls, sink.capacity)
    decode = array("d", bytes(8 * calls))
    decide = array("d", bytes(8 * calls))
    decide_cpu = array("d", bytes(8 * calls))
    n = len(requests)
    gc.collect()
    deadline = _ns() + int(seconds * 1e9)
    started = _ns()
    done = 0
    while done < calls:
        raw = requests[done % n]
        t0 = _ns()
        request = parse(raw)
        c1 = _cpu_ns()
        t1 = _ns()
        check(request, None)
        t2 = _ns()
        c2 = _cpu_ns()
        decode[done] = (t1 - t0) / 1e3
        decide[done] = (t2 - t1) / 1e3
        decide_cpu[done] = (c2 - c1) / 1e3
        done += 1
        if done & 0xFF == 0 and t2 > deadline:
            break
    elapsed = (_ns() - started) / 1e9
    return InProcessResult(
        calls=done,
        seconds=elapsed,
        decision_us=summarize(decide[:done]),
        decision_cpu_us=summarize(decide_cpu[:done]),
        deserialize_us=summarize(decode[:done]),
        stage_us={name: summarize(values) for name, values in sink.stage_samples().items()},
        allowed_share=sink.allowed / done if done else 0.0,
        stages=dict(pipeline.stages),
    )

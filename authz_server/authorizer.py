"""The request path, top to bottom:

    CheckRequest -> parse -> identity -> policy -> risk -> decide -> respond -> log

`Authorizer.check` is synchronous CPU work with no I/O (the decision log is a
queue drained by its own thread), so both transports call it directly.
The stages in force live in one immutable `Runtime` that reloads replace as a
whole, so a call never sees a policy set from one reload and a model from another.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.call import Call, parse_call
from authz_server.decision import Decision, decide
from authz_server.identity.result import Identity
from authz_server.response import build_response
from authz_server.risk.outcome import RISK_DISABLED
from authz_server.stages import IdentityStage, PolicyStage, RiskStage
from authz_server.values import fast_init

_ns = time.perf_counter_ns


@fast_init
@dataclass(frozen=True, slots=True)
class StageTimings:
    """Microseconds spent in each stage of one check."""

    parse_us: float
    identity_us: float
    policy_us: float
    risk_us: float
    response_us: float

    @property
    def total_us(self) -> float:
        return self.parse_us + self.identity_us + self.policy_us + self.risk_us + self.response_us


class DecisionSink(Protocol):
    """Receives every decision after the response is built; must never block."""

    def record(self, call: Call, decision: Decision, timings: StageTimings) -> None: ...


@dataclass(frozen=True, slots=True)
class Runtime:
    """The stages in force. Replaced whole on reload, never mutated."""

    identity: IdentityStage
    policy: PolicyStage
    risk: RiskStage | None = None
    risk_budget_s: float = 0.002
    deadline_margin_s: float = 0.001
    """Time kept back from the gRPC deadline for building and sending the response."""


class DecisionIds:
    """Unique, cheap decision ids: a random per-process prefix and a counter."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}-{next(self._counter):08x}"


class Authorizer:
    def __init__(
        self,
        runtime: Runtime,
        sink: DecisionSink,
        ids: DecisionIds | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._runtime = runtime
        self._clock = clock
        """The server's clock: identity and policy validity read it; risk reads Envoy's request time bounded
        against it (risk/features.py, `behaviour_time`). Simulations replay past days through their own clock."""
        self._sink = sink
        self._next_id = ids or DecisionIds()
        self._swap_lock = threading.Lock()

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    def swap(self, **changes: Any) -> Runtime:
        """Replace some stages atomically; in-flight checks finish on the runtime they started with."""
        with self._swap_lock:
            self._runtime = replace(self._runtime, **changes)
            return self._runtime

    def check(self, request: external_auth_pb2.CheckRequest, time_remaining_s: float | None = None) -> bytes:
        """Decide one call; returns the serialized CheckResponse."""
        runtime = self._runtime
        t0 = _ns()
        call = parse_call(request)
        now = self._clock()
        t1 = _ns()
        identity = runtime.identity.verify(call, now)
        t2 = _ns()
        policy = risk = None
        t3 = t4 = t2
        if isinstance(identity, Identity):
            policy = runtime.policy.evaluate(call, identity, now)
            t3 = _ns()
            # Risk only ever tightens a grant, so a call policy already refuses is not scored.
            if policy.allowed:
                if runtime.risk is None:
                    risk = RISK_DISABLED
                else:
                    budget = runtime.risk_budget_s
                    if time_remaining_s is not None:
                        budget = min(budget, time_remaining_s - runtime.deadline_margin_s)
                    risk = runtime.risk.assess(call, identity, policy, now, budget)
            t4 = _ns()
        decision = decide(self._next_id(), identity, policy, risk)
        response = build_response(decision, call.headers)
        t5 = _ns()
        timings = StageTimings((t1 - t0) / 1e3, (t2 - t1) / 1e3, (t3 - t2) / 1e3, (t4 - t3) / 1e3, (t5 - t4) / 1e3)
        # Behaviour counts every call policy let through (those risk assessed), once the response is built.
        if runtime.risk is not None and risk is not None and policy is not None and isinstance(identity, Identity):
            runtime.risk.observe(call, identity, policy, risk, now)
        self._sink.record(call, decision, timings)
        return response

"""The request path, top to bottom:

    CheckRequest -> parse -> identity -> policy -> risk -> decide -> respond -> log

`Authorizer.check` is synchronous CPU work with no I/O (the decision log is a
queue drained by its own thread), so every transport calls it directly; h2 calls
`check_many` with the Checks one read carried, which share the model's runs.
The stages in force live in one immutable `Runtime` that reloads replace as a
whole, so a call never sees a policy set from one reload and a model from another.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.call import Call, parse_call
from authz_server.decision import Decision, decide
from authz_server.identity.result import Identity, IdentityResult
from authz_server.policy.outcome import PolicyOutcome
from authz_server.response import build_response
from authz_server.risk.outcome import RISK_DISABLED, RiskOutcome
from authz_server.stages import IdentityStage, PolicyStage, RiskCall, RiskStage
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
        return self.check_many(((request, time_remaining_s),))[0]

    def check_many(self, requests: Iterable[tuple[external_auth_pb2.CheckRequest, float | None]]) -> list[bytes]:
        """Decide calls that arrived together, each with its seconds to deadline; returns their responses in order.

        One read from Envoy often carries many Checks: through the benchmark chain at 16 connections most calls
        arrived with 8 or more others. Each goes through parse, identity and policy; then the calls waiting for risk
        are scored in rounds, one model run a round (RiskStage.assess_many), and each call of a round is decided,
        answered, observed and logged. Round k holds every caller's k-th call: a caller's calls are scored in the
        order they came, each having seen the last (its rate, its ids, its walk), as if decided one at a time."""
        runtime = self._runtime
        judged: list[_Judged] = []
        rounds: list[list[int]] = []
        calls_of: dict[str, int] = {}
        batch_t0 = _ns()
        for request, time_remaining_s in requests:
            if time_remaining_s is not None:  # what deciding the calls before it used of its time
                time_remaining_s -= (_ns() - batch_t0) / 1e9
            call = self._judge(runtime, request, time_remaining_s)
            round_ = 0
            if call.risk_call is not None:
                caller = call.risk_call[1].spiffe_id
                round_ = calls_of.get(caller, 0)
                calls_of[caller] = round_ + 1
            if round_ == len(rounds):
                rounds.append([])
            rounds[round_].append(len(judged))
            judged.append(call)
        responses = [b""] * len(judged)
        for members in rounds:
            for index, response in zip(members, self._answer(runtime, [judged[i] for i in members]), strict=True):
                responses[index] = response
        return responses

    def _judge(
        self, runtime: Runtime, request: external_auth_pb2.CheckRequest, time_remaining_s: float | None
    ) -> _Judged:
        """Parse, identity and policy: everything up to the risk stage."""
        t0 = _ns()
        call = parse_call(request)
        now = self._clock()
        t1 = _ns()
        identity = runtime.identity.verify(call, now)
        t2 = _ns()
        policy = risk = risk_call = None
        t3 = t2
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
                    risk_call = (call, identity, policy, now, budget)
        return _Judged(call, identity, policy, risk, risk_call, (t1 - t0) / 1e3, (t2 - t1) / 1e3, (t3 - t2) / 1e3)

    def _answer(self, runtime: Runtime, group: list[_Judged]) -> list[bytes]:
        """Risk for the calls waiting for it, in one run; then each call decided, answered, observed and logged."""
        risk_us = 0.0
        scored = [judged for judged in group if judged.risk_call is not None]
        if scored and runtime.risk is not None:
            t3 = _ns()
            outcomes = runtime.risk.assess_many([judged.risk_call for judged in scored])  # type: ignore[misc]
            risk_us = (_ns() - t3) / 1e3 / len(scored)  # each call's share of the run they shared
            for judged, outcome in zip(scored, outcomes, strict=True):
                judged.risk = outcome
        responses = []
        for judged in group:
            t4 = _ns()
            call, risk_call = judged.call, judged.risk_call
            decision = decide(self._next_id(), judged.identity, judged.policy, judged.risk)
            response = build_response(decision, call.headers)
            t5 = _ns()
            timings = StageTimings(
                judged.parse_us, judged.identity_us, judged.policy_us, risk_us if risk_call else 0.0, (t5 - t4) / 1e3
            )
            # Behaviour counts every call policy let through (those risk assessed), once the response is built.
            if runtime.risk is not None and risk_call is not None and judged.risk is not None:
                runtime.risk.observe(call, risk_call[1], risk_call[2], judged.risk, risk_call[3])
            self._sink.record(call, decision, timings)
            responses.append(response)
        return responses


@dataclass(slots=True)
class _Judged:
    """One call through parse, identity and policy, waiting to be answered."""

    call: Call
    identity: IdentityResult
    policy: PolicyOutcome | None
    risk: RiskOutcome | None
    """None while the call waits for the risk stage, and for a call policy refused."""
    risk_call: RiskCall | None
    """What the risk stage assesses, for a call policy let through while a model is loaded."""
    parse_us: float
    identity_us: float
    policy_us: float

"""Admission: decide only the calls whose answer can still arrive in time; answer the rest at once.

Under overload a server that decides every call in arrival order spends its
CPU on calls whose caller has already given up (Envoy turns a late answer into
`status_on_error`), and every call ends up late. The bounds below keep it deciding
fresh calls instead, and must not refuse what is only ordinary concurrency: a sidecar
Envoy serving 64 concurrent requests keeps 64 Checks outstanding at the server, and
deciding them all takes 64 x ~0.5 ms, far inside Envoy's 250 ms timeout. Bounds of 8
calls in Python and 24 in the core refused 27% (h2) and 64% (aio) of such Checks
(benchmarks/RESULTS.md, "Overload: admission by expected wait"), each a 503 for a
request that would have been allowed. The cheapest refusal is the one the server
never sees, so the first bound is not here:

0. Envoy's circuit breakers on the ext_authz cluster (`max_requests`, `max_pending_requests`: 512 each in every
   configuration this project renders, envoy/bootstrap.py and the Istio DestinationRule). Past them a sidecar
   fails the Check at once, in C++, and answers `status_on_error` (Envoy counts
   `upstream_rq_active_overflow` / `upstream_rq_pending_overflow`); the server spends nothing on the excess
   (Envoy's connection pool: source/common/conn_pool/conn_pool_base.cc, newStreamImpl and
   attachStreamToClient). 512 is about what one process decides within Envoy's 250 ms timeout, so this is a
   safety valve, not the overload control: breakers at 16 refused 70-80% of a sidecar's requests at 64
   concurrent ones (benchmarks/RESULTS.md, "Overload"). `max_streams_per_connection` is advertised in
   SETTINGS_MAX_CONCURRENT_STREAMS too, but Envoy answers it by opening another connection, so it bounds nothing
   there.
1. h2, which sees every call as it arrives: the expected wait (`admit_behind`). A Check is admitted when its
   HEADERS arrive if the calls ahead of it (received, not yet answered) would be decided, at the moving average
   of a decision each, within `max_wait_ms` (100) and in time for its own decision within its deadline. Past it
   the stream is reset with REFUSED_STREAM before its body is read: no header block to encode, the cheapest
   answer this transport has, and HTTP/2's word for "not processed, safe to retry". Envoy writes the Checks it
   has ready together, so a bound in count saw a sidecar's 64 outstanding Checks as up to 64 waiting calls and
   refused those past 32; the expected wait sees ~32-45 ms of work. Refusing still costs a
   call's HEADERS and DATA parsed in Python, ~0.7 of what the transport spends on a decided call (h2's own
   parsing and validation; benchmarks/RESULTS.md, "Overload: admission by expected wait"), so at twice the
   capacity, with every call sent to the server, h2 decided 43-65% of its capacity in time (62-68% per
   CPU-second it got) at 1.5-2x; Envoy's breakers (0.) keep what a sidecar sends within what is decided in time.
2. aio and sync, which see a call only once gRPC's C core hands it over: counts. `max_queued` calls may wait in
   the core for the Python server to take them; past it the core resets the new call's stream at once (the
   client sees CANCELLED), before any Python runs, the cheapest refusal there; a call whose deadline passes
   while it waits there is dropped by the core too. `max_in_flight` calls the Python server holds (aio: being
   read or decided; sync: queued for or on a handler thread). aio: past it grpc.aio refuses the call with
   RESOURCE_EXHAUSTED in Cython, before the handler, the request parse or the decision. sync: grpcio would
   refuse in Python on its one polling thread, which cost the sync transport half its capacity under overload;
   instead the server does not take the next call out of the core until one finishes (transport/sync_gate.py),
   so the excess waits under `max_queued` and is reset there. Shedding in Python comes too late to save much
   on these transports: a call costs about two thirds of its CPU in gRPC's Python layers before the handler
   even starts (benchmarks/RESULTS.md, "The hop"). The defaults (64 and 64) hold the 64 Checks of a busy
   sidecar and a burst beside them; they cap a decided call's wait at about 128 x the time per call.
   h2 has no C core: its count is `max_in_flight + max_queued` calls received and not yet answered, a bound on
   what it holds, not the overload control.
3. The deadline, every transport: a call that reaches the decision with its deadline passed, or leaving less
   than the expected decision time plus `reserve_ms`, is not decided. It gets `SHED_RESPONSE` at once.

`SHED_RESPONSE` is a CheckResponse, not a gRPC error: a denial with HTTP 503,
`retry-after: 1` and `x-authz-reason: overloaded`. With `failure_mode_allow:
false` Envoy turns a gRPC error into `status_on_error`, whose default, 403,
tells the client "you may not" when the truth is "not now"; a 503 says retry
(a client's or Envoy's `retry_on: 5xx` does, ideally to another replica) and
still lets nothing through. The refusals of 1. and 2. are stream resets or gRPC errors, the only answers cheap
enough to give at twice the capacity, so the Envoy configuration this project renders sets
`status_on_error` to 503 as well: every overload answer reads the same.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from enum import StrEnum

from authz_server._proto.envoy.config.core.v3 import base_pb2
from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server._proto.envoy.type.v3 import http_status_pb2
from authz_server._proto.google.rpc import status_pb2
from authz_server.response import DECISION, REASON
from authz_server.transport.config import AdmissionConfig

OVERLOADED = "overloaded"
RETRY_AFTER_S = 1
_GRPC_UNAVAILABLE = 14
_ns = time.perf_counter_ns


class ShedReason(StrEnum):
    DEADLINE = "deadline"
    """The call's deadline had passed, or left less than the expected decision time."""
    QUEUE = "queue"
    """h2: the calls ahead of it would take longer than `max_wait_ms`, or than its deadline leaves, to decide."""


def _header(name: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=name, value=value))


def _shed_response() -> bytes:
    response = external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=_GRPC_UNAVAILABLE, message=OVERLOADED),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=http_status_pb2.ServiceUnavailable),
            headers=[
                _header(DECISION, "deny"),
                _header(REASON, OVERLOADED),
                _header("retry-after", str(RETRY_AFTER_S)),
                _header("content-type", "application/json"),
            ],
            body='{"decision":"deny","reason":"overloaded"}',
        ),
    )
    return response.SerializeToString()


SHED_RESPONSE = _shed_response()
"""The serialized CheckResponse for a call that is not decided: 503, retry-after, nothing let through."""

_INITIAL_COST_S = 0.001
_EWMA_WEIGHT = 1 / 64
"""A new decision moves the expected cost by 1/64: it follows a slower model within ~100 calls, one slow call
(a GC pause) barely moves it."""


class Admission:
    """Counts and bounds one process's calls; shared by the handler threads (sync) or the event loop (aio)."""

    def __init__(self, config: AdmissionConfig) -> None:
        self.config = config
        self._reserve_s = config.reserve_ms / 1000.0
        self._max_wait_s = config.max_wait_ms / 1000.0
        self._cost_s = _INITIAL_COST_S
        self._lock = threading.Lock()
        self.shed: dict[str, int] = dict.fromkeys(ShedReason, 0)
        self.decided = 0
        self.late = 0
        """Calls decided but answered after their deadline: the caller had already been given status_on_error."""

    @property
    def expected_cost_s(self) -> float:
        return self._cost_s

    def shed_counts(self) -> dict[str, int]:
        """Calls shed since start, by reason (a copy, for the decision log's writer thread)."""
        with self._lock:
            return dict(self.shed)

    def admit(self, time_remaining_s: float | None) -> ShedReason | None:
        """None when the call should be decided, else why it is shed (and counted)."""
        if time_remaining_s is None or time_remaining_s >= self._cost_s + self._reserve_s:
            return None
        with self._lock:
            self.shed[ShedReason.DEADLINE] += 1
        return ShedReason.DEADLINE

    def admit_behind(self, ahead: int, time_remaining_s: float | None) -> ShedReason | None:
        """None when a call with `ahead` calls to be decided before it can still be decided in time; else why not
        (counted). Its expected wait is `ahead` x the moving average of a decision: it is shed when that wait passes
        `max_wait_ms`, or when the wait and its own decision would not fit in its deadline."""
        waiting_s = ahead * self._cost_s
        if waiting_s <= self._max_wait_s and (
            time_remaining_s is None
            or time_remaining_s >= waiting_s + self._cost_s + self._reserve_s
            # Too short a deadline even with nothing ahead is no queue's doing: `admit` answers it `overloaded`.
            or time_remaining_s < self._cost_s + self._reserve_s
        ):
            return None
        with self._lock:
            self.shed[ShedReason.QUEUE] += 1
        return ShedReason.QUEUE

    def finished(self, started_ns: int, times_remaining_s: Sequence[float | None]) -> None:
        """Record the calls decided together since `started_ns`, each with what was left of its deadline then."""
        took_s = (_ns() - started_ns) / 1e9
        calls = len(times_remaining_s)
        with self._lock:
            # The moving average is of one decision: a batch's calls took a share each.
            self._cost_s += (took_s / calls - self._cost_s) * _EWMA_WEIGHT
            self.decided += calls
            self.late += sum(1 for remaining in times_remaining_s if remaining is not None and took_s > remaining)


def grpc_options(config: AdmissionConfig) -> list[tuple[str, int]]:
    """gRPC core arguments bounding the calls that wait before any Python runs."""
    return [
        # Below the soft limit nothing is refused; between soft and hard a share growing to 1; above, all.
        ("grpc.server.max_pending_requests", config.max_queued),
        ("grpc.server.max_pending_requests_hard_limit", config.max_queued),
        # Advertised in SETTINGS: a client sends no more streams than this on one connection.
        ("grpc.max_concurrent_streams", config.max_streams_per_connection),
    ]

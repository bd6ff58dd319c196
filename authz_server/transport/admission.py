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
   refused those past 32; the expected wait sees ~32-45 ms of work.
   Flooded, h2 also counts what the socket hid. Decisions are made as the bytes are read, so a call's wait is
   mostly spent unread in the socket while the server decides what it read before in the same turn of the event
   loop (one pass over the connections with bytes to read; a read is up to 256 KiB, ~250 Checks): at 1.5-2x,
   calls received and not yet answered were a few, the probe's decided calls waited 64-94 ms at the median and
   h2load's answers 90-180 ms, well past Envoy's 250 ms timeout at the p99, which the server never saw. So once a
   turn has read more Checks than the process may hold (`max_in_flight + max_queued`, 128: arrivals outrun it; a
   closed loop of at most that many outstanding calls, a sidecar's 64, never can), and for FLOOD_HOLD_S after the
   last such turn, a Check is refused on arrival when the calls open as the turn began plus those it has admitted
   since would take longer than `overload_wait_ms` (8) to decide. Measured interleaved with the rule before it,
   two rounds each (h2, `python -m benchmarks.overload --transports h2`, 2026-11-28 05:07-05:21 UTC, load average
   3-6; benchmarks/RESULTS.md, "Overload: flooded turns"), at 1.2x/1.5x/2x: p99 of decided calls 97-218 /
   122-242 / 109-133 ms -> 42-80 / 55-88 / 35-47 ms (15-32x -> 6-13x the unloaded p99) and h2load's p99
   277-555 / 407-766 / 388-444 ms -> 82-244 / 98-122 / 73-319 ms; the share of capacity decided in time
   91-111 / 36-99 / 47-201% -> 91-120 / 82-111 / 40-49% (per CPU-second 84-103% -> 43-49% at 2x); after main's
   batched decisions, against them (05:37-05:40 UTC, load average 6-7): p99 182-242 -> 45-88 ms, share per
   CPU-second 65-104% -> 63-96%. The old count
   took calls read after their caller had given up for calls in time (no call counted late while h2load saw more
   than 1% of its answers after 250 ms); and a refusal answered at once lets an open-loop client send the next
   call at once: each costs its HEADERS (HPACK decodes every block, in order) and DATA through h2, ~0.7 of what
   the transport spends on a decided call, and at 2x offered they take half the CPU. `overload_wait_ms` equal
   to `max_wait_ms` (100) gives back the old trade.
   Deciding 90% of capacity at 2x would leave ~36 us per refusal against the ~100-150 us measured: out of reach
   in Python with every excess call sent to the server. Envoy's breakers (0.) keep what a sidecar sends within
   what is decided in time; the Envoy side-by-side at 64 connections is unchanged (10.9% denied, the
   workload's 11%), since no turn there reads more than 64 Checks.
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

Why no adaptive LIFO (serve the newest first while a standing queue lasts, drop the oldest): on aio the wait of
a decided call is spent in the C core's FIFO, which Python cannot reorder, and which must hold a sidecar's whole
burst: with `max_in_flight` 128, `max_queued` 16/32/48 reset 218/132/54 of 320 Checks sent in bursts of 64
(direct, aio, 2026-11-28 04:42 UTC), because Python takes one call out of the core per turn of its loop. Under
open-loop overload that queue stays full, so the newest call Python holds has already waited 64 x the time
Python spends per call; even shedding every call in the handler, unparsed, leaves the ~2/3 of a call's CPU
gRPC's Python layers spend before it, 64 x ~0.35 ms = ~22 ms, above 5x the unloaded p99 (3.4-3.8 ms). Measured:
with Python holding at most 8 calls (`max_in_flight` 8), so nothing left to reorder, the probe's decided calls
still waited 18-27 ms at the median and 52-103 ms at the p99 (04:39 UTC, load average 2-9); shedding by
sojourn in the handler meets the p99 and keeps 55-72% of capacity (benchmarks/RESULTS.md, "Why the queue bound
stays at 24"). On h2 every call read in one turn is as new as the others to the server (their time in the socket
is not visible), so there is no age to sort by; what bounds the wait is how much a turn decides, the flooded rule
above. A queue-length or sojourn signal (CoDel) cannot tell open-loop overload from a sidecar's closed loop,
which holds a standing queue of 64 too; a turn reading more calls than the process may hold can.

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

FLOOD_HOLD_S = 2.0
"""h2: how long after the last flooded turn the tighter wait bound holds. Arrivals that outrun the server flood a
turn again within a few turns of its return to `max_wait_ms` (at 1.2x capacity the turns grow by 1.2x each), so a
hold much shorter than a second would spend a good share of an overload growing turns again."""
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
        self._flood_wait_s = min(config.overload_wait_ms, config.max_wait_ms) / 1000.0
        self._flooded_until = 0.0
        self.floods = 0
        """h2: times a turn of the event loop read more Checks than the process may hold, after a quiet spell."""
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

    def flooded(self, now: float) -> None:
        """h2: one turn of the event loop read more Checks than the process may hold (`max_in_flight +
        max_queued`): arrivals outrun it, which a closed loop of at most that many outstanding calls cannot do. For
        FLOOD_HOLD_S from now a Check may wait at most `overload_wait_ms` (counted)."""
        with self._lock:
            if now >= self._flooded_until:
                self.floods += 1
            self._flooded_until = now + FLOOD_HOLD_S

    def admit_behind(
        self, ahead: int, turn_ahead: int, time_remaining_s: float | None, now: float
    ) -> ShedReason | None:
        """None when a call can still be decided in time behind `ahead` calls received and not yet answered; else
        why not (counted). Its expected wait is their number x the moving average of a decision: it is shed when that
        wait passes `max_wait_ms`, or when the wait and its own decision would not fit in its deadline. While flooded
        (see `flooded`) it counts `turn_ahead` instead, the calls open when this turn of the event loop began and those
        it has admitted since, answered or not: the call waited in the socket while they were decided; and the bound
        is `overload_wait_ms`."""
        if now < self._flooded_until:
            waiting_s, bound_s = turn_ahead * self._cost_s, self._flood_wait_s
        else:
            waiting_s, bound_s = ahead * self._cost_s, self._max_wait_s
        if waiting_s <= bound_s and (
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

"""Transport configuration: who may send Checks (section `callers`; the check itself is transport/callers.py) and
admission, how much work one process takes on and what it refuses (section `admission`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from spiffe import SpiffeId


@dataclass(frozen=True)
class CallersConfig:
    """Section `callers`: who may send Checks."""

    mode: Literal["off", "xfcc"] = "off"
    """off: anyone who reaches the port may ask (plain Envoy, sidecar layout); xfcc: the sending proxy's identity,
    from the XFCC element the server's own sidecar appended, must be the call's destination or a gateway."""
    gateways: tuple[str, ...] = ()
    """SPIFFE IDs that may ask about calls to any destination (ingress gateways). Ignored with mode: off."""

    def validate(self) -> list[str]:
        problems = []
        for gateway in self.gateways:
            try:
                SpiffeId(gateway)
            except Exception as exc:
                problems.append(f"gateways: {gateway!r}: {exc}")
        return problems


@dataclass(frozen=True)
class AdmissionConfig:
    max_in_flight: int = 64
    """aio and sync: Checks one process holds in Python at once (aio: being read or decided; sync: queued for or on
    a handler thread); past it aio refuses a call with RESOURCE_EXHAUSTED before it is parsed or decided, and sync
    leaves it waiting in gRPC's C core (max_queued). It holds the 64 Checks a sidecar serving 64 concurrent requests
    keeps outstanding: through Envoy at 64 connections 8 had 64% of requests denied where the workload denies 11%,
    32 had 12-21% on a busy machine, 64 had 11.2-11.6%. Each may hold a 4 MiB message, so this x 4 MiB is part of
    the memory the manifests reserve. h2: it refuses a call (RESOURCE_EXHAUSTED) once
    max_in_flight + max_queued calls are received and not yet answered, a bound on what it holds; max_wait_ms
    answers overload there first."""
    max_queued: int = 64
    """aio and sync: calls that may wait inside gRPC's C core for the server to take them; past it the core resets a
    new call's stream at once, before any Python runs. With max_in_flight it caps a decided call's wait at about
    (max_in_flight + max_queued) x the server's time per call, 128 x ~0.5-0.7 ms at the defaults. Bounds of 8 + 24
    refused 64% of the Checks of a sidecar serving 64 concurrent requests, each a 503 for a request that would
    have been allowed (transport/admission.py)."""
    max_streams_per_connection: int = 1024
    """HTTP/2 streams one client connection may have open at once, advertised in SETTINGS_MAX_CONCURRENT_STREAMS
    (every transport). A client sends no more on that connection: Envoy opens another one (up to its
    max_connections circuit breaker), grpc and nghttp2 clients hold the call back. Envoy's bound on what it sends
    is its max_requests circuit breaker on the ext_authz cluster (envoy/bootstrap.py), not this."""
    max_wait_ms: float = 100.0
    """h2: a Check whose HEADERS arrive behind calls not yet answered is refused at once, unread (HTTP/2
    REFUSED_STREAM: not processed; Envoy answers status_on_error), when their expected decision time (their number
    x the moving average of a decision) passes this, or leaves too little of its deadline for its own decision.
    The 64 Checks one sidecar keeps outstanding at 64 concurrent requests are ~32-45 ms of work; a bound of 32
    calls instead had 27% of such requests denied where the workload denies 11%. Lower it to trade throughput
    under overload for the latency of decided calls."""
    overload_wait_ms: float = 8.0
    """h2, while flooded: once one turn of the event loop has read more Checks than the process may hold
    (max_in_flight + max_queued, which no closed loop of a sidecar's 64 outstanding Checks can do), and for 2 s
    after the last such turn, a Check is refused on arrival when the calls open as the turn began and those it has
    admitted since would take longer than this to decide (capped at max_wait_ms). A turn is one pass of the event
    loop over the connections with bytes to read; a call read late in it waited in the socket while the earlier ones
    were decided, which the count of calls received and not yet answered alone does not see. Lower it for the latency
    of decided calls under overload, raise it (up to max_wait_ms: off) for their number."""
    reserve_ms: float = 1.0
    """A call is decided only when its deadline leaves at least this much beyond the expected decision time (the
    moving average of recent decisions); otherwise it is answered at once with `overloaded`."""

    def validate(self) -> list[str]:
        problems = []
        if self.max_in_flight < 1:
            problems.append(f"max_in_flight: must be >= 1, got {self.max_in_flight}")
        if self.max_queued < 0:
            problems.append(f"max_queued: must be >= 0, got {self.max_queued}")
        if self.max_streams_per_connection < 1:
            problems.append(f"max_streams_per_connection: must be >= 1, got {self.max_streams_per_connection}")
        if self.max_wait_ms < 0:
            problems.append(f"max_wait_ms: must be >= 0, got {self.max_wait_ms}")
        if self.overload_wait_ms < 0:
            problems.append(f"overload_wait_ms: must be >= 0, got {self.overload_wait_ms}")
        if self.reserve_ms < 0:
            problems.append(f"reserve_ms: must be >= 0, got {self.reserve_ms}")
        return problems

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
    max_in_flight: int = 32
    """Checks one process holds in Python at once (aio: being read or decided; sync: queued for or on a handler
    thread); past it aio refuses a call with RESOURCE_EXHAUSTED before it is parsed or decided, and sync leaves it
    waiting in gRPC's C core (max_queued). The h2 transport has no C core to queue in: it refuses a call once
    max_in_flight + max_queued calls are received and not yet answered."""
    max_queued: int = 64
    """Calls that may wait inside gRPC's C core for the server to take them; past it the core resets a new call's
    stream at once, before any Python runs. With max_in_flight it caps a decided call's wait at about
    (max_in_flight + max_queued) x the server's time per call: 32 x ~0.5-0.7 ms at the defaults. Smaller bounds cut
that wait but refuse bursts the server would have decided (transport/admission.py)."""
    max_streams_per_connection: int = 1024
    """HTTP/2 streams one client connection may have open at once, advertised in SETTINGS_MAX_CONCURRENT_STREAMS
    (every transport). A client sends no more on that connection: Envoy opens another one (up to its
    max_connections circuit breaker), grpc and nghttp2 clients hold the call back. Envoy's bound on what it sends
    is its max_requests circuit breaker on the ext_authz cluster (envoy/bootstrap.py), not this."""
    max_wait_ms: float = 100.0
    """h2: a Check is answered `overloaded` on arrival, unread, when the calls ahead of it (their number x the moving
    average of a decision, plus the time its bytes waited to be read) would make it wait longer than this, or
    longer than its deadline leaves. A burst, or a closed loop of callers (64 Checks outstanding from one sidecar
    are ~32 ms), waits within it."""
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
        if self.reserve_ms < 0:
            problems.append(f"reserve_ms: must be >= 0, got {self.reserve_ms}")
        return problems

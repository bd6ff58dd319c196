"""The sync transport's in-flight bound, kept in gRPC's C core instead of on grpcio's polling thread.

grpcio's thread-pool server takes every call out of the C core as soon as it arrives and, past
`maximum_concurrent_rpcs`, refuses it in Python on its one polling thread: under overload that thread spent the
CPU the decisions needed, and the sync transport decided only 49-52% of its capacity at 1.2x-2x offered
(benchmarks/RESULTS.md, "Overload"). `InFlightGate` instead stops asking the core for the next Check while
`max_in_flight` calls are in Python, and asks again when one finishes. Meanwhile new calls wait in the core's
pending queue, bounded by `grpc.server.max_pending_requests` (`admission.max_queued`); past it the core resets
them with no Python at all, as it does for the aio transport.

grpcio has no public hook for this; the gate wraps the core server object grpcio keeps in `_Server._state.server`
and the thread pool it hands calls to. `install` checks both are where it expects them and raises otherwise, so
an incompatible grpcio fails at start (and in tests/ops/test_sync_gate.py) rather than serving unbounded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc


class GatedPool(futures.ThreadPoolExecutor):
    """The handler pool: counts the calls grpcio hands it and tells the gate when each one is done."""

    def __init__(self, max_workers: int) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix="check")
        self.gate: InFlightGate | None = None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        gate = self.gate
        if gate is None:
            return super().submit(fn, *args, **kwargs)
        gate.entered()
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            gate.left()
            raise
        # A done-callback runs whether the handler returned, raised or was cancelled before it ran.
        future.add_done_callback(lambda _: gate.left())
        return future


class InFlightGate:
    """Asks the C core for the next call of `method` only while fewer than `limit` calls are in the pool."""

    def __init__(self, core: Any, method: bytes | str, limit: int) -> None:
        self._core = core
        self._method = method
        self._limit = limit
        self._lock = threading.Lock()
        self._in_flight = 0
        self._deferred: tuple[Any, ...] | None = None
        self._closed = False

    def __getattr__(self, name: str) -> Any:
        # Everything but the request for the next gated call goes to the core server unchanged.
        return getattr(self._core, name)

    def request_registered_call(self, cq: Any, call_cq: Any, method: Any, tag: Any) -> None:
        if method == self._method:
            with self._lock:
                if not self._closed and self._in_flight >= self._limit:
                    self._deferred = (cq, call_cq, method, tag)
                    return
        self._core.request_registered_call(cq, call_cq, method, tag)

    def shutdown(self, cq: Any, tag: Any) -> None:
        # A deferred request must reach the core before its shutdown, which then fails it (grpcio refuses requests
        # after shutdown): otherwise grpcio waits for its answer forever.
        with self._lock:
            self._closed = True
            deferred, self._deferred = self._deferred, None
        if deferred is not None:
            self._core.request_registered_call(*deferred)
        self._core.shutdown(cq, tag)

    def entered(self) -> None:
        with self._lock:
            self._in_flight += 1

    def left(self) -> None:
        with self._lock:
            self._in_flight -= 1
            deferred = None
            if self._deferred is not None and self._in_flight < self._limit:
                deferred, self._deferred = self._deferred, None
        if deferred is not None:
            self._core.request_registered_call(*deferred)


def install(server: grpc.Server, pool: GatedPool, method: str, limit: int) -> InFlightGate:
    """Put the gate between grpcio's sync `server` and its core; `pool` must be the server's thread pool."""
    state = getattr(server, "_state", None)
    core = getattr(state, "server", None)
    if state is None or core is None or getattr(state, "thread_pool", None) is not pool:
        raise RuntimeError(
            f"grpcio {grpc.__version__}: the sync server's internals moved; the in-flight gate needs review"
        )
    if not callable(getattr(core, "request_registered_call", None)):
        raise RuntimeError(f"grpcio {grpc.__version__}: no request_registered_call on the core server")
    gate = InFlightGate(core, method, limit)
    state.server = gate
    pool.gate = gate
    return gate

"""The sync transport's in-flight gate over real gRPC: past `max_in_flight` calls wait in the C core (up to
`max_queued`) and are taken when a call finishes; past both the core refuses them without any Python; stopping
the server while a request is held back does not hang it.

The handler here blocks on an event, so that exactly how many calls are in Python at once can be observed.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc

from authz_server.transport.admission import grpc_options
from authz_server.transport.config import AdmissionConfig
from authz_server.transport.sync_gate import GatedPool, install

SERVICE = "test.Gate"
METHOD = f"/{SERVICE}/Hold"


class Holding:
    """A Hold handler: records how many calls run at once and waits for `release`."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.started = 0

    def __call__(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        with self.lock:
            self.running += 1
            self.started += 1
            self.most = max(self.most, self.running)
        try:
            self.release.wait(timeout=30)
            return data
        finally:
            with self.lock:
                self.running -= 1


def gated_server(handler: Holding, max_in_flight: int, max_queued: int, threads: int = 8) -> tuple[grpc.Server, int]:
    config = AdmissionConfig(max_in_flight=max_in_flight, max_queued=max_queued)
    pool = GatedPool(threads)
    server = grpc.server(pool, options=grpc_options(config), maximum_concurrent_rpcs=2 * max_in_flight)
    method = grpc.unary_unary_rpc_method_handler(handler, request_deserializer=None, response_serializer=None)
    server.add_registered_method_handlers(SERVICE, {"Hold": method})
    install(server, pool, METHOD, max_in_flight)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def wait_until(condition: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def outcome(call: grpc.Future) -> str:
    try:
        call.result()
    except grpc.RpcError as exc:
        return exc.code().name  # type: ignore[no-any-return]
    return "ok"


def call_all(port: int, count: int) -> list[str]:
    """`count` calls at once over one connection; each call's outcome ('ok' or the status name)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        hold = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        calls = [hold.future(b"x", timeout=30) for _ in range(count)]
        return [outcome(call) for call in calls]


def test_calls_past_the_in_flight_bound_wait_in_the_core_and_are_decided_when_one_finishes() -> None:
    handler = Holding()
    server, port = gated_server(handler, max_in_flight=2, max_queued=3)
    try:
        with futures.ThreadPoolExecutor(1) as client:
            outcomes = client.submit(call_all, port, 5)
            wait_until(lambda: handler.running == 2)
            time.sleep(0.3)  # the other three have arrived by now: they must still be waiting, not running
            assert handler.running == 2 and handler.started == 2
            handler.release.set()
            assert outcomes.result(timeout=30) == ["ok"] * 5
        assert handler.most == 2
    finally:
        server.stop(None).wait()


def test_past_both_bounds_the_core_refuses_before_any_python_and_the_rest_are_decided() -> None:
    handler = Holding()
    server, port = gated_server(handler, max_in_flight=2, max_queued=3)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            hold = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
            calls = [hold.future(b"x", timeout=30) for _ in range(40)]
            # 2 in Python, 3 (the core's bound admits one more when the queue is exactly full) waiting in the core:
            # the other 34-35 are answered while the handlers still hold.
            wait_until(lambda: sum(call.done() for call in calls) >= 34)
            refused = [outcome(call) for call in calls if call.done()]
            wait_until(lambda: handler.running == 2)  # a pool thread may start its call only now
            time.sleep(0.1)
            assert handler.started == 2
            handler.release.set()
            result = [outcome(call) for call in calls]
        # grpcio's own refusal (RESOURCE_EXHAUSTED, in Python) never ran: every refusal is the core's reset.
        assert set(refused) == {"CANCELLED"} and len(refused) in (34, 35), refused
        assert result.count("ok") == 40 - len(refused) and handler.started == result.count("ok"), result
        assert handler.most == 2
    finally:
        server.stop(None).wait()


def test_stopping_while_a_request_is_held_back_does_not_hang() -> None:
    handler = Holding()
    server, port = gated_server(handler, max_in_flight=1, max_queued=2)
    with futures.ThreadPoolExecutor(1) as client:
        outcomes = client.submit(call_all, port, 3)
        wait_until(lambda: handler.running == 1)
        started = time.monotonic()
        stopped = server.stop(0.5)
        handler.release.set()
        assert stopped.wait(timeout=10), "the server did not stop"
        assert time.monotonic() - started < 10
        result = outcomes.result(timeout=30)
    assert "ok" in result, result  # the call in flight finished within the grace period
    # The request held back is released to the core at shutdown: it may take one waiting call during the grace.
    assert handler.most <= 2


def test_the_gate_refuses_a_server_that_does_not_hand_calls_to_its_pool() -> None:
    pool = GatedPool(1)
    other = grpc.server(futures.ThreadPoolExecutor(1))
    try:
        install(other, pool, METHOD, 1)
    except RuntimeError as exc:
        assert "in-flight gate" in str(exc)
    else:
        raise AssertionError("a server built on another pool was accepted")
    finally:
        pool.shutdown()

"""The gRPC surface on grpcio: Authorization/Check, grpc.health.v1 and server reflection.

Two of the three transports carry the same synchronous decision path here (the third, `h2`, is h2_server.py and
calls the same path, `decide_admitted_many`, for the Checks one read completed):
- `sync`: grpcio's thread-pool server. Each Check runs on a pool thread.
- `aio`: grpc.aio. Each Check runs on the event loop; the decision path never
  awaits, so a check costs one callback and no thread handoff.
benchmarks/RESULTS.md compares them; Config.transport picks one.

Both admit a call before deciding it (admission.py): the request arrives as
bytes and is parsed only once the call is admitted, so a shed call costs no
parse of what may be a 4 MiB message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.authorizer import Authorizer
from authz_server.call import MalformedRequest, decode_request
from authz_server.transport.admission import SHED_RESPONSE, Admission, grpc_options
from authz_server.transport.callers import CheckCallers
from authz_server.transport.sync_gate import GatedPool, install
from authz_server.transport.unix_socket import allow_group, socket_path

log = logging.getLogger("authz_server.transport")

AUTHORIZATION_SERVICE = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name
SERVICE_NAMES = (AUTHORIZATION_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)
_CHECK = "Check"
CHECK_METHOD = f"/{AUTHORIZATION_SERVICE}/{_CHECK}"

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""The largest request message any transport accepts (grpcio's own default)."""

# Envoy multiplexes every check of one worker thread over one HTTP/2 connection,
# so the server must not cap concurrent streams: a cap makes Envoy refuse
# streams, which failure_mode_allow: false turns into denies.
SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.so_reuseport", 1),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]

NOT_READY = "authorization stages are still loading"
_PROBES = 2
_ns = time.perf_counter_ns


class AuthorizerSlot:
    """Holds the Authorizer once the stages have loaded; None until then."""

    def __init__(self) -> None:
        self.authorizer: Authorizer | None = None
        self.callers: CheckCallers | None = None
        """None: anyone who reaches the port may ask (callers.mode: off)."""


class CheckRefused(Exception):
    """A Check answered with a gRPC error instead of a decision: a message that does not parse, or a sender that
    may not ask about this destination (transport/callers.py)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def decide_admitted(
    authorizer: Authorizer,
    admission: Admission,
    data: bytes,
    remaining: float | None,
    callers: CheckCallers | None = None,
    metadata: Any = None,
) -> bytes:
    """Decide one serialized CheckRequest with `remaining` seconds to its deadline, or shed it unparsed.

    Raises CheckRefused for a malformed message or a sender `callers` refuses (`metadata`: the call's own)."""
    answer = decide_admitted_many(authorizer, admission, ((data, remaining, metadata),), callers)[0]
    if isinstance(answer, CheckRefused):
        raise answer
    return answer


def decide_admitted_many(
    authorizer: Authorizer,
    admission: Admission,
    calls: Iterable[tuple[bytes, float | None, Any]],
    callers: CheckCallers | None = None,
) -> list[bytes | CheckRefused]:
    """`decide_admitted` for (serialized CheckRequest, seconds to its deadline, its metadata) that arrived together,
    in order: the admitted ones are decided by one `Authorizer.check_many`. Each answer is the response, or the
    CheckRefused to answer with."""
    answers: list[bytes | CheckRefused] = []
    admitted: list[tuple[int, external_auth_pb2.CheckRequest, float | None]] = []
    for data, remaining, metadata in calls:
        if admission.admit(remaining) is not None:
            answers.append(SHED_RESPONSE)
            continue
        try:
            request = decode_request(data)
        except MalformedRequest as exc:
            answers.append(CheckRefused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)))
            continue
        if callers is not None and (refusal := callers.refusal(request, metadata)):
            answers.append(CheckRefused(grpc.StatusCode.PERMISSION_DENIED, refusal))
            continue
        admitted.append((len(answers), request, remaining))
        answers.append(SHED_RESPONSE)  # replaced by its decision below
    if admitted:
        started = _ns()
        responses = authorizer.check_many([(request, remaining) for _, request, remaining in admitted])
        admission.finished(started, [remaining for _, _, remaining in admitted])
        for (index, _, _), response in zip(admitted, responses, strict=True):
            answers[index] = response
    return answers


def _sync_check(slot: AuthorizerSlot, admission: Admission) -> Callable[[bytes, grpc.ServicerContext], bytes]:
    def check(data: bytes, context: grpc.ServicerContext) -> bytes:
        authorizer = slot.authorizer
        if authorizer is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, NOT_READY)
        callers = slot.callers
        metadata = context.invocation_metadata() if callers is not None else None
        try:
            return decide_admitted(authorizer, admission, data, context.time_remaining(), callers, metadata)  # type: ignore[arg-type]
        except CheckRefused as refused:
            context.abort(refused.code, str(refused))
            raise  # not reached: abort raises

    return check


def _aio_check(slot: AuthorizerSlot, admission: Admission) -> Callable[[bytes, grpc.aio.ServicerContext], Any]:
    async def check(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        authorizer = slot.authorizer
        if authorizer is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, NOT_READY)
        callers = slot.callers
        metadata = context.invocation_metadata() if callers is not None else None
        try:
            return decide_admitted(authorizer, admission, data, context.time_remaining(), callers, metadata)  # type: ignore[arg-type]
        except CheckRefused as refused:
            await context.abort(refused.code, str(refused))
            raise  # not reached: abort raises

    return check


def add_check_method(server: grpc.Server | grpc.aio.Server, check: Callable[..., Any]) -> None:
    """Check as a registered method: gRPC core matches its path itself and hands the call straight to it.

    A generic handler made every call ask Python which handler serves the path first; registering the method
    cut the grpc.aio floor's CPU per check by 3-7% under h2load, and 28-30% together with uvloop
    (benchmarks/RESULTS.md, "What each change bought").
    """
    handler = grpc.unary_unary_rpc_method_handler(
        check,
        # Parsed after admission; Authorizer.check returns the CheckResponse already serialized.
        request_deserializer=None,
        response_serializer=None,
    )
    server.add_registered_method_handlers(AUTHORIZATION_SERVICE, {_CHECK: handler})


class HealthReporter:
    """Sets grpc.health.v1 status for the whole server and for the Authorization service."""

    def __init__(self, servicer: Any, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._servicer = servicer
        self._loop = loop

    def _set_all(self, status: int) -> None:
        for name in ("", AUTHORIZATION_SERVICE):
            result = self._servicer.set(name, status)
            if asyncio.iscoroutine(result):
                assert self._loop is not None
                if self._loop.is_running() and _running_loop() is not self._loop:
                    asyncio.run_coroutine_threadsafe(result, self._loop).result(timeout=5)
                else:
                    self._loop.create_task(result)

    def serving(self) -> None:
        self._set_all(health_pb2.HealthCheckResponse.SERVING)

    def not_serving(self) -> None:
        self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _bind(server: grpc.Server | grpc.aio.Server, listen: str) -> int:
    """Listen on HOST:PORT (returns the port) or unix:/PATH (returns 1, gRPC's answer for a socket file)."""
    port: int = server.add_insecure_port(listen)
    path = socket_path(listen)
    if path is not None:
        allow_group(path)
    return port


def build_sync_server(
    slot: AuthorizerSlot, listen: str, threads: int, admission: Admission
) -> tuple[grpc.Server, HealthReporter, int]:
    pool = GatedPool(threads)
    server = grpc.server(
        pool,
        options=SERVER_OPTIONS + grpc_options(admission.config),
        # The gate keeps Check within max_in_flight before Python sees the call; grpcio's own bound, refusing in
        # Python on its polling thread, leaves room beside them for kubelet's readiness and liveness probes
        # (grpc.health.v1 on this port), which a server at max_in_flight must still answer.
        maximum_concurrent_rpcs=admission.config.max_in_flight + _PROBES,
    )
    add_check_method(server, _sync_check(slot, admission))
    install(server, pool, CHECK_METHOD, admission.config.max_in_flight)
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    reflection.enable_server_reflection(SERVICE_NAMES, server)
    port = _bind(server, listen)
    reporter = HealthReporter(servicer)
    # grpcio's health servicer starts out reporting SERVING for the whole server.
    reporter.not_serving()
    return server, reporter, port


async def build_aio_server(
    slot: AuthorizerSlot, listen: str, loop: asyncio.AbstractEventLoop, admission: Admission
) -> tuple[grpc.aio.Server, HealthReporter, int]:
    # grpc.aio refuses calls past maximum_concurrent_rpcs (RESOURCE_EXHAUSTED) before any handler runs.
    server = grpc.aio.server(
        options=SERVER_OPTIONS + grpc_options(admission.config),
        maximum_concurrent_rpcs=admission.config.max_in_flight,
    )
    add_check_method(server, _aio_check(slot, admission))
    servicer = health.aio.HealthServicer()
    # grpcio's health servicer starts out reporting SERVING for the whole server.
    for name in ("", AUTHORIZATION_SERVICE):
        await servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    reflection.enable_server_reflection(SERVICE_NAMES, server)
    port = _bind(server, listen)
    reporter = HealthReporter(servicer, loop)
    return server, reporter, port

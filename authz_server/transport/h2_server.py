"""The `h2` transport: gRPC served on asyncio (uvloop) with the pure-Python `h2` library.

Why a second implementation of the gRPC server side: grpc.aio spends about as
much CPU carrying a Check as the whole decision costs (its Cython layer, a
completion-queue poller thread waking the loop for every event). This
transport keeps one thread: each connection is an asyncio Protocol, `h2`
turns bytes into events, and the Checks one read completed are decided
together in the same callback (one model run for all of them,
`Authorizer.check_many`) and answered in the same write (benchmarks/RESULTS.md,
"The h2 transport", measures it against grpc.aio on the floor and with the
pipeline).

What it serves, for what the sidecar Envoy and a kubelet ask:
- `envoy.service.auth.v3.Authorization/Check` (unary; identity deflate and the
  like are refused: Envoy never compresses a Check),
- `grpc.health.v1.Health/Check` and `Health/Watch` (the status now, then each
  change, until the client leaves or the server drains),
- `grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo` (what
  `grpcurl list` asks; bidirectional: each request answered as it arrives by
  grpcio-reflection's servicer, h2_reflection.py, so the answers are the grpc
  transports' own; grpc-status 0 once the client half-closes). Like the grpc
  transports, not `grpc.reflection.v1`: grpcio-reflection has no servicer for it
  and grpcurl falls back to v1alpha.
No TLS, as the other transports: Envoy reaches the server over loopback, the
pod network behind a NetworkPolicy, or a Unix socket.

Admission (admission.py) sees each call here as its HEADERS arrive. A Check whose expected wait, the calls received
and not yet answered x the moving average of a decision, passes `admission.max_wait_ms` or what its deadline
(`grpc-timeout`, counted from the moment the bytes that carried the call were read) leaves is refused at once with
RST_STREAM REFUSED_STREAM, before its body is read, and counted as shed (`queue`). Once one turn of the event loop
has read more Checks than `max_in_flight + max_queued` (flooded), and for two seconds after, the wait counted is that
of the calls open as the turn began and those it has admitted since, against `admission.overload_wait_ms`: a call
read late in a turn waited in the socket while the earlier ones were decided. Past `max_in_flight +
max_queued` such calls, a bound on what the process holds, a new one is refused with RESOURCE_EXHAUSTED. Neither
applies to grpc.health.v1's Check, which kubelet's probes send on this port and which must be answered under
overload, not refused beside the Checks: answered inline, it costs little and holds nothing; a Watch or reflection
stream counts until it ends, as grpc.aio counts it, so streams a client keeps open stay bounded. A call admitted
that can no longer be decided in time when its body is whole gets SHED_RESPONSE, through `decide_admitted_many`
like the rest.

Bounds on what a client can make this process hold, in bytes or in count:
one message at most MAX_MESSAGE_BYTES, every message being received and every
reflection answer the client has not taken yet at most MAX_BUFFERED_BYTES
together, one reflection stream's untaken answers at most MAX_MESSAGE_BYTES
(the call that would pass any of these is refused),
header blocks at most MAX_HEADER_LIST_BYTES decoded and 4 CONTINUATION frames
of at most 16 KiB (HTTP/2's default frame size, advertised) while they arrive,
MAX_CONCURRENT_STREAMS open streams a connection, MAX_CONNECTIONS connections,
and a connection whose peer stops reading is not read either once
WRITE_BUFFER_HIGH bytes wait for it (a ping flood cannot grow the write
buffer). A connection so holds at most ~0.2 MiB (header frames, one partial
frame, its write buffer and the answers to one read), and `h2` bounds the
closed streams it remembers. Pings are answered, not rate-limited: a flood
costs CPU, not memory.

SIGTERM (`drain`): the listener closes, every connection gets GOAWAY
(last stream 2^31-1 with a PING, then, once the PING returns, the last stream
actually seen, as grpc-core does), calls already received are finished (an
open reflection stream goes on answering until the client half-closes it, as
grpc.aio's stop(grace) lets it), Health/Watch streams end with grpc-status 0, and
connections close when idle or when the grace period ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.frame_buffer
import h2.settings
import h2.stream
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2
from hyperframe.frame import GoAwayFrame

from authz_server.transport.admission import Admission
from authz_server.transport.callers import XFCC_METADATA
from authz_server.transport.grpc_server import (
    AUTHORIZATION_SERVICE,
    MAX_MESSAGE_BYTES,
    NOT_READY,
    AuthorizerSlot,
    CheckRefused,
    decide_admitted_many,
)
from authz_server.transport.h2_reflection import FRAME_HEADER, REFLECTION_PATH, Reflection, message_end, split_messages
from authz_server.transport.unix_socket import allow_group, socket_path

log = logging.getLogger("authz_server.transport.h2")

CHECK_PATH = f"/{AUTHORIZATION_SERVICE}/Check".encode()
HEALTH_SERVICE = "grpc.health.v1.Health"
HEALTH_CHECK_PATH = f"/{HEALTH_SERVICE}/Check".encode()
HEALTH_WATCH_PATH = f"/{HEALTH_SERVICE}/Watch".encode()
_PATHS = (CHECK_PATH, HEALTH_CHECK_PATH, HEALTH_WATCH_PATH, REFLECTION_PATH)

MAX_HEADER_LIST_BYTES = 16 * 1024
"""Decoded header block of one request (grpc-core's default cap is 8 KiB); an XFCC with a chain is a few KiB."""
_CONTINUATION_FRAMES = 4
"""h2 holds a header block's frames until its last one arrives, by default up to 64 CONTINUATIONs of 16 KiB: 1 MiB
a connection. A block within MAX_HEADER_LIST_BYTES fits in a HEADERS frame and one CONTINUATION when the sender
fills its frames; 4 leaves room for one that does not, and bounds what a connection holds there at 64 KiB."""
MAX_CONCURRENT_STREAMS = 1024
"""Advertised per connection at most (`admission.max_streams_per_connection` may set less). Envoy opens another
connection past it rather than fail a call; admission refuses calls well before it (max_in_flight + max_queued for
the whole process)."""
MAX_BUFFERED_BYTES = 32 * 1024 * 1024
"""Every partly received message of the process together: eight of the largest a call may send."""
MAX_CONNECTIONS = 1024
WRITE_BUFFER_HIGH = 64 * 1024
"""A connection stops being read while this much waits to be written to its peer (an answer is ~0.6 KiB)."""
_LAST_STREAM_ID = 2**31 - 1

# h2 reads this module constant on every CONTINUATION frame; it has no setting for it.
h2.frame_buffer.CONTINUATION_BACKLOG = _CONTINUATION_FRAMES


def _frame_name(frame: object) -> str:
    return type(frame).__name__


# h2 formats every frame it receives for a trace log, `logger.trace("Received frame: %s", repr(frame))`, before its
# default logger drops the line: hyperframe's repr serializes the frame's body again and hex-dumps it, 8 µs for the
# 1.5 KB DATA frame of a Check and 4 µs for its HEADERS (timeit, best of 9), ~12 µs of every Check on this transport.
# That call is the only `repr` in h2.connection (h2 4.x), so a module global of that name stands in for the builtin
# there: the frame's type, what a trace line needs to tell frames apart.
h2.connection.repr = _frame_name  # type: ignore[attr-defined]
_GRPC_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}

_RESPONSE_HEADERS = ((b":status", b"200"), (b"content-type", b"application/grpc"))
_OK_TRAILERS = ((b"grpc-status", b"0"),)

# A unary answer's frames are built here, not by h2's send_headers/send_data/send_headers: those three calls cost
# 58-63 µs an answer on a busy 2-core box (35-39 on a quieter one: h2's frame objects, validation flags and state
# checks, each frame serialized on its own), building them here 16-19 µs (545-byte answer, batches of 90, best of
# 3; benchmarks/RESULTS.md, "Writing an answer"). h2 still makes every state change it would make and encodes the
# header blocks with its own HPACK encoder, so the bytes on the wire are the ones h2 would send
# (`_Connection._answer_unary`).
_HEADERS, _DATA = 0x1, 0x0
_END_HEADERS, _END_STREAM = 0x4, 0x1
_ANSWER_INPUTS = (
    (h2.connection.ConnectionInputs.SEND_HEADERS, h2.stream.StreamInputs.SEND_HEADERS),
    (h2.connection.ConnectionInputs.SEND_DATA, h2.stream.StreamInputs.SEND_DATA),
    (h2.connection.ConnectionInputs.SEND_HEADERS, h2.stream.StreamInputs.SEND_HEADERS),
)
"""What h2's send_headers, send_data and send_headers(end_stream=True) feed its state machines, in order."""


def _frame_header(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    return length.to_bytes(3, "big") + bytes((kind, flags)) + stream_id.to_bytes(4, "big")


_XFCC = XFCC_METADATA.encode()
Trailers = list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...]


def parse_grpc_timeout(value: bytes) -> float | None:
    """Seconds from a `grpc-timeout` value (1-8 digits and a unit), or None when it does not parse."""
    digits, unit = value[:-1], value[-1:]
    if not 0 < len(digits) <= 8 or not digits.isdigit() or unit not in _GRPC_TIMEOUT_UNITS:
        return None
    return int(digits) * _GRPC_TIMEOUT_UNITS[unit]


def _percent_encode(message: str) -> bytes:
    """grpc-message is percent-encoded UTF-8 (the gRPC HTTP/2 spec), so any text survives the header."""
    out = bytearray()
    for byte in message.encode("utf-8", "replace"):
        out += bytes((byte,)) if 0x20 <= byte <= 0x7E and byte != 0x25 else b"%%%02X" % byte
    return bytes(out)


def _status_trailers(code: grpc.StatusCode, message: str) -> list[tuple[bytes, bytes]]:
    return [(b"grpc-status", str(code.value[0]).encode()), (b"grpc-message", _percent_encode(message))]


Watcher = Callable[[int], None]


class HealthStatus:
    """grpc.health.v1 status by service name; `set` has the signature HealthReporter calls (from any thread)."""

    def __init__(self, services: tuple[str, ...]) -> None:
        self._status = dict.fromkeys(services, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._watchers: dict[str, set[Watcher]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        """The loop the watchers live on, once the server listens."""

    def set(self, service: str, status: int) -> None:
        changed = self._status.get(service) != status
        self._status[service] = status
        if not changed or not self._watchers.get(service) or self.loop is None:
            return
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is self.loop:
            # At once: on SIGTERM the drain that ends every Watch follows in the same callback.
            self._notify(service, status)
        else:
            self.loop.call_soon_threadsafe(self._notify, service, status)

    def _notify(self, service: str, status: int) -> None:
        for watcher in list(self._watchers.get(service, ())):
            watcher(status)

    def watch(self, service: str, watcher: Watcher) -> int:
        """Call `watcher` with each new status of `service`; the status now (SERVICE_UNKNOWN for an unknown one)."""
        self._watchers.setdefault(service, set()).add(watcher)
        status: int = self._status.get(service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
        return status

    def unwatch(self, service: str, watcher: Watcher) -> None:
        self._watchers.get(service, set()).discard(watcher)

    @staticmethod
    def service(data: bytes) -> str:
        try:
            name: str = health_pb2.HealthCheckRequest.FromString(data).service
        except DecodeError:
            raise CheckRefused(grpc.StatusCode.INVALID_ARGUMENT, "HealthCheckRequest does not parse") from None
        return name

    def answer(self, data: bytes) -> bytes:
        service = self.service(data)
        status = self._status.get(service)
        if status is None:
            raise CheckRefused(grpc.StatusCode.NOT_FOUND, f"unknown service {service!r}")
        return health_message(status)


def health_message(status: int) -> bytes:
    reply: bytes = health_pb2.HealthCheckResponse(status=status).SerializeToString()
    return reply


@dataclass
class _Stream:
    path: bytes
    deadline: float | None
    metadata: list[tuple[str, str]]
    body: list[bytes] = field(default_factory=list)
    size: int = 0
    answering: bool = False
    need: int = FRAME_HEADER
    """A streaming call: the bytes of `body` that make its next message whole."""
    started: bool = False
    """A streaming call: its response headers are out, an error now goes in trailers."""
    unsent: int = 0
    """A streaming call: bytes of its answers waiting for the client's window (counted in the buffered bytes)."""


Checks = Callable[[list[tuple[bytes, float | None, list[tuple[str, str]]]]], list[bytes | CheckRefused]]
"""The Checks one read completed, each (serialized CheckRequest, seconds to its deadline or None, its XFCC
metadata) -> each one's serialized response, or the CheckRefused to answer it with; raises CheckRefused when none
can be answered."""


def authorizer_checks(slot: AuthorizerSlot, admission: Admission) -> Checks:
    """The decision path behind Check, the same one the grpc transports call."""

    def checks(calls: list[tuple[bytes, float | None, list[tuple[str, str]]]]) -> list[bytes | CheckRefused]:
        authorizer = slot.authorizer
        if authorizer is None:
            raise CheckRefused(grpc.StatusCode.UNAVAILABLE, NOT_READY)
        return decide_admitted_many(authorizer, admission, calls, slot.callers)

    return checks


class H2Server:
    """The process's listener, its connections and the bounds they share."""

    def __init__(
        self,
        checks: Checks,
        max_open: int,
        max_streams: int = MAX_CONCURRENT_STREAMS,
        admission: Admission | None = None,
        after_answers: Callable[[], None] | None = None,
    ) -> None:
        self.checks = checks
        self.after_answers = after_answers
        """Run once the answers to a read's Checks are written (the decision log serialises its lines there)."""
        self.admission = admission
        """Sheds a Check on arrival when the calls ahead of it cannot be decided in time (None: count only)."""
        self.health = HealthStatus(("", AUTHORIZATION_SERVICE))
        self.reflection = Reflection()
        self.max_open = max_open
        """Calls received and not yet answered, for the whole process; past it a new call is refused."""
        self.open_calls = 0
        self.in_turn = False
        """A turn of the event loop is reading (its end is scheduled)."""
        self.turn_checks = 0
        """Checks whose HEADERS this turn has read, admitted or not."""
        self.turn_ahead = 0
        """Calls open when this turn began plus the Checks it has admitted since: a call read later in the same turn
        waited, in the socket, for their decisions."""
        self.buffered = 0
        """Bytes of partly received messages, and of reflection answers the clients have not taken yet."""
        self.connections: set[_Connection] = set()
        self.draining = False
        self._listener: asyncio.AbstractServer | None = None
        self._socket_path: str | None = None
        self._settings: dict[h2.settings.SettingCodes | int, int] = {
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: min(max_streams, MAX_CONCURRENT_STREAMS),
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_BYTES,
        }
        # What this server sends is its own constants (and a percent-encoded grpc-message): h2's checks of outbound
        # headers cost 20% of the always-allow floor's CPU per check (165 -> 131 µs, h2load, 4 interleaved rounds).
        # Inbound headers, the client's, are still validated.
        self._config = h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False
        )

    async def listen(self, listen: str) -> int:
        """Listen on HOST:PORT (returns the port) or unix:/PATH (returns 1, as the grpc transports do)."""
        loop = asyncio.get_running_loop()
        self.health.loop = loop
        path = socket_path(listen)
        if path is not None:
            self._listener = await loop.create_unix_server(self._connection, path)
            self._socket_path = path
            allow_group(path)
            return 1
        host, _, port = listen.rpartition(":")
        self._listener = await loop.create_server(
            self._connection, host.strip("[]") or None, int(port), reuse_port=True, backlog=1024
        )
        return int(self._listener.sockets[0].getsockname()[1])

    def _connection(self) -> _Connection:
        return _Connection(self)

    def reading(self) -> None:
        """A connection has bytes to read: the first in this turn of the event loop starts the turn's counts."""
        if not self.in_turn:
            self.in_turn = True
            self.turn_ahead = self.open_calls
            # Runs once the loop has handed every readable connection its bytes: the turn is over.
            asyncio.get_running_loop().call_soon(self._turn_ended)

    def _turn_ended(self) -> None:
        self.in_turn = False
        self.turn_checks = 0

    async def drain(self, grace_s: float) -> None:
        """Stop listening, GOAWAY every connection, finish the calls received, close within `grace_s`."""
        self.draining = True
        if self._listener is not None:
            self._listener.close()
        for connection in list(self.connections):
            connection.goaway()
        deadline = time.monotonic() + grace_s
        while any(c.busy() for c in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for connection in list(self.connections):
            connection.close()
        if self._listener is not None:
            await self._listener.wait_closed()
        if self._socket_path is not None:
            # As grpc-core does on stop: the next server on this volume finds no leftover to probe.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._socket_path)

    # --- the calls -------------------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection: h2 events in, answers out, one write per read."""

    def __init__(self, server: H2Server) -> None:
        self.server = server
        self.h2 = h2.connection.H2Connection(server._config)
        self.streams: dict[int, _Stream] = {}
        self.pending: dict[int, tuple[bytes, Trailers | None]] = {}
        """Answers waiting for the peer's flow-control window: the rest of the body, the trailers (None: a Watch,
        the stream stays open)."""
        self.watches: dict[int, tuple[str, Watcher]] = {}
        self._written: list[bytes] = []
        """Bytes for the peer produced beside h2 (`_answer_unary`), in order with h2's own; `_flush` sends them."""
        self.transport: asyncio.Transport | None = None
        self._goaway_ping: bytes | None = None
        self._goaway_seen = False
        self._closing = False
        self._ready: list[tuple[int, bytes]] = []
        """Checks the bytes being handled completed: (stream, message), decided together once they all are."""

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = typing.cast(asyncio.Transport, transport)
        self.transport = transport
        if len(self.server.connections) >= MAX_CONNECTIONS or self.server.draining:
            transport.abort()
            return
        self.server.connections.add(self)
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self.h2.local_settings.update(self.server._settings)
        self.h2.initiate_connection()
        transport.write(self.h2.data_to_send())

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        for stream_id in list(self.streams):
            self._forget(stream_id)
        for stream_id in list(self.watches):
            self._unwatch(stream_id)
        self.pending.clear()

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        # One clock read for every call these bytes carried: their deadlines count from here.
        arrived = time.monotonic()
        self.server.reading()
        self._ready = []
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.debug("HTTP/2 protocol error from a client: %s", exc)
            self._flush()
            self.close()
            return
        try:
            for event in events:
                kind = type(event)
                if kind is h2.events.RequestReceived:
                    self._request(event, arrived)  # type: ignore[arg-type]
                elif kind is h2.events.DataReceived:
                    self._data(event)  # type: ignore[arg-type]
                elif kind is h2.events.StreamEnded:
                    self._ended(event.stream_id)  # type: ignore[attr-defined]
                elif kind is h2.events.StreamReset:
                    self._forget(event.stream_id)  # type: ignore[attr-defined]
                    self._unwatch(event.stream_id)  # type: ignore[attr-defined]
                    self.pending.pop(event.stream_id, None)  # type: ignore[attr-defined]
                elif kind is h2.events.WindowUpdated:
                    self._send_pending()
                elif kind is h2.events.PingAckReceived:
                    if event.ping_data == self._goaway_ping:  # type: ignore[attr-defined]
                        self._final_goaway()
                elif kind is h2.events.ConnectionTerminated:
                    self._flush()
                    self.close()
                    return
        except h2.exceptions.H2Error as exc:
            # A state the peer drove h2 into mid-batch (a frame for a stream it had already reset, say): this
            # connection ends, the process and every other connection carry on.
            log.debug("HTTP/2 connection closed after an error: %s", exc)
            self._flush()
            self.close()
            return
        answered = bool(self._ready)
        if answered:
            self._answer_checks()
        self._flush()
        if answered and self.server.after_answers is not None:
            self.server.after_answers()
        if self._closing and not self.busy():
            self.close()

    # --- requests ----------------------------------------------------------------------------

    def _request(self, event: h2.events.RequestReceived, arrived: float) -> None:
        stream_id = event.stream_id
        path = b""
        method = content_type = timeout = b""
        metadata: list[tuple[str, str]] = []
        for name, value in event.headers or ():
            if name == b":path":
                path = value
            elif name == b":method":
                method = value
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-timeout":
                timeout = value
            elif name == _XFCC:
                metadata.append((XFCC_METADATA, value.decode("latin-1")))
        if self._gone(stream_id):
            return
        if method != b"POST" or not content_type.startswith(b"application/grpc"):
            # Not gRPC at all: HTTP's own answer, as grpc-core gives (415 for a wrong content type).
            status = b"405" if method != b"POST" else b"415"
            self.h2.send_headers(stream_id, ((b":status", status),), end_stream=True)
            self._reset_if_open(stream_id)
            return
        if path not in _PATHS:
            self._refuse(stream_id, grpc.StatusCode.UNIMPLEMENTED, f"unknown method {path.decode('latin-1')}")
            return
        server, admission, now = self.server, self.server.admission, time.monotonic()
        if path == CHECK_PATH and admission is not None:
            server.turn_checks += 1
            if server.turn_checks > server.max_open:
                admission.flooded(now)
        if server.open_calls >= server.max_open and path != HEALTH_CHECK_PATH:
            self._refuse(stream_id, grpc.StatusCode.RESOURCE_EXHAUSTED, "too many calls in flight")
            return
        seconds = parse_grpc_timeout(timeout) if timeout else None
        if path == CHECK_PATH and admission is not None:
            remaining = None if seconds is None else seconds - (now - arrived)
            if admission.admit_behind(server.open_calls, server.turn_ahead, remaining, now) is not None:
                # The cheapest answer: no header block to encode, and a gRPC client or Envoy knows the call was not
                # processed (Envoy answers status_on_error, 503 in what this project renders).
                self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                return
            server.turn_ahead += 1
        self.streams[stream_id] = _Stream(path, None if seconds is None else arrived + seconds, metadata)
        server.open_calls += 1

    def _data(self, event: h2.events.DataReceived) -> None:
        stream_id = event.stream_id
        # The window is handed back at once: what a call may buffer is bounded below, not by flow control.
        self.h2.acknowledge_received_data(event.flow_controlled_length, stream_id)
        stream = self.streams.get(stream_id)
        if stream is None or not event.data:
            return
        size = len(event.data)
        streaming = stream.path == REFLECTION_PATH
        # A streaming call's messages are bounded one by one, on their headers (h2_reflection.message_end).
        if not streaming and stream.size + size > MAX_MESSAGE_BYTES + FRAME_HEADER:
            self._fail(stream_id, grpc.StatusCode.RESOURCE_EXHAUSTED, f"message larger than {MAX_MESSAGE_BYTES}")
            return
        if self.server.buffered + size > MAX_BUFFERED_BYTES:
            self._fail(stream_id, grpc.StatusCode.RESOURCE_EXHAUSTED, "server is receiving too much at once")
            return
        stream.body.append(event.data)
        stream.size += size
        self.server.buffered += size
        if streaming and stream.size >= stream.need:
            self._reflect(stream_id, stream)

    def _ended(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.answering:
            return
        if self._gone(stream_id):
            # Nothing to decide: the answer has nowhere to go.
            self._forget(stream_id)
            return
        stream.answering = True
        if stream.path == REFLECTION_PATH:
            if stream.size:
                self._fail(stream_id, grpc.StatusCode.INVALID_ARGUMENT, "request stream ends inside a message")
            else:
                self._push(stream_id, stream, b"", _OK_TRAILERS)
            return
        body = stream.body[0] if len(stream.body) == 1 else b"".join(stream.body)
        self.server.buffered -= stream.size
        stream.body, stream.size = [], 0
        if stream.path == HEALTH_WATCH_PATH:
            self._watch(stream_id, body)
            return
        try:
            message = _unframe(body)
            if stream.path == CHECK_PATH:
                self._ready.append((stream_id, message))
                return
            reply = self.server.health.answer(message)
        except Exception as exc:
            self._failed(stream_id, exc)
            return
        self._answer(stream_id, reply)

    def _answer_checks(self) -> None:
        """Decide the Checks this read completed together (Authorizer.check_many) and send each its answer."""
        now = time.monotonic()
        ready = [(stream_id, message) for stream_id, message in self._ready if stream_id in self.streams]
        self._ready = []
        calls = []
        for stream_id, message in ready:
            stream = self.streams[stream_id]
            calls.append((message, None if stream.deadline is None else stream.deadline - now, stream.metadata))
        try:
            answers = self.server.checks(calls)
        except Exception as exc:
            for stream_id, _ in ready:
                self._failed(stream_id, exc)
            return
        for (stream_id, _), answer in zip(ready, answers, strict=True):
            if isinstance(answer, CheckRefused):
                self._failed(stream_id, answer)
            else:
                self._answer(stream_id, answer)

    def _answer(self, stream_id: int, reply: bytes) -> None:
        """A unary call's answer: headers, the message, trailers."""
        if self._gone(stream_id):
            # The client reset the call while it was decided: the answer has nowhere to go.
            self.pending.pop(stream_id, None)
            self._forget(stream_id)
            return
        try:
            self._answer_unary(stream_id, _frame(reply))
        except h2.exceptions.StreamClosedError:
            self.pending.pop(stream_id, None)
            self._forget(stream_id)

    def _reflect(self, stream_id: int, stream: _Stream) -> None:
        """Answer, at once, every reflection request that has arrived whole on this stream."""
        data = stream.body[0] if len(stream.body) == 1 else b"".join(stream.body)
        try:
            messages, rest = split_messages(data)
            stream.need = message_end(rest)
            replies = b"".join(_frame(self.server.reflection.answer(_unframe(message))) for message in messages)
        except Exception as exc:
            self._failed(stream_id, exc)
            return
        self.server.buffered -= len(data) - len(rest)
        stream.body, stream.size = [rest] if rest else [], len(rest)
        if replies:
            self._push(stream_id, stream, replies, None)

    def _push(self, stream_id: int, stream: _Stream, body: bytes, trailers: Trailers | None) -> None:
        """Send answers on a streaming call (its headers first), and its trailers when given."""
        # A client that asks without reading the answers (the CheckRequest file answers a 37-byte question with
        # 5.6 KB) gets an error, not an ever longer queue of them here.
        if stream.unsent + len(body) > MAX_MESSAGE_BYTES:
            self._fail(stream_id, grpc.StatusCode.RESOURCE_EXHAUSTED, "the client is not reading the answers")
            return
        if self.server.buffered + len(body) > MAX_BUFFERED_BYTES:
            self._fail(stream_id, grpc.StatusCode.RESOURCE_EXHAUSTED, "server holds too many unread answers")
            return
        if self._gone(stream_id):
            self.pending.pop(stream_id, None)
            self._forget(stream_id)
            return
        try:
            if not stream.started:
                stream.started = True
                self.h2.send_headers(stream_id, _RESPONSE_HEADERS)
            self.pending[stream_id] = (self.pending.get(stream_id, (b"", None))[0] + body, trailers)
            self._send(stream_id)
        except h2.exceptions.StreamClosedError:
            self.pending.pop(stream_id, None)
            self._forget(stream_id)
        self._count_unsent(stream_id)

    def _count_unsent(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None and stream.started:
            unsent = len(self.pending.get(stream_id, (b"", None))[0])
            self.server.buffered += unsent - stream.unsent
            stream.unsent = unsent

    def _watch(self, stream_id: int, body: bytes) -> None:
        """Health/Watch: the status now, then one message per change; the call no longer counts as in flight."""
        self._forget(stream_id)
        try:
            service = HealthStatus.service(_unframe(body))
        except CheckRefused as refused:
            self._refuse(stream_id, refused.code, str(refused))
            return

        def push(status: int) -> None:
            if stream_id in self.watches:
                # Behind what the peer's window still holds back, if anything: a status change is a few bytes.
                waiting = self.pending.get(stream_id, (b"", None))[0]
                self.pending[stream_id] = (waiting + _frame(health_message(status)), None)
                self._send(stream_id)
                self._flush()

        self.watches[stream_id] = (service, push)
        status = self.server.health.watch(service, push)
        self.h2.send_headers(stream_id, _RESPONSE_HEADERS)
        self.pending[stream_id] = (_frame(health_message(status)), None)
        self._send(stream_id)

    def _unwatch(self, stream_id: int) -> None:
        watching = self.watches.pop(stream_id, None)
        if watching is not None:
            self.server.health.unwatch(*watching)

    def _end_watches(self) -> None:
        for stream_id in list(self.watches):
            self._unwatch(stream_id)
            self.pending.pop(stream_id, None)
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.h2.send_headers(stream_id, _OK_TRAILERS, end_stream=True)

    # --- answers -----------------------------------------------------------------------------

    def _answer_unary(self, stream_id: int, message: bytes) -> None:
        """A unary call's answer: response headers, the message in one DATA frame, grpc-status 0, the stream closed."""
        connection = self.h2
        stream = connection.streams[stream_id]
        size = len(message)
        window = min(connection.outbound_flow_control_window, stream.outbound_flow_control_window)
        if size > min(window, connection.max_outbound_frame_size):
            # The general way: h2 frames it, the rest waits for the peer's window.
            connection.send_headers(stream_id, _RESPONSE_HEADERS)
            self.pending[stream_id] = (message, _OK_TRAILERS)
            self._send(stream_id)
            return
        for connection_input, stream_input in _ANSWER_INPUTS:
            connection.state_machine.process_input(connection_input)
            stream.state_machine.process_input(stream_input)
        stream.state_machine.process_input(h2.stream.StreamInputs.SEND_END_STREAM)
        stream.outbound_flow_control_window -= size
        connection.outbound_flow_control_window -= size
        # After whatever h2 has queued (a SETTINGS ack, a WINDOW_UPDATE), in the order it was produced.
        self._written.append(connection.data_to_send())
        # Each block is a few bytes (indexed entries once the first answer has added them), well under a frame.
        headers = connection.encoder.encode(_RESPONSE_HEADERS)
        trailers = connection.encoder.encode(_OK_TRAILERS)
        self._written.append(
            _frame_header(len(headers), _HEADERS, _END_HEADERS, stream_id) + headers
            + _frame_header(size, _DATA, 0, stream_id) + message
            + _frame_header(len(trailers), _HEADERS, _END_HEADERS | _END_STREAM, stream_id) + trailers
        )  # fmt: skip
        self._forget(stream_id)

    def _send(self, stream_id: int) -> None:
        """Send as much of a pending answer as the peer's window allows; the trailers once the body is out."""
        body, trailers = self.pending[stream_id]
        while body:
            window = min(self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size)
            if window <= 0:
                self.pending[stream_id] = (body, trailers)
                return
            self.h2.send_data(stream_id, body[:window])
            body = body[window:]
        del self.pending[stream_id]
        if trailers is not None:
            self.h2.send_headers(stream_id, trailers, end_stream=True)
            self._forget(stream_id)

    def _send_pending(self) -> None:
        for stream_id in list(self.pending):
            try:
                self._send(stream_id)
            except h2.exceptions.StreamClosedError:
                self.pending.pop(stream_id, None)
                self._forget(stream_id)
                self._unwatch(stream_id)
            self._count_unsent(stream_id)

    def _failed(self, stream_id: int, exc: Exception) -> None:
        """An answer raised: its gRPC error (CheckRefused), or INTERNAL for a bug, logged."""
        if isinstance(exc, CheckRefused):
            self._fail(stream_id, exc.code, str(exc))
            return
        log.error("a call failed", exc_info=exc)
        self._fail(stream_id, grpc.StatusCode.INTERNAL, "internal error")

    def _fail(self, stream_id: int, code: grpc.StatusCode, message: str) -> None:
        """The call ends with an error: trailers-only, or trailers after the answers a streaming call has sent."""
        stream = self.streams.get(stream_id)
        self._forget(stream_id)
        self.pending.pop(stream_id, None)
        if stream is None or not stream.started:
            self._refuse(stream_id, code, message)
            return
        if self._gone(stream_id):
            return
        try:
            self.h2.send_headers(stream_id, _status_trailers(code, message), end_stream=True)
        except h2.exceptions.StreamClosedError:
            return
        self._reset_if_open(stream_id)

    def _refuse(self, stream_id: int, code: grpc.StatusCode, message: str) -> None:
        """A trailers-only answer with a gRPC status; the stream is reset if the client is still sending."""
        if self._gone(stream_id):
            return
        try:
            self.h2.send_headers(stream_id, [*_RESPONSE_HEADERS, *_status_trailers(code, message)], end_stream=True)
        except h2.exceptions.StreamClosedError:
            return
        self._reset_if_open(stream_id)

    def _reset_if_open(self, stream_id: int) -> None:
        stream = self.h2.streams.get(stream_id)
        if stream is not None and not stream.closed:
            # The client is still sending a body nobody will read: NO_ERROR tells it the answer is complete.
            self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)

    def _gone(self, stream_id: int) -> bool:
        """The peer has reset the stream, maybe in the bytes whose events are being handled: h2 reads every frame of
        them before it returns the first event. Sending on it then is no StreamClosedError: h2 has dropped the
        stream, takes the send for a new one and raises a ProtocolError, and the whole connection would end."""
        stream = self.h2.streams.get(stream_id)
        return stream is None or stream.closed

    def _forget(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            self.server.open_calls -= 1
            self.server.buffered -= stream.size + stream.unsent
            stream.size = stream.unsent = 0

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if self._written:
            self._written.append(data)
            data = b"".join(self._written)
            self._written.clear()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # --- shutting down ------------------------------------------------------------------------

    def busy(self) -> bool:
        """Calls to finish, or a GOAWAY the peer has not confirmed: calls it sent before seeing it may still come."""
        return bool(self.streams or self.pending) or (self._closing and not self._goaway_seen)

    def goaway(self) -> None:
        """First GOAWAY of a graceful close: no new streams please, and a PING to learn when the peer has seen it.

        Written around h2 on purpose: h2 stops processing every frame once it has sent GOAWAY itself, and the
        calls already on the way must still be answered."""
        if self.transport is None or self._closing:
            return
        self._closing = True
        self._end_watches()
        self._goaway_ping = b"drain\x00\x00\x00"
        self._write_goaway(_LAST_STREAM_ID)
        self.h2.ping(self._goaway_ping)
        self._flush()

    def _final_goaway(self) -> None:
        # The PING came back: everything the peer sent before it saw the first GOAWAY has arrived.
        self._goaway_seen = True
        self._write_goaway(self.h2.highest_inbound_stream_id)

    def _write_goaway(self, last_stream_id: int) -> None:
        self._flush()
        frame = GoAwayFrame(0, last_stream_id=last_stream_id, error_code=h2.errors.ErrorCodes.NO_ERROR)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame.serialize())

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def _frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def _unframe(body: bytes) -> bytes:
    """The message of a unary request: one uncompressed gRPC frame, nothing before or after it."""
    if len(body) < FRAME_HEADER:
        raise CheckRefused(grpc.StatusCode.INVALID_ARGUMENT, "request is not one gRPC message")
    if body[0] != 0:
        raise CheckRefused(grpc.StatusCode.UNIMPLEMENTED, "compressed requests are not accepted")
    length = int.from_bytes(body[1:5], "big")
    if length != len(body) - FRAME_HEADER:
        raise CheckRefused(grpc.StatusCode.INVALID_ARGUMENT, "request is not one gRPC message")
    return body[FRAME_HEADER:]

"""What the h2 transport spends on a Check it refuses, against one it answers, in one thread without sockets.

`python -m benchmarks.h2_refusal` feeds the bytes an HTTP/2 client sends (HEADERS with `grpc-timeout: 250m`, a
1.5 KB message, 20 calls a read) to the transport's connection handler, once with admission admitting every call
and an always-allow check (the transport's own cost of a decided call, no decision), once with `max_wait_ms` below
zero, which refuses every call on arrival (RST_STREAM REFUSED_STREAM, body unread). Under overload every call past what
the server decides is refused, so the ratio bounds the share of capacity h2 can decide in time when every call
reaches it: at 2x, refusing one capacity's worth of calls costs ratio x transport / decision of the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from typing import Any

import h2.config
import h2.connection

from authz_server.transport.admission import Admission
from authz_server.transport.config import AdmissionConfig
from authz_server.transport.h2_server import CHECK_PATH, H2Server, _Connection

MESSAGE = b"\x00" + (1500).to_bytes(4, "big") + b"\x0a" * 1500
CALLS_PER_READ = 20


class _Sink:
    """The socket's write side: counts bytes."""

    written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def close(self) -> None:
        pass


def client_bytes(calls: int) -> tuple[bytes, list[bytes]]:
    """The connection preface, and the bytes of each call as an HTTP/2 client sends them."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    preface = client.data_to_send()
    headers = [
        (":method", "POST"), (":scheme", "http"), (":path", CHECK_PATH.decode()), (":authority", "authz"),
        ("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "250m"),
    ]  # fmt: skip
    out = []
    for _ in range(calls):
        stream_id = client.get_next_available_stream_id()
        client.send_headers(stream_id, headers)
        # The server hands its window back as it reads; this client never reads, so it lends itself the window.
        client.outbound_flow_control_window = 2**30
        client.send_data(stream_id, MESSAGE, end_stream=True)
        out.append(client.data_to_send())
    return preface, out


def per_call_us(admission: AdmissionConfig, preface: bytes, calls: list[bytes]) -> float:
    server = H2Server(lambda calls: [b""] * len(calls), max_open=10**6, admission=Admission(admission))
    connection = _Connection(server)
    connection.connection_made(_Sink())  # type: ignore[arg-type]
    connection.data_received(preface)
    reads = [b"".join(calls[i : i + CALLS_PER_READ]) for i in range(0, len(calls), CALLS_PER_READ)]
    started = time.perf_counter()
    for data in reads:
        connection.data_received(data)
    return (time.perf_counter() - started) / len(calls) * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.h2_refusal", description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args(argv)
    preface, calls = client_bytes(options.calls)
    modes: dict[str, AdmissionConfig] = {
        "answered (admitted, always-allow check)": AdmissionConfig(),
        # Below any wait, even of a call with nothing ahead (configuration validation would refuse it).
        "refused on arrival": AdmissionConfig(max_wait_ms=-1.0),
    }
    results: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(options.rounds):  # interleaved: a shared machine's noise hits both alike
        for name, config in modes.items():
            results[name].append(per_call_us(config, preface, calls))
    best: dict[str, Any] = {name: min(values) for name, values in results.items()}
    for name, values in results.items():
        print(f"{name}: best {min(values):.0f} µs/call, median {statistics.median(values):.0f}")
    answered, refused = best.values()
    print(f"refused / answered: {refused / answered:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

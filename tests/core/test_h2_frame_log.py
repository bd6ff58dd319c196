"""The h2 transport's connections still log each received frame by name, without formatting its contents.

h2_server.py stands a cheap name-of-type function in for `repr` inside h2.connection (hyperframe's repr serializes
and hex-dumps every frame for a trace line the default logger drops). If an h2 release moves that call, or formats
frames elsewhere, this fails and the override is to be revisited.
"""

from __future__ import annotations

import h2.config
import h2.connection
from hyperframe.frame import DataFrame, HeadersFrame

import authz_server.transport.h2_server  # noqa: F401 - installs the override


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def debug(self, fmtstr: str, *args: object) -> None:
        self.lines.append(fmtstr % args)

    def trace(self, fmtstr: str, *args: object) -> None:
        self.lines.append(fmtstr % args)


def test_received_frames_are_logged_by_type_without_their_bytes() -> None:
    logger = _Lines()
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, logger=logger))  # type: ignore[arg-type]
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(1, [(":method", "POST"), (":path", "/x"), (":scheme", "http"), (":authority", "a")])
    client.send_data(1, b"secret-body" * 100, end_stream=True)
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    received = [line for line in logger.lines if line.startswith("Received frame: ")]
    assert f"Received frame: {HeadersFrame.__name__}" in received
    assert f"Received frame: {DataFrame.__name__}" in received
    assert not any("secret" in line or "hex" in line for line in received)

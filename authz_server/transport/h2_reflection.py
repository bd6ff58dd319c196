"""Server reflection on the `h2` transport: grpcio-reflection's own servicer, one request message at a time.

`grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo` is a bidirectional stream (grpcurl opens one per
command; grpcio's ProtoReflectionDescriptorDatabase one per question). The connection (h2_server.py) splits the
stream's DATA into messages as they complete (`split_messages`), answers each with `Reflection.answer` at once,
and ends the stream with grpc-status 0 when the client half-closes. The answers are grpcio-reflection's, from the
same servicer class over the same descriptor pool and the same SERVICE_NAMES the grpc transports register, so
`grpcurl list` and `describe` read the same on every transport. grpcio-reflection (1.85) has no
`grpc.reflection.v1` servicer in Python; the grpc transports do not serve it either, and grpcurl falls back to
v1alpha on its UNIMPLEMENTED.
"""

from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError
from grpc_reflection.v1alpha import reflection, reflection_pb2

from authz_server.transport.grpc_server import MAX_MESSAGE_BYTES, SERVICE_NAMES, CheckRefused

REFLECTION_PATH = f"/{reflection.SERVICE_NAME}/ServerReflectionInfo".encode()
FRAME_HEADER = 5
"""A gRPC message on the wire: 1 byte compressed flag, 4 bytes length, the message."""


class Reflection:
    """Answers one ServerReflectionRequest with grpcio-reflection's servicer."""

    def __init__(self) -> None:
        self._servicer = reflection.ReflectionServicer(SERVICE_NAMES)

    def answer(self, data: bytes) -> bytes:
        """Serialized ServerReflectionResponse for one serialized request (its errors are answers, as grpcio's)."""
        try:
            request = reflection_pb2.ServerReflectionRequest.FromString(data)
        except DecodeError:
            raise CheckRefused(grpc.StatusCode.INVALID_ARGUMENT, "ServerReflectionRequest does not parse") from None
        # The servicer reads requests from an iterator and yields one response each: given one, it answers one.
        (response,) = self._servicer.ServerReflectionInfo(iter((request,)), None)
        reply: bytes = response.SerializeToString()
        return reply


def message_end(partial: bytes) -> int:
    """Bytes the message starting `partial` takes, frame header included (the header alone while it is short)."""
    if len(partial) < FRAME_HEADER:
        return FRAME_HEADER
    length = int.from_bytes(partial[1:FRAME_HEADER], "big")
    if length > MAX_MESSAGE_BYTES:
        # Refused on its header, before any of its body is held.
        raise CheckRefused(grpc.StatusCode.RESOURCE_EXHAUSTED, f"message larger than {MAX_MESSAGE_BYTES}")
    return FRAME_HEADER + length


def split_messages(data: bytes) -> tuple[list[bytes], bytes]:
    """The whole messages at the start of `data`, each still framed, and the bytes of the next one so far."""
    messages = []
    start = 0
    while len(data) - start >= (end := message_end(data[start : start + FRAME_HEADER])):
        messages.append(data[start : start + end])
        start += end
    return messages, data[start:]

"""Stage 1, parse: an Envoy CheckRequest becomes an immutable view of the call.

Everything later stages read comes from here, so a field Envoy renames or a
proxy that leaves one empty is handled in one place.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from google.protobuf.message import DecodeError

from authz_server._proto.envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from authz_server.values import fast_init

CheckRequest = external_auth_pb2.CheckRequest


class MalformedRequest(ValueError):
    """The bytes received are not a CheckRequest. The message is plain words, safe to send back to the client."""


def decode_request(data: bytes) -> CheckRequest:
    """The CheckRequest in `data`, or MalformedRequest: protobuf's own error names its classes and wire internals."""
    try:
        return CheckRequest.FromString(data)
    except DecodeError:
        raise MalformedRequest("the request is not a valid envoy.service.auth.v3.CheckRequest message") from None


@fast_init
@dataclass(frozen=True, slots=True)
class Peer:
    """One side of the connection as Envoy saw it."""

    principal: str
    """Envoy's view of the peer identity: the first URI SAN, else a DNS SAN, else the subject."""
    certificate: str
    """URL-encoded PEM of the peer's leaf certificate ('' unless include_peer_certificate)."""
    address: str
    port: int


@fast_init
@dataclass(frozen=True, slots=True)
class Call:
    """What is being asked: who calls whom, how, on which route."""

    request_id: str
    source: Peer
    destination_principal: str
    method: str
    path: str
    """The request path without its query string or fragment, not yet normalised."""
    query: str
    host: str
    scheme: str
    protocol: str
    headers: Mapping[str, str]
    """Header names are lower case, as Envoy sends them."""
    context_extensions: Mapping[str, str]
    size: int
    """Request body size in bytes as Envoy reports it (-1 when unknown)."""
    sni: str
    received_at: float
    """When Envoy saw the request (Unix seconds), or when the server did when Envoy did not say."""


def _peer(peer: attribute_context_pb2.AttributeContext.Peer) -> Peer:
    socket = peer.address.socket_address
    return Peer(peer.principal, peer.certificate, socket.address, socket.port_value)


def _split_target(target: str, query: str) -> tuple[str, str]:
    """Envoy puts the whole request target in `path`; the query never takes part in matching."""
    if "?" not in target and "#" not in target:
        return target, query
    path, _, rest = target.partition("#")[0].partition("?")
    return path, query or rest


def check_request(
    *,
    method: str,
    target: str,
    source_principal: str = "",
    source_address: str = "",
    destination_principal: str = "",
    headers: Mapping[str, str] | None = None,
    context_extensions: Mapping[str, str] | None = None,
    request_id: str = "",
    host: str = "",
    scheme: str = "",
    protocol: str = "",
    size: int = -1,
    received_at: float = 0.0,
) -> CheckRequest:
    """A CheckRequest as Envoy would send it, for tools that decide calls offline (explain, policy test, replay).

    They turn it into a Call with `parse_call`, the request path's own parser: one way to build a Call.
    """
    request = CheckRequest()
    attributes = request.attributes
    attributes.source.principal = source_principal
    attributes.source.address.socket_address.address = source_address
    attributes.destination.principal = destination_principal
    attributes.context_extensions.update(context_extensions or {})
    http = attributes.request.http
    http.id, http.method, http.path, http.host, http.scheme, http.protocol = (
        request_id, method, target, host, scheme, protocol
    )  # fmt: skip
    http.size = size
    http.headers.update({name.lower(): value for name, value in (headers or {}).items()})
    if 0 < received_at < _LATEST_TIMESTAMP:  # also false for NaN; parse_call then reads the clock, as with Envoy
        attributes.request.time.FromNanoseconds(int(received_at * 1e9))
    return request


_LATEST_TIMESTAMP = 253402300800.0
"""0001-01-01 to 9999-12-31 is all google.protobuf.Timestamp can hold; this is its end in Unix seconds."""


def parse_call(request: external_auth_pb2.CheckRequest) -> Call:
    attributes = request.attributes
    http = attributes.request.http
    path, query = _split_target(http.path, http.query)
    # Read-only views over the parsed message's own maps: copying them cost more than the whole parse.
    headers: Mapping[str, str] = MappingProxyType(http.headers)
    if not http.headers and http.header_map.headers:
        # Envoy sends header_map instead of headers when encode_raw_headers is set.
        headers = MappingProxyType(
            {h.key.lower(): h.value or h.raw_value.decode("latin-1") for h in http.header_map.headers}
        )
    stamp = attributes.request.time
    return Call(
        http.id,
        _peer(attributes.source),
        attributes.destination.principal,
        http.method,
        path,
        query,
        http.host,
        http.scheme,
        http.protocol,
        headers,
        MappingProxyType(attributes.context_extensions),
        http.size,
        attributes.tls_session.sni,
        stamp.seconds + stamp.nanos / 1e9 if stamp.seconds else time.time(),
    )

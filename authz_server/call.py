"""Stage 1, parse: an Envoy CheckRequest becomes an immutable view of the call.

Everything later stages read comes from here, so a field Envoy renames or a
proxy that leaves one empty is handled in one place.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from authz_server._proto.envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2

CheckRequest = external_auth_pb2.CheckRequest

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Peer:
    """One side of the connection as Envoy saw it."""

    principal: str
    """Envoy's view of the peer identity: the first URI SAN, else a DNS SAN, else the subject."""
    certificate: str
    """URL-encoded PEM of the peer's leaf certificate ('' unless include_peer_certificate)."""
    address: str
    port: int


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
    return Peer(
        principal=peer.principal,
        certificate=peer.certificate,
        address=socket.address,
        port=socket.port_value,
    )


def _split_target(target: str, query: str) -> tuple[str, str]:
    """Envoy puts the whole request target in `path`; the query never takes part in matching."""
    cut = len(target)
    for sep in "?#":
        index = target.find(sep)
        if index != -1 and index < cut:
            cut = index
    if cut == len(target):
        return target, query
    rest = target[cut:]
    if rest.startswith("?"):
        query = query or rest[1:].split("#", 1)[0]
    return target[:cut], query


def parse_call(request: external_auth_pb2.CheckRequest) -> Call:
    attributes = request.attributes
    http = attributes.request.http
    path, query = _split_target(http.path, http.query)
    headers: Mapping[str, str] = MappingProxyType(dict(http.headers)) if http.headers else _EMPTY
    if not headers and http.header_map.headers:
        # Envoy sends header_map instead of headers when encode_raw_headers is set.
        headers = MappingProxyType(
            {h.key.lower(): h.value or h.raw_value.decode("latin-1") for h in http.header_map.headers}
        )
    extensions = attributes.context_extensions
    stamp = attributes.request.time
    received_at = stamp.seconds + stamp.nanos / 1e9 if stamp.seconds else time.time()
    return Call(
        request_id=http.id,
        source=_peer(attributes.source),
        destination_principal=attributes.destination.principal,
        method=http.method,
        path=path,
        query=query,
        host=http.host,
        scheme=http.scheme,
        protocol=http.protocol,
        headers=headers,
        context_extensions=MappingProxyType(dict(extensions)) if extensions else _EMPTY,
        size=http.size,
        sni=attributes.tls_session.sni,
        received_at=received_at,
    )

"""`authz-server check`: send one CheckRequest to a running server, as Envoy would, and print what it decided.

For trying a server by hand (after `authz-server demo --keep`, say): the caller is named by an SVID
certificate file, sent as Envoy's `include_peer_certificate` sends it. Not a load tool: one call, one answer.
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import grpc

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from authz_server.call import check_request
from authz_server.policy.cli import header_pairs


def _run(args: argparse.Namespace) -> int:
    try:
        certificate = Path(args.cert).read_text() if args.cert else ""
        headers = header_pairs(args.header)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"authz-server: {exc}\n")
        return 2
    request = check_request(
        method=args.method.upper(),
        target=args.path,
        destination_principal=args.to,
        source_address="127.0.0.1",
        headers=headers,
        request_id="authz-server-check",
    )
    # Envoy sends the leaf only, URL-encoded (include_peer_certificate).
    leaf = certificate.split("-----END CERTIFICATE-----", 1)[0] + "-----END CERTIFICATE-----\n" if certificate else ""
    request.attributes.source.certificate = urllib.parse.quote(leaf, safe="")
    with grpc.insecure_channel(args.server) as channel:
        try:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)  # type: ignore[no-untyped-call]
            reply = stub.Check(request, timeout=args.timeout)
        except grpc.RpcError as exc:
            sys.stderr.write(f"authz-server: {args.server}: {exc.code().name}: {exc.details()}\n")
            return 1
    _print(reply)
    return 0


def _print(reply: external_auth_pb2.CheckResponse) -> None:
    denied = reply.HasField("denied_response")
    status = int(reply.denied_response.status.code) if denied else 200
    options = reply.denied_response.headers if denied else reply.ok_response.headers
    sys.stdout.write(f"HTTP {status}\n")
    for option in options:
        sys.stdout.write(f"{option.header.key}: {option.header.value}\n")


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    check = commands.add_parser("check", help="send one call to a running server, as Envoy would, and print the answer")
    check.add_argument("--server", default="127.0.0.1:9191", help="HOST:PORT of the server (default: %(default)s)")
    check.add_argument("--cert", metavar="FILE", help="the caller's SVID certificate (PEM); none: an anonymous call")
    check.add_argument("--to", required=True, metavar="SPIFFE_ID", help="the callee (Envoy's destination principal)")
    check.add_argument("--method", default="GET", help="HTTP method (default: %(default)s)")
    check.add_argument("--path", required=True, help="request path")
    check.add_argument("--header", action="append", default=[], metavar="NAME=VALUE", help="a request header")
    check.add_argument("--timeout", type=float, default=5.0, help="seconds (default: %(default)s)")
    check.set_defaults(handler=_run)

"""The Python floor: an ext_authz server that allows everything without looking at the request.

    .venv/bin/python -m benchmarks.floor_server --listen 127.0.0.1:9301 [--transport aio|sync|h2]

It pays exactly what any Python gRPC hop pays (HTTP/2, the request's
protobuf deserialization, the reply) and nothing else, so the distance between
it and the real server is the cost of deciding. Same transports, server
options, method registration and event loop as authz_server/transport/.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading
from concurrent import futures

import grpc

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.transport.grpc_server import SERVER_OPTIONS, add_check_method
from authz_server.transport.h2_server import H2Server
from authz_server.transport.serve import event_loop_factory

ALLOW = external_auth_pb2.CheckResponse(
    status={"code": 0}, ok_response=external_auth_pb2.OkHttpResponse()
).SerializeToString()


def serve_sync(listen: str, threads: int) -> None:
    def check(request: external_auth_pb2.CheckRequest, context: grpc.ServicerContext) -> bytes:
        return ALLOW

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=SERVER_OPTIONS)
    add_check_method(server, check)
    server.add_insecure_port(listen)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    print("serving", flush=True)
    stop.wait()
    server.stop(1).wait()


async def serve_aio(listen: str) -> None:
    async def check(request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext) -> bytes:
        return ALLOW

    server = grpc.aio.server(options=SERVER_OPTIONS)
    add_check_method(server, check)
    server.add_insecure_port(listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    print("serving", flush=True)
    await stop.wait()
    await server.stop(1)


async def serve_h2(listen: str) -> None:
    server = H2Server(lambda calls: [ALLOW] * len(calls), max_open=1024)
    await server.listen(listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("serving", flush=True)
    await stop.wait()
    await server.drain(1)


def main() -> None:
    parser = argparse.ArgumentParser(description="always-allow ext_authz server (the Python floor)")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--transport", choices=("aio", "sync", "h2"), default="aio")
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    if args.transport in ("aio", "h2"):
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(serve_aio(args.listen) if args.transport == "aio" else serve_h2(args.listen))
    else:
        serve_sync(args.listen, args.threads)


if __name__ == "__main__":
    main()

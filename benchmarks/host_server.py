"""The decision server for benchmarks while `authz-server serve` cannot yet run the full pipeline.

    .venv/bin/python -m benchmarks.host_server --listen 127.0.0.1:9191 --bundle B --policies DIR \\
        --decisions FILE [--transport sync|aio] [--threads 4]

Same transport (authz_server.transport.grpc_server), same Authorizer, same
decision log as the real server, with the stages benchmarks.pipeline builds
(risk off when the tree has no risk stage). The runner uses `authz-server
serve` itself whenever the tree has every stage (benchmarks.servers).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading
from pathlib import Path

from authz_server.transport.grpc_server import AuthorizerSlot, build_aio_server, build_sync_server
from benchmarks.pipeline import assemble


def main() -> None:
    parser = argparse.ArgumentParser(description="benchmark host for the decision pipeline")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--policies", required=True, type=Path)
    parser.add_argument("--decisions", required=True, type=Path)
    parser.add_argument("--transport", choices=("sync", "aio"), default="sync")
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()

    pipeline = assemble(args.bundle, args.policies, args.decisions, capacity=1)
    slot = AuthorizerSlot()
    slot.authorizer = pipeline.authorizer
    try:
        if args.transport == "aio":
            asyncio.run(_serve_aio(slot, args.listen))
        else:
            _serve_sync(slot, args.listen, args.threads)
    finally:
        pipeline.close()


def _serve_sync(slot: AuthorizerSlot, listen: str, threads: int) -> None:
    server, reporter, _ = build_sync_server(slot, listen, threads)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    reporter.serving()
    stop.wait()
    reporter.not_serving()
    server.stop(2).wait()


async def _serve_aio(slot: AuthorizerSlot, listen: str) -> None:
    loop = asyncio.get_running_loop()
    server, reporter, _ = await build_aio_server(slot, listen, loop)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    reporter.serving()
    await stop.wait()
    reporter.not_serving()
    await server.stop(2)


if __name__ == "__main__":
    main()

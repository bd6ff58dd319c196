"""The operator's HTTP port: Prometheus /metrics, and /healthz and /readyz for Kubernetes probes.

It runs on its own port and threads, apart from gRPC, so a scrape or a probe
never competes with Check calls for a handler, and a stuck scrape cannot make
Envoy's checks time out.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from authz_server.observability.health import Readiness

log = logging.getLogger("authz_server.observability")

StatusReader = Callable[[], Mapping[str, str]]


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class OpsServer:
    """Serves /metrics, /healthz and /readyz on `listen` from a daemon thread."""

    def __init__(
        self,
        listen: str,
        registry: CollectorRegistry,
        readiness: Readiness,
        stages: Callable[[], Mapping[str, StatusReader]] = dict,
    ) -> None:
        self._registry = registry
        self._readiness = readiness
        self._stages = stages
        host, port = parse_listen(listen)
        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        self._server = server_class((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="ops-http", daemon=True)
        self._thread.start()
        log.info("metrics and health on port %d (/metrics, /healthz, /readyz)", self.port)

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()

    def _stage_lines(self) -> list[str]:
        lines = []
        for stage, read in self._stages().items():
            try:
                status = read()
            except Exception as exc:
                lines.append(f"{stage}: status unavailable ({exc})")
                continue
            version = status.get("version") or "-"
            state = status.get("state", "ok")
            problems = status.get("problems") or status.get("last_error") or ""
            lines.append(f"{stage}: {state} version={version}" + (f" ({problems})" if problems else ""))
        return lines

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        ops = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "authz-server"

            def do_GET(self) -> None:
                path = self.path.partition("?")[0]
                if path == "/metrics":
                    encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                    self._reply(200, encoder(ops._registry), content_type)
                elif path in ("/healthz", "/livez"):
                    # Alive means the process answers; a degraded stage is for /readyz and metrics.
                    self._reply(200, b"ok\n")
                elif path == "/readyz":
                    ready = ops._readiness.ready
                    body = "\n".join([ops._readiness.explain(), *ops._stage_lines()]) + "\n"
                    self._reply(200 if ready else 503, body.encode())
                else:
                    self._reply(404, b"not found: try /metrics, /healthz or /readyz\n")

            def do_HEAD(self) -> None:
                self.do_GET()

            def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("ops http: " + format, *args)

        return Handler

"""Trust bundles streamed from the SPIFFE Workload API (a SPIRE agent, usually).

The `spiffe` package's client does the protocol. Its own retry loop is turned
off (`retry_connect=False`) because it hides outages: this watcher needs to
know when the stream is down to report "degraded", and it reconnects with a
fresh channel so recovery does not wait out gRPC's own reconnect backoff.
While the agent is away the last bundles it sent keep serving; certificates
chaining to an expired bundle authority fail on their own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from spiffe import JwtBundle, WorkloadApiClient

from authz_server.identity.bundles import TrustBundle
from authz_server.identity.config import workload_api_endpoint

log = logging.getLogger("authz_server.identity")

ORIGIN = "workload-api"


class WorkloadApiWatcher:
    """Keeps the latest bundles from the Workload API; calls `on_bundles` with all of them on every update."""

    def __init__(
        self,
        socket: str,
        on_bundles: Callable[[dict[str, TrustBundle]], None],
        *,
        want_jwt: bool = False,
        first_backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.socket = socket
        self._on_bundles = on_bundles
        self._want_jwt = want_jwt
        self._first_backoff = first_backoff_s
        self._max_backoff = max_backoff_s
        self._lock = threading.Lock()
        self._x509: dict[str, tuple[Any, ...]] | None = None
        self._jwt: dict[str, JwtBundle] | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._first = threading.Event()
        self._thread: threading.Thread | None = None
        self.state = "connecting"
        """connecting (never had bundles), ok (streaming), degraded (stream down, last bundles serving)."""
        self.last_error = ""
        self.updates = 0
        self.disconnects = 0
        self.last_update_at = 0.0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="identity-workload-api", daemon=True)
            self._thread.start()

    def wait_first(self, timeout: float) -> bool:
        """Block until the first complete set of bundles arrived (X.509, and JWT when wanted)."""
        return self._first.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # --- stream callbacks (the spiffe client's threads) -------------------------

    def _on_x509(self, context: Any) -> None:
        bundles = {b.trust_domain.name: tuple(b.x509_authorities) for b in context.x509_bundle_set.bundles}
        with self._lock:
            self._x509 = bundles
        self._publish()

    def _on_jwt(self, bundle_set: Any) -> None:
        bundles = {b.trust_domain.name: b for b in bundle_set.bundles}
        with self._lock:
            self._jwt = bundles
        self._publish()

    def _on_error(self, error: Exception) -> None:
        with self._lock:
            self.last_error = str(error) or type(error).__name__
        self._wake.set()

    def _publish(self) -> None:
        with self._lock:
            if self._x509 is None or (self._want_jwt and self._jwt is None):
                return
            jwt = self._jwt or {}
            names = set(self._x509) | set(jwt)
            bundles = {n: TrustBundle(n, self._x509.get(n, ()), jwt.get(n), ORIGIN) for n in names}
            self.state = "ok"
            self.updates += 1
            self.last_update_at = time.time()
        self._first.set()
        try:
            self._on_bundles(bundles)
        except Exception:
            log.exception("applying Workload API bundles failed")

    # --- connection loop --------------------------------------------------------

    def _run(self) -> None:
        backoff = self._first_backoff
        while not self._stop.is_set():
            updates_before = self.updates
            self._session()
            if self._stop.is_set():
                break
            with self._lock:
                if self.state == "ok":
                    self.state = "degraded"
                    self.disconnects += 1
                error = self.last_error
            log.warning("Workload API at %s unavailable (%s); last bundles keep serving", self.socket, error)
            if self.updates > updates_before:
                backoff = self._first_backoff
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    def _session(self) -> None:
        """One connection: stream until an error or stop."""
        self._wake.clear()
        try:
            client = WorkloadApiClient(socket_path=workload_api_endpoint(self.socket))
        except Exception as exc:
            self._on_error(exc)
            return
        handlers = []
        try:
            # Both streams deliver their first message at once; a fresh stream repeats the current bundles.
            with self._lock:
                self._x509 = None
                self._jwt = None
            handlers.append(client.stream_x509_contexts(self._on_x509, self._on_error, retry_connect=False))
            if self._want_jwt:
                handlers.append(client.stream_jwt_bundles(self._on_jwt, self._on_error, retry_connect=False))
            self._wake.wait()
        finally:
            for handler in handlers:
                handler.cancel()
            client.close()

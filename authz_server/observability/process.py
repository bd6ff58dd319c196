"""Everything one server process exposes to operators, built from configuration in one place."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from authz_server.audit.log import DecisionLog
from authz_server.observability.config import MetricsConfig
from authz_server.observability.health import Readiness
from authz_server.observability.http import OpsServer, StatusReader, parse_listen
from authz_server.observability.metrics import (
    AdmissionCollector,
    AdmissionCounters,
    DecisionMetrics,
    ServerCollector,
    StageClock,
)

log = logging.getLogger("authz_server.observability")


class Observability:
    """The metrics registry, readiness and the ops HTTP server of one process.

    Per-decision metrics are fed by `decision_log` (as an observer), so they
    are counted whatever the log destination, even 'off'.
    """

    def __init__(
        self,
        config: MetricsConfig,
        decision_log: DecisionLog,
        stages: Callable[[], Mapping[str, StatusReader]],
        port_offset: int = 0,
        admission: AdmissionCounters | None = None,
    ) -> None:
        self.config = config
        self.registry = CollectorRegistry()
        self.readiness = Readiness()
        self.clock = StageClock()
        self.decisions = DecisionMetrics(self.registry)
        decision_log.add_observer(self.decisions)
        self.registry.register(ServerCollector(stages, lambda: self.readiness.ready, self.clock, decision_log))
        if admission is not None:
            self.registry.register(AdmissionCollector(admission))
        if config.process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        self._stages = stages
        self._port_offset = port_offset
        self.server: OpsServer | None = None

    def listen_address(self) -> str | None:
        if not self.config.listen:
            return None
        host, port = parse_listen(self.config.listen)
        if port and self._port_offset:
            port += self._port_offset
        return f"{host}:{port}"

    def start(self) -> None:
        """Bind and serve; raises OSError (naming the address) when the port cannot be bound."""
        listen = self.listen_address()
        if listen is None:
            return
        try:
            self.server = OpsServer(listen, self.registry, self.readiness, self._stages)
        except OSError as exc:
            raise OSError(exc.errno, f"metrics.listen: cannot listen on {listen}: {exc.strerror}") from exc
        self.server.start()

    @property
    def port(self) -> int | None:
        return self.server.port if self.server is not None else None

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

"""One server process: load the stages, serve, and shut down gracefully.

Start: the gRPC port opens at once with health NOT_SERVING; the stages load
on a background thread (a Workload API may take a while to hand out the first
bundle); health turns SERVING only when identity, policy and risk are loaded.
SIGTERM: health NOT_SERVING, the server stops accepting calls, in-flight calls
get `grace_period_s` to finish, stage watchers stop, the decision log is
flushed, exit 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from authz_server.audit import DecisionLog
from authz_server.authorizer import Authorizer, Runtime
from authz_server.config import Config
from authz_server.observability import Observability
from authz_server.stages import IdentityStage, PolicyStage, RiskStage, StageSource
from authz_server.transport.admission import Admission
from authz_server.transport.callers import CheckCallers
from authz_server.transport.grpc_server import AuthorizerSlot, HealthReporter, build_aio_server, build_sync_server
from authz_server.transport.h2_server import H2Server, authorizer_checks
from authz_server.transport.unix_socket import clear_stale, socket_path

log = logging.getLogger("authz_server.serve")

_GC_YOUNG_THRESHOLD = 10_000
"""Net allocations of container objects between two young-generation collections once serving (CPython: 700)."""


def collect_as_serving() -> None:
    """The garbage collector as a serving process runs it, once its stages are loaded."""
    # Everything loaded so far lives as long as the process: moved out of the collector's sight, a full
    # collection no longer walks it (its pause fell from ~8 to ~3 ms of CPU; benchmarks/RESULTS.md, "What each
    # change bought").
    gc.freeze()
    # A decision lives ~flush_interval_ms in the decision log's queue (call, decision, timings: ~15 tracked
    # objects), so at the default threshold of 700 net allocations the collector ran every ~50 calls and walked
    # each queued decision several times, promoting them to older generations it then walked again: 4.4 µs of
    # CPU per call and a 1.4 ms pause every ~500 calls (in-process, the envoy mix, 60,000 calls). At 10,000 a
    # collection comes when the queue or the risk state has really grown: 0.3 µs per call. Memory held by
    # unreachable cycles stays bounded by the same count.
    gc.set_threshold(_GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


EXIT_CANNOT_START = 78
"""Exit status of a process whose stages could not load (sysexits' EX_CONFIG). Distinct from 1, Python's exit
status for an uncaught exception, so a supervisor can tell "would fail the same way again" from a crash."""


@dataclass
class StageSources:
    identity: StageSource[IdentityStage]
    policy: StageSource[PolicyStage]
    risk: StageSource[RiskStage] | None

    @classmethod
    def from_config(cls, config: Config) -> StageSources:
        from authz_server import identity, policy, risk

        return cls(
            identity=identity.source(config.identity),
            policy=policy.source(config.policy),
            risk=risk.source(config.risk) if config.risk.enabled else None,
        )

    def close(self) -> None:
        for source in (self.identity, self.policy, self.risk):
            if source is not None:
                try:
                    source.close()
                except Exception:
                    log.exception("closing a stage source failed")

    def statuses(self) -> dict[str, Callable[[], Mapping[str, str]]]:
        """Each stage's status() reader, for /readyz and the metrics collected at scrape time."""
        readers = {"identity": self.identity.status, "policy": self.policy.status}
        if self.risk is not None:
            readers["risk"] = self.risk.status
        return readers


def _stage_version(stage: IdentityStage | PolicyStage | RiskStage | None) -> str:
    return stage.version if stage is not None else "-"


def load_authorizer(
    config: Config,
    sources: StageSources,
    sink: DecisionLog,
    on_replace: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> Authorizer:
    """Build every stage once, then start watching their inputs for changes.

    `on_replace(stage)` is told of the first load and of every replacement (stage ages in metrics). `clock` is
    the wall clock; the risk lab passes a simulated one to replay days of traffic.
    """
    runtime = Runtime(
        identity=sources.identity.load(),
        policy=sources.policy.load(),
        risk=sources.risk.load() if sources.risk is not None else None,
        risk_budget_s=config.risk.budget_ms / 1000.0,
    )
    authorizer = Authorizer(runtime, sink, clock=clock)

    def swapper(stage: str) -> Callable[[Any], None]:
        def apply(new: Any) -> None:
            old = getattr(authorizer.runtime, stage)
            authorizer.swap(**{stage: new})
            log.info("%s stage replaced: version %s -> %s", stage, _stage_version(old), _stage_version(new))
            if on_replace is not None:
                on_replace(stage)

        return apply

    if on_replace is not None:
        for stage in ("identity", "policy", "risk"):
            if getattr(runtime, stage) is not None:
                on_replace(stage)

    sources.identity.start(swapper("identity"))
    sources.policy.start(swapper("policy"))
    if sources.risk is not None:
        sources.risk.start(swapper("risk"))
    return authorizer


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (Linux, macOS), else asyncio's own loop.

    grpc.aio wakes the loop for every completion-queue event, and uvloop's loop does that in C: with the method
    registered (grpc_server.add_check_method) the grpc.aio floor spent 28-30% less CPU per check under h2load
    (benchmarks/RESULTS.md, "What each change bought").
    """
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


class ServerProcess:
    """Everything one process runs, whichever transport carries the calls."""

    def __init__(self, config: Config, on_ready: Callable[[int], None] | None = None) -> None:
        self.config = config
        self.slot = AuthorizerSlot()
        self.admission = Admission(config.admission)
        self.sink = DecisionLog(config.log)
        self.sink.count_shed(self.admission.shed_counts)
        self.sources = StageSources.from_config(config)
        # Worker N of a supervisor serves metrics on PORT+N: one port per process keeps counters whole.
        self.ops = Observability(
            config.metrics,
            self.sink,
            self.sources.statuses,
            int(os.environ.get("AUTHZ_WORKER_INDEX", "0") or 0),
            self.admission,
        )
        self.slot.callers = CheckCallers.from_config(config.callers, self.ops.registry)
        self._on_ready = on_ready
        self.failed: BaseException | None = None
        self.port = 0

    def _load(self, reporter: HealthReporter, stop: Callable[[], None]) -> None:
        try:
            self.slot.authorizer = load_authorizer(self.config, self.sources, self.sink, self.ops.clock.loaded)
        except Exception as exc:
            log.error("cannot start: %s", exc)
            self.failed = exc
            self.ops.readiness.failed(str(exc))
            stop()
            return
        collect_as_serving()
        reporter.serving()
        self.ops.readiness.loaded()
        log.info("serving on %s (port %d, transport %s)", self.config.listen, self.port, self.config.transport)
        if self._on_ready is not None:
            self._on_ready(self.port)

    def _shutdown_stages(self) -> None:
        self.sources.close()
        self.sink.close()
        self.ops.close()

    def run(self) -> int:
        path = socket_path(self.config.listen)
        try:
            if path is not None:
                clear_stale(path)
            self.sink.start()
            self.ops.start()
        except OSError as exc:
            log.error("cannot start: %s", exc)
            self.failed = exc
            self.sink.close()
            return EXIT_CANNOT_START
        if self.config.transport in ("aio", "h2"):
            with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
                runner.run(self._run_aio() if self.config.transport == "aio" else self._run_h2())
        else:
            self._run_sync()
        return EXIT_CANNOT_START if self.failed is not None else 0

    def _run_sync(self) -> None:
        server, reporter, self.port = build_sync_server(
            self.slot, self.config.listen, self.config.threads, self.admission
        )
        stopping = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            server.start()
            threading.Thread(target=self._load, args=(reporter, stopping.set), daemon=True).start()
            stopping.wait()
            log.info("stopping: draining in-flight calls for up to %.1fs", self.config.grace_period_s)
            self.ops.readiness.stopping()
            reporter.not_serving()
            server.stop(self.config.grace_period_s).wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._shutdown_stages()

    async def _run_aio(self) -> None:
        loop = asyncio.get_running_loop()
        server, reporter, self.port = await build_aio_server(self.slot, self.config.listen, loop, self.admission)
        await server.start()
        await self._serve_until_stopped(reporter, server.stop)

    async def _run_h2(self) -> None:
        admission = self.config.admission
        server = H2Server(
            authorizer_checks(self.slot, self.admission),
            admission.max_in_flight + admission.max_queued,
            admission.max_streams_per_connection,
            self.admission,
        )
        self.port = await server.listen(self.config.listen)
        await self._serve_until_stopped(HealthReporter(server.health), server.drain)

    async def _serve_until_stopped(self, reporter: HealthReporter, drain: Callable[[float], Awaitable[object]]) -> None:
        """The asyncio transports' life once listening: load the stages in a thread, serve until SIGTERM or SIGINT,
        then report NOT_SERVING and `drain` in-flight calls for up to grace_period_s."""
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        try:

            def stop_from_thread() -> None:
                loop.call_soon_threadsafe(stopping.set)

            threading.Thread(target=self._load, args=(reporter, stop_from_thread), daemon=True).start()
            await stopping.wait()
            log.info("stopping: draining in-flight calls for up to %.1fs", self.config.grace_period_s)
            self.ops.readiness.stopping()
            reporter.not_serving()
            await drain(self.config.grace_period_s)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            self._shutdown_stages()

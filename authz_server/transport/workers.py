"""`authz-server serve`: one process, or a supervisor of N worker processes.

A Python process uses one core, so `workers` processes share the gRPC port
through SO_REUSEPORT and the kernel spreads connections across them. Envoy
opens one HTTP/2 connection per worker thread, so spreading only happens when
Envoy has several connections: its cluster should cap max_concurrent_streams
(see authz_server/envoy/bootstrap.py), never the server.

Workers are fresh interpreters started with the effective configuration
written to a file, not forks: grpcio does not survive fork() with live threads.

`workers: 0` means one per CPU this process may actually use: the CPU
affinity mask, capped by the cgroup CPU limit (a Kubernetes
`resources.limits.cpu`), since os.cpu_count() reports the node's cores and a
pod limited to 2 CPUs on a 64-core node would otherwise start 64 processes
that the kernel throttles.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from authz_server.config import ENV_PREFIX, PROCESS_VARIABLES, UNIX_PREFIX, Config, dump_config
from authz_server.transport.serve import EXIT_CANNOT_START, ServerProcess

log = logging.getLogger("authz_server.workers")

RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
EXIT_INVALID_CONFIGURATION = 2
"""`authz-server` exits 2 on an invalid configuration (argparse does too on bad flags)."""


def configure_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("AUTHZ_LOG_LEVEL", "INFO").upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )


CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs the cgroup CPU quota allows (cgroup v2 cpu.max, else v1 cfs quota/period); None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for controller in ("cpu", "cpu,cpuacct"):
        try:
            quota_us = int((root / controller / "cpu.cfs_quota_us").read_text())
            period_us = int((root / controller / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    return None


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs this process can use: its affinity mask, capped by the cgroup limit rounded down (at least 1)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        # Rounded down, as Go's automaxprocs does: a worker per partial CPU would only be throttled.
        cpus = min(cpus, max(1, math.floor(limit)))
    return max(1, cpus)


def worker_count(config: Config) -> int:
    if config.listen.startswith(UNIX_PREFIX):
        return 1  # SO_REUSEPORT shares TCP ports only; a socket file has one listener
    return config.workers or available_cpus()


def serve(config: Config) -> int:
    configure_logging()
    count = worker_count(config)
    if count == 1:
        return ServerProcess(config).run()
    return Supervisor(config, count).run()


class Supervisor:
    """Starts `count` single-process servers on the same port and restarts any that die."""

    def __init__(self, config: Config, count: int) -> None:
        self.config = config
        self.count = count
        self._stopping = threading.Event()

    def _command(self, config_file: Path, index: int) -> list[str]:
        return [sys.executable, "-m", "authz_server", "serve", "--config", str(config_file), "--workers", "1"]

    def _spawn(self, config_file: Path, index: int) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX) or k in PROCESS_VARIABLES}
        env["AUTHZ_WORKER_INDEX"] = str(index)
        return subprocess.Popen(self._command(config_file, index), env=env)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stopping.set())
        with tempfile.TemporaryDirectory(prefix="authz-server-") as tmp:
            config_file = Path(tmp) / "config.yaml"
            config_file.write_text(dump_config(self.config))
            workers: list[subprocess.Popen[bytes] | None] = [self._spawn(config_file, i) for i in range(self.count)]
            restarts = [0] * self.count
            respawn_at = [0.0] * self.count
            log.info("started %d workers on %s", self.count, self.config.listen)
            # Restarts are scheduled, never slept on: the loop keeps waking every 0.2 s for SIGTERM.
            while not self._stopping.wait(0.2):
                for i, worker in enumerate(workers):
                    if worker is None:
                        if time.monotonic() >= respawn_at[i]:
                            workers[i] = self._spawn(config_file, i)
                        continue
                    code = worker.poll()
                    if code is None:
                        continue
                    if code in (EXIT_INVALID_CONFIGURATION, EXIT_CANNOT_START) and restarts[i] == 0:
                        # Only these codes mean the first start failed (the configuration, a stage that cannot
                        # load): every worker would fail the same way. 1 is any uncaught exception: restart it.
                        log.error("worker %d could not start (exit %d); stopping", i, code)
                        self._stopping.set()
                        break
                    delay = RESTART_BACKOFF_S[min(restarts[i], len(RESTART_BACKOFF_S) - 1)]
                    log.warning("worker %d exited with %s; restarting in %.1fs", i, code, delay)
                    restarts[i] += 1
                    workers[i] = None
                    respawn_at[i] = time.monotonic() + delay
            running = [worker for worker in workers if worker is not None]
            for worker in running:
                if worker.poll() is None:
                    worker.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.config.grace_period_s + 5
            codes = []
            for worker in running:
                try:
                    codes.append(worker.wait(timeout=max(0.1, deadline - time.monotonic())))
                except subprocess.TimeoutExpired:
                    worker.kill()
                    codes.append(worker.wait())
        # A worker still importing when SIGTERM came dies of it before its handler exists: that is a clean stop too.
        return 0 if all(code in (0, -signal.SIGTERM) for code in codes) else 1

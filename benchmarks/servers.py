"""The processes a benchmark runs: the decision server, the Python floor, and their CPU and memory accounting.

CPU time and peak memory are read from /proc for the whole process tree (a
supervisor and its workers), so `--workers N` is charged for every worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import yaml

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.dev.mesh import free_port
from authz_server.transport.grpc_server import CHECK_METHOD as CHECK_METHOD
from benchmarks.stats import summarize
from benchmarks.workload import TRUST_DOMAIN

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ProcessTree:
    """A process and its descendants, as /proc sees them now."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def pids(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rpartition(")")[2].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, ()))
        return found

    def cpu_seconds(self) -> float:
        """User + system CPU time of every live process in the tree."""
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        return total / CLOCK_TICKS

    def peak_rss_bytes(self) -> int:
        """Sum over the tree of each process's peak resident set (VmHWM)."""
        total = 0
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
        return total


def listening_sockets(port: int) -> int:
    """IPv4 sockets in LISTEN state on `port` (each SO_REUSEPORT listener is its own row)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                count += 1
    return count


def pinned(command: list[str], cpus: str | None) -> list[str]:
    """Prefix a command with taskset when a CPU list is given ('0', '1', '0-1')."""
    return ["taskset", "-c", cpus, *command] if cpus else command


def probe_check(target: int | str, request: bytes, timeout_s: float = 2.0) -> bytes:
    """One Check over a fresh channel to a local port or a gRPC target (unix:PATH); the serialized CheckResponse."""
    with grpc.insecure_channel(f"127.0.0.1:{target}" if isinstance(target, int) else target) as channel:
        call = channel.unary_unary(CHECK_METHOD, request_serializer=None, response_deserializer=None)
        reply: bytes = call(request, timeout=timeout_s)
        return reply


@dataclass
class ServerGroup:
    """One or more processes serving ext_authz on one port."""

    name: str
    commands: list[list[str]]
    workdir: Path
    port: int
    expected_listeners: int = 1
    """Sockets listening on the port once every worker is up (SO_REUSEPORT: one per process)."""
    decisions: Path | None = None
    """The decision log the server writes (stage timings are read back from it)."""
    socket: str | None = None
    """The Unix socket served instead of `port` (the sidecar layout)."""
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, probe: bytes, timeout_s: float = 90.0) -> ServerGroup:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
        env["AUTHZ_LOG_LEVEL"] = "WARNING"
        for i, command in enumerate(self.commands):
            log = (self.workdir / f"{self.name}-{i}.log").open("ab")
            self.processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env))
        deadline = time.monotonic() + timeout_s
        while True:
            for process in self.processes:
                if process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"{self.name} exited with {process.returncode}:\n{self.log_tail()}")
            try:
                probe_check(self.target, probe)
                if self.socket is not None or listening_sockets(self.port) >= self.expected_listeners:
                    return self
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} not answering after {timeout_s}s:\n{self.log_tail()}")
            time.sleep(0.2)

    @property
    def target(self) -> int | str:
        """What probe_check and a gRPC channel dial: the local port, or unix:PATH."""
        return self.port if self.socket is None else f"unix:{self.socket}"

    def log_tail(self, chars: int = 4000) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-chars:] for p in sorted(self.workdir.glob(f"{self.name}-*.log"))
        )

    @property
    def trees(self) -> list[ProcessTree]:
        return [ProcessTree(p.pid) for p in self.processes]

    def cpu_seconds(self) -> float:
        return sum(tree.cpu_seconds() for tree in self.trees)

    def peak_rss_bytes(self) -> int:
        return sum(tree.peak_rss_bytes() for tree in self.trees)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> ServerGroup:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


def floor_server(
    workdir: Path, transport: str, workers: int = 1, cpus: str | None = None, answer: Path | None = None
) -> ServerGroup:
    """The Python floor; `answer` names a file holding the serialized CheckResponse it replies with (default: OK)."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "benchmarks.floor_server",
        "--listen",
        f"127.0.0.1:{port}",
        "--transport",
        transport,
    ]
    if answer is not None:
        command += ["--answer", str(answer)]
    return ServerGroup(f"floor-{transport}", [pinned(command, cpus)] * workers, workdir, port, workers)


_FROM_TREE = (
    "import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
    "runpy.run_module('authz_server', run_name='__main__', alter_sys=True)"
)
"""`python -m authz_server ARGS` from the checkout named by the first argument."""


@dataclass(frozen=True)
class DecisionServerSpec:
    transport: str = "aio"
    workers: int = 1
    threads: int = 4
    unix_socket: bool = False
    """Listen on a Unix socket in the work directory instead of a TCP port (one worker)."""
    source_tree: Path | None = None
    """Run authz_server from another checkout (a baseline commit) instead of this one."""


def decision_server(
    workdir: Path, bundle: Path, policies: Path, spec: DecisionServerSpec, cpus: str | None = None
) -> ServerGroup:
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    decisions = workdir / f"decisions-{spec.transport}-w{spec.workers}-{port}.jsonl"
    config: dict[str, Any] = {
        "transport": spec.transport,
        "threads": spec.threads,
        "identity": {"trust_domains": {TRUST_DOMAIN: {"bundle": str(bundle)}}},
        "policy": {"paths": [str(policies)]},
        "log": {"decisions": str(decisions)},
        "grace_period_s": 2,
    }
    config_path = workdir / f"server-{port}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    socket = str(workdir / f"authz-{port}.sock") if spec.unix_socket else None
    listen = f"unix:{socket}" if socket else f"127.0.0.1:{port}"
    command = [sys.executable, "-m", "authz_server", "serve", "--config", str(config_path),
               "--listen", listen, "--workers", str(spec.workers)]  # fmt: skip
    if spec.source_tree is not None:
        # `-m` puts the working directory (this checkout) first on sys.path, ahead of PYTHONPATH: the other
        # tree must go in front of it.
        command[1:3] = ["-c", _FROM_TREE, str(spec.source_tree.resolve())]
    return ServerGroup("authz-serve", [pinned(command, cpus)], workdir, port, spec.workers, decisions, socket=socket)


def stage_timings(decisions: Path, since: float, until: float) -> dict[str, dict[str, float]]:
    """Percentiles of latency_us per stage over the decision log lines written between since and until."""
    columns: dict[str, list[float]] = {}
    if not decisions.exists():
        return {}
    with decisions.open() as lines:
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not since <= record.get("ts", 0) <= until:
                continue
            for stage, value in (record.get("latency_us") or {}).items():
                columns.setdefault(stage, []).append(float(value))
    return {stage: summarize(values) for stage, values in columns.items()}


def check_response_ok(reply: bytes) -> bool:
    response = external_auth_pb2.CheckResponse.FromString(reply)
    return response.status.code == 0

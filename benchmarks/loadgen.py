"""The load generators: h2load for gRPC straight at a server, wrk for HTTP through Envoy.

Both are C programs that cost a small fraction of what they measure; the
runner still measures their ceiling (benchmarks/run.py, "generator ceiling")
rather than assume it. Latency percentiles come from every request: h2load's
per-request log, wrk's own HDR-style histogram read out by a Lua `done` hook.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.stats import PERCENTILES, label, percentile
from benchmarks.workload import CALLER_HEADER, Sample, grpc_frame

WRK_MARK = "BENCHJSON "

# Each thread starts at its own random place in the request list; `done` prints the summary as one JSON line.
_WRK_TAIL = """
local index = 0
function init(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
  index = math.random(#requests)
end
function request()
  index = index % #requests + 1
  return requests[index]
end
function done(summary, latency, requests)
  local e = summary.errors
  local parts = {
    string.format('"requests":%d,"duration_us":%d', summary.requests, summary.duration),
    string.format('"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d', e.connect, e.read, e.write, e.status,
                  e.timeout),
    string.format('"mean":%f,"max":%d', latency.mean, latency.max),
  }
  for _, q in ipairs({QUANTILES}) do
    table.insert(parts, string.format('"p%s":%d', q, latency:percentile(tonumber(q))))
  end
  io.write("MARK{" .. table.concat(parts, ",") .. "}\\n")
end
""".replace("MARK", WRK_MARK).replace("QUANTILES", ", ".join(f'"{q:g}"' for q in PERCENTILES))


class LoadGeneratorMissing(RuntimeError):
    pass


def require(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        package = {"h2load": "nghttp2-client", "wrk": "wrk"}.get(tool, tool)
        raise LoadGeneratorMissing(f"`{tool}` not found: apt-get install {package}")
    return found


@dataclass(frozen=True)
class LoadResult:
    """What one load run measured, from the generator's side."""

    requests: int
    seconds: float
    latency_us: dict[str, float]
    errors: int
    """Transport errors and timeouts (never an expected deny)."""
    non_2xx: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


# --- h2load: gRPC unary calls -----------------------------------------------------


def grpc_body_file(message: bytes, directory: Path) -> Path:
    """The request body h2load sends: one length-prefixed gRPC message."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "check-request.bin"
    path.write_bytes(grpc_frame(message))
    return path


_H2_FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
_H2_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout"
)
_H2_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def _h2load_tail(
    command: list[str], rps_per_client: float | None, headers: Sequence[str], cpus: str | None
) -> list[str]:
    """An h2load command with its arrival rate, extra headers and CPU pinning."""
    if rps_per_client:
        command = [*command, f"--rps={rps_per_client:g}"]
    for header in headers:
        command = [*command, "-H", header]
    return ["taskset", "-c", cpus, *command] if cpus else command


def h2load_grpc(
    url: str,
    body: Path,
    *,
    clients: int,
    streams: int,
    seconds: float,
    warmup_s: float = 1.0,
    rps_per_client: float | None = None,
    threads: int = 1,
    cpus: str | None = None,
    extra_headers: Sequence[str] = (),
) -> LoadResult:
    """Unary gRPC calls for `seconds` after `warmup_s`: `clients` HTTP/2 connections x `streams` in flight each.

    With `rps_per_client`, a fixed arrival rate instead of a closed loop (the latency a steady load sees).
    """
    require("h2load")
    with tempfile.TemporaryDirectory(prefix="bench-h2load-") as tmp:
        log = Path(tmp) / "requests.tsv"
        command = [
            "h2load", url, "-d", str(body), "-c", str(clients), "-m", str(streams), "-t", str(min(threads, clients)),
            "-H", "content-type: application/grpc", "-H", "te: trailers",
            "-D", f"{round(seconds * 1000)}ms", "--warm-up-time", f"{round(warmup_s * 1000)}ms", f"--log-file={log}",
        ]  # fmt: skip
        command = _h2load_tail(command, rps_per_client, extra_headers, cpus)
        finished = subprocess.run(command, capture_output=True, text=True, timeout=seconds + warmup_s + 60)
        output = finished.stdout + finished.stderr
        if finished.returncode != 0:
            raise RuntimeError(f"h2load failed ({finished.returncode}):\n{output[-3000:]}")
        latencies = sorted(_h2load_latencies(log))
    counts = _H2_REQUESTS.search(output)
    statuses = _H2_STATUS.search(output)
    done = int(counts.group(3)) if counts else len(latencies)
    # "finished in" counts the warm-up too; its req/s (and `done`) cover the measured phase only.
    match = _H2_FINISHED.search(output)
    rate = float(match.group(3)) if match else 0.0
    elapsed = done / rate if rate > 0 else seconds
    failed = int(counts.group(5)) + int(counts.group(6)) + int(counts.group(7)) if counts else 0
    non_2xx = sum(int(statuses.group(i)) for i in (2, 3, 4)) if statuses else 0
    summary = {label(q): percentile(latencies, q) for q in PERCENTILES}
    summary["mean"] = sum(latencies) / len(latencies) if latencies else float("nan")
    summary["max"] = latencies[-1] if latencies else float("nan")
    return LoadResult(done, elapsed, summary, failed, non_2xx)


def _h2load_latencies(log: Path) -> list[float]:
    """Microseconds until the end of each response (third column of h2load's per-request log)."""
    values: list[float] = []
    if not log.exists():
        return values
    with log.open() as rows:
        for row in rows:
            parts = row.split("\t")
            if len(parts) >= 3 and parts[2].strip().isdigit():
                values.append(float(parts[2]))
    return values


@dataclass(frozen=True)
class Answered:
    """One request of an h2load run, from its per-request log."""

    started_s: float
    """Wall-clock time the request was sent (seconds since the epoch)."""
    status: int
    """HTTP status, or -1 when the request failed without one."""
    latency_s: float


def h2load_requests(
    url: str,
    *,
    clients: int,
    streams: int,
    seconds: float,
    rps_per_client: float | None = None,
    cpus: str | None = None,
    headers: Sequence[str] = (),
) -> list[Answered]:
    """Plain HTTP/2 (h2c) GETs for `seconds`, closed loop or at `rps_per_client`: every request's status and time."""
    require("h2load")
    with tempfile.TemporaryDirectory(prefix="bench-h2load-") as tmp:
        log = Path(tmp) / "requests.tsv"
        command = ["h2load", url, "-c", str(clients), "-m", str(streams), "-t", "1",
                   "-D", f"{round(seconds * 1000)}ms", f"--log-file={log}"]  # fmt: skip
        command = _h2load_tail(command, rps_per_client, headers, cpus)
        finished = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
        if finished.returncode != 0:
            raise RuntimeError(f"h2load failed ({finished.returncode}):\n{(finished.stdout + finished.stderr)[-3000:]}")
        rows = []
        for row in log.read_text().splitlines():
            parts = row.split("\t")
            if len(parts) >= 3:
                rows.append(Answered(int(parts[0]) / 1e6, int(parts[1]), int(parts[2]) / 1e6))
    return rows


# --- wrk: HTTP/1.1 through the client-side Envoy -------------------------------------


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def wrk_script(samples: Sequence[Sample], directory: Path, extra_headers: dict[str, str] | None = None) -> Path:
    """A wrk Lua script cycling through the samples (method, path, headers, caller) from a random start per thread,
    and printing every latency percentile as JSON when the run ends."""
    lines = ["local requests = {}"]
    for i, sample in enumerate(samples, 1):
        # wrk only fills in Host at init(), after this table is built: name the service as a mesh client does.
        headers = {"Host": "payments.shop.svc.cluster.local"}
        headers.update((name, value) for name, value in sample.headers if name != "content-length")
        headers[CALLER_HEADER] = sample.caller
        headers.update(extra_headers or {})
        body = "nil"
        if sample.method in ("POST", "PUT", "PATCH"):
            body = _lua_string('{"amount":1200,"currency":"EUR"}')
        table = ", ".join(f"[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items())
        lines.append(
            f"requests[{i}] = wrk.format({_lua_string(sample.method)}, {_lua_string(sample.path)}, {{{table}}}, {body})"
        )
    lines.append(_WRK_TAIL)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "requests.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


def wrk(
    url: str, script: Path, *, connections: int, seconds: float, threads: int = 1, cpus: str | None = None
) -> LoadResult:
    """A closed loop of `connections` HTTP/1.1 keep-alive connections for `seconds` (whole seconds, at least 1)."""
    require("wrk")
    command = ["wrk", "-t", str(min(threads, connections)), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
               "--timeout", "5s", "-s", str(script), url]  # fmt: skip
    if cpus:
        command = ["taskset", "-c", cpus, *command]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    output = finished.stdout + finished.stderr
    line = next((line for line in output.splitlines() if line.startswith(WRK_MARK)), None)
    if finished.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({finished.returncode}):\n{output[-3000:]}")
    data = json.loads(line[len(WRK_MARK) :])
    latency = {label(q): float(data[label(q)]) for q in PERCENTILES}
    latency["mean"] = float(data["mean"])
    latency["max"] = float(data["max"])
    errors = data["connect"] + data["read"] + data["write"] + data["timeout"]
    return LoadResult(int(data["requests"]), data["duration_us"] / 1e6, latency, int(errors), int(data["status"]))

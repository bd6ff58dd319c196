"""The real server as a subprocess: probes while it loads, metrics after a run of calls, nothing lost on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from authz_server.dev.mesh import free_port
from tests.ops.ops_support import BILLING, CHECKOUT, INTRUDER, Workspace, declarations_without_reports, read_lines
from tests.ops.test_metrics_health import get, samples, value


@contextmanager
def server(workspace: Workspace, tmp_path: Path, config: dict[str, Any]) -> Iterator[subprocess.Popen[bytes]]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
    with (tmp_path / "stdout").open("wb") as stdout, (tmp_path / "stderr").open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "authz_server", "serve", "--config", str(path)],
            stdout=stdout, stderr=stderr, env=env,
        )  # fmt: skip
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def wait_for(condition: Any, timeout_s: float, what: str, process: subprocess.Popen[bytes], tmp_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}: {(tmp_path / 'stderr').read_text()}")
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not within {timeout_s}s: {(tmp_path / 'stderr').read_text()[-3000:]}")


def send_checks(port: int, requests: list[external_auth_pb2.CheckRequest], threads: int = 4) -> list[str]:
    """Send every request over gRPC from a few threads; returns the decision ids of the replies."""
    ids: list[str] = []
    lock = threading.Lock()

    def worker(batch: list[external_auth_pb2.CheckRequest]) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            for request in batch:
                reply = stub.Check(request, timeout=10)
                found = reply.dynamic_metadata.fields["decision_id"].string_value
                with lock:
                    ids.append(found)

    workers = [threading.Thread(target=worker, args=(requests[i::threads],)) for i in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(60)
    return ids


def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=30)


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


def calls(workspace: Workspace, count: int) -> list[external_auth_pb2.CheckRequest]:
    kinds = [
        workspace.request(BILLING, "GET", "/v1/charges/9"),
        workspace.request(CHECKOUT, "POST", "/v1/charges"),
        workspace.request(INTRUDER, "GET", "/v1/charges/9"),
        workspace.request(None),
    ]
    return [kinds[i % len(kinds)] for i in range(count)]


# sync: the writer thread feeds the metrics; h2: the event loop does, once a read's answers are written.
@pytest.mark.parametrize("transport", ["sync", "h2"])
def test_not_ready_while_loading_then_ready_then_metrics_after_a_run_of_calls(
    workspace: Workspace, tmp_path: Path, transport: str
) -> None:
    metrics_port = free_port()
    config = workspace.server_config(
        listen=f"127.0.0.1:{free_port()}",
        transport=transport,
        metrics={"listen": f"127.0.0.1:{metrics_port}"},
        log={"decisions": "stdout"},
    )
    # A Workload API that never answers holds start-up for its timeout: the window in which probes must say no.
    config["identity"].update(workload_api_socket=f"unix://{tmp_path}/no-agent.sock", workload_api_start_timeout_s=2)
    with server(workspace, tmp_path, config) as process:
        wait_for(lambda: get(metrics_port, "/healthz")[0] == 200, 20, "/healthz", process, tmp_path)
        status, body = get(metrics_port, "/readyz")
        assert status == 503, body
        assert value(get(metrics_port, "/metrics")[1], "authz_ready") == 0

        wait_for(lambda: get(metrics_port, "/readyz")[0] == 200, 30, "/readyz 200", process, tmp_path)
        ids = send_checks(int(config["listen"].rsplit(":", 1)[1]), calls(workspace, 200))
        assert len(ids) == 200

        def counted() -> bool:
            found = samples(get(metrics_port, "/metrics")[1])
            return sum(v for (name, _), v in found.items() if name == "authz_decisions_total") == 200

        wait_for(counted, 10, "200 decisions in metrics", process, tmp_path)
        text = get(metrics_port, "/metrics")[1]
        assert value(text, "authz_decisions_total", verdict="allow", reason="allowed", mode="enforce") == 100
        assert value(text, "authz_decisions_total", verdict="deny", reason="no-matching-rule", mode="enforce") == 50
        assert value(text, "authz_decisions_total", verdict="deny", reason="no-identity", mode="enforce") == 50
        assert value(text, "authz_decision_duration_seconds_count") == 200
        assert value(text, "authz_stage_reloads_total", stage="policy", result="failure") == 0
        assert value(text, "authz_stage_up", stage="identity", state="degraded") == 0
        assert value(text, "authz_identity_source_info", source="files+workload-api", workload_api="connecting") == 1

        assert stop(process) == 0
    logged = read_lines(tmp_path / "stdout")
    assert sorted(line["decision_id"] for line in logged) == sorted(ids)


@pytest.mark.parametrize("transport", ["sync", "aio", "h2"])
def test_sigterm_writes_every_queued_decision_before_exit(workspace: Workspace, tmp_path: Path, transport: str) -> None:
    port = free_port()
    decisions = tmp_path / "decisions.jsonl"
    # The writer would wait a minute before writing: every line is still queued when SIGTERM arrives.
    config = workspace.server_config(
        listen=f"127.0.0.1:{port}",
        transport=transport,
        log={"decisions": str(decisions), "flush_interval_ms": 60_000},
    )
    with server(workspace, tmp_path, config) as process:

        def serving() -> bool:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                except grpc.RpcError:
                    return False
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

        wait_for(serving, 30, "gRPC SERVING", process, tmp_path)
        ids = send_checks(port, calls(workspace, 400))
        assert not decisions.exists() or decisions.stat().st_size == 0
        assert stop(process) == 0
    logged = [line["decision_id"] for line in read_lines(decisions)]
    assert len(logged) == 400
    assert sorted(logged) == sorted(ids)


def free_port_pair() -> int:
    """A port P with P+1 free too (both checked by binding them)."""
    for _ in range(50):
        first = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", first + 1))
            except OSError:
                continue
        return first
    raise AssertionError("no two adjacent free ports")


def test_each_worker_serves_its_own_metrics_on_the_next_port(workspace: Workspace, tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port_pair()
    config = workspace.server_config(
        listen=f"127.0.0.1:{port}", workers=2, metrics={"listen": f"127.0.0.1:{metrics_port}"}, log={"decisions": "off"}
    )
    ports = (metrics_port, metrics_port + 1)
    with server(workspace, tmp_path, config) as process:
        for worker_port in ports:
            ready = lambda p=worker_port: get(p, "/readyz")[0] == 200  # noqa: E731
            wait_for(ready, 30, f"worker ready on {worker_port}", process, tmp_path)
        # Separate connections, so the kernel spreads them over both workers' sockets.
        ids = send_checks(port, calls(workspace, 120), threads=8)

        def total() -> float:
            found = 0.0
            for worker_port in ports:
                scraped = samples(get(worker_port, "/metrics")[1])
                found += sum(v for (name, _), v in scraped.items() if name == "authz_decisions_total")
            return found

        wait_for(lambda: total() == len(ids), 10, "every decision counted by one worker", process, tmp_path)
        assert stop(process) == 0


def test_policy_reloads_show_in_metrics_with_the_live_version_and_a_bad_file_keeps_the_old_one(
    workspace: Workspace, tmp_path: Path
) -> None:
    metrics_port = free_port()
    config = workspace.server_config(
        listen=f"127.0.0.1:{free_port()}", metrics={"listen": f"127.0.0.1:{metrics_port}"}, log={"decisions": "off"}
    )
    config["policy"]["poll_interval_s"] = 0.2
    declarations = workspace.policies / "declarations.yaml"

    def scrape() -> str:
        return get(metrics_port, "/metrics")[1]

    def policy_version() -> str:
        (version,) = [dict(labels)["version"] for (name, labels), _ in samples(scrape()).items()
                      if name == "authz_stage_info" and dict(labels)["stage"] == "policy"]  # fmt: skip
        return version

    with server(workspace, tmp_path, config) as process:
        wait_for(lambda: get(metrics_port, "/readyz")[0] == 200, 30, "/readyz 200", process, tmp_path)
        first = policy_version()
        assert value(scrape(), "authz_stage_reloads_total", stage="policy", result="success") == 0

        declarations.write_text(declarations.read_text().replace("methods: [POST]", "methods: POST"))
        wait_for(
            lambda: value(scrape(), "authz_stage_reloads_total", stage="policy", result="failure") == 1,
            15, "a counted reload failure", process, tmp_path,
        )  # fmt: skip
        assert policy_version() == first
        assert value(scrape(), "authz_stage_up", stage="policy", state="degraded") == 0
        assert get(metrics_port, "/readyz")[0] == 200  # the last good set still serves

        declarations.write_text(declarations_without_reports())
        wait_for(
            lambda: value(scrape(), "authz_stage_reloads_total", stage="policy", result="success") == 1,
            15, "a counted reload", process, tmp_path,
        )  # fmt: skip
        second = policy_version()
        assert second != first
        assert value(scrape(), "authz_stage_up", stage="policy", state="ok") == 1
        assert value(scrape(), "authz_stage_age_seconds", stage="policy") < 10
        assert stop(process) == 0
    assert f"policy stage replaced: version {first} -> {second}" in (tmp_path / "stderr").read_text()


def test_an_unwritable_decision_log_is_a_clear_error_at_start(workspace: Workspace, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    config = workspace.server_config(listen=f"127.0.0.1:{free_port()}", log={"decisions": f"{blocker}/decisions.jsonl"})
    with server(workspace, tmp_path, config) as process:
        assert process.wait(timeout=60) == 78  # serve.EXIT_CANNOT_START
    assert f"log.decisions: cannot open {blocker}/decisions.jsonl" in (tmp_path / "stderr").read_text()

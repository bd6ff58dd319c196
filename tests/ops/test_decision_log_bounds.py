"""A decision line stays small whatever the caller sends: request-controlled values are cut and marked."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import jsonschema

from authz_server.audit.config import LogConfig
from authz_server.audit.log import DecisionLog
from authz_server.audit.record import MAX_VALUE_BYTES
from authz_server.audit.schema import decision_log_schema
from tests.ops.ops_support import BILLING, Workspace, read_lines, run_log


def test_a_60_kib_path_and_a_20_kib_header_make_a_small_marked_line(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path)
    log = run_log(tmp_path / "decisions.jsonl")
    authorizer = workspace.authorizer(log)
    path = "/v1/charges/" + "/".join(f"segment{n:05d}" for n in range(5_000))[: 60 * 1024]
    agent = "ü" * 10 * 1024  # two UTF-8 bytes each: the cut counts bytes, not characters
    try:
        authorizer.check(workspace.request(BILLING, "GET", path, headers={"user-agent": agent}))
        authorizer.check(workspace.request(BILLING, "GET", "/v1/charges/7"))
    finally:
        log.close()
    long, short = read_lines(tmp_path / "decisions.jsonl")
    for line in (long, short):
        jsonschema.validate(line, decision_log_schema())
    assert long["verdict"] == "allow", "cutting the logged value changes nothing about the decision"
    assert long["truncated"] == ["request.path", "request.headers.user-agent"]
    logged_path, logged_agent = long["request"]["path"], long["request"]["headers"]["user-agent"]
    assert logged_path.startswith(path[:1000])
    assert logged_path.endswith(f"...[truncated {len(path) - MAX_VALUE_BYTES} bytes]")
    assert logged_agent.endswith(f"...[truncated {2 * len(agent) - MAX_VALUE_BYTES} bytes]")
    assert len(logged_agent.encode()) < MAX_VALUE_BYTES + 40
    assert len((tmp_path / "decisions.jsonl").read_bytes()) < 4 * MAX_VALUE_BYTES
    assert "truncated" not in short and short["request"]["path"] == "/v1/charges/7"


def test_a_stalled_writer_holds_queue_max_bytes_not_queue_size_requests(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path)
    # Never started: nothing drains the queue, as behind a stdout pipe nobody reads.
    log = DecisionLog(LogConfig(decisions=str(tmp_path / "decisions.jsonl"), queue_max_bytes=2**20))
    authorizer = workspace.authorizer(log)
    # A short path, but 50 KiB of a header that is not even logged: the parsed call references all of it.
    authorizer.check(workspace.request(BILLING, "GET", "/v1/charges/0"))  # first-call allocations
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1_000):
            authorizer.check(
                workspace.request(BILLING, "GET", f"/v1/charges/{i}", headers={"x-padding": f"{i:06d}" * 8_500})
            )
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert log.queued < 1_000 and log.dropped == 1_001 - log.queued
    assert kept < 2 * 2**20, f"the queue kept {kept / 2**20:.1f} MiB"

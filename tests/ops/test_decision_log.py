"""The decision log as an operator reads it: schema, redaction, rotation, drops, nothing lost on close."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import jsonschema
import pytest

from authz_server.audit.config import LogConfig
from authz_server.audit.destinations import Stream
from authz_server.audit.log import DecisionLog
from authz_server.audit.schema import decision_log_schema
from tests.ops.ops_support import (
    BILLING,
    CHECKOUT,
    INTRUDER,
    LEDGER,
    PAYMENTS,
    Workspace,
    decision_id,
    read_lines,
    run_log,
)


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


def test_every_kind_of_decision_is_one_line_that_follows_the_published_schema(
    workspace: Workspace, tmp_path: Path
) -> None:
    path = tmp_path / "decisions.jsonl"
    log = run_log(path)
    authorizer = workspace.authorizer(log)
    requests = {
        "allowed": workspace.request(BILLING, "GET", "/v1/charges/42"),
        "denied by default": workspace.request(INTRUDER, "GET", "/v1/charges/42"),
        "no certificate": workspace.request(None),
        "unknown callee": workspace.request(CHECKOUT, destination="spiffe://example.org/ns/x/sa/y"),
        "dry-run": workspace.request(INTRUDER, "POST", "/v1/entries", destination=LEDGER),
    }
    ids = {name: decision_id(authorizer.check(request)) for name, request in requests.items()}
    log.close()

    lines = read_lines(path)
    validator = jsonschema.Draft202012Validator(
        decision_log_schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    for line in lines:
        validator.validate(line)
    by_id = {line["decision_id"]: line for line in lines}
    assert set(by_id) == set(ids.values())

    allowed = by_id[ids["allowed"]]
    assert allowed["verdict"] == "allow" and allowed["reason"] == "allowed" and allowed["http_status"] == 200
    assert allowed["source"]["spiffe_id"] == BILLING and allowed["source"]["proof"] == "certificate"
    assert allowed["destination"] == PAYMENTS
    assert allowed["policy"]["document"] == "payments/payments-api" and allowed["policy"]["rule"] == "billing-reads"
    assert allowed["mode"] == "enforce" and allowed["identity_error"] is None

    denied = by_id[ids["denied by default"]]
    assert (denied["verdict"], denied["reason"], denied["http_status"]) == ("deny", "no-matching-rule", 403)

    anonymous = by_id[ids["no certificate"]]
    assert anonymous["source"] is None and anonymous["policy"] is None
    assert anonymous["identity_error"]["reason"] == "no-identity" and anonymous["http_status"] == 401
    assert anonymous["peer"]["address"] == "10.0.0.7"
    assert by_id[ids["unknown callee"]]["reason"] == "unknown-workload"
    dry_run = by_id[ids["dry-run"]]
    assert (dry_run["verdict"], dry_run["mode"], dry_run["http_status"]) == ("dry-run-deny", "dry-run", 200)
    assert dry_run["policy"]["document"] == "payments/ledger" and dry_run["policy"]["mode"] == "dry-run"
    assert all(line["latency_us"]["total"] >= line["latency_us"]["identity"] for line in lines)


def test_query_strings_are_removed_and_only_configured_headers_are_logged_with_secrets_redacted(
    workspace: Workspace, tmp_path: Path
) -> None:
    path = tmp_path / "decisions.jsonl"
    log = run_log(path, headers=("user-agent", "authorization", "x-tenant"), redact=("authorization", "x-tenant"))
    authorizer = workspace.authorizer(log)
    headers = {
        "user-agent": "curl/8.5",
        "authorization": "Bearer eyJhbGciOiJFUzI1NiJ9.secret",
        "x-tenant": "acme-corp",
        "cookie": "session=hunter2",
    }
    authorizer.check(workspace.request(BILLING, "GET", "/v1/charges/7?card=4111111111111111", headers=headers))
    log.close()

    (line,) = read_lines(path)
    assert line["request"]["path"] == "/v1/charges/7"
    assert line["request"]["headers"] == {
        "user-agent": "curl/8.5",
        "authorization": "[redacted]",
        "x-tenant": "[redacted]",
    }
    text = path.read_text()
    for secret in ("4111111111111111", "hunter2", "secret", "acme-corp"):
        assert secret not in text


def test_close_writes_every_queued_decision(workspace: Workspace, tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    # A long flush interval: everything is still queued when close() is called.
    log = DecisionLog(LogConfig(decisions=str(path), flush_interval_ms=60_000))
    log.start()
    authorizer = workspace.authorizer(log)
    request = workspace.request(CHECKOUT, "POST", "/v1/charges")
    ids = [decision_id(authorizer.check(request)) for _ in range(3000)]
    assert log.queued > 0
    log.close()

    assert [line["decision_id"] for line in read_lines(path)] == ids
    assert log.dropped == 0 and log.written == 3000


def test_a_blocked_destination_costs_counted_lines_never_a_blocked_call(workspace: Workspace) -> None:
    read_end, write_end = os.pipe()
    writer = os.fdopen(write_end, "wb")
    log = DecisionLog(LogConfig(queue_size=50, flush_interval_ms=5), destination=Stream(writer))
    log.start()
    authorizer = workspace.authorizer(log)
    request = workspace.request(INTRUDER, "DELETE", "/v1/charges/" + "x" * 2000)
    total = 2000

    # Nobody reads the pipe: once its buffer is full the writer thread blocks in write().
    def send() -> None:
        for _ in range(total):
            authorizer.check(request)

    sender = threading.Thread(target=send)
    sender.start()
    sender.join(timeout=60)
    assert not sender.is_alive(), "check() blocked behind the decision log"
    assert log.dropped > 0

    lines: list[bytes] = []
    drained = threading.Thread(target=lambda: lines.extend(os.fdopen(read_end, "rb").read().splitlines()))
    drained.start()
    log.close()
    writer.close()
    drained.join(timeout=30)
    assert len(lines) + log.dropped == total
    assert log.written == len(lines)


def test_a_destination_that_fails_is_counted_and_the_writer_keeps_going(workspace: Workspace) -> None:
    log = DecisionLog(LogConfig(decisions="/dev/full", flush_interval_ms=10))
    log.start()
    authorizer = workspace.authorizer(log)
    for _ in range(20):
        authorizer.check(workspace.request(BILLING))
    log.close()
    assert log.write_failures == 20
    assert log.written == 0 and log.decisions == 20


def test_the_file_rotates_by_size_and_keeps_the_configured_backups(workspace: Workspace, tmp_path: Path) -> None:
    path = tmp_path / "logs" / "decisions.jsonl"
    log = run_log(path, max_bytes=20_000, backups=2)
    authorizer = workspace.authorizer(log)
    request = workspace.request(BILLING)
    ids = [decision_id(authorizer.check(request)) for _ in range(200)]
    log.close()

    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["decisions.jsonl", "decisions.jsonl.1", "decisions.jsonl.2"]
    kept = []
    for name in reversed(files):  # oldest first
        kept += [line["decision_id"] for line in read_lines(path.parent / name)]  # whole lines only
        assert (path.parent / name).stat().st_size <= 20_000
    # The newest lines survive, in order; the oldest went with the backups beyond the second.
    assert kept == ids[-len(kept) :]
    assert len(kept) < len(ids)

"""`authz-server incidents`: a scripted attack in a busy log reads as one case with its evidence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from authz_server.cli import main
from tests.ops.ops_support import (
    BILLING,
    CHECKOUT,
    INTRUDER,
    Workspace,
    decision_id,
    read_lines,
    risk_authorizer,
    run_log,
)

PROBES = [
    ("GET", "/admin"),
    ("GET", "/admin/users"),
    ("GET", "/v1/charges/1"),
    ("POST", "/v1/charges"),
    ("DELETE", "/v1/charges/1"),
    ("GET", "/v1/refunds/1"),
    ("PUT", "/v1/refunds/1"),
    ("GET", "/.env"),
    ("GET", "/v1/charges/../../etc/passwd"),
    ("GET", "/debug/pprof"),
]


def incidents(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    assert main(["incidents", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def attack_log(tmp_path: Path) -> tuple[Path, dict[str, list[str]]]:
    """Normal traffic with a compromised storefront probing payments in the middle, and one stray denial."""
    workspace = Workspace(tmp_path)
    path = tmp_path / "decisions.jsonl"
    log = run_log(path)
    authorizer = workspace.authorizer(log)
    ids: dict[str, list[str]] = {"normal": [], "attack": [], "stray": []}

    def send(kind: str, *args: Any, **kwargs: Any) -> None:
        ids[kind].append(decision_id(authorizer.check(workspace.request(*args, **kwargs))))

    for round_ in range(3):
        for method, route in PROBES:
            send("normal", CHECKOUT, "POST", "/v1/charges")
            send("normal", BILLING, "GET", f"/v1/charges/{round_}")
            send("attack", INTRUDER, method, route, address="10.1.1.66")
    send("stray", None, address="10.2.2.2")
    log.close()
    return path, ids


def test_a_scripted_attack_is_one_high_severity_incident_with_all_its_decision_ids(
    attack_log: tuple[Path, dict[str, list[str]]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, ids = attack_log

    report = incidents(capsys, "--log", str(path))

    assert report["decisions"] == 3 * len(PROBES) * 3 + 1
    attack, stray = report["incidents"]
    assert attack["caller"] == INTRUDER and attack["severity"] == "high"
    assert attack["decision_ids"] == ids["attack"]
    assert attack["events"] == attack["denied"] == 30
    assert attack["reasons"].keys() <= {"no-matching-rule", "invalid-path"}
    assert len(attack["routes"]) >= 9
    assert "GET /admin" in attack["routes"]
    assert stray["caller"] == "unverified@10.2.2.2" and stray["severity"] == "low"
    assert stray["decision_ids"] == ids["stray"] and stray["identity_errors"] == {"no-identity": 1}


def test_a_quiet_gap_longer_than_the_window_starts_a_new_incident(
    attack_log: tuple[Path, dict[str, list[str]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, ids = attack_log
    # The same log, with the attack's second half an hour later.
    later = set(ids["attack"][15:])
    shifted = tmp_path / "shifted.jsonl"
    with shifted.open("w") as out:
        for line in read_lines(path):
            if line["decision_id"] in later:
                line["ts"] += 3600
            out.write(json.dumps(line) + "\n")

    five_minutes = incidents(capsys, "--log", str(shifted), "--window", "5m", "--min-events", "2")
    two_hours = incidents(capsys, "--log", str(shifted), "--window", "2h", "--min-events", "2")

    assert [i["decision_ids"] for i in five_minutes["incidents"]] == [ids["attack"][:15], ids["attack"][15:]]
    assert [i["decision_ids"] for i in two_hours["incidents"]] == [ids["attack"]]


def test_text_report_names_the_case_and_its_evidence(
    attack_log: tuple[Path, dict[str, list[str]]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, ids = attack_log

    assert main(["incidents", "--log", str(path)]) == 0
    text = capsys.readouterr().out

    assert text.startswith("2 incident(s) from 31 event(s)")
    assert "[high] inc-" in text and INTRUDER in text
    assert "30 event(s), 30 denied" in text
    assert ids["attack"][0] in text and "--json lists all" in text
    assert main(["incidents", "--log", str(path), "--window", "soon"]) == 2
    assert "--window: expected a duration" in capsys.readouterr().err


def test_calls_denied_for_risk_join_the_caller_incident_with_their_factors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workspace = Workspace(tmp_path)
    path = tmp_path / "decisions.jsonl"
    log = run_log(path)
    # A ceiling of 0: every scored call is in the high band, so the outcome does not depend on the model's opinion.
    authorizer = risk_authorizer(workspace, log, allow_below=0.0, default_max_risk=0.0)
    requests = [workspace.request(BILLING, "GET", f"/v1/charges/{i}") for i in range(4)]
    allowed_but_risky = [decision_id(authorizer.check(request)) for request in requests]
    log.close()

    (incident,) = incidents(capsys, "--log", str(path))["incidents"]

    assert incident["caller"] == BILLING and incident["severity"] == "high"
    assert incident["decision_ids"] == allowed_but_risky
    assert incident["reasons"] == {"risk": 4} and incident["high_risk"] == 4
    assert incident["factors"] and incident["max_score"] is not None


def test_a_reader_that_closes_the_pipe_early_ends_the_command_quietly(
    attack_log: tuple[Path, dict[str, list[str]]],
) -> None:
    """`authz-server incidents --json | head`: no BrokenPipe traceback, the status a SIGPIPE would give."""
    import subprocess
    import sys

    path, _ = attack_log
    command = [sys.executable, "-m", "authz_server", "incidents", "--log", str(path), "--json"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before the first line is written
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr

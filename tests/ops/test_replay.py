"""`authz-server replay`: which logged verdicts a candidate policy set (or model) would change, and no others."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from authz_server.cli import main
from authz_server.risk.model import bundled_model_path
from tests.ops.ops_support import (
    BILLING,
    CHECKOUT,
    DECLARATIONS,
    INTRUDER,
    REPORTS,
    Workspace,
    decision_id,
    declarations_without_reports,
    read_lines,
    risk_authorizer,
    run_log,
)


@pytest.fixture
def logged(tmp_path: Path) -> tuple[Workspace, Path, dict[str, list[str]]]:
    """A decision log of a mixed run under the original declarations, and the decision ids per caller."""
    workspace = Workspace(tmp_path)
    path = tmp_path / "decisions.jsonl"
    log = run_log(path)
    authorizer = workspace.authorizer(log)
    ids: dict[str, list[str]] = {"checkout": [], "billing": [], "reports": [], "intruder": [], "anonymous": []}
    for round_ in range(5):
        ids["checkout"].append(decision_id(authorizer.check(workspace.request(CHECKOUT, "POST", "/v1/charges"))))
        ids["billing"].append(decision_id(authorizer.check(workspace.request(BILLING, "GET", f"/v1/charges/{round_}"))))
        ids["reports"].append(
            decision_id(authorizer.check(workspace.request(REPORTS, "GET", f"/v1/charges/{round_}?page=2")))
        )
        ids["intruder"].append(decision_id(authorizer.check(workspace.request(INTRUDER, "GET", "/v1/charges/1"))))
        ids["anonymous"].append(decision_id(authorizer.check(workspace.request(None))))
    log.close()
    return workspace, path, ids


def replay(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    code = main(["replay", *args])
    out = capsys.readouterr().out
    return code, json.loads(out) if "--json" in args else out


def test_replay_finds_exactly_the_verdicts_a_narrowed_rule_flips(
    logged: tuple[Workspace, Path, dict[str, list[str]]], capsys: pytest.CaptureFixture[str]
) -> None:
    workspace, path, ids = logged
    candidate = workspace.write_policies("candidate", declarations_without_reports())

    code, report = replay(capsys, "--log", str(path), "--policies", str(candidate), "--json")

    assert code == 0
    assert report["replayed"] == 20
    assert report["not_replayed"] == {"no verified caller (no-identity)": 5}
    assert sorted(c["decision_id"] for c in report["changes"]) == sorted(ids["reports"])
    assert report["transitions"] == {"allow -> deny": 5}
    change = report["changes"][0]
    assert change["caller"] == REPORTS and change["after_reason"] == "no-matching-rule"
    assert change["before_policy"].startswith("payments/payments-api@")
    assert report["unchanged"] == 15 and report["reason_changes"] == []


def test_replay_under_the_same_policies_changes_nothing_and_the_gate_passes(
    logged: tuple[Workspace, Path, dict[str, list[str]]], capsys: pytest.CaptureFixture[str]
) -> None:
    workspace, path, _ = logged
    same = workspace.write_policies("same", DECLARATIONS)

    code, text = replay(capsys, "--log", str(path), "--policies", str(same), "--fail-on-change")

    assert code == 0
    assert "0 verdict(s) would change" in text
    assert "20 replayed" in text


def test_a_widened_rule_lets_through_what_was_denied_and_the_gate_fails(
    logged: tuple[Workspace, Path, dict[str, list[str]]], capsys: pytest.CaptureFixture[str]
) -> None:
    workspace, path, ids = logged
    billing = "        - namespace: billing\n"
    widened = DECLARATIONS.replace(billing, billing + "        - namespace: web\n")
    candidate = workspace.write_policies("widened", widened)

    code, text = replay(capsys, "--log", str(path), "--policies", str(candidate), "--fail-on-change")

    assert code == 3
    assert "5 verdict(s) would change" in text
    assert "deny -> allow: 5" in text
    for decision in ids["intruder"]:
        assert decision in text
    assert "never scored" in text


def test_a_candidate_that_does_not_load_is_refused_with_its_problems(
    logged: tuple[Workspace, Path, dict[str, list[str]]], capsys: pytest.CaptureFixture[str]
) -> None:
    workspace, path, _ = logged
    broken = workspace.write_policies("broken", DECLARATIONS.replace("methods: [POST]", "methods: POST"))

    code = main(["replay", "--log", str(path), "--policies", str(broken)])

    assert code == 2
    err = capsys.readouterr().err
    assert "the candidate policies cannot be loaded" in err
    assert "declarations.yaml" in err


def test_lines_that_are_not_decisions_are_skipped_and_counted(
    logged: tuple[Workspace, Path, dict[str, list[str]]], capsys: pytest.CaptureFixture[str]
) -> None:
    workspace, path, _ = logged
    with path.open("a") as log:
        log.write("2026-11-24 12:00:00 INFO something else\n")
        log.write('{"schema": 1, "decision_id": "truncated", "verd\n')
    missing = str(path.parent / "nope.jsonl")

    code, report = replay(capsys, "--log", str(path), "--policies", str(workspace.policies), "--json")
    assert code == 0
    assert report["lines"]["skipped"] == 2 and report["replayed"] == 20

    assert main(["replay", "--log", missing, "--policies", str(workspace.policies)]) == 2
    assert "no such file" in capsys.readouterr().err


def test_a_candidate_model_and_thresholds_rescore_the_logged_features(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:

    workspace = Workspace(tmp_path)
    path = tmp_path / "decisions.jsonl"
    log = run_log(path)
    authorizer = risk_authorizer(workspace, log)
    scored = [decision_id(authorizer.check(workspace.request(BILLING, "GET", f"/v1/charges/{i}"))) for i in range(6)]
    scored += [decision_id(authorizer.check(workspace.request(CHECKOUT, "POST", "/v1/charges"))) for _ in range(4)]
    denied = [decision_id(authorizer.check(workspace.request(INTRUDER, "GET", "/v1/charges/1"))) for _ in range(2)]
    log.close()
    model = str(bundled_model_path())

    code, same = replay(capsys, "--log", str(path), "--policies", str(workspace.policies), "--model", model, "--json")
    assert code == 0
    assert same["replayed"] == 12 and same["changed"] == 0 and same["model_version"]

    logged = {line["decision_id"]: line for line in read_lines(path)}
    risk_denied = {i for i in scored if logged[i]["reason"] == "risk"}
    allowed = {i for i in scored if logged[i]["verdict"] == "allow"}
    assert risk_denied | allowed == set(scored)

    # The same model under other thresholds: exactly the calls on the other side of the new line flip.
    def under(name: str, config: str) -> dict[str, Any]:
        (tmp_path / name).write_text(config)
        code, report = replay(
            capsys, "--log", str(path), "--policies", str(workspace.policies), "--model", model,
            "--config", str(tmp_path / name), "--json",
        )  # fmt: skip
        assert code == 0
        for change in report["changes"]:
            assert change["after_score"] == pytest.approx(change["before_score"], abs=1e-6)
        return report

    strict = under("strict.yaml", "risk:\n  allow_below: 0.0\n  default_max_risk: 0.0\n")
    assert {c["decision_id"] for c in strict["changes"]} == allowed
    assert {(c["after_verdict"], c["after_reason"]) for c in strict["changes"]} <= {("deny", "risk")}
    lenient = under("lenient.yaml", "risk:\n  allow_below: 0.3\n  default_max_risk: 1.0\n")
    assert {c["decision_id"] for c in lenient["changes"]} == risk_denied
    assert {(c["after_verdict"], c["after_reason"]) for c in lenient["changes"]} <= {("allow", "allowed")}
    assert not set(denied) & {c["decision_id"] for c in strict["changes"] + lenient["changes"]}


def test_without_a_model_a_lowered_max_risk_is_decided_from_the_logged_score(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A candidate lowering maxRisk from 1 to 0.05: the CI gate must see the flips without --model."""
    lenient = DECLARATIONS.replace(
        "paths: [/v1/charges, /v1/refunds/*]", "paths: [/v1/charges, /v1/refunds/*]\n      maxRisk: 1"
    )
    workspace = Workspace(tmp_path, declarations=lenient)
    path = tmp_path / "decisions.jsonl"
    log = run_log(path)
    authorizer = risk_authorizer(workspace, log)
    ids = [decision_id(authorizer.check(workspace.request(CHECKOUT, "POST", "/v1/charges"))) for _ in range(4)]
    log.close()
    logged = {line["decision_id"]: line for line in read_lines(path)}
    above = {i for i in ids if logged[i]["risk"]["score"] > 0.05 and logged[i]["verdict"] == "allow"}
    assert above, "the bundled model scores a new edge above 0.05 (about 0.99)"
    candidate = workspace.write_policies("candidate", lenient.replace("maxRisk: 1", "maxRisk: 0.05"))

    code, report = replay(capsys, "--log", str(path), "--policies", str(candidate), "--json")
    assert code == 0
    assert {c["decision_id"] for c in report["changes"]} == above
    assert {(c["after_verdict"], c["after_reason"]) for c in report["changes"]} == {("deny", "risk")}
    assert main(["replay", "--log", str(path), "--policies", str(candidate), "--fail-on-change"]) == 3

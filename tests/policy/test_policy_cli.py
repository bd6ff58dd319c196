"""`authz-server policy validate|explain|test` and `authz-server grant`: output and exit status."""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import time
from pathlib import Path

import pytest
import yaml
from policy_support import CHECKOUT, EXAMPLES, PAYMENTS, STRANGER, allowed_calls, decide, write

from authz_server.policy import load_policies
from authz_server.policy.cli import add_commands


def run(*argv: str) -> int:
    """Parse and run one command exactly as `authz-server` registers it."""
    parser = argparse.ArgumentParser(prog="authz-server")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.handler(args)
    return status


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    shutil.copytree(EXAMPLES, directory)
    return directory


def test_validate_ok(policies: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("policy", "validate", str(policies)) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: 4 documents, 7 rules, 2 quarantine entries, 1 test documents; version ")


def test_validate_reports_every_problem_and_fails(policies: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (policies / "payments-api.yaml").read_text()
    (policies / "payments-api.yaml").write_text(text.replace("methods: [POST]", "methods: [post]"))
    write(policies, "typo.yaml", allowed_calls("typo", f"workload: {PAYMENTS}\nrulez: []"))
    assert run("policy", "validate", str(policies)) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"{policies}/payments-api.yaml:16: spec.rules[0].to[0].methods[0]: 'post': "
        "methods are written in upper case (GET, POST), or * for any",
        f"{policies}/typo.yaml:6: spec: missing required key 'rules'",
        f"{policies}/typo.yaml:8: unknown key 'rulez' in spec (known: mode, riskShadow, rules, workload, workloadKey)",
        "invalid: 3 error(s), 0 warning(s)",
    ]


def test_validate_strict_fails_on_warnings(policies: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = f"""
        workload: {PAYMENTS}
        rules:
          - name: old
            from: [{{id: {CHECKOUT}}}]
            to: [{{methods: [GET], paths: [/x]}}]
            expires: 2020-01-01T00:00:00Z
        """
    write(policies, "old.yaml", allowed_calls("old", spec))
    assert run("policy", "validate", str(policies)) == 0
    assert "old.yaml:12: warning: rule 'old' expired at 2020-01-01T00:00:00Z" in capsys.readouterr().out
    assert run("policy", "validate", "--strict", str(policies)) == 1


def test_validate_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("policy", "validate", str(tmp_path / "nope")) == 1
    assert f"{tmp_path}/nope: no such file or directory" in capsys.readouterr().out


def test_explain_allow(policies: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = run("policy", "explain", "--from", CHECKOUT, "--to", PAYMENTS, "--method", "POST", "--path",
                 "/v1/charges?dry=1", "--policies", str(policies))  # fmt: skip
    out = capsys.readouterr().out
    assert status == 0
    assert "verdict: allow (allowed)" in out
    assert f"deciding rule: checkout-charges (allow) at {policies}/payments-api.yaml:11" in out
    assert "maxRisk: 0.8, onRiskTimeout: allow" in out


def test_explain_deny_names_the_nearest_rules(policies: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run("policy", "explain", "--from", CHECKOUT, "--to", PAYMENTS, "--method", "GET", "--path", "/v1/refunds/r1",
        "--policies", str(policies))  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "verdict: deny (no-matching-rule)"
    assert "nearest rules and why they did not match:" in out
    first = out.index("nearest rules and why they did not match:") + 1
    assert out[first].startswith("  checkout-charges (allow, payments/payments-api")
    assert out[first + 1] == "    - method GET is not one of POST"


def test_explain_path_confusion_and_headers(policies: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run("policy", "explain", "--from", CHECKOUT, "--to", PAYMENTS, "--method", "GET", "--path",
        "/v1/charges/..;/admin", "--policies", str(policies))  # fmt: skip
    out = capsys.readouterr().out
    assert "verdict: deny (invalid-path)" in out and "cannot be normalised safely" in out
    reconciler = "spiffe://example.org/ns/billing/sa/reconciler"
    run("policy", "explain", "--from", reconciler, "--to", PAYMENTS, "--method", "GET", "--path", "/v1/reports/q",
        "--header", "X-Tenant=eu", "--policies", str(policies))  # fmt: skip
    assert "verdict: allow" in capsys.readouterr().out


def test_explain_bad_input(policies: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("policy", "explain", "--from", "not-an-id", "--to", PAYMENTS, "--method", "GET", "--path", "/",
               "--policies", str(policies)) == 2  # fmt: skip
    assert "authz-server:" in capsys.readouterr().err


def test_policy_test_passes_and_fails(policies: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("policy", "test", str(policies)) == 0
    assert capsys.readouterr().out.strip().endswith("7/7 cases passed")
    text = (policies / "payments-api.yaml").read_text()
    (policies / "payments-api.yaml").write_text(text.replace("paths: [/v1/charges, /v1/refunds/*]", "paths: [/v1/x]"))
    assert run("policy", "test", str(policies)) == 1
    out = capsys.readouterr().out
    assert f"FAIL {policies}/payments-api.test.yaml:10: checkout charges" in out
    assert "  expected allow, got deny (no-matching-rule)" in out
    assert out.strip().endswith("6/7 cases passed")


def test_policy_test_without_cases_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "a.yaml", allowed_calls("a", f"workload: {PAYMENTS}\nrules: []"))
    assert run("policy", "test", str(tmp_path)) == 1
    assert "no AllowedCallsTest documents found" in capsys.readouterr().out


def test_grant_writes_a_time_boxed_declaration(policies: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = time.time()
    assert run("grant", "--from", STRANGER, "--to", PAYMENTS, "--method", "get", "--path", "/v1/charges/*",
               "--ttl", "15m", "--reason", "INC-7", "--out", str(policies)) == 0  # fmt: skip
    assert "wrote " in capsys.readouterr().err
    (written,) = policies.glob("grant-*.yaml")
    document = yaml.safe_load(written.read_text())
    assert document["metadata"]["namespace"] == "payments"
    assert document["metadata"]["annotations"] == {"authz-server.dev/reason": "INC-7"}
    rule = document["spec"]["rules"][0]
    assert rule["from"] == [{"id": STRANGER}] and rule["to"] == [{"methods": ["GET"], "paths": ["/v1/charges/*"]}]
    expires = dt.datetime.fromisoformat(rule["expires"]).timestamp()
    assert before + 900 - 2 <= expires <= time.time() + 900
    merged = load_policies([str(policies)])
    assert (
        decide(merged, STRANGER, "GET", "/v1/charges/c1").document
        == document["metadata"]["namespace"] + "/" + (document["metadata"]["name"])
    )
    assert not decide(merged, STRANGER, "GET", "/v1/charges/c1", now=expires).allowed
    assert run("policy", "validate", str(policies)) == 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ttl", "15x"], "--ttl: expected a duration such as 15m, 2h or 1d"),
        (["--ttl", "31d"], "a grant may last at most 30d"),
        (["--ttl", "1h", "--path", "/a/../b"], "is not in normalised form"),
        (["--ttl", "1h", "--path", "/a*"], "must be a whole segment"),
    ],
)
def test_grant_rejects_bad_input(flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["grant", "--from", STRANGER, "--to", PAYMENTS, "--method", "GET"]
    if "--path" not in flags:
        argv += ["--path", "/v1/charges"]
    assert run(*argv, *flags) == 2
    assert message in capsys.readouterr().err


def test_grant_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("grant", "--from", CHECKOUT, "--to", PAYMENTS, "--method", "POST", "--path", "/v1/x", "--ttl", "2h") == 0
    out = capsys.readouterr().out
    assert out.startswith("# Time-boxed grant written by `authz-server grant` (ttl 2h).")
    assert yaml.safe_load(out)["kind"] == "AllowedCalls"


def test_registered_on_the_authz_server_command(capsys: pytest.CaptureFixture[str]) -> None:
    from authz_server.cli import main

    assert main(["policy", "validate", str(EXAMPLES)]) == 0
    assert capsys.readouterr().out.startswith("ok: ")


def test_validate_strict_never_calls_a_stricter_rule_evaluation_picks_shadowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A prefix grant followed by a stricter exact-id grant: evaluation tries the exact-id rule first."""
    spec = f"""
        workload: {PAYMENTS}
        rules:
          - name: everyone
            from: [{{prefix: "spiffe://example.org/*"}}]
            to: [{{methods: [GET], paths: ["/v1/**"]}}]
            maxRisk: 0.9
          - name: checkout-strict
            from: [{{id: {CHECKOUT}}}]
            to: [{{methods: [GET], paths: [/v1/charges]}}]
            maxRisk: 0.2
        """
    directory = tmp_path / "policies"
    directory.mkdir()
    write(directory, "p.yaml", allowed_calls("p", spec))
    assert decide(load_policies([str(directory)]), CHECKOUT, "GET", "/v1/charges").max_risk == 0.2
    assert run("policy", "validate", "--strict", str(directory)) == 0, capsys.readouterr().out
    assert "shadowed" not in capsys.readouterr().out


def test_validate_says_when_a_rule_tried_first_overrides_risk_terms(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = f"""
        workload: {PAYMENTS}
        rules:
          - name: checkout-all
            from: [{{id: {CHECKOUT}}}]
            to: [{{methods: [GET], paths: ["/v1/**"]}}]
          - name: checkout-strict
            from: [{{id: {CHECKOUT}}}]
            to: [{{methods: [GET], paths: [/v1/charges]}}]
            maxRisk: 0.2
          - name: checkout-again
            from: [{{id: {CHECKOUT}}}]
            to: [{{methods: [GET], paths: [/v1/refunds]}}]
        """
    directory = tmp_path / "policies"
    directory.mkdir()
    write(directory, "p.yaml", allowed_calls("p", spec))
    assert decide(load_policies([str(directory)]), CHECKOUT, "GET", "/v1/charges").rule == "checkout-all"
    assert run("policy", "validate", "--strict", str(directory)) == 1
    out = capsys.readouterr().out
    assert "rule 'checkout-strict' never decides: rule 'checkout-all'" in out
    assert "rule 'checkout-again' is shadowed: rule 'checkout-all'" in out


def _case_file(directory: Path, spec_at: str, case_at: str | None, expect: str) -> None:
    grant = f"""
        workload: {PAYMENTS}
        rules:
          - name: launch-window
            from: [{{id: {CHECKOUT}}}]
            to: [{{methods: [GET], paths: [/v1/charges]}}]
            expires: 2020-01-01T00:00:00Z
        """
    case_at_line = f"\n      at: {case_at}" if case_at is not None else ""
    test = f"""apiVersion: authz-server.dev/v1alpha1
kind: AllowedCallsTest
metadata: {{name: t, namespace: payments}}
spec:
  at: {spec_at}
  cases:
    - name: during the launch window{case_at_line}
      from: {CHECKOUT}
      to: {PAYMENTS}
      method: GET
      path: /v1/charges
      expect: {expect}
"""
    directory.mkdir(exist_ok=True)
    write(directory, "grant.yaml", allowed_calls("grant", grant))
    (directory / "grant.test.yaml").write_text(test)


@pytest.mark.parametrize(("spec_at", "case_at"), [("not-a-time", None), ("2019-06-01T00:00:00Z", "yesterday")])
def test_an_unparsable_test_time_is_an_error_naming_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spec_at: str, case_at: str | None
) -> None:
    directory = tmp_path / "policies"
    _case_file(directory, spec_at, case_at, "allow")
    key = "spec.at" if case_at is None else "spec.cases[0].at"
    bad = spec_at if case_at is None else case_at
    assert run("policy", "validate", str(directory)) == 1
    assert f"{key}: {bad!r} is not an RFC 3339 time" in capsys.readouterr().out
    assert run("policy", "test", str(directory)) == 1
    assert f"{key}: {bad!r} is not an RFC 3339 time" in capsys.readouterr().out


def test_the_epoch_is_a_time_not_now(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The grant expired in 2020: as of 1970 it is live, as of now it is not."""
    directory = tmp_path / "policies"
    _case_file(directory, "1970-01-01T00:00:00Z", None, "allow")
    assert run("policy", "test", str(directory)) == 0, capsys.readouterr().out
    _case_file(directory, "2019-06-01T00:00:00Z", "1970-01-01T00:00:00Z", "allow")
    assert run("policy", "test", str(directory)) == 0, capsys.readouterr().out


def test_grant_into_a_missing_directory_is_an_error_not_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "grants"
    assert run("grant", "--from", STRANGER, "--to", PAYMENTS, "--method", "GET", "--path", "/v1/charges/*",
               "--ttl", "15m", "--out", f"{out}/") == 2  # fmt: skip
    assert f"--out {out}/: no such directory" in capsys.readouterr().err
    assert not out.exists()
    assert run("grant", "--from", STRANGER, "--to", PAYMENTS, "--method", "GET", "--path", "/v1/charges/*",
               "--ttl", "15m", "--out", f"{out}/g.yaml") == 2  # fmt: skip
    assert f"directory {out} does not exist" in capsys.readouterr().err


def test_explain_without_policies_says_what_it_looked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run("policy", "explain", "--from", CHECKOUT, "--to", PAYMENTS, "--method", "GET", "--path", "/") == 2
    err = capsys.readouterr().err
    assert "./policies (the default) does not exist here" in err and "--policies" in err


def test_validate_reports_schema_and_semantic_problems_in_one_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = f"""
        workload: {PAYMENTS}
        rules:
          - name: typo
            from: [{{id: {CHECKOUT}}}]
            to: [{{methods: [GET], paths: [/v1/x]}}]
            maxRisc: 0.2
          - name: bad-caller
            from: [{{id: "spiffe://Example.ORG/ns/a/sa/b"}}]
            to: [{{methods: [GET], paths: [/v1/y]}}]
            expires: next-week
        """
    write(tmp_path, "p.yaml", allowed_calls("p", spec))
    assert run("policy", "validate", str(tmp_path)) == 1
    out = capsys.readouterr().out
    assert "unknown key 'maxRisc'" in out
    assert "write the SPIFFE ID as spiffe://example.org/ns/a/sa/b" in out
    assert "'next-week' is not an RFC 3339 time" in out

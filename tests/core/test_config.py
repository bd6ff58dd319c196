import re
import typing
from pathlib import Path
from typing import Literal

import pytest
import yaml

from authz_server.cli import main
from authz_server.config import ConfigError, env_name, flag_name, load_config, to_plain
from authz_server.config_reference import README_BEGIN, README_END


def test_defaults_load_without_a_file() -> None:
    config = load_config()
    assert config.listen == "127.0.0.1:9191"
    assert config.risk.budget_ms > 0


def test_precedence_is_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("workers: 3\nrisk:\n  budget_ms: 5\n  enabled: false\n")
    config = load_config(path, {"AUTHZ_RISK_BUDGET_MS": "7", "AUTHZ_WORKERS": "2"}, {"workers": "1"})
    assert config.workers == 1
    assert config.risk.budget_ms == 7.0
    assert config.risk.enabled is False


def test_every_problem_names_its_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("listen: nowhere\nworkers: many\nrisk:\n  budget_ms: -1\n  colour: red\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path, {"AUTHZ_NOPE": "1"})
    problems = "\n".join(raised.value.problems)
    assert f"workers: expected int, got 'many' (in {path})" in problems
    assert "object at 0x" not in problems
    assert "risk.colour: unknown key" in problems
    assert "AUTHZ_NOPE: unknown configuration variable" in problems


def test_type_and_semantic_problems_are_reported_in_one_pass(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("listen: nowhere\nthreads: many\nrisk:\n  budget_ms: -1\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path, {})
    assert raised.value.problems == [
        f"threads: expected int, got 'many' (in {path})",
        f"listen: expected HOST:PORT or unix:/PATH, got 'nowhere' (in {path})",
        f"risk.budget_ms: must be > 0, got -1.0 (in {path})",
    ]


def test_config_show_prints_the_effective_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("workers: 3\n")
    monkeypatch.setenv("AUTHZ_THREADS", "6")
    assert main(["config", "show", "--config", str(path), "--risk-budget-ms", "1.5"]) == 0
    shown = capsys.readouterr().out
    assert "workers: 3" in shown and "threads: 6" in shown and "budget_ms: 1.5" in shown


def test_config_show_reports_invalid_configuration_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "show", "--workers", "-4"]) == 2
    assert "workers: must be >= 0" in capsys.readouterr().err


# --- every documented key, through its variable and its flag ----------------------------------------------------

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
DOCUMENTED = re.findall(r"^\| `([a-z_.]+)` \|", README.split(README_BEGIN, 1)[1].split(README_END, 1)[0], re.M)

# Values that differ from the default and pass every check; keys not named here get one derived from their type.
TEXT_VALUES: dict[str, tuple[str, object]] = {
    "listen": ("127.0.0.1:9292", "127.0.0.1:9292"),
    "transport": ("sync", "sync"),
    "identity.trust_domains": (
        "{example.org: {bundle: /b.pem}}",
        {"example.org": {"bundle": "/b.pem", "jwt_bundle": ""}},
    ),
    "identity.sources": ("certificate,jwt", ["certificate", "jwt"]),
    "identity.xfcc_trusted_proxies": (
        "spiffe://example.org/ns/edge/sa/gw, destination",
        ["spiffe://example.org/ns/edge/sa/gw", "destination"],
    ),
    "identity.workload_api_socket": ("unix:///run/spire/agent.sock", "unix:///run/spire/agent.sock"),
    "policy.paths": ("/etc/policies,/srv/more policies", ["/etc/policies", "/srv/more policies"]),
    "risk.allow_below": ("0.25", 0.25),
    "risk.default_max_risk": ("0.8", 0.8),
    "log.decisions": ("off", "off"),
    "log.headers": ("x-request-id,x-tenant", ["x-request-id", "x-tenant"]),
    "log.redact": ("authorization", ["authorization"]),
    "metrics.listen": ("127.0.0.1:9099", "127.0.0.1:9099"),
    # Keys other branches add (merged later): listed here so their tests need no edit on merge.
    "callers.mode": ("xfcc", "xfcc"),
    "callers.gateways": (
        "spiffe://example.org/ns/istio-system/sa/ingress",
        ["spiffe://example.org/ns/istio-system/sa/ingress"],
    ),
}


def _value_for(key: str) -> tuple[str, object]:
    if key in TEXT_VALUES:
        return TEXT_VALUES[key]
    default = _lookup(to_plain(load_config()), key)
    from authz_server.config import settable_keys  # not on main: there, only the entries above and below apply

    hint = dict(settable_keys())[key]
    other = [c for c in typing.get_args(hint) if c != default] if typing.get_origin(hint) is Literal else []
    if other:
        return str(other[0]), other[0]
    if isinstance(default, bool):
        return str(not default).lower(), not default
    if isinstance(default, int):
        return str(default * 2 + 1), default * 2 + 1
    if isinstance(default, float):
        return str(default * 2 + 1), default * 2 + 1
    if isinstance(default, str):
        return "x-chosen", "x-chosen"
    raise AssertionError(f"{key}: give it a value in TEXT_VALUES")


def _lookup(plain: object, key: str) -> object:
    for part in key.split("."):
        assert isinstance(plain, dict)
        plain = plain[part]
    return plain


def _keys(plain: dict[str, object], prefix: str = "") -> list[str]:
    """Dotted keys of the shown configuration: sections are non-empty mappings, everything else a key."""
    keys = []
    for name, value in plain.items():
        is_section = isinstance(value, dict) and value and name != "trust_domains"
        keys.extend(_keys(value, f"{prefix}{name}.") if is_section else [f"{prefix}{name}"])  # type: ignore[arg-type]
    return keys


def test_the_reference_documents_every_key() -> None:
    assert _keys(to_plain(load_config())) == DOCUMENTED


@pytest.mark.parametrize("key", DOCUMENTED)
def test_every_documented_key_is_set_by_its_variable(key: str) -> None:
    text, expected = _value_for(key)
    assert _lookup(to_plain(load_config(environ={env_name(key): text})), key) == expected


@pytest.mark.parametrize("key", DOCUMENTED)
def test_every_documented_key_is_set_by_its_flag(key: str, capsys: pytest.CaptureFixture[str]) -> None:
    text, expected = _value_for(key)
    assert main(["config", "show", flag_name(key), text]) == 0, capsys.readouterr().err
    assert _lookup(yaml.safe_load(capsys.readouterr().out), key) == expected


def test_list_flags_repeat_and_list_variables_take_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--policy-paths", "policies/", "--log-headers", "a", "--log-headers", "b,c"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["policy"]["paths"] == ["policies/"] and shown["log"]["headers"] == ["a", "b", "c"]
    config = load_config(environ={"AUTHZ_POLICY_PATHS": '[/a, "/b,c"]'})
    assert config.policy.paths == ("/a", "/b,c")


def test_every_problem_is_reported_at_once_with_where_its_value_came_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("policy:\n  poll_interval_s: 0\n")
    monkeypatch.setenv("AUTHZ_WORKERS", "two")
    assert main(["config", "show", "--config", str(path), "--risk-budget-ms", "-1", "--threads", "x"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[1:] == [
        "  workers: expected int, got 'two' (from AUTHZ_WORKERS)",
        "  threads: expected int, got 'x' (from --threads)",
        f"  policy.poll_interval_s: must be > 0, got 0.0 (in {path})",
        "  risk.budget_ms: must be > 0, got -1.0 (from --risk-budget-ms)",
    ]

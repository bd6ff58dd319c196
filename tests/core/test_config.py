from pathlib import Path

import pytest

from authz_server.cli import main
from authz_server.config import ConfigError, load_config


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
    assert "workers: expected int, got 'many'" in problems
    assert "risk.colour: unknown key" in problems
    assert "AUTHZ_NOPE: unknown configuration variable" in problems


def test_semantic_validation_runs_once_types_are_right(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("listen: nowhere\nrisk:\n  budget_ms: -1\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path, {})
    assert raised.value.problems == [
        "listen: expected HOST:PORT or unix:/PATH, got 'nowhere'",
        "risk.budget_ms: must be > 0, got -1.0",
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

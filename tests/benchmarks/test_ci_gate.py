"""The CI latency gate itself, at a tiny scale: it measures both steps and fails on a threshold it cannot meet."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.ci_gate import main

TINY = """
inprocess: {{rounds: 1, calls_per_round: 300, seconds_per_round: 5, min_calls_per_s: {min_calls}}}
grpc: {{enabled: true, seconds: 1, warmup_seconds: 0.5, concurrency: 4, min_rps: 1, min_floor_share: 0.01}}
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (Debian nghttp2-client) is not installed")
def test_the_gate_measures_the_decision_path_and_the_real_server(tmp_path: Path) -> None:
    config = tmp_path / "gate.yaml"
    config.write_text(TINY.format(min_calls=1))
    out = tmp_path / "gate.json"

    assert main(["--config", str(config), "--json", str(out)]) == 0

    measured = json.loads(out.read_text())
    assert measured["inprocess"]["median_p50_us"] > 0
    assert measured["grpc"]["rps"] > 0 and measured["grpc"]["errors"] == 0
    # The same run measured the always-allow floor, and the gate holds the server to a share of it.
    assert measured["grpc"]["floor_rps"] > 0
    assert measured["grpc"]["floor_share"] == pytest.approx(measured["grpc"]["rps"] / measured["grpc"]["floor_rps"])


def test_the_gate_fails_a_build_below_its_floor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "gate.yaml"
    config.write_text(TINY.format(min_calls=10**9).replace("enabled: true", "enabled: false"))

    assert main(["--config", str(config), "--json", str(tmp_path / "gate.json")]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_an_invalid_gate_configuration_is_refused_with_its_key(tmp_path: Path) -> None:
    config = tmp_path / "gate.yaml"
    config.write_text("inprocess: {rounds: 0}\n")
    assert main(["--config", str(config), "--json", str(tmp_path / "gate.json")]) == 2

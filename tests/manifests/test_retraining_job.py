"""The retraining CronJob's script, run for real: from a snapshot of the live logs, old files dropped, the model
renamed into place, nothing left behind. /logs and /models become temporary directories; `authz-server` is
this checkout's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from manifest_support import build_with_components, find

from authz_server.cli import main
from authz_server.risk import AnomalyModel


def _script() -> str:
    cron = find(build_with_components("overlays/istio", "components/retraining"), "CronJob", "authz-server-retrain")
    (train,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert train["command"][:2] == ["sh", "-c"]
    script: str = train["command"][2]
    return script


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    # A tenth of the site's rates: 5,300 calls over the half day, past what training needs (800), so the job's run is
    # about its files; the full rates (53,000 calls) took 40 s to simulate and train, and test nothing more here.
    assert main(["model", "synth", "--out", str(out), "--days", "0.5", "--seed", "5", "--scale", "0.1"]) == 0
    return out / "decisions.jsonl"


def test_the_job_trains_from_a_snapshot_of_every_log_and_cleans_up(baseline: Path, tmp_path: Path) -> None:
    logs, models = tmp_path / "logs", tmp_path / "models"
    logs.mkdir()
    models.mkdir()
    lines = baseline.read_text().splitlines(keepends=True)
    third = len(lines) // 3
    (logs / "decisions-a.jsonl.1").write_text("".join(lines[:third]))  # rotated
    (logs / "decisions-a.jsonl").write_text("".join(lines[third : 2 * third]))  # live
    (logs / "decisions-b.jsonl").write_text("".join(lines[2 * third :]))
    stale = logs / "decisions-gone.jsonl"
    stale.write_text(lines[0])
    month_ago = time.time() - 30 * 86400
    os.utime(stale, (month_ago, month_ago))
    script = _script().replace("/logs", str(logs)).replace("/models", str(models))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env, timeout=600, check=False)

    assert result.returncode == 0, result.stdout + result.stderr
    card = AnomalyModel.load(models / "model.onnx").card
    source = card.training["source"]  # "decision logs: FILE, FILE, ... (N lines)"
    for name in ("decisions-a.jsonl.1", "decisions-a.jsonl,", "decisions-b.jsonl"):
        assert name in source, source
    assert "decisions-gone" not in source, source
    assert not stale.exists(), "logs older than 14 days stay in the baseline"
    assert sorted(p.name for p in logs.iterdir()) == ["decisions-a.jsonl", "decisions-a.jsonl.1", "decisions-b.jsonl"]
    assert sorted(p.name for p in models.iterdir()) == ["model.onnx"]


def test_without_logs_the_job_succeeds_and_keeps_the_model(tmp_path: Path) -> None:
    logs, models = tmp_path / "logs", tmp_path / "models"
    logs.mkdir()
    models.mkdir()
    shutil.copy(Path(__file__), models / "model.onnx")  # any bytes: must stay untouched
    before = (models / "model.onnx").read_bytes()
    script = _script().replace("/logs", str(logs)).replace("/models", str(models))

    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60, check=False)

    assert result.returncode == 0 and "nothing to train on" in result.stdout, result.stderr
    assert (models / "model.onnx").read_bytes() == before and list(logs.iterdir()) == []

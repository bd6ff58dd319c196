"""`authz-server model synth | train | evaluate | info` on small generated sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from authz_server.cli import main
from authz_server.risk import AnomalyModel
from authz_server.risk.training import read_decision_logs, read_labels


@pytest.fixture(scope="module")
def synthetic_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from authz_server.risk.synthetic import baseline

    out = tmp_path_factory.mktemp("synth") / "baseline.jsonl"
    with out.open("w") as handle:
        for i, sample in enumerate(baseline(3, 12), 1):
            handle.write(json.dumps(sample.record(f"synthetic-{i:08d}")) + "\n")
    return out


def test_train_from_decision_logs_feeds_false_positives_back(synthetic_log: Path, tmp_path: Path) -> None:
    # An operator marks two risk denials as false positives: one in a label file, one with a field in the line.
    lines = synthetic_log.read_text().splitlines()
    flagged = json.loads(lines[10])
    flagged.update(decision_id="fp-1", verdict="deny", reason="risk")
    inline = json.loads(lines[11])
    inline.update(decision_id="fp-2", verdict="deny", reason="risk", label="false-positive")
    attack = json.loads(lines[12])
    attack.update(decision_id="tp-1", label="true-positive")
    extra = tmp_path / "reviewed.jsonl"
    extra.write_text("\n".join(json.dumps(r) for r in (flagged, inline, attack)) + "\n")
    labels = tmp_path / "labels.txt"
    labels.write_text("# reviewed by on-call\nfp-1 false-positive\n")
    out = tmp_path / "model.onnx"

    code = main(["model", "train", "--baseline", str(synthetic_log), str(extra), "--labels", str(labels),
                 "--epochs", "5", "--out", str(out)])  # fmt: skip
    assert code == 0
    model = AnomalyModel.load(out)
    training = model.card.training
    assert training["false_positive_rows"] == 2
    assert training["skipped"]["labelled true-positive"] == 1
    assert training["skipped"]["denied"] > 0
    assert training["files"] == ["baseline.jsonl", "reviewed.jsonl"]
    assert model.card.calibration["score_at_quantile"] == 0.3


def test_training_input_errors_name_the_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"decision_id": "a"}\nnot json\n')
    assert main(["model", "train", "--baseline", str(bad), "--out", str(tmp_path / "m.onnx")]) == 1
    assert f"{bad}:2: not a JSON line" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()

    labels = tmp_path / "labels.txt"
    labels.write_text("abc maybe\n")
    with pytest.raises(ValueError, match=r"labels.txt:1: expected 'DECISION_ID \[false-positive\|true-positive\]'"):
        read_labels(labels)

    few = tmp_path / "few.jsonl"
    few.write_text(json.dumps({"verdict": "allow", "risk": {"features": [0.0] * 11, "feature_schema": "v1"}}) + "\n")
    assert main(["model", "train", "--baseline", str(few), "--out", str(tmp_path / "m.onnx")]) == 1
    assert "only 1 usable rows" in capsys.readouterr().err


def test_rows_of_another_schema_or_shape_are_skipped_not_trained_on(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in [
        {"verdict": "allow", "risk": {"features": [0.0] * 11, "feature_schema": "v0"}},
        {"verdict": "allow", "risk": {"features": [0.0] * 3, "feature_schema": "v1"}},
        {"verdict": "allow", "risk": None},
        {"verdict": "allow", "risk.features": [0.5] * 11, "risk.feature_schema": "v1"},
    ]) + "\n")  # fmt: skip
    data = read_decision_logs([log])
    assert data.rows == [[0.5] * 11]
    assert data.skipped == {"other feature schema": 1, "malformed features": 1, "no risk features": 1}


def test_info_prints_the_model_card(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["model", "info"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["feature_schema"] == "v1" and card["origin"] == "bundled:default.onnx"
    assert "synthetic mesh baseline" in card["training"]["source"]
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"nope")
    assert main(["model", "info", str(broken)]) == 1
    assert "not a loadable ONNX model" in capsys.readouterr().err

"""`authz-server model train` and `model info`: decision logs (rotated, truncated, garbled) to a calibrated model with
the site's baseline inside; an operator's accept label teaches a new edge; a missing `onnx` is one line, not a
traceback."""

from __future__ import annotations

import builtins
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from risk_support import TRUST_DOMAIN, benign_site_log, log_line, write_log

from authz_server.cli import main
from authz_server.risk import FEATURE_NAMES, FEATURE_SCHEMA, AnomalyModel, BehaviourState, RiskConfig
from authz_server.risk.features import Learning
from authz_server.risklab.training import facts_from_record

NEW_CALLER = f"spiffe://{TRUST_DOMAIN}/ns/billing/sa/invoicer"
CATALOG = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/catalog"


@pytest.fixture(scope="module")
def site_lines() -> list[dict[str, Any]]:
    return list(benign_site_log(2.0))


def _new_edge_lines(band: str, **extra: Any) -> list[dict[str, Any]]:
    """A day of a new dependency (billing/invoicer -> shop/catalog), as the stage scored it: `band` (elevated: on
    `edge_novelty`, the way a site-trained model annotates an edge its baseline lacks)."""
    lines = []
    for i in range(400):
        ts = 1772409600.0 + 86400 + i * 200
        line = log_line(f"new-{i}", "billing/invoicer", "shop/catalog", "GET", f"/prices/{i % 50}", ts, **extra)
        line["risk"]["band"] = band
        line["risk"]["alarmed"] = ["edge_novelty", "route_unusual"] if band == "elevated" else []
        lines.append(line)
    return lines


def _train(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["model", "train", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_train_reads_rotated_files_skips_and_counts_broken_lines_and_writes_a_model(
    tmp_path: Path, site_lines: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "decisions.jsonl"
    half = len(site_lines) // 2
    write_log(tmp_path / "decisions.jsonl.1", site_lines[:half])  # rotated: the older half
    write_log(log, site_lines[half:])
    with (tmp_path / "decisions.jsonl.1").open("a") as handle:
        handle.write('{"schema": 1, "decision_id": "cut", "ts": 17724\n')  # a crash mid-write
        handle.write("\x00\x00garbage\xff\n")
    with log.open("a") as handle:
        handle.write(json.dumps(site_lines[-1])[:57])  # truncated last line, no newline
    out = tmp_path / "model.onnx"

    code, stdout, stderr = _train(capsys, "--baseline", str(log), "--out", str(out))

    assert code == 0, stderr
    assert "3 not a JSON line (truncated or garbled)" in stdout
    assert f"learned from {len(site_lines)} calls" in stdout
    assert "held-out benign" in stdout and "alarm" in stdout and "deny" in stdout
    assert not out.with_name("model.onnx.partial").exists()
    model = AnomalyModel.load(out)
    assert model.card.feature_schema == FEATURE_SCHEMA
    # The older calls (only in the rotated file) are in the baseline: the 02:00 batch job ran on both days.
    assert model.baseline.days > 1.9
    assert len(model.baseline.edges) == 3
    calibration = model.card.calibration
    assert calibration["fpr_budget"] == 0.001
    assert calibration["held_out_alarm_rate"] <= 0.002
    assert calibration["deny_surprise"] > calibration["alarm_surprise"]


@pytest.mark.slow
def test_an_annotated_new_edge_is_learned_only_once_an_operator_accepts_it(
    tmp_path: Path, site_lines: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    annotated = _new_edge_lines("elevated")
    log = write_log(tmp_path / "decisions.jsonl", sorted(site_lines + annotated, key=lambda line: line["ts"]))
    first = tmp_path / "first.onnx"
    code, stdout, _ = _train(capsys, "--baseline", str(log), "--out", str(first))
    assert code == 0
    assert "400 new edge (not accepted)" in stdout
    assert AnomalyModel.load(first).baseline.edge(NEW_CALLER, CATALOG) is None

    # Accepted by a label file (decision ids), or by a label in the line itself: the next model knows the edge.
    labels = tmp_path / "reviewed.txt"
    labels.write_text("# reviewed by ops\n" + "".join(f"new-{i} accepted\n" for i in range(400)))
    second = tmp_path / "second.onnx"
    assert _train(capsys, "--baseline", str(log), "--labels", str(labels), "--out", str(second))[0] == 0
    inline = write_log(
        tmp_path / "inline.jsonl",
        sorted(site_lines + _new_edge_lines("elevated", label="accepted"), key=lambda line: line["ts"]),
    )
    third = tmp_path / "third.onnx"
    assert _train(capsys, "--baseline", str(inline), "--out", str(third))[0] == 0
    for path in (second, third):
        model = AnomalyModel.load(path)
        assert model.baseline.edge(NEW_CALLER, CATALOG) is not None
        new_call = facts_from_record(annotated[0])
        assert new_call is not None
        row = BehaviourState(RiskConfig()).features(new_call, model.baseline)
        assert row[FEATURE_NAMES.index("edge_novelty")] == 0.0


@pytest.mark.slow
def test_annotations_on_a_known_edge_are_learned_the_first_log_is_written_under_the_bundled_model(
    tmp_path: Path, site_lines: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    annotated = {"status": "scored", "band": "elevated", "alarmed": ["svid_age"], "feature_schema": "v2"}
    # The bundled model's cold start annotated one call in 50 of the site's own traffic.
    lines = [{**line, "risk": annotated} if i % 50 == 0 else line for i, line in enumerate(site_lines)]
    log = write_log(tmp_path / "decisions.jsonl", lines)
    code, stdout, _ = _train(capsys, "--baseline", str(log), "--out", str(tmp_path / "m.onnx"))
    assert code == 0 and f"learned from {len(site_lines)} calls" in stdout


@pytest.mark.slow
def test_lines_labelled_malicious_are_never_learned(
    tmp_path: Path, site_lines: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    attack = _new_edge_lines("low", label="malicious")  # scored low, but an operator knows better
    log = write_log(tmp_path / "decisions.jsonl", sorted(site_lines + attack, key=lambda line: line["ts"]))
    code, stdout, _ = _train(capsys, "--baseline", str(log), "--out", str(tmp_path / "m.onnx"))
    assert code == 0 and "400 labelled malicious" in stdout
    assert AnomalyModel.load(tmp_path / "m.onnx").baseline.edge(NEW_CALLER, CATALOG) is None


def test_training_input_problems_are_one_line_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("d1 accepted extra\n")
    log = write_log(tmp_path / "small.jsonl", itertools.islice(benign_site_log(0.05), 50))
    code, _, stderr = _train(capsys, "--baseline", str(log), "--labels", str(labels), "--out", str(tmp_path / "m"))
    assert code == 1 and stderr.strip().count("\n") == 0
    assert f"{labels}:1: expected 'DECISION_ID [accepted|malicious]'" in stderr

    code, _, stderr = _train(capsys, "--baseline", str(log), "--out", str(tmp_path / "m"))
    assert code == 1 and "usable calls" in stderr and "Traceback" not in stderr

    code, _, stderr = _train(capsys, "--baseline", str(tmp_path / "absent.jsonl"), "--out", str(tmp_path / "m"))
    assert code == 1 and "absent.jsonl: cannot read" in stderr

    code, _, stderr = _train(capsys, "--baseline", str(log), "--fpr-budget", "2", "--out", str(tmp_path / "m"))
    assert code == 1 and "--fpr-budget" in stderr
    assert not (tmp_path / "m").exists()


def test_without_the_onnx_package_train_says_what_to_install(
    tmp_path: Path,
    site_lines: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_import = builtins.__import__

    def no_onnx(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "onnx" or name.startswith("onnx."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    log = write_log(tmp_path / "decisions.jsonl", site_lines)
    code, _, stderr = _train(capsys, "--baseline", str(log), "--out", str(tmp_path / "m.onnx"))
    assert code == 1
    assert stderr.strip() == (
        "authz-server model: writing a model needs the onnx package: pip install 'authz-server[train]' "
        "(or pip install onnx)"
    )
    assert not (tmp_path / "m.onnx").exists()
    # Said before any work: before the logs are read (this one does not exist), before sites are simulated.
    code, _, stderr = _train(capsys, "--baseline", str(tmp_path / "absent.jsonl"), "--out", str(tmp_path / "m.onnx"))
    assert code == 1 and "needs the onnx package" in stderr and "cannot read" not in stderr
    assert main(["model", "bundle", "--out", str(tmp_path / "b.onnx")]) == 1
    assert "needs the onnx package" in capsys.readouterr().err
    assert not (tmp_path / "b.onnx").exists()


def test_info_prints_the_model_card(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "info"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["feature_schema"] == FEATURE_SCHEMA and card["feature_names"] == list(FEATURE_NAMES)
    assert card["calibration"]["alarm_surprise"] > 0 and card["baseline_edges"] == 0
    assert card["p99_cost_us"] > 0


def test_a_model_trained_here_learns_online_what_it_does_not_know() -> None:
    """The state a served model reads: an edge the baseline lacks is learned from its low-risk calls."""
    state = BehaviourState(RiskConfig())
    line = _new_edge_lines("low")[0]
    facts = facts_from_record(line)
    assert facts is not None and facts.caller == NEW_CALLER and facts.template == "/prices/{id}"
    state.observe(facts, Learning.EVERYTHING)
    assert state.sizes()["edges"] == 1

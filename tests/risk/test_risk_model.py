"""The model: the bundled one loads and scores; corrupt and mismatched ones are refused while the old one serves."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from risk_support import at, bundled_bytes, granted, parsed, with_metadata, workload, write

from authz_server.risk import FEATURE_NAMES, FEATURE_SCHEMA, AnomalyModel, ModelError, RiskConfig, RiskLoadError
from authz_server.risk import source as risk_source
from authz_server.risk.model import BUNDLED_MODEL, bundled_model_path
from authz_server.risk.outcome import RiskStatus
from authz_server.risk.scorer import RiskScorer


def test_the_bundled_model_loads_fits_the_schema_and_scores() -> None:
    model = AnomalyModel.load("")
    assert model.card.origin == BUNDLED_MODEL
    assert model.card.feature_schema == FEATURE_SCHEMA
    assert model.card.feature_names == FEATURE_NAMES
    assert model.version.startswith("surprise-v2-")
    assert model.card.training["rows"] > 10000  # calibrated on simulated sites, not a placeholder
    assert model.baseline.edges == {}  # no site baseline: it learns each edge online
    assert 0 < model.cost_s < 0.05

    ordinary = [0.0] * len(FEATURE_NAMES)
    ordinary[FEATURE_NAMES.index("svid_age")] = 0.3
    burst = list(ordinary)
    burst[FEATURE_NAMES.index("rate_burst")] = 12.0  # 4,000 times the edge's busiest minute
    low, surprise = model.score(ordinary)
    high, _ = model.score(burst)
    assert len(surprise) == len(FEATURE_NAMES)
    assert 0 <= low < 0.3 < 0.9 < high <= 1


def test_what_a_legitimate_change_moves_never_reaches_the_deny_band_on_its_own() -> None:
    model = AnomalyModel.load("")
    row = [0.0] * len(FEATURE_NAMES)
    for name in ("edge_novelty", "route_unusual", "method_unusual", "hour_unusual", "ids_long", "source_new"):
        row[FEATURE_NAMES.index(name)] = 1e6  # as novel as a float holds
    score, _ = model.score(row)
    assert score <= RiskConfig().default_max_risk


def test_the_bundled_model_is_package_data_and_small() -> None:
    path = bundled_model_path()
    assert path.name == "default.onnx" and path.parent.name == "models"
    assert 1000 < path.stat().st_size < 64 * 1024


def test_the_stage_scores_out_of_the_box() -> None:
    stage = risk_source(RiskConfig(warmup_s=0)).load()
    call, caller = parsed(workload(), at=at(1))
    outcome = stage.assess(call, caller, granted(), at(1), 0.05)
    assert outcome.status is RiskStatus.SCORED
    assert outcome.score is not None and 0 <= outcome.score <= 1
    assert outcome.model_version == stage.version
    assert outcome.feature_schema == FEATURE_SCHEMA and len(outcome.features) == len(FEATURE_NAMES)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the file is empty"),
        (b"\x08\x07 this is not a protobuf at all \xff\xfe", "not a loadable ONNX model"),
        (bundled_bytes()[: len(bundled_bytes()) // 2], "not a loadable ONNX model"),
    ],
    ids=["empty", "garbage", "truncated"],
)
def test_a_corrupt_file_is_refused_with_a_clear_error(tmp_path: Path, data: bytes, message: str) -> None:
    path = write(tmp_path / "model.onnx", data)
    with pytest.raises(ModelError, match=message) as caught:
        AnomalyModel.load(path)
    assert str(path) in str(caught.value)


def test_a_model_trained_on_another_feature_schema_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "model.onnx", with_metadata(bundled_bytes(), authz__feature_schema="v0"))
    with pytest.raises(ModelError, match=r"trained on feature schema 'v0', this server computes 'v2'"):
        AnomalyModel.load(path)


def test_a_model_with_other_feature_names_is_refused(tmp_path: Path) -> None:
    names = list(FEATURE_NAMES)
    names[0], names[1] = names[1], names[0]
    path = write(tmp_path / "model.onnx", with_metadata(bundled_bytes(), authz__feature_names=json.dumps(names)))
    with pytest.raises(ModelError, match=r"feature names .* do not match schema v2"):
        AnomalyModel.load(path)


def test_an_onnx_file_that_is_not_a_risk_model_is_refused(tmp_path: Path) -> None:
    import onnx

    model = onnx.load_model_from_string(bundled_bytes())
    del model.metadata_props[:]
    path = write(tmp_path / "model.onnx", model.SerializeToString())
    with pytest.raises(ModelError, match=r"not an authz-server risk model: metadata .*authz.feature_schema"):
        AnomalyModel.load(path)


def test_a_model_whose_baseline_cannot_be_read_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "model.onnx", with_metadata(bundled_bytes(), authz__baseline="not base64 zlib"))
    with pytest.raises(ModelError, match=r"baseline is not base64 zlib JSON"):
        AnomalyModel.load(path)


def test_a_missing_configured_model_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(RiskLoadError, match=r"risk.model: .*missing.onnx: cannot read"):
        risk_source(RiskConfig(model=str(tmp_path / "missing.onnx"))).load()


def test_reload_refuses_corrupt_and_mismatched_files_and_the_old_model_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "model.onnx", bundled_bytes())
    source = risk_source(RiskConfig(model=str(path), warmup_s=0))
    applied: list[RiskScorer] = []
    first = source.load()
    source.start(applied.append)
    try:
        call, caller = parsed(workload(), at=at(1))
        assert source.status()["state"] == "ok"

        write(path, b"corrupt")
        with caplog.at_level(logging.ERROR, "authz_server.risk"):
            assert source.poll_model() is False
        assert applied == []
        assert "not reloaded" in caplog.text and "keeps serving" in caplog.text
        status = source.status()
        assert status["state"] == "degraded"
        assert status["reload_failures"] == "1"
        assert "not a loadable ONNX model" in status["last_error"]
        assert status["version"] == first.version
        # The stage in force still scores.
        outcome = first.assess(call, caller, granted(), at(1), 0.05)
        assert outcome.status is RiskStatus.SCORED

        write(path, with_metadata(bundled_bytes(), authz__feature_schema="v9"))
        assert source.poll_model() is False
        assert source.status()["reload_failures"] == "2"
        assert "feature schema 'v9'" in source.status()["last_error"]

        write(path, with_metadata(bundled_bytes(), authz__model_version="retrained-2"))
        assert source.poll_model() is True
        assert [s.version for s in applied] == ["retrained-2"]
        status = source.status()
        assert status["state"] == "ok" and status["last_error"] == ""
        assert status["version"] == "retrained-2" and status["reloads"] == "1"
        # The new generation keeps the behaviour the old one learned.
        assert applied[0].state is first.state
    finally:
        source.close()


def test_status_reports_the_facts_health_and_metrics_read() -> None:
    source = risk_source(RiskConfig())
    assert source.status()["state"] == "loading"
    source.load()
    status = source.status()
    for key in ("version", "feature_schema", "state", "reloads", "reload_failures", "last_error", "skipped"):
        assert isinstance(status[key], str)
    assert status["model"] == BUNDLED_MODEL and status["feature_schema"] == "v2"
    assert status["skipped"] == "0" and status["reloads"] == "0"

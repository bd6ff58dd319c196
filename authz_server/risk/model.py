"""The risk model at serving time: an ONNX file checked against the feature schema, run by onnxruntime.

The graph takes `features` (float32 [N, 12], raw values in schema order) and returns `surprise` ([N, 12], each
feature's -log10 benign tail probability from a piecewise-linear table per feature, capped below the deny band
for features a legitimate change can move) and `score` ([N], 0..1: the largest surprise mapped through the band
edges training calibrated). The per-edge baseline travels with it (baseline.py). What the graph was trained on is
in its metadata_props (keys below); a model whose schema or feature names differ from what this server computes
is refused, as is a file onnxruntime cannot load, a baseline that cannot be read, or a probe run without a sane
score.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from authz_server.risk.baseline import Baseline, BaselineError
from authz_server.risk.features import FEATURE_NAMES, FEATURE_SCHEMA, FEATURES, N_FEATURES

INPUT = "features"
OUTPUT_SCORE = "score"
OUTPUT_SURPRISE = "surprise"

META_SCHEMA = "authz.feature_schema"
META_NAMES = "authz.feature_names"
META_CALIBRATION = "authz.calibration"
"""JSON: fpr_budget, alarm_surprise and deny_surprise (decades), the scores they map to, held-out rates."""
META_VERSION = "authz.model_version"
META_TRAINING = "authz.training"
META_BASELINE = "authz.baseline"
"""The per-edge baseline (baseline.py), zlib + base64 JSON."""
META_BASELINE_DIGEST = "authz.baseline_digest"
REQUIRED_METADATA = (META_SCHEMA, META_NAMES, META_CALIBRATION, META_VERSION, META_TRAINING, META_BASELINE)

BUNDLED_MODEL = "bundled:default.onnx"
"""How the model shipped inside the package is named in logs, health and the decision log."""

_COST_PROBES = 200
_pack_row = struct.Struct(f"={N_FEATURES}f").pack_into
"""Writes a row of Python floats into the bound float32 input, each rounded as numpy rounds it, without numpy
first working out the list's shape and type: 0.55 µs against 1.2 for `row[0] = list`."""


class ModelError(ValueError):
    """The model cannot serve; the message names the file and the problem."""


def bundled_model_path() -> Path:
    return Path(str(resources.files("authz_server.risk").joinpath("models", "default.onnx")))


def session_options() -> ort.SessionOptions:
    """One thread, no spinning: each worker process scores on its own core and an idle one costs nothing."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


@dataclass(frozen=True)
class ModelCard:
    """What a model says about itself (its metadata), as loaded."""

    version: str
    feature_schema: str
    feature_names: tuple[str, ...]
    origin: str
    sha256: str
    calibration: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    baseline_digest: str = ""
    baseline_edges: int = 0


def _json_meta(meta: dict[str, str], key: str, origin: str) -> Any:
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError as exc:
        raise ModelError(f"{origin}: metadata {key} is not JSON: {exc}") from exc


def _read_card(session: ort.InferenceSession, origin: str, sha256: str) -> tuple[ModelCard, Baseline]:
    meta: dict[str, str] = dict(session.get_modelmeta().custom_metadata_map)
    missing = [key for key in REQUIRED_METADATA if key not in meta]
    if missing:
        raise ModelError(f"{origin}: not an authz-server risk model: metadata {', '.join(missing)} missing")
    schema = meta[META_SCHEMA]
    if schema != FEATURE_SCHEMA:
        raise ModelError(
            f"{origin}: trained on feature schema {schema!r}, this server computes {FEATURE_SCHEMA!r}; retrain it "
            "with `authz-server model train`"
        )
    names = _json_meta(meta, META_NAMES, origin)
    if not isinstance(names, list) or tuple(names) != FEATURE_NAMES:
        raise ModelError(f"{origin}: feature names {names} do not match schema {FEATURE_SCHEMA}: {list(FEATURE_NAMES)}")
    try:
        baseline = Baseline.decode(meta[META_BASELINE])
    except BaselineError as exc:
        raise ModelError(f"{origin}: {exc}") from exc
    calibration = _json_meta(meta, META_CALIBRATION, origin)
    alarm = calibration.get("alarm_surprise") if isinstance(calibration, dict) else None
    if not isinstance(alarm, int | float) or not alarm > 0:
        raise ModelError(f"{origin}: metadata {META_CALIBRATION} has no positive alarm_surprise")
    card = ModelCard(
        version=meta[META_VERSION],
        feature_schema=schema,
        feature_names=FEATURE_NAMES,
        origin=origin,
        sha256=sha256,
        calibration=calibration,
        training=_json_meta(meta, META_TRAINING, origin),
        baseline_digest=baseline.digest(),
        baseline_edges=len(baseline.edges),
    )
    return card, baseline


def _check_signature(session: ort.InferenceSession, origin: str) -> None:
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != INPUT:
        raise ModelError(f"{origin}: expected one input named {INPUT!r}, got {[i.name for i in inputs]}")
    shape = inputs[0].shape
    if inputs[0].type != "tensor(float)" or len(shape) != 2 or shape[1] != N_FEATURES:
        raise ModelError(f"{origin}: input {INPUT!r} must be float32 [N, {N_FEATURES}], got {inputs[0].type} {shape}")
    outputs = {o.name for o in session.get_outputs()}
    for name in (OUTPUT_SCORE, OUTPUT_SURPRISE):
        if name not in outputs:
            raise ModelError(f"{origin}: output {name!r} missing (outputs: {sorted(outputs)})")


class _RowBinding(threading.local):
    """Each thread's one-row input and outputs, bound to the session once and refilled in place per call.

    `session.run` builds a feed, checks it and allocates fresh output arrays on every call; with the buffers
    bound once, a run only reads and writes memory that stays put, about half the cost on the decision path.
    Per thread because onnxruntime releases the GIL while it runs: threads scoring at once must not share them.
    """

    def __init__(self, session: ort.InferenceSession) -> None:
        self.input = bytearray(4 * N_FEATURES)
        self.row = np.frombuffer(self.input, dtype=np.float32).reshape(1, N_FEATURES)
        self.score = np.zeros((1,), dtype=np.float32)
        self.surprise = np.zeros((1, N_FEATURES), dtype=np.float32)
        self.read_score = self.score.tolist
        self.read_surprise = self.surprise[0].tolist
        binding = session.io_binding()
        binding.bind_cpu_input(INPUT, self.row)
        for name, array in ((OUTPUT_SCORE, self.score), (OUTPUT_SURPRISE, self.surprise)):
            binding.bind_output(name, "cpu", 0, np.float32, list(array.shape), array.ctypes.data)
        self.binding = binding


class AnomalyModel:
    """A loaded, checked model and its baseline. `score` is safe to call from many threads (onnxruntime is)."""

    def __init__(self, session: ort.InferenceSession, card: ModelCard, baseline: Baseline) -> None:
        self._session = session
        self._run_bound = session.run_with_iobinding
        self._bindings = _RowBinding(session)
        self._outputs = [OUTPUT_SCORE, OUTPUT_SURPRISE]
        self.card = card
        self.baseline = baseline
        self.version = card.version
        self.alarm_surprise = float(card.calibration["alarm_surprise"])
        """A feature this surprising (decades) reaches the alarm band: the online state does not learn from it."""
        self.cost_s = 0.0
        """Measured p99 time of one single-row run: the stage skips the model when less budget than this is left."""

    @classmethod
    def load(cls, path: str | Path | None = None) -> AnomalyModel:
        """The model at `path` (None or "": the bundled default); raises ModelError naming what is wrong."""
        if not path:
            file, origin = bundled_model_path(), BUNDLED_MODEL
        else:
            file, origin = Path(path), str(path)
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise ModelError(f"{origin}: cannot read: {exc.strerror}") from exc
        return cls.from_bytes(data, origin)

    @classmethod
    def from_bytes(cls, data: bytes, origin: str) -> AnomalyModel:
        if not data:
            raise ModelError(f"{origin}: the file is empty")
        try:
            session = ort.InferenceSession(data, session_options(), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for every way a file can be bad
            raise ModelError(f"{origin}: not a loadable ONNX model: {str(exc).strip()}") from exc
        _check_signature(session, origin)
        model = cls(session, *_read_card(session, origin, hashlib.sha256(data).hexdigest()))
        model._probe()
        return model

    def _probe(self) -> None:
        """Run the model on typical and extreme rows: it must give one sane score per row; measure its cost."""
        origin = self.card.origin
        rows = np.array(
            [[0.0] * N_FEATURES, [f.high / 2 for f in FEATURES], [f.high for f in FEATURES]], dtype=np.float32
        )
        try:
            scores, errors = self._session.run(self._outputs, {INPUT: rows})
        except Exception as exc:
            raise ModelError(f"{origin}: the model fails on a probe row: {str(exc).strip()}") from exc
        scores, errors = np.asarray(scores), np.asarray(errors)
        if scores.shape != (3,) or errors.shape != (3, N_FEATURES):
            raise ModelError(
                f"{origin}: for 3 rows expected score [3] and surprise [3, {N_FEATURES}], "
                f"got {list(scores.shape)} and {list(errors.shape)}"
            )
        if not (np.isfinite(scores).all() and np.isfinite(errors).all()):
            raise ModelError(f"{origin}: the model gives non-finite values on probe rows")
        if (scores < 0).any() or (scores > 1).any() or (errors < 0).any():
            raise ModelError(f"{origin}: scores must be within 0..1 and surprises >= 0, got {scores.tolist()}")
        row = [0.0] * N_FEATURES
        try:  # what serving runs: one row through the bound buffers
            self.score(row)
        except Exception as exc:
            raise ModelError(f"{origin}: the model fails on a single probe row: {str(exc).strip()}") from exc
        timings = []
        deadline = time.perf_counter() + 0.5
        for _ in range(_COST_PROBES):
            start = time.perf_counter()
            self.score(row)
            timings.append(time.perf_counter() - start)
            if start > deadline:  # a model this slow has shown what it costs
                break
        timings.sort()
        self.cost_s = timings[min(len(timings) - 1, math.ceil(len(timings) * 0.99) - 1)]

    def score(self, row: Sequence[float]) -> tuple[float, list[float]]:
        """(score, per-feature surprise) of one feature vector."""
        bound = self._bindings
        _pack_row(bound.input, 0, *row)
        # No RunOptions: with them, run_with_iobinding looks up an unset option via a C++ exception (~40 µs).
        self._run_bound(bound.binding)
        return bound.read_score()[0], bound.read_surprise()  # plain floats: cheaper to rank than numpy scalars

    def score_many(self, rows: Sequence[Sequence[float]]) -> list[tuple[float, list[float]]]:
        """`score` of each row, from one run. Among the rest of a decision a run costs ~45 µs of CPU, nearly all of
        it for being a run (onnxruntime's code and data pushed out of the caches by the pipeline's), not for its
        rows: 64 rows take ~45 µs in all, one row alone ~10 µs in a loop of nothing else (benchmarks/RESULTS.md)."""
        if len(rows) == 1:
            return [self.score(rows[0])]
        scores, surprise = self._session.run(self._outputs, {INPUT: np.array(rows, dtype=np.float32)})
        return list(zip(scores.tolist(), surprise.tolist(), strict=True))

    def score_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores and per-feature surprises of many rows at once (evaluation, training reports)."""
        scores, errors = self._session.run(self._outputs, {INPUT: np.asarray(rows, dtype=np.float32)})
        return np.asarray(scores), np.asarray(errors)

"""`authz-server model train`: from decision logs (or the synthetic baseline) to an ONNX model.

What a decision log teaches (the feedback loop):
- a line is a training row when it carries `risk.features` of this server's
  `risk.feature_schema` and the call went through (verdict allow or
  dry-run-deny): those are what normal traffic looks like;
- lines operators mark as false positives are rows too, even when the risk
  stage denied them, and count `fp_weight` times, so the next model learns
  that this behaviour is normal. Mark them with a `"label": "false-positive"`
  field in the line, or list their decision ids in a label file;
- lines marked `true-positive` (or `malicious`) are never rows, whatever their verdict.

Label file: one decision id per line, optionally followed by a label
(`false-positive`, the default, or `true-positive`); `#` starts a comment.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from authz_server.risk.autoencoder import Autoencoder, to_onnx, train_autoencoder
from authz_server.risk.features import FEATURE_SCHEMA, N_FEATURES

FALSE_POSITIVE = "false-positive"
TRUE_POSITIVE = "true-positive"
_LABELS = {FALSE_POSITIVE: FALSE_POSITIVE, TRUE_POSITIVE: TRUE_POSITIVE, "malicious": TRUE_POSITIVE}
_THROUGH = ("allow", "dry-run-deny")


class TrainingDataError(ValueError):
    """The training input cannot be used; the message names the file and line."""


@dataclass
class TrainingSet:
    rows: list[list[float]] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    lines: int = 0
    false_positives: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1

    def add(self, features: list[float], weight: float = 1.0) -> None:
        self.rows.append(features)
        self.weights.append(weight)


def read_labels(path: str | Path) -> dict[str, str]:
    labels = {}
    for number, raw in enumerate(Path(path).read_text().splitlines(), 1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        decision_id, *rest = text.split()
        label = rest[0].lower() if rest else FALSE_POSITIVE
        if label not in _LABELS or len(rest) > 1:
            raise TrainingDataError(f"{path}:{number}: expected 'DECISION_ID [false-positive|true-positive]'")
        labels[decision_id] = _LABELS[label]
    return labels


def _field(record: dict[str, Any], dotted: str) -> Any:
    """`risk.features` from nested objects (the decision log) or a flat dotted key."""
    if dotted in record:
        return record[dotted]
    node: Any = record
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def read_decision_logs(
    paths: Iterable[str | Path], labels: dict[str, str] | None = None, fp_weight: float = 5.0
) -> TrainingSet:
    labels = labels or {}
    data = TrainingSet()
    for path in paths:
        data.files.append(str(path))
        try:
            with Path(path).open(encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    _read_line(str(path), number, line, labels, fp_weight, data)
        except OSError as exc:
            raise TrainingDataError(f"{path}: cannot read: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise TrainingDataError(f"{path}: not UTF-8 text: {exc}") from exc
    return data


def _read_line(path: str, number: int, line: str, labels: dict[str, str], fp_weight: float, data: TrainingSet) -> None:
    if not line.strip():
        return
    data.lines += 1
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TrainingDataError(f"{path}:{number}: not a JSON line: {exc}") from exc
    if not isinstance(record, dict):
        raise TrainingDataError(f"{path}:{number}: expected a JSON object")
    _take(record, labels, fp_weight, data)


def _take(record: dict[str, Any], labels: dict[str, str], fp_weight: float, data: TrainingSet) -> None:
    features = _field(record, "risk.features")
    if not features:
        data.skip("no risk features")
        return
    if _field(record, "risk.feature_schema") != FEATURE_SCHEMA:
        data.skip("other feature schema")
        return
    if len(features) != N_FEATURES or not all(isinstance(v, int | float) for v in features):
        data.skip("malformed features")
        return
    label = labels.get(str(record.get("decision_id")))
    if label is None and isinstance(record.get("label"), str):
        label = _LABELS.get(record["label"].lower())
    if label == TRUE_POSITIVE:
        data.skip("labelled true-positive")
        return
    if label == FALSE_POSITIVE:
        data.false_positives += 1
        data.add([float(v) for v in features], fp_weight)
        return
    if record.get("verdict") not in _THROUGH:
        data.skip("denied")
        return
    data.add([float(v) for v in features])


def fit(
    data: TrainingSet,
    *,
    seed: int = 7,
    epochs: int = 40,
    quantile: float = 0.999,
    at_score: float = 0.3,
    source: str,
) -> tuple[Autoencoder, bytes]:
    """Train, calibrate on the (unweighted) rows, and write the ONNX model with its card."""
    if len(data.rows) < 100:
        raise TrainingDataError(
            f"only {len(data.rows)} usable rows (skipped: {data.skipped or 'none'}); at least 100 are needed"
        )
    x = np.array(data.rows, dtype=np.float64)
    weights = np.array(data.weights)
    model = train_autoencoder(x, sample_weight=weights if data.false_positives else None, epochs=epochs, seed=seed)
    model.calibrate(x, quantile, at_score)
    training = {
        "source": source,
        "files": [Path(f).name for f in data.files],
        "rows": len(data.rows),
        "false_positive_rows": data.false_positives,
        "skipped": data.skipped,
        "seed": seed,
        "epochs": epochs,
        "hidden": list(len(b) for b in model.biases[:-1]),
        "calibration": f"baseline q{quantile} -> score {at_score}",
        "numpy": np.__version__,
        "python": platform.python_version(),
        "feature_means": [round(float(v), 4) for v in model.mean],
    }
    return model, to_onnx(model, training)


def rows_from_samples(samples: Iterator[Any]) -> TrainingSet:
    """A training set straight from synthetic samples (policy-allowed calls only)."""
    data = TrainingSet(files=["synthetic"])
    for sample in samples:
        data.lines += 1
        if sample.allowed:
            data.add(list(sample.features))
        else:
            data.skip("denied")
    return data

"""`authz-server model ...`: build, train, evaluate and inspect risk models.

The bundled default model is rebuilt, byte for byte, by

    authz-server model train --synthetic --out authz_server/risk/models/default.onnx
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_SEED = 7
DEFAULT_DAYS = 3.0


def add_train_and_info(sub: argparse._SubParsersAction[Any]) -> None:
    """`model train` and `model info` (authz_server.risklab.cli registers the `model` command)."""
    train = sub.add_parser("train", help="train an anomaly model from decision logs (or the synthetic baseline)")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--baseline", nargs="+", metavar="DECISION_LOG", help="decision log files (JSON lines)")
    source.add_argument("--synthetic", action="store_true", help="train on the generated synthetic mesh baseline")
    train.add_argument("--labels", metavar="FILE", help="decision ids operators marked (false-positive by default)")
    train.add_argument("--fp-weight", type=float, default=5.0, help="weight of a false-positive row (default 5)")
    train.add_argument("--days", type=float, default=DEFAULT_DAYS, help="synthetic baseline length in days")
    train.add_argument("--epochs", type=int, default=40)
    train.add_argument("--seed", type=int, default=DEFAULT_SEED)
    train.add_argument("--out", required=True, metavar="MODEL.onnx")
    train.set_defaults(handler=_train)

    info = sub.add_parser("info", help="print a model's card (its metadata) after checking it loads")
    info.add_argument("model", nargs="?", default="", help="ONNX model (default: the bundled one)")
    info.set_defaults(handler=_info)


def _fail(message: str) -> int:
    print(f"authz-server model: {message}", file=sys.stderr)
    return 1


def _train(args: argparse.Namespace) -> int:
    from authz_server.risk.synthetic import baseline
    from authz_server.risk.training import TrainingDataError, fit, read_decision_logs, read_labels, rows_from_samples

    try:
        if args.synthetic:
            data = rows_from_samples(baseline(args.seed, args.days * 24))
            source = f"synthetic mesh baseline, {args.days:g} days, seed {args.seed}"
        else:
            labels = read_labels(args.labels) if args.labels else {}
            data = read_decision_logs(args.baseline, labels, args.fp_weight)
            source = f"decision logs ({len(args.baseline)} files, {data.lines} lines)"
        model, blob = fit(data, seed=args.seed, epochs=args.epochs, source=source)
    except (TrainingDataError, OSError) as exc:
        return _fail(str(exc))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed over it, so a server watching the file never reads half a model.
    partial = out.with_name(out.name + ".partial")
    partial.write_bytes(blob)
    partial.replace(out)
    from authz_server.risk.autoencoder import model_version

    print(
        f"wrote {out} ({len(blob)} bytes): model {model_version(model)}, {len(data.rows)} rows "
        f"({data.false_positives} false positives fed back), skipped {data.skipped or 'none'}"
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from authz_server.risk.model import AnomalyModel, ModelError

    try:
        model = AnomalyModel.load(args.model)
    except ModelError as exc:
        return _fail(str(exc))
    card = asdict(model.card)
    card["p99_cost_us"] = round(model.cost_s * 1e6, 1)
    print(json.dumps(card, indent=2))
    return 0

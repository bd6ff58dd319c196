"""`authz-server model train`, `model bundle` and `model info` (cli.py adds them to the `model` command)."""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import sys
from typing import Any

from authz_server.risklab import DEFAULT_FPR_BUDGET


def add_train_commands(sub: argparse._SubParsersAction[Any]) -> None:
    train = sub.add_parser(
        "train",
        help="train a risk model (with the site's baseline inside) from decision logs",
        description="Reads the decision logs (and their rotated FILE.N files), learns per-edge baselines and each "
        "feature's benign distribution, sets the band edges from the benign FPR budget on the held-out last "
        "quarter, and writes the model atomically. Truncated or garbled lines are skipped and counted.",
    )
    train.add_argument("--baseline", nargs="+", required=True, metavar="DECISION_LOG", help="decision log files")
    train.add_argument("--labels", metavar="FILE", help="lines 'DECISION_ID accepted|malicious' (accepted: learn it)")
    train.add_argument(
        "--fpr-budget",
        type=float,
        default=DEFAULT_FPR_BUDGET,
        help=f"share of benign calls allowed to alarm (default {DEFAULT_FPR_BUDGET}); denies stay 10x rarer",
    )
    train.add_argument("--out", required=True, metavar="MODEL.onnx")
    train.set_defaults(handler=_train)

    bundle = sub.add_parser(
        "bundle",
        help="rebuild the bundled model (no site baseline) from several simulated sites",
        description="Simulates --sites different sites (risklab.sites.site(vary=True): workload mixes, time zones, "
        "SVID lifetimes, id shapes, subnets), replays each through the Authorizer `serve` builds (risk off) from a "
        "cold start, and calibrates a model without a baseline: distributions from half the sites, band edges "
        "from the others, the deny edge holding on each. Deterministic: the same arguments give the same bytes.",
    )
    bundle.add_argument("--sites", type=int, default=6, help="simulated sites, seeds 1..N (default 6)")
    bundle.add_argument("--days", type=float, default=2.0, help="days simulated per site (default 2)")
    bundle.add_argument("--scale", type=float, default=0.25, help="rate multiplier of every site (default 0.25)")
    bundle.add_argument("--fpr-budget", type=float, default=DEFAULT_FPR_BUDGET)
    bundle.add_argument("--workers", type=int, default=2, help="sites simulated at once (default 2)")
    bundle.add_argument("--out", required=True, metavar="MODEL.onnx")
    bundle.set_defaults(handler=_bundle)

    info = sub.add_parser("info", help="print a model's card (its metadata) after checking it loads")
    info.add_argument("model", nargs="?", default="", help="ONNX model (default: the bundled one)")
    info.set_defaults(handler=_info)


def _fail(message: str) -> int:
    print(f"authz-server model: {message}", file=sys.stderr)
    return 1


def _train(args: argparse.Namespace) -> int:
    from authz_server.risklab.graph import OnnxMissing, require_onnx
    from authz_server.risklab.training import (
        TrainingDataError,
        read_decision_logs,
        read_labels,
        train_site,
        usable,
        write_atomically,
    )

    if not 0 < args.fpr_budget < 0.5:
        return _fail(f"--fpr-budget: expected a share between 0 and 0.5, got {args.fpr_budget}")
    try:
        require_onnx()
        labels = read_labels(args.labels) if args.labels else {}
        log = read_decision_logs(args.baseline)
        calls = usable(log, labels)
        model = train_site(
            calls,
            fpr_budget=args.fpr_budget,
            source=f"decision logs: {', '.join(log.files)} ({log.lines} lines)",
            skipped=dict(log.skipped),
        )
    except (TrainingDataError, OnnxMissing) as exc:
        return _fail(str(exc))
    out = write_atomically(model.blob, args.out)
    c = model.calibration
    skipped = ", ".join(f"{n} {why}" for why, n in log.skipped.most_common()) or "none"
    print(f"wrote {out} ({len(model.blob)} bytes): model {model.version}")
    print(f"  read {log.lines} lines from {len(log.files)} files; learned from {len(calls)} calls; skipped {skipped}")
    print(f"  baseline: {len(model.baseline.edges)} edges over {model.baseline.days:g} days")
    print(
        f"  bands for FPR budget {c.fpr_budget:g}: alarm (score {c.allow_below}) at surprise "
        f"{c.alarm_surprise:.2f}, deny (score > {c.max_risk}) past {c.deny_surprise:.2f}; held-out benign "
        f"({c.held_out_rows} calls): {100 * c.held_out_alarm_rate:.3f}% alarm, {100 * c.held_out_deny_rate:.3f}% deny"
    )
    return 0


def _simulated_site(seed: int, days: float, scale: float) -> tuple[int, list[Any]]:
    """One simulated site's calls as its decision log records them (risk off: nothing decided shapes the data)."""
    import tempfile
    from pathlib import Path

    from authz_server.risklab.requests import CertificateCache, LabServer, lab_ca
    from authz_server.risklab.simulator import DAY, Timeline
    from authz_server.risklab.sites import site
    from authz_server.risklab.training import read_decision_logs, usable

    spec = site(f"site{seed}", seed, vary=True, scale=scale)
    with tempfile.TemporaryDirectory(prefix="authz-bundle-") as tmp:
        with LabServer(Path(tmp), spec, CertificateCache(lab_ca(spec.start)), risk={"enabled": False}) as server:
            server.replay(Timeline(spec).events(spec.start + days * DAY))
        return len(spec.workloads), usable(read_decision_logs([server.decision_log]))


def _bundle(args: argparse.Namespace) -> int:
    from authz_server.risklab.graph import OnnxMissing, require_onnx
    from authz_server.risklab.training import TrainingDataError, train_bundled, write_atomically

    if args.sites < 2 or args.days <= 0 or args.scale <= 0 or args.workers < 1:
        return _fail("--sites must be >= 2, --workers >= 1, --days and --scale > 0")
    try:
        require_onnx()
    except OnnxMissing as exc:
        return _fail(str(exc))
    seeds = range(1, args.sites + 1)
    with concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("fork")) as pool:
        simulated = list(pool.map(_simulated_site, seeds, [args.days] * len(seeds), [args.scale] * len(seeds)))
    for seed, (workloads, calls) in zip(seeds, simulated, strict=True):
        print(f"  site{seed}: {workloads} workloads, {len(calls)} calls let through")
    sites = [calls for _, calls in simulated]
    try:
        model = train_bundled(
            sites,
            fpr_budget=args.fpr_budget,
            source=f"model bundle --sites {args.sites} --days {args.days:g} --scale {args.scale:g}",
        )
    except (TrainingDataError, OnnxMissing) as exc:
        return _fail(str(exc))
    out = write_atomically(model.blob, args.out)
    c = model.calibration
    print(f"wrote {out} ({len(model.blob)} bytes): model {model.version}, {model.rows} calls from {args.sites} sites")
    print(
        f"  bands for FPR budget {c.fpr_budget:g}: alarm at surprise {c.alarm_surprise:.2f}, deny past "
        f"{c.deny_surprise:.2f}; held-out sites ({c.held_out_rows} calls): {100 * c.held_out_alarm_rate:.3f}% alarm, "
        f"{100 * c.held_out_deny_rate:.3f}% deny"
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

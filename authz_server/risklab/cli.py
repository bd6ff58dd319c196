"""`authz-server model ...`: simulate a site, train, evaluate and inspect risk models.

`synth` and `evaluate` run simulated sites through the real Authorizer (this lab); `train` and `info` are the
training side's (train_commands.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from authz_server.risklab.train_commands import add_train_commands

DEFAULT_SITE_SEED = 11


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    model = commands.add_parser("model", help="simulate, train, evaluate and inspect the risk model")
    sub = model.add_subparsers(dest="model_command", required=True, metavar="COMMAND")
    # train, bundle, info: building models (train_commands.py)
    add_train_commands(sub)
    # synth, evaluate: the simulated site and the measurement

    synth = sub.add_parser(
        "synth",
        help="replay simulated days of a site through the server and write its decision log",
        description="Simulated traffic of a site (workloads, deploys, peaks, SVID rotation) goes through the "
        "Authorizer that `serve` builds; the decision log it writes is what `model train --baseline` reads.",
    )
    _site_arguments(synth)
    synth.add_argument("--out", required=True, metavar="DIR", help="writes DIR/decisions.jsonl and DIR/events.jsonl")
    synth.add_argument("--days", type=float, default=3.0, help="days to simulate (default 3)")
    synth.add_argument("--model", default="", help="risk model the server runs (default: the bundled one)")
    synth.set_defaults(handler=_synth)

    evaluate = sub.add_parser(
        "evaluate",
        help="recall per attack kind and benign false positives, bundled vs site-trained model",
        description="Warm days of a simulated site -> its decision log -> `model train --baseline` -> an "
        "evaluation day (with a deploy and a 3x peak) replayed once clean and once with attack episodes of nine "
        "kinds, every attack call granted by policy.",
    )
    _site_arguments(evaluate)
    evaluate.add_argument("--warm-days", type=float, default=3.0, help="days of traffic training learns from")
    evaluate.add_argument("--lead-hours", type=float, default=6.0, help="hours a fresh server sees before the day")
    evaluate.add_argument("--per-kind", type=int, default=8, help="attack episodes of each kind (default 8)")
    evaluate.add_argument("--fpr-budget", type=float, default=0.001, help="benign false-positive budget")
    evaluate.add_argument("--attack-seed", type=int, default=101)
    evaluate.add_argument("--model", default="", help="the model to evaluate as 'bundled' (default: the bundled one)")
    evaluate.add_argument("--workdir", help="keep decision logs and models here (default: a temporary directory)")
    evaluate.add_argument("--workers", type=int, default=2, help="processes replaying the evaluation day (default 2)")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of tables")
    evaluate.set_defaults(handler=_evaluate)


def _site_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", default="shop", help="site name (with --vary, part of what draws the site)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SITE_SEED, help="simulation seed")
    parser.add_argument("--vary", action="store_true", help="draw a different site from the seed (workload mix, "
                        "time zone, SVID lifetimes, id shapes) instead of the catalogue as written")  # fmt: skip
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every rate (0.1: a tenth of the calls)")
    parser.add_argument("--svid-lifetime", type=float, action="append", metavar="SECONDS",
                        help="SVID lifetimes the workloads get (repeatable; default per workload)")  # fmt: skip


def _fail(message: str) -> int:
    print(f"authz-server model: {message}", file=sys.stderr)
    return 2


def _site(args: argparse.Namespace) -> Any:
    from authz_server.risklab.sites import site

    if args.scale <= 0:
        raise ValueError(f"--scale must be > 0, got {args.scale}")
    lifetimes = tuple(args.svid_lifetime) if args.svid_lifetime else None
    if lifetimes and min(lifetimes) < 120:
        raise ValueError("--svid-lifetime must be at least 120 seconds")
    return site(args.site, args.seed, scale=args.scale, vary=args.vary, svid_lifetimes=lifetimes)


def _synth(args: argparse.Namespace) -> int:
    from authz_server.risklab.requests import CertificateCache, LabServer, lab_ca
    from authz_server.risklab.simulator import DAY, Timeline

    try:
        spec = _site(args)
    except ValueError as exc:
        return _fail(str(exc))
    if args.days <= 0:
        return _fail(f"--days must be > 0, got {args.days}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timeline = Timeline(spec)
    certificates = CertificateCache(lab_ca(spec.start))
    with (
        (out / "events.jsonl").open("w") as events,
        LabServer(out / "server", spec, certificates, args.model) as server,
    ):

        def logged() -> Any:
            for event in timeline.events(spec.start + args.days * DAY):
                events.write(json.dumps({"ts": round(event.ts, 6), "caller": event.caller, "callee": event.callee,
                                         "method": event.method, "path": event.path, "size": event.size,
                                         "address": event.address, "label": event.label}) + "\n")  # fmt: skip
                yield event

        count = server.replay(logged())
    log = out / "decisions.jsonl"
    server.decision_log.replace(log)
    print(f"wrote {log} ({count} decisions) and {out / 'events.jsonl'}; site {spec.name}, seed {spec.seed}, "
          f"{len(spec.workloads)} workloads, {args.days:g} days; config {server.config_path}")  # fmt: skip
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from authz_server.risklab.evaluation import evaluate, format_json, format_table

    try:
        spec = _site(args)
    except ValueError as exc:
        return _fail(str(exc))
    if args.warm_days < 0.5 or args.lead_hours < 0 or args.per_kind < 1 or not 0 < args.fpr_budget < 1:
        return _fail("need --warm-days >= 0.5, --lead-hours >= 0, --per-kind >= 1 and 0 < --fpr-budget < 1")
    if args.model and not Path(args.model).is_file():
        return _fail(f"--model: no such file {args.model}")

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="authz-evaluate-") as scratch:
        workdir = Path(args.workdir) if args.workdir else Path(scratch)
        result = evaluate(
            spec, workdir, warm_days=args.warm_days, lead_hours=args.lead_hours, per_kind=args.per_kind,
            fpr_budget=args.fpr_budget, attack_seed=args.attack_seed, bundled_model=args.model, progress=progress,
            scale=args.scale, workers=args.workers,
        )  # fmt: skip
    sys.stdout.write(format_json(result) if args.json else format_table(result))
    return 0

"""Command-line commands of this subsystem, registered on `authz-server`: replay and incidents."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EXIT_BAD_INPUT = 2
EXIT_CHANGES = 3


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    replay = commands.add_parser(
        "replay",
        help="re-decide logged calls under candidate policies (and model); show which verdicts would change",
        description=(
            "Rebuild every logged call with a verified caller, decide it again under the candidate policy set "
            "(and, with --model, re-score its logged features with the candidate model) and report the calls "
            "whose verdict changes. Run it on a dry-run or shadow rollout's log before the change goes live."
        ),
    )
    replay.add_argument(
        "--log", action="append", required=True, metavar="DECISIONS", help="decision log file ('-' = stdin; repeat)"
    )
    replay.add_argument(
        "--policies", action="append", required=True, metavar="PATH", help="candidate declarations (file or dir)"
    )
    replay.add_argument("--model", metavar="ONNX", help="candidate anomaly model: re-score logged features with it")
    replay.add_argument("--config", "-c", metavar="FILE", help="server configuration (risk thresholds, workload key)")
    replay.add_argument("--json", action="store_true", help="print the full report as JSON")
    replay.add_argument("--limit", type=int, default=50, metavar="N", help="changes listed in the text report")
    replay.add_argument(
        "--fail-on-change", action="store_true", help=f"exit {EXIT_CHANGES} when any verdict would change (CI gate)"
    )
    replay.set_defaults(handler=_replay)

    incidents = commands.add_parser(
        "incidents",
        help="group denials and high-risk calls from a decision log into incidents with their evidence",
        description=(
            "Denied and high-risk calls of one caller that follow each other within --window form one incident, "
            "listed with its severity, reasons, risk factors, routes and decision ids."
        ),
    )
    incidents.add_argument(
        "--log", action="append", required=True, metavar="DECISIONS", help="decision log file ('-' = stdin; repeat)"
    )
    incidents.add_argument("--window", default="5m", help="quiet gap that ends an incident (default 5m)")
    incidents.add_argument(
        "--min-score", type=float, metavar="SCORE", help="also treat calls scoring at least this as high-risk"
    )
    incidents.add_argument("--min-events", type=int, default=1, metavar="N", help="hide incidents with fewer events")
    incidents.add_argument(
        "--split-by-reason", action="store_true", help="one incident per caller and reason/factors, not per caller"
    )
    incidents.add_argument("--json", action="store_true", help="print incidents as JSON")
    incidents.set_defaults(handler=_incidents)


def _fail(message: str) -> int:
    print(f"authz-server: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _replay(args: argparse.Namespace) -> int:
    from authz_server.config import load_config
    from authz_server.ops.logfile import LogReadError, ReadStats, read_decisions
    from authz_server.ops.replay import Replayer, ScoreModel
    from authz_server.policy import load_policies
    from authz_server.policy.problems import PolicyError

    config = load_config(args.config)
    workload_key = getattr(config.policy, "workload_key", "workload")
    try:
        policies = load_policies(args.policies, workload_key=workload_key)
    except PolicyError as exc:
        return _fail(f"the candidate policies cannot be loaded: {exc}")
    model: ScoreModel | None = None
    if args.model:
        from authz_server.risk.model import AnomalyModel, ModelError

        try:
            model = AnomalyModel.load(args.model)
        except ModelError as exc:
            return _fail(f"the candidate model cannot be loaded: {exc}")
    stats = ReadStats()
    try:
        report = Replayer(policies, model, config.risk).replay(read_decisions(args.log, stats), stats)
    except LogReadError as exc:
        return _fail(str(exc))
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        from authz_server.ops.render import replay_text

        sys.stdout.write(replay_text(report, args.limit))
    return EXIT_CHANGES if args.fail_on_change and report.changes else 0


def _incidents(args: argparse.Namespace) -> int:
    from authz_server.ops.incidents import IncidentRules, find_incidents, parse_duration, render_text
    from authz_server.ops.logfile import LogReadError, ReadStats, read_decisions

    try:
        window = parse_duration(args.window)
    except ValueError as exc:
        return _fail(f"--window: {exc}")
    if args.min_events < 1:
        return _fail(f"--min-events: must be >= 1, got {args.min_events}")
    rules = IncidentRules(
        window_s=window, min_score=args.min_score, split_by_reason=args.split_by_reason, min_events=args.min_events
    )
    stats = ReadStats()
    try:
        found = find_incidents(read_decisions(args.log, stats), rules)
    except LogReadError as exc:
        return _fail(str(exc))
    events = sum(i.events for i in found)
    if args.json:
        document = {
            "window_s": window,
            "decisions": stats.decisions,
            "skipped_lines": stats.skipped,
            "incidents": [i.to_json() for i in found],
        }
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_text(found, events, stats.decisions))
        if stats.skipped:
            sys.stderr.write(f"skipped {stats.skipped} line(s) that are not decisions: {stats.problems[0]} ...\n")
    return 0

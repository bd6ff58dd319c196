"""The `authz-server policy suggest` command: read logs, compare, write the suggestion and its tests.

    authz-server policy suggest --from LOG... [--policies PATH]... [--out DIR] [--group-namespace]
        [--unused-days N] [--max-test-cases N] [--max-memory-mib N] [--json]

Exit status: 0 written, 1 nothing to suggest or the current declarations are invalid, 2 bad usage or an
unreadable log.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from authz_server.ops.logfile import LogReadError, ReadStats, read_decisions, with_rotated
from authz_server.policy.casefile import run_tests
from authz_server.policy.documents import read_files
from authz_server.policy.loader import compile_snapshot
from authz_server.policy.observed import DEFAULT_MAX_BYTES, DEFAULT_MAX_ROUTES_PER_EDGE, Observer
from authz_server.policy.policyset import PolicySet
from authz_server.policy.suggest import (
    DEFAULT_MAX_CASES,
    SuggestionError,
    report_json,
    report_text,
    suggest,
)


def _fail(message: str, status: int = 2) -> int:
    sys.stderr.write(f"authz-server: {message}\n")
    return status


def _inside(path: Path, roots: list[str]) -> str | None:
    resolved = path.resolve()
    for root in roots:
        base = Path(root).resolve()
        if resolved == base or base in resolved.parents or (base.is_file() and base.parent == resolved):
            return root
    return None


def _run(args: argparse.Namespace) -> int:
    now = time.time()
    current: PolicySet | None = None
    if args.policies:
        if args.out and (root := _inside(Path(args.out), args.policies)) is not None:
            return _fail(
                f"--out {args.out} is inside --policies {root}: a server loading it would enforce the suggestion "
                "before anyone reviewed it; write to a review directory and move files over callee by callee"
            )
        compiled = compile_snapshot(read_files(args.policies), now, workload_key=args.workload_key)
        if compiled.policy_set is None:
            for problem in compiled.errors:
                sys.stderr.write(f"{problem}\n")
            return _fail("the current declarations (--policies) are invalid (see above)", 1)
        current = compiled.policy_set
    observer = Observer(
        current,
        now=now,
        workload_key=args.workload_key,
        max_bytes=args.max_memory_mib << 20,
        max_routes_per_edge=args.max_routes_per_caller,
    )
    stats = ReadStats()
    logs = with_rotated(args.logs)
    try:
        observations = observer.observe_all(read_decisions(logs, stats))
    except LogReadError as exc:
        return _fail(str(exc))
    taken = [d.id for d in current.declarations] if current is not None else []
    sources = ", ".join(logs) if len(logs) <= 3 else f"{len(logs)} log files"
    try:
        suggestion = suggest(
            observations, group_namespace=args.group_namespace, taken=taken, sources=sources,
            max_cases=args.max_test_cases, now=now,
        )  # fmt: skip
    except SuggestionError as exc:
        return _fail(f"internal error, nothing written: {exc}", 1)
    read = {"lines": stats.lines, "decisions": stats.decisions, "skipped": stats.skipped, "problems": stats.problems}
    report = (
        json.dumps(report_json(suggestion, read, args.unused_days), indent=2) + "\n"
        if args.json
        else report_text(suggestion, read, args.unused_days, args.limit)
    )
    if not suggestion.documents:
        sys.stderr.write(report)
        return _fail("no legitimate calls observed: nothing to suggest", 1)
    if args.out:
        out = Path(args.out)
        try:
            out.mkdir(parents=True, exist_ok=True)
            for name, text in suggestion.files.items():
                (out / name).write_text(text)
        except OSError as exc:
            return _fail(f"--out {args.out}: {exc.strerror or exc}")
        # The files as written, through `policy test` itself: what a reviewer will run.
        run = run_tests([str(out / name) for name in suggestion.files], now)
        passed = sum(r.passed for r in run.results)
        sys.stdout.write(report)
        sys.stdout.write(
            f"wrote {len(suggestion.files)} file(s) to {out}; policy test: {passed}/{len(run.results)} passed\n"
        )
        return 0 if run.ok else _fail("the written suggestion fails its own tests", 1)
    sys.stdout.write("---\n".join(suggestion.files.values()))
    sys.stderr.write(report)
    return 0


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser(
        "suggest",
        help="write least-privilege AllowedCalls from decision logs (what was observed, nothing wider)",
        description="From decision logs, write one AllowedCalls document per callee granting exactly the observed "
        "legitimate calls (callers by SPIFFE ID, methods, route templates with ids folded to *), with an "
        "AllowedCallsTest; compare with the current declarations.",
    )
    parser.add_argument(
        "--from", dest="logs", action="append", nargs="+", required=True, metavar="LOG",
        help="decision log files or directories (rotated FILE.N beside a file are read too; - for stdin)",
    )  # fmt: skip
    parser.add_argument("--policies", action="append", metavar="PATH", help="the current declarations, to compare")
    parser.add_argument(
        "--out", metavar="DIR", help="write one file per callee here (declaration and its tests; default: stdout)"
    )
    parser.add_argument(
        "--group-namespace", action="store_true",
        help="one namespace rule when every observed service account (2+) of a namespace called the same routes",
    )  # fmt: skip
    parser.add_argument(
        "--unused-days", type=float, default=30.0, metavar="N",
        help="with --policies: flag allow rules that matched no call in the last N days of the logs (default 30)",
    )  # fmt: skip
    parser.add_argument(
        "--max-test-cases", type=int, default=DEFAULT_MAX_CASES, metavar="N",
        help="observed calls written as must-stay-allowed cases, in all (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--max-memory-mib", type=int, default=DEFAULT_MAX_BYTES >> 20, metavar="N",
        help="bound on what distinct edges and routes may hold (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--max-routes-per-caller", type=int, default=DEFAULT_MAX_ROUTES_PER_EDGE, metavar="N",
        help="distinct routes kept per caller and callee; more marks the rule incomplete (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--workload-key", default="workload", metavar="KEY",
        help="context-extension key naming workloadKey callees (the server's policy.workload_key; default %(default)s)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="the report as JSON")
    parser.add_argument("--limit", type=int, default=50, metavar="N", help="lines per list in the text report")
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    args.logs = [path for group in args.logs for path in group]
    if args.max_test_cases < 1 or args.max_memory_mib < 1 or args.max_routes_per_caller < 1 or args.unused_days <= 0:
        return _fail("--max-test-cases, --max-memory-mib, --max-routes-per-caller and --unused-days must be positive")
    return _run(args)

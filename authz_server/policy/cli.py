"""Command-line commands of this subsystem, registered on `authz-server`.

    authz-server policy validate PATH...
    authz-server policy explain --from ID --to ID --method M --path P [--header K=V] [--policies PATH]
    authz-server policy test PATH...
    authz-server policy suggest --from LOG... [--policies PATH] [--out DIR]   (suggest_command.py)
    authz-server grant --from ID --to ID --method M --path P --ttl 15m [--out FILE]

Exit status: 0 success, 1 problems found (or a failing test), 2 bad usage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path
from typing import Any

from spiffe import SpiffeId

from authz_server.policy.documents import FileSnapshot, read_files
from authz_server.policy.loader import compile_snapshot

DEFAULT_POLICIES = "policies"


def _print(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def _fail(message: str, status: int = 2) -> int:
    sys.stderr.write(f"authz-server: {message}\n")
    return status


def _validate(args: argparse.Namespace) -> int:
    compiled = compile_snapshot(read_files(args.paths))
    for problem in compiled.problems:
        _print(str(problem))
    errors = len(compiled.errors)
    warnings = len(compiled.problems) - errors
    if compiled.policy_set is not None:
        summary = compiled.policy_set.summary
        _print(
            f"ok: {summary.documents} documents, {summary.rules} rules, {summary.quarantined} quarantine entries, "
            f"{len(compiled.tests)} test documents; version {compiled.policy_set.version}"
            + (f"; {warnings} warning(s)" if warnings else "")
        )
    else:
        _print(f"invalid: {errors} error(s), {warnings} warning(s)")
    return 1 if errors or (args.strict and warnings) else 0


def header_pairs(pairs: list[str]) -> dict[str, str]:
    """Repeated --header NAME=VALUE options as Envoy would send them (names in lower case)."""
    headers = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--header: expected NAME=VALUE, got {pair!r}")
        headers[name.strip().lower()] = value
    return headers


def _explain(args: argparse.Namespace) -> int:
    from authz_server.policy.explain import explain, synthetic_call

    try:
        SpiffeId(args.caller)
        if args.callee.startswith("spiffe://"):
            SpiffeId(args.callee)
        headers = header_pairs(args.header)
    except Exception as exc:
        return _fail(str(exc))
    if args.policies is None and not Path(DEFAULT_POLICIES).exists():
        return _fail(
            f"no declarations to explain against: ./{DEFAULT_POLICIES} (the default) does not exist here; "
            "pass --policies FILE_OR_DIRECTORY"
        )
    compiled = compile_snapshot(read_files(args.policies or [DEFAULT_POLICIES]))
    if compiled.policy_set is None:
        for problem in compiled.errors:
            sys.stderr.write(f"{problem}\n")
        return _fail("the declarations are invalid (see above)", 1)
    is_key = not args.callee.startswith("spiffe://")
    now = time.time()
    call, identity = synthetic_call(
        args.caller,
        "" if is_key else args.callee,
        args.method,
        args.path,
        headers,
        args.callee if is_key else None,
        compiled.policy_set.workload_key,
        now,
    )
    for line in explain(compiled.policy_set, call, identity, now).lines():
        _print(line)
    return 0


def _test(args: argparse.Namespace) -> int:
    from authz_server.policy.casefile import run_tests

    run = run_tests(args.paths)
    for problem in run.problems:
        _print(str(problem))
    passed = sum(r.passed for r in run.results)
    for result in run.results:
        if result.passed:
            if args.verbose:
                _print(f"PASS {result.file}:{result.line}: {result.name}")
            continue
        _print(f"FAIL {result.file}:{result.line}: {result.name}")
        for failure in result.failures:
            _print(f"  {failure}")
        for line in result.explanation:
            _print(f"    {line}")
    _print(f"{passed}/{len(run.results)} cases passed")
    return 0 if run.ok else 1


def _grant(args: argparse.Namespace) -> int:
    from authz_server.policy.grant import grant_document, parse_ttl, render
    from authz_server.policy.matching import PathPattern, PatternError
    from authz_server.policy.paths import normalize_path

    try:
        ttl_s = parse_ttl(args.ttl)
        SpiffeId(args.caller)
        SpiffeId(args.callee)
        for path in args.path:
            PathPattern.parse(path)
            plain = path.replace("*", "x")
            if normalize_path(plain) != plain:
                raise ValueError(f"--path {path!r} is not in normalised form")
    except (ValueError, PatternError) as exc:
        return _fail(str(exc))
    except Exception as exc:
        return _fail(f"invalid SPIFFE ID: {exc}")
    now = dt.datetime.now(dt.UTC)
    document = grant_document(args.caller, args.callee, args.method, args.path, ttl_s, now, args.reason)
    text = render(document, args.ttl)
    # Check what we wrote with the same validator the server uses, so a grant never breaks a reload.
    compiled = compile_snapshot(FileSnapshot((("<grant>", text.encode()),), ()))
    if compiled.errors:
        return _fail("; ".join(str(p) for p in compiled.errors), 1)
    if args.out:
        out = Path(args.out)
        if out.is_dir() or args.out.endswith(("/", os.sep)):
            if not out.is_dir():
                return _fail(f"--out {args.out}: no such directory")
            out = out / f"{document['metadata']['name']}.yaml"
        elif not out.parent.is_dir():
            return _fail(f"--out {args.out}: directory {out.parent} does not exist")
        try:
            out.write_text(text)
        except OSError as exc:
            return _fail(f"--out {args.out}: cannot write: {exc.strerror}")
        sys.stderr.write(f"wrote {out} (expires {document['spec']['rules'][0]['expires']})\n")
    else:
        sys.stdout.write(text)
    return 0


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    policy = commands.add_parser("policy", help="validate, explain and test AllowedCalls declarations")
    sub = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")

    validate = sub.add_parser("validate", help="check declarations; every problem as file:line: message")
    validate.add_argument("paths", nargs="+", metavar="PATH", help="declaration files or directories")
    validate.add_argument("--strict", action="store_true", help="fail on warnings too (shadowed or expired rules)")
    validate.set_defaults(handler=_validate)

    explain = sub.add_parser("explain", help="the verdict for one call, the deciding rule, and near misses")
    explain.add_argument("--from", dest="caller", required=True, metavar="SPIFFE_ID", help="the caller")
    explain.add_argument(
        "--to", dest="callee", required=True, metavar="ID", help="the callee's SPIFFE ID, or a workloadKey value"
    )
    explain.add_argument("--method", required=True, help="HTTP method")
    explain.add_argument("--path", required=True, help="request path as sent (a query string is ignored)")
    explain.add_argument("--header", action="append", default=[], metavar="NAME=VALUE", help="a request header")
    explain.add_argument(
        "--policies", action="append", metavar="PATH", help=f"declarations (default: ./{DEFAULT_POLICIES})"
    )
    explain.set_defaults(handler=_explain, policies=None)

    test = sub.add_parser("test", help="run AllowedCallsTest cases written beside the declarations")
    test.add_argument("paths", nargs="+", metavar="PATH", help="test files or directories")
    test.add_argument("-v", "--verbose", action="store_true", help="list passing cases too")
    test.set_defaults(handler=_test)

    from authz_server.policy.suggest_command import add_parser as add_suggest

    add_suggest(sub)

    grant = commands.add_parser("grant", help="write a time-boxed AllowedCalls declaration (GitOps)")
    grant.add_argument("--from", dest="caller", required=True, metavar="SPIFFE_ID", help="who gets access")
    grant.add_argument("--to", dest="callee", required=True, metavar="SPIFFE_ID", help="the workload called")
    grant.add_argument("--method", action="append", required=True, help="HTTP method (repeatable)")
    grant.add_argument("--path", action="append", required=True, help="path pattern (repeatable)")
    grant.add_argument("--ttl", required=True, help="how long the grant lasts: 15m, 2h, 1d (at most 30d)")
    grant.add_argument("--reason", default="", help="why (stored as an annotation)")
    grant.add_argument("--out", metavar="FILE", help="write here (a directory: a file named after the grant)")
    grant.set_defaults(handler=_grant)

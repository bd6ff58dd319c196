"""`authz-server policy test`: owner-written cases (kind AllowedCallsTest) checked against the declarations.

A test document lives beside the declarations it checks; unless it lists
`spec.policies` (relative to its own file), it tests the declarations in its
own directory. Each case is a call and its expected verdict, optionally the
reason code and the deciding rule.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from authz_server.policy.documents import SourceDocument, parse_documents, read_files
from authz_server.policy.explain import explain, synthetic_call
from authz_server.policy.loader import compile_snapshot
from authz_server.policy.problems import Problem, Severity
from authz_server.policy.validation import parse_time


@dataclass(frozen=True)
class CaseResult:
    file: str
    line: int
    name: str
    passed: bool
    failures: tuple[str, ...]
    explanation: tuple[str, ...]


@dataclass
class TestRun:
    results: list[CaseResult]
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        errors = [p for p in self.problems if p.severity is Severity.ERROR]
        return not errors and bool(self.results) and all(r.passed for r in self.results)


def _test_documents(paths: Sequence[str]) -> tuple[list[SourceDocument], list[Problem]]:
    snapshot = read_files(paths)
    documents: list[SourceDocument] = []
    problems = list(snapshot.problems)
    for name, content in snapshot.contents:
        parsed, parse_problems = parse_documents(name, content.decode("utf-8", errors="replace"))
        problems.extend(parse_problems)
        documents.extend(d for d in parsed if isinstance(d.data, dict) and d.data.get("kind") == "AllowedCallsTest")
    return documents, problems


def _run_case(doc: SourceDocument, index: int, case: dict[str, Any], policies: Any, default_now: float) -> CaseResult:
    line = doc.line(("spec", "cases", index))
    # Validation refused any `at` that does not parse; an explicit None check keeps the epoch (0.0) a time.
    at = parse_time(case["at"]) if "at" in case else None
    now = default_now if at is None else at
    call, identity = synthetic_call(
        case["from"],
        case.get("to", ""),
        case["method"],
        case["path"],
        case.get("headers"),
        case.get("workloadKey"),
        policies.workload_key,
        now,
    )
    explanation = explain(policies, call, identity, now)
    failures = []
    if explanation.verdict != case["expect"]:
        failures.append(f"expected {case['expect']}, got {explanation.verdict} ({explanation.outcome.reason.value})")
    if "reason" in case and explanation.outcome.reason.value != case["reason"]:
        failures.append(f"expected reason {case['reason']}, got {explanation.outcome.reason.value}")
    if "rule" in case and explanation.outcome.rule != case["rule"]:
        failures.append(f"expected rule {case['rule']}, got {explanation.outcome.rule or 'none'}")
    return CaseResult(doc.file, line, case["name"], not failures, tuple(failures), tuple(explanation.lines()))


def run_tests(paths: Sequence[str], now: float | None = None) -> TestRun:
    """Run every AllowedCallsTest document found under `paths`."""
    now = time.time() if now is None else now
    documents, problems = _test_documents(paths)
    results: list[CaseResult] = []
    if not documents and not problems:
        problems.append(Problem(", ".join(paths), 0, "no AllowedCallsTest documents found"))
    for doc in documents:
        base = Path(doc.file).parent
        spec = doc.data.get("spec") or {}
        targets = [str(base / p) for p in spec.get("policies", [])] or [str(base)]
        compiled = compile_snapshot(read_files(targets), now)
        problems.extend(p for p in compiled.problems if p.file == doc.file or p.severity is Severity.ERROR)
        if compiled.policy_set is None or any(p.file == doc.file for p in compiled.errors):
            continue
        doc_at = parse_time(spec["at"]) if "at" in spec else None
        doc_now = now if doc_at is None else doc_at
        for index, case in enumerate(spec["cases"]):
            results.append(_run_case(doc, index, case, compiled.policy_set, doc_now))
    return TestRun(results, sorted(set(problems)))

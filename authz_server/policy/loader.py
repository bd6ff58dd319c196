"""Files in, a compiled PolicySet out, or a PolicyError naming every problem.

Each file is parsed and validated on its own, and the result is kept (by file
name and content hash) for the next reload: changing one declaration among
thousands re-validates one file, not all of them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from authz_server.policy.analysis import dead_rules
from authz_server.policy.documents import FileSnapshot, SourceDocument, read_files
from authz_server.policy.model import Declaration, QuarantineList
from authz_server.policy.policyset import PolicySet
from authz_server.policy.problems import PolicyError, Problem, Severity
from authz_server.policy.validation import FileResult, validate_file


@dataclass
class CompileCache:
    """What a reload can reuse from the previous one."""

    files: dict[tuple[str, bytes], FileResult] = field(default_factory=dict)
    """Validated files by (name, SHA-256 of content)."""
    analysis: dict[tuple[tuple[str, str, str, int], ...], list[Problem]] = field(default_factory=dict)
    """Dead-rule warnings by the identity of a callee's declarations."""


@dataclass(frozen=True)
class Compiled:
    """The outcome of compiling a snapshot: a set when there were no errors, and every problem found."""

    policy_set: PolicySet | None
    problems: tuple[Problem, ...]
    tests: tuple[SourceDocument, ...]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.ERROR]


def _version(declarations: Sequence[Declaration], quarantines: Sequence[QuarantineList]) -> str:
    """Content hash of the set: the documents' own content, whatever files, order or comments hold them."""
    hasher = hashlib.sha256()
    entries = [(f"AllowedCalls/{d.id}", d.digest) for d in declarations]
    entries += [(f"Quarantine/{q.id}", q.digest) for q in quarantines]
    for name, digest in sorted(entries):
        hasher.update(f"{name}={digest}\n".encode())
    return hasher.hexdigest()[:12]


def _duplicates(documents: Sequence[Declaration | QuarantineList]) -> list[Problem]:
    problems = []
    seen: dict[str, Declaration | QuarantineList] = {}
    for document in documents:
        kind = "AllowedCalls" if isinstance(document, Declaration) else "Quarantine"
        first = seen.setdefault(f"{kind}/{document.id}", document)
        if first is not document:
            message = f"{kind} {document.id} is already declared at {first.file}:{first.line}"
            problems.append(Problem(document.file, document.line, message))
    return problems


def compile_snapshot(
    snapshot: FileSnapshot,
    now: float | None = None,
    *,
    workload_key: str = "workload",
    cache: CompileCache | None = None,
) -> Compiled:
    now = time.time() if now is None else now
    problems = list(snapshot.problems)
    declarations: list[Declaration] = []
    quarantines: list[QuarantineList] = []
    tests: list[SourceDocument] = []
    fresh = CompileCache()
    for name, content in snapshot.contents:
        key = (name, hashlib.sha256(content).digest())
        result = cache.files.get(key) if cache is not None else None
        if result is None:
            result = validate_file(name, content)
        fresh.files[key] = result
        declarations.extend(result.declarations)
        quarantines.extend(result.quarantines)
        tests.extend(result.tests)
        problems.extend(result.problems)
        problems.extend(problem for moment, problem in result.expiring if moment <= now)
    problems.extend(_duplicates([*declarations, *quarantines]))
    if any(p.severity is Severity.ERROR for p in problems):
        return Compiled(None, tuple(sorted(problems)), tuple(tests))
    for group in _by_callee(declarations):
        identity = tuple((d.id, d.digest, d.file, d.line) for d in group)
        found = cache.analysis.get(identity) if cache is not None else None
        if found is None:
            found = dead_rules(group)
        fresh.analysis[identity] = found
        problems.extend(found)
    if cache is not None:
        cache.files, cache.analysis = fresh.files, fresh.analysis
    warnings = tuple(sorted(problems))
    version = _version(declarations, quarantines)
    policy_set = PolicySet(declarations, quarantines, version, workload_key=workload_key, warnings=warnings)
    return Compiled(policy_set, warnings, tuple(tests))


def _by_callee(declarations: Sequence[Declaration]) -> list[list[Declaration]]:
    groups: dict[str, list[Declaration]] = {}
    for declaration in sorted(declarations, key=lambda d: d.id):
        groups.setdefault(declaration.callee, []).append(declaration)
    return list(groups.values())


def load_policies(paths: Sequence[str], now: float | None = None, *, workload_key: str = "workload") -> PolicySet:
    """Read, validate and compile every declaration under `paths`; raises PolicyError on any error."""
    compiled = compile_snapshot(read_files(paths), now, workload_key=workload_key)
    if compiled.policy_set is None:
        raise PolicyError(compiled.problems)
    return compiled.policy_set

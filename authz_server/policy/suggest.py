"""`authz-server policy suggest`: least-privilege AllowedCalls written from what the mesh was seen doing.

Observations (observed.py) become one AllowedCalls document per callee, one
rule per caller, granting exactly the (method, path pattern) pairs observed:
paths with the same observed methods share a `to` entry, so no entry grants a
method on a path where it was never seen. Ids are folded the way the risk
stage folds them (routes.py): `/v1/charges/ch_1002` is granted as
`/v1/charges/*`. `group_namespace` is the one widening on offer: when at least
two service accounts of a namespace were seen and every one of them called the
same routes, they share one `namespace:` rule (which also admits service
accounts of that namespace not seen yet: that is the point of asking for it).

Each document is followed, in the same file, by an AllowedCallsTest: for each rule, observed calls
that must stay allowed (narrowing the rule by mistake fails it) and calls next
to them that must stay denied (an unobserved method, an unknown caller), each
checked against the suggestion before it is written.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spiffe import SpiffeId

from authz_server.policy.documents import FileSnapshot
from authz_server.policy.explain import synthetic_call
from authz_server.policy.loader import Compiled, compile_snapshot
from authz_server.policy.observed import WORKLOAD_KEY, Callee, Edge, Observations, RouteStats, RuleUse
from authz_server.policy.schema import ALLOWED_CALLS, ALLOWED_CALLS_TEST, GROUP_VERSION

_K8S_ID = re.compile(
    r"spiffe://([^/]+)/ns/([a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?)/sa/([a-z0-9](?:[-.a-z0-9]*[a-z0-9])?)"
)
"""`spiffe://TD/ns/NAMESPACE/sa/SERVICE-ACCOUNT`, the namespace a DNS label (at most 63 characters)."""
_NOT_LABEL = re.compile(r"[^a-z0-9]+")
_PROBE_METHODS = ("DELETE", "PUT", "PATCH", "POST", "GET")
"""Tried in this order for a rule's must-stay-denied case: the first one the caller was not seen using."""
DEFAULT_MAX_CASES = 200
UNOBSERVED_CALLER = "ns/authz-suggest-unobserved/sa/unobserved"


def _stamp(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _label(text: str, limit: int = 50) -> str:
    return _NOT_LABEL.sub("-", text.lower()).strip("-")[:limit].strip("-") or "x"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _calls(n: int) -> str:
    return _count(n, "call")


def _q(value: str) -> str:
    """A YAML scalar: JSON's double-quoted strings are valid YAML and escape everything that needs it."""
    return json.dumps(value)


@dataclass
class MethodUse:
    """One method on one path pattern, merged over the callers a rule grants."""

    calls: int = 0
    first: float = float("inf")
    last: float = float("-inf")
    caller: str = ""
    sample: str = ""
    risk_objected: int = 0
    current_denied: int = 0
    current_reason: str = ""
    current_dry_run_only: int = 0

    def merge(self, caller: str, stats: RouteStats) -> None:
        if not self.caller:
            self.caller, self.sample = caller, stats.sample
        self.calls += stats.calls
        self.first = min(self.first, stats.first)
        self.last = max(self.last, stats.last)
        self.risk_objected += stats.risk_objected
        self.current_denied += stats.current_denied
        self.current_reason = self.current_reason or stats.current_reason
        self.current_dry_run_only += stats.current_dry_run_only


@dataclass
class PathLine:
    pattern: str
    methods: dict[str, MethodUse] = field(default_factory=dict)

    @property
    def calls(self) -> int:
        return sum(u.calls for u in self.methods.values())


@dataclass(frozen=True)
class RouteEntry:
    methods: tuple[str, ...]
    paths: tuple[PathLine, ...]


@dataclass(frozen=True)
class SuggestedRule:
    name: str
    from_entry: dict[str, str]
    """`{id: ...}` or `{namespace: ..., trustDomain: ...}`, as written."""
    observed_callers: tuple[str, ...]
    routes: tuple[RouteEntry, ...]
    refused: int
    """Calls to further routes not kept (memory budget, per-caller cap): the rule may be incomplete."""

    @property
    def uses(self) -> list[tuple[PathLine, str, MethodUse]]:
        return [(line, m, line.methods[m]) for entry in self.routes for line in entry.paths for m in entry.methods]

    @property
    def calls(self) -> int:
        return sum(u.calls for _, _, u in self.uses)

    @property
    def first(self) -> float:
        return min(u.first for _, _, u in self.uses)

    @property
    def last(self) -> float:
        return max(u.last for _, _, u in self.uses)

    @property
    def current_denied(self) -> int:
        return sum(u.current_denied for _, _, u in self.uses)

    @property
    def current_dry_run_only(self) -> int:
        return sum(u.current_dry_run_only for _, _, u in self.uses)


@dataclass(frozen=True)
class SuggestedDocument:
    callee: Callee
    namespace: str
    name: str
    rules: tuple[SuggestedRule, ...]

    @property
    def file_name(self) -> str:
        return f"{self.namespace}.{self.name}.yaml"  # DNS labels hold no dot: one file per document

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def trust_domain(self) -> str:
        if self.callee[0] != WORKLOAD_KEY:
            return SpiffeId(self.callee[1]).trust_domain.name
        return SpiffeId(self.rules[0].observed_callers[0]).trust_domain.name


@dataclass
class Suggestion:
    observations: Observations
    documents: list[SuggestedDocument]
    compared: bool
    """Whether the observations were checked against current declarations."""
    files: dict[str, str] = field(default_factory=dict)
    """File name -> YAML text: per callee its AllowedCalls and the AllowedCallsTest of it."""
    cases: int = 0
    routes_tested: int = 0
    warnings: list[str] = field(default_factory=list)
    """What `policy validate` warns about in the suggestion (none expected; reported, never hidden)."""


# --- from observations to rules ------------------------------------------------------------------------------


def _route_entries(edges: Iterable[tuple[str, Edge]]) -> tuple[RouteEntry, ...]:
    lines: dict[str, PathLine] = {}
    for caller, edge in edges:
        for (pattern, method), stats in edge.routes.items():
            line = lines.setdefault(pattern, PathLine(pattern))
            line.methods.setdefault(method, MethodUse()).merge(caller, stats)
    by_methods: dict[tuple[str, ...], list[PathLine]] = {}
    for line in lines.values():
        by_methods.setdefault(tuple(sorted(line.methods)), []).append(line)
    return tuple(
        RouteEntry(methods, tuple(sorted(group, key=lambda line: line.pattern)))
        for methods, group in sorted(by_methods.items())
    )


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate = f"{name[:58]}-{n}"
        n += 1
    taken.add(candidate)
    return candidate


def _caller_rule_name(caller: str) -> str:
    match = _K8S_ID.fullmatch(caller)
    if match:
        return "from-" + _label(f"{match.group(2)}-{match.group(3)}")
    return "from-" + _label(caller.removeprefix("spiffe://").partition("/")[2] or caller.removeprefix("spiffe://"))


def _namespace_groups(edges: dict[str, Edge]) -> dict[tuple[str, str], list[str]]:
    """(trust domain, namespace) -> callers, for namespaces whose every observed service account (two or more)
    called exactly the same routes, none of them incompletely observed."""
    groups: dict[tuple[str, str], list[str]] = {}
    for caller in edges:
        match = _K8S_ID.fullmatch(caller)
        if match:
            groups.setdefault((match.group(1), match.group(2)), []).append(caller)
    agreed = {}
    for key, callers in groups.items():
        signatures = {frozenset(edges[c].routes) for c in callers}
        if len(callers) >= 2 and len(signatures) == 1 and not any(edges[c].refused for c in callers):
            agreed[key] = sorted(callers)
    return agreed


def _rules(callee: Callee, edges: dict[str, Edge], group_namespace: bool) -> tuple[SuggestedRule, ...]:
    callee_td = SpiffeId(callee[1]).trust_domain.name if callee[0] != WORKLOAD_KEY else None
    rules: list[SuggestedRule] = []
    names: set[str] = set()
    grouped: set[str] = set()
    if group_namespace:
        for (td, namespace), callers in sorted(_namespace_groups(edges).items()):
            from_entry = {"namespace": namespace}
            if td != callee_td:
                from_entry["trustDomain"] = td
            routes = _route_entries((c, edges[c]) for c in callers)
            name = _unique("from-ns-" + _label(namespace) + ("" if td == callee_td else "-" + _label(td, 20)), names)
            rules.append(SuggestedRule(name, from_entry, tuple(callers), routes, 0))
            grouped.update(callers)
    for caller in sorted(set(edges) - grouped):
        edge = edges[caller]
        if not edge.routes:
            continue
        name = _unique(_caller_rule_name(caller), names)
        rules.append(SuggestedRule(name, {"id": caller}, (caller,), _route_entries([(caller, edge)]), edge.refused))
    return tuple(sorted(rules, key=lambda r: r.name))


def _document_name(callee: Callee, taken: set[str]) -> tuple[str, str]:
    namespace, name = "default", _label(callee[1])
    if callee[0] != WORKLOAD_KEY:
        match = _K8S_ID.fullmatch(callee[1])
        if match:
            namespace, name = match.group(2), _label(match.group(3))
        else:
            name = _label(callee[1].removeprefix("spiffe://").replace("/", "-"))
    base = name
    if f"{namespace}/{name}" in taken:
        base = name = f"{name[:50]}-suggested"
    n = 2
    while f"{namespace}/{name}" in taken:
        name = f"{base[:58]}-{n}"
        n += 1
    taken.add(f"{namespace}/{name}")
    return namespace, name


def build_documents(
    observations: Observations, *, group_namespace: bool = False, taken: Iterable[str] = ()
) -> list[SuggestedDocument]:
    """One document per observed callee; `taken` are document ids (`namespace/name`) already in use."""
    by_callee: dict[Callee, dict[str, Edge]] = {}
    for (callee, caller), edge in observations.edges.items():
        by_callee.setdefault(callee, {})[caller] = edge
    names = set(taken)
    documents = []
    for callee in sorted(by_callee):
        rules = _rules(callee, by_callee[callee], group_namespace)
        if rules:
            namespace, name = _document_name(callee, names)
            documents.append(SuggestedDocument(callee, namespace, name, rules))
    return documents


# --- rendering -----------------------------------------------------------------------------------------------


def _path_comment(line: PathLine, compared: bool) -> str:
    parts = ", ".join(f"{m} {u.calls}" for m, u in sorted(line.methods.items()))
    uses = line.methods.values()
    first, last = min(u.first for u in uses), max(u.last for u in uses)
    notes = [f"{parts}; {_stamp(first)} .. {_stamp(last)}"]
    objected = sum(u.risk_objected for u in uses)
    if objected:
        notes.append(f"risk objected (in shadow) to {objected}")
    if compared:
        denied = sum(u.current_denied for u in uses)
        if denied:
            reason = next((u.current_reason for u in uses if u.current_reason), "")
            notes.append(f"new: the current declarations deny {denied} ({reason})")
    return "; ".join(notes)


def _rule_comment(rule: SuggestedRule, compared: bool) -> list[str]:
    lines = [f"{_calls(rule.calls)}, first {_stamp(rule.first)}, last {_stamp(rule.last)}"]
    if "namespace" in rule.from_entry:
        accounts = ", ".join(c.rpartition("/")[2] for c in rule.observed_callers)
        lines.append(
            f"grouped (--group-namespace): every observed service account of namespace "
            f"{rule.from_entry['namespace']} ({accounts}) called exactly these routes"
        )
    if rule.refused:
        lines.append(
            f"INCOMPLETE: {rule.refused} calls to further routes were not kept (memory budget or the per-caller "
            f"route cap): this caller may be scanning; review its traffic before enforcing"
        )
    if compared:
        denied, dry = rule.current_denied, rule.current_dry_run_only
        if denied == rule.calls:
            lines.append("new: the current declarations grant none of these calls")
        elif denied:
            lines.append(f"partly new: the current declarations deny {denied} of these calls")
        elif dry:
            lines.append(f"new for enforcement: {dry} of these calls are allowed today only by a dry-run document")
        else:
            lines.append("already granted by the current declarations")
    return lines


def render_document(document: SuggestedDocument, compared: bool, sources: str) -> str:
    rules = document.rules
    calls = sum(r.calls for r in rules)
    first, last = min(r.first for r in rules), max(r.last for r in rules)
    callers = {c for r in rules for c in r.observed_callers}
    out = [
        "# Suggested by `authz-server policy suggest`: exactly the calls observed, nothing wider.",
        f"# From {sources}: {calls} legitimate calls by {len(callers)} callers, {_stamp(first)} .. {_stamp(last)}.",
        "# Review every rule, then enforce (the adoption path: authz_server/policy/README.md).",
        f"apiVersion: {GROUP_VERSION}",
        f"kind: {ALLOWED_CALLS}",
        "metadata:",
        f"  name: {document.name}",
        f"  namespace: {document.namespace}",
        "spec:",
        f"  {document.callee[0]}: {_q(document.callee[1])}",
        "  mode: enforce",
        "  rules:",
    ]
    for rule in rules:
        out.extend(f"    # {line}" for line in _rule_comment(rule, compared))
        out.append(f"    - name: {rule.name}")
        out.append("      from:")
        items = list(rule.from_entry.items())
        out.append(f"        - {items[0][0]}: {_q(items[0][1])}")
        out.extend(f"          {key}: {_q(value)}" for key, value in items[1:])
        out.append("      to:")
        for entry in rule.routes:
            out.append(f"        - methods: [{', '.join(_q(m) for m in entry.methods)}]")
            out.append("          paths:")
            for line in entry.paths:
                out.append(f"            - {_q(line.pattern)}  # {_path_comment(line, compared)}")
    return "\n".join(out) + "\n"


# --- the test file ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Case:
    name: str
    caller: str
    document: SuggestedDocument
    method: str
    path: str
    expect: str
    rule: str | None = None
    reason: str | None = None


def _allow_cases(documents: Sequence[SuggestedDocument], limit: int) -> list[_Case]:
    """Observed calls, round-robin over every rule so each gets its first case before any gets a second."""
    queues = [
        [
            _Case(
                f"{rule.name} {method} {line.pattern}",
                use.caller,
                doc,
                method,
                use.sample,
                "allow",
                rule.name,
            )
            for line, method, use in rule.uses
        ]
        for doc in documents
        for rule in doc.rules
    ]
    out: list[_Case] = []
    depth = 0
    while len(out) < limit and any(depth < len(q) for q in queues):
        for queue in queues:
            if depth < len(queue) and len(out) < limit:
                out.append(queue[depth])
        depth += 1
    return out


def _deny_candidates(documents: Sequence[SuggestedDocument]) -> list[_Case]:
    """Per rule, calls beside the observed ones: an unknown caller on its first route (a widened `from` fails it)
    and an unobserved method on its first path (a widened `methods` fails it)."""
    out: dict[tuple[str, str, str, str], _Case] = {}
    for doc in documents:
        stranger = f"spiffe://{doc.trust_domain}/{UNOBSERVED_CALLER}"
        for rule in doc.rules:
            line, method, use = rule.uses[0]
            name = f"{rule.name} {method} {line.pattern} from an unobserved caller"
            key = (doc.id, stranger, method, use.sample)
            out.setdefault(key, _Case(name, stranger, doc, method, use.sample, "deny", None, "no-matching-rule"))
            unseen = next((m for m in _PROBE_METHODS if m not in line.methods), None)
            if unseen is not None:
                name = f"{rule.name} {unseen} {line.pattern} was never observed"
                key = (doc.id, use.caller, unseen, use.sample)
                out.setdefault(key, _Case(name, use.caller, doc, unseen, use.sample, "deny", None, "no-matching-rule"))
    return list(out.values())


def _verdict(compiled: Compiled, case: _Case, now: float) -> tuple[str, str | None]:
    policies = compiled.policy_set
    assert policies is not None
    is_key = case.document.callee[0] == WORKLOAD_KEY
    call, identity = synthetic_call(
        case.caller,
        "" if is_key else case.document.callee[1],
        case.method,
        case.path,
        None,
        case.document.callee[1] if is_key else None,
        policies.workload_key,
        now,
    )
    outcome = policies.evaluate(call, identity, now)
    return ("allow" if outcome.granted else "deny"), outcome.rule


def _render_tests(document: SuggestedDocument, cases: Sequence[_Case]) -> str:
    callee_key = "workloadKey" if document.callee[0] == WORKLOAD_KEY else "to"
    out = [
        "# Cases from the observed calls, written by `authz-server policy suggest` beside the declaration they test",
        "# (only this file, wherever it is moved): `policy test` passes on it, and fails if a rule is narrowed below",
        "# what was observed or widened to an unobserved method or to any caller.",
        f"apiVersion: {GROUP_VERSION}",
        f"kind: {ALLOWED_CALLS_TEST}",
        "metadata:",
        f"  name: {document.name[:57]}-tests",
        f"  namespace: {document.namespace}",
        "spec:",
        f"  policies: [{_q(document.file_name)}]",
        "  cases:",
    ]
    for case in cases:
        out.append(f"    - name: {_q(case.name)}")
        out.append(f"      from: {_q(case.caller)}")
        out.append(f"      {callee_key}: {_q(document.callee[1])}")
        out.append(f"      method: {case.method}")
        out.append(f"      path: {_q(case.path)}")
        out.append(f"      expect: {case.expect}")
        if case.reason:
            out.append(f"      reason: {case.reason}")
        if case.rule:
            out.append(f"      rule: {case.rule}")
    return "\n".join(out) + "\n"


class SuggestionError(ValueError):
    """The suggestion failed its own checks (a defect here, never the user's input): nothing is written."""


def suggest(
    observations: Observations,
    *,
    group_namespace: bool = False,
    taken: Iterable[str] = (),
    sources: str = "decision logs",
    max_cases: int = DEFAULT_MAX_CASES,
    now: float | None = None,
) -> Suggestion:
    """Documents and their test file, validated with the server's own loader and decided with its own evaluate."""
    now = time.time() if now is None else now
    documents = build_documents(observations, group_namespace=group_namespace, taken=taken)
    compared = observations.current_version is not None
    suggestion = Suggestion(observations, documents, compared)
    if not documents:
        return suggestion
    for doc in documents:
        suggestion.files[doc.file_name] = render_document(doc, compared, sources)
    compiled = compile_snapshot(
        FileSnapshot(tuple((name, text.encode()) for name, text in suggestion.files.items()), ()), now
    )
    if compiled.policy_set is None:
        raise SuggestionError("; ".join(str(p) for p in compiled.errors) or "the suggestion does not compile")
    suggestion.warnings = [str(p) for p in compiled.problems]
    cases = []
    for case in _allow_cases(documents, max_cases):
        if _verdict(compiled, case, now) != ("allow", case.rule):
            raise SuggestionError(f"the suggestion does not allow an observed call: {case.name}")
        cases.append(case)
    # Only denials the suggestion really gives: a candidate another rule happens to grant is dropped, not asserted.
    cases.extend(c for c in _deny_candidates(documents) if _verdict(compiled, c, now)[0] == "deny")
    suggestion.cases = len(cases)
    suggestion.routes_tested = sum(1 for c in cases if c.expect == "allow")
    # One self-contained file per callee: enforcing callee by callee moves one file, its tests with it.
    for doc in documents:
        mine = [c for c in cases if c.document is doc]
        if mine:
            suggestion.files[doc.file_name] += "---\n" + _render_tests(doc, mine)
    return suggestion


# --- the report ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WouldDeny:
    callee: str
    caller: str
    method: str
    pattern: str
    calls: int
    reason: str


def would_deny(observations: Observations) -> list[WouldDeny]:
    """Observed legitimate calls the current declarations deny when enforced, by route, most calls first."""
    found = [
        WouldDeny(callee[1], caller, method, pattern, stats.current_denied, stats.current_reason)
        for (callee, caller), edge in observations.edges.items()
        for (pattern, method), stats in edge.routes.items()
        if stats.current_denied
    ]
    return sorted(found, key=lambda w: (-w.calls, w.callee, w.caller, w.pattern, w.method))


def unused_rules(observations: Observations, days: float) -> list[RuleUse]:
    """Allow rules of the current declarations that decided no logged call in the last `days` of the logs."""
    if observations.last is None:
        return sorted(observations.rule_use.values(), key=lambda u: (u.document, u.rule))
    cutoff = observations.last - days * 86400
    stale = [u for u in observations.rule_use.values() if u.last is None or u.last < cutoff]
    return sorted(stale, key=lambda u: (u.document, u.rule))


def coverage_days(observations: Observations) -> float:
    if observations.first is None or observations.last is None:
        return 0.0
    return (observations.last - observations.first) / 86400


def report_json(suggestion: Suggestion, read: Mapping[str, Any], unused_days: float) -> dict[str, Any]:
    seen = suggestion.observations
    out: dict[str, Any] = {
        "lines": dict(read),
        "observed": {
            "legitimate_calls": seen.legitimate,
            "edges": len(seen.edges),
            "routes": sum(len(e.routes) for e in seen.edges.values()),
            "first": _stamp(seen.first) if seen.first is not None else None,
            "last": _stamp(seen.last) if seen.last is not None else None,
            "memory_bytes": seen.bytes_used,
        },
        "excluded": dict(sorted(seen.excluded.items())),
        "documents": [
            {
                "file": d.file_name,
                "document": d.id,
                "callee": d.callee[1],
                "rules": [
                    {
                        "name": r.name,
                        "from": r.from_entry,
                        "calls": r.calls,
                        "first": _stamp(r.first),
                        "last": _stamp(r.last),
                        "incomplete": r.refused,
                        "new": bool(suggestion.compared and (r.current_denied or r.current_dry_run_only)),
                    }
                    for r in d.rules
                ],
            }
            for d in suggestion.documents
        ],
        "test_cases": suggestion.cases,
        "warnings": suggestion.warnings,
    }
    if suggestion.compared:
        out["current"] = {
            "version": seen.current_version,
            "would_deny": [vars(w) for w in would_deny(seen)],
            "unused_days": unused_days,
            "logs_cover_days": round(coverage_days(seen), 3),
            "unused_rules": [
                {
                    "document": u.document,
                    "rule": u.rule,
                    "file": u.file,
                    "line": u.line,
                    "last": _stamp(u.last) if u.last is not None else None,
                    "calls": u.calls,
                }
                for u in unused_rules(seen, unused_days)
            ],
        }
    return out


def report_text(suggestion: Suggestion, read: Mapping[str, Any], unused_days: float, limit: int = 50) -> str:
    seen = suggestion.observations
    out = [
        f"read {read['decisions']} decisions; skipped {read['skipped']} lines (garbled, truncated or not decisions)",
    ]
    out.extend(f"  {p}" for p in read.get("problems", []))
    span = f", {_stamp(seen.first)} .. {_stamp(seen.last)}" if seen.first is not None and seen.last is not None else ""
    routes = sum(len(e.routes) for e in seen.edges.values())
    out.append(
        f"observed {seen.legitimate} legitimate calls: {len(seen.edges)} caller->callee edges, {routes} routes{span}"
    )
    if seen.excluded:
        out.append("not counted: " + ", ".join(f"{k} {v}" for k, v in sorted(seen.excluded.items())))
    rules = sum(len(d.rules) for d in suggestion.documents)
    uses = sum(len(r.uses) for d in suggestion.documents for r in d.rules)
    out.append(
        f"suggested {_count(len(suggestion.documents), 'document')}, {_count(rules, 'rule')}; "
        f"{_count(suggestion.cases, 'test case')} "
        f"(covering {suggestion.routes_tested} of {uses} granted method/route pairs)"
    )
    out.extend(f"  warning: {w}" for w in suggestion.warnings)
    for doc in suggestion.documents:
        out.append(f"  {doc.file_name}: {doc.callee[1]}")
        for rule in doc.rules:
            flag = " (INCOMPLETE)" if rule.refused else ""
            if suggestion.compared and (rule.current_denied or rule.current_dry_run_only):
                flag += " (new)"
            out.append(f"    {rule.name}: {rule.calls} calls{flag}")
    if suggestion.compared:
        denied = would_deny(seen)
        total = sum(w.calls for w in denied)
        out.append(f"against the current declarations (version {seen.current_version}):")
        out.append(f"  they would deny {total} observed calls on {len(denied)} routes when enforced")
        for w in denied[:limit]:
            out.append(f"    {w.caller} -> {w.callee}  {w.method} {w.pattern}  {w.calls} calls ({w.reason})")
        if len(denied) > limit:
            out.append(f"    ... {len(denied) - limit} more (--json lists all)")
        stale = unused_rules(seen, unused_days)
        days = coverage_days(seen)
        note = "" if days >= unused_days else f" (the logs cover only {days:.1f} days: not conclusive yet)"
        out.append(
            f"  allow rules that decided no call in the last {unused_days:g} days of the logs, candidates for "
            f"removal: {len(stale)}{note}"
        )
        for use in stale[:limit]:
            last = f"last matched {_stamp(use.last)}" if use.last is not None else "never matched in these logs"
            out.append(f"    {use.document} rule {use.rule} ({use.file}:{use.line}): {last}")
    return "\n".join(out) + "\n"

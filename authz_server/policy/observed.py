"""What the mesh was seen doing, from decision logs: the evidence `policy suggest` turns into grants.

Only *legitimate* calls count: a verified caller, and a call that policy let
through or would only have denied because nothing was declared yet:

- `allow` / `allowed` (any mode): yes, granted and risk did not refuse it.
- `dry-run-deny` / `no-matching-rule`: yes, the adoption path: a dry-run
  declaration let the call through and nothing granted it yet.
- `dry-run-deny` / `denied-by-rule`: no; a deny rule names the call, so the
  owner means to refuse it (and a deny rule beats any allow).
- `deny` / `denied-by-rule`, `quarantined`, `invalid-path`: no, refused on purpose.
- `deny` / `no-matching-rule`, `unknown-workload`, `no-policy`: no; it never
  went through, and nothing shows it is wanted rather than probing.
- `deny` / `risk`, `risk-timeout`: no, refused by the risk stage.
- an identity failure (`source` null): no caller to grant anything to.
- allowed by a rule with `expires` (known from `--policies`): no; a time-boxed
  grant must not become a standing one.

A call the risk stage objected to only in shadow (`risk.action: deny`,
`shadow: true`) still went through and counts, but is counted per route so
the reviewer sees it.

Memory is bounded by what is distinct, not by lines: each caller -> callee edge
and each (route template, method) under it is one entry, charged its bytes
against a budget; past the budget, or past `max_routes_per_edge` under one
edge (a caller walking names the templating cannot fold), further new entries
are refused, counted, and the edge is marked incomplete.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from spiffe import SpiffeId

from authz_server.ops.reconstruct import logged_call, logged_identity
from authz_server.policy.matching import PathPattern, PatternError
from authz_server.policy.outcome import Mode
from authz_server.policy.paths import normalize_path
from authz_server.policy.policyset import PolicySet
from authz_server.routes import ID, MORE, fold

WORKLOAD = "workload"
WORKLOAD_KEY = "workloadKey"

_METHOD = re.compile(r"[A-Z]{1,32}")
_ENTRY_OVERHEAD = 400
"""Bytes charged per stored entry beyond its strings' lengths. Measured with tracemalloc: 50,000 routes of
13-character paths under 100 edges held 12.7 MB (254 B each, strings included), and were charged 21.5 MB."""
_CACHED_PATH_LIMIT = 256
"""Only paths up to this length are memoised: 8,192 entries then hold at most ~4 MiB."""
MAX_SAMPLE_PATH = 2048
"""A longer observed path is not kept as the route's sample; the test case calls the pattern with ids filled in."""

_YEAR_5000 = 95_617_584_000
DEFAULT_MAX_BYTES = 256 << 20
DEFAULT_MAX_ROUTES_PER_EDGE = 1000


class Excluded:
    """Why a logged call does not count as evidence (the report's keys)."""

    IDENTITY = "identity-failed"
    DENY_RULE = "denied-by-rule"
    QUARANTINED = "quarantined"
    INVALID_PATH = "invalid-path"
    DENIED = "denied-not-granted"
    RISK = "denied-by-risk"
    GRANT = "time-boxed-grant"
    MALFORMED = "malformed-fields"
    NO_CALLEE = "no-callee"
    BAD_ID = "bad-spiffe-id"
    METHOD = "method-not-grantable"
    PATH = "path-not-grantable"
    BUDGET = "over-memory-budget"
    EDGE_CAP = "too-many-routes-for-one-caller"


def exclusion(record: Mapping[str, Any]) -> str | None:
    """None when the logged call is evidence of legitimate traffic; else the Excluded reason."""
    source = record.get("source")
    if not isinstance(source, Mapping) or not isinstance(source.get("spiffe_id"), str) or not source["spiffe_id"]:
        return Excluded.IDENTITY
    verdict, reason = record.get("verdict"), record.get("reason")
    if verdict == "allow" and reason == "allowed":
        return None
    if verdict == "dry-run-deny" and reason == "no-matching-rule":
        return None
    match reason:
        case "denied-by-rule":
            return Excluded.DENY_RULE
        case "quarantined":
            return Excluded.QUARANTINED
        case "invalid-path":
            return Excluded.INVALID_PATH
        case "risk" | "risk-timeout":
            return Excluded.RISK
    return Excluded.DENIED


def grant_pattern(path: str) -> str | None:
    """The path pattern granting `path` and its siblings by id: `/v1/orders/ch_1002` -> `/v1/orders/*`.

    None when no pattern can grant exactly this route: a path that is not normalised, one deeper than the
    templating keeps (`{more}`: `**` would grant far more), or a segment holding a literal `*` (a pattern
    would read it as a wildcard)."""
    if len(path) <= _CACHED_PATH_LIMIT:
        return _grant_pattern_cached(path)
    return _grant_pattern(path)


@lru_cache(maxsize=8192)
def _grant_pattern_cached(path: str) -> str | None:
    return _grant_pattern(path)


def _grant_pattern(path: str) -> str | None:
    if "?" in path or "#" in path or normalize_path(path) != path:
        return None  # the log never holds a query or fragment in `path`; a line that does is not the server's
    template, _ids = fold(path)
    template_segments = template.split("/")
    if template_segments[-1] == MORE:
        return None
    path_segments = path.split("/")
    out = []
    for written, seen in zip(template_segments, path_segments, strict=True):
        if written == ID and seen != ID:
            out.append("*")
        elif "*" in seen or "{" in seen:
            return None
        else:
            out.append(seen)
    pattern = "/".join(out)
    try:
        PathPattern.parse(pattern)
    except PatternError:
        return None
    return pattern


@dataclass(slots=True)
class RouteStats:
    """One (route pattern, method) a caller used on a callee."""

    calls: int
    first: float
    last: float
    sample: str
    """One path actually called (the test cases use it)."""
    risk_objected: int = 0
    """Calls the risk stage would have refused had it not been in shadow."""
    current_denied: int = 0
    """Calls the current declarations (`--policies`) deny when enforced."""
    current_reason: str = ""
    current_dry_run_only: int = 0
    """Calls the current declarations allow only through a dry-run document."""

    def add(self, ts: float) -> None:
        self.calls += 1
        self.first = min(self.first, ts)
        self.last = max(self.last, ts)


Callee = tuple[str, str]
"""(WORKLOAD, SPIFFE ID) or (WORKLOAD_KEY, key)."""


@dataclass
class Edge:
    """Everything one caller was seen doing to one callee."""

    routes: dict[tuple[str, str], RouteStats] = field(default_factory=dict)
    """(path pattern, method) -> stats."""
    refused: int = 0
    """Calls to further routes not kept (memory budget or the per-edge cap): the edge is incomplete."""


@dataclass
class RuleUse:
    document: str
    rule: str
    file: str
    line: int
    callee: str
    last: float | None = None
    calls: int = 0


@dataclass
class Observations:
    edges: dict[tuple[Callee, str], Edge] = field(default_factory=dict)
    """(callee, caller SPIFFE ID) -> edge."""
    excluded: collections.Counter[str] = field(default_factory=collections.Counter)
    legitimate: int = 0
    first: float | None = None
    last: float | None = None
    bytes_used: int = 0
    rule_use: dict[tuple[str, str], RuleUse] = field(default_factory=dict)
    """Allow rules of the current declarations: when each last decided a logged call (evaluated today)."""
    current_version: str | None = None
    examples: dict[str, str] = field(default_factory=dict)
    """One example per exclusion reason, for the report."""


def _well_formed(record: Mapping[str, Any], request: Mapping[str, Any]) -> bool:
    """The fields read here have the types the server writes (the same with or without `--policies`)."""
    return (
        isinstance(request.get("method"), str)
        and isinstance(request.get("path"), str)
        and all(isinstance(request.get(k) or {}, Mapping) for k in ("headers", "context_extensions"))
        and all(isinstance(record.get(k) or {}, Mapping) for k in ("source", "peer", "policy", "risk"))
    )


class Observer:
    """Folds decision log records into Observations, one record at a time."""

    def __init__(
        self,
        current: PolicySet | None = None,
        *,
        now: float,
        workload_key: str = "workload",
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_routes_per_edge: int = DEFAULT_MAX_ROUTES_PER_EDGE,
    ) -> None:
        self.current = current
        self.now = now
        self.workload_key = current.workload_key if current is not None else workload_key
        self.max_bytes = max_bytes
        self.max_routes_per_edge = max_routes_per_edge
        self.seen = Observations(current_version=current.version if current is not None else None)
        self._time_boxed: frozenset[tuple[str, str]] = frozenset()
        if current is not None:
            rules = [r for d in current.declarations for r in d.rules]
            self._time_boxed = frozenset((r.document, r.name) for r in rules if r.expires_at is not None)
            for declaration in current.declarations:
                for rule in declaration.rules:
                    if not rule.deny:
                        key = (rule.document, rule.name)
                        self.seen.rule_use[key] = RuleUse(
                            rule.document, rule.name, rule.file, rule.line, declaration.callee
                        )

    def observe_all(self, records: Iterable[Mapping[str, Any]]) -> Observations:
        for record in records:
            self.observe(record)
        return self.seen

    def _exclude(self, reason: str, record: Mapping[str, Any]) -> None:
        self.seen.excluded[reason] += 1
        if reason not in self.seen.examples:
            self.seen.examples[reason] = str(record.get("decision_id", ""))[:64]

    def observe(self, record: Mapping[str, Any]) -> None:
        ts = record.get("ts")
        request = record.get("request")
        # Python's json reads NaN and Infinity; neither is a time (and neither formats as one).
        if not isinstance(ts, int | float) or isinstance(ts, bool) or not 0 <= ts < _YEAR_5000:
            self._exclude(Excluded.MALFORMED, record)
            return
        if not isinstance(request, Mapping) or not _well_formed(record, request):
            self._exclude(Excluded.MALFORMED, record)
            return
        method, path = request["method"], request["path"]
        ts = float(ts)
        seen = self.seen
        seen.first = ts if seen.first is None else min(seen.first, ts)
        seen.last = ts if seen.last is None else max(seen.last, ts)
        reason = exclusion(record)
        outcome = None
        if reason != Excluded.IDENTITY and self.current is not None:
            try:
                outcome = self.current.evaluate(logged_call(record), logged_identity(record), self.now)
            except (ValueError, TypeError, AttributeError):
                self._exclude(Excluded.MALFORMED, record)
                return
            if outcome.granted and outcome.rule is not None:
                use = seen.rule_use.get((outcome.document or "", outcome.rule))
                if use is not None:
                    use.calls += 1
                    use.last = ts if use.last is None else max(use.last, ts)
        if reason is None and self._time_boxed:
            policy = record.get("policy")
            if isinstance(policy, Mapping) and (policy.get("document"), policy.get("rule")) in self._time_boxed:
                reason = Excluded.GRANT
        if reason is not None:
            self._exclude(reason, record)
            return
        caller = str(record["source"]["spiffe_id"])
        callee = self._callee(record, request)
        if callee is None:
            self._exclude(Excluded.NO_CALLEE, record)
            return
        edge = seen.edges.get((callee, caller))
        if edge is None:
            if not (self._valid(caller) and (callee[0] == WORKLOAD_KEY or self._valid(callee[1]))):
                self._exclude(Excluded.BAD_ID, record)
                return
            cost = _ENTRY_OVERHEAD + len(caller) + len(callee[1])
            if seen.bytes_used + cost > self.max_bytes:
                self._exclude(Excluded.BUDGET, record)
                return
            seen.bytes_used += cost
            edge = seen.edges[(callee, caller)] = Edge()
        stats = self._route(edge, method, path, ts, record)
        if stats is None:
            return
        seen.legitimate += 1
        risk = record.get("risk")
        if isinstance(risk, Mapping) and risk.get("action") == "deny":
            stats.risk_objected += 1
        if outcome is not None:
            if not outcome.granted:
                stats.current_denied += 1
                stats.current_reason = stats.current_reason or outcome.reason.value
            elif outcome.mode is Mode.DRY_RUN:
                stats.current_dry_run_only += 1

    def _route(self, edge: Edge, method: str, path: str, ts: float, record: Mapping[str, Any]) -> RouteStats | None:
        # Fast path: a route already kept (the overwhelming majority of lines).
        pattern = grant_pattern(path)
        if pattern is None:
            self._exclude(Excluded.PATH, record)
            return None
        stats = edge.routes.get((pattern, method))
        if stats is not None:
            stats.add(ts)
            return stats
        if not _METHOD.fullmatch(method):
            self._exclude(Excluded.METHOD, record)
            return None
        sample = path if len(path) <= MAX_SAMPLE_PATH else "/".join("1" if s == "*" else s for s in pattern.split("/"))
        cost = _ENTRY_OVERHEAD + len(pattern) + len(sample) + len(method)
        if len(edge.routes) >= self.max_routes_per_edge:
            edge.refused += 1
            self._exclude(Excluded.EDGE_CAP, record)
            return None
        if self.seen.bytes_used + cost > self.max_bytes:
            edge.refused += 1
            self._exclude(Excluded.BUDGET, record)
            return None
        self.seen.bytes_used += cost
        stats = edge.routes[(pattern, method)] = RouteStats(1, ts, ts, sample)
        return stats

    def _callee(self, record: Mapping[str, Any], request: Mapping[str, Any]) -> Callee | None:
        destination = record.get("destination")
        if isinstance(destination, str) and destination.startswith("spiffe://"):
            return (WORKLOAD, destination)
        extensions = request.get("context_extensions")
        if isinstance(extensions, Mapping):
            key = extensions.get(self.workload_key)
            if isinstance(key, str) and key and len(key) <= 253:
                return (WORKLOAD_KEY, key)
        return None

    @staticmethod
    def _valid(spiffe_id: str) -> bool:
        """Checked once per new edge, so a malformed ID costs a parse per line but never memory."""
        try:
            return str(SpiffeId(spiffe_id)) == spiffe_id
        except Exception:  # the library raises several types for malformed IDs
            return False

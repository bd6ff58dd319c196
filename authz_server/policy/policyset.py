"""The compiled, immutable policy set and the decision it makes for one call.

Precedence, first match wins:

1. Quarantine: a quarantined caller is denied everywhere (always enforced).
2. The callee: found by `destination.principal`, else by the
   `context_extensions` key; none declared: `unknown-workload` (or `no-policy`
   when the set is empty).
3. The path: one that cannot be normalised is `invalid-path` (always enforced).
4. Deny rules of the callee that match: `denied-by-rule`.
5. Allow rules of the callee that match: `allowed`; the first one (exact-ID
   callers before prefixes, longer prefixes before shorter, then by document
   name and rule order) supplies maxRisk and onRiskTimeout.
6. Otherwise `no-matching-rule`.

Dry-run documents are evaluated as if enforced beside the callee's enforced
ones. Where that turns an allow into a deny, the outcome stays allowed (what
the enforced documents concluded) and carries the dry-run denial as a mark
(`PolicyOutcome.dry_run_denied`); where the callee only has dry-run documents,
every would-be denial is such a mark. A dry-run document never lets through a
call the enforced documents deny, and never loosens what they enforce: the
enforced grant's risk terms still apply.

The index is callee -> (exact caller -> rules, caller prefix -> rules), so a
decision costs a few dict lookups whatever the number of workloads.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from authz_server.call import Call
from authz_server.identity.result import Identity
from authz_server.policy.matching import caller_prefixes
from authz_server.policy.model import Declaration, QuarantineEntry, QuarantineList, Rule
from authz_server.policy.outcome import Mode, PolicyOutcome, PolicyReason, RiskTimeoutAction
from authz_server.policy.paths import normalize_path
from authz_server.policy.problems import Problem

_EMPTY: tuple[Rule, ...] = ()


def _group(rules: Iterable[Rule]) -> tuple[dict[str, tuple[Rule, ...]], dict[str, tuple[Rule, ...]]]:
    exact: dict[str, list[Rule]] = defaultdict(list)
    prefixed: dict[str, list[Rule]] = defaultdict(list)
    for rule in rules:
        for caller in rule.callers:
            bucket = prefixed if caller.prefix else exact
            if rule not in bucket[caller.value]:
                bucket[caller.value].append(rule)
    return {k: tuple(v) for k, v in exact.items()}, {k: tuple(v) for k, v in prefixed.items()}


class CalleeRules:
    """Every rule that protects one workload, indexed by caller."""

    __slots__ = ("allow_exact", "allow_prefix", "declarations", "deny_exact", "deny_prefix", "enforced", "primary")

    def __init__(self, declarations: list[Declaration]) -> None:
        declarations.sort(key=lambda d: d.id)
        self.declarations = tuple(declarations)
        rules = [rule for d in self.declarations for rule in d.rules]
        self.deny_exact, self.deny_prefix = _group(r for r in rules if r.deny)
        self.allow_exact, self.allow_prefix = _group(r for r in rules if not r.deny)
        self.enforced = any(d.mode is Mode.ENFORCE for d in self.declarations)
        enforcing = [d for d in self.declarations if d.mode is Mode.ENFORCE]
        self.primary = (enforcing or list(self.declarations))[0]
        """The declaration a default denial is attributed to."""

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(rule for d in self.declarations for rule in d.rules)

    def candidates(self, caller: str, deny: bool, prefixes: list[str] | None = None) -> list[Rule]:
        """Rules naming this caller, most specific caller match first."""
        exact, prefixed = (self.deny_exact, self.deny_prefix) if deny else (self.allow_exact, self.allow_prefix)
        found = list(exact.get(caller, _EMPTY))
        if prefixed:
            for prefix in caller_prefixes(caller) if prefixes is None else prefixes:
                rules = prefixed.get(prefix)
                if rules is not None:
                    found.extend(rules)
        return found


@dataclass(frozen=True, slots=True)
class SetSummary:
    documents: int
    rules: int
    quarantined: int


class PolicySet:
    """A compiled, immutable set of declarations: the policy stage."""

    def __init__(
        self,
        declarations: Iterable[Declaration],
        quarantines: Iterable[QuarantineList],
        version: str,
        *,
        workload_key: str = "workload",
        warnings: Iterable[Problem] = (),
    ) -> None:
        self._version = version
        self.workload_key = workload_key
        self.warnings = tuple(warnings)
        self.declarations = tuple(sorted(declarations, key=lambda d: d.id))
        self.quarantines = tuple(sorted(quarantines, key=lambda q: q.id))
        by_workload: dict[str, list[Declaration]] = defaultdict(list)
        by_key: dict[str, list[Declaration]] = defaultdict(list)
        for declaration in self.declarations:
            if declaration.workload is not None:
                by_workload[declaration.workload].append(declaration)
            elif declaration.workload_key is not None:
                by_key[declaration.workload_key].append(declaration)
        self._by_workload = {k: CalleeRules(v) for k, v in by_workload.items()}
        self._by_key = {k: CalleeRules(v) for k, v in by_key.items()}
        q_exact: dict[str, list[QuarantineEntry]] = defaultdict(list)
        q_prefix: dict[str, list[QuarantineEntry]] = defaultdict(list)
        for quarantine in self.quarantines:
            for entry in quarantine.entries:
                (q_prefix if entry.caller.prefix else q_exact)[entry.caller.value].append(entry)
        self._q_exact = {k: tuple(v) for k, v in q_exact.items()}
        self._q_prefix = {k: tuple(v) for k, v in q_prefix.items()}

    @property
    def version(self) -> str:
        return self._version

    @property
    def summary(self) -> SetSummary:
        return SetSummary(
            documents=len(self.declarations) + len(self.quarantines),
            rules=sum(len(d.rules) for d in self.declarations),
            quarantined=sum(len(q.entries) for q in self.quarantines),
        )

    def callee(self, destination_principal: str, context_extensions: Mapping[str, str]) -> CalleeRules | None:
        found = self._by_workload.get(destination_principal) if destination_principal else None
        if found is None and self._by_key:
            key = context_extensions.get(self.workload_key)
            if key:
                found = self._by_key.get(key)
        return found

    def quarantine_entry(self, caller: str, now: float, prefixes: list[str] | None = None) -> QuarantineEntry | None:
        for entry in self._q_exact.get(caller, ()):
            if now < entry.expires_at:
                return entry
        if self._q_prefix:
            for prefix in caller_prefixes(caller) if prefixes is None else prefixes:
                for entry in self._q_prefix.get(prefix, ()):
                    if now < entry.expires_at:
                        return entry
        return None

    def evaluate(self, call: Call, identity: Identity, now: float) -> PolicyOutcome:
        caller = identity.spiffe_id
        version = self._version
        # Computed once: the quarantine and both rule lookups use the caller's prefixes.
        prefixes = caller_prefixes(caller)
        if self._q_exact or self._q_prefix:
            entry = self.quarantine_entry(caller, now, prefixes)
            if entry is not None:
                reason = PolicyReason.QUARANTINED
                return PolicyOutcome(False, reason, version, entry.document, str(entry.caller), detail=entry.reason)
        callee = self.callee(call.destination_principal, call.context_extensions)
        if callee is None:
            reason = PolicyReason.UNKNOWN_WORKLOAD if self.declarations else PolicyReason.NO_POLICY
            return PolicyOutcome(False, reason, version)
        path = normalize_path(call.path)
        if path is None:
            return PolicyOutcome(False, PolicyReason.INVALID_PATH, version, callee.primary.id)
        method, headers = call.method, call.headers

        dry_deny: Rule | None = None
        for rule in callee.candidates(caller, True, prefixes):
            if (rule.expires_at is None or now < rule.expires_at) and rule.route_matches(method, path, headers):
                if rule.mode is Mode.ENFORCE:
                    return PolicyOutcome(
                        False, PolicyReason.DENIED_BY_RULE, version, rule.document, rule.name, Mode.ENFORCE, path
                    )
                if dry_deny is None:
                    dry_deny = rule

        allow: Rule | None = None
        for rule in callee.candidates(caller, False, prefixes):
            if (callee.enforced and rule.mode is not Mode.ENFORCE) or (
                rule.expires_at is not None and now >= rule.expires_at
            ):
                continue
            if rule.route_matches(method, path, headers):
                allow = rule
                break

        if dry_deny is not None and (allow is not None or not callee.enforced):
            # What the enforced documents concluded (through) stays `allowed`; the dry-run denial is only a mark.
            base = allow
            return PolicyOutcome(
                True,
                PolicyReason.DENIED_BY_RULE,
                version,
                dry_deny.document,
                dry_deny.name,
                Mode.DRY_RUN,
                path,
                base.max_risk if base else None,
                base.on_risk_timeout if base else RiskTimeoutAction.ALLOW,
                base.risk_shadow if base else dry_deny.risk_shadow,
            )
        if allow is None:
            # A callee with only dry-run documents has nothing enforced that refuses the call: through, marked.
            mode = Mode.ENFORCE if callee.enforced else Mode.DRY_RUN
            reason = PolicyReason.NO_MATCHING_RULE
            return PolicyOutcome(not callee.enforced, reason, version, callee.primary.id, None, mode, path)
        return PolicyOutcome(
            True,
            PolicyReason.ALLOWED,
            version,
            allow.document,
            allow.name,
            allow.mode,
            path,
            allow.max_risk,
            allow.on_risk_timeout,
            allow.risk_shadow,
        )

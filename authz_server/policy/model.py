"""Declarations after validation: immutable values the index is built from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from authz_server.policy.matching import CallerMatcher, RouteMatcher
from authz_server.policy.outcome import Mode, RiskTimeoutAction


@dataclass(frozen=True, slots=True)
class Rule:
    document: str
    """`namespace/name` of the declaration holding the rule."""
    name: str
    deny: bool
    mode: Mode
    callers: tuple[CallerMatcher, ...]
    routes: tuple[RouteMatcher, ...]
    max_risk: float | None
    on_risk_timeout: RiskTimeoutAction
    risk_shadow: bool
    expires_at: float | None
    file: str
    line: int

    @property
    def action(self) -> str:
        return "deny" if self.deny else "allow"

    def live(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at

    def route_matches(self, method: str, path: str, headers: Mapping[str, str]) -> bool:
        # A plain loop: any() over a generator costs more on this path.
        for route in self.routes:  # noqa: SIM110
            if route.matches(method, path, headers):
                return True
        return False

    def covers(self, other: Rule) -> bool:
        """Every call `other` matches, this matches too, for at least as long."""
        if self.expires_at is not None and (other.expires_at is None or other.expires_at > self.expires_at):
            return False
        callers_covered = all(any(a.covers(b) for a in self.callers) for b in other.callers)
        return callers_covered and all(any(a.covers(b) for a in self.routes) for b in other.routes)


@dataclass(frozen=True, slots=True)
class Declaration:
    """One AllowedCalls document."""

    id: str
    """`namespace/name`."""
    workload: str | None
    workload_key: str | None
    mode: Mode
    risk_shadow: bool
    rules: tuple[Rule, ...]
    file: str
    line: int
    digest: str
    """Hash of the document's content (reload diffs)."""

    @property
    def callee(self) -> str:
        return self.workload if self.workload is not None else f"key:{self.workload_key}"


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    document: str
    caller: CallerMatcher
    reason: str
    expires_at: float
    file: str
    line: int


@dataclass(frozen=True, slots=True)
class QuarantineList:
    """One Quarantine document."""

    id: str
    entries: tuple[QuarantineEntry, ...]
    file: str
    line: int
    digest: str

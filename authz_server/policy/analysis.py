"""Rules that can never decide anything: shadowed by an earlier rule, or unreachable behind a deny rule.

Neither makes a set unsafe (deny rules win whatever the order), so both are
warnings: the set loads, and `policy validate` reports them so the author can
remove the dead rule or fix the one that hides it.
"""

from __future__ import annotations

from collections.abc import Iterable

from authz_server.policy.model import Rule
from authz_server.policy.outcome import Mode
from authz_server.policy.problems import Problem, Severity


def _at(rule: Rule) -> str:
    return f"rule {rule.name!r} of {rule.document} ({rule.file}:{rule.line})"


def dead_rules(rules: Iterable[Rule]) -> list[Problem]:
    """Warnings for the rules of one callee that no call can reach.

    Independent of the time (a rule with an expiry only covers rules that expire no later), so the result
    can be kept across reloads for callees whose declarations did not change.
    """
    live = list(rules)
    problems: list[Problem] = []
    for index, rule in enumerate(live):
        if not rule.deny:
            blocker = next(
                (d for d in live if d.deny and d.mode is Mode.ENFORCE and d is not rule and d.covers(rule)), None
            )
            if blocker is not None:
                message = f"rule {rule.name!r} can never allow anything: {_at(blocker)} denies every call it matches"
                problems.append(Problem(rule.file, rule.line, message, Severity.WARNING))
                continue
        earlier = next(
            (
                other
                for other in live[:index]
                if other.deny == rule.deny and other.mode is rule.mode and other.covers(rule)
            ),
            None,
        )
        if earlier is not None:
            message = f"rule {rule.name!r} is shadowed: {_at(earlier)} already matches every call it matches"
            problems.append(Problem(rule.file, rule.line, message, Severity.WARNING))
    return problems

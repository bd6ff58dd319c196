"""Rules that can never decide anything: shadowed by a rule tried before them, or unreachable behind a deny rule.

Neither makes a set unsafe (deny rules win whatever the order), so both are
warnings: the set loads, and `policy validate` reports them so the author can
remove the dead rule or fix the one that hides it.

"Tried before" is the evaluation's own order, `CalleeRules.candidates`: for each
caller, rules naming it exactly come first, then longer prefixes before shorter,
then document and rule order. A rule is only called shadowed when, for every
caller it names, a rule covering it is tried first and sets the same risk terms,
so removing it, as the warning suggests, changes no verdict and no ceiling.
"""

from __future__ import annotations

from collections.abc import Sequence

from authz_server.policy.matching import CallerMatcher
from authz_server.policy.model import Declaration, Rule
from authz_server.policy.outcome import Mode
from authz_server.policy.policyset import CalleeRules
from authz_server.policy.problems import Problem, Severity


def _at(rule: Rule) -> str:
    return f"rule {rule.name!r} of {rule.document} ({rule.file}:{rule.line})"


def _representative(caller: CallerMatcher) -> str:
    """A caller this matcher matches and no more specific matcher can name: the worst case for a covering rule."""
    return caller.value + "~" if caller.prefix else caller.value


def _risk_terms(rule: Rule) -> tuple[object, ...]:
    return (rule.max_risk, rule.on_risk_timeout, rule.risk_shadow)


def _tried_before(callee: CalleeRules, first: Rule, rule: Rule) -> bool:
    """`first` comes before `rule` in the evaluation order for every caller `rule` names."""
    for caller in rule.callers:
        order = callee.candidates(_representative(caller), rule.deny)
        if first not in order or order.index(first) > order.index(rule):
            return False
    return True


def dead_rules(declarations: Sequence[Declaration]) -> list[Problem]:
    """Warnings for the rules of one callee (all its declarations) that no call can reach.

    Independent of the time (a rule with an expiry only covers rules that expire no later), so the result
    can be kept across reloads for callees whose declarations did not change.
    """
    callee = CalleeRules(list(declarations))
    live = callee.rules
    problems: list[Problem] = []
    for rule in live:
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
                for other in live
                if other is not rule
                and other.deny == rule.deny
                and other.mode is rule.mode
                and other.covers(rule)
                and _tried_before(callee, other, rule)
            ),
            None,
        )
        if earlier is None:
            continue
        if rule.deny or _risk_terms(earlier) == _risk_terms(rule):
            message = f"rule {rule.name!r} is shadowed: {_at(earlier)} already matches every call it matches"
        else:
            message = (
                f"rule {rule.name!r} never decides: {_at(earlier)} is tried first and matches every call it matches,"
                f" so its risk terms apply, not this rule's"
            )
        problems.append(Problem(rule.file, rule.line, message, Severity.WARNING))
    return problems

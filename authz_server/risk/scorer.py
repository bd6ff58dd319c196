"""The risk stage: features -> model -> band, inside the call's budget.

The budget is enforced without threads: after the features are computed, the
model runs only when the budget left covers the model's measured p99 cost; a
run that still overruns (a GC pause, a busy core) is discarded. Either way the
outcome is SKIPPED, the decision falls back to policy alone and the rule's
onRiskTimeout, and the counter behind `status()["skipped"]` grows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress
from typing import TYPE_CHECKING

from authz_server.risk.bands import ELEVATED, band_for
from authz_server.risk.config import RiskConfig
from authz_server.risk.features import (
    FEATURE_NAMES,
    FEATURE_SCHEMA,
    BehaviourState,
    CallFacts,
    Learning,
    facts_from_call,
    learning_for,
)
from authz_server.risk.model import AnomalyModel
from authz_server.risk.outcome import RiskAction, RiskFactor, RiskOutcome, RiskStatus
from authz_server.stages import RiskCall

if TYPE_CHECKING:
    from authz_server.call import Call
    from authz_server.identity.result import Identity
    from authz_server.policy.outcome import PolicyOutcome


_clock = time.perf_counter


@dataclass(frozen=True, slots=True)
class _Waiting:
    """A call whose features are computed, waiting for the model's run."""

    policy: PolicyOutcome
    shadow: bool
    facts: CallFacts
    row: list[float]
    budget_left_s: float


class RiskCounters:
    """Process-wide counts that survive model reloads (health and metrics read them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.scored = 0
        self.skipped = 0
        self.annotated = 0
        self.denied = 0
        self.shadow = 0

    def count(self, outcome: RiskOutcome) -> None:
        with self._lock:
            if outcome.status is RiskStatus.SKIPPED:
                self.skipped += 1
                return
            self.scored += 1
            if outcome.shadow:
                self.shadow += 1
            elif outcome.action is RiskAction.DENY:
                self.denied += 1
            elif outcome.action is RiskAction.ANNOTATE:
                self.annotated += 1


SITE_FREE = frozenset({"size_unusual", "serial_multi_source"})
"""What may deny when the model carries no site baseline (the bundled model on a site it has never seen): signals
that mean the same at any traffic volume. Distinct ids, walks and rates are judged against how busy an edge
usually is, which only a site's own log says: in the lab's full-size evaluation the bundled model's deny band
held 2.1% of benign calls, every one of them driven by `ids_short` (risk README, "What it catches"). Those
scores still annotate under the default ceiling (`risk.default_max_risk`, when left at or above the calibrated
deny edge); a rule's own `maxRisk`, a lower default ceiling and a model trained on the site enforce them."""


_METHOD, _HOUR, _RATE, _IDS, _IDS_LONG, _WALK, _SOURCE, _COPY, _AGE = (
    FEATURE_NAMES.index(name)
    for name in (
        "method_unusual", "hour_unusual", "rate_burst", "ids_short", "ids_long", "id_walk", "source_new",
        "serial_multi_source", "svid_age",
    )
)  # fmt: skip
_EXPLAINED_BITS = 0.5
"""Distinct ids that rose at most this many bits more than the calls did (both log2 over the edge's own norm with
the same peak headroom) rose because of the calls: a burst of the edge's own mix on a large id space reads a new id
on nearly every call. Half a bit: `ids_short` counts over one to two minutes, `rate_burst` over one."""


def _explaining_first(top: int, surprise: list[float], row: list[float], alarm: float) -> int:
    """Which alarmed feature to name first when one movement shows in several features: the one that explains the
    others. A sequential walk explains both the calls and the distinct ids (enumeration at any pace); distinct ids
    that rose no more than the calls are the calls' (a burst). A certificate older than its identity's usually are,
    presented from a new place or as a copy, aged because it is a copy (a copy is never rotated: a stolen
    predecessor SVID is late in its life), so the address is named. Distinct ids over the last hours that rose in
    calls with a method or at an hour the edge does not use are those calls' ids (a dozen writes, or a night session,
    on a quiet edge are many ids for its slow window), so the method or the hour is named. Otherwise the most
    surprising feature stands."""
    if top == _AGE:
        for address in (_COPY, _SOURCE):
            if surprise[address] >= alarm:
                return address
        return top
    if top not in (_RATE, _IDS, _IDS_LONG):
        return top
    if surprise[_WALK] >= alarm:
        return _WALK
    if top == _IDS_LONG:
        novel = _METHOD if surprise[_METHOD] >= surprise[_HOUR] else _HOUR
        return novel if surprise[novel] >= alarm else top
    if top == _IDS and surprise[_RATE] >= alarm and row[_IDS] <= row[_RATE] + _EXPLAINED_BITS:
        return _RATE
    return top


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


class RiskScorer:
    """`RiskStage`: one model generation over the process's shared behavioural state."""

    def __init__(
        self,
        model: AnomalyModel,
        config: RiskConfig,
        state: BehaviourState,
        counters: RiskCounters | None = None,
        started_at: float | None = None,
    ) -> None:
        """`started_at`: when the warm-up shadow starts (default: the first call the shared state sees)."""
        self.model = model
        self.state = state
        self.counters = counters or RiskCounters()
        self._config = config
        self._allow_below = config.allow_below
        self._default_max_risk = config.default_max_risk
        self._top = config.top_factors
        self._warmup_s = config.warmup_s
        if started_at is not None:
            state.started_at(started_at)
        self._version = model.version
        # The calibrated deny edge of a model without a site baseline: only volume-free signals cross it (SITE_FREE).
        # An operator who lowers the default ceiling below that edge has chosen to enforce more, and gets it.
        deny_edge = float(model.card.calibration.get("deny_score", config.default_max_risk))
        self._volume_free_denials_only = not model.baseline.edges and config.default_max_risk >= deny_edge

    @property
    def version(self) -> str:
        return self._version

    def _skipped(self, features: tuple[float, ...], shadow: bool, facts: CallFacts | None = None) -> RiskOutcome:
        outcome = RiskOutcome(
            RiskStatus.SKIPPED, model_version=self._version, shadow=shadow, features=features,
            feature_schema=FEATURE_SCHEMA, at=facts.ts if facts is not None else None, facts=facts,
        )  # fmt: skip
        self.counters.count(outcome)
        return outcome

    def assess(self, call: Call, identity: Identity, policy: PolicyOutcome, now: float, budget_s: float) -> RiskOutcome:
        return self.assess_many(((call, identity, policy, now, budget_s),))[0]

    def assess_many(self, calls: Sequence[RiskCall]) -> list[RiskOutcome]:
        """`assess` each call, with one model run for all of them. Each call's budget covers its own features and
        the run it waited for: a run's cost is mostly being a run (model.py, `score_many`), so scoring the calls
        one read from Envoy carried together costs about what one costs alone."""
        assessed = [self._features(*call) for call in calls]
        waiting = [a for a in assessed if isinstance(a, _Waiting)]
        if not waiting:
            return assessed  # type: ignore[return-value]  # every one an outcome already
        start = _clock()
        scores = self.model.score_many([w.row for w in waiting])
        run_s = _clock() - start
        concluded = iter([self._concluded(w, *scored, run_s) for w, scored in zip(waiting, scores, strict=True)])
        return [next(concluded) if isinstance(a, _Waiting) else a for a in assessed]

    def _features(
        self, call: Call, identity: Identity, policy: PolicyOutcome, now: float, budget_s: float
    ) -> RiskOutcome | _Waiting:
        """The call's features, ready for the model, or its outcome when the budget does not cover the model."""
        start = _clock()
        shadow = self._config.shadow or policy.risk_shadow or now < self.state.started_at(now) + self._warmup_s
        if budget_s <= 0:  # the gRPC deadline has already passed
            return self._skipped((), shadow)
        facts = facts_from_call(call, identity, policy.normalized_path or call.path, now)
        row = self.state.features(facts, self.model.baseline)
        spent_s = _clock() - start
        if spent_s + self.model.cost_s > budget_s:
            return self._skipped(tuple(row), shadow, facts)
        return _Waiting(policy, shadow, facts, row, budget_s - spent_s)

    def _concluded(self, waiting: _Waiting, score: float, surprise: list[float], run_s: float) -> RiskOutcome:
        """The band and action for a scored call; SKIPPED when the run took longer than the call's budget left."""
        policy, shadow, facts, row = waiting.policy, waiting.shadow, waiting.facts, waiting.row
        if run_s > waiting.budget_left_s:
            return self._skipped(tuple(row), shadow, facts)
        max_risk = policy.max_risk if policy.max_risk is not None else self._default_max_risk
        band, action = band_for(score, self._allow_below, max_risk)
        if (
            action is RiskAction.DENY
            and policy.max_risk is None  # a rule's own maxRisk is its owner's explicit choice, enforced as written
            and self._volume_free_denials_only
            and FEATURE_NAMES[_argmax(surprise)] not in SITE_FREE
        ):
            band, action = ELEVATED, RiskAction.ANNOTATE
        alarm = self.model.alarm_surprise
        # The features at or past the alarm edge (compress over map: ~1 µs less than a generator over zip).
        alarmed = frozenset(compress(FEATURE_NAMES, map(alarm.__le__, surprise)))
        outcome = RiskOutcome(
            RiskStatus.SCORED, score, self._factors(surprise, row), self._version, band, action, shadow, tuple(row),
            FEATURE_SCHEMA, facts.ts, alarmed, facts,
        )  # fmt: skip
        self.counters.count(outcome)
        return outcome

    def _factors(self, surprise: list[float], row: list[float]) -> tuple[RiskFactor, ...]:
        """The most surprising features, largest first: what moved the score (a feature at 0 moved nothing); among
        features that show one movement, the one that explains the others first (`_explaining_first`)."""
        if not self._top:
            return ()
        order = sorted(range(len(surprise)), key=surprise.__getitem__, reverse=True)
        first = _explaining_first(order[0], surprise, row, self.model.alarm_surprise)
        if first != order[0]:
            order.remove(first)
            order.insert(0, first)
        return tuple(RiskFactor(FEATURE_NAMES[i], surprise[i]) for i in order[: self._top] if surprise[i] > 0)

    def observe(self, call: Call, identity: Identity, policy: PolicyOutcome, risk: RiskOutcome, now: float) -> None:
        """Count a call policy let through; learn from it only what its risk outcome allows (no feedback loop:
        a call risk alarmed on teaches nothing, and a denial itself is never a feature)."""
        if risk.status is not RiskStatus.SCORED or (risk.action is RiskAction.DENY and not risk.shadow):
            learning = Learning.NOTHING
        else:
            learning = learning_for(risk.alarmed)
        facts = risk.facts or facts_from_call(call, identity, policy.normalized_path or call.path, now)
        self.state.observe(facts, learning, self.model.baseline)

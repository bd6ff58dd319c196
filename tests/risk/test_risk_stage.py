"""The stage: budget fallback, factors that really moved the score, bands, shadow mode, warm-up."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
from risk_support import call, granted, identity, slow_model, write

from authz_server.decision import RISK, RISK_TIMEOUT, Verdict, decide
from authz_server.policy.outcome import PolicyOutcome, PolicyReason, RiskTimeoutAction
from authz_server.response import annotation_values
from authz_server.risk import (
    FEATURE_NAMES,
    AnomalyModel,
    BehaviourState,
    RiskConfig,
    RiskScorer,
    band_for,
)
from authz_server.risk import source as risk_source
from authz_server.risk.outcome import RiskAction, RiskStatus

MODEL = AnomalyModel.load("")


def scorer(**config: object) -> RiskScorer:
    cfg = RiskConfig(**{"warmup_s": 0.0, **config})  # type: ignore[arg-type]
    return RiskScorer(MODEL, cfg, BehaviourState(cfg))


def steady(stage: RiskScorer, workload: str = "shop/frontend", calls: int = 120, start: float | None = None) -> float:
    """A caller's ordinary traffic, one call every 10 s on a few product pages; returns the next timestamp."""
    caller = identity(workload)
    t = time.time() - calls * 10 if start is None else start
    for i in range(calls):
        c = call(caller, f"/products/{i % 5}", at=t)
        outcome = stage.assess(c, caller, granted(c.path), t, 0.05)
        stage.observe(c, decide("d", caller, granted(c.path), outcome))
        t += 10
    return t


# --- latency budget -------------------------------------------------------------------------------------------


def test_a_model_slower_than_the_budget_is_skipped_and_counted(tmp_path: Path) -> None:
    path = write(tmp_path / "slow.onnx", slow_model())
    source = risk_source(RiskConfig(model=str(path), budget_ms=0.5, warmup_s=0))
    stage = source.load()
    assert stage.model.cost_s > 0.0005, "the test model must really be slower than the budget"
    caller = identity()
    outcome = stage.assess(call(caller), caller, granted(), time.time(), 0.0005)
    assert outcome.status is RiskStatus.SKIPPED
    assert outcome.score is None and outcome.header_value == "skipped"
    assert outcome.model_version == "slow-test-model"
    assert len(outcome.features) == len(FEATURE_NAMES)  # what would have been scored still reaches the log
    assert source.status()["skipped"] == "1"

    # With room to spare, the same model scores.
    assert stage.assess(call(caller), caller, granted(), time.time(), 5.0).status is RiskStatus.SCORED
    assert source.status()["skipped"] == "1"


@pytest.mark.parametrize(
    ("on_timeout", "verdict", "reason"),
    [(RiskTimeoutAction.ALLOW, Verdict.ALLOW, "allowed"), (RiskTimeoutAction.DENY, Verdict.DENY, RISK_TIMEOUT)],
)
def test_a_skipped_score_falls_back_to_the_rules_on_risk_timeout(
    on_timeout: RiskTimeoutAction, verdict: Verdict, reason: str
) -> None:
    stage = scorer()
    caller = identity()
    policy = granted(on_timeout=on_timeout)
    outcome = stage.assess(call(caller), caller, policy, time.time(), 0.0)  # the gRPC deadline has passed
    assert outcome.status is RiskStatus.SKIPPED
    decision = decide("d", caller, policy, outcome)
    assert (decision.verdict, decision.reason) == (verdict, reason)
    if verdict is Verdict.ALLOW:
        assert annotation_values(decision)["x-authz-risk"] == "skipped"


def test_a_budget_below_the_models_measured_cost_skips_before_running_it() -> None:
    stage = scorer()
    caller = identity()
    outcome = stage.assess(call(caller), caller, granted(), time.time(), MODEL.cost_s / 2)
    assert outcome.status is RiskStatus.SKIPPED
    assert stage.counters.skipped == 1 and stage.counters.scored == 0


# --- factors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("feature", "value"),
    [
        ("new_edge", 1.0),
        ("route_rarity", 14.0),
        ("rate_vs_baseline", 7.0),
        ("distinct_paths", 7.0),
        ("recent_denies", 4.0),
        ("method_unusual", 8.0),
        ("size_vs_norm", 11.0),
        ("svid_lifetime", 10.0),
    ],
)
def test_the_feature_that_moved_the_score_is_the_top_factor(feature: str, value: float) -> None:
    stage = scorer()
    t = steady(stage)
    caller = identity()
    c = call(caller, "/products/1", at=t)
    row = stage.state.features(c, caller, c.path, t)
    base_score, _ = MODEL.score(row)
    row[FEATURE_NAMES.index(feature)] = value
    score, errors = MODEL.score(row)
    factors = stage._factors(errors)
    assert score > base_score + 0.2
    assert factors[0].name == feature
    assert factors[0].contribution > 0.5
    assert sum(f.contribution for f in factors) <= 1.0 + 1e-6  # shares of one total
    assert all(a.contribution >= b.contribution for a, b in itertools.pairwise(factors))


def test_a_caller_that_enumerates_paths_is_scored_up_and_told_why() -> None:
    """Walking ids under its grant and probing paths it has none for (policy refuses those), at 5 calls/s."""
    stage = scorer()
    t = steady(stage)
    caller = identity()
    probes = ["/admin", "/.env", "/internal/config", "/debug/vars", "/backup", "/api/v1/users"]
    scores = []
    for i in range(120):
        path = probes[(i // 10) % len(probes)] + f"/{i}" if i % 10 == 5 else f"/products/{1000 + i}"
        c = call(caller, path, at=t)
        if path.startswith("/products/"):
            outcome = stage.assess(c, caller, granted(path), t, 0.05)
            stage.observe(c, decide("d", caller, granted(path), outcome))
            scores.append(outcome.score or 0.0)
            factors = {f.name for f in outcome.factors}
        else:
            refused = PolicyOutcome(False, PolicyReason.NO_MATCHING_RULE, "v1", normalized_path=path)
            stage.observe(c, decide("d", caller, refused, None))
        t += 0.2
    assert scores[0] < 0.3
    assert max(scores[-20:]) > 0.7
    assert "recent_denies" in factors


# --- bands, shadow, warm-up -----------------------------------------------------------------------------------


def test_bands_map_scores_to_actions() -> None:
    assert band_for(0.1, 0.3, 0.8) == ("low", RiskAction.ALLOW)
    assert band_for(0.3, 0.3, 0.8) == ("elevated", RiskAction.ANNOTATE)
    assert band_for(0.8, 0.3, 0.8) == ("elevated", RiskAction.ANNOTATE)
    assert band_for(0.81, 0.3, 0.8) == ("high", RiskAction.DENY)
    assert band_for(0.25, 0.3, 0.2) == ("high", RiskAction.DENY)  # a rule stricter than the allow band


def _odd_call(stage: RiskScorer, max_risk: float | None = None, shadow: bool = False) -> tuple[object, object]:
    """A first call from an identity nobody in its namespace uses toward this callee, with a 30-day certificate."""
    caller = identity("batch/reporting", lifetime_s=30 * 86400)
    policy = granted("/refunds", max_risk=max_risk, shadow=shadow)
    outcome = stage.assess(call(caller, "/refunds", "POST", 700), caller, policy, time.time(), 0.05)
    return decide("d", caller, policy, outcome), outcome


def test_a_score_past_the_rules_max_risk_is_denied_with_reason_risk() -> None:
    stage = scorer()
    steady(stage)
    decision, outcome = _odd_call(stage, max_risk=0.6)
    assert outcome.band == "high" and outcome.action is RiskAction.DENY  # type: ignore[attr-defined]
    assert (decision.verdict, decision.reason, decision.http_status) == (Verdict.DENY, RISK, 403)  # type: ignore[attr-defined]


def test_the_default_max_risk_applies_when_the_rule_sets_none() -> None:
    decision, outcome = _odd_call(scorer(default_max_risk=1.0))
    assert outcome.band == "elevated"  # type: ignore[attr-defined]
    assert decision.verdict is Verdict.ALLOW  # type: ignore[attr-defined]
    values = annotation_values(decision)  # type: ignore[arg-type]
    assert float(values["x-authz-risk"]) >= 0.3
    assert len(values["x-authz-risk-factors"].split(",")) == 3


def test_an_ordinary_call_is_allowed_with_its_score_and_no_factors() -> None:
    stage = scorer()
    t = steady(stage)
    caller = identity()
    policy = granted("/products/2", max_risk=0.6)
    outcome = stage.assess(call(caller, "/products/2", at=t), caller, policy, t, 0.05)
    assert outcome.band == "low" and outcome.score is not None and outcome.score < 0.3
    values = annotation_values(decide("d", caller, policy, outcome))
    assert "x-authz-risk" in values and "x-authz-risk-factors" not in values


@pytest.mark.parametrize("where", ["global", "declaration", "warm-up"])
def test_shadow_mode_scores_and_annotates_but_never_enforces(where: str) -> None:
    if where == "global":
        stage, shadow = scorer(shadow=True), False
    elif where == "declaration":
        stage, shadow = scorer(), True
    else:
        cfg = RiskConfig(warmup_s=600)
        stage, shadow = RiskScorer(MODEL, cfg, BehaviourState(cfg)), False
    decision, outcome = _odd_call(stage, max_risk=0.1, shadow=shadow)
    assert outcome.shadow and outcome.action is RiskAction.DENY  # type: ignore[attr-defined]
    assert decision.verdict is Verdict.ALLOW  # type: ignore[attr-defined]
    values = annotation_values(decision)  # type: ignore[arg-type]
    assert "x-authz-risk-factors" in values
    assert stage.counters.shadow == 1 and stage.counters.denied == 0


def test_shadow_also_ignores_a_deny_on_risk_timeout() -> None:
    stage = scorer(shadow=True)
    caller = identity()
    policy = granted(on_timeout=RiskTimeoutAction.DENY)
    outcome = stage.assess(call(caller), caller, policy, time.time(), 0.0)
    assert outcome.status is RiskStatus.SKIPPED and outcome.shadow
    assert decide("d", caller, policy, outcome).verdict is Verdict.ALLOW

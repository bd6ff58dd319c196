"""Behavioural features mean what their names say, and the state behind them stays bounded."""

from __future__ import annotations

import time

import pytest
from risk_support import CALLEE, call, identity

from authz_server.config import ConfigError, load_config
from authz_server.risk import FEATURE_NAMES, BehaviourState, RiskConfig
from authz_server.risk.features import peer_group, route_template

F = {name: i for i, name in enumerate(FEATURE_NAMES)}


def learn(state: BehaviourState, workload: str, paths: list[str], start: float, every_s: float = 10.0,
          callee: str = CALLEE, went_through: bool = True) -> float:  # fmt: skip
    caller = identity(workload, now=start)
    t = start
    for path in paths:
        c = call(caller, path, at=t, callee=callee)
        state.features(c, caller, path, t)
        state.observe(c, caller, path, went_through)
        t += every_s
    return t


def features(state: BehaviourState, workload: str, path: str, at: float, **kw: object) -> list[float]:
    caller = identity(workload, now=at)
    return state.features(call(caller, path, at=at, **kw), caller, path, at)  # type: ignore[arg-type]


def test_route_templates_and_peer_groups() -> None:
    assert route_template("/orders/12345/items") == "/orders/{id}/items"
    assert route_template("/users/3f2b8a9c-1d2e-4f5a-8b9c-0d1e2f3a4b5c") == "/users/{id}"
    assert route_template("/v2/products") == "/v2/products"
    assert peer_group("/ns/shop/sa/frontend") == "ns/shop"
    assert peer_group("/region/eu/billing") == "region/eu"


def test_a_new_edge_is_flagged_and_fades_as_the_caller_keeps_using_it() -> None:
    state = BehaviourState(RiskConfig())
    t0 = time.time() - 3600
    row = features(state, "shop/frontend", "/products/1", t0)
    assert row[F["new_edge"]] == 1.0 and row[F["peer_group_outlier"]] == 1.0
    t = learn(state, "shop/frontend", [f"/products/{i}" for i in range(9)], t0)
    assert features(state, "shop/frontend", "/products/1", t)[F["new_edge"]] == pytest.approx(0.1)


def test_a_workload_whose_namespace_already_calls_the_callee_is_less_of_an_outlier() -> None:
    state = BehaviourState(RiskConfig())
    t = learn(state, "shop/frontend", ["/products/1"] * 5, time.time() - 600)
    same_namespace = features(state, "shop/recommendations", "/products/1", t)
    other_namespace = features(state, "analytics/reporting", "/products/1", t)
    assert same_namespace[F["new_edge"]] == other_namespace[F["new_edge"]] == 1.0
    assert same_namespace[F["peer_group_outlier"]] == 0.5
    assert other_namespace[F["peer_group_outlier"]] == 1.0


def test_rare_routes_unusual_methods_and_odd_sizes() -> None:
    state = BehaviourState(RiskConfig())
    caller = identity("shop/frontend")
    t = time.time() - 3600
    for i in range(200):
        path = "/cart/1/items" if i % 2 else "/products/7"
        c = call(caller, path, "POST" if i % 2 else "GET", 300 if i % 2 else 0, at=t)
        state.observe(c, caller, path, True)
        t += 5
    usual = state.features(call(caller, "/cart/2/items", "POST", 320, at=t), caller, "/cart/2/items", t)
    assert usual[F["route_rarity"]] < 1.5 and usual[F["method_unusual"]] < 0.1 and abs(usual[F["size_vs_norm"]]) < 1
    rare = state.features(call(caller, "/export", at=t), caller, "/export", t)
    assert rare[F["route_rarity"]] > 7
    delete = state.features(call(caller, "/cart/2/items", "DELETE", at=t), caller, "/cart/2/items", t)
    assert delete[F["method_unusual"]] > 6
    huge = state.features(call(caller, "/cart/2/items", "POST", 250_000, at=t), caller, "/cart/2/items", t)
    assert huge[F["size_vs_norm"]] > 8


def test_a_burst_of_huge_requests_does_not_become_the_routes_norm() -> None:
    state = BehaviourState(RiskConfig())
    caller = identity("shop/orders")
    t = time.time() - 3600
    for i in range(300):
        size = 600 if i < 100 else 300_000
        state.observe(call(caller, "/shipments", "POST", size, at=t), caller, "/shipments", True)
        t += 0.1
    row = state.features(call(caller, "/shipments", "POST", 300_000, at=t), caller, "/shipments", t)
    assert row[F["size_vs_norm"]] > 8


def test_enumeration_raises_distinct_paths_rate_and_recent_denies() -> None:
    state = BehaviourState(RiskConfig())
    t0 = time.time() - 7200
    t = learn(state, "shop/frontend", [f"/products/{i % 3}" for i in range(200)], t0, every_s=20)
    before = features(state, "shop/frontend", "/products/1", t)
    t = learn(state, "shop/frontend", [f"/products/{1000 + i}" for i in range(100)], t, every_s=0.2)
    t = learn(state, "shop/frontend", [f"/admin/{i}" for i in range(10)], t, every_s=0.2, went_through=False)
    after = features(state, "shop/frontend", "/products/5000", t)
    assert after[F["distinct_paths"]] > before[F["distinct_paths"]] + 3
    assert after[F["rate_vs_baseline"]] > before[F["rate_vs_baseline"]] + 2
    assert before[F["recent_denies"]] == 0 and after[F["recent_denies"]] > 2


def test_hour_of_day_unusual_for_the_edge() -> None:
    state = BehaviourState(RiskConfig())
    day = 1767571200.0  # midnight UTC
    caller = identity("ops/admin-console", now=day)
    for d in range(3):
        for h in range(9, 17):
            for k in range(10):
                t = day + d * 86400 + h * 3600 + k * 300
                state.observe(call(caller, "/admin/stats", at=t), caller, "/admin/stats", True)
    office = state.features(call(caller, "/admin/stats", at=day + 3 * 86400 + 11 * 3600), caller, "/admin/stats", 0)
    night = state.features(call(caller, "/admin/stats", at=day + 3 * 86400 + 3 * 3600), caller, "/admin/stats", 0)
    assert office[F["hour_unusual"]] == 0.0
    assert night[F["hour_unusual"]] > 3


def test_svid_lifetime_features() -> None:
    state = BehaviourState(RiskConfig())
    now = time.time()
    usual = identity("shop/frontend", lifetime_s=3600, now=now)
    stolen = identity("shop/frontend", lifetime_s=30 * 86400, now=now)
    row = state.features(call(usual, at=now), usual, "/products/1", now)
    assert row[F["svid_remaining"]] == pytest.approx(0.5) and row[F["svid_lifetime"]] == pytest.approx(1.0)
    row = state.features(call(stolen, at=now), stolen, "/products/1", now)
    assert row[F["svid_lifetime"]] > 9


def test_every_feature_stays_within_its_documented_range() -> None:
    from authz_server.risk.features import FEATURES

    state = BehaviourState(RiskConfig())
    caller = identity("shop/frontend", lifetime_s=10 * 365 * 86400)
    t = time.time()
    for i in range(600):
        state.observe(call(caller, f"/x/{i}", "PATCH", 10**9, at=t), caller, f"/x/{i}", i % 2 == 0)
        t += 0.001
    row = state.features(call(caller, "/y", "TRACE", 10**12, at=t), caller, "/y", t)
    for feature, value in zip(FEATURES, row, strict=True):
        assert feature.low <= value <= feature.high, feature.name


def test_state_stays_bounded_however_many_identities_call() -> None:
    state = BehaviourState(RiskConfig(max_identities=100, max_edges=150, max_routes=50))
    t = time.time()
    for i in range(1000):
        caller = identity(f"team{i % 37}/workload{i}")
        for j in range(3):
            path = f"/r{(i + j) % 400}"
            state.observe(call(caller, path, at=t, callee=f"{CALLEE}{j}"), caller, path, True)
    sizes = state.sizes()
    assert sizes == {"identities": 100, "edges": 150, "routes": 50}


def test_an_identity_idle_past_its_ttl_starts_afresh() -> None:
    state = BehaviourState(RiskConfig(identity_ttl_s=600))
    t = learn(state, "shop/frontend", [f"/products/{i}" for i in range(20)], time.time() - 7200, every_s=1)
    busy = features(state, "shop/frontend", "/products/99", t)
    fresh = features(state, "shop/frontend", "/products/99", t + 3600)
    assert busy[F["distinct_paths"]] != 0.0
    assert fresh[F["distinct_paths"]] == 0.0 and fresh[F["rate_vs_baseline"]] == 0.0


def test_configuration_is_validated_naming_each_key() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(overrides={"risk.budget_ms": "0", "risk.allow_below": "1.5", "risk.max_identities": "0"})
    text = str(caught.value)
    assert "risk.budget_ms: must be > 0" in text
    assert "risk.allow_below: must be within 0..1" in text
    assert "risk.max_identities: must be >= 1" in text
    with pytest.raises(ConfigError, match=r"risk.default_max_risk: must be >= allow_below"):
        load_config(overrides={"risk.default_max_risk": "0.2"})
    config = load_config(overrides={"risk.model": "/models/m.onnx", "risk.shadow": "true"})
    assert config.risk.model == "/models/m.onnx" and config.risk.shadow is True

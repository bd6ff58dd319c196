"""The simulated sites: many workloads with their own habits, operations as real sites have them, seeded."""

from __future__ import annotations

import ipaddress
from collections import defaultdict

import pytest

from authz_server.risklab.simulator import DAY, Event, Timeline
from authz_server.risklab.sites import OFFICE, site
from authz_server.routes import fold


@pytest.fixture(scope="module")
def day() -> list[Event]:
    spec = site(scale=1.0)
    return list(Timeline(spec).events(spec.start + DAY))


def test_a_day_has_over_100k_calls_from_at_least_20_workloads(day: list[Event]) -> None:
    assert len(day) > 100_000
    assert len({e.caller for e in day}) >= 20
    assert [e.ts for e in day] == sorted(e.ts for e in day)


def test_the_same_seed_gives_the_same_traffic_and_another_seed_another_site() -> None:
    def calls(seed: int, vary: bool) -> list[tuple[float, str, str, str]]:
        spec = site("x", seed, scale=0.05, vary=vary)
        return [(e.ts, e.caller, e.path, e.address) for e in Timeline(spec).events(spec.start + DAY / 4)]

    assert calls(3, True) == calls(3, True)
    assert calls(3, True) != calls(4, True)
    sites = [site("x", seed, vary=True) for seed in range(8)]
    assert len({s.tz_offset_h for s in sites}) > 2
    assert len({w.svid_lifetime_s for s in sites for w in s.workloads}) > 2
    assert all(len(s.workloads) >= 20 for s in sites)


def test_paths_carry_every_id_shape_and_all_fold_to_the_route_templates(day: list[Event]) -> None:
    segments = [seg for e in day[:20000] for seg in fold(e.path)[1]]
    assert any(s.isdigit() for s in segments)
    assert any(s.startswith("SKU-") for s in segments)
    assert any(len(s) == 36 and s.count("-") == 4 for s in segments)  # UUIDs
    assert any(len(s) == 16 and all(c in "0123456789abcdef" for c in s) for s in segments)  # hex digests
    assert any(len(s) == 22 and not s.isdigit() and "-" not in s[:1] for s in segments)  # base64url tokens
    templates = {fold(e.path)[0] for e in day}
    assert "/products/{id}" in templates and "/orders/{id}" in templates


def test_habits_night_batches_office_hours_and_a_diurnal_curve(day: list[Event]) -> None:
    spec = site()
    hours: dict[str, set[int]] = defaultdict(set)
    per_hour: dict[int, int] = defaultdict(int)
    for e in day:
        hour = int((e.ts - spec.start) // 3600)
        hours[e.caller].add(hour)
        if e.caller == "shop/frontend":
            per_hour[hour] += 1
    assert hours["analytics/reporting"] <= {2, 3}  # 02:00-03:30
    assert hours["ops/admin-console"] <= set(range(8, 18))
    assert spec.workload("ops/admin-console").habit == OFFICE
    assert len(hours["monitoring/prober"]) == 24
    assert per_hour[15] > 3 * per_hour[4]  # the web's afternoon vs its night


def test_replica_churn_keeps_addresses_in_the_workloads_subnets_and_svids_rotate_at_half_life() -> None:
    spec = site(scale=0.2, svid_lifetimes=(3600.0, 86400.0))
    events = list(Timeline(spec).events(spec.start + 2 * DAY))
    by_caller: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        by_caller[e.caller].append(e)
    for name, calls in by_caller.items():
        subnets = {ipaddress.ip_network(f"{s}.0/24") for s in spec.workload(name).subnets}
        assert all(any(ipaddress.ip_address(e.address) in n for n in subnets) for e in calls)
    frontend = by_caller["shop/frontend"]
    assert len({e.address for e in frontend}) > spec.workload("shop/frontend").replicas  # pods came and went
    for e in events:
        lifetime = e.svid.not_after - e.svid.not_before
        assert lifetime == spec.workload(e.caller).svid_lifetime_s
        assert e.svid.not_before <= e.ts < e.svid.not_before + 60 + lifetime / 2 + 1  # renewed at half-life
    assert len({(e.svid.replica, e.svid.rotation) for e in frontend}) > 2 * 24


def test_a_deploy_moves_a_workload_to_v2_routes_and_replaces_its_pods() -> None:
    spec = site(scale=0.3)
    timeline = Timeline(spec)
    at = spec.start + 10 * 3600
    timeline.deploy(at, "shop/frontend", "shop/catalog")
    events = [e for e in timeline.events(spec.start + 12 * 3600) if e.caller == "shop/frontend"]
    before = [e for e in events if e.ts < at]
    after = [e for e in events if e.ts > at + 900]
    assert not any(e.path.startswith("/v2/") for e in before)
    catalog_after = [e for e in after if e.callee == "shop/catalog"]
    assert catalog_after and any(e.path.startswith("/v2/products/") for e in catalog_after)
    assert not any(e.path.startswith(("/products/", "/categories/")) for e in catalog_after)  # all moved
    assert not {e.address for e in after} & {e.address for e in before[-50:]} or len(before) < 50


def test_a_peak_triples_the_rate_of_its_workload() -> None:
    def calls_14_to_15(peak: bool) -> int:
        spec = site(scale=0.5)
        timeline = Timeline(spec)
        if peak:
            timeline.peak(spec.start + 13 * 3600, "shop/search", 3.0, hours=2.0)
        window = (spec.start + 14 * 3600, spec.start + 15 * 3600)
        return sum(e.caller == "shop/search" and window[0] <= e.ts for e in timeline.events(window[1]))

    assert 2.6 < calls_14_to_15(peak=True) / calls_14_to_15(peak=False) < 3.4

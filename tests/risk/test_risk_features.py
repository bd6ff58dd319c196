"""Every feature of schema v2, from real CheckRequests (minted SVIDs, source addresses, request.time, content-length)
parsed and verified by the server's own stages; the clock rule; the state's byte bound."""

from __future__ import annotations

import datetime as dt
import math
import tracemalloc

import pytest
from risk_support import CALLEE, TRUST_DOMAIN, Workload, at, parsed, workload

from authz_server.risk import FEATURE_NAMES, BehaviourState, RiskConfig
from authz_server.risk.baseline import EMPTY, Baseline
from authz_server.risk.features import CLOCK_SKEW_S, CallFacts, Learning, bounded, facts_from_call, learning_for
from authz_server.risklab.training import build_baseline

FRONTEND = workload("shop/frontend", "10.1.2.3")


def facts(
    caller: Workload, path: str = "/products/1", *, t: float, now: float | None = None, **request: object
) -> CallFacts:
    call, identity = parsed(caller, path, at=t, **request)  # type: ignore[arg-type]
    return facts_from_call(call, identity, call.path, t if now is None else now)


def feature(state: BehaviourState, f: CallFacts, name: str, baseline: Baseline = EMPTY) -> float:
    return state.features(f, baseline)[FEATURE_NAMES.index(name)]


def learn(state: BehaviourState, f: CallFacts, learning: Learning = Learning.EVERYTHING) -> None:
    state.observe(f, learning)


def steady(state: BehaviourState, caller: Workload = FRONTEND, start_h: float = 1.0, calls: int = 300,
           every_s: float = 10.0, path: str = "/products/{}", **request: object) -> float:  # fmt: skip
    """Ordinary traffic on the edge, learned; returns the time after it."""
    t = at(start_h)
    for i in range(calls):
        learn(state, facts(caller, path.format(i * 37 % 101), t=t, **request))  # a few ids, in no order
        t += every_s
    return t


def test_a_new_edge_is_novel_until_it_has_had_low_risk_calls_and_a_baseline_edge_is_not() -> None:
    state = BehaviourState(RiskConfig())
    first = facts(FRONTEND, t=at(1))
    assert feature(state, first, "edge_novelty") == 1.0
    steady(state, calls=256)
    assert feature(state, facts(FRONTEND, t=at(2)), "edge_novelty") == pytest.approx(0.5)
    # Calls that alarmed on a behaviour feature teach it nothing.
    for i in range(100):
        learn(state, facts(FRONTEND, t=at(2) + i), Learning.NOTHING)
    assert feature(state, facts(FRONTEND, t=at(2.1)), "edge_novelty") == pytest.approx(0.5)
    # A site baseline that knows the edge: not novel at all.
    baseline = build_baseline([facts(FRONTEND, f"/products/{i}", t=at(1) + i) for i in range(50)])
    assert feature(BehaviourState(RiskConfig()), first, "edge_novelty", baseline) == 0.0


def test_a_new_template_on_a_known_edge_is_unusual_and_a_deploy_to_v2_becomes_normal_within_the_hour() -> None:
    state = BehaviourState(RiskConfig())
    t = steady(state)
    assert feature(state, facts(FRONTEND, "/products/3", t=t), "route_unusual") < 0.5
    probe = feature(state, facts(FRONTEND, "/admin/export", t=t), "route_unusual")
    assert probe > 9  # never seen in ~8,000 calls a day: 13 bits
    # The deploy: every call now goes to /v2/products/{id}. Only novelty alarms on them, so they teach the route.
    for i in range(360):
        learn(state, facts(FRONTEND, f"/v2/products/{i % 7}", t=t), Learning.NOVELTY)
        t += 10
    assert feature(state, facts(FRONTEND, "/v2/products/1", t=t), "route_unusual") < 1.5
    # ...while a handful of probes stays rare.
    for _ in range(5):
        learn(state, facts(FRONTEND, "/admin/export", t=t), Learning.NOVELTY)
    assert feature(state, facts(FRONTEND, "/admin/export", t=t + 1), "route_unusual") > 5  # 1 call in ~60


def test_a_method_is_judged_per_template() -> None:
    state = BehaviourState(RiskConfig())
    t = steady(state)
    # POSTs are normal on /carts, never seen on /products.
    for i in range(100):
        learn(state, facts(FRONTEND, f"/carts/{i}", t=t + i, method="POST", content_length=600))
    t += 100
    assert feature(state, facts(FRONTEND, "/carts/5", t=t, method="POST"), "method_unusual") < 0.5
    assert feature(state, facts(FRONTEND, "/products/5", t=t, method="DELETE"), "method_unusual") > 6
    assert feature(state, facts(FRONTEND, "/products/5", t=t, method="GET"), "method_unusual") < 0.5


def test_a_write_on_an_edge_that_only_ever_read_stays_unusual_on_every_call() -> None:
    """A reader that starts deleting is judged on the site's log, not on what its own DELETEs taught the state a
    minute ago; a write on an edge that writes elsewhere, and a read, are judged per template as before."""
    reader = workload("shop/images", "10.1.4.4")
    history = [facts(reader, f"/objects/{i * 7919 % 3000}", t=at(1) + i * 20) for i in range(400)]
    history += [facts(FRONTEND, f"/carts/{i}", t=at(1) + i * 20, method="POST") for i in range(100)]
    history += [facts(FRONTEND, f"/products/{i}", t=at(1) + i * 20 + 5) for i in range(300)]
    baseline = build_baseline(sorted(history, key=lambda f: f.ts))
    state = BehaviourState(RiskConfig())
    t = at(4)
    values = []
    for i in range(30):
        delete = facts(reader, f"/objects/{i}", t=t + i * 30, method="DELETE")
        values.append(feature(state, delete, "method_unusual", baseline))
        learn(state, delete, learning_for(frozenset({"method_unusual"})))  # novelty only: it teaches the template
    assert min(values) > 6 and max(values) - min(values) < 0.01  # log2(~3,800 calls a day): every call the same
    assert feature(state, facts(reader, "/objects/5", t=t + 900), "method_unusual", baseline) < 0.5
    # The frontend writes (POST /carts): a DELETE on /products is a rare method on that template, learned online.
    first = feature(state, facts(FRONTEND, "/products/5", t=t, method="DELETE"), "method_unusual", baseline)
    for i in range(30):
        learn(state, facts(FRONTEND, f"/products/{i}", t=t + i * 30, method="DELETE"), Learning.NOVELTY)
    later = feature(state, facts(FRONTEND, "/products/5", t=t + 900, method="DELETE"), "method_unusual", baseline)
    assert first > 6 and later < first - 2


def o_clock(hours: int) -> float:
    """`hours` after the first whole UTC hour after T0: hours of day are clock hours, whenever the tests run."""
    return math.ceil(at(0) / 3600) * 3600 + hours * 3600.0


def test_an_hour_the_edge_never_works_is_unusual_once_the_edge_has_hours() -> None:
    state = BehaviourState(RiskConfig())
    console = workload("ops/console", "10.9.0.4")
    assert feature(state, facts(console, t=at(1)), "hour_unusual") == 0.0  # too few calls to know its hours
    for hour in range(1, 9):  # a console used for eight hours in a row, a call a minute
        for i in range(60):
            learn(state, facts(console, f"/admin/users/{i}", t=o_clock(hour) + i * 60))
    assert feature(state, facts(console, t=o_clock(5) + 1500), "hour_unusual") < 0.5
    # log2(2 x 20 calls an hour + 1) = 5.4 bits, less the 3 bits a quiet hour has
    assert feature(state, facts(console, t=o_clock(20)), "hour_unusual") > 2  # eleven hours after its last one
    # 09:10 is beside the console's last working hour; 09:40 is nearer to 10:00, an hour it never works.
    assert feature(state, facts(console, t=o_clock(9) + 600), "hour_unusual") == 0.0
    assert feature(state, facts(console, t=o_clock(9) + 2400), "hour_unusual") > 2


def test_calls_unusual_for_their_hour_do_not_teach_it() -> None:
    """An intruder on the console at night: each call alarms on its hour alone, and the 25th reads as unusual as the
    first (had they taught their hour, a handful would have made 02:00 a working hour)."""
    state = BehaviourState(RiskConfig())
    console = workload("ops/console", "10.9.0.4", lifetime=dt.timedelta(days=2))
    for hour in range(8, 18):
        for i in range(30):
            learn(state, facts(console, f"/admin/users/{i}", t=o_clock(hour) + i * 120))
    night = o_clock(26) + 600
    first = feature(state, facts(console, t=night), "hour_unusual")
    assert first > 1.5  # log2(2 x 12.5 calls an hour + 1) - 3
    for i in range(25):
        learn(state, facts(console, f"/admin/users/{i}", t=night + i * 60), learning_for(frozenset({"hour_unusual"})))
    assert feature(state, facts(console, t=night + 1500), "hour_unusual") >= first - 0.1
    # A call that alarmed only on a new route still teaches its (ordinary) hour.
    assert learning_for(frozenset({"route_unusual"})) & Learning.HOUR


def test_the_quiet_small_hours_of_a_diurnal_edge_are_not_unusual() -> None:
    """A diurnal edge runs at a quarter of its average before dawn, every night: those calls are its normal, and
    reading each of them as unusual put a whole hour of every such edge at the false-positive budget's edge."""
    state = BehaviourState(RiskConfig())
    web = workload("shop/web", "10.1.2.12", lifetime=dt.timedelta(days=3))
    for hour in range(24):
        per_hour = 10 if 2 <= hour < 6 else 40
        for i in range(per_hour):
            learn(state, facts(web, f"/products/{i}", t=o_clock(hour) + i * 3600 / per_hour))
    assert feature(state, facts(web, "/products/1", t=o_clock(27) + 600), "hour_unusual") == 0.0


def test_a_burst_is_measured_against_the_edges_busiest_minute() -> None:
    state = BehaviourState(RiskConfig())
    t = steady(state, calls=120, every_s=6.0)  # 10 calls a minute, learned as the edge's peak
    assert feature(state, facts(FRONTEND, t=t), "rate_burst") < 0.5
    for i in range(200):  # 20x in the next minute, alarming (not learned)
        learn(state, facts(FRONTEND, f"/products/{i % 7}", t=t + i * 0.3), Learning.NOTHING)
    burst = feature(state, facts(FRONTEND, t=t + 60), "rate_burst")
    assert burst > 3.5
    # Recent activity falls when the burst stops.
    assert feature(state, facts(FRONTEND, t=t + 300), "rate_burst") < 0.5


def test_distinct_ids_in_the_short_and_long_windows_against_the_baseline() -> None:
    state = BehaviourState(RiskConfig())
    reader = workload("shop/reader", "10.1.2.9")
    calm = [facts(reader, f"/orders/{i % 20}", t=at(1) + i * 5) for i in range(500)]
    for f in calm:
        learn(state, f)
    baseline = build_baseline(calm)
    template = baseline.edge(calm[0].caller, CALLEE).templates["/orders/{id}"]  # type: ignore[union-attr]
    assert 15 <= template.ids_short <= 25 and 15 <= template.ids_long <= 25
    t = calm[-1].ts + 5
    assert feature(state, facts(reader, "/orders/3", t=t), "ids_short", baseline) < 0.5
    for i in range(300):  # 300 new ids in a minute
        learn(state, facts(reader, f"/orders/{90_000 + i * 37}", t=t + i * 0.2), Learning.NOTHING)
    now = facts(reader, "/orders/3", t=t + 61)
    # 15x the edge's distinct ids in a minute, less the 4x room a legitimate peak has (PEAK_HEADROOM): 2 bits
    assert feature(state, now, "ids_short", baseline) > 2
    assert feature(state, now, "ids_long", baseline) > 3


def test_a_sequential_walk_is_seen_through_interleaved_ordinary_ids() -> None:
    state = BehaviourState(RiskConfig())
    walker = workload("shop/walker", "10.1.3.3")
    t = at(1)
    for i in range(40):
        learn(state, facts(walker, f"/orders/{5000 + i}", t=t), Learning.NOTHING)  # the walk, one id a minute
        learn(state, facts(walker, f"/orders/{(i * 7919) % 100_000}", t=t + 20))  # ordinary reads around it
        learn(state, facts(walker, f"/orders/{(i * 104_729) % 100_000}", t=t + 40))
        t += 60
    assert feature(state, facts(walker, "/orders/5040", t=t), "id_walk") > 5  # log2(41)
    assert feature(state, facts(walker, "/orders/77777", t=t), "id_walk") == 0.0


def test_one_off_paths_do_not_crowd_an_edges_real_route_out_of_the_state() -> None:
    """Tokens of letters only do not fold into an id, so each makes a template of its own; 40 of them must not
    leave the edge's real route, seen next, without its walk."""
    state = BehaviourState(RiskConfig())
    caller = workload("identity/auth", "10.1.3.8")
    t = at(1)
    for i in range(40):
        learn(state, facts(caller, f"/users/{'abcdefghijklmnopqrstuv'[i % 22 :] + 'x' * (i // 22 + 1)}/sessions", t=t))
        t += 5
    for i in range(30):
        learn(state, facts(caller, f"/users/{43_000 + i}/sessions", t=t), Learning.NOTHING)
        t += 60
    assert feature(state, facts(caller, "/users/43030/sessions", t=t), "id_walk") > 4  # log2(31)


def test_a_walk_goes_on_across_skipped_ids_and_chance_walks_over_popular_ids_stay_short() -> None:
    """Low and slow: one id every one to two minutes for three hours, every fourth step skipping two or three ids
    that do not exist. The walk keeps growing; reads of a few popular ids, which land a stride apart all the time,
    make no walk, and neither do the digit tails of hexadecimal digests."""
    state = BehaviourState(RiskConfig())
    walker = workload("shop/walker", "10.1.3.3")
    t, ident = at(1), 52_000
    for i in range(120):
        learn(state, facts(walker, f"/orders/{ident}", t=t), Learning.NOTHING)
        ident += 2 + i % 2 if i % 4 == 3 else 1
        for k in range(3):  # ordinary reads of the popular orders 1-12 around it
            learn(state, facts(walker, f"/orders/{1 + (i * 5 + k * 7) % 12}", t=t + 10 + k * 10))
        t += 60 + (i * 37) % 60
    assert feature(state, facts(walker, f"/orders/{ident}", t=t), "id_walk") > 6  # 87 exact steps of 120: log2(88)
    assert feature(state, facts(walker, "/orders/13", t=t), "id_walk") < 2.5
    digests = [facts(walker, f"/blobs/{i:04x}{i * 2654435761 % 10**6:06d}", t=t + i) for i in range(2000)]
    for f in digests:
        learn(state, f)
    assert max(feature(state, f, "id_walk") for f in digests[-50:]) == 0.0


def test_size_comes_from_content_length_and_is_judged_per_method() -> None:
    state = BehaviourState(RiskConfig())
    t = steady(state, calls=200, path="/carts/{}", method="POST", content_length=600)
    assert feature(state, facts(FRONTEND, "/carts/1", t=t, method="POST", content_length=700), "size_unusual") < 0.5
    huge = facts(FRONTEND, "/carts/1", t=t, method="POST", content_length=200_000)
    assert huge.size == 200_000  # Envoy reports http.size 0 without with_request_body: the header counts
    assert feature(state, huge, "size_unusual") > 8
    assert feature(state, facts(FRONTEND, "/carts/1", t=t, method="POST"), "size_unusual") == 0.0  # unknown size


def test_a_source_address_is_new_only_outside_the_identitys_subnets() -> None:
    state = BehaviourState(RiskConfig())
    t = steady(state, calls=50)
    assert feature(state, facts(FRONTEND, t=t, address="10.1.2.77"), "source_new") == 0.0  # replica churn
    assert feature(state, facts(FRONTEND, t=t, address="10.1.9.5"), "source_new") == 1.0  # another /24, same /16
    assert feature(state, facts(FRONTEND, t=t, address="203.0.113.9"), "source_new") == 2.0
    assert feature(state, facts(FRONTEND, t=t, address="fd00::1"), "source_new") == 2.0


def test_a_certificate_used_away_from_its_pod_is_counted_for_its_life_and_its_pod_is_not() -> None:
    state = BehaviourState(RiskConfig())
    t = at(1)
    home = facts(FRONTEND, t=t)
    assert home.certificate  # the leaf's serial, from the verified SVID
    learn(state, home)
    assert feature(state, facts(FRONTEND, t=t + 5), "serial_multi_source") == 0.0
    assert feature(state, facts(FRONTEND, t=t + 10, address="203.0.113.9"), "serial_multi_source") == 1.0
    learn(state, facts(FRONTEND, t=t + 10, address="203.0.113.9"), Learning.NOTHING)
    # The pod the SVID was issued to (the address it was first seen from) goes on as before...
    assert feature(state, facts(FRONTEND, t=t + 20), "serial_multi_source") == 0.0
    # ...while the copy is a copy an hour later too, when the pod has long rotated to its next SVID, and so is a
    # copy on another pod of the pod's own subnet.
    assert feature(state, facts(FRONTEND, t=t + 3600, address="203.0.113.9"), "serial_multi_source") == 1.0
    assert feature(state, facts(FRONTEND, t=t + 3600, address="10.1.2.99"), "serial_multi_source") == 2.0
    # A copy used before its pod was ever seen here (a restart of this server): the pod, in its usual subnet, is
    # not the copy.
    stolen = workload("shop/frontend", "10.1.2.5")
    learn(state, facts(stolen, t=t + 30, address="198.51.100.7"), Learning.NOTHING)
    assert feature(state, facts(stolen, t=t + 40), "serial_multi_source") == 0.0
    learn(state, facts(stolen, t=t + 40))
    assert feature(state, facts(stolen, t=t + 50), "serial_multi_source") == 0.0
    assert feature(state, facts(stolen, t=t + 50, address="198.51.100.7"), "serial_multi_source") == 1.0
    # Another pod's own SVID from another address is not the same certificate.
    other = workload("shop/frontend", "10.1.2.4")
    assert feature(state, facts(other, t=t + 20), "serial_multi_source") == 0.0


@pytest.mark.parametrize("lifetime_h", [1.0, 24.0])
def test_svid_age_means_the_same_for_short_and_long_svids(lifetime_h: float) -> None:
    caller = workload("shop/aged", "10.1.2.5", dt.timedelta(hours=lifetime_h))
    state = BehaviourState(RiskConfig())
    assert feature(state, facts(caller, t=at(0.75 * lifetime_h)), "svid_age") == pytest.approx(0.75, abs=0.01)


def test_behaviour_reads_envoys_request_time_bounded_by_the_server_clock() -> None:
    now = at(2)
    assert facts(FRONTEND, t=now - 0.2, now=now).ts == pytest.approx(now - 0.2)  # Envoy's time, when sane
    # A CheckRequest that claims another time (a forged or broken client) is scored at most CLOCK_SKEW_S away.
    call, identity = parsed(FRONTEND, at=now - 86400)
    assert call.received_at == now - 86400
    assert facts_from_call(call, identity, call.path, now).ts == now - CLOCK_SKEW_S
    call, identity = parsed(FRONTEND, at=now + 7 * 3600)
    assert facts_from_call(call, identity, call.path, now).ts == now + CLOCK_SKEW_S


def test_every_feature_is_within_its_range_and_zero_for_an_ordinary_call_on_a_known_edge() -> None:
    state = BehaviourState(RiskConfig())
    t = steady(state, calls=400)
    row = state.features(facts(FRONTEND, "/products/2", t=t), EMPTY)
    assert len(row) == len(FEATURE_NAMES)
    named = dict(zip(FEATURE_NAMES, row, strict=True))
    assert all(v >= 0 for v in row)
    for name in ("route_unusual", "method_unusual", "rate_burst", "source_new", "serial_multi_source", "id_walk"):
        assert named[name] < 0.5, (name, named)


@pytest.mark.slow
def test_the_state_is_bounded_in_bytes_whatever_the_paths() -> None:
    """10,000 calls, each with a distinct 60 KiB path on one edge, then 10,000 callers each on its own edge."""
    state = BehaviourState(RiskConfig(max_identities=1000, max_edges=1000))
    t = at(1)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    tail = "/segment" * 7680  # 60 KiB of route words (no digits: not ids)
    call, identity = parsed(FRONTEND, at=t)
    for i in range(10_000):
        distinct = "".join(chr(97 + (i // 26**k) % 26) for k in range(3))
        path = f"/{distinct}{tail}"
        f = facts_from_call(call, identity, path, t)
        assert len(f.template) <= 128
        state.features(f, EMPTY)
        state.observe(f, Learning.EVERYTHING)
        del path, f
    for i in range(10_000):
        f = CallFacts(t, bounded(f"spiffe://{TRUST_DOMAIN}/{i}/" + "x" * 5000), CALLEE, "/orders/{id}", str(i),
                      "GET", 100, f"10.{i % 250}.{i // 250}.1", f"serial-{i}", t - 60, t + 3600)  # fmt: skip
        state.observe(f, Learning.EVERYTHING)
    held = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    sizes = state.sizes()
    assert sizes["edges"] <= 1000 and sizes["identities"] <= 1000 and sizes["certificates"] <= 1000
    assert sizes["templates"] <= 1000 * 32
    assert held < 8 * 1024 * 1024, held  # 1,000 edges and callers at ~2-4 KiB each, not 600 MB of paths


def test_configuration_is_validated_naming_each_key() -> None:
    problems = RiskConfig(budget_ms=0, window_s=0, max_edges=0, allow_below=2, top_factors=99).validate()
    assert any(p.startswith("budget_ms:") for p in problems)
    assert any(p.startswith("window_s:") for p in problems)
    assert any(p.startswith("max_edges:") for p in problems)
    assert any(p.startswith("allow_below:") for p in problems)
    assert any(p.startswith("top_factors:") for p in problems)


def test_ids_on_a_template_new_since_training_are_judged_against_the_edges_other_templates() -> None:
    """A deploy's /v2/ route reads as many ids as /v1/ did: not an enumeration, even before the next training."""
    reader = workload("shop/reader", "10.1.2.9")
    history = [facts(reader, f"/v1/orders/{i * 7919 % 400}", t=at(1) + i * 0.5) for i in range(600)]
    baseline = build_baseline(history)
    state = BehaviourState(RiskConfig())
    t = at(2)
    for i in range(120):
        learn(state, facts(reader, f"/v2/orders/{i * 7919 % 400}", t=t + i * 0.5), Learning.NOVELTY)
    after = facts(reader, "/v2/orders/77", t=t + 60)
    assert feature(state, after, "ids_short", baseline) < 0.5
    assert feature(state, after, "ids_short", EMPTY) > 5  # the same counts with nothing to compare them with
    # An edge the site model does not know at all is left to edge_novelty.
    stranger = workload("shop/stranger", "10.1.2.10")
    for i in range(120):
        learn(state, facts(stranger, f"/v1/orders/{i * 7919 % 400}", t=t + i * 0.5), Learning.NOVELTY)
    assert feature(state, facts(stranger, "/v1/orders/5", t=t + 60), "ids_short", baseline) == 0.0


def test_a_new_nodes_subnet_is_learned_when_nothing_else_alarmed_and_a_copied_certificates_is_not() -> None:
    """Pods rescheduled onto another node of the mesh alarm once, then are known; an address outside every range the
    site's pods use becomes normal only when several identities come from there (a new node pool), never from one
    identity alone (a stolen SVID used from elsewhere), and never from a copied certificate."""
    state = BehaviourState(RiskConfig())
    t = steady(state, calls=50)
    learn(state, facts(workload("shop/cart", "10.7.0.4"), t=t))  # another workload's pods live in 10.7.0.0/16
    moved = facts(FRONTEND, t=t, address="10.7.0.5")
    assert feature(state, moved, "source_new") == 1.0  # a node of the mesh this caller never ran on
    learn(state, moved, learning_for(frozenset({"source_new"})))
    assert feature(state, facts(FRONTEND, t=t + 1, address="10.7.0.6"), "source_new") == 0.0

    outside = facts(FRONTEND, t=t + 2, address="203.0.113.9")
    assert feature(state, outside, "source_new") == 2.0
    for i in range(30):  # one identity, however many quiet calls: still outside
        learn(state, facts(FRONTEND, t=t + 3 + i, address="203.0.113.9"), learning_for(frozenset({"source_new"})))
    assert feature(state, facts(FRONTEND, t=t + 40, address="203.0.113.9"), "source_new") == 2.0
    thief = facts(FRONTEND, t=t + 41, address="203.0.113.10")
    learn(state, thief, learning_for(frozenset({"source_new", "serial_multi_source"})))
    assert feature(state, facts(FRONTEND, t=t + 42, address="203.0.113.10"), "source_new") == 2.0
    # A new node pool: three workloads' pods come up there; its range joins the site's.
    for name in ("shop/cart", "shop/orders"):
        pool = workload(name, "10.1.5.5")
        learn(state, facts(pool, t=t + 50))
        learn(state, facts(pool, t=t + 51, address="203.0.113.20"), learning_for(frozenset({"source_new"})))
    assert feature(state, facts(FRONTEND, t=t + 60, address="203.0.113.9"), "source_new") == 1.0


def test_one_call_at_an_hour_the_edge_never_works_is_unusual_for_its_hour_not_a_burst() -> None:
    console = workload("ops/console", "10.9.0.4")
    history = [facts(console, f"/admin/users/{i}", t=at(h) + i * 60) for h in range(1, 9) for i in range(60)]
    baseline = build_baseline(history)
    late = facts(console, "/admin/users/3", t=at(20))
    state = BehaviourState(RiskConfig())
    assert feature(state, late, "rate_burst", baseline) == 0.0  # one call: the edge's busiest minute was 1-2
    assert feature(state, late, "hour_unusual", baseline) > 2  # log2(2 x 20 calls an hour + 1) - 3


def test_a_night_jobs_pace_at_an_hour_it_never_works_is_a_burst_and_one_call_is_not() -> None:
    """An export reads an id a second from 03:00 to 04:00 every night. At that pace at noon, data leaves at an hour
    the edge never reads (against 4x its average minute over the day); one call at noon is only an unusual hour."""
    exporter = workload("analytics/exporter", "10.1.4.4", lifetime=dt.timedelta(days=4))
    history = [facts(exporter, f"/shipments/{(i * 7919) % 100_000}", t=o_clock(24 * day + 3) + i)
               for day in (0, 1) for i in range(3600)]  # fmt: skip
    baseline = build_baseline(history)
    state = BehaviourState(RiskConfig())
    night = o_clock(51)
    for i in range(60):
        learn(state, facts(exporter, f"/shipments/{i * 13}", t=night + i), Learning.NOTHING)
    assert feature(state, facts(exporter, "/shipments/7", t=night + 60), "rate_burst", baseline) == 0.0
    noon = o_clock(60)
    assert feature(state, facts(exporter, "/shipments/7", t=noon), "rate_burst", baseline) == 0.0
    for i in range(60):
        learn(state, facts(exporter, f"/shipments/{50_000 + i * 13}", t=noon + i), Learning.NOTHING)
    assert feature(state, facts(exporter, "/shipments/7", t=noon + 60), "rate_burst", baseline) > 1.5
    # 61 calls against 4 x (7,200 calls / 24 h) / 60 min / 1.04 days (the log's span) = 19 a minute: 1.6 bits


def test_a_template_young_in_the_training_log_is_judged_on_its_edges_norms_not_on_its_first_quiet_hours() -> None:
    """The deploy moved /v1/orders to /v2/orders in the log's last evening: the /v2/ route's own id counts, method mix
    and sizes come from a few quiet hours, so its next busy hour is judged on what the edge did in its busy hours."""
    reader = workload("shop/reader", "10.1.2.9", lifetime=dt.timedelta(days=4))
    history = []
    for day in (0, 1):  # two busy middays on /v1/: 15 calls a minute over thousands of ids, one POST in five
        for i in range(1800):
            t = at(24 * day + 12) + i * 4
            if i % 5:
                history.append(facts(reader, f"/v1/orders/{(i * 7919 + day) % 50000}", t=t))
            else:
                history.append(facts(reader, "/v1/orders", t=t, method="POST", content_length=1400 + i % 200))
    for i in range(240):  # the deploy: a quiet evening on /v2/, a call every 30 s, GETs only
        history.append(facts(reader, f"/v2/orders/{i * 7919 % 50000}", t=at(44) + i * 30))
    baseline = build_baseline(history)
    edge = baseline.edge(history[0].caller, CALLEE)
    assert edge is not None

    state = BehaviourState(RiskConfig())
    t = at(60)  # the next midday, every call on /v2/ now
    for i in range(240):
        learn(state, facts(reader, f"/v2/orders/{(i * 7919 + 3) % 50000}", t=t + i * 4), Learning.EVERYTHING)
    t += 960
    busy = facts(reader, "/v2/orders/4242", t=t)
    own = edge.templates["/v2/orders/{id}"].ids_short
    assert state.activity(busy).ids_short > 2 * (own + 1)  # its own quiet-evening norm would call this enumeration
    assert feature(state, busy, "ids_short", baseline) < 0.5
    post = facts(reader, "/v2/orders", t=t, method="POST", content_length=1500)  # /v2/'s first POST, as /v1/ had
    assert feature(state, post, "method_unusual", baseline) < 2.5  # one call in five on the edge: 2.3 bits
    assert feature(state, post, "size_unusual", baseline) == 0.0
    # What the edge never did still stands out on the young route: a walk of 400 ids in a minute, a 200 KB body.
    for i in range(400):
        learn(state, facts(reader, f"/v2/orders/{100_000 + i}", t=t + i * 0.15), Learning.NOTHING)
    walked = facts(reader, "/v2/orders/100400", t=t + 61)
    assert feature(state, walked, "ids_short", baseline) > 1 and feature(state, walked, "id_walk", baseline) > 5
    big = facts(reader, "/v2/orders", t=t + 61, method="POST", content_length=200_000)
    assert feature(state, big, "size_unusual", baseline) > 6


def test_a_peak_of_a_few_times_the_usual_rate_is_no_burst_and_twenty_times_is() -> None:
    """A sale runs 3x the edge's usual minute for hours; a script runs 20x. The busiest minute a short log saw is a
    Poisson maximum barely above the average, so the peak is measured against a headroom of the average too."""
    caller = workload("shop/web", "10.1.2.11", lifetime=dt.timedelta(days=4))
    history = [facts(caller, f"/products/{i % 500}", t=at(24 * day + 12) + i * 6) for day in (0, 1)
               for i in range(1200)]  # fmt: skip
    history = [facts(caller, "/products/1", t=at(0.1)), *history, facts(caller, "/products/2", t=at(47.9))]  # 2 days
    baseline = build_baseline(history)
    state = BehaviourState(RiskConfig())
    t = at(61)
    for i in range(600):  # 3x: 30 calls a minute for 20 minutes
        learn(state, facts(caller, f"/products/{i % 500}", t=t + i * 2))
    assert feature(state, facts(caller, "/products/1", t=t + 1200), "rate_burst", baseline) == 0.0
    t += 3600
    for i in range(200):  # 20x: 200 calls in a minute
        learn(state, facts(caller, f"/products/{i % 500}", t=t + i * 0.3), Learning.NOTHING)
    assert feature(state, facts(caller, "/products/1", t=t + 60), "rate_burst", baseline) > 1.5  # 20x/4x: ~2.3 bits

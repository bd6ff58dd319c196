"""Synthetic mesh traffic: the baseline the bundled model learns from and the labelled sets it is judged on.

A small shop mesh (frontend, catalog, cart, inventory, checkout, payments,
orders, shipping), an admin console used in business hours, nightly batch jobs
(a reporting job walking orders, an exporter walking shipments), a prober
hitting every /healthz (and a /metrics it is refused), daily cycles, retries,
and deploys that re-issue a workload's SVID and sometimes start a /v2 route.

Every event becomes a real `Call` and `Identity` and goes, in time order,
through the same `BehaviourState` the server runs: training features and
serving features come from one piece of code. Everything is seeded.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from authz_server.call import Call, Peer
from authz_server.identity.result import Identity, Proof
from authz_server.policy.outcome import PolicyOutcome, PolicyReason
from authz_server.risk.config import RiskConfig
from authz_server.risk.features import FEATURE_SCHEMA, BehaviourState, route_template

TRUST_DOMAIN = "example.org"
EPOCH = 1767571200.0
"""2026-01-05T00:00:00Z, a Monday: simulated time starts at midnight UTC."""
SVID_LIFETIME_S = 3600.0

NORMAL = "normal"
ATTACK = "attack"
DRIFT = "drift"
"""Benign change (a deploy, a traffic peak, a new workload): labelled benign, must not alarm."""

_EMPTY: MappingProxyType[str, str] = MappingProxyType({})


def spiffe_id(workload: str) -> str:
    namespace, name = workload.split("/")
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{name}"


@dataclass(frozen=True)
class RouteSpec:
    method: str
    path: str
    """With `{id}` where an identifier goes."""
    weight: float
    size: int = 0
    """Median request body in bytes (0: no body)."""
    ids: int = 5000


def diurnal(hour: float) -> float:
    return 0.15 + 0.85 * math.exp(-(((hour - 14.0) / 4.5) ** 2))


def business_hours(hour: float) -> float:
    return 1.0 if 9 <= hour < 17 else 0.0


def nightly(start: float, minutes: float) -> Callable[[float], float]:
    def profile(hour: float) -> float:
        return 1.0 if start <= hour < start + minutes / 60 else 0.0

    return profile


def flat(hour: float) -> float:
    return 1.0


@dataclass
class EdgeSpec:
    caller: str
    callee: str
    rate: float
    """Peak calls per second."""
    profile: Callable[[float], float]
    routes: list[RouteSpec]
    sequential_ids: bool = False
    """Batch jobs walk identifiers in order rather than at random."""
    denied_routes: tuple[str, ...] = ()
    """Templates this caller uses although no declaration grants them (refused by policy, in the baseline too)."""


def mesh_edges() -> list[EdgeSpec]:
    shop = [
        EdgeSpec("shop/frontend", "shop/catalog", 0.12, diurnal, [
            RouteSpec("GET", "/products/{id}", 0.6), RouteSpec("GET", "/products", 0.2),
            RouteSpec("GET", "/search", 0.2)]),
        EdgeSpec("shop/frontend", "shop/cart", 0.05, diurnal, [
            RouteSpec("GET", "/cart/{id}", 0.5), RouteSpec("POST", "/cart/{id}/items", 0.4, 300),
            RouteSpec("DELETE", "/cart/{id}/items/{id}", 0.1)]),
        EdgeSpec("shop/frontend", "shop/checkout", 0.01, diurnal, [RouteSpec("POST", "/checkout", 1.0, 900)]),
        EdgeSpec("shop/cart", "shop/inventory", 0.04, diurnal, [RouteSpec("GET", "/stock/{id}", 1.0)]),
        EdgeSpec("shop/checkout", "shop/payments", 0.01, diurnal, [
            RouteSpec("POST", "/charges", 0.8, 800), RouteSpec("GET", "/charges/{id}", 0.2)]),
        EdgeSpec("shop/checkout", "shop/orders", 0.01, diurnal, [RouteSpec("POST", "/orders", 1.0, 1200)]),
        EdgeSpec("shop/orders", "logistics/shipping", 0.008, diurnal, [RouteSpec("POST", "/shipments", 1.0, 600)]),
        EdgeSpec("ops/admin-console", "shop/catalog", 0.006, business_hours, [
            RouteSpec("POST", "/admin/reindex", 0.3, 200), RouteSpec("GET", "/admin/stats", 0.7)]),
        EdgeSpec("analytics/reporting", "shop/orders", 2.0, nightly(2.0, 20), [
            RouteSpec("GET", "/orders/{id}", 1.0, 0, 100000)], sequential_ids=True),
        EdgeSpec("analytics/exporter", "logistics/shipping", 1.0, nightly(3.0, 10), [
            RouteSpec("GET", "/shipments/{id}", 1.0, 0, 50000)], sequential_ids=True),
    ]  # fmt: skip
    callees = sorted({e.callee for e in shop})
    probes = [EdgeSpec("monitoring/prober", c, 1 / 120, flat, [RouteSpec("GET", "/healthz", 1.0)]) for c in callees]
    probes.append(EdgeSpec("monitoring/prober", "shop/payments", 1 / 600, flat, [], denied_routes=("/metrics",)))
    return shop + probes


@dataclass(frozen=True, order=True)
class Event:
    ts: float
    caller: str
    callee: str = field(compare=False)
    method: str = field(compare=False)
    path: str = field(compare=False)
    size: int = field(compare=False, default=0)
    label: str = field(compare=False, default=NORMAL)
    scenario: str = field(compare=False, default="baseline")
    granted: bool | None = field(compare=False, default=None)
    """True/False overrides the mesh's declarations (an over-broad rule, say); None: they decide."""
    svid_lifetime_s: float | None = field(compare=False, default=None)
    """A credential other than the workload's own rotating SVID (a stolen, long-lived one)."""


@dataclass(frozen=True)
class Sample:
    """One event after the real feature extractor saw it."""

    event: Event
    features: tuple[float, ...]
    allowed: bool

    def record(self, decision_id: str) -> dict[str, Any]:
        """A decision-log-like line (the fields `authz-server model train` reads)."""
        e = self.event
        return {
            "decision_id": decision_id,
            "ts": round(e.ts, 6),
            "verdict": "allow" if self.allowed else "deny",
            "reason": "allowed" if self.allowed else "no-matching-rule",
            "source": {"spiffe_id": spiffe_id(e.caller)},
            "destination": spiffe_id(e.callee),
            "request": {"method": e.method, "path": e.path, "size": e.size},
            "policy": {"document": f"{e.callee}" if self.allowed else None, "rule": None},
            "risk": {"status": "scored", "features": [round(v, 6) for v in self.features],
                     "feature_schema": FEATURE_SCHEMA},
            "synthetic": {"label": e.label, "scenario": e.scenario},
        }  # fmt: skip


class MeshTraffic:
    """Generates the mesh's normal traffic, seeded, and lets scenarios change it."""

    def __init__(
        self,
        seed: int,
        start: float = EPOCH,
        retry_rate: float = 0.03,
        deploys_per_day: float = 3.0,
        peaks_per_day: float = 1.0,
    ) -> None:
        self.rng = random.Random(seed)
        self.start = start
        self.edges = mesh_edges()
        self.retry_rate = retry_rate
        self.deploys_per_day = deploys_per_day
        self.peaks_per_day = peaks_per_day
        self.rate_multiplier: dict[str, tuple[float, float, float]] = {}
        """caller -> (from ts, to ts, factor): traffic peaks."""
        self._cursors: dict[tuple[str, str], int] = {}

    def granted(self, caller: str, callee: str, template: str) -> bool:
        for edge in self.edges:
            if (edge.caller, edge.callee) == (caller, callee) and any(
                route_template(r.path.replace("{id}", "1")) == template for r in edge.routes
            ):
                return True
        return False

    def _path(self, edge: EdgeSpec, route: RouteSpec) -> str:
        path = route.path
        while "{id}" in path:
            if edge.sequential_ids:
                key = (edge.caller, edge.callee)
                self._cursors[key] = self._cursors.get(key, self.rng.randrange(route.ids)) + 1
                ident = self._cursors[key] % route.ids + 1
            else:
                ident = self.rng.randrange(1, route.ids)
            path = path.replace("{id}", str(ident), 1)
        return path

    def _size(self, route: RouteSpec) -> int:
        return int(route.size * math.exp(self.rng.gauss(0.0, 0.35))) if route.size else 0

    def deploy(self, ts: float, caller: str | None = None, new_route: bool | None = None) -> str:
        """A new version of a workload: it gets a fresh SVID and may start using a /v2 route of a callee."""
        callers = sorted({e.caller for e in self.edges if e.routes and e.caller != "monitoring/prober"})
        caller = caller or self.rng.choice(callers)
        if new_route if new_route is not None else self.rng.random() < 0.5:
            edge = self.rng.choice([e for e in self.edges if e.caller == caller and e.routes])
            base = self.rng.choice(edge.routes)
            if not base.path.startswith("/v2/"):
                edge.routes.append(replace(base, path="/v2" + base.path, weight=base.weight * 0.5))
        return caller

    def peak(self, ts: float, caller: str | None = None, factor: float | None = None, hours: float = 1.5) -> None:
        """A traffic peak (a campaign, a sale): one workload calls `factor` times its usual rate for a while."""
        callers = sorted({e.caller for e in self.edges if e.profile is diurnal})
        caller = caller or self.rng.choice(callers)
        self.rate_multiplier[caller] = (ts, ts + hours * 3600, factor or self.rng.uniform(1.5, 3.5))

    def events(self, until: float, since: float | None = None) -> Iterator[Event]:
        """Normal traffic in [since, until), in time order (deploys take effect as they happen)."""
        t = self.start if since is None else since
        minute = 60.0
        deploy_p = self.deploys_per_day / (24 * 60)
        peak_p = self.peaks_per_day / (24 * 60)
        while t < until:
            hour = (t % 86400) / 3600
            batch: list[Event] = []
            if self.rng.random() < deploy_p:
                self.deploy(t)
            if self.rng.random() < peak_p:
                self.peak(t)
            for edge in self.edges:
                rate = edge.rate * edge.profile(hour)
                peak = self.rate_multiplier.get(edge.caller)
                if peak is not None and peak[0] <= t < peak[1]:
                    # Peaks ramp up over a quarter of an hour, as real ones do.
                    rate *= 1 + (peak[2] - 1) * min(1.0, (t - peak[0]) / 900)
                if rate <= 0:
                    continue
                n = _poisson(self.rng, rate * minute)
                for _ in range(n):
                    ts = t + self.rng.random() * minute
                    if edge.denied_routes and (not edge.routes or self.rng.random() < 0.5):
                        batch.append(Event(ts, edge.caller, edge.callee, "GET", self.rng.choice(edge.denied_routes)))
                        continue
                    route = self.rng.choices(edge.routes, [r.weight for r in edge.routes])[0]
                    path, size = self._path(edge, route), self._size(route)
                    event = Event(ts, edge.caller, edge.callee, route.method, path, size)
                    batch.append(event)
                    if self.rng.random() < self.retry_rate:
                        for k in range(self.rng.choice((1, 1, 2))):
                            batch.append(replace(event, ts=ts + (k + 1) * self.rng.uniform(0.05, 0.5)))
            batch.sort()
            yield from batch
            t += minute


def _poisson(rng: random.Random, mean: float) -> int:
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


class FeatureReplay:
    """Feeds events, in time order, through the server's feature extractor as real Calls and Identities."""

    def __init__(self, traffic: MeshTraffic, config: RiskConfig | None = None) -> None:
        self.traffic = traffic
        self.state = BehaviourState(config or RiskConfig())
        self._svids: dict[str, float] = {}
        self._count = 0

    def _identity(self, event: Event) -> Identity:
        sid = spiffe_id(event.caller)
        if event.svid_lifetime_s is not None:
            issued = event.ts - event.svid_lifetime_s * 0.1
            expires = issued + event.svid_lifetime_s
        else:
            issued = self._svids.get(event.caller, -math.inf)
            if event.ts - issued > SVID_LIFETIME_S / 2:  # rotated at half-life, as SPIRE agents do
                issued = self._svids[event.caller] = event.ts - self.traffic.rng.uniform(0, 60)
            expires = issued + SVID_LIFETIME_S
        return Identity(sid, TRUST_DOMAIN, sid.split(TRUST_DOMAIN, 1)[1], Proof.CERTIFICATE, expires, issued)

    def rotate(self, caller: str) -> None:
        self._svids.pop(caller, None)

    def run(self, events: Iterable[Event]) -> Iterator[Sample]:
        for event in events:
            self._count += 1
            identity = self._identity(event)
            callee = spiffe_id(event.callee)
            call = Call(
                f"synthetic-{self._count}", Peer(identity.spiffe_id, "", "10.0.0.1", 0), callee, event.method,
                event.path, "", event.callee.split("/")[1], "https", "HTTP/1.1", _EMPTY, _EMPTY, event.size, "",
                event.ts,
            )  # fmt: skip
            template = route_template(event.path)
            allowed = event.granted
            if allowed is None:
                allowed = self.traffic.granted(event.caller, event.callee, template)
            policy = PolicyOutcome(
                allowed, PolicyReason.ALLOWED if allowed else PolicyReason.NO_MATCHING_RULE, "synthetic",
                normalized_path=event.path,
            )  # fmt: skip
            features = self.state.features(call, identity, event.path, event.ts)
            self.state.observe(call, identity, policy.normalized_path or event.path, allowed)
            yield Sample(event, tuple(features), allowed)


BURN_IN_HOURS = 24.0


def baseline(seed: int, hours: float, burn_in_hours: float = BURN_IN_HOURS) -> Iterator[Sample]:
    """Normal traffic of the mesh for `hours`, through the real extractor, after a burn-in that is not returned.

    During the burn-in every caller, edge and nightly job is new to the extractor, as on a server's first day
    (which runs in shadow, `risk.warmup_s`): those rows describe a cold start, not the mesh.
    """
    traffic = MeshTraffic(seed)
    replay = FeatureReplay(traffic)
    learned_from = traffic.start + burn_in_hours * 3600
    samples = replay.run(traffic.events(learned_from + hours * 3600))
    return (s for s in samples if s.event.ts >= learned_from)


# --- labelled scenarios --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    at_hour: float
    """Hour of the evaluation day (UTC) the scenario starts."""
    inject: Callable[[MeshTraffic, FeatureReplay, float, random.Random], list[Event]]


def _new_edge(traffic: MeshTraffic, replay: FeatureReplay, t0: float, rng: random.Random) -> list[Event]:
    # The cart workload, which has never talked to payments, starts charging cards (a granted-by-mistake rule).
    return [
        Event(t0 + i * rng.uniform(20, 40), "shop/cart", "shop/payments", "POST", "/charges", 800, ATTACK,
              "new-edge", True)
        for i in range(15)
    ]  # fmt: skip


def _enumeration(traffic: MeshTraffic, replay: FeatureReplay, t0: float, rng: random.Random) -> list[Event]:
    # The frontend, compromised, walks the catalog: every product id in order and a list of likely admin paths.
    probes = ["/admin", "/admin/users", "/internal/config", "/.env", "/debug/vars", "/api/v1/users", "/backup",
              "/admin/export", "/actuator/env", "/graphql", "/config.json", "/server-status"]  # fmt: skip
    events = []
    for i in range(240):
        path = probes[i // 20] if i % 20 == 0 else f"/products/{100 + i}"
        events.append(Event(t0 + i * 0.25, "shop/frontend", "shop/catalog", "GET", path, 0, ATTACK, "enumeration"))
    return events


def _exfiltration(traffic: MeshTraffic, replay: FeatureReplay, t0: float, rng: random.Random) -> list[Event]:
    # The orders workload ships data out in bulk: a burst of very large bodies on its usual route.
    return [
        Event(t0 + i * 0.1, "shop/orders", "logistics/shipping", "POST", "/shipments",
              int(rng.uniform(150_000, 400_000)), ATTACK, "exfiltration-burst")
        for i in range(300)
    ]  # fmt: skip


def _off_hours_admin(traffic: MeshTraffic, replay: FeatureReplay, t0: float, rng: random.Random) -> list[Event]:
    # The admin console, only ever used in office hours, reindexes the catalog at night.
    return [
        Event(t0 + i * rng.uniform(30, 90), "ops/admin-console", "shop/catalog", "POST", "/admin/reindex", 200,
              ATTACK, "off-hours-admin")
        for i in range(6)
    ]  # fmt: skip


def _stolen_identity(traffic: MeshTraffic, replay: FeatureReplay, t0: float, rng: random.Random) -> list[Event]:
    # The reporting job's identity, stolen, used at midday to issue refunds: nobody in analytics calls payments.
    return [
        Event(t0 + i * rng.uniform(10, 30), "analytics/reporting", "shop/payments", "POST", "/refunds", 700, ATTACK,
              "stolen-identity", True, svid_lifetime_s=30 * 86400.0)
        for i in range(12)
    ]  # fmt: skip


def _benign_drift(traffic: MeshTraffic, replay: FeatureReplay, t0: float, rng: random.Random) -> list[Event]:
    # A deploy (fresh SVIDs, a new /v2 route), a traffic peak, and a new workload in a namespace that already
    # calls the catalog: all normal operations, all labelled benign.
    for caller in ("shop/frontend", "shop/cart", "shop/checkout"):
        replay.rotate(caller)
    traffic.deploy(t0, "shop/frontend", new_route=True)
    traffic.peak(t0, "shop/frontend", 3.0)
    events = []
    t = t0
    for _ in range(60):
        t += rng.expovariate(1 / 30)
        events.append(Event(t, "shop/recommendations", "shop/catalog", "GET", f"/products/{rng.randrange(1, 5000)}",
                            0, DRIFT, "benign-drift", True))  # fmt: skip
    return events


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("new-edge", "a workload calls a service it never called (a rule granted it by mistake)", 13.0,
             _new_edge),
    Scenario("path-enumeration", "a workload suddenly walks ids and probes admin paths at 4 calls/s", 15.0,
             _enumeration),
    Scenario("exfiltration-burst", "300 requests of 150-400 KB in 30 s on a route that sees ~600 B", 11.0,
             _exfiltration),
    Scenario("off-hours-admin", "the office-hours admin console reindexes the catalog at 04:00 UTC", 4.0,
             _off_hours_admin),
    Scenario("stolen-identity", "a batch job's identity (30-day cert) issues refunds at payments at noon", 12.0,
             _stolen_identity),
    Scenario("benign-drift", "deploy with fresh SVIDs and a /v2 route, a 3x traffic peak, a new shop workload",
             14.0, _benign_drift),
)  # fmt: skip


def scenario_samples(scenario: Scenario, seed: int, warm_hours: float = 24.0, window_s: float = 3600.0
                     ) -> list[Sample]:  # fmt: skip
    """Labelled samples of one scenario: a warm baseline (not returned), then `window_s` of mixed traffic."""
    traffic = MeshTraffic(seed)
    replay = FeatureReplay(traffic)
    rng = random.Random(seed * 7919 + 1)
    day = traffic.start + math.floor(warm_hours / 24) * 86400
    t0 = day + scenario.at_hour * 3600
    if t0 - traffic.start < warm_hours * 3600:
        t0 += 86400
    for _ in replay.run(traffic.events(t0)):
        pass
    injected = scenario.inject(traffic, replay, t0, rng)
    normal = traffic.events(t0 + window_s, since=t0)
    return list(replay.run(heapq.merge(normal, sorted(injected))))

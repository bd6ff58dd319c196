"""The nine attack kinds, as labelled episodes mixed into a simulated day. Every call is granted by policy.

An attacker is inside a compromised pod (it holds that pod's address and current SVID) or holds a stolen SVID;
either way the site's declarations grant what it does, so only the risk stage can catch it. Each episode draws
its own shape from the seed: which workload, which route and id shape, how fast, how long, how large. Nothing in
an attack carries a marker a detector could key on: the paths, ids, methods and sizes are the site's own kinds.

| kind | what the attacker does |
|---|---|
| `fast-enumeration` | walks ids of one route in order (step 1-3, up or down), 2-10 calls/s, 60-300 calls |
| `slow-enumeration` | the same walk, one id every 20-150 s (jittered) for 1.5-5 hours |
| `bulk-get` | reads distinct ids at 5-15x the edge's usual rate (at least 1/s) for 3-15 minutes |
| `large-body` | sends bodies 30-500x the route's usual size (at least 64 KB) to a write route it uses |
| `off-hours-admin` | an office-hours workload calls its own routes, writes first, at night |
| `stolen-svid` | a pod's SVID (or its predecessor) used from outside the workload's subnets, pod still using it |
| `method-shift` | an edge that only ever GETs starts DELETE/PUT/PATCH/POST on its own routes |
| `new-edge` | a workload calls a callee a namespace-wide grant lets it call but it never did, on the callee's routes |
| `rate-burst` | the edge's own route mix at 15-30x its expected rate for 2-10 minutes |
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from authz_server.risklab.simulator import DAY, Event, SvidRef, format_id, habit_level
from authz_server.risklab.sites import OFFICE, Edge, Route, SiteSpec, Workload

KINDS = (
    "fast-enumeration",
    "slow-enumeration",
    "bulk-get",
    "large-body",
    "off-hours-admin",
    "stolen-svid",
    "method-shift",
    "new-edge",
    "rate-burst",
)

ACCEPTED_FACTORS: dict[str, frozenset[str]] = {
    "fast-enumeration": frozenset({"id_walk", "ids_short"}),
    "slow-enumeration": frozenset({"ids_long", "id_walk"}),
    "bulk-get": frozenset({"rate_burst", "ids_short", "ids_long"}),
    "large-body": frozenset({"size_unusual"}),
    "off-hours-admin": frozenset({"hour_unusual"}),
    "stolen-svid": frozenset({"source_new", "serial_multi_source"}),
    "method-shift": frozenset({"method_unusual"}),
    "new-edge": frozenset({"edge_novelty"}),
    "rate-burst": frozenset({"rate_burst"}),
}
"""The top factor that counts as naming the attack right: the features that measure what the attack does. An
episode that also does what another kind does (bulk reads paging through ids in order walk them) adds that
kind's features (`Episode.accepted`)."""


@dataclass(frozen=True)
class Episode:
    id: int
    kind: str
    attacker: str
    callee: str
    start: float
    end: float
    calls: int
    detail: str
    accepted: tuple[str, ...]
    """The top factors that name this episode right."""


class Pods:
    """Where each workload's pods were, from the benign calls: the address and SVID an attacker in a pod has."""

    def __init__(self, benign: Sequence[Event]) -> None:
        self._times: dict[str, list[float]] = {}
        self._events: dict[str, list[Event]] = {}
        for event in benign:
            self._times.setdefault(event.caller, []).append(event.ts)
            self._events.setdefault(event.caller, []).append(event)

    def active(self, workload: str) -> bool:
        return workload in self._events

    def at(self, workload: str, t: float) -> tuple[str, SvidRef]:
        """A pod of the workload near t: its address and the SVID it holds at t (rotated on as SPIRE would)."""
        times, events = self._times[workload], self._events[workload]
        i = bisect.bisect_right(times, t) - 1
        event = events[max(0, i)]
        return event.address, svid_at(event.svid, t)

    def addresses(self, workload: str) -> set[str]:
        return {e.address for e in self._events.get(workload, ())}


def svid_at(ref: SvidRef, t: float) -> SvidRef:
    """The SVID the same replica holds at t (renewed every half lifetime; backdated a minute)."""
    lifetime = ref.not_after - ref.not_before
    period = lifetime / 2
    issued = ref.not_before + 60.0
    k = math.floor((t - issued) / period)  # negative: the pod's earlier SVIDs
    if k == 0:
        return ref
    start = issued + k * period - 60.0
    return SvidRef(ref.workload, ref.replica, ref.rotation + k, start, start + lifetime)


@dataclass
class _Context:
    site: SiteSpec
    pods: Pods
    rng: random.Random
    day_start: float
    also_measured: dict[int, frozenset[str]] = field(default_factory=dict)
    """Per episode, features beyond its kind's that measure what it does."""

    def local_hour(self, t: float) -> float:
        return ((t + self.site.tz_offset_h * 3600) % DAY) / 3600

    def level(self, workload: Workload, t: float) -> float:
        local = t + self.site.tz_offset_h * 3600
        return habit_level(workload, local, int(local % 3600 // 60))

    def edge_rate(self, workload: Workload, edge: Edge, t: float) -> float:
        """Expected calls a minute on the edge at t (without peaks)."""
        share = edge.share / sum(e.share for e in workload.edges)
        return workload.rate * share * self.level(workload, t)

    def call(self, ep: int, kind: str, w: Workload, callee: str, t: float, method: str, path: str, size: int = 0,
             address: str | None = None, svid: SvidRef | None = None) -> Event:  # fmt: skip
        pod_address, pod_svid = self.pods.at(w.name, t)
        return Event(
            t, w.name, callee, method, path, size, address or pod_address, self.rng.randrange(32768, 61000),
            svid or pod_svid, kind, ep,
        )  # fmt: skip

    def id_routes(self, w: Workload, methods: tuple[str, ...] = ("GET",)) -> list[tuple[Edge, Route]]:
        return [(e, r) for e in w.edges for r in e.routes if "{id}" in r.path and r.method in methods]

    def body(self, route: Route) -> int:
        return max(1, int(route.body * math.exp(self.rng.gauss(0, 0.4)))) if route.body else 0


def _walk_ids(rng: random.Random, route: Route, count: int) -> list[str]:
    """An enumeration's ids: consecutive (step 1-3, either way, with the odd gap) from a random start. Routes
    whose ids are UUIDs or tokens cannot be walked; the attacker tries numbers there (they fold to the same
    route template)."""
    shape = route.shape if route.shape in ("num", "sku") else "num"
    step = rng.choice((1, 1, 1, 2, 3, -1))
    index = rng.randrange(count * 3 + 10, 90_000)
    ids = []
    for _ in range(count):
        ids.append(format_id(shape, index))
        index += step if rng.random() > 0.08 else step * rng.randrange(2, 6)
    return ids


def _enumeration(ctx: _Context, ep: int, t0: float, fast: bool) -> list[Event] | None:
    rng = ctx.rng
    kind = "fast-enumeration" if fast else "slow-enumeration"
    choices = [(w, e, r) for w in ctx.site.workloads if ctx.pods.active(w.name) for e, r in ctx.id_routes(w)]
    if not choices:
        return None
    w, edge, route = rng.choice(choices)
    if fast:
        count, gap, jitter = rng.randrange(60, 300), 1 / rng.uniform(2, 10), 0.3
    else:
        gap = rng.uniform(20, 150)
        count, jitter = int(rng.uniform(1.5, 5) * 3600 / gap), 0.3
    events, t = [], t0
    for ident in _walk_ids(rng, route, count):
        events.append(ctx.call(ep, kind, w, edge.callee, t, "GET", route.path.replace("{id}", ident)))
        t += gap * rng.uniform(1 - jitter, 1 + jitter)
    return events


def _bulk_get(ctx: _Context, ep: int, t0: float) -> list[Event] | None:
    rng = ctx.rng
    choices = [(w, e, r) for w in ctx.site.workloads if ctx.pods.active(w.name) for e, r in ctx.id_routes(w)]
    if not choices:
        return None
    w, edge, route = rng.choice(choices)
    per_s = max(1.0, ctx.edge_rate(w, edge, t0) / 60 * rng.uniform(5, 15))
    duration = rng.uniform(180, 900)
    space = max(route.ids, 20_000)
    sequential_pages = rng.random() < 0.3
    if sequential_pages:  # consecutive ids: an id walk as much as a volume
        ctx.also_measured[ep] = ACCEPTED_FACTORS["fast-enumeration"]
    start = rng.randrange(space)
    events, t, n = [], t0, 0
    while t < t0 + duration:
        index = start + n if sequential_pages else rng.randrange(space)
        events.append(ctx.call(ep, "bulk-get", w, edge.callee, t, "GET",
                               route.path.replace("{id}", format_id(route.shape, index))))  # fmt: skip
        n += 1
        t += rng.expovariate(per_s)
    return events


def _large_body(ctx: _Context, ep: int, t0: float) -> list[Event] | None:
    rng = ctx.rng
    choices = [(w, e, r) for w in ctx.site.workloads if ctx.pods.active(w.name) for e in w.edges for r in e.routes
               if r.body and r.method in ("POST", "PUT", "PATCH")]  # fmt: skip
    if not choices:
        return None
    w, edge, route = rng.choice(choices)
    count = rng.randrange(5, 40)
    events, t = [], t0
    for _ in range(count):
        size = max(65_536, int(route.body * rng.uniform(30, 500)))
        path = route.path.replace("{id}", format_id(route.shape, rng.randrange(route.ids)))
        events.append(ctx.call(ep, "large-body", w, edge.callee, t, route.method, path, size))
        t += rng.uniform(2, 60)
    return events


def _off_hours_admin(ctx: _Context, ep: int, t0: float) -> list[Event] | None:
    rng = ctx.rng
    office = [w for w in ctx.site.workloads if w.habit == OFFICE and ctx.pods.active(w.name)]
    if not office:
        return None
    w = rng.choice(office)
    # Night, local time: 00:30-05:00 of the day.
    local_midnight = ctx.day_start - ctx.site.tz_offset_h * 3600
    if local_midnight < ctx.day_start:
        local_midnight += DAY
    t = local_midnight + rng.uniform(0.5, 5) * 3600
    routes = [(e, r) for e in w.edges for r in e.routes]
    writes = [(e, r) for e, r in routes if r.method != "GET"] or routes
    events = []
    for i in range(rng.randrange(3, 25)):
        edge, route = rng.choice(writes if i < 2 or rng.random() < 0.5 else routes)
        path = route.path.replace("{id}", format_id(route.shape, rng.randrange(route.ids)))
        events.append(ctx.call(ep, "off-hours-admin", w, edge.callee, t, route.method, path, ctx.body(route)))
        t += rng.uniform(5, 120)
    return events


def _foreign_address(ctx: _Context, w: Workload) -> str:
    rng = ctx.rng
    subnets = set(w.subnets)
    base = next(iter(subnets)).rsplit(".", 1)[0] if subnets else "10.0"
    other_nodes = [n for n in range(24, 250) if f"{base}.{n}" not in subnets]
    options = [
        lambda: f"{base}.{rng.choice(other_nodes)}.{rng.randrange(2, 254)}",
        lambda: f"192.168.{rng.randrange(0, 255)}.{rng.randrange(2, 254)}",
        lambda: f"172.{rng.randrange(16, 32)}.{rng.randrange(0, 255)}.{rng.randrange(2, 254)}",
        lambda: f"203.0.113.{rng.randrange(2, 254)}",
    ]  # fmt: skip
    return rng.choice(options)()


def _stolen_svid(ctx: _Context, ep: int, t0: float) -> list[Event] | None:
    rng = ctx.rng
    victims = [w for w in ctx.site.workloads if ctx.pods.active(w.name) and w.edges[0].routes]
    w = rng.choice(victims)
    _, svid = ctx.pods.at(w.name, t0)
    # The one before the current SVID, if still valid for a while: copied from the pod some hours ago.
    lifetime = svid.not_after - svid.not_before
    older = SvidRef(svid.workload, svid.replica, svid.rotation - 1, svid.not_before - lifetime / 2,
                    svid.not_after - lifetime / 2)  # fmt: skip
    if svid.rotation > 0 and older.not_after > t0 + 1800 and rng.random() < 0.4:
        svid = older
    address = _foreign_address(ctx, w)
    events, t = [], t0
    for _ in range(rng.randrange(5, 40)):
        edge = rng.choices(w.edges, [e.share for e in w.edges])[0]
        route = rng.choices(edge.routes, [r.weight for r in edge.routes])[0]
        path = route.path.replace("{id}", format_id(route.shape, rng.randrange(route.ids)))
        if t >= svid.not_after - 1:
            break
        events.append(ctx.call(ep, "stolen-svid", w, edge.callee, t, route.method, path, ctx.body(route), address,
                               svid))  # fmt: skip
        t += rng.uniform(1, 30)
    return events


def _method_shift(ctx: _Context, ep: int, t0: float) -> list[Event] | None:
    rng = ctx.rng
    choices = [(w, e) for w in ctx.site.workloads if ctx.pods.active(w.name) for e in w.edges
               if all(r.method == "GET" for r in e.routes)]  # fmt: skip
    if not choices:
        return None
    w, edge = rng.choice(choices)
    method = rng.choice(("DELETE", "DELETE", "PUT", "PATCH", "POST"))
    events, t = [], t0
    for _ in range(rng.randrange(3, 30)):
        route = rng.choices(edge.routes, [r.weight for r in edge.routes])[0]
        path = route.path.replace("{id}", format_id(route.shape, rng.randrange(route.ids)))
        size = 0 if method == "DELETE" else int(rng.uniform(80, 900))
        events.append(ctx.call(ep, "method-shift", w, edge.callee, t, method, path, size))
        t += rng.uniform(1, 60)
    return events


def _new_edge(ctx: _Context, ep: int, t0: float) -> list[Event] | None:
    rng = ctx.rng
    site = ctx.site
    choices = [(w, callee) for w in site.workloads if ctx.pods.active(w.name) for callee in site.callees
               if site.granted(w.name, callee) and all(e.callee != callee for e in w.edges)]  # fmt: skip
    if not choices:
        return None
    w, callee = rng.choice(choices)
    # What the callee's real clients call on it: the attacker reads the API, it does not invent one.
    routes = [r for other in site.workloads for e in other.edges if e.callee == callee for r in e.routes]
    events, t = [], t0
    for _ in range(rng.randrange(3, 30)):
        route = rng.choice(routes)
        path = route.path.replace("{id}", format_id(route.shape, rng.randrange(route.ids)))
        events.append(ctx.call(ep, "new-edge", w, callee, t, route.method, path, ctx.body(route)))
        t += rng.uniform(1, 60)
    return events


def _rate_burst(ctx: _Context, ep: int, t0: float) -> list[Event] | None:
    rng = ctx.rng
    choices = [(w, e) for w in ctx.site.workloads if ctx.pods.active(w.name) for e in w.edges
               if ctx.edge_rate(w, e, t0) >= 0.5]  # fmt: skip
    if not choices:
        return None
    w, edge = rng.choice(choices)
    per_s = ctx.edge_rate(w, edge, t0) / 60 * rng.uniform(15, 30)
    duration = rng.uniform(120, 600)
    events, t = [], t0
    while t < t0 + duration:
        route = rng.choices(edge.routes, [r.weight for r in edge.routes])[0]
        index = int(route.ids * rng.random() ** 2.5)
        path = route.path.replace("{id}", format_id(route.shape, index))
        events.append(ctx.call(ep, "rate-burst", w, edge.callee, t, route.method, path, ctx.body(route)))
        t += rng.expovariate(per_s)
    return events


_GENERATORS: dict[str, Callable[[_Context, int, float], list[Event] | None]] = {
    "fast-enumeration": lambda c, ep, t: _enumeration(c, ep, t, fast=True),
    "slow-enumeration": lambda c, ep, t: _enumeration(c, ep, t, fast=False),
    "bulk-get": _bulk_get,
    "large-body": _large_body,
    "off-hours-admin": _off_hours_admin,
    "stolen-svid": _stolen_svid,
    "method-shift": _method_shift,
    "new-edge": _new_edge,
    "rate-burst": _rate_burst,
}


def plan_attacks(
    site: SiteSpec,
    benign: Sequence[Event],
    day_start: float,
    per_kind: int = 8,
    seed: int = 101,
    kinds: Sequence[str] = KINDS,
) -> tuple[list[Episode], list[Event]]:
    """`per_kind` episodes of each kind during the day that starts at `day_start`, in time order.

    `benign` is the day's (and the hours before it) benign traffic: attackers act from the pods it shows. Episodes
    start at random times of the day (bursts and walks during working hours or not), each on its own episode id.
    """
    rng = random.Random(f"attacks/{site.name}/{seed}")
    ctx = _Context(site, Pods(benign), rng, day_start)
    episodes: list[Episode] = []
    events: list[Event] = []
    for kind in kinds:
        for _ in range(per_kind):
            t0 = day_start + rng.uniform(0.5, 19.0) * 3600
            made = [e for e in _GENERATORS[kind](ctx, len(episodes), t0) or () if e.ts < day_start + DAY]
            if not made:
                continue
            first, ep = made[0], len(episodes)
            accepted = tuple(sorted(ACCEPTED_FACTORS[kind] | ctx.also_measured.get(ep, frozenset())))
            episodes.append(Episode(ep, kind, first.caller, first.callee, first.ts, made[-1].ts, len(made),
                                    f"{first.method} {first.path}", accepted))  # fmt: skip
            events += made
    events.sort(key=lambda e: e.ts)
    return episodes, events

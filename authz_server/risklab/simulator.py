"""The traffic of a simulated site, call by call, seeded and in time order.

`Timeline(site).events(until)` walks the site minute by minute. Each workload's rate follows its habit in the
site's local time (steady, diurnal, business days, office hours, a night batch window, an hourly cron), times any
traffic peak in force; the number of calls in a minute is Poisson. Each call picks an edge, a route and an id
(popular ids more often; batch jobs page through ids in order), a replica of the caller (its pod address and its
current SVID), a body size for routes that carry one, and is sometimes retried or sent to a path the callee does
not have. Operations happen as on a real site:

- **replica churn**: pods restart (node drains, evictions), come back with a new address in one of the
  workload's node subnets and a fresh SVID;
- **SVID rotation**: each replica's SVID is renewed at half its lifetime (SPIRE's agent and Istio's both rotate
  at about 50%), 1 h or 24 h or whatever the workload has; not_before is backdated a minute;
- **deploys**: a rolling restart (every replica replaced over ~5 minutes) and, for half of them, the new
  version calls one callee's routes under `/v2/` (ramping over 10 minutes as replicas roll);
- **peaks**: a diurnal workload runs up to 1.5-3.5x its rate for an hour or two, ramping over 15 minutes.

`Timeline.deploy()` and `Timeline.peak()` schedule those by hand (the evaluation day has a deploy and a 3x peak
at fixed hours so every run measures them).
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from authz_server.risklab.sites import (
    BUSINESS,
    DIURNAL,
    HOURLY_CRON,
    NIGHT_BATCH,
    OFFICE,
    STEADY,
    Edge,
    Route,
    SiteSpec,
    Workload,
)

DAY = 86400.0
BENIGN = "benign"
ROTATE_AT = 0.5
"""SVIDs are renewed at this fraction of their lifetime."""
NOT_FOUND_PATHS = ("/favicon.ico", "/undefined", "/api/v0/status", "/{id}/null", "/.well-known/security.txt",
                   "/robots.txt")  # fmt: skip


@dataclass(frozen=True, slots=True)
class SvidRef:
    """Which certificate a call presents: minted once per (workload, replica, rotation) by requests.CertificateCache."""

    workload: str
    replica: int
    rotation: int
    not_before: float
    not_after: float


@dataclass(frozen=True, slots=True)
class Event:
    """One simulated call."""

    ts: float
    caller: str
    callee: str
    method: str
    path: str
    size: int
    address: str
    port: int
    svid: SvidRef
    label: str = BENIGN
    """`benign`, or the attack kind (attacks.KINDS)."""
    episode: int = -1


def format_id(shape: str, index: int) -> str:
    """The `index`-th id of a route, as the route's shape writes it. Deterministic, so popular ids recur."""
    digest = hashlib.blake2b(f"{shape}:{index}".encode(), digest_size=16).digest()
    if shape == "uuid":
        return str(uuid.UUID(bytes=digest, version=4))
    if shape == "hex":
        return digest.hex()[:16]
    if shape == "sku":
        return f"SKU-{index:05d}"
    if shape == "token":
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")
    return str(index + 1)


def habit_level(workload: Workload, local_ts: float, minute_of_hour: int) -> float:
    """0..1: how busy the workload is at this local time."""
    hour = (local_ts % DAY) / 3600
    weekday = int(local_ts // DAY + 3) % 7  # 1970-01-01 was a Thursday (3)
    weekend = weekday >= 5
    habit = workload.habit
    if habit == STEADY:
        return 1.0
    if habit in (DIURNAL, BUSINESS):
        # Low at 04:00, high around 15:00 local.
        level: float = 0.12 + 0.88 * (0.5 - 0.5 * math.cos((hour - 3.5) / 24 * 2 * math.pi)) ** 1.5
        if weekend:
            level *= 0.2 if habit == BUSINESS else 0.8
        return level
    if habit == OFFICE:
        return 1.0 if not weekend and 8.0 <= hour < 18.0 else 0.0
    if habit == NIGHT_BATCH:
        into = (hour - workload.batch_start_h) % 24
        return 1.0 if into < workload.batch_hours else 0.0
    if habit == HOURLY_CRON:
        return 1.0 if minute_of_hour < 4 else 0.0
    raise ValueError(f"unknown habit {habit!r}")


def poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


@dataclass
class Replica:
    uid: int
    address: str
    born: float
    """When the pod started and got its first SVID (pods start at different times: rotations are spread)."""


@dataclass
class Deploy:
    at: float
    workload: str
    v2_callee: str | None
    """The callee whose routes the new version calls under /v2/ (None: a plain restart)."""
    ramp_s: float = 600.0
    """How long until every call goes to /v2/ (the rolling restart's pace)."""


@dataclass
class Peak:
    at: float
    workload: str
    factor: float
    hours: float
    ramp_s: float = 900.0

    def multiplier(self, t: float) -> float:
        if not self.at <= t < self.at + self.hours * 3600:
            return 1.0
        return 1.0 + (self.factor - 1.0) * min(1.0, (t - self.at) / self.ramp_s)


@dataclass
class _WorkloadState:
    spec: Workload
    replicas: list[Replica]
    v2_since: dict[str, tuple[float, float]] = field(default_factory=dict)
    """callee -> (when the workload started moving to its /v2/ routes, over how many seconds)."""
    cursors: dict[str, int] = field(default_factory=dict)


def v2_path(path: str) -> str:
    """`/products/1` -> `/v2/products/1`; `/v1/charges` -> `/v2/charges`."""
    parts = path.split("/")
    if len(parts) > 1 and parts[1] in ("v1", "v2"):
        parts[1] = "v2"
        return "/".join(parts)
    return "/v2" + path


class Timeline:
    """A site's benign traffic and operations over time. Generate from the start, in order."""

    def __init__(self, site: SiteSpec, step_s: float = 60.0) -> None:
        self.site = site
        self.step_s = step_s
        """Operations and rates are decided per step (a minute; a live test slices finer)."""
        self.rng = random.Random(f"timeline/{site.name}/{site.seed}")
        self._uids = 0
        self.state = {w.name: _WorkloadState(w, []) for w in site.workloads}
        for st in self.state.values():
            st.replicas = [
                self._new_replica(st.spec, site.start - self.rng.uniform(0, DAY), i) for i in range(st.spec.replicas)
            ]
        self.deploys: list[Deploy] = []
        self.peaks: list[Peak] = []
        self._scheduled_until = site.start
        self.now = site.start

    # --- operations ---------------------------------------------------------------------------------------

    def _new_replica(self, spec: Workload, born: float, slot: int | None = None) -> Replica:
        """A pod: the first ones spread over every node subnet of the workload (`slot`), later ones anywhere."""
        self._uids += 1
        subnets = spec.subnets or ("10.0.0",)
        subnet = subnets[slot % len(subnets)] if slot is not None else self.rng.choice(subnets)
        address = f"{subnet}.{self.rng.randrange(2, 254)}"
        return Replica(self._uids, address, born)

    def deploy(self, at: float, workload: str, v2_callee: str | None = None, ramp_s: float = 600.0) -> None:
        self.deploys.append(Deploy(at, workload, v2_callee, ramp_s))

    def peak(self, at: float, workload: str, factor: float, hours: float = 1.5, ramp_s: float = 900.0) -> None:
        self.peaks.append(Peak(at, workload, factor, hours, ramp_s))

    def _schedule_day(self, day_start: float) -> None:
        """Random deploys and peaks of one day (in working hours, local time, as teams ship)."""
        rng, site = self.rng, self.site
        names = [w.name for w in site.workloads]
        for _ in range(poisson(rng, site.deploys_per_day)):
            name = rng.choice(names)
            at = day_start + (rng.uniform(9, 17) - site.tz_offset_h) % 24 * 3600
            edges = site.workload(name).edges
            callee = rng.choice(edges).callee if rng.random() < 0.5 else None
            self.deploy(at, name, callee)
        diurnal = [w.name for w in site.workloads if w.habit in (DIURNAL, BUSINESS)]
        for _ in range(poisson(rng, site.peaks_per_day)):
            at = day_start + (rng.uniform(10, 19) - site.tz_offset_h) % 24 * 3600
            self.peak(at, rng.choice(diurnal), rng.uniform(1.5, 3.5), rng.uniform(1.0, 2.5))

    def _operate(self, t: float, minute: float) -> None:
        for deploy in self.deploys:
            if t <= deploy.at < t + minute:
                st = self.state[deploy.workload]
                # A rolling restart: every replica replaced, new addresses, new SVIDs (the v2 move ramps below).
                st.replicas = [self._new_replica(st.spec, t + i * 60, i) for i in range(len(st.replicas))]
                if deploy.v2_callee is not None:
                    st.v2_since[deploy.v2_callee] = (deploy.at, deploy.ramp_s)
        p_churn = self.site.churn_per_replica_day * minute / DAY
        for st in self.state.values():
            for i in range(len(st.replicas)):
                if self.rng.random() < p_churn:
                    st.replicas[i] = self._new_replica(st.spec, t)

    # --- calls --------------------------------------------------------------------------------------------

    def svid(self, workload: Workload, replica: Replica, t: float) -> SvidRef:
        lifetime = workload.svid_lifetime_s
        period = lifetime * ROTATE_AT
        k = max(0, math.floor((t - replica.born) / period))
        issued = replica.born + k * period
        return SvidRef(workload.name, replica.uid, k, issued - 60.0, issued - 60.0 + lifetime)

    def _path(self, st: _WorkloadState, edge: Edge, route: Route, t: float) -> str:
        rng = self.rng
        if rng.random() < st.spec.not_found:
            path = rng.choice(NOT_FOUND_PATHS).replace("{id}", str(rng.randrange(10**6)))
            return path
        path = route.path
        if "{id}" in path:
            if st.spec.walks_ids:
                cursor = st.cursors.get(route.path, rng.randrange(route.ids)) + 1
                st.cursors[route.path] = cursor
                index = cursor % route.ids
            else:
                index = int(route.ids * rng.random() ** 2.5)  # popular ids far more often, as on any shop
            path = path.replace("{id}", format_id(route.shape, index))
        moving = st.v2_since.get(edge.callee)
        if moving is not None and t >= moving[0] and rng.random() < min(1.0, (t - moving[0]) / max(moving[1], 1.0)):
            path = v2_path(path)
        return path

    def _size(self, route: Route) -> int:
        if not route.body:
            return 0
        return max(1, int(route.body * math.exp(self.rng.gauss(0.0, 0.4))))

    def call(self, st: _WorkloadState, t: float) -> Event:
        """One benign call of the workload at t."""
        rng, spec = self.rng, st.spec
        edge = rng.choices(spec.edges, [e.share for e in spec.edges])[0]
        route = rng.choices(edge.routes, [r.weight for r in edge.routes])[0]
        # Replicas of a rolling restart start one a minute; the first is up when the minute starts.
        replica = rng.choice([r for r in st.replicas if r.born <= t] or st.replicas[:1])
        return Event(
            t, spec.name, edge.callee, route.method, self._path(st, edge, route, t), self._size(route),
            replica.address, rng.randrange(32768, 61000), self.svid(spec, replica, t),
        )  # fmt: skip

    def current(self, workload: str, t: float) -> tuple[Replica, SvidRef]:
        """A live replica of the workload and the SVID it holds at t (what an attacker on that pod would steal)."""
        st = self.state[workload]
        replica = self.rng.choice(st.replicas)
        return replica, self.svid(st.spec, replica, t)

    def events(self, until: float) -> Iterator[Event]:
        """Benign calls from where the timeline stands to `until`, in time order."""
        minute = self.step_s
        local = self.site.tz_offset_h * 3600
        while self.now < until:
            t = self.now
            while self._scheduled_until <= t:
                self._schedule_day(self._scheduled_until)
                self._scheduled_until += DAY
            self._operate(t, minute)
            minute_of_hour = int((t + local) % 3600 // 60)
            batch: list[Event] = []
            for st in self.state.values():
                level = habit_level(st.spec, t + local, minute_of_hour)
                for peak in self.peaks:
                    if peak.workload == st.spec.name:
                        level *= peak.multiplier(t)
                for _ in range(poisson(self.rng, st.spec.rate * level * minute / 60)):
                    event = self.call(st, t + self.rng.random() * minute)
                    batch.append(event)
                    if self.rng.random() < st.spec.retries:
                        for k in range(self.rng.choice((1, 1, 2))):
                            # Kept inside the minute so the stream stays in time order.
                            ts = min(event.ts + (k + 1) * self.rng.uniform(0.05, 0.5), t + minute - 0.001)
                            batch.append(Event(ts, event.caller, event.callee, event.method, event.path, event.size,
                                               event.address, event.port, event.svid))  # fmt: skip
            batch.sort(key=lambda e: e.ts)
            yield from batch
            self.now = t + minute

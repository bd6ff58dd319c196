"""What a simulated site is: its workloads, their habits, the routes they call, and its declarations.

A site is data (`SiteSpec`), built by `site()` from a catalogue of workload archetypes that real meshes have:
steady internal APIs, diurnal web traffic, an admin console used in office hours, night batch jobs that walk ids
in order, hourly crons, a backup job whose normal bodies are hundreds of kilobytes, health probes. `site()`
varies everything a model could overfit to from one seed to the next: which archetypes run, their rates, the
site's time zone, SVID lifetimes (SPIRE's 1 h, Istio's 24 h, or others), how ids look in paths (numbers, UUIDs,
hex digests, `SKU-01234` slugs, base64url tokens), and the subnets pods get addresses from. The bundled model is
calibrated across many such sites; the evaluation uses one it was not calibrated on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

TRUST_DOMAIN = "example.org"
EPOCH = 1772409600.0
"""2026-03-02 00:00 UTC, a Monday: simulated sites start here unless told otherwise."""

ID_SHAPES = ("num", "uuid", "hex", "sku", "token")
"""How an id looks in a path; each route draws one (see `simulator.format_id`)."""

# Habits: how a workload's rate moves with local time (see simulator.habit_level).
STEADY = "steady"
DIURNAL = "diurnal"
BUSINESS = "business"
"""Diurnal on weekdays, a fifth of it at weekends."""
OFFICE = "office"
"""Only weekdays 08:00-18:00 local, like a person at a console."""
NIGHT_BATCH = "night-batch"
HOURLY_CRON = "hourly-cron"


@dataclass(frozen=True)
class Route:
    """One route a workload calls. `{id}` in the path is replaced by an id of the route's `shape`."""

    method: str
    path: str
    weight: float = 1.0
    body: int = 0
    """Median content-length in bytes (0: no body). Sizes vary log-normally around it."""
    ids: int = 5000
    """Size of the id space the workload draws from (popular ids are drawn more often)."""
    shape: str = "num"


@dataclass(frozen=True)
class Edge:
    callee: str
    routes: tuple[Route, ...]
    share: float = 1.0
    """Relative share of the workload's calls that go to this callee."""


@dataclass(frozen=True)
class Workload:
    name: str
    """`namespace/service-account`."""
    edges: tuple[Edge, ...]
    rate: float
    """Calls a minute at the habit's busiest."""
    habit: str = STEADY
    replicas: int = 2
    svid_lifetime_s: float = 3600.0
    walks_ids: bool = False
    """Reads ids in order (a batch job paging through a table), not at random."""
    batch_start_h: float = 2.0
    """NIGHT_BATCH: local hour the window opens."""
    batch_hours: float = 1.5
    not_found: float = 0.002
    """Share of calls to a path the callee does not have (a stale link, a typo, a crawler)."""
    retries: float = 0.02
    """Share of calls retried once or twice within half a second."""
    subnets: tuple[str, ...] = ()
    """/24 prefixes (`10.8.3`) its pods get addresses from; filled by `site()`."""

    @property
    def spiffe_id(self) -> str:
        return spiffe_id(self.name)


@dataclass(frozen=True)
class SiteSpec:
    name: str
    seed: int
    workloads: tuple[Workload, ...]
    tz_offset_h: float = 0.0
    """Local time = UTC + this; habits follow local time."""
    start: float = EPOCH
    deploys_per_day: float = 2.0
    peaks_per_day: float = 0.5
    churn_per_replica_day: float = 0.5
    """Pod restarts a replica sees a day (evictions, node drains): each brings a new address and SVID."""
    namespace_grants: tuple[tuple[str, str], ...] = field(default=())
    """(namespace, callee): every service account of the namespace may call the callee (a common shortcut)."""

    def workload(self, name: str) -> Workload:
        for w in self.workloads:
            if w.name == name:
                return w
        raise KeyError(name)

    @property
    def callees(self) -> list[str]:
        return sorted({e.callee for w in self.workloads for e in w.edges})

    def declarations(self) -> str:
        """The site's AllowedCalls documents (YAML): each caller may call the services it uses, any method and
        path (how most meshes start: service-level grants), and whole namespaces may call some callees."""
        docs = []
        for callee in self.callees:
            namespace, name = callee.split("/")
            rules = []
            callers = sorted({w.name for w in self.workloads for e in w.edges if e.callee == callee})
            for caller in callers:
                rules.append(
                    f"    - name: {caller.replace('/', '-')}\n"
                    f"      from: [{{id: '{spiffe_id(caller)}'}}]\n"
                    "      to: [{methods: ['*'], paths: ['/**']}]"
                )
            for granted_ns, granted_callee in self.namespace_grants:
                if granted_callee == callee:
                    rules.append(
                        f"    - name: ns-{granted_ns}\n"
                        f"      from: [{{namespace: {granted_ns}}}]\n"
                        "      to: [{methods: ['*'], paths: ['/**']}]"
                    )
            docs.append(
                "apiVersion: authz-server.dev/v1alpha1\nkind: AllowedCalls\n"
                f"metadata: {{name: {name}, namespace: {namespace}}}\n"
                f"spec:\n  workload: '{spiffe_id(callee)}'\n  rules:\n" + "\n".join(rules) + "\n"
            )
        return "---\n".join(docs)

    def granted(self, caller: str, callee: str) -> bool:
        """Whether the declarations let `caller` call `callee` (every method and path, see `declarations`)."""
        if any(e.callee == callee for e in self.workload(caller).edges):
            return True
        return (caller.split("/")[0], callee) in self.namespace_grants


def spiffe_id(workload: str) -> str:
    namespace, account = workload.split("/")
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{account}"


def _r(method: str, path: str, weight: float = 1.0, body: int = 0, ids: int = 5000, shape: str = "num") -> Route:
    return Route(method, path, weight, body, ids, shape)


def _health(callee: str) -> Edge:
    return Edge(callee, (_r("GET", "/healthz"),), 1.0)


def catalogue() -> tuple[Workload, ...]:
    """The archetypes, before a site varies them. Rates add up to ~110,000 calls a day at the default scale."""
    return (
        Workload("shop/frontend", (
            Edge("shop/catalog", (_r("GET", "/products/{id}", 6), _r("GET", "/products/{id}/reviews", 2),
                                  _r("GET", "/categories/{id}/products", 1, ids=300)), 3),
            Edge("shop/cart", (_r("GET", "/carts/{id}", 2, shape="uuid"),
                               _r("POST", "/carts/{id}/items", 1, 400, shape="uuid")), 1),
        ), rate=28, habit=DIURNAL, replicas=4),
        Workload("shop/mobile-bff", (
            Edge("shop/catalog", (_r("GET", "/products/{id}", 4), _r("GET", "/search", 1)), 2),
            Edge("shop/orders", (_r("GET", "/orders/{id}", 1, ids=50000),), 1),
        ), rate=15, habit=DIURNAL, replicas=3),
        Workload("shop/cart", (
            Edge("shop/inventory", (_r("GET", "/stock/{id}", 3, shape="sku"),), 2),
            Edge("shop/pricing", (_r("POST", "/quotes", 1, 600),), 1),
        ), rate=7, habit=DIURNAL, replicas=2),
        Workload("shop/checkout", (
            Edge("payments/payments", (_r("POST", "/v1/charges", 3, 900), _r("GET", "/v1/charges/{id}", 1,
                                                                            shape="uuid")), 2),
            Edge("shop/orders", (_r("POST", "/orders", 1, 1500),), 1),
        ), rate=8, habit=DIURNAL, replicas=2),
        Workload("shop/orders", (
            Edge("logistics/shipping", (_r("POST", "/shipments", 2, 2000), _r("GET", "/shipments/{id}", 1,
                                                                               shape="uuid")), 1),
            Edge("shop/inventory", (_r("POST", "/reservations", 1, 300),), 1),
        ), rate=6, habit=DIURNAL, replicas=2),
        Workload("shop/search-indexer", (
            Edge("shop/catalog", (_r("GET", "/products/{id}", 3), _r("GET", "/categories/{id}", 1, ids=300)), 1),
        ), rate=4, habit=STEADY, replicas=1),
        Workload("payments/fraud", (
            Edge("payments/payments", (_r("GET", "/v1/charges/{id}", 1, shape="uuid"),), 1),
            Edge("identity/users", (_r("GET", "/users/{id}/risk", 1, ids=80000),), 1),
        ), rate=5, habit=BUSINESS, replicas=2),
        Workload("payments/ledger", (
            Edge("payments/payments", (_r("GET", "/v1/settlements/{id}", 1, ids=2000, shape="hex"),
                                       _r("POST", "/v1/settlements", 1, 1200)), 1),
        ), rate=40, habit=HOURLY_CRON, replicas=1),
        Workload("analytics/reporting", (
            Edge("shop/orders", (_r("GET", "/orders/{id}", 1, ids=200000),), 1),
        ), rate=90, habit=NIGHT_BATCH, replicas=1, walks_ids=True, batch_start_h=2.0, batch_hours=1.5,
            svid_lifetime_s=86400.0),
        Workload("analytics/exporter", (
            Edge("logistics/shipping", (_r("GET", "/shipments/{id}", 1, ids=100000, shape="uuid"),), 1),
        ), rate=60, habit=NIGHT_BATCH, replicas=1, batch_start_h=3.5, batch_hours=1.0, svid_lifetime_s=86400.0),
        Workload("ops/admin-console", (
            Edge("shop/catalog", (_r("POST", "/admin/reindex", 1, 200), _r("GET", "/admin/jobs/{id}", 3, ids=500)), 1),
            Edge("identity/users", (_r("GET", "/admin/users/{id}", 3, ids=80000), _r("PATCH", "/admin/users/{id}", 1,
                                                                                    300, ids=80000)), 2),
        ), rate=3, habit=OFFICE, replicas=1),
        Workload("monitoring/prober", tuple(_health(c) for c in (
            "shop/catalog", "shop/cart", "shop/orders", "payments/payments", "identity/users", "logistics/shipping",
        )), rate=6, habit=STEADY, replicas=1, retries=0.0, not_found=0.0),
        Workload("identity/auth", (
            Edge("identity/users", (_r("GET", "/users/{id}/sessions", 3, ids=80000, shape="token"),
                                    _r("POST", "/users/{id}/sessions", 1, 250, ids=80000, shape="token")), 1),
        ), rate=11, habit=DIURNAL, replicas=3),
        Workload("shop/notifications", (
            Edge("identity/users", (_r("GET", "/users/{id}/preferences", 1, ids=80000),), 1),
            Edge("comms/email", (_r("POST", "/messages", 1, 3500),), 1),
        ), rate=5, habit=BUSINESS, replicas=2),
        Workload("logistics/shipping", (
            Edge("logistics/carriers", (_r("POST", "/labels", 1, 2500), _r("GET", "/tracking/{id}", 2, ids=100000,
                                                                           shape="hex")), 1),
        ), rate=5, habit=BUSINESS, replicas=2),
        Workload("shop/recommendations", (
            Edge("shop/catalog", (_r("GET", "/products/{id}", 1),), 1),
        ), rate=6, habit=DIURNAL, replicas=2),
        Workload("billing/invoicer", (
            Edge("payments/payments", (_r("GET", "/v1/charges/{id}", 2, ids=100000, shape="uuid"),), 1),
            Edge("billing/documents", (_r("POST", "/invoices", 1, 6000),), 1),
        ), rate=30, habit=NIGHT_BATCH, replicas=1, batch_start_h=1.0, batch_hours=1.0, svid_lifetime_s=86400.0),
        Workload("data/backup", (
            Edge("data/storage", (_r("PUT", "/objects/{id}", 1, 400_000, ids=10**6, shape="hex"),), 1),
        ), rate=8, habit=NIGHT_BATCH, replicas=1, batch_start_h=0.5, batch_hours=2.0, svid_lifetime_s=86400.0),
        Workload("shop/images", (
            Edge("data/storage", (_r("GET", "/objects/{id}", 1, ids=20000, shape="hex"),), 1),
        ), rate=8, habit=DIURNAL, replicas=2),
        Workload("support/helpdesk", (
            Edge("shop/orders", (_r("GET", "/orders/{id}", 2, ids=50000),), 1),
            Edge("identity/users", (_r("GET", "/users/{id}", 1, ids=80000),), 1),
        ), rate=4, habit=OFFICE, replicas=1),
        Workload("ml/trainer", (
            Edge("shop/catalog", (_r("GET", "/products/{id}", 1),), 1),
        ), rate=120, habit=NIGHT_BATCH, replicas=1, walks_ids=True, batch_start_h=22.0, batch_hours=0.5),
        Workload("shop/webhooks", (
            Edge("comms/gateway", (_r("POST", "/events", 1, 900),), 1),
        ), rate=3, habit=STEADY, replicas=2),
        Workload("platform/config-agent", (
            Edge("platform/config", (_r("GET", "/config/{id}", 1, ids=40, shape="sku"),), 1),
        ), rate=25, habit=HOURLY_CRON, replicas=1),
        Workload("shop/search", (
            Edge("shop/search-backend", (_r("GET", "/query", 1), _r("GET", "/suggest", 1)), 1),
        ), rate=18, habit=DIURNAL, replicas=3),
    )  # fmt: skip


DEFAULT_NAMESPACE_GRANTS = (
    ("shop", "shop/catalog"),
    ("shop", "shop/orders"),
    ("shop", "payments/payments"),
    ("identity", "shop/orders"),
    ("analytics", "payments/payments"),
    ("analytics", "identity/users"),
    ("ops", "payments/payments"),
)


def site(
    name: str = "shop",
    seed: int = 11,
    *,
    scale: float = 1.0,
    vary: bool = False,
    tz_offset_h: float | None = None,
    svid_lifetimes: tuple[float, ...] | None = None,
    start: float = EPOCH,
) -> SiteSpec:
    """A site. `vary=False`: the catalogue as written (the evaluation site). `vary=True`: a different site drawn
    from `seed`: a subset of archetypes, rates x0.4-2.5, its own time zone, SVID lifetimes and id shapes.
    `scale` multiplies every rate (tests run a tenth of a day's calls)."""
    rng = random.Random(f"{name}/{seed}")
    workloads = list(catalogue())
    tz = 0.0 if tz_offset_h is None else tz_offset_h
    if vary:
        keep = max(20, len(workloads) - rng.randrange(0, 5))
        workloads = sorted(rng.sample(workloads, keep), key=lambda w: w.name)
        tz = rng.choice((-8.0, -5.0, 0.0, 1.0, 5.5, 9.0)) if tz_offset_h is None else tz_offset_h
        lifetimes = svid_lifetimes or rng.choice(((3600.0,), (86400.0,), (3600.0, 86400.0), (43200.0,), (600.0,)))
        varied = []
        for w in workloads:
            edges = tuple(
                replace(
                    e,
                    routes=tuple(replace(r, shape=rng.choice(ID_SHAPES)) if "{id}" in r.path else r for r in e.routes),
                )
                for e in w.edges
            )
            varied.append(replace(
                w, edges=edges, rate=w.rate * rng.uniform(0.4, 2.5), svid_lifetime_s=rng.choice(lifetimes),
                replicas=max(1, w.replicas + rng.randrange(-1, 3)),
                batch_start_h=(w.batch_start_h + rng.uniform(-1.5, 1.5)) % 24,
            ))  # fmt: skip
        workloads = varied
    elif svid_lifetimes is not None:
        workloads = [replace(w, svid_lifetime_s=svid_lifetimes[i % len(svid_lifetimes)]) for i, w in
                     enumerate(workloads)]  # fmt: skip
    # Pods of one workload land on a few node subnets of the site's pod CIDR.
    base = rng.randrange(0, 200)
    placed = []
    for w in workloads:
        # No more node subnets than replicas: every subnet a workload's pods use is in use from the start, so pod
        # churn brings new addresses in known subnets (a pod on a node pool the workload never ran on is the
        # stolen-SVID attack's territory, not benign churn).
        nodes = rng.sample(range(24), min(w.replicas, rng.choice((1, 2, 2, 3))))
        placed.append(replace(w, rate=w.rate * scale, subnets=tuple(f"10.{base}.{n}" for n in nodes)))
    names = {w.name for w in placed}
    callees = {e.callee for w in placed for e in w.edges}
    grants = tuple(g for g in DEFAULT_NAMESPACE_GRANTS if g[1] in callees and any(n.startswith(g[0] + "/")
                                                                                  for n in names))  # fmt: skip
    return SiteSpec(name, seed, tuple(placed), tz, start, namespace_grants=grants)

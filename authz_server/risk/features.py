"""Behavioural features: each call and its caller's recent behaviour as a fixed-order vector.

The vector follows a versioned schema (`FEATURE_SCHEMA`): every model records the
schema and names it was trained on and is refused when they differ from these.
Each feature has a name a person can read in `x-authz-risk-factors` and a
description (README.md here has the table). Values are clipped to documented
ranges so one absurd input cannot dominate the model's error.

State lives in bounded least-recently-used maps (callers, edges and routes not
seen for longest are forgotten first) and every call costs O(1) amortised. `features`
only reads what earlier calls left; `observe`, fed the final decision, updates it.
Edges, routes and peer groups learn from calls that went through only, so a caller
cannot make a forbidden edge look familiar by knocking on it.
"""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

from authz_server.call import Call
from authz_server.identity.result import Identity
from authz_server.risk.config import RiskConfig

FEATURE_SCHEMA = "v1"


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    description: str
    low: float
    high: float


FEATURES: tuple[Feature, ...] = (
    Feature("new_edge", "1 / (1 + earlier calls from this caller to this callee): 1 = never called it", 0.0, 1.0),
    Feature("route_rarity", "log2(edge calls / calls of this route on the edge): bits of surprise", 0.0, 16.0),
    Feature(
        "rate_vs_baseline", "log2(call rate over the window / the caller's peak rate, fading over a day)", -6.0, 8.0
    ),
    Feature(
        "distinct_paths",
        "log2(distinct paths the caller touched in the window / its peak number, fading over a day): enumeration",
        -6.0,
        9.0,
    ),
    Feature("recent_denies", "log(1 + the caller's denied calls, decaying over the window): deny streak", 0.0, 7.0),
    Feature("hour_unusual", "log2(the edge's calls per hour of day / its calls in this hour (UTC))", 0.0, 16.0),
    Feature("method_unusual", "log2(calls of the route / calls with this method)", 0.0, 16.0),
    Feature("size_vs_norm", "z-score of log(request size) against the route's running norm", -6.0, 12.0),
    Feature("svid_remaining", "share of the caller's SVID lifetime still left (1 when unknown)", 0.0, 1.0),
    Feature("svid_lifetime", "log2(1 + total SVID lifetime in hours) (0 when unknown)", 0.0, 16.0),
    Feature(
        "peer_group_outlier",
        "new_edge / (1 + other callers in the caller's namespace calling this callee): new to it, and so are its peers",
        0.0,
        1.0,
    ),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
N_FEATURES = len(FEATURES)
_LOW = tuple(f.low for f in FEATURES)
_HIGH = tuple(f.high for f in FEATURES)

_MAX_RECENT_PATHS = 512
"""Distinct paths remembered per caller within the window (the feature saturates here)."""
_MAX_ROUTES_PER_EDGE = 256
_MAX_METHODS_PER_ROUTE = 16
_MAX_GROUPS_PER_CALLEE = 256
_MAX_CALLERS_PER_GROUP = 64
_SIZE_ALPHA = 0.02
_SIZE_VAR_FLOOR = 0.25
"""Variance floor in log-size units, so a route that always sees one size does not flag a byte more."""
_SIZE_MIN_SAMPLES = 5
_SIZE_OUTLIER_Z2 = 16.0
"""A size more than 4 standard deviations from the route's norm does not move the norm."""

_ID_SEGMENT = re.compile(
    r"^(?:\d+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{16,}|"
    r"[A-Za-z0-9_-]{22,})$"
)


@lru_cache(maxsize=8192)
def route_template(path: str) -> str:
    """`/orders/1234/items` -> `/orders/{id}/items`: identifiers do not make a route rare."""
    if not any(c.isdigit() for c in path):
        return path
    return "/".join("{id}" if _ID_SEGMENT.match(s) else s for s in path.split("/"))


@lru_cache(maxsize=8192)
def peer_group(spiffe_path: str) -> str:
    """The caller's peer group: its Kubernetes namespace (`/ns/<ns>/sa/<sa>`), else its path's parent."""
    parts = spiffe_path.strip("/").split("/")
    if len(parts) >= 2 and parts[0] == "ns":
        return "ns/" + parts[1]
    return "/".join(parts[:-1])


class _Caller:
    __slots__ = (
        "denies",
        "denies_at",
        "distinct_norm",
        "first_seen",
        "last_seen",
        "rate_peak",
        "rate_short",
        "recent",
    )

    def __init__(self, ts: float) -> None:
        self.first_seen = ts
        self.last_seen = ts
        self.rate_short = 0.0
        self.rate_peak = 0.0
        self.denies = 0.0
        self.denies_at = ts
        self.distinct_norm = 0.0
        self.recent: OrderedDict[tuple[str, str], float] = OrderedDict()


class _Edge:
    __slots__ = ("calls", "hours", "routes")

    def __init__(self) -> None:
        self.calls = 0
        self.hours = [0] * 24
        self.routes: dict[str, int] = {}


class _Route:
    __slots__ = ("calls", "methods", "size_mean", "size_n", "size_var")

    def __init__(self) -> None:
        self.calls = 0
        self.methods: dict[str, int] = {}
        self.size_n = 0
        self.size_mean = 0.0
        self.size_var = 0.0


_K = TypeVar("_K")
_V = TypeVar("_V")


def _recall(memory: OrderedDict[_K, _V], key: _K) -> _V | None:
    """A least-recently-used lookup: a hit becomes the most recently used entry.

    An OrderedDict does this in two C calls; cachetools.LRUCache took ~1 µs a lookup in Python, four
    lookups a call on the decision path and as many in `observe`."""
    value = memory.get(key)
    if value is not None:
        memory.move_to_end(key)
    return value


def _remember(memory: OrderedDict[_K, _V], key: _K, value: _V, limit: int) -> _V:
    """Store a new entry as the most recently used, forgetting the least recently used beyond `limit`."""
    memory[key] = value
    memory.move_to_end(key)
    if len(memory) > limit:
        memory.popitem(last=False)
    return value


def _clip(values: list[float]) -> list[float]:
    return [lo if v < lo else hi if v > hi else v for v, lo, hi in zip(values, _LOW, _HIGH, strict=True)]


class BehaviourState:
    """Per-identity, per-edge and per-route memory shared by every model generation of one process.

    One lock guards the maps (a lookup reorders them); it is held for a handful of
    dictionary operations per call, never across the model.
    """

    def __init__(self, config: RiskConfig) -> None:
        self.window_s = config.window_s
        self.baseline_s = config.baseline_s
        self._rise_s = config.baseline_s / 24
        self._lock = threading.Lock()
        # Callers expire lazily (a caller idle for identity_ttl_s starts afresh when it returns): a TTL map
        # costs a clock read and a scan per lookup, and the LRU bound caps memory either way.
        self._identity_ttl_s = config.identity_ttl_s
        self._max_identities = config.max_identities
        self._max_edges = config.max_edges
        self._max_routes = config.max_routes
        self._callers: OrderedDict[str, _Caller] = OrderedDict()
        self._edges: OrderedDict[tuple[str, str], _Edge] = OrderedDict()
        self._routes: OrderedDict[tuple[str, str], _Route] = OrderedDict()
        self._peers: OrderedDict[str, dict[str, dict[str, None]]] = OrderedDict()

    def __len__(self) -> int:
        """Callers currently remembered (an idle one counts until the LRU bound evicts it)."""
        with self._lock:
            return len(self._callers)

    def sizes(self) -> dict[str, int]:
        with self._lock:
            return {"identities": len(self._callers), "edges": len(self._edges), "routes": len(self._routes)}

    def _prune(self, caller: _Caller, ts: float) -> None:
        recent = caller.recent
        horizon = ts - self.window_s
        while recent:
            first = next(iter(recent.values()))
            if first >= horizon:
                break
            recent.popitem(last=False)

    def features(self, call: Call, identity: Identity, route_path: str, now: float) -> list[float]:
        """The call's feature vector in schema order, from what earlier calls taught (nothing is learned here;
        only recent paths older than the window are dropped)."""
        ts = call.received_at
        callee = call.destination_principal or call.host
        template = route_template(route_path)
        group = peer_group(identity.path)
        caller_id = identity.spiffe_id
        window, baseline = self.window_s, self.baseline_s
        distinct, distinct_norm, span, short, peak, denies = 1, 1.0, 0.0, 0.0, 0.0, 0.0
        with self._lock:
            caller = _recall(self._callers, caller_id)
            if caller is not None and ts - caller.last_seen > self._identity_ttl_s:
                caller = None
            edge = _recall(self._edges, (caller_id, callee))
            route = _recall(self._routes, (callee, template))
            groups = _recall(self._peers, callee)
            if caller is not None:
                self._prune(caller, ts)
                distinct = len(caller.recent) + ((callee, route_path) not in caller.recent)
                span = ts - caller.first_seen
                elapsed = max(0.0, ts - caller.last_seen)
                fading = math.exp(-elapsed / baseline)
                distinct_norm = caller.distinct_norm * fading
                short = caller.rate_short * math.exp(-elapsed / window) + 1.0 / window
                peak = caller.rate_peak * fading
                denies = caller.denies * math.exp(-max(0.0, ts - caller.denies_at) / window)
            peers = groups.get(group) if groups is not None else None
            n_peers = 0 if peers is None else len(peers) - (caller_id in peers)

        if caller is not None and span > 0:
            floor = 1.0 / window
            rate = math.log2((_corrected(short, span, window) + floor) / (peak + floor))
        else:
            rate = 0.0
        distinct_vs_norm = math.log2((distinct + 1) / (distinct_norm + 1)) if caller is not None else 0.0

        if edge is not None:
            edge_calls = edge.calls
            route_rarity = math.log2((edge_calls + 1) / (edge.routes.get(template, 0) + 1))
            hour = int(ts // 3600 % 24)
            hour_unusual = math.log2((edge_calls + 24) / (24 * (edge.hours[hour] + 1)))
        else:
            edge_calls, route_rarity, hour_unusual = 0, 0.0, 0.0

        method_unusual = size_z = 0.0
        if route is not None:
            method_unusual = math.log2((route.calls + 1) / (route.methods.get(call.method, 0) + 1))
            if call.size >= 0 and route.size_n >= _SIZE_MIN_SAMPLES:
                size_z = (math.log1p(call.size) - route.size_mean) / math.sqrt(route.size_var + _SIZE_VAR_FLOOR)

        expires, issued = identity.expires_at, identity.issued_at
        if expires is not None and issued is not None and expires > issued:
            lifetime = expires - issued
            remaining = (expires - ts) / lifetime
            lifetime_h = math.log2(1.0 + lifetime / 3600.0)
        else:
            remaining, lifetime_h = 1.0, 0.0

        return _clip(
            [
                1.0 / (1 + edge_calls),
                route_rarity,
                rate,
                distinct_vs_norm,
                math.log1p(denies),
                hour_unusual,
                method_unusual,
                size_z,
                remaining,
                lifetime_h,
                1.0 / (1 + edge_calls) / (1 + n_peers),
            ]
        )

    def observe(self, call: Call, identity: Identity, route_path: str, went_through: bool) -> None:
        """Learn from one decided call: the caller's rates, paths and denies; edges and routes if it went through."""
        ts = call.received_at
        callee = call.destination_principal or call.host
        caller_id = identity.spiffe_id
        window, baseline = self.window_s, self.baseline_s
        with self._lock:
            caller = _recall(self._callers, caller_id)
            if caller is None or ts - caller.last_seen > self._identity_ttl_s:
                caller = _remember(self._callers, caller_id, _Caller(ts), self._max_identities)
            elapsed = max(0.0, ts - caller.last_seen)
            fading = math.exp(-elapsed / baseline)
            # The baselines are peaks that rise slowly (over an hour, a caller's first hour faster) and fade over
            # `baseline_s` (a day): a nightly job's burst stays its norm the next night, while the same burst from
            # a caller that never bursts stands out for as long as it lasts.
            span = ts - caller.first_seen
            rising = -math.expm1(-elapsed / min(self._rise_s, max(span, window)))
            caller.rate_short = caller.rate_short * math.exp(-elapsed / window) + 1.0 / window
            caller.rate_peak = _peak(caller.rate_peak * fading, _corrected(caller.rate_short, span, window), rising)
            caller.last_seen = max(ts, caller.last_seen)
            self._prune(caller, ts)
            recent = caller.recent
            key = (callee, route_path)
            recent[key] = ts
            recent.move_to_end(key)
            if len(recent) > _MAX_RECENT_PATHS:
                recent.popitem(last=False)
            caller.distinct_norm = _peak(caller.distinct_norm * fading, float(len(recent)), rising)
            if not went_through:
                caller.denies = caller.denies * math.exp(-max(0.0, ts - caller.denies_at) / window) + 1.0
                caller.denies_at = ts
                return

            template = route_template(route_path)
            edge = _recall(self._edges, (caller_id, callee))
            if edge is None:
                edge = _remember(self._edges, (caller_id, callee), _Edge(), self._max_edges)
            edge.calls += 1
            hour = int(ts // 3600 % 24)
            edge.hours[hour] += 1
            routes = edge.routes
            if template in routes:
                routes[template] += 1
            elif len(routes) < _MAX_ROUTES_PER_EDGE:
                routes[template] = 1

            route = _recall(self._routes, (callee, template))
            if route is None:
                route = _remember(self._routes, (callee, template), _Route(), self._max_routes)
            route.calls += 1
            methods = route.methods
            if call.method in methods:
                methods[call.method] += 1
            elif len(methods) < _MAX_METHODS_PER_ROUTE:
                methods[call.method] = 1
            if call.size >= 0:
                _learn_size(route, math.log1p(call.size))

            groups = _recall(self._peers, callee)
            if groups is None:
                groups = _remember(self._peers, callee, {}, self._max_edges)
            group = peer_group(identity.path)
            members = groups.get(group)
            if members is None and len(groups) < _MAX_GROUPS_PER_CALLEE:
                members = groups[group] = {}
            if members is not None and caller_id not in members and len(members) < _MAX_CALLERS_PER_GROUP:
                members[caller_id] = None


def _learn_size(route: _Route, size: float) -> None:
    """Running mean and variance of log sizes: exact for the first samples, then exponentially weighted."""
    delta = size - route.size_mean
    if route.size_n >= _SIZE_MIN_SAMPLES and delta * delta > _SIZE_OUTLIER_Z2 * (route.size_var + _SIZE_VAR_FLOOR):
        return  # far outside the norm: not learned from, or a burst of them would become the norm
    route.size_n += 1
    if route.size_n == 1:
        route.size_mean = size
        return
    alpha = max(_SIZE_ALPHA, 1.0 / route.size_n)
    route.size_mean += alpha * delta
    route.size_var = (1 - alpha) * (route.size_var + alpha * delta * delta)


def _corrected(rate: float, span: float, window: float) -> float:
    """A moving-average rate corrected for a caller seen for less than a window (else it reads low)."""
    return rate / -math.expm1(-span / window) if span > 0 else 1.0 / window


def _peak(peak: float, value: float, rising: float) -> float:
    """A peak that follows a higher value only by the fraction `rising`, so a burst does not become its own norm."""
    return peak + (value - peak) * rising if value > peak else peak

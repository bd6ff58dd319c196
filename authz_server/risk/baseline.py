"""Per-edge baselines as shipped inside a model artifact: what each edge of this site normally does.

`model train --baseline` builds them from the site's decision log (authz_server/risklab/training.py) and stores
them in the ONNX file's metadata (`authz.baseline`: compact JSON, zlib-compressed and base64-encoded) with their
own digest, so every replica scores a call against the same tables. The bundled model carries an empty baseline:
every edge is then scored on what the server learns online (features.py).

Layout (version 1), all counts over `days` days of log:

    {"version": 1, "days": 2.0,
     "edges": {"<caller> <callee>": {"calls": n, "hours": [24 counts by UTC hour], "minute_max": [24 maxima],
               "span": s, "templates": {"<template>": {"calls": n, "ids_short": x, "ids_long": x, "walk": n,
                                                      "span": s, "methods": {"GET": [calls, usual size or -1]}}}}},
     "subnets": {"<caller>": ["10.1.2.0/24", "10.1.0.0/16", ...]}}

`span` (seconds from the first to the last call in the log) is optional: a baseline written without it trusts
every template's own norms.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from dataclasses import dataclass, field
from typing import Any

BASELINE_VERSION = 1
SETTLED_S = 86400.0
"""A template's own norms are trusted once the log saw it for a day (or for as long as its edge, when the edge is
younger, less an hour): distinct ids, sizes and method mix follow the time of day, so a route a deploy moved to
`/v2/` in the log's last hours has norms from a quiet evening only, and its next ordinary day would read as an
enumeration on every busy hour. Until then its edge's norms stand in (pooled over the edge's templates)."""
_SETTLE_SLACK_S = 3600.0


class BaselineError(ValueError):
    """The baseline in a model's metadata cannot be read; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class MethodBaseline:
    calls: int
    size: int
    """The largest usual request size (99.9th percentile, the maximum when fewer than 1,000 calls); -1 unknown."""


@dataclass(frozen=True, slots=True)
class TemplateBaseline:
    calls: int
    ids_short: float
    ids_long: float
    walk: int
    methods: dict[str, MethodBaseline]
    span: float = -1.0
    """Seconds from its first to its last call in the log; -1 unknown (trusted)."""


@dataclass(frozen=True, slots=True)
class EdgeBaseline:
    calls: int
    hours: tuple[int, ...]
    minute_max: tuple[float, ...]
    templates: dict[str, TemplateBaseline]
    span: float = -1.0
    """Seconds from its first to its last call in the log; -1 unknown."""
    ids_short: float = field(init=False, default=0.0)
    """The most of any of the edge's templates (derived, not stored): a template new since training is compared
    with its edge's others, so a deploy's `/v2/` routes are not an enumeration."""
    ids_long: float = field(init=False, default=0.0)
    walk: int = field(init=False, default=0)
    methods: dict[str, MethodBaseline] = field(init=False, default_factory=dict)
    """Per method over all the edge's templates (derived): calls summed, the largest usual size. What a template
    new or young since training is judged on (`young`); its keys tell an edge that only ever read from one that
    writes (features.py, `method_unusual`)."""
    young: frozenset[str] = field(init=False, default=frozenset())
    """Templates seen for less than `SETTLED_S` while their edge was seen longer (derived): their ids, sizes and
    method mix are judged against the edge's, not against a few hours of their own."""

    def __post_init__(self) -> None:
        templates = self.templates.values()
        object.__setattr__(self, "ids_short", max((t.ids_short for t in templates), default=0.0))
        object.__setattr__(self, "ids_long", max((t.ids_long for t in templates), default=0.0))
        object.__setattr__(self, "walk", max((t.walk for t in templates), default=0))
        methods: dict[str, MethodBaseline] = {}
        for t in templates:
            for name, m in t.methods.items():
                pooled = methods.get(name)
                if pooled is not None:
                    m = MethodBaseline(pooled.calls + m.calls, max(pooled.size, m.size))
                methods[name] = m
        object.__setattr__(self, "methods", methods)
        settled = min(self.span, SETTLED_S) - _SETTLE_SLACK_S
        young = frozenset(name for name, t in self.templates.items() if 0 <= t.span < settled)
        object.__setattr__(self, "young", young)


@dataclass(frozen=True)
class Baseline:
    days: float = 0.0
    edges: dict[str, EdgeBaseline] = field(default_factory=dict)
    known_subnets: dict[str, frozenset[str]] = field(default_factory=dict)
    prefixes: frozenset[str] = field(init=False, default=frozenset())
    """The site's address space (derived): every /16 (IPv6 /48) any caller's pods used. An address outside it is
    not a pod of this mesh (features.py, `source_new`)."""

    def __post_init__(self) -> None:
        wide = frozenset(n for nets in self.known_subnets.values() for n in nets if n.endswith(("/16", "/48")))
        object.__setattr__(self, "prefixes", wide)

    @property
    def per_day(self) -> float:
        """Multiply a baseline count by this to get calls a day."""
        return 1.0 / self.days if self.days > 0 else 0.0

    def edge(self, caller: str, callee: str) -> EdgeBaseline | None:
        return self.edges.get(f"{caller} {callee}")

    def subnets(self, caller: str) -> frozenset[str]:
        return self.known_subnets.get(caller, _NONE)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": BASELINE_VERSION,
            "days": self.days,
            "edges": {
                key: {
                    "calls": e.calls,
                    "hours": list(e.hours),
                    "minute_max": list(e.minute_max),
                    "span": e.span,
                    "templates": {
                        name: {
                            "calls": t.calls,
                            "ids_short": t.ids_short,
                            "ids_long": t.ids_long,
                            "walk": t.walk,
                            "span": t.span,
                            "methods": {m: [b.calls, b.size] for m, b in sorted(t.methods.items())},
                        }
                        for name, t in sorted(e.templates.items())
                    },
                }
                for key, e in sorted(self.edges.items())
            },
            "subnets": {caller: sorted(nets) for caller, nets in sorted(self.known_subnets.items())},
        }

    @classmethod
    def from_json(cls, data: Any) -> Baseline:
        try:
            if data.get("version") != BASELINE_VERSION:
                raise BaselineError(f"baseline version {data.get('version')!r}, this server reads {BASELINE_VERSION}")
            edges = {
                str(key): EdgeBaseline(
                    int(e["calls"]),
                    tuple(int(h) for h in e["hours"]),
                    tuple(float(m) for m in e["minute_max"]),
                    {
                        str(name): TemplateBaseline(
                            int(t["calls"]),
                            float(t["ids_short"]),
                            float(t["ids_long"]),
                            int(t["walk"]),
                            {str(m): MethodBaseline(int(b[0]), int(b[1])) for m, b in t["methods"].items()},
                            float(t.get("span", -1.0)),
                        )
                        for name, t in e["templates"].items()
                    },
                    float(e.get("span", -1.0)),
                )
                for key, e in data["edges"].items()
            }
            subnets = {str(caller): frozenset(str(n) for n in nets) for caller, nets in data["subnets"].items()}
            days = float(data["days"])
        except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
            if isinstance(exc, BaselineError):
                raise
            raise BaselineError(f"malformed baseline: {type(exc).__name__}: {exc}") from exc
        for key, e in edges.items():
            if len(e.hours) != 24 or len(e.minute_max) != 24:
                raise BaselineError(f"edge {key!r}: hours and minute_max need 24 values each")
        return cls(days, edges, subnets)

    def encode(self) -> str:
        """Compact JSON, zlib, base64: the metadata value."""
        raw = json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True).encode()
        return base64.b64encode(zlib.compress(raw, 9)).decode("ascii")

    @classmethod
    def decode(cls, text: str) -> Baseline:
        try:
            raw = zlib.decompress(base64.b64decode(text, validate=True))
            data = json.loads(raw)
        except (ValueError, zlib.error) as exc:
            raise BaselineError(f"baseline is not base64 zlib JSON: {exc}") from exc
        return cls.from_json(data)

    def digest(self) -> str:
        return hashlib.sha256(self.encode().encode()).hexdigest()[:12]


_NONE: frozenset[str] = frozenset()
EMPTY = Baseline()

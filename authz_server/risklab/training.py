"""`authz-server model train`: from decision logs to a calibrated risk model with the site's baseline inside.

1. **Read** the logs (`read_decision_logs`): every file named and its rotated predecessors (`FILE.N` .. `FILE.1`,
   oldest first), lines sorted by request time. A truncated or garbled line (a crash mid-write, a rotated file cut
   short) is skipped and counted, never fatal.
2. **Choose** what is normal (`usable`): every call policy let through, except calls the risk stage denied or
   alarmed on as a new edge (`edge_novelty` in `risk.alarmed`) unless an operator accepted them (`"label":
   "accepted"` in the line, or `DECISION_ID accepted` in a label file), and lines labelled `malicious`. Annotations
   are not held against a call otherwise: a site's first log is written under the bundled model, whose cold start
   annotates plenty of benign traffic, and dropping it would narrow the baseline to whatever was never unusual.
3. **Baseline** (`build_baseline`): the calls are replayed through the serving code's own `BehaviourState`, and
   per edge the tables the features compare with are kept: calls by hour of day, the busiest minute per hour, per
   template the most distinct ids in the short and long windows and the longest id walk, per method the calls and
   the largest usual size, per caller its subnets.
4. **Distributions**: the log is cut into whole days (`_folds`; halves when under two days); each day is replayed
   against a baseline of the other days, as the next day is in serving. The even days give each feature's benign
   distribution (a table of -log10 tail probabilities, graph.py); the odd days are held out. Both hold every hour
   of the day, nights and peaks included: a held-out stretch that missed the night would set bands no night obeys.
5. **Thresholds** from the benign FPR budget (`fpr_budget`, default 0.001): the alarm edge is the held-out
   quantile 1 - budget of the largest surprise (and at least -log10(budget)), mapped to score `allow_below`; the
   deny edge the quantile 1 - budget/10 (and at least a decade above the alarm edge), mapped to
   `default_max_risk`. Features a legitimate change can move are capped below the deny edge.
6. The model shipped carries the baseline built from the whole log.

`train_bundled` calibrates the model shipped with the package the same way from several simulated sites, with no
baseline: each site is replayed from a cold start, tables from half the sites, thresholds from the others.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from authz_server.risk.baseline import EMPTY, Baseline, EdgeBaseline, MethodBaseline, TemplateBaseline
from authz_server.risk.config import RiskConfig
from authz_server.risk.features import (
    FEATURE_NAMES,
    FEATURE_SCHEMA,
    FEATURES,
    MAX_METHOD,
    BehaviourState,
    CallFacts,
    Learning,
    bounded,
    learning_for,
    subnets,
    template_and_id,
)
from authz_server.risk.model import (
    META_BASELINE,
    META_BASELINE_DIGEST,
    META_CALIBRATION,
    META_NAMES,
    META_SCHEMA,
    META_TRAINING,
    META_VERSION,
)
from authz_server.risklab import DEFAULT_FPR_BUDGET
from authz_server.risklab.graph import SurpriseTables, band_map, hinges, pack, score, to_onnx

ACCEPTED = "accepted"
MALICIOUS = "malicious"
_LABELS = {ACCEPTED: ACCEPTED, "false-positive": ACCEPTED, MALICIOUS: MALICIOUS, "true-positive": MALICIOUS}
_QUANTILES = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9998, 0.9999, 0.99995, 0.99999)
_MAX_SUBNETS = 32
_MIN_ROWS = 200
DAY_S = 86400.0


class TrainingDataError(ValueError):
    """The training input cannot be used; the message names the file or what is missing."""


@dataclass
class DecisionLog:
    """Lines read from decision logs, with what was skipped and why."""

    records: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    lines: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


def with_rotations(paths: Iterable[str | Path]) -> list[Path]:
    """Each path preceded by its rotated files (`FILE.N` first: the oldest), each file once."""
    out: list[Path] = []
    seen: set[Path] = set()
    for given in paths:
        path = Path(given)
        rotated = []
        n = 1
        while Path(f"{path}.{n}").exists():
            rotated.append(Path(f"{path}.{n}"))
            n += 1
        for candidate in [*reversed(rotated), path]:
            real = candidate.resolve()
            if real not in seen:
                seen.add(real)
                out.append(candidate)
    return out


def read_labels(path: str | Path) -> dict[str, str]:
    """Label file: `DECISION_ID [accepted|malicious]` per line (accepted by default), `#` starts a comment."""
    labels = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise TrainingDataError(f"{path}: cannot read: {exc.strerror}") from exc
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        decision_id, *rest = line.split()
        label = rest[0].lower() if rest else ACCEPTED
        if label not in _LABELS or len(rest) > 1:
            raise TrainingDataError(
                f"{path}:{number}: expected 'DECISION_ID [accepted|malicious]', got {raw.strip()!r}"
            )
        labels[decision_id] = _LABELS[label]
    return labels


def read_decision_logs(paths: Iterable[str | Path]) -> DecisionLog:
    """Every JSON object line of the files (and their rotations), in request-time order."""
    log = DecisionLog()
    for path in with_rotations(paths):
        log.files.append(str(path))
        try:
            with path.open("rb") as handle:
                for raw in handle:
                    if not raw.strip():
                        continue
                    log.lines += 1
                    try:
                        record = json.loads(raw)
                    except ValueError:  # truncated, garbled, not UTF-8
                        log.skipped["not a JSON line (truncated or garbled)"] += 1
                        continue
                    if not isinstance(record, dict):
                        log.skipped["not a JSON object"] += 1
                        continue
                    log.records.append(record)
        except OSError as exc:
            raise TrainingDataError(f"{path}: cannot read: {exc.strerror}") from exc
    log.records.sort(key=_request_time)
    return log


def _request_time(record: dict[str, Any]) -> float:
    """The time the risk stage scored the call at (`risk.at`), else Envoy's request time, else when it was logged."""
    risk, request = record.get("risk"), record.get("request")
    for stamp in (
        risk.get("at") if isinstance(risk, dict) else None,
        request.get("received_at") if isinstance(request, dict) else None,
        record.get("ts"),
    ):
        if isinstance(stamp, int | float) and math.isfinite(stamp):
            return float(stamp)
    return 0.0


def facts_from_record(record: dict[str, Any]) -> CallFacts | None:
    """What the serving code would have read of this call (None: the line lacks what the features need)."""
    source, request = record.get("source"), record.get("request")
    if not isinstance(source, dict) or not isinstance(request, dict):
        return None
    caller, path, method = source.get("spiffe_id"), request.get("path"), request.get("method")
    if not isinstance(caller, str) or not isinstance(path, str) or not isinstance(method, str):
        return None
    callee = record.get("destination") or request.get("host") or ""
    template, last_id = template_and_id(path)
    logged_template = request.get("template")
    if isinstance(logged_template, str) and logged_template:
        template = bounded(logged_template)
    size = request.get("content_length")
    issued, expires = source.get("not_before"), source.get("expires_at")
    return CallFacts(
        _request_time(record),
        bounded(caller),
        bounded(str(callee)),
        template,
        last_id,
        method[:MAX_METHOD],
        size if isinstance(size, int) and size >= 0 else -1,
        str(source.get("address") or "")[:64],
        str(source.get("serial") or source.get("fingerprint") or ""),
        float(issued) if isinstance(issued, int | float) else None,
        float(expires) if isinstance(expires, int | float) else None,
    )


def usable(log: DecisionLog, labels: dict[str, str] | None = None) -> list[CallFacts]:
    """The calls that describe normal (see the module docstring), skipped lines counted in `log.skipped`."""
    labels = labels or {}
    out = []
    for record in log.records:
        label = labels.get(str(record.get("decision_id")))
        if label is None and isinstance(record.get("label"), str):
            label = _LABELS.get(record["label"].lower())
        risk = record.get("risk")
        if label == MALICIOUS:
            log.skipped["labelled malicious"] += 1
            continue
        if not isinstance(risk, dict):
            log.skipped["not let through by policy"] += 1
            continue
        if label != ACCEPTED:
            if record.get("verdict") == "deny":
                log.skipped["denied by risk (not accepted)"] += 1
                continue
            alarmed = risk.get("alarmed")
            if isinstance(alarmed, list) and "edge_novelty" in alarmed:
                log.skipped["new edge (not accepted)"] += 1
                continue
        facts = facts_from_record(record)
        if facts is None:
            log.skipped["missing caller, method or path"] += 1
            continue
        out.append(facts)
    return out


@dataclass
class _TemplateTally:
    calls: int = 0
    ids_short: float = 0.0
    ids_long: float = 0.0
    walk: int = 0
    methods: dict[str, list[int]] = field(default_factory=dict)
    first: float = math.inf
    last: float = -math.inf


@dataclass
class _EdgeTally:
    calls: int = 0
    hours: list[int] = field(default_factory=lambda: [0] * 24)
    minute_max: list[float] = field(default_factory=lambda: [0.0] * 24)
    templates: dict[str, _TemplateTally] = field(default_factory=dict)
    first: float = math.inf
    last: float = -math.inf


def _usual_size(sizes: list[int]) -> int:
    known = sorted(s for s in sizes if s >= 0)
    if not known:
        return -1
    if len(known) < 1000:
        return known[-1]
    return known[math.ceil(0.999 * len(known)) - 1]


class _BaselineTally:
    """Per-edge tables of the calls added so far (in time order), measured by the serving code's own state."""

    def __init__(self) -> None:
        self.state = BehaviourState(RiskConfig(max_identities=10**7, max_edges=10**7))
        self.edges: dict[str, _EdgeTally] = {}
        self.nets: dict[str, Counter[tuple[str, str]]] = {}
        self.first = self.last = 0.0
        self.calls = 0

    def add(self, facts: CallFacts) -> None:
        activity = self.state.activity(facts)
        self.state.observe(facts, Learning.EVERYTHING)
        if not self.calls:
            self.first = facts.ts
        self.last = facts.ts
        self.calls += 1
        edge = self.edges.setdefault(f"{facts.caller} {facts.callee}", _EdgeTally())
        hour = int(facts.ts // 3600 % 24)
        edge.calls += 1
        edge.first, edge.last = min(edge.first, facts.ts), max(edge.last, facts.ts)
        edge.hours[hour] += 1
        edge.minute_max[hour] = max(edge.minute_max[hour], round(activity.calls_minute, 2))
        template = edge.templates.setdefault(facts.template, _TemplateTally())
        template.calls += 1
        template.first, template.last = min(template.first, facts.ts), max(template.last, facts.ts)
        template.ids_short = max(template.ids_short, round(activity.ids_short, 2))
        template.ids_long = max(template.ids_long, round(activity.ids_long, 2))
        template.walk = max(template.walk, activity.walk)
        template.methods.setdefault(facts.method, []).append(facts.size)
        narrow, wide = subnets(facts.address)
        if narrow:
            self.nets.setdefault(facts.caller, Counter())[(narrow, wide)] += 1

    def baseline(self, days: float | None = None) -> Baseline:
        """The tables so far (copied: adding more calls later does not change them); `days` as build_baseline."""
        if not self.calls:
            return EMPTY
        if days is None:
            days = (self.last - self.first) / DAY_S
        days = max(days, 1.0 / 24)
        return Baseline(
            round(days, 4),
            {
                key: EdgeBaseline(
                    e.calls,
                    tuple(e.hours),
                    tuple(e.minute_max),
                    {
                        name: TemplateBaseline(
                            t.calls,
                            t.ids_short,
                            t.ids_long,
                            t.walk,
                            {m: MethodBaseline(len(s), _usual_size(s)) for m, s in t.methods.items()},
                            round(t.last - t.first),
                        )
                        for name, t in e.templates.items()
                    },
                    round(e.last - e.first),
                )
                for key, e in self.edges.items()
            },
            {
                caller: frozenset(n for pair, _ in counts.most_common(_MAX_SUBNETS) for n in pair)
                for caller, counts in self.nets.items()
            },
        )


def build_baseline(calls: Sequence[CallFacts], days: float | None = None) -> Baseline:
    """The per-edge tables of these calls (in time order), measured by the serving code's own state; `days`: how
    long they cover (default: first to last call; a log with a day cut out of it covers a day less)."""
    tally = _BaselineTally()
    for facts in calls:
        tally.add(facts)
    return tally.baseline(days)


Gate = Callable[[list[float]], Learning]
"""What a call with this feature vector may teach the online state (serving's rule, `features.learning_for`)."""


def feature_rows(
    calls: Sequence[CallFacts], baseline: Baseline, start: float, stop: float, gate: Gate | None = None
) -> np.ndarray:
    """Feature vectors of the calls in [start, stop), with every earlier call replayed first (the state warm).

    `gate` None: every call teaches the online state everything (a first pass, before any band exists); else each
    call teaches what serving would let it teach under those bands, so calibration sees the same online state."""
    state = BehaviourState(RiskConfig(max_identities=10**7, max_edges=10**7))
    rows = []
    for facts in calls:
        if facts.ts >= stop:
            break
        if gate is None:
            if facts.ts >= start:
                rows.append(state.features(facts, baseline))
            state.observe(facts, Learning.EVERYTHING, baseline)
            continue
        row = state.features(facts, baseline)
        if facts.ts >= start:
            rows.append(row)
        state.observe(facts, gate(row), baseline)
    return np.asarray(rows, dtype=np.float32).reshape(-1, len(FEATURES))


def serving_gate(tables: SurpriseTables, alarm_surprise: float) -> Gate:
    """Serving's learning rule under these tables and alarm edge.

    The tables are read once, not per call (26 µs a call, a third of `model train`): a feature's surprise is a
    non-decreasing function of that feature alone (hinges of slope >= 0, then its cap; each float32 step rounds
    monotonically), so it reaches the alarm edge exactly when the feature reaches the least float32 that does."""
    thresholds = alarm_thresholds(tables, alarm_surprise)
    rules: dict[bytes, Learning] = {}

    def learning(row: list[float]) -> Learning:
        alarmed = np.asarray(row, dtype=np.float32) >= thresholds
        key = alarmed.tobytes()
        rule = rules.get(key)
        if rule is None:
            rule = rules[key] = learning_for(frozenset(FEATURE_NAMES[i] for i in np.flatnonzero(alarmed)))
        return rule

    return learning


def _ordered(values: np.ndarray) -> np.ndarray:
    """float32 values as integers in the same order (-0.0 and 0.0 both 0)."""
    bits = values.astype(np.float32).view(np.int32).astype(np.int64)
    return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)


def _unordered(keys: np.ndarray) -> np.ndarray:
    bits = np.where(keys < 0, (-keys) | 0x80000000, keys).astype(np.uint32)
    return bits.view(np.float32)


def alarm_thresholds(tables: SurpriseTables, alarm_surprise: float) -> np.ndarray:
    """Per feature, the least float32 value whose surprise (`tables.surprise`, as the gate read it per call) is at
    or past `alarm_surprise`: -inf when every value is, NaN when none is (NaN compares false, as a NaN surprise)."""
    n = tables.knots.shape[0]

    def alarmed(keys: np.ndarray) -> np.ndarray:
        surprise = tables.surprise(_unordered(keys)[None, :])[0]
        flags: np.ndarray = surprise >= alarm_surprise
        return flags

    low = np.full(n, _ordered(np.array([-np.inf]))[0])
    high = np.full(n, _ordered(np.array([np.inf]))[0])
    everywhere, somewhere = alarmed(low), alarmed(high)
    # Bisection on the ordered keys: alarmed(high) holds, alarmed(low) does not, until they are adjacent.
    while np.any(high - low > 1):
        middle = (low + high) // 2
        hit = alarmed(middle)
        high = np.where(hit, middle, high)
        low = np.where(hit, low, middle)
    thresholds = _unordered(high).copy()
    thresholds[everywhere] = -np.inf
    thresholds[~somewhere] = np.nan
    return thresholds


def surprise_tables(rows: np.ndarray) -> list[tuple[list[float], list[float], list[float]]]:
    """Per feature, the hinges of x -> -log10 P_benign(X >= x) (add-one smoothed), steeply up to log10(n + 1)
    just past the largest benign value, then one decade per `tail_unit`."""
    n = rows.shape[0]
    tables = []
    for i, feature in enumerate(FEATURES):
        values = np.sort(rows[:, i].astype(np.float64))
        candidates = sorted({float(values[0]), *(float(np.quantile(values, q)) for q in _QUANTILES), float(values[-1])})
        points: list[tuple[float, float]] = []
        for x in candidates:
            at_least = n - int(np.searchsorted(values, x, side="left"))
            s = -math.log10((at_least + 1) / (n + 1))
            if not points or (x > points[-1][0] and s > points[-1][1]):
                points.append((x, s if points else 0.0))
        top = points[-1][0]
        points.append((top + 0.01 * feature.tail_unit, max(points[-1][1], math.log10(n + 1))))
        tables.append(hinges(points, 1.0 / feature.tail_unit))
    return tables


@dataclass(frozen=True)
class Calibration:
    fpr_budget: float
    alarm_surprise: float
    deny_surprise: float
    allow_below: float
    max_risk: float
    held_out_rows: int
    held_out_alarm_rate: float
    held_out_deny_rate: float

    def as_json(self) -> dict[str, Any]:
        return {
            "fpr_budget": self.fpr_budget,
            "alarm_surprise": round(self.alarm_surprise, 4),
            "deny_surprise": round(self.deny_surprise, 4),
            "alarm_score": self.allow_below,
            "deny_score": self.max_risk,
            "held_out_rows": self.held_out_rows,
            "held_out_alarm_rate": round(self.held_out_alarm_rate, 6),
            "held_out_deny_rate": round(self.held_out_deny_rate, 6),
        }


def _caps(deny: float) -> list[float]:
    # A hair under the deny edge, so float32 rounding cannot lift a capped feature's score past default_max_risk.
    return [deny - 0.01 if f.legitimate_change else 1e9 for f in FEATURES]


def calibrate(
    tables: list[tuple[list[float], list[float], list[float]]],
    held_out: Sequence[np.ndarray],
    fpr_budget: float,
    config: RiskConfig,
) -> tuple[SurpriseTables, Calibration]:
    """Band edges from held-out benign rows (one array per site: the deny edge must hold on each)."""
    uncapped = pack(tables, [1e9] * len(FEATURES))
    tops = [uncapped.surprise(rows).max(axis=1) for rows in held_out if len(rows)]
    pooled = np.concatenate(tops) if tops else np.zeros(0, np.float32)
    if len(pooled) < _MIN_ROWS:
        raise TrainingDataError(f"only {len(pooled)} held-out calls; at least {_MIN_ROWS} are needed")
    floor = -math.log10(fpr_budget)
    alarm = max(floor, float(np.quantile(pooled, 1 - fpr_budget)))
    deny = max(
        alarm + 1.0,
        float(np.quantile(pooled, 1 - fpr_budget / 10)),
        *(float(np.quantile(t, 1 - fpr_budget)) for t in tops),
    )
    capped = pack(tables, _caps(deny))
    bands = band_map(alarm, deny, config.allow_below, config.default_max_risk)
    held = np.concatenate([rows for rows in held_out if len(rows)])
    scores = score(capped.surprise(held), bands)
    return capped, Calibration(
        fpr_budget,
        alarm,
        deny,
        config.allow_below,
        config.default_max_risk,
        len(held),
        float((scores >= config.allow_below).mean()),
        float((scores > config.default_max_risk).mean()),
    )


@dataclass(frozen=True)
class TrainedModel:
    blob: bytes
    version: str
    calibration: Calibration
    baseline: Baseline
    rows: int


def _write(
    tables: SurpriseTables, calibration: Calibration, baseline: Baseline, training: dict[str, Any]
) -> TrainedModel:
    bands = band_map(
        calibration.alarm_surprise, calibration.deny_surprise, calibration.allow_below, calibration.max_risk
    )
    digest = hashlib.sha256()
    for array in (tables.knots, tables.widths, tables.slopes, tables.caps, *bands):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(baseline.digest().encode())
    version = f"surprise-v2-{digest.hexdigest()[:12]}"
    metadata = {
        META_SCHEMA: FEATURE_SCHEMA,
        META_NAMES: json.dumps(list(FEATURE_NAMES)),
        META_CALIBRATION: json.dumps(calibration.as_json(), sort_keys=True),
        META_VERSION: version,
        META_TRAINING: json.dumps(training, sort_keys=True),
        META_BASELINE: baseline.encode(),
        META_BASELINE_DIGEST: baseline.digest(),
    }
    return TrainedModel(to_onnx(tables, bands, metadata), version, calibration, baseline, training["rows"])


def _environment() -> dict[str, str]:
    return {"numpy": np.__version__, "python": platform.python_version()}


def _folds(first: float, last: float) -> list[tuple[float, float]]:
    """Whole days of the log (at least two folds; a remainder under half a day joins the last day): each is scored
    against a baseline of the others, so every fold is a day the baseline never saw, as the next day is in serving,
    and every hour of the day is in both the distributions' folds and the held-out ones. A log under two days is
    cut in halves."""
    span = last - first
    days = int(span // DAY_S)
    if span - days * DAY_S >= DAY_S / 2:
        days += 1
    if days < 2:
        return [(-math.inf, first + span / 2), (first + span / 2, math.inf)]
    cuts = [first + i * DAY_S for i in range(1, days)]
    return list(zip([-math.inf, *cuts], [*cuts, math.inf], strict=True))


def train_site(
    calls: Sequence[CallFacts],
    *,
    fpr_budget: float = DEFAULT_FPR_BUDGET,
    config: RiskConfig | None = None,
    source: str = "",
    skipped: dict[str, int] | None = None,
) -> TrainedModel:
    """A model for one site from its normal calls in time order (see the module docstring)."""
    config = config or RiskConfig()
    if len(calls) < 4 * _MIN_ROWS:
        raise TrainingDataError(
            f"only {len(calls)} usable calls (skipped: {dict(skipped or {}) or 'none'}); at least {4 * _MIN_ROWS} "
            "are needed"
        )
    folds = _folds(calls[0].ts, calls[-1].ts)
    span = calls[-1].ts - calls[0].ts

    def days_without(lo: float, hi: float) -> float:
        return (span - (min(hi, calls[-1].ts) - max(lo, calls[0].ts))) / DAY_S

    # The last fold's baseline is the whole log's up to that fold: one replay gives both (a replay of the log is
    # most of training's time; this one was half a log's worth of the five).
    whole = _BaselineTally()
    for facts in calls:
        if facts.ts >= folds[-1][0]:
            break
        whole.add(facts)
    before_last = whole.baseline(days_without(*folds[-1]))
    for facts in calls[whole.calls :]:
        whole.add(facts)
    baselines = [
        build_baseline([c for c in calls if not lo <= c.ts < hi], days_without(lo, hi)) for lo, hi in folds[:-1]
    ]
    baselines.append(before_last)

    def rows(gate: Gate | None) -> list[np.ndarray]:
        return [feature_rows(calls, b, lo, hi, gate) for b, (lo, hi) in zip(baselines, folds, strict=True)]

    scored = rows(None)
    tables, calibration = calibrate(surprise_tables(np.concatenate(scored[0::2])), scored[1::2], fpr_budget, config)
    # Again, the online state learning only what serving would let it learn under those bands.
    scored = rows(serving_gate(tables, calibration.alarm_surprise))
    fit, held = np.concatenate(scored[0::2]), scored[1::2]
    tables, calibration = calibrate(surprise_tables(fit), held, fpr_budget, config)
    baseline = whole.baseline()
    training = {
        "source": source,
        "rows": len(calls),
        "skipped": dict(skipped or {}),
        "distribution_rows": len(fit),
        "held_out_rows": int(sum(len(h) for h in held)),
        "baseline_edges": len(baseline.edges),
        "baseline_days": baseline.days,
        **_environment(),
    }
    return _write(tables, calibration, baseline, training)


def train_bundled(
    sites: Sequence[Sequence[CallFacts]],
    *,
    fpr_budget: float = DEFAULT_FPR_BUDGET,
    config: RiskConfig | None = None,
    source: str = "",
) -> TrainedModel:
    """The model shipped with the package: no baseline; each site replayed from a cold start; distributions from
    the even-numbered sites, band edges from the odd-numbered ones (the deny edge must hold on every one)."""
    config = config or RiskConfig()
    if len(sites) < 2:
        raise TrainingDataError("the bundled model needs at least two sites (one for distributions, one held out)")
    rows = [feature_rows(calls, EMPTY, -math.inf, math.inf) for calls in sites]
    tables, calibration = calibrate(surprise_tables(np.concatenate(rows[0::2])), rows[1::2], fpr_budget, config)
    # Again, each site's online state learning only what serving would let it learn under those bands: a cold
    # start where every call taught everything would calibrate a model for a state serving never has.
    gate = serving_gate(tables, calibration.alarm_surprise)
    rows = [feature_rows(calls, EMPTY, -math.inf, math.inf, gate) for calls in sites]
    fit = np.concatenate(rows[0::2])
    tables, calibration = calibrate(surprise_tables(fit), rows[1::2], fpr_budget, config)
    training = {
        "source": source,
        "rows": int(sum(len(r) for r in rows)),
        "sites": len(sites),
        "distribution_rows": len(fit),
        **_environment(),
    }
    return _write(tables, calibration, EMPTY, training)


def write_atomically(blob: bytes, out: str | Path) -> Path:
    """Written beside the target and renamed over it: a server watching the file never reads half a model."""
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(blob)
    partial.replace(target)
    return target

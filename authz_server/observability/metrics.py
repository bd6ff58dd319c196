"""Prometheus metrics of one server process.

Two kinds, so the request path pays nothing for either:
- per-decision series (`DecisionMetrics`) are updated on the decision log's
  writer thread from the records it dequeues, not on the request path;
- stage facts (versions, reload counts, cache statistics, bundle age) are read
  from each StageSource's `status()` when Prometheus scrapes (`ServerCollector`),
  so stages know nothing about metrics.
"""

from __future__ import annotations

import datetime as dt
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from authz_server.audit.record import decision_mode
from authz_server.authorizer import StageTimings
from authz_server.call import Call
from authz_server.decision import Decision
from authz_server.risk.outcome import RiskStatus

# The in-process decision targets a p99 under 200 µs, so the buckets are dense below a millisecond.
LATENCY_BUCKETS_S = (
    0.000025,
    0.00005,
    0.0001,
    0.00015,
    0.0002,
    0.0003,
    0.0005,
    0.00075,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
)
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
STAGES = ("parse", "identity", "policy", "risk", "response")


class _Histogram:
    """Bucket counts and a sum, updated by one thread and read whole at scrape time."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        # Prometheus buckets are "less than or equal": the first bound >= value.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def add_to(self, family: HistogramMetricFamily, labels: list[str]) -> None:
        cumulative, buckets = 0, []
        for bound, count in zip((*map(floatToGoString, self.bounds), "+Inf"), list(self.counts), strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        family.add_metric(labels, buckets, self.total)


def _counters(
    name: str, documentation: str, labels: tuple[str, ...], counts: dict[tuple[str, str, str], int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for values, count in list(counts.items()):  # a copy: the writer thread may add a key meanwhile
        family.add_metric(list(values), count)
    return family


class DecisionMetrics(Collector):
    """Per-decision series; a DecisionObserver of the decision log, and the collector that exposes them.

    Only the decision log's writer thread calls `observe`, so the counts are plain ints and lists with no lock:
    prometheus_client's Counter and Histogram take a lock and walk every bucket on each update, ~11 µs of the
    writer's CPU per decision (which the request path waits for through the GIL); these take ~3 µs
    (benchmarks/RESULTS.md, "What each change bought"). A scrape may read a decision's counter before its histograms;
    each histogram's count is the sum of its own buckets, so it is always consistent in itself.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._decisions: dict[tuple[str, str, str], int] = {}
        self._duration = _Histogram(LATENCY_BUCKETS_S)
        self._stages = tuple(_Histogram(LATENCY_BUCKETS_S) for _ in STAGES)
        self._risk_score = _Histogram(SCORE_BUCKETS)
        self._risk_assessments: dict[tuple[str, str, str], int] = {}
        self._budget_overruns = 0
        registry.register(self)

    def observe(self, call: Call, decision: Decision, timings: StageTimings) -> None:
        key = (decision.verdict.value, decision.reason, decision_mode(decision))
        self._decisions[key] = self._decisions.get(key, 0) + 1
        self._duration.observe(timings.total_us / 1e6)
        parse, identity, policy, risk, response = self._stages
        parse.observe(timings.parse_us / 1e6)
        identity.observe(timings.identity_us / 1e6)
        response.observe(timings.response_us / 1e6)
        if decision.policy is not None:
            policy.observe(timings.policy_us / 1e6)
        outcome = decision.risk
        if outcome is not None:
            risk.observe(timings.risk_us / 1e6)
            assessed = (outcome.status.value, outcome.action.value, "true" if outcome.shadow else "false")
            self._risk_assessments[assessed] = self._risk_assessments.get(assessed, 0) + 1
            if outcome.status is RiskStatus.SCORED and outcome.score is not None:
                self._risk_score.observe(outcome.score)
            elif outcome.status is RiskStatus.SKIPPED:
                self._budget_overruns += 1

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        decisions = _counters(
            "authz_decisions", "Decisions taken, by verdict, reason code and mode.", ("verdict", "reason", "mode"),
            self._decisions,
        )  # fmt: skip
        duration = HistogramMetricFamily(
            "authz_decision_duration_seconds", "In-process time to decide one call (parse to serialized response)."
        )
        self._duration.add_to(duration, [])
        stages = HistogramMetricFamily(
            "authz_stage_duration_seconds", "Time spent in each stage of the decision path.", labels=("stage",)
        )
        for stage, histogram in zip(STAGES, self._stages, strict=True):
            histogram.add_to(stages, [stage])
        score = HistogramMetricFamily(
            "authz_risk_score", "Risk scores of scored calls (0 = normal, 1 = most anomalous)."
        )
        self._risk_score.add_to(score, [])
        assessments = _counters(
            "authz_risk_assessments", "Risk assessments by status (scored, skipped, disabled) and action.",
            ("status", "action", "shadow"), self._risk_assessments,
        )  # fmt: skip
        overruns = CounterMetricFamily(
            "authz_risk_budget_overruns",
            "Calls whose risk scoring was skipped because it could not finish within its latency budget.",
        )
        overruns.add_metric([], self._budget_overruns)
        yield from (decisions, duration, stages, score, assessments, overruns)


@dataclass
class StageLoad:
    """When the stage object in force was built, as seen by the server (bundle/policy/model age)."""

    loaded_at: float
    replacements: int = 0


class StageClock:
    """Remembers when each stage was last (re)placed; serve.py tells it, metrics read it."""

    def __init__(self) -> None:
        self._loads: dict[str, StageLoad] = {}

    def loaded(self, stage: str, now: float | None = None) -> None:
        stamp = time.time() if now is None else now
        previous = self._loads.get(stage)
        replacements = 0 if previous is None else previous.replacements + 1
        self._loads[stage] = StageLoad(stamp, replacements)

    def get(self, stage: str) -> StageLoad | None:
        return self._loads.get(stage)


class LogCounters(Protocol):
    """What the collector reads from the decision log (DecisionLog satisfies it)."""

    @property
    def dropped(self) -> int: ...

    @property
    def write_failures(self) -> int: ...

    @property
    def written(self) -> int: ...

    @property
    def queued(self) -> int: ...


StatusReader = Callable[[], Mapping[str, str]]

# Status keys every stage may report, whatever its name for them.
_RELOAD_KEYS = (("reloads", "reload_failures"), ("bundle_reloads", "bundle_reload_failures"))


def _number(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _timestamp(value: str | None) -> float | None:
    if not value:
        return None
    number = _number(value)
    if number is not None:
        return number
    try:
        return dt.datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


class ServerCollector(Collector):
    """Scrape-time facts: readiness, stage versions and states, reloads, caches, ages, decision log health."""

    def __init__(
        self,
        stages: Callable[[], Mapping[str, StatusReader]],
        ready: Callable[[], bool],
        clock: StageClock,
        log: LogCounters | None = None,
    ) -> None:
        self._stages = stages
        self._ready = ready
        self._clock = clock
        self._log = log

    def describe(self) -> list[Metric]:
        # Nothing fixed to describe: collecting at registration would read stages not built yet.
        return []

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        ready = float(self._ready())
        yield GaugeMetricFamily("authz_ready", "1 when every stage is loaded and checks are answered.", ready)
        info = GaugeMetricFamily(
            "authz_stage_info", "The version in force of each stage (1 per live version).", labels=("stage", "version")
        )
        up = GaugeMetricFamily(
            "authz_stage_up", "1 when the stage reports state ok, else 0.", labels=("stage", "state")
        )
        reloads = CounterMetricFamily(
            "authz_stage_reloads", "Reloads of each stage's inputs, by result.", labels=("stage", "result")
        )
        age = GaugeMetricFamily(
            "authz_stage_age_seconds",
            "Seconds since the stage in force was built (identity: bundle age; policy; risk: model).",
            labels=("stage",),
        )
        loaded = GaugeMetricFamily(
            "authz_stage_loaded_timestamp_seconds", "When the stage in force was built.", labels=("stage",)
        )
        hits = CounterMetricFamily("authz_cache_hits", "Cache hits, by cache.", labels=("cache",))
        misses = CounterMetricFamily("authz_cache_misses", "Cache misses, by cache.", labels=("cache",))
        ratio = GaugeMetricFamily(
            "authz_cache_hit_ratio", "Hits / (hits + misses) since start, by cache.", labels=("cache",)
        )
        expiry = GaugeMetricFamily(
            "authz_identity_bundle_expiry_timestamp_seconds", "Earliest expiry of a trusted bundle authority."
        )
        source = GaugeMetricFamily(
            "authz_identity_source_info",
            "Where trust bundles come from and the Workload API connection state.",
            labels=("source", "workload_api"),
        )
        disconnects = CounterMetricFamily(
            "authz_identity_workload_api_disconnects", "Times the Workload API stream was lost."
        )
        policy_size = GaugeMetricFamily(
            "authz_policy_objects", "Policy declarations and rules in force.", labels=("kind",)
        )
        for stage, read in self._stages().items():
            try:
                status = read()
            except Exception:  # a broken status() must not break the scrape
                status = {"state": "status-error"}
            version = status.get("version", "")
            info.add_metric([stage, version], 1)
            state = status.get("state", "ok")
            up.add_metric([stage, state], 1 if state == "ok" else 0)
            for ok_key, failed_key in _RELOAD_KEYS:
                done, failed = _number(status.get(ok_key)), _number(status.get(failed_key))
                if done is not None:
                    reloads.add_metric([stage, "success"], done)
                if failed is not None:
                    reloads.add_metric([stage, "failure"], failed)
            load = self._clock.get(stage)
            if load is not None:
                age.add_metric([stage], max(0.0, now - load.loaded_at))
                loaded.add_metric([stage], load.loaded_at)
            hit, miss = _number(status.get("cache_hits")), _number(status.get("cache_misses"))
            if hit is not None and miss is not None:
                hits.add_metric([stage], hit)
                misses.add_metric([stage], miss)
                ratio.add_metric([stage], hit / (hit + miss) if hit + miss else 0.0)
            if stage == "identity":
                expires = _timestamp(status.get("bundles_expire_at"))
                if expires is not None:
                    expiry.add_metric([], expires)
                source.add_metric([status.get("source", ""), status.get("workload_api", "")], 1)
                lost = _number(status.get("workload_api_disconnects"))
                if lost is not None:
                    disconnects.add_metric([], lost)
            if stage == "policy":
                for kind in ("documents", "rules"):
                    count = _number(status.get(kind))
                    if count is not None:
                        policy_size.add_metric([kind], count)
        yield from (info, up, reloads, age, loaded, hits, misses, ratio, expiry, source, disconnects, policy_size)
        yield from self._log_metrics()

    def _log_metrics(self) -> Iterator[Metric]:
        decision_log = self._log
        if decision_log is None:
            return
        dropped = CounterMetricFamily(
            "authz_decision_log_dropped",
            "Decision lines lost: queue full (a slow destination), or not written out by shutdown.",
        )
        dropped.add_metric([], decision_log.dropped)
        failed = CounterMetricFamily(
            "authz_decision_log_write_failures", "Decision lines the destination refused (disk full, closed pipe)."
        )
        failed.add_metric([], decision_log.write_failures)
        written = CounterMetricFamily("authz_decision_log_lines", "Decision lines written.")
        written.add_metric([], decision_log.written)
        depth = GaugeMetricFamily("authz_decision_log_queue_depth", "Decisions waiting for the log writer.")
        depth.add_metric([], decision_log.queued)
        yield from (dropped, failed, written, depth)


class AdmissionCounters(Protocol):
    """What the admission collector reads (transport.admission.Admission satisfies it)."""

    @property
    def shed(self) -> Mapping[str, int]: ...

    @property
    def decided(self) -> int: ...

    @property
    def late(self) -> int: ...

    @property
    def expected_cost_s(self) -> float: ...

    @property
    def floods(self) -> int: ...


class AdmissionCollector(Collector):
    """Calls shed before deciding, decided calls answered too late, and the cost admission expects (scrape time)."""

    def __init__(self, admission: AdmissionCounters) -> None:
        self._admission = admission

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        admission = self._admission
        shed = CounterMetricFamily(
            "authz_shed", "Calls answered 503 'overloaded' without being decided, by reason.", labels=("reason",)
        )
        for reason, count in admission.shed.items():
            shed.add_metric([str(reason)], count)
        decided = CounterMetricFamily("authz_admission_decided", "Calls admitted and decided.")
        decided.add_metric([], admission.decided)
        late = CounterMetricFamily(
            "authz_admission_late", "Decided calls whose answer left after their gRPC deadline (Envoy gave up)."
        )
        late.add_metric([], admission.late)
        cost = GaugeMetricFamily(
            "authz_admission_expected_decision_seconds",
            "Moving average of the decision time; a call whose deadline leaves less (plus reserve_ms) is shed.",
        )
        cost.add_metric([], admission.expected_cost_s)
        floods = CounterMetricFamily(
            "authz_admission_floods",
            "h2: times one turn of the event loop read more Checks than the process may hold after a quiet spell; "
            "for the next 2 s a Check may wait at most admission.overload_wait_ms.",
        )
        floods.add_metric([], admission.floods)
        yield from (shed, decided, late, cost, floods)

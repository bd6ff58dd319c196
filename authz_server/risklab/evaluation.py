"""`authz-server model evaluate`: what the risk stage catches, and what it costs benign traffic, on a simulated site.

The flow is the one an operator follows:

1. **Warm days.** The site runs `warm_days` days with the bundled model; every call goes through the
   Authorizer as `serve` builds it, and the decision log is written to a file.
2. **Site baseline.** `model train --baseline` on that decision log gives the site-trained model.
3. **Evaluation day.** The next day (with a deploy that moves a workload to `/v2/` routes at 10:30 local and a
   3x peak at 13:00, whatever else the site does that day) is replayed, for each model, on a fresh server that
   first sees the `lead_hours` before it: once clean, once with `per_kind` attack episodes of each kind mixed
   in (attacks.py; every attack call is granted by policy).

Measured, per model: benign false-positive rate on the clean day (alarm: score at or above `risk.allow_below`,
the edge training sets from the FPR budget; deny band: denied with reason `risk`), overall and for the worst
workload; per attack kind on the attacked day: recall (attack calls alarmed), recall in the deny band, recall at
the threshold that holds the clean day's benign FPR at the budget, episodes with at least one alarm, and
top-factor accuracy (alarmed attack calls whose first factor is one of the kind's accepted factors).
Attack calls that policy denied (there should be none) are counted separately.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import json
import math
import multiprocessing
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from authz_server.risklab.attacks import KINDS, Episode, plan_attacks
from authz_server.risklab.requests import CertificateCache, LabServer, Verdict, lab_ca, read_verdicts
from authz_server.risklab.simulator import BENIGN, DAY, Event, Timeline
from authz_server.risklab.sites import DIURNAL, SiteSpec

DEFAULT_FPR_BUDGET = 0.001
ALLOW_BELOW = 0.3
"""`risk.allow_below`, the alarm edge (the lab runs the default configuration)."""


@dataclass(frozen=True)
class KindResult:
    kind: str
    episodes: int
    episodes_caught: int
    calls: int
    alarmed: int
    denied: int
    alarmed_at_budget: int
    top_factor_right: int
    policy_denied: int
    top_factors: dict[str, int]

    @property
    def recall(self) -> float | None:
        return self.alarmed / self.calls if self.calls else None

    @property
    def recall_at_budget(self) -> float | None:
        return self.alarmed_at_budget / self.calls if self.calls else None

    @property
    def deny_recall(self) -> float | None:
        return self.denied / self.calls if self.calls else None

    @property
    def top_factor_accuracy(self) -> float | None:
        return self.top_factor_right / self.alarmed if self.alarmed else None


@dataclass(frozen=True)
class ModelResult:
    model: str
    """`bundled` or `site-trained`."""
    model_version: str
    benign_calls: int
    benign_alarmed: int
    benign_denied: int
    benign_policy_denied: int
    worst_workload: str
    worst_workload_fpr: float
    budget_threshold: float
    """The lowest score threshold at which the clean day's benign FPR is within the budget."""
    kinds: tuple[KindResult, ...]
    benign_top_factors: dict[str, int] = field(default_factory=dict)

    @property
    def fpr(self) -> float:
        return self.benign_alarmed / self.benign_calls if self.benign_calls else 0.0

    @property
    def deny_fpr(self) -> float:
        return self.benign_denied / self.benign_calls if self.benign_calls else 0.0


@dataclass
class Evaluation:
    site: str
    seed: int
    scale: float
    warm_days: float
    lead_hours: float
    fpr_budget: float
    warm_calls: int = 0
    day_calls: int = 0
    attack_calls: int = 0
    training: str = ""
    results: list[ModelResult] = field(default_factory=list)
    episodes: list[Episode] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in asdict(self).items() if k not in ("results", "episodes")}
        out["results"] = []
        for r in self.results:
            entry: dict[str, Any] = {k: v for k, v in asdict(r).items() if k != "kinds"}
            entry.update(fpr=r.fpr, deny_fpr=r.deny_fpr)
            entry["kinds"] = [
                {**asdict(k), "recall": k.recall, "deny_recall": k.deny_recall, "recall_at_budget": k.recall_at_budget,
                 "top_factor_accuracy": k.top_factor_accuracy}
                for k in r.kinds
            ]  # fmt: skip
            out["results"].append(entry)
        out["episodes"] = [asdict(e) for e in self.episodes]
        return out


Trainer = Callable[[Sequence[Path], Path, float], str]
"""(decision logs, output model, FPR budget) -> a one-line summary of what training did."""


def train_site_model(logs: Sequence[Path], out: Path, fpr_budget: float) -> str:
    """`model train --baseline LOG... --fpr-budget B --out OUT`, as the CLI runs it."""
    from authz_server.risklab.training import read_decision_logs, train_site, usable, write_atomically

    log = read_decision_logs(logs)
    calls = usable(log)
    model = train_site(calls, fpr_budget=fpr_budget, source=f"lab decision log ({log.lines} lines)",
                       skipped=dict(log.skipped))  # fmt: skip
    write_atomically(model.blob, out)
    c = model.calibration
    return (
        f"{model.version}: {len(calls)} calls, {len(model.baseline.edges)} edges; held-out benign "
        f"{100 * c.held_out_alarm_rate:.3f}% alarm, {100 * c.held_out_deny_rate:.3f}% deny"
    )


def schedule_evaluation_day(timeline: Timeline, day_start: float) -> None:
    """The operations every evaluation day has: a deploy moving to /v2/ routes at 10:30 local, a 3x peak at 13:00
    local (on the busiest diurnal workloads, so both touch a lot of traffic)."""
    site = timeline.site
    diurnal = sorted((w for w in site.workloads if w.habit == DIURNAL), key=lambda w: -w.rate)
    local = -site.tz_offset_h * 3600
    deployed = diurnal[0]
    timeline.deploy(day_start + local + 10.5 * 3600, deployed.name, deployed.edges[0].callee)
    peaked = diurnal[1] if len(diurnal) > 1 else diurnal[0]
    timeline.peak(day_start + local + 13 * 3600, peaked.name, 3.0, hours=2.0)


def _budget_threshold(scores: Sequence[float], budget: float) -> float:
    """Lowest threshold t with (benign scores >= t) / all <= budget."""
    if not scores:
        return 1.0
    ranked = sorted(scores, reverse=True)
    allowed = math.floor(budget * len(ranked))
    if allowed >= len(ranked):
        return 0.0
    # Alarms are scores >= t; t just above the (allowed+1)-th highest score keeps alarms <= allowed.
    return math.nextafter(ranked[allowed], math.inf)


def _alarmed(v: Verdict, threshold: float = ALLOW_BELOW) -> bool:
    return v.risk_denied or (v.score is not None and v.score >= threshold)


@dataclass(frozen=True)
class _Run:
    workdir: Path
    model: str
    events: Sequence[Event]
    prefix: str
    lead: bool = True
    """Replay the lead hours first."""
    read: bool = True
    """Read the verdicts back from the decision log."""


_FORKED: tuple[list[_Run], SiteSpec, CertificateCache, Sequence[Event]] | None = None
"""What forked replay processes read (inherited, not pickled: the CA's key and the events stay put)."""


def _replay(
    run: _Run, site: SiteSpec, certificates: CertificateCache, lead: Sequence[Event]
) -> tuple[dict[str, Verdict], str]:
    """Lead hours then the day through a fresh server; verdicts of the day's calls by request id, model version."""
    with LabServer(run.workdir, site, certificates, model=run.model) as server:
        if run.lead:
            server.replay(lead, prefix="lead")
        server.replay(run.events, prefix=run.prefix)
        stage = server.authorizer.runtime.risk
        version = stage.version if stage is not None else "-"
    if not run.read:
        return {}, version
    verdicts = {rid: v for rid, v in read_verdicts(server.decision_log) if rid.startswith(run.prefix + "-")}
    return verdicts, version


def _replay_forked(index: int) -> tuple[dict[str, Verdict], str]:
    assert _FORKED is not None
    runs, site, certificates, lead = _FORKED
    return _replay(runs[index], site, certificates, lead)


def _replay_all(
    runs: list[_Run], site: SiteSpec, certificates: CertificateCache, lead: Sequence[Event], workers: int
) -> list[tuple[dict[str, Verdict], str]]:
    """Each run on its own fresh server; in `workers` forked processes (each replay is one core's work)."""
    global _FORKED
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [_replay(run, site, certificates, lead) for run in runs]
    _FORKED = (runs, site, certificates, lead)
    try:
        context = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            return list(pool.map(_replay_forked, range(len(runs))))
    finally:
        _FORKED = None


def _model_result(
    name: str, version: str, day: Sequence[Event], clean: dict[str, Verdict], attacked: Sequence[Event],
    attacked_verdicts: dict[str, Verdict], episodes: Sequence[Episode], budget: float,
) -> ModelResult:  # fmt: skip
    per_workload: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    scores: list[float] = []
    benign_alarmed = benign_denied = policy_denied = 0
    benign_factors: Counter[str] = Counter()
    for i, event in enumerate(day, 1):
        v = clean[f"day-{i}"]
        if v.verdict == "deny" and not v.risk_denied:
            policy_denied += 1
            continue
        counts = per_workload[event.caller]
        counts[0] += 1
        scores.append(1.0 if v.risk_denied and v.score is None else (v.score or 0.0))
        if _alarmed(v):
            benign_alarmed += 1
            counts[1] += 1
            benign_factors[v.top_factor or "-"] += 1
        benign_denied += v.risk_denied
    threshold = _budget_threshold(scores, budget)
    worst, worst_fpr = "-", 0.0
    for workload, (calls, alarms) in sorted(per_workload.items()):
        if calls and alarms / calls > worst_fpr:
            worst, worst_fpr = workload, alarms / calls
    by_kind: dict[str, list[tuple[Event, Verdict]]] = defaultdict(list)
    for i, event in enumerate(attacked, 1):
        if event.label != BENIGN:
            by_kind[event.label].append((event, attacked_verdicts[f"attack-{i}"]))
    accepted = {e.id: e.accepted for e in episodes}
    kinds = []
    for kind in KINDS:
        attack = by_kind.get(kind, [])
        kind_episodes = [e for e in episodes if e.kind == kind]
        caught = {e.episode for e, v in attack if _alarmed(v)}
        alarmed = [(e, v) for e, v in attack if _alarmed(v)]
        factors = Counter(v.top_factor or "-" for _, v in alarmed)
        kinds.append(KindResult(
            kind, len(kind_episodes), len(caught), len(attack), len(alarmed), sum(v.risk_denied for _, v in attack),
            sum(_alarmed(v, threshold) for _, v in attack),
            sum(v.top_factor in accepted[e.episode] for e, v in alarmed),
            sum(v.verdict == "deny" and not v.risk_denied for _, v in attack), dict(factors.most_common()),
        ))  # fmt: skip
    return ModelResult(
        name, version, len(scores), benign_alarmed, benign_denied, policy_denied, worst, worst_fpr, threshold,
        tuple(kinds), dict(benign_factors.most_common(8)),
    )  # fmt: skip


def evaluate(
    site: SiteSpec,
    workdir: Path,
    *,
    warm_days: float = 3.0,
    lead_hours: float = 6.0,
    per_kind: int = 8,
    fpr_budget: float = DEFAULT_FPR_BUDGET,
    attack_seed: int = 101,
    bundled_model: str = "",
    trainer: Trainer = train_site_model,
    progress: Callable[[str], None] = lambda _: None,
    scale: float = 1.0,
    workers: int = 2,
) -> Evaluation:
    started = time.perf_counter()
    result = Evaluation(site.name, site.seed, scale, warm_days, lead_hours, fpr_budget)
    timeline = Timeline(site)
    day_start = site.start + warm_days * DAY
    schedule_evaluation_day(timeline, day_start)
    certificates = CertificateCache(lab_ca(site.start))
    lead_from = day_start - lead_hours * 3600

    warm_events = list(timeline.events(day_start))
    lead = [e for e in warm_events if e.ts >= lead_from]
    result.warm_calls = len(warm_events)
    # The warm days run as `workers` consecutive stretches, each on its own server (a restart between them, as
    # any deployment has), so the cores share them; each writes its own decision log, read in time order.
    segments = max(1, workers)
    cuts = [round(len(warm_events) * i / segments) for i in range(segments + 1)]
    warm_runs = [
        _Run(workdir / f"warm-{i}", bundled_model, warm_events[cuts[i] : cuts[i + 1]], "warm", lead=False, read=False)
        for i in range(segments)
    ]
    progress(f"warm days: {warm_days:g} days of {site.name} ({len(warm_events)} calls) through the bundled model")
    _replay_all(warm_runs, site, certificates, [], workers)
    logs = [run.workdir / "decisions.jsonl" for run in warm_runs]
    del warm_events, warm_runs
    site_model = workdir / "site.onnx"
    progress(f"model train --baseline {' '.join(str(p) for p in logs)}")
    result.training = trainer(logs, site_model, fpr_budget)

    day = list(timeline.events(day_start + DAY))
    result.day_calls = len(day)
    episodes, attack_events = plan_attacks(site, lead + day, day_start, per_kind, attack_seed)
    result.episodes, result.attack_calls = episodes, len(attack_events)
    attacked = list(heapq.merge(day, attack_events, key=lambda e: e.ts))

    runs = [
        _Run(workdir / f"{name}-{variant}", model, events, prefix)
        for name, model in (("bundled", bundled_model), ("site-trained", str(site_model)))
        for variant, events, prefix in (("clean", day, "day"), ("attacked", attacked, "attack"))
    ]
    progress(f"evaluation day: {len(day)} calls, clean and with {len(episodes)} attack episodes "
             f"({len(attack_events)} calls), for both models ({workers} processes)")  # fmt: skip
    outcomes = _replay_all(runs, site, certificates, lead, workers)
    for i, name in enumerate(("bundled", "site-trained")):
        (clean, version), (hit, _) = outcomes[2 * i], outcomes[2 * i + 1]
        result.results.append(_model_result(name, version, day, clean, attacked, hit, episodes, fpr_budget))
    result.seconds = time.perf_counter() - started
    return result


def remove_workdir(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)


# --- output ------------------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def format_table(evaluation: Evaluation) -> str:
    e = evaluation
    lines = [
        f"site {e.site} (seed {e.seed}, scale {e.scale:g}): {e.warm_days:g} warm days ({e.warm_calls} calls), "
        f"evaluation day {e.day_calls} calls + {e.attack_calls} attack calls in {len(e.episodes)} episodes; "
        f"FPR budget {e.fpr_budget:g}; {e.seconds:.0f} s",
        f"site model: {e.training}",
    ]
    for r in e.results:
        lines += [
            "",
            f"{r.model} model {r.model_version}: benign FPR {_pct(r.fpr)} at the alarm edge ({ALLOW_BELOW}), deny band "
            f"{_pct(r.deny_fpr)} ({r.benign_denied} of {r.benign_calls}); worst workload {r.worst_workload} "
            f"{_pct(r.worst_workload_fpr)}; budget threshold {r.budget_threshold:.3f}",
        ]
        if r.benign_policy_denied:
            lines.append(f"  ({r.benign_policy_denied} benign calls denied by policy, not counted)")
        if r.benign_top_factors:
            lines.append("  benign alarms by top factor: " + ", ".join(f"{k} {v}" for k, v in
                                                                        r.benign_top_factors.items()))  # fmt: skip
        header = (f"  {'attack kind':18} {'episodes':>8} {'caught':>6} {'calls':>6} {'recall':>7} {'@budget':>7} "
                  f"{'denied':>7} {'factor ok':>9}  top factors")  # fmt: skip
        lines += [header, "  " + "-" * (len(header) + 10)]
        for k in r.kinds:
            top = ", ".join(f"{n} {c}" for n, c in list(k.top_factors.items())[:3])
            lines.append(
                f"  {k.kind:18} {k.episodes:>8} {k.episodes_caught:>6} {k.calls:>6} {_pct(k.recall):>7} "
                f"{_pct(k.recall_at_budget):>7} {_pct(k.deny_recall):>7} {_pct(k.top_factor_accuracy):>9}  {top}"
                + (f"  ({k.policy_denied} denied by policy)" if k.policy_denied else "")
            )
    return "\n".join(lines) + "\n"


def format_json(evaluation: Evaluation) -> str:
    return json.dumps(evaluation.as_dict(), indent=2) + "\n"

"""`authz-server model evaluate`: precision, recall and false-positive rate per labelled scenario.

Each scenario is a warm baseline of the synthetic mesh followed by an hour of
normal traffic with the scenario's events mixed in (synthetic.SCENARIOS). Only
calls policy lets through are counted: those are the calls the risk stage
scores. An alarm is a score at or above the threshold (0.3: annotated; a rule's
maxRisk: denied). The attacker's own ordinary calls while the attack runs (and
five minutes after, while its deny and path counts decay) are neither attacks nor clean traffic: they are reported as
`affected` and left out of the rates.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from authz_server.risk.model import AnomalyModel
from authz_server.risk.synthetic import ATTACK, SCENARIOS, Sample, Scenario, scenario_samples

AFFECTED_WINDOW_S = 300.0


@dataclass(frozen=True)
class ScenarioResult:
    scenario: str
    description: str
    threshold: float
    attacks: int
    benign: int
    affected: int
    true_positives: int
    false_positives: int

    @property
    def false_negatives(self) -> int:
        return self.attacks - self.true_positives

    @property
    def precision(self) -> float | None:
        alarms = self.true_positives + self.false_positives
        return self.true_positives / alarms if alarms else None

    @property
    def recall(self) -> float | None:
        return self.true_positives / self.attacks if self.attacks else None

    @property
    def false_positive_rate(self) -> float | None:
        return self.false_positives / self.benign if self.benign else None

    def as_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "precision": self.precision,
            "recall": self.recall,
            "false_positive_rate": self.false_positive_rate,
        }


def _labels(samples: Sequence[Sample]) -> list[str]:
    """attack / benign / affected for each sample."""
    spans: dict[str, tuple[float, float]] = {}
    for s in samples:
        if s.event.label == ATTACK:
            first, last = spans.get(s.event.caller, (s.event.ts, s.event.ts))
            spans[s.event.caller] = (min(first, s.event.ts), max(last, s.event.ts))
    labels = []
    for s in samples:
        if s.event.label == ATTACK:
            labels.append("attack")
            continue
        span = spans.get(s.event.caller)
        affected = span is not None and span[0] <= s.event.ts <= span[1] + AFFECTED_WINDOW_S
        labels.append("affected" if affected else "benign")
    return labels


def evaluate_scenario(
    model: AnomalyModel, scenario: Scenario, seed: int, warm_hours: float, thresholds: Sequence[float]
) -> list[ScenarioResult]:
    samples = [s for s in scenario_samples(scenario, seed, warm_hours) if s.allowed]
    labels = np.array(_labels(samples))
    scores, _ = model.score_rows(np.array([s.features for s in samples], dtype=np.float32))
    attack, benign = labels == "attack", labels == "benign"
    results = []
    for threshold in thresholds:
        alarm = scores >= threshold
        result = ScenarioResult(
            scenario.name, scenario.description, threshold, int(attack.sum()), int(benign.sum()),
            int((labels == "affected").sum()), int((alarm & attack).sum()), int((alarm & benign).sum()),
        )  # fmt: skip
        results.append(result)
    return results


def evaluate(
    model: AnomalyModel,
    seed: int = 11,
    warm_hours: float = 72.0,
    thresholds: Sequence[float] = (0.3, 0.7),
    scenarios: Sequence[Scenario] = SCENARIOS,
) -> list[ScenarioResult]:
    results: list[ScenarioResult] = []
    for scenario in scenarios:
        results += evaluate_scenario(model, scenario, seed, warm_hours, thresholds)
    return results


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def format_table(results: Sequence[ScenarioResult]) -> str:
    header = (
        f"{'scenario':20} {'alarm at':>8} {'attacks':>7} {'benign':>6} {'affected':>8} "
        f"{'precision':>9} {'recall':>7} {'FPR':>6}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.scenario:20} {r.threshold:>8.2f} {r.attacks:>7} {r.benign:>6} {r.affected:>8} "
            f"{_pct(r.precision):>9} {_pct(r.recall):>7} {_pct(r.false_positive_rate):>6}"
        )
    return "\n".join(lines) + "\n"


def format_json(results: Sequence[ScenarioResult]) -> str:
    return json.dumps([r.as_dict() for r in results], indent=2) + "\n"

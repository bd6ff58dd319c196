"""Percentiles and summaries shared by every measurement."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in 0..100); nan when empty."""
    if not ordered:
        return math.nan
    rank = math.ceil(q / 100.0 * len(ordered))
    return float(ordered[min(len(ordered), max(rank, 1)) - 1])


def summarize(samples: Iterable[float]) -> dict[str, float]:
    """n, mean, max and the reported percentiles (keys p50, p90, p99, p99.9) of latency samples."""
    ordered = sorted(samples)
    summary: dict[str, float] = {"n": float(len(ordered))}
    summary["mean"] = math.fsum(ordered) / len(ordered) if ordered else math.nan
    for q in PERCENTILES:
        summary[label(q)] = percentile(ordered, q)
    summary["max"] = float(ordered[-1]) if ordered else math.nan
    return summary


def label(q: float) -> str:
    return f"p{q:g}"

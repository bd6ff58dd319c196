"""Turning measurements into what people read: terminal tables, the JSON document, PNG plots."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.stats import PERCENTILES, label


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
        return f"{value:,.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], title: str = "") -> str:
    """A plain, aligned text table (numbers right-aligned)."""
    cells = [[_fmt(v) if not isinstance(v, str) else v for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = [title] if title else []
    lines.append(
        "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True)))
    )
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append(
            "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
    return "\n".join(lines)


def latency_columns(latency: Mapping[str, float], scale: float = 1.0) -> list[float]:
    """p50..p99.9 of a latency summary, divided by scale."""
    return [latency.get(label(q), math.nan) / scale for q in PERCENTILES]


def percentile_headers(unit: str) -> list[str]:
    return [f"{label(q)} {unit}" for q in PERCENTILES]


def stage_table(stages: Mapping[str, Mapping[str, float]], title: str) -> str:
    rows: list[list[Any]] = []
    for name, summary in stages.items():
        values = [*latency_columns(summary), summary.get("mean", math.nan)]
        rows.append([name, *(round(v, 1) for v in values)])
    return table(["stage", *percentile_headers("µs"), "mean µs"], rows, title)


def write_json(document: Mapping[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(f"not JSON serializable: {value!r}")


def plot_latency_vs_load(
    series: Mapping[str, Sequence[Mapping[str, Any]]], path: Path, title: str, unit_scale: float = 1000.0
) -> Path | None:
    """One panel per percentile: latency (ms) against achieved requests/s, one line per configuration,
    one point per concurrency level.

    `series` maps a configuration to its points, each {"rps": .., "latency_us": {"p50": ..}}. Returns None
    when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(PERCENTILES), figsize=(4.2 * len(PERCENTILES), 3.8), sharex=False)
    for axis, q in zip(axes, PERCENTILES, strict=True):
        for name, points in series.items():
            # Joined in order of offered load, so a configuration that saturates bends back instead of zigzagging.
            ordered = sorted(points, key=lambda p: p.get("concurrency", 0))
            xs = [p["rps"] for p in ordered]
            ys = [p["latency_us"].get(label(q), math.nan) / unit_scale for p in ordered]
            axis.plot(xs, ys, marker="o", label=name)
        axis.set_title(label(q))
        axis.set_xlabel("requests/s")
        axis.set_ylabel("latency (ms, log scale)")
        axis.set_yscale("log")
        axis.grid(True, alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- Markdown, for RESULTS.md ------------------------------------------------------------


def _md(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_fmt(v) if not isinstance(v, str) else v for v in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(document: Mapping[str, Any]) -> str:
    """The tables of a results.json as Markdown (what RESULTS.md quotes)."""
    out: list[str] = []
    for name, result in document.get("inprocess", {}).items():
        out.append(f"**In-process, {name}**: {result['calls']:,} calls, {result['calls_per_s']:,.0f} calls/s")
        rows: list[list[Any]] = []
        for label_, summary in (
            ("Authorizer.check (wall)", result["decision_us"]),
            ("Authorizer.check (CPU)", result.get("decision_cpu_us", {})),
            ("protobuf parse", result["deserialize_us"]),
            *result["stage_us"].items(),
        ):
            if summary:
                rows.append([label_, *(round(v, 1) for v in latency_columns(summary))])
        out.append(_md(["µs", *(label(q) for q in PERCENTILES)], rows))
    for part, title in (("grpc", "gRPC straight at the server (h2load)"), ("envoy", "Through Envoy with mTLS (wrk)")):
        if part not in document:
            continue
        out.append(f"**{title}**")
        rows = []
        for config, points in document[part]["series"].items():
            for p in points:
                added = p.get("added_us", {})
                rows.append(
                    [config, p["concurrency"], round(p["rps"]), f"{p['rps_min']:.0f}-{p['rps_max']:.0f}"]
                    + [round(v, 2) for v in latency_columns(p["latency_us"], 1000.0)]
                    + ([round(added.get("p99", math.nan) / 1000, 2)] if part == "envoy" else [])
                    + [round(p["server_cpu_us_per_request"]) or "-"]
                    + ([round(p["sidecar_envoy_cpu_us_per_request"])] if part == "envoy" else [])
                    + ([p["peak_rss_mb"]] if "peak_rss_mb" in p else [])
                )
        headers = ["configuration", "in flight", "req/s", "range", *(f"{label(q)} ms" for q in PERCENTILES)]
        if part == "envoy":
            headers += ["+p99 ms", "server CPU µs/req", "sidecar CPU µs/req"]
        else:
            headers += ["server CPU µs/req", "peak RSS MB"]
        out.append(_md(headers, rows))
        if part == "envoy":
            ceiling = document[part]["generator_ceiling"]
            out.append(
                f"Generator ceiling: wrk + client Envoy {ceiling['wrk_via_client_envoy_rps']:,.0f} req/s; "
                f"h2load {ceiling['h2load_rps']:,.0f} req/s."
            )
    if "rate" in document:
        out.append("**Steady load (h2load, open loop)**")
        rows = []
        for config, r in document["rate"].items():
            total = r["server_stage_us"].get("total", {})
            rows.append(
                [config, r["target_rps"], round(r["rps"])]
                + [round(r["client_latency_us"][k] / 1000, 2) for k in ("p50", "p99", "p99.9")]
                + [round(total[k]) if total else "-" for k in ("p50", "p99")]
                + [f"{100 * r['server_cpu_share_of_one_core']:.0f}%"]
            )
        headers = ["server", "target/s", "req/s", "client p50 ms", "client p99 ms", "client p99.9 ms"]
        out.append(_md([*headers, "server p50 µs", "server p99 µs", "CPU (one core)"], rows))
    return "\n\n".join(out) + "\n"


if __name__ == "__main__":
    import sys

    print(markdown(json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/out/results.json").read_text())))

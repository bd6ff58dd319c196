"""Text reports for operators (the JSON forms are the reports' own to_json)."""

from __future__ import annotations

from authz_server.ops.replay import ReplayReport, VerdictChange


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _change_line(change: VerdictChange) -> str:
    line = (
        f"  {change.decision_id}  {change.time}  {change.caller} -> {change.destination}  "
        f"{change.method} {change.path}\n"
        f"      {change.before_verdict} ({change.before_reason}, {change.before_policy or '-'}) -> "
        f"{change.after_verdict} ({change.after_reason}, {change.after_policy})"
    )
    if change.before_score is not None or change.after_score is not None:
        line += f"  risk {_score(change.before_score)} -> {_score(change.after_score)}"
    if change.note:
        line += f"\n      note: {change.note}"
    return line


def replay_text(report: ReplayReport, limit: int = 50) -> str:
    model = f", model {report.model_version}" if report.model_version else ""
    lines = [
        f"candidate policy set {report.policy_version}{model}",
        f"{report.read.decisions} logged decision(s), {report.replayed} replayed: "
        f"{len(report.changes)} verdict(s) would change, {len(report.reason_changes)} reason(s) only, "
        f"{report.unchanged} unchanged",
    ]
    for transition, count in report.transitions.items():
        lines.append(f"  {transition}: {count}")
    if report.not_replayed:
        lines.append("not replayed: " + ", ".join(f"{why} x{n}" for why, n in sorted(report.not_replayed.items())))
    if report.read.skipped:
        lines.append(f"skipped {report.read.skipped} line(s) that are not decisions, e.g. {report.read.problems[0]}")
    if report.redacted_headers:
        lines.append(
            f"{report.redacted_headers} replayed call(s) carry redacted headers: rules matching on them "
            "cannot be replayed exactly"
        )
    if report.unscored:
        lines.append(
            f"{report.unscored} call(s) the candidate lets through were never scored: no risk objection assumed"
        )
    if report.changes:
        lines.append("")
        lines.append("verdicts that would change:")
        lines.extend(_change_line(c) for c in report.changes[:limit])
        if len(report.changes) > limit:
            lines.append(f"  ... {len(report.changes) - limit} more (--json lists all)")
    return "\n".join(lines) + "\n"

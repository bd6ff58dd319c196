"""Configuration of the decision log (section `log`)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_HEADERS = (
    "user-agent",
    "content-type",
    "x-request-id",
    "x-forwarded-for",
    "authorization",
    "cookie",
)
DEFAULT_REDACTED = (
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
)


@dataclass(frozen=True)
class LogConfig:
    decisions: str = "stdout"
    """Where decision lines go: 'stdout', 'off', or a file path (rotated)."""
    queue_size: int = 10000
    """Lines waiting to be written; past this, lines are dropped and counted, never a blocked call."""
    queue_max_bytes: int = 32 * 1024 * 1024
    """What the waiting lines may hold in memory, estimated from the request text each one keeps (~2.5 KiB for a
    typical call); past it lines are dropped and counted, so callers sending large requests cannot fill memory."""
    headers: tuple[str, ...] = DEFAULT_HEADERS
    """Request headers copied into each line (case-insensitive); every other header is left out."""
    redact: tuple[str, ...] = DEFAULT_REDACTED
    """Headers whose values are replaced by '[redacted]' (their presence is still logged)."""
    max_bytes: int = 100 * 1024 * 1024
    """File destination: rotate once the file reaches this size (0 = never rotate)."""
    backups: int = 5
    """File destination: how many rotated files (FILE.1 .. FILE.N) are kept."""
    flush_interval_ms: int = 200
    """How long the writer waits for more lines before writing out what it holds."""
    max_value_bytes: int = 4096
    """Cap on each request-controlled value in a line (path, host, header values, ...); longer ones are cut and
    marked, so a line stays small whatever a caller sends."""

    def validate(self) -> list[str]:
        problems = []
        if self.queue_size <= 0:
            problems.append(f"queue_size: must be > 0, got {self.queue_size}")
        if self.queue_max_bytes < 1024 * 1024:
            problems.append(f"queue_max_bytes: must be >= 1048576 (1 MiB), got {self.queue_max_bytes}")
        if not self.decisions:
            problems.append("decisions: expected 'stdout', 'off' or a file path, got ''")
        if self.max_bytes < 0:
            problems.append(f"max_bytes: must be >= 0 (0 = never rotate), got {self.max_bytes}")
        if self.backups < 0:
            problems.append(f"backups: must be >= 0, got {self.backups}")
        if self.max_value_bytes < 64:
            problems.append(f"max_value_bytes: must be >= 64, got {self.max_value_bytes}")
        if self.flush_interval_ms <= 0:
            problems.append(f"flush_interval_ms: must be > 0, got {self.flush_interval_ms}")
        for name in (*self.headers, *self.redact):
            if not name or name != name.strip() or ":" in name.lstrip(":"):
                problems.append(f"headers: {name!r} is not a header name")
        return problems

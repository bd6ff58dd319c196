"""Configuration of metrics and HTTP health (section `metrics`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = ""
    """HOST:PORT of the Prometheus /metrics, /healthz and /readyz endpoint ('' = off).

    With several workers, worker N listens on PORT+N (worker 0 on PORT): scrape each."""
    process_metrics: bool = True
    """Also export the Python process's CPU, memory, file descriptors and garbage collector series."""

    def validate(self) -> list[str]:
        if not self.listen:
            return []
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            return [f"listen: expected HOST:PORT (or '' for off), got {self.listen!r}"]
        return []

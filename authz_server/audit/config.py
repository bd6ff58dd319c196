"""Configuration of the decision log (section `log`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LogConfig:
    decisions: str = "stdout"
    """Where decision lines go: 'stdout', 'off', or a file path (rotated)."""
    queue_size: int = 10000
    """Lines waiting to be written; past this, lines are dropped and counted, never a blocked call."""

    def validate(self) -> list[str]:
        return [] if self.queue_size > 0 else [f"queue_size: must be > 0, got {self.queue_size}"]

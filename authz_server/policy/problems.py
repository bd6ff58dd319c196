"""What is wrong with a set of declarations, located to a file and line."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    ERROR = "error"
    """The set is refused: the server keeps serving the last good one."""
    WARNING = "warning"
    """The set loads, but something in it is almost certainly not what its author meant."""


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    file: str
    line: int
    """1-based; 0 when the problem concerns the file as a whole."""
    message: str
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        prefix = "warning: " if self.severity is Severity.WARNING else ""
        return f"{where}: {prefix}{self.message}"


class PolicyError(ValueError):
    """A set of declarations that cannot take effect; `.problems` says every reason, with file and line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = sorted(problems)
        errors = [p for p in self.problems if p.severity is Severity.ERROR]
        summary = f"{len(errors)} problem(s) in the policy declarations"
        super().__init__(summary + "".join(f"\n  {p}" for p in errors[:20]))

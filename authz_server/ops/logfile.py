"""Reading decision logs back: files written by the server (or captured from stdout), rotated ones too."""

from __future__ import annotations

import glob
import gzip
import json
import sys
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from authz_server.audit.record import SCHEMA_VERSION

MAX_LINE_CHARS = 1 << 20
"""A longer line is skipped unread: the server writes lines of a few KiB, so 1 MiB is never a decision, and
reading it whole would let one garbled file (a missing newline, a binary blob) fill memory."""


class LogReadError(ValueError):
    """A decision log cannot be read at all (missing file, not a decision log)."""


@dataclass
class ReadStats:
    """What was skipped while reading, so a report can say how complete it is."""

    lines: int = 0
    decisions: int = 0
    skipped: int = 0
    shed: int = 0
    """Calls answered 'overloaded' without a decision, from the log's counted `kind: shed` lines."""
    problems: list[str] = field(default_factory=list)
    """The first few problems, each naming file and line."""

    def skip(self, where: str, why: str) -> None:
        self.skipped += 1
        if len(self.problems) < 10:
            self.problems.append(f"{where}: {why}")


def _open(path: str) -> TextIO:
    if path == "-":
        return sys.stdin
    try:
        if path.endswith(".gz"):
            return gzip.open(path, "rt", encoding="utf-8", errors="replace")
        return open(path, encoding="utf-8", errors="replace")
    except OSError as exc:
        raise LogReadError(f"cannot read decision log {path}: {exc.strerror}") from exc


def _bounded_lines(stream: TextIO, path: str, stats: ReadStats) -> Iterator[str]:
    """The lines of `stream`, a line longer than MAX_LINE_CHARS skipped (counted, yielded as '') without holding it."""
    number = 0
    try:
        while line := stream.readline(MAX_LINE_CHARS):
            number += 1
            if len(line) < MAX_LINE_CHARS or line.endswith("\n"):
                yield line
                continue
            while (rest := stream.readline(MAX_LINE_CHARS)) and not rest.endswith("\n"):
                pass
            stats.skip(f"{path}:{number}", f"longer than {MAX_LINE_CHARS} characters")
            yield ""
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        # A rotated file compressed by a shipper killed mid-write: keep what was read before the damage.
        stats.skip(f"{path}:{number + 1}", f"compressed file ends early or is corrupt ({exc})")


def with_rotated(paths: Iterable[str]) -> list[str]:
    """`paths` with, before each file, the copies the server's rotation left beside it (`FILE.N` ... `FILE.1`,
    optionally `.gz`), oldest first; a directory stands for the files in it (names starting with `.` skipped)."""
    out: list[str] = []
    for path in paths:
        if path != "-" and Path(path).is_dir():
            out.extend(str(p) for p in sorted(Path(path).iterdir()) if p.is_file() and not p.name.startswith("."))
            continue
        rotated: list[tuple[int, str]] = []
        if path != "-":
            base = Path(path)
            for sibling in base.parent.glob(f"{glob.escape(base.name)}.*"):
                number = sibling.name[len(base.name) + 1 :].removesuffix(".gz")
                if number.isdigit() and sibling.is_file():
                    rotated.append((int(number), str(sibling)))
        out.extend(name for _, name in sorted(rotated, reverse=True))
        out.append(path)
    return list(dict.fromkeys(out))


def read_decisions(paths: Iterable[str], stats: ReadStats | None = None) -> Iterator[dict[str, Any]]:
    """Every decision line of `paths`, in file order. Lines that are not decisions are skipped and counted:
    a stdout capture mixes in other output, and a crash can leave a half-written last line."""
    stats = stats if stats is not None else ReadStats()
    for path in paths:
        if path != "-" and not Path(path).is_file():
            raise LogReadError(f"cannot read decision log {path}: no such file")
        stream = _open(path)
        try:
            for number, line in enumerate(_bounded_lines(stream, path, stats), 1):
                stats.lines += 1
                text = line.strip()
                if not text:
                    continue
                where = f"{path}:{number}"
                # `kubectl logs --timestamps` and log shippers put a prefix before the JSON object.
                start = text.find("{")
                if start < 0:
                    stats.skip(where, "not a JSON object")
                    continue
                text = text[start:]
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as exc:
                    stats.skip(where, f"invalid JSON ({exc.msg})")
                    continue
                if isinstance(record, dict) and record.get("kind") == "shed":
                    stats.shed += int(record.get("count") or 0)
                    continue
                if not isinstance(record, dict) or "decision_id" not in record or "verdict" not in record:
                    stats.skip(where, "not a decision line")
                    continue
                schema = record.get("schema")
                if schema != SCHEMA_VERSION:
                    stats.skip(where, f"schema {schema!r} is not supported (this version reads {SCHEMA_VERSION})")
                    continue
                stats.decisions += 1
                yield record
        finally:
            if stream is not sys.stdin:
                stream.close()

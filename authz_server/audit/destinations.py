"""Where serialised decision lines end up: stdout, a size-rotated file, or nowhere."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import BinaryIO, Protocol


class Destination(Protocol):
    def write(self, data: bytes) -> None:
        """Write whole lines; raises OSError when they could not be written."""
        ...

    def close(self) -> None: ...


class Discard:
    """Destination 'off': decisions are still counted in metrics, nothing is written."""

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


class Stream:
    """A binary stream such as stdout, flushed after every batch so a collector sees lines promptly."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def write(self, data: bytes) -> None:
        self._stream.write(data)
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()


class RotatingFile:
    """Appends to PATH; once it reaches `max_bytes`, PATH becomes PATH.1, PATH.1 becomes PATH.2, ...

    Rotation happens between lines, so a line is never split across two files.
    """

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self._open()
        self._size = self._file.tell()

    def _open(self) -> BinaryIO:
        return open(self.path, "ab")

    def write(self, data: bytes) -> None:
        limit = self._max_bytes
        while limit and self._size + len(data) > limit:
            # As many whole lines as still fit; a single line longer than the limit gets a file of its own.
            cut = data.rfind(b"\n", 0, limit - self._size) + 1
            if cut == 0 and self._size == 0:
                cut = data.find(b"\n") + 1 or len(data)
            if cut:
                self._file.write(data[:cut])
                self._size += cut
                data = data[cut:]
            if not data:
                break
            self._rotate()
        if data:
            self._file.write(data)
            self._size += len(data)
        self._file.flush()

    def _rotate(self) -> None:
        self._file.close()
        if self._backups > 0:
            for index in range(self._backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._file = self._open()
        self._size = 0

    def close(self) -> None:
        self._file.close()


def open_destination(spec: str, max_bytes: int, backups: int) -> Destination:
    if spec == "off":
        return Discard()
    if spec == "stdout":
        return Stream(sys.stdout.buffer)
    return RotatingFile(Path(spec), max_bytes, backups)

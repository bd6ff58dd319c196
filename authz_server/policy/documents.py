"""Reading declaration files: which files, their YAML documents, and the line of every key.

Timestamps stay strings (as in Kubernetes), so `expires` is checked against
the schema like any other string and parsed once, with a clear message.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from authz_server.policy.problems import Problem

YAML_SUFFIXES = (".yaml", ".yml")

JsonPath = tuple[str | int, ...]


_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml parses ~20x faster


class _Loader(_Base):  # type: ignore[valid-type,misc]
    """SafeLoader that leaves timestamps as strings."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@dataclass(frozen=True)
class SourceDocument:
    """One YAML document, with the 1-based line of every node by its path in the document."""

    file: str
    index: int
    data: Any
    lines: dict[JsonPath, int] = field(repr=False)

    def line(self, path: Sequence[str | int]) -> int:
        """Line of the node at `path`, or of its nearest ancestor that has one."""
        key = tuple(path)
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return self.lines.get((), 1)


def _record_lines(node: yaml.Node, path: JsonPath, lines: dict[JsonPath, int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = str(key_node.value)
            _record_lines(value_node, (*path, key), lines)
            lines[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, (*path, index), lines)


def parse_documents(file: str, text: str) -> tuple[list[SourceDocument], list[Problem]]:
    documents: list[SourceDocument] = []
    loader = _Loader(text)
    try:
        index = 0
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                break
            lines: dict[JsonPath, int] = {}
            _record_lines(node, (), lines)
            data = loader.construct_document(node)
            if data is not None:
                documents.append(SourceDocument(file, index, data, lines))
            index += 1
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problem = getattr(exc, "problem", None) or str(exc)
        return documents, [Problem(file, line, f"not valid YAML: {problem}")]
    finally:
        loader.dispose()
    return documents, []


def _walk(directory: Path, seen: set[str] | None = None) -> Iterator[Path]:
    # Names starting with a dot are skipped: Kubernetes keeps ConfigMap versions in `..2026_...` and `..data`
    # and exposes each file through a symlink at the top, so reading those too would load everything twice.
    seen = set() if seen is None else seen
    real = os.path.realpath(directory)
    if real in seen:  # a symlink loop
        return
    seen.add(real)
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        if entry.is_dir():
            yield from _walk(path, seen)
        elif entry.name.endswith(YAML_SUFFIXES) and entry.is_file():
            yield path


def declaration_files(paths: Sequence[str]) -> tuple[list[Path], list[Problem]]:
    """Every YAML file named by `paths` (files, or directories searched recursively), in a stable order."""
    files: list[Path] = []
    problems: list[Problem] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files.extend(_walk(path))
        elif path.is_file():
            files.append(path)
        else:
            problems.append(Problem(name, 0, "no such file or directory"))
    return files, problems


@dataclass(frozen=True)
class FileSnapshot:
    """The raw contents of every declaration file, read once."""

    contents: tuple[tuple[str, bytes], ...]
    problems: tuple[Problem, ...]

    @property
    def digest(self) -> str:
        hasher = hashlib.sha256()
        for name, content in self.contents:
            hasher.update(name.encode() + b"\0" + hashlib.sha256(content).digest())
        for problem in self.problems:
            hasher.update(str(problem).encode())
        return hasher.hexdigest()


def read_files(paths: Sequence[str]) -> FileSnapshot:
    files, problems = declaration_files(paths)
    contents: list[tuple[str, bytes]] = []
    for path in files:
        try:
            contents.append((str(path), path.read_bytes()))
        except OSError as exc:
            problems.append(Problem(str(path), 0, f"cannot read: {exc.strerror}"))
    return FileSnapshot(tuple(contents), tuple(problems))


def fingerprint(paths: Sequence[str]) -> tuple[tuple[str, int, int, int], ...]:
    """A cheap summary (resolved path, inode, size, mtime) that changes whenever a file is edited or swapped."""
    files, problems = declaration_files(paths)
    out: list[tuple[str, int, int, int]] = [(p.file, 0, 0, 0) for p in problems]
    for path in files:
        try:
            real = os.path.realpath(path)
            stat = os.stat(real)
        except OSError:
            out.append((str(path), -1, -1, -1))
            continue
        out.append((real, stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(out)

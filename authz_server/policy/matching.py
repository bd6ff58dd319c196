"""The matchers a rule compiles into: callers, paths, headers and whole routes.

Callers: an exact SPIFFE ID, or a segment-wise prefix `spiffe://td/ns/billing/`
that matches every ID with at least one more path segment below it (so it
never matches `spiffe://td/ns/billingx/...`).

Paths (matched against the normalised request path):
- `/v1/charges`: exactly that path (`/v1/charges/` is a different path);
- `/v1/refunds/*`: `*` is exactly one non-empty segment, anywhere in the pattern;
- `/v1/admin/**`: the path `/v1/admin` itself, `/v1/admin/`, and everything below; `**`
  may only be the last segment. `/**` is every path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CallerMatcher:
    value: str
    """An exact SPIFFE ID, or, when `prefix`, the prefix including its final `/`."""
    prefix: bool = False

    def matches(self, spiffe_id: str) -> bool:
        if self.prefix:
            return spiffe_id.startswith(self.value) and len(spiffe_id) > len(self.value)
        return spiffe_id == self.value

    def covers(self, other: CallerMatcher) -> bool:
        """Every caller `other` matches, this matches too."""
        if not self.prefix:
            return not other.prefix and other.value == self.value
        return other.value.startswith(self.value) and (other.prefix or len(other.value) > len(self.value))

    def __str__(self) -> str:
        return self.value + "*" if self.prefix else self.value


def caller_prefixes(spiffe_id: str) -> list[str]:
    """Every segment-wise prefix of `spiffe_id` a CallerMatcher can hold, longest first."""
    out: list[str] = []
    index = spiffe_id.find("/", 9)  # after "spiffe://"
    while index != -1:
        out.append(spiffe_id[: index + 1])
        index = spiffe_id.find("/", index + 1)
    out.reverse()
    return out


class PatternError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class PathPattern:
    text: str
    exact: str | None
    base: str | None
    """For `/base/**`: `/base` ('' for `/**`)."""
    regex: re.Pattern[str] | None

    @classmethod
    def parse(cls, text: str) -> PathPattern:
        if not text.startswith("/"):
            raise PatternError(f"path {text!r} must start with /")
        if "?" in text or "#" in text:
            raise PatternError(f"path {text!r}: the query string never takes part in matching; remove it")
        segments = text.split("/")[1:]
        for index, segment in enumerate(segments):
            if segment == "**" and index != len(segments) - 1:
                raise PatternError(f"path {text!r}: ** may only be the last segment")
            if "*" in segment and segment not in ("*", "**"):
                raise PatternError(f"path {text!r}: * and ** must be a whole segment, as in /v1/*/items")
        if "*" not in text:
            return cls(text, text, None, None)
        if text.endswith("/**") and "*" not in text[:-3]:
            return cls(text, None, text[:-3], None)
        parts = []
        for segment in segments:
            if segment == "*":
                parts.append("/[^/]+")
            elif segment == "**":
                parts.append("(?:/.*)?")
            else:
                parts.append("/" + re.escape(segment))
        return cls(text, None, None, re.compile("".join(parts)))

    def matches(self, path: str) -> bool:
        if self.exact is not None:
            return path == self.exact
        if self.base is not None:
            return path == self.base or path.startswith(self.base + "/")
        assert self.regex is not None
        return self.regex.fullmatch(path) is not None

    def covers(self, other: PathPattern) -> bool:
        """Every path `other` matches, this matches too (conservative: may answer False when it does)."""
        if self.text == other.text:
            return True
        if self.base is not None:
            return other.text == self.base or other.text.startswith(self.base + "/")
        if other.exact is not None:
            return self.matches(other.exact)
        if self.regex is not None and other.base is None:
            mine, theirs = self.text.split("/"), other.text.split("/")
            return len(mine) == len(theirs) and all(a in ("*", b) for a, b in zip(mine, theirs, strict=True))
        return False


@dataclass(frozen=True, slots=True)
class HeaderCondition:
    name: str
    """Lower case, as Envoy sends header names."""
    values: frozenset[str] | None
    present: bool | None

    def holds(self, headers: Mapping[str, str]) -> bool:
        value = headers.get(self.name)
        if self.values is not None:
            return value is not None and value in self.values
        if self.present is False:
            return value is None
        return value is not None

    def __str__(self) -> str:
        if self.values is not None:
            return f"{self.name} in {sorted(self.values)}"
        return f"{self.name} {'absent' if self.present is False else 'present'}"


@dataclass(frozen=True, slots=True)
class RouteMatcher:
    methods: frozenset[str] | None
    """None: any method."""
    exact_paths: frozenset[str]
    patterns: tuple[PathPattern, ...]
    """Non-exact path patterns."""
    headers: tuple[HeaderCondition, ...]

    @property
    def all_patterns(self) -> tuple[PathPattern, ...]:
        return tuple(PathPattern.parse(p) for p in sorted(self.exact_paths)) + self.patterns

    def method_matches(self, method: str) -> bool:
        return self.methods is None or method in self.methods

    def path_matches(self, path: str) -> bool:
        if path in self.exact_paths:
            return True
        return any(p.matches(path) for p in self.patterns)

    def matches(self, method: str, path: str, headers: Mapping[str, str]) -> bool:
        # Plain loops: this runs for every candidate rule of every call, and generators cost more here.
        if self.methods is not None and method not in self.methods:
            return False
        if path not in self.exact_paths:
            for pattern in self.patterns:
                if pattern.matches(path):
                    break
            else:
                return False
        for header in self.headers:  # noqa: SIM110
            if not header.holds(headers):
                return False
        return True

    def covers(self, other: RouteMatcher) -> bool:
        if self.methods is not None and (other.methods is None or not other.methods <= self.methods):
            return False
        if self.headers and set(self.headers) - set(other.headers):
            return False
        mine = self.all_patterns
        return all(any(p.covers(q) for p in mine) for q in other.all_patterns)

    def describe(self) -> str:
        methods = ",".join(sorted(self.methods)) if self.methods is not None else "*"
        paths = ",".join(p.text for p in self.all_patterns)
        conditions = "".join(f" [{h}]" for h in self.headers)
        return f"{methods} {paths}{conditions}"

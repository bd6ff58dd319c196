"""Parse Envoy's x-forwarded-client-cert header.

Grammar (Envoy's documentation): elements separated by `,`, each a list of
`Key=Value` pairs separated by `;`. A value holding `,`, `;` or `=` is
double-quoted, and a `"` inside a quoted value is escaped as `\\"`. Keys
(`By`, `Hash`, `Cert`, `Chain`, `Subject`, `URI`, `DNS`) are case-insensitive;
`URI` and `DNS` may repeat within an element.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

XfccElement = Mapping[str, tuple[str, ...]]
"""One proxy's statement: lower-case key -> values in header order."""

_PAIR = re.compile(r'[ \t]*([A-Za-z]+)=("(?:[^"\\]|\\.)*"|[^";,]*)[ \t]*(?:(;)|(,)|$)', re.DOTALL)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


class XfccError(ValueError):
    """The header does not follow the XFCC grammar."""


def parse_xfcc(header: str) -> list[XfccElement]:
    """The header's elements, first (farthest proxy) to last (nearest proxy); raises XfccError."""
    elements: list[XfccElement] = []
    current: dict[str, list[str]] = {}
    position, end = 0, len(header)
    if not header.strip():
        raise XfccError("empty header")
    while position < end:
        match = _PAIR.match(header, position)
        if match is None:
            raise XfccError(f"expected Key=Value at offset {position}")
        key, value, semicolon, comma = match.groups()
        if value.startswith('"'):
            value = _ESCAPE.sub(r"\1", value[1:-1])
        current.setdefault(key.lower(), []).append(value)
        position = match.end()
        if comma:
            elements.append(_freeze(current))
            current = {}
            if position >= end:
                raise XfccError("header ends with a separator")
        elif not semicolon and position < end:
            raise XfccError(f"unexpected text at offset {position}")
    if current:
        elements.append(_freeze(current))
    return elements


def _freeze(pairs: dict[str, list[str]]) -> XfccElement:
    return MappingProxyType({key: tuple(values) for key, values in pairs.items()})

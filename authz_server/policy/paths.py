"""Request paths made comparable: normalised as Envoy's `normalize_path` + `merge_slashes` would.

Matching on the raw path invites path confusion: `/v1/public/../admin`,
`/v1/%2e%2e/admin` and `//admin` all reach a different resource than their
text suggests. So before matching, a path is normalised the way Envoy does
with `normalize_path: true` and `merge_slashes: true`:

- percent-encoded unreserved characters (ALPHA, DIGIT, `-`, `.`, `_`, `~`) are
  decoded; every other percent-encoding is kept, its hex digits upper-cased;
- repeated slashes are merged;
- `.` segments are removed and `..` segments remove the segment before them
  (RFC 3986 section 5.2.4).

A path is refused (returns None, reason `invalid-path`) where upstreams are
known to disagree about its meaning, rather than guessing:

- it does not start with `/`, or holds a byte outside visible ASCII
  (controls, space, DEL, non-ASCII), or a malformed percent-encoding;
- it holds an encoded slash or backslash (`%2F`, `%5C`) or a literal backslash:
  some servers decode them into separators, some do not;
- it holds `;` (path parameters): Tomcat and Spring drop `;...` from a segment,
  so `/v1/public/..;/admin` is `/v1/admin` to them but not to a matcher;
- a `..` segment would climb above the root.
"""

from __future__ import annotations

import re

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT = re.compile(r"%(..)?", re.DOTALL)
_HEX = frozenset("0123456789abcdefABCDEF")
_REFUSED_ENCODED = frozenset(("2F", "5C"))
# Visible ASCII except `\` and `;`, which are refused outright (see above).
_PLAIN = re.compile(r"[!-:<-\[\]-~]*")


def _decode_unreserved(path: str) -> str | None:
    out: list[str] = []
    last = 0
    for match in _PERCENT.finditer(path):
        hex_digits = match.group(1)
        if hex_digits is None or not (hex_digits[0] in _HEX and hex_digits[1] in _HEX):
            return None
        code = hex_digits.upper()
        if code in _REFUSED_ENCODED:
            return None
        char = chr(int(code, 16))
        out.append(path[last : match.start()])
        out.append(char if char in _UNRESERVED else "%" + code)
        last = match.end()
    out.append(path[last:])
    return "".join(out)


def normalize_path(path: str) -> str | None:
    """The normalised form of `path` (no query), or None when it must be refused."""
    if not path.startswith("/") or _PLAIN.fullmatch(path) is None:
        return None
    # Fast path: most real paths are already normal.
    if "%" not in path and "//" not in path and "/." not in path:
        return path
    if "%" in path:
        decoded = _decode_unreserved(path)
        if decoded is None:
            return None
        path = decoded
    segments = path.split("/")
    out: list[str] = []
    last = len(segments) - 1
    for index, segment in enumerate(segments[1:], start=1):
        if segment == "" and index != last:
            continue  # merge_slashes; a trailing slash is kept
        if segment == ".":
            if index == last:
                out.append("")
            continue
        if segment == "..":
            if not out or (len(out) == 1 and out[0] == ""):
                return None
            out.pop()
            if index == last:
                out.append("")
            continue
        out.append(segment)
    return "/" + "/".join(out)

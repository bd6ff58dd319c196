"""`authz-server grant`: a time-boxed AllowedCalls declaration, written for the GitOps flow.

The grant is its own document (its own file), so it is reviewed, merged and
later deleted on its own; its rule carries `expires`, so it stops matching at
that moment even if nobody deletes it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from typing import Any

import yaml
from spiffe import SpiffeId

from authz_server.policy.schema import ALLOWED_CALLS, GROUP_VERSION

_TTL = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_TTL_S = 30 * 86400


def parse_ttl(text: str) -> int:
    """`15m`, `2h`, `1d` as seconds; raises ValueError with a plain message."""
    match = _TTL.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"--ttl: expected a duration such as 15m, 2h or 1d, got {text!r}")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_TTL_S:
        raise ValueError(f"--ttl: a grant may last at most 30d, got {text}; write a standing rule instead")
    return seconds


def _label(spiffe_id: SpiffeId) -> str:
    segments = [s for s in spiffe_id.path.split("/") if s]
    name = segments[-1] if segments else spiffe_id.trust_domain.name
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:20] or "caller"


def _namespace(spiffe_id: SpiffeId) -> str:
    segments = [s for s in spiffe_id.path.split("/") if s]
    if len(segments) >= 2 and segments[0] == "ns" and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", segments[1]):
        return segments[1]
    return "default"


def grant_document(
    caller: str,
    callee: str,
    methods: list[str],
    paths: list[str],
    ttl_s: int,
    now: dt.datetime,
    reason: str = "",
) -> dict[str, Any]:
    caller_id, callee_id = SpiffeId(caller), SpiffeId(callee)
    expires = (now + dt.timedelta(seconds=ttl_s)).replace(microsecond=0)
    stamp = expires.strftime("%Y%m%dt%H%M%S")
    digest = hashlib.sha256(f"{caller}|{callee}|{methods}|{paths}|{stamp}".encode()).hexdigest()[:6]
    name = f"grant-{_label(caller_id)}-{stamp}-{digest}"
    metadata: dict[str, Any] = {"name": name, "namespace": _namespace(callee_id)}
    if reason:
        metadata["annotations"] = {"authz-server.dev/reason": reason}
    return {
        "apiVersion": GROUP_VERSION,
        "kind": ALLOWED_CALLS,
        "metadata": metadata,
        "spec": {
            "workload": callee,
            "mode": "enforce",
            "rules": [
                {
                    "name": "grant",
                    "from": [{"id": caller}],
                    "to": [{"methods": [m.upper() for m in methods], "paths": paths}],
                    "expires": expires.isoformat().replace("+00:00", "Z"),
                }
            ],
        },
    }


def render(document: dict[str, Any], ttl_text: str) -> str:
    header = (
        f"# Time-boxed grant written by `authz-server grant` (ttl {ttl_text}).\n"
        "# It stops matching at spec.rules[0].expires; delete this file once it has.\n"
    )
    return header + yaml.safe_dump(document, sort_keys=False)

"""Configuration of who may send Checks (section `callers`); the check itself is transport/callers.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from spiffe import SpiffeId


@dataclass(frozen=True)
class CallersConfig:
    """Section `callers`: who may send Checks."""

    mode: Literal["off", "xfcc"] = "off"
    """off: anyone who reaches the port may ask (plain Envoy, sidecar layout); xfcc: the sending proxy's identity,
    from the XFCC element the server's own sidecar appended, must be the call's destination or a gateway."""
    gateways: tuple[str, ...] = ()
    """SPIFFE IDs that may ask about calls to any destination (ingress gateways). Ignored with mode: off."""

    def validate(self) -> list[str]:
        problems = []
        for gateway in self.gateways:
            try:
                SpiffeId(gateway)
            except Exception as exc:
                problems.append(f"gateways: {gateway!r}: {exc}")
        return problems

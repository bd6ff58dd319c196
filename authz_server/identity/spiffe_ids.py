"""SPIFFE IDs that may name a workload: valid per the SPIFFE ID spec, and with a path.

`spiffe://example.org` names the trust domain itself; the X.509-SVID spec
requires a leaf's SPIFFE ID to have a non-root path, and a caller identified
as a whole trust domain would match policies in ways nobody declared. The same
rule is applied to every source (certificate, XFCC, JWT `sub`, principal).
"""

from __future__ import annotations

from spiffe import SpiffeId


def parse_workload_id(value: str) -> SpiffeId | str:
    """The SPIFFE ID in `value`, or why it cannot identify a workload."""
    try:
        spiffe_id = SpiffeId(value)
    except Exception as exc:  # spiffe raises several unrelated error types for bad syntax
        return str(exc) or type(exc).__name__
    if not spiffe_id.path:
        return f"{value!r} names the trust domain itself; a workload's SPIFFE ID has a path"
    return spiffe_id

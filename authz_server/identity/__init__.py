"""Stage 2, identity: verify the caller's SPIFFE ID from what Envoy forwarded (see README.md here)."""

from __future__ import annotations

from authz_server.identity.bundles import BundleError, BundleSet, TrustBundle, parse_bundle
from authz_server.identity.result import HTTP_STATUS, Identity, IdentityFailure, IdentityReason, IdentityResult, Proof
from authz_server.identity.source import IdentityLoadError, IdentitySource, source
from authz_server.identity.verifier import IdentityVerifier

__all__ = [
    "HTTP_STATUS",
    "BundleError",
    "BundleSet",
    "Identity",
    "IdentityFailure",
    "IdentityLoadError",
    "IdentityReason",
    "IdentityResult",
    "IdentitySource",
    "IdentityVerifier",
    "Proof",
    "TrustBundle",
    "parse_bundle",
    "source",
]

"""What the identity stage concludes: a verified workload identity, or why not."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Proof(StrEnum):
    """How the caller's identity was established, strongest first."""

    CERTIFICATE = "certificate"
    XFCC = "xfcc"
    JWT = "jwt"
    PRINCIPAL = "principal"


class IdentityReason(StrEnum):
    NO_IDENTITY = "no-identity"
    MALFORMED_CERTIFICATE = "malformed-certificate"
    MALFORMED_SPIFFE_ID = "malformed-spiffe-id"
    MULTIPLE_URI_SANS = "multiple-uri-sans"
    NOT_A_LEAF = "not-a-leaf"
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    UNTRUSTED_TRUST_DOMAIN = "untrusted-trust-domain"
    CHAIN_INVALID = "chain-invalid"
    PRINCIPAL_MISMATCH = "principal-mismatch"
    UNTRUSTED_XFCC = "untrusted-xfcc"
    JWT_INVALID = "jwt-invalid"


# 401: nothing about the caller could be established, so authenticating again
# (with a usable credential) is the remedy. 403: a credential was presented and
# understood, and it is one this server refuses.
HTTP_STATUS: dict[IdentityReason, int] = {
    IdentityReason.NO_IDENTITY: 401,
    IdentityReason.MALFORMED_CERTIFICATE: 401,
    IdentityReason.MALFORMED_SPIFFE_ID: 401,
    IdentityReason.MULTIPLE_URI_SANS: 401,
    IdentityReason.NOT_A_LEAF: 401,
    IdentityReason.EXPIRED: 401,
    IdentityReason.NOT_YET_VALID: 401,
    IdentityReason.CHAIN_INVALID: 401,
    IdentityReason.JWT_INVALID: 401,
    IdentityReason.UNTRUSTED_TRUST_DOMAIN: 403,
    IdentityReason.PRINCIPAL_MISMATCH: 403,
    IdentityReason.UNTRUSTED_XFCC: 403,
}


@dataclass(frozen=True, slots=True)
class Identity:
    """A caller whose SPIFFE ID this server verified itself."""

    spiffe_id: str
    trust_domain: str
    path: str
    proof: Proof
    expires_at: float | None
    """Unix seconds at which the credential stops being valid (None: unknown, e.g. a bare principal)."""
    issued_at: float | None = None
    fingerprint: str | None = None
    """SHA-256 of the leaf certificate (hex), when one was verified."""
    serial: str | None = None
    """The leaf certificate's serial number (hex), when one was verified: the risk stage notices one certificate
    used from two places."""


@dataclass(frozen=True, slots=True)
class IdentityFailure:
    """Why no identity could be verified. `detail` goes to the decision log, never to the caller."""

    reason: IdentityReason
    detail: str

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.reason]


IdentityResult = Identity | IdentityFailure

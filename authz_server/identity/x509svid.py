"""X.509-SVID verification: decode, leaf constraints, validity, chain to the trust domain's bundle.

The chain walk is done here rather than with a general-purpose path builder
because the SPIFFE rules are narrow (one trust domain, its own bundle as the
only anchors, SPIFFE leaf constraints) and because each failure must map to
exactly one reason code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from authz_server.identity.bundles import BundleSet
from authz_server.identity.result import IdentityFailure, IdentityReason
from authz_server.identity.spiffe_ids import parse_workload_id

MAX_INTERMEDIATES = 8
"""Longest chain of intermediates followed between a leaf and its bundle."""

MAX_PRESENTED_CERTIFICATES = 16
"""Most certificates a caller may present as candidate intermediates (an XFCC Chain, say)."""

MAX_SIGNATURE_CHECKS = 32
"""Signature verifications one chain walk may spend. Presented intermediates that share subject and key can
all sign each other, so without a budget the walk tries every ordering of them: factorial work for the caller
to ask for with a few kilobytes of header."""

_PEM_END = "-----END CERTIFICATE-----"

UNUSABLE_CERTIFICATE = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    x509.InvalidVersion,
)
"""What cryptography raises on a certificate it cannot use. It parses lazily (names, extensions, keys on first
access), and several of these are not ValueErrors (a repeated extension raises DuplicateExtension), so every
read of a presented certificate is guarded by this whole tuple: a hostile certificate is a denial with a reason,
never a failed call."""


@dataclass(frozen=True, slots=True)
class VerifiedSvid:
    spiffe_id: str
    trust_domain: str
    path: str
    not_before: float
    not_after: float
    valid_until: float
    """When this verification stops holding: the earliest expiry in the chain (plus clock skew)."""
    fingerprint: str
    serial: str = ""
    """The leaf's serial number, hex."""


def decode_pem_certificates(pem: str) -> list[x509.Certificate] | IdentityFailure:
    """Every certificate in a PEM text, or malformed-certificate."""
    if "-----BEGIN CERTIFICATE-----" not in pem:
        return IdentityFailure(IdentityReason.MALFORMED_CERTIFICATE, "no PEM certificate block")
    if not pem.rstrip().endswith(_PEM_END):
        return IdentityFailure(IdentityReason.MALFORMED_CERTIFICATE, "PEM text is truncated (no END line)")
    try:
        return x509.load_pem_x509_certificates(pem.encode("ascii"))
    except (*UNUSABLE_CERTIFICATE, UnicodeEncodeError) as exc:
        return IdentityFailure(IdentityReason.MALFORMED_CERTIFICATE, f"cannot decode the certificate: {exc}")


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


class _Extensions:
    """A certificate's extensions read in one pass (each lookup through cryptography re-scans them)."""

    __slots__ = ("basic_constraints", "key_usage", "san")

    def __init__(self, cert: x509.Certificate) -> None:
        self.san: x509.SubjectAlternativeName | None = None
        self.basic_constraints: x509.BasicConstraints | None = None
        self.key_usage: x509.KeyUsage | None = None
        for extension in cert.extensions:
            value = extension.value
            if isinstance(value, x509.SubjectAlternativeName):
                self.san = value
            elif isinstance(value, x509.BasicConstraints):
                self.basic_constraints = value
            elif isinstance(value, x509.KeyUsage):
                self.key_usage = value


class _Budget:
    """Work done by one chain walk, and the presented certificates' extensions, each read once."""

    __slots__ = ("extensions", "signature_checks")

    def __init__(self) -> None:
        self.signature_checks = 0
        self.extensions: dict[x509.Certificate, _Extensions] = {}


class TrustStore:
    """The X.509 authorities of every trusted trust domain, indexed for issuer lookup."""

    def __init__(self, bundles: BundleSet) -> None:
        self._anchors: dict[str, dict[x509.Name, tuple[x509.Certificate, ...]]] = {}
        self._anchor_extensions: dict[x509.Certificate, _Extensions] = {}
        for name, bundle in bundles.bundles.items():
            if not bundle.x509_authorities:
                continue  # a trust domain the Workload API federates for JWT-SVIDs only vouches for no certificate
            by_subject: dict[x509.Name, list[x509.Certificate]] = {}
            for cert in bundle.x509_authorities:
                by_subject.setdefault(cert.subject, []).append(cert)
                self._anchor_extensions[cert] = _Extensions(cert)
            self._anchors[name] = {subject: tuple(certs) for subject, certs in by_subject.items()}

    def trusts(self, trust_domain: str) -> bool:
        return trust_domain in self._anchors

    def verify(
        self,
        leaf: x509.Certificate,
        intermediates: Sequence[x509.Certificate],
        now: float,
        skew: float,
    ) -> VerifiedSvid | IdentityFailure:
        try:
            return self._verify(leaf, intermediates, now, skew)
        except UNUSABLE_CERTIFICATE as exc:
            # cryptography parses names and extensions lazily, and refuses key types and signature algorithms it
            # does not support: a hostile certificate surfaces here, and must be a denial, never a crashed call.
            return IdentityFailure(IdentityReason.MALFORMED_CERTIFICATE, f"unusable certificate: {exc}")

    def _verify(
        self, leaf: x509.Certificate, intermediates: Sequence[x509.Certificate], now: float, skew: float
    ) -> VerifiedSvid | IdentityFailure:
        extensions = _Extensions(leaf)
        san = extensions.san
        uris = san.get_values_for_type(x509.UniformResourceIdentifier) if san is not None else []
        if not uris:
            return IdentityFailure(IdentityReason.MALFORMED_SPIFFE_ID, "certificate has no URI SAN, so no SPIFFE ID")
        if len(uris) > 1:
            return IdentityFailure(
                IdentityReason.MULTIPLE_URI_SANS, f"an X.509-SVID has exactly one URI SAN, this one has {len(uris)}"
            )
        spiffe_id = parse_workload_id(uris[0])
        if isinstance(spiffe_id, str):
            return IdentityFailure(IdentityReason.MALFORMED_SPIFFE_ID, spiffe_id)

        constraints = extensions.basic_constraints
        if constraints is not None and constraints.ca:
            return IdentityFailure(IdentityReason.NOT_A_LEAF, "certificate is a CA (basicConstraints cA=true)")
        usage = extensions.key_usage
        if usage is None:
            return IdentityFailure(IdentityReason.NOT_A_LEAF, "leaf has no keyUsage (digitalSignature is required)")
        if usage.key_cert_sign or usage.crl_sign:
            return IdentityFailure(IdentityReason.NOT_A_LEAF, "leaf may sign certificates or CRLs")
        if not usage.digital_signature:
            return IdentityFailure(IdentityReason.NOT_A_LEAF, "leaf lacks the digitalSignature key usage")

        trust_domain = spiffe_id.trust_domain.name
        anchors = self._anchors.get(trust_domain)
        if anchors is None:
            return IdentityFailure(
                IdentityReason.UNTRUSTED_TRUST_DOMAIN, f"trust domain {trust_domain!r} is not trusted by this server"
            )

        not_before = leaf.not_valid_before_utc.timestamp()
        not_after = leaf.not_valid_after_utc.timestamp()
        if now + skew < not_before:
            return IdentityFailure(
                IdentityReason.NOT_YET_VALID, f"valid from {leaf.not_valid_before_utc.isoformat()}, now is {now:.0f}"
            )
        if now - skew > not_after:
            return IdentityFailure(IdentityReason.EXPIRED, f"expired at {leaf.not_valid_after_utc.isoformat()}")

        if len(intermediates) > MAX_PRESENTED_CERTIFICATES:
            return IdentityFailure(
                IdentityReason.CHAIN_INVALID,
                f"{len(intermediates)} intermediates presented, at most {MAX_PRESENTED_CERTIFICATES} are considered",
            )
        chained = self._chain(leaf, anchors, intermediates, 0, now, skew, trust_domain, _Budget())
        if isinstance(chained, str):
            return IdentityFailure(IdentityReason.CHAIN_INVALID, chained)
        der = leaf.public_bytes(serialization.Encoding.DER)
        return VerifiedSvid(
            str(spiffe_id),
            trust_domain,
            spiffe_id.path,
            not_before,
            not_after,
            min(not_after + skew, chained),
            hashlib.sha256(der).hexdigest(),
            format(leaf.serial_number, "x"),
        )

    def _chain(
        self,
        cert: x509.Certificate,
        anchors: dict[x509.Name, tuple[x509.Certificate, ...]],
        intermediates: Sequence[x509.Certificate],
        depth: int,
        now: float,
        skew: float,
        trust_domain: str,
        budget: _Budget,
    ) -> float | str:
        """Latest time the chain above `cert` holds, or why no chain to the bundle exists."""
        issuer = cert.issuer
        candidates = [(a, True) for a in anchors.get(issuer, ())]
        candidates += [(i, False) for i in intermediates if i.subject == issuer and i != cert]
        problems: list[str] = []
        for candidate, is_anchor in candidates:
            extensions = self._anchor_extensions.get(candidate) if is_anchor else budget.extensions.get(candidate)
            if extensions is None:
                extensions = budget.extensions[candidate] = _Extensions(candidate)
            problem = _issuer_problem(candidate, extensions, depth, now, skew)
            if problem is None:
                if budget.signature_checks >= MAX_SIGNATURE_CHECKS:
                    return f"gave up after {MAX_SIGNATURE_CHECKS} signature checks without reaching the bundle"
                budget.signature_checks += 1
                try:
                    cert.verify_directly_issued_by(candidate)
                except (InvalidSignature, *UNUSABLE_CERTIFICATE):
                    problem = f"signature does not verify with the key of {_name(candidate)!r}"
            if problem is not None:
                problems.append(problem)
                continue
            until = candidate.not_valid_after_utc.timestamp() + skew
            if is_anchor:
                return until
            if depth + 1 >= MAX_INTERMEDIATES:
                problems.append(f"more than {MAX_INTERMEDIATES} intermediates")
                continue
            above = self._chain(
                candidate,
                anchors,
                [i for i in intermediates if i != candidate],
                depth + 1,
                now,
                skew,
                trust_domain,
                budget,
            )
            if isinstance(above, float):
                return min(until, above)
            problems.append(above)
            if budget.signature_checks >= MAX_SIGNATURE_CHECKS:
                break
        if problems:
            return "; ".join(problems)
        return (
            f"no certificate in the bundle of {trust_domain!r} or in the presented chain issued "
            f"{issuer.rfc4514_string() or '(empty issuer)'!r}"
        )


def _issuer_problem(
    issuer: x509.Certificate, extensions: _Extensions, depth: int, now: float, skew: float
) -> str | None:
    """Why `issuer` may not sign the certificate `depth` intermediates below it, or None."""
    constraints = extensions.basic_constraints
    if constraints is None or not constraints.ca:
        return f"{_name(issuer)!r} is not a CA"
    if constraints.path_length is not None and depth > constraints.path_length:
        return f"{_name(issuer)!r} allows {constraints.path_length} intermediates below it, the chain has {depth}"
    usage = extensions.key_usage
    if usage is not None and not usage.key_cert_sign:
        return f"{_name(issuer)!r} lacks the keyCertSign key usage"
    if now - skew > issuer.not_valid_after_utc.timestamp():
        return f"{_name(issuer)!r} expired at {issuer.not_valid_after_utc.isoformat()}"
    if now + skew < issuer.not_valid_before_utc.timestamp():
        return f"{_name(issuer)!r} is not valid before {issuer.not_valid_before_utc.isoformat()}"
    return None

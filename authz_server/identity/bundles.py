"""Trust bundles: the X.509 authorities and JWT signing keys of each trusted trust domain.

A bundle file is either PEM certificates or a SPIFFE bundle (a JWKS whose keys
have `use: x509-svid`, carrying the certificate in `x5c`, or `use: jwt-svid`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from spiffe import JwtBundle, TrustDomain

_SHA256 = hashes.SHA256()
_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


class BundleError(ValueError):
    """A bundle that cannot be used; the message says why."""


@dataclass(frozen=True)
class TrustBundle:
    trust_domain: str
    x509_authorities: tuple[x509.Certificate, ...]
    jwt_authorities: JwtBundle | None = None
    origin: str = ""
    """Where it came from, for status and logs: a file path or "workload-api"."""

    def digest(self) -> str:
        sha = hashlib.sha256(self.trust_domain.encode())
        for cert in sorted(self.x509_authorities, key=lambda c: c.fingerprint(_SHA256)):
            sha.update(cert.fingerprint(_SHA256))
        if self.jwt_authorities is not None:
            for kid, key in sorted(self.jwt_authorities.jwt_authorities.items()):
                sha.update(kid.encode())
                sha.update(key.public_bytes(serialization.Encoding.DER, _SPKI))
        return sha.hexdigest()

    @property
    def earliest_expiry(self) -> float | None:
        if not self.x509_authorities:
            return None
        return min(c.not_valid_after_utc.timestamp() for c in self.x509_authorities)


@dataclass(frozen=True)
class BundleSet:
    """The bundles in force, by trust domain name. A new set means a new verifier."""

    bundles: Mapping[str, TrustBundle] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bundles", MappingProxyType(dict(self.bundles)))

    @property
    def version(self) -> str:
        sha = hashlib.sha256()
        for name in sorted(self.bundles):
            sha.update(self.bundles[name].digest().encode())
        return sha.hexdigest()[:16]

    def get(self, trust_domain: str) -> TrustBundle | None:
        return self.bundles.get(trust_domain)


def parse_bundle(trust_domain: str, data: bytes, *, origin: str = "") -> TrustBundle:
    """Parse PEM certificates or a SPIFFE bundle document; raises BundleError."""
    text = data.lstrip()
    if text.startswith(b"{"):
        return _parse_spiffe_bundle(trust_domain, data, origin)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise BundleError("neither PEM certificates nor a SPIFFE bundle (JWKS)")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise BundleError(f"invalid PEM certificate: {exc}") from exc
    _check_authorities(certs)
    return TrustBundle(trust_domain, tuple(certs), None, origin)


def parse_jwt_bundle(trust_domain: str, data: bytes) -> JwtBundle:
    """The jwt-svid keys of a SPIFFE bundle or plain JWKS; raises BundleError."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"not JSON: {exc}") from exc
    keys = _keys(document)
    return _jwt_bundle(trust_domain, [k for k in keys if k.get("use", "jwt-svid") == "jwt-svid"])


def _keys(document: Any) -> list[dict[str, Any]]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise BundleError('a SPIFFE bundle is a JSON object with a "keys" list')
    keys: list[dict[str, Any]] = document["keys"]
    if not all(isinstance(k, dict) for k in keys):
        raise BundleError('every entry of "keys" must be an object')
    return keys


def _parse_spiffe_bundle(trust_domain: str, data: bytes, origin: str) -> TrustBundle:
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"not valid JSON: {exc}") from exc
    certs: list[x509.Certificate] = []
    jwt_keys: list[dict[str, Any]] = []
    for index, key in enumerate(_keys(document)):
        use = key.get("use")
        if use == "x509-svid":
            chain = key.get("x5c")
            if not isinstance(chain, list) or len(chain) != 1 or not isinstance(chain[0], str):
                raise BundleError(f"keys[{index}]: an x509-svid key needs exactly one certificate in x5c")
            try:
                certs.append(x509.load_der_x509_certificate(base64.b64decode(chain[0], validate=True)))
            except (ValueError, binascii.Error) as exc:
                raise BundleError(f"keys[{index}]: invalid x5c certificate: {exc}") from exc
        elif use == "jwt-svid":
            jwt_keys.append(key)
        # Other uses are skipped: the SPIFFE bundle format says unknown uses must be ignored.
    _check_authorities(certs)
    jwt = _jwt_bundle(trust_domain, jwt_keys) if jwt_keys else None
    return TrustBundle(trust_domain, tuple(certs), jwt, origin)


def _jwt_bundle(trust_domain: str, keys: Iterable[dict[str, Any]]) -> JwtBundle:
    keys = list(keys)
    if any(not k.get("kid") for k in keys):
        raise BundleError('every jwt-svid key needs a "kid"')
    try:
        return JwtBundle.parse(TrustDomain(trust_domain), json.dumps({"keys": keys}).encode())
    except Exception as exc:
        raise BundleError(f"invalid jwt-svid key: {exc}") from exc


def _check_authorities(certs: list[x509.Certificate]) -> None:
    if not certs:
        raise BundleError("no X.509 authorities in the bundle")
    for cert in certs:
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise BundleError(f"{cert.subject.rfc4514_string()!r} is not a CA certificate")

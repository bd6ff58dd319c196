"""The identity stage: turn what Envoy forwarded into a verified SPIFFE ID, or one precise reason why not.

A verifier is built for one set of trust bundles and never changes; a bundle
change builds a new verifier, whose cache starts empty, so no result verified
against an old bundle outlives it.
"""

from __future__ import annotations

import hashlib
import math
import threading
import urllib.parse
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from cachetools import LRUCache
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from authz_server.call import Call
from authz_server.identity.bundles import BundleSet
from authz_server.identity.config import XFCC_LOCAL_PROXY, IdentityConfig
from authz_server.identity.jwtsvid import bearer_token, verify_jwt_svid
from authz_server.identity.result import Identity, IdentityFailure, IdentityReason, IdentityResult, Proof
from authz_server.identity.spiffe_ids import parse_workload_id
from authz_server.identity.x509svid import TrustStore, VerifiedSvid, decode_pem_certificates
from authz_server.identity.xfcc import XfccError, parse_xfcc

XFCC_HEADER = "x-forwarded-client-cert"
_XFCC_SINGLE_KEYS = ("by", "hash", "cert", "chain", "subject")

_NEGATIVE_CACHE_MAX_KEY = 8192
"""Failures are remembered only for credentials up to this size, so junk cannot fill memory."""


def credential_key(kind: str, *parts: str) -> bytes:
    """The cache key of a credential: its SHA-256, 32 bytes whatever a caller sends (a field may be 4 MiB).

    Credential text is never a key itself: `cache_size` keys of 100 KiB each would be a gigabyte."""
    digest = hashlib.sha256(kind.encode())
    for part in parts:
        digest.update(b"\0" + part.encode("utf-8", "surrogatepass"))
    return digest.digest()


def chain_key(pem: str) -> bytes | None:
    """The cache key of what a certificate field proves: the SHA-256 over the DER of its leaf (and any certificates
    after it), whatever text surrounds the PEM blocks; None when the field holds no certificate."""
    certs = decode_pem_certificates(urllib.parse.unquote(pem))
    if isinstance(certs, IdentityFailure):
        return None
    digest = hashlib.sha256(b"chain")
    for cert in certs:
        digest.update(cert.fingerprint(hashes.SHA256()))
    return digest.digest()


@dataclass(frozen=True, slots=True)
class CacheStats:
    hits: int
    misses: int
    size: int


class _ResultCache:
    """Results by credential text, each valid until its own deadline. Shared by the handler threads.

    Identities and failures live in separate LRUs of `maxsize` each, so a stream of junk credentials (cheap to
    make, each one different) can evict only other junk, never the identities of the callers doing real work.
    """

    def __init__(self, maxsize: int) -> None:
        self._good: LRUCache[Hashable, tuple[IdentityResult, float]] = LRUCache(maxsize)
        self._bad: LRUCache[Hashable, tuple[IdentityResult, float]] = LRUCache(maxsize)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, now: float) -> IdentityResult | None:
        entry = self.entry(key, now)
        return entry[0] if entry is not None else None

    def entry(self, key: Hashable, now: float, count: bool = True) -> tuple[IdentityResult, float] | None:
        """The result and the moment it stops being valid, or None; `count` False leaves hits and misses alone."""
        with self._lock:
            entry = self._good.get(key) or self._bad.get(key)
            found = entry is not None and now < entry[1]
            if count:
                if found:
                    self.hits += 1
                else:
                    self.misses += 1
            return entry if found else None

    def put(self, key: Hashable, result: IdentityResult, until: float) -> None:
        failed = isinstance(result, IdentityFailure)
        with self._lock:
            (self._bad if failed else self._good)[key] = (result, until)
            # A credential's verdict can change (its certificate expired): only the newest may answer.
            (self._good if failed else self._bad).pop(key, None)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self.hits, self.misses, len(self._good) + len(self._bad))


Reader = Callable[[Call, float], IdentityResult | None]


class IdentityVerifier:
    """Implements `IdentityStage` for one configuration and one set of trust bundles."""

    def __init__(self, config: IdentityConfig, bundles: BundleSet) -> None:
        self.config = config
        self.bundles = bundles
        self.version = bundles.version
        self._store = TrustStore(bundles)
        self._cache = _ResultCache(config.cache_size)
        self._skew = config.clock_skew_s
        self._negative_ttl = config.negative_cache_ttl_s
        self._trusted_proxies = frozenset(config.xfcc_trusted_proxies) - {XFCC_LOCAL_PROXY}
        self._trust_local_proxy = XFCC_LOCAL_PROXY in config.xfcc_trusted_proxies
        self._chain_from_xfcc = bool(config.xfcc_trusted_proxies)
        self._jwt_header = config.jwt_header.lower()
        readers: dict[str, Reader] = {
            "certificate": self._from_certificate,
            "xfcc": self._from_xfcc,
            "jwt": self._from_jwt,
            "principal": self._from_principal,
        }
        self._readers = tuple(readers[name] for name in config.sources)

    def verify(self, call: Call, now: float) -> IdentityResult:
        # The first source carrying a credential decides: a bad certificate must not fall back to a weaker proof.
        for reader in self._readers:
            result = reader(call, now)
            if result is not None:
                return result
        return IdentityFailure(IdentityReason.NO_IDENTITY, self._nothing_presented(call))

    def cache_stats(self) -> CacheStats:
        return self._cache.stats()

    # --- caching ---------------------------------------------------------------

    def _remember(self, key: Hashable, size: int, result: IdentityResult, until: float, now: float) -> None:
        """Keep `result` until `until` (successes) or for the negative TTL (failures of `size`-byte credentials)."""
        if isinstance(result, IdentityFailure):
            if result.reason is IdentityReason.NOT_YET_VALID or self._negative_ttl <= 0:
                return  # time heals it, or negative caching is off
            if size > _NEGATIVE_CACHE_MAX_KEY:
                return
            until = now + self._negative_ttl
        self._cache.put(key, result, until)

    # --- sources ---------------------------------------------------------------

    def _from_certificate(self, call: Call, now: float) -> IdentityResult | None:
        raw = call.source.certificate
        if not raw:
            return None
        key = credential_key("certificate", raw)
        result = self._cache.get(key, now)
        if not isinstance(result, Identity):
            # Envoy forwards only the leaf. Under an intermediate CA (Istio's plug-in cacerts, SPIRE with an
            # UpstreamAuthority) the chain comes from the XFCC element the local proxy appended. A leaf once
            # chained to the bundle is cached by itself; a failure is cached with the header it was judged with.
            header = call.headers.get(XFCC_HEADER, "") if self._chain_from_xfcc else ""
            judged = credential_key("certificate", raw, header, call.destination_principal) if header else key
            if header:
                result = self._cache.get(judged, now)
            if result is None:
                result, until = self._certificate_result(raw, header, call.destination_principal, now)
                self._remember(
                    key if isinstance(result, Identity) else judged, len(raw) + len(header), result, until, now
                )
        principal = call.source.principal
        if principal and isinstance(result, Identity) and principal != result.spiffe_id:
            return IdentityFailure(
                IdentityReason.PRINCIPAL_MISMATCH,
                f"Envoy's principal {principal!r} differs from the certificate's SPIFFE ID {result.spiffe_id!r}",
            )
        return result

    def _certificate_result(self, raw: str, header: str, destination: str, now: float) -> tuple[IdentityResult, float]:
        """A field not seen before: text around the PEM differs, the certificates may not. Those are verified once
        (without a sidecar chain: with one, the result also depends on the header, cached by the caller)."""
        proven = chain_key(raw) if not header else None
        if proven is None:
            return self._verify_certificate(raw, header, destination, now)
        entry = self._cache.entry(proven, now, count=False)  # the field's own lookup was counted
        if entry is not None:
            return entry
        result, until = self._verify_certificate(raw, header, destination, now)
        self._remember(proven, 0, result, until, now)
        return result, until

    def _verify_certificate(self, raw: str, header: str, destination: str, now: float) -> tuple[IdentityResult, float]:
        certs = decode_pem_certificates(urllib.parse.unquote(raw))
        if isinstance(certs, IdentityFailure):
            return certs, 0.0
        chain, why_not = self._sidecar_chain(header, destination)
        # Anything after the leaf, and the sidecar's chain, are candidate intermediates, never anchors.
        leaf = certs[0]
        intermediates = list(dict.fromkeys(c for c in (*certs[1:], *chain) if c != leaf))
        verified = self._store.verify(leaf, intermediates, now, self._skew)
        if isinstance(verified, IdentityFailure) and verified.reason is IdentityReason.CHAIN_INVALID and why_not:
            verified = IdentityFailure(verified.reason, f"{verified.detail}; {why_not}")
        return self._identity(verified, Proof.CERTIFICATE)

    def _sidecar_chain(self, header: str, destination: str) -> tuple[list[x509.Certificate], str]:
        """The intermediates in the `Chain` of the XFCC element a trusted proxy appended, or why there are none."""
        hint = (
            "Envoy forwards only the leaf: under an intermediate CA, have the local proxy put the chain in XFCC "
            "(set_current_client_cert_details chain: true) and list it in identity.xfcc_trusted_proxies"
        )
        if not header:
            return [], hint
        try:
            element = parse_xfcc(header)[-1]
        except XfccError as exc:
            return [], f"XFCC not used for intermediates: {exc}"
        by = element.get("by", ("",))[0]
        if not self._trusted_author(by, destination):
            return (
                [],
                f"XFCC Chain not used: its last element was appended by {by or 'a proxy without By'!r}, "
                "which is not in identity.xfcc_trusted_proxies",
            )
        chain_text = element.get("chain", ("",))
        if len(chain_text) != 1 or not chain_text[0]:
            return [], f"the XFCC element from {by!r} carries no single Chain; {hint}"
        decoded = decode_pem_certificates(urllib.parse.unquote(chain_text[0]))
        if isinstance(decoded, IdentityFailure):
            return [], f"XFCC Chain not used: {decoded.detail}"
        return decoded, ""

    def _trusted_author(self, by: str, destination: str) -> bool:
        """Whether an XFCC element's `By` names a proxy this server believes."""
        return bool(by) and (by in self._trusted_proxies or (self._trust_local_proxy and by == destination))

    def _from_xfcc(self, call: Call, now: float) -> IdentityResult | None:
        header = call.headers.get(XFCC_HEADER)
        if not header:
            return None
        # Whom the header's author must be can depend on the destination, so it is part of the key.
        key = credential_key("xfcc", header, call.destination_principal)
        result = self._cache.get(key, now)
        if result is None:
            result, until = self._verify_xfcc(header, call.destination_principal, now)
            self._remember(key, len(header), result, until, now)
        return result

    def _verify_xfcc(self, header: str, destination: str, now: float) -> tuple[IdentityResult, float]:
        try:
            elements = parse_xfcc(header)
        except XfccError as exc:
            return IdentityFailure(IdentityReason.UNTRUSTED_XFCC, f"malformed {XFCC_HEADER}: {exc}"), 0.0
        # Each proxy appends its own element; only the nearest one's statement is about the peer it saw.
        element = elements[-1]
        repeated = sorted(key for key in _XFCC_SINGLE_KEYS if len(element.get(key, ())) > 1)
        if repeated:
            # Envoy writes each of these once; two of them means the element was not written by Envoy alone.
            return IdentityFailure(
                IdentityReason.UNTRUSTED_XFCC, f"last {XFCC_HEADER} element repeats {', '.join(repeated)}"
            ), 0.0
        by = element.get("by", ("",))[0]
        if not self._trusted_author(by, destination):
            return IdentityFailure(
                IdentityReason.UNTRUSTED_XFCC,
                f"last {XFCC_HEADER} element was appended by {by or 'a proxy without By'!r}, "
                "which is not in xfcc_trusted_proxies",
            ), 0.0
        cert_text = element.get("cert", ("",))[0]
        chain_text = element.get("chain", ("",))[0]
        if not cert_text and not chain_text:
            return IdentityFailure(
                IdentityReason.NO_IDENTITY,
                f"the {XFCC_HEADER} element from {by!r} has no Cert or Chain "
                "(Envoy: set_current_client_cert_details cert: true)",
            ), 0.0
        chain: list[x509.Certificate] = []
        if chain_text:
            decoded = decode_pem_certificates(urllib.parse.unquote(chain_text))
            if isinstance(decoded, IdentityFailure):
                return IdentityFailure(decoded.reason, f"XFCC Chain: {decoded.detail}"), 0.0
            chain = decoded
        if cert_text:
            decoded = decode_pem_certificates(urllib.parse.unquote(cert_text))
            if isinstance(decoded, IdentityFailure):
                return IdentityFailure(decoded.reason, f"XFCC Cert: {decoded.detail}"), 0.0
            leaf, extra = decoded[0], decoded[1:]
        else:
            leaf, extra = chain[0], []
        intermediates = list(dict.fromkeys(c for c in (*extra, *chain) if c != leaf))
        verified = self._store.verify(leaf, intermediates, now, self._skew)
        if isinstance(verified, VerifiedSvid):
            digest = element.get("hash", ("",))[0]
            if digest and digest.lower() != verified.fingerprint:
                return IdentityFailure(
                    IdentityReason.UNTRUSTED_XFCC, f"XFCC Hash {digest!r} is not the SHA-256 of its Cert"
                ), 0.0
            for uri in element.get("uri", ()):
                if uri != verified.spiffe_id:
                    return IdentityFailure(
                        IdentityReason.PRINCIPAL_MISMATCH,
                        f"XFCC URI {uri!r} differs from the certificate's SPIFFE ID {verified.spiffe_id!r}",
                    ), 0.0
        return self._identity(verified, Proof.XFCC)

    def _from_jwt(self, call: Call, now: float) -> IdentityResult | None:
        value = call.headers.get(self._jwt_header)
        if not value:
            return None
        token = bearer_token(value)
        audience = self.config.jwt_audience or call.destination_principal
        if not audience:
            return IdentityFailure(
                IdentityReason.JWT_INVALID,
                "no audience to check the JWT-SVID against: the destination principal is empty and jwt_audience unset",
            )
        key = credential_key("jwt", token, audience)
        result = self._cache.get(key, now)
        if result is None:
            result = verify_jwt_svid(token, audience, self.bundles)
            until = result.expires_at if isinstance(result, Identity) and result.expires_at is not None else 0.0
            self._remember(key, len(token), result, until, now)
        return result

    def _from_principal(self, call: Call, now: float) -> IdentityResult | None:
        principal = call.source.principal
        if not principal:
            return None
        key = credential_key("principal", principal)
        result = self._cache.get(key, now)
        if result is None:
            result = self._principal_identity(principal)
            self._remember(key, len(principal), result, math.inf, now)
        return result

    def _principal_identity(self, principal: str) -> IdentityResult:
        spiffe_id = parse_workload_id(principal)
        if isinstance(spiffe_id, str):
            return IdentityFailure(IdentityReason.MALFORMED_SPIFFE_ID, f"Envoy's principal: {spiffe_id}")
        trust_domain = spiffe_id.trust_domain.name
        if not self._store.trusts(trust_domain):
            return IdentityFailure(
                IdentityReason.UNTRUSTED_TRUST_DOMAIN, f"trust domain {trust_domain!r} is not trusted by this server"
            )
        return Identity(str(spiffe_id), trust_domain, spiffe_id.path, Proof.PRINCIPAL, None)

    # --- helpers ---------------------------------------------------------------

    @staticmethod
    def _identity(verified: VerifiedSvid | IdentityFailure, proof: Proof) -> tuple[IdentityResult, float]:
        if isinstance(verified, IdentityFailure):
            return verified, 0.0
        identity = Identity(
            verified.spiffe_id,
            verified.trust_domain,
            verified.path,
            proof,
            verified.not_after,
            verified.not_before,
            verified.fingerprint,
            verified.serial or None,
        )
        return identity, verified.valid_until

    def _nothing_presented(self, call: Call) -> str:
        looked = ", ".join(self.config.sources)
        detail = f"no credential in any configured source ({looked})"
        if call.source.principal and "principal" not in self.config.sources:
            detail += (
                f"; Envoy sent only the principal {call.source.principal!r}: enable include_peer_certificate, "
                "or accept it with trust_proxy_principal and the 'principal' source "
                "(an Istio waypoint cannot send the certificate: ambient mode is not supported)"
            )
        return detail

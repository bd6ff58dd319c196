"""The identity stage: turn what Envoy forwarded into a verified SPIFFE ID, or one precise reason why not.

A verifier is built for one set of trust bundles and never changes; a bundle
change builds a new verifier, whose cache starts empty, so no result verified
against an old bundle outlives it.
"""

from __future__ import annotations

import math
import threading
import urllib.parse
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from cachetools import LRUCache
from cryptography import x509

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
        with self._lock:
            entry = self._good.get(key) or self._bad.get(key)
            if entry is not None and now < entry[1]:
                self.hits += 1
                return entry[0]
            self.misses += 1
            return None

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
        result = self._cache.get(raw, now)
        if result is None:
            result, until = self._verify_certificate(raw, now)
            self._remember(raw, len(raw), result, until, now)
        principal = call.source.principal
        if principal and isinstance(result, Identity) and principal != result.spiffe_id:
            return IdentityFailure(
                IdentityReason.PRINCIPAL_MISMATCH,
                f"Envoy's principal {principal!r} differs from the certificate's SPIFFE ID {result.spiffe_id!r}",
            )
        return result

    def _verify_certificate(self, raw: str, now: float) -> tuple[IdentityResult, float]:
        certs = decode_pem_certificates(urllib.parse.unquote(raw))
        if isinstance(certs, IdentityFailure):
            return certs, 0.0
        # Envoy sends the leaf only; anything after it is used as intermediates, never as anchors.
        leaf, intermediates = certs[0], list(dict.fromkeys(c for c in certs[1:] if c != certs[0]))
        return self._identity(self._store.verify(leaf, intermediates, now, self._skew), Proof.CERTIFICATE)

    def _from_xfcc(self, call: Call, now: float) -> IdentityResult | None:
        header = call.headers.get(XFCC_HEADER)
        if not header:
            return None
        # Whom the header's author must be can depend on the destination, so it is part of the key.
        key = ("xfcc", header, call.destination_principal)
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
        if not by or (by not in self._trusted_proxies and not (self._trust_local_proxy and by == destination)):
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
        key = ("jwt", token, audience)
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
        key = ("principal", principal)
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
                "or accept it with trust_proxy_principal and the 'principal' source"
            )
        return detail

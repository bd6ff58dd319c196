"""Configuration of the identity stage (section `identity`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from spiffe import SpiffeId, TrustDomain

KNOWN_SOURCES = ("certificate", "xfcc", "jwt", "principal")
XFCC_LOCAL_PROXY = "destination"
"""In xfcc_trusted_proxies: the local proxy itself, i.e. a `By` equal to attributes.destination.principal."""


def workload_api_endpoint(socket: str) -> str:
    """The Workload API address in the form the `spiffe` client takes: a bare path becomes unix://path."""
    if socket.startswith("/"):
        return f"unix://{socket}"
    if socket.startswith("unix:/") and not socket.startswith("unix://"):
        return f"unix://{socket[len('unix:') :]}"
    return socket


@dataclass(frozen=True)
class TrustDomainConfig:
    bundle: str = ""
    """Path of the trust domain's bundle: PEM certificates, or a SPIFFE bundle (JWKS with x509-svid and jwt-svid
    keys). Empty: the bundle comes from the Workload API."""
    jwt_bundle: str = ""
    """Path of a SPIFFE bundle / JWKS holding the JWT-SVID signing keys, when `bundle` is PEM."""


@dataclass(frozen=True)
class IdentityConfig:
    trust_domains: dict[str, TrustDomainConfig] = field(default_factory=dict)
    """Trust domains this server accepts callers from, each with its own bundle. When a Workload API socket is set
    and this is empty, every trust domain the agent hands out (its own and federated ones) is trusted."""
    sources: tuple[str, ...] = ("certificate",)
    """Where to read the caller's identity from, strongest first: certificate, xfcc, jwt, principal.
    The first source that carries a credential decides; a bad credential is a denial, never a fall-through."""
    trust_proxy_principal: bool = False
    """Accept attributes.source.principal without a certificate ("trust the proxy's mTLS")."""
    clock_skew_s: float = 60.0
    """Tolerance when comparing certificate validity periods with this server's clock."""
    xfcc_trusted_proxies: tuple[str, ...] = ()
    """SPIFFE IDs of proxies whose x-forwarded-client-cert is believed: the `By` of the header's last element
    (the one the nearest proxy appended) must be one of these. The word `destination` stands for the local
    proxy's own identity (attributes.destination.principal), as with Istio sidecars using APPEND_FORWARD. The
    `certificate` source also takes intermediates from that element's Chain (leaves under an intermediate CA)."""
    jwt_header: str = "authorization"
    """Header carrying a JWT-SVID (a leading "Bearer " is removed)."""
    jwt_audience: str = ""
    """Audience a JWT-SVID must name; empty: the destination's SPIFFE ID (attributes.destination.principal)."""
    workload_api_socket: str = ""
    """SPIFFE Workload API endpoint for live bundles, e.g. unix:///run/spire/sockets/agent.sock; empty: off."""
    workload_api_start_timeout_s: float = 10.0
    """How long start-up waits for the Workload API's first bundles."""
    bundle_poll_interval_s: float = 2.0
    """How often bundle files are checked for changes (Kubernetes swaps a ConfigMap's `..data` symlink)."""
    cache_size: int = 10000
    """Verification results kept (by certificate / token); a bundle change starts a fresh cache."""
    negative_cache_ttl_s: float = 30.0
    """How long a failed verification is remembered (0: never), so a repeated bad credential costs a lookup."""

    def validate(self) -> list[str]:
        problems = []
        for source in self.sources:
            if source not in KNOWN_SOURCES:
                problems.append(f"sources: unknown source {source!r} (known: {', '.join(sorted(KNOWN_SOURCES))})")
        if len(set(self.sources)) != len(self.sources):
            problems.append("sources: each source may appear once")
        if "principal" in self.sources and not self.trust_proxy_principal:
            problems.append("sources: 'principal' requires trust_proxy_principal: true")
        if "xfcc" in self.sources and not self.xfcc_trusted_proxies:
            problems.append("xfcc_trusted_proxies: required when sources include 'xfcc'")
        for proxy in self.xfcc_trusted_proxies:
            if proxy == XFCC_LOCAL_PROXY:
                continue
            try:
                SpiffeId(proxy)
            except Exception as exc:
                problems.append(f"xfcc_trusted_proxies: {exc}")
        for name, trust_domain in self.trust_domains.items():
            if not trust_domain.bundle and not self.workload_api_socket:
                problems.append(f"trust_domains.{name}.bundle: required unless workload_api_socket is set")
            try:
                if TrustDomain(name).name != name:
                    problems.append(f"trust_domains.{name}: write the trust domain in lower case")
            except Exception as exc:
                problems.append(f"trust_domains.{name}: {exc}")
        if self.jwt_audience and not self.jwt_header:
            problems.append("jwt_header: must not be empty")
        if self.workload_api_socket and not workload_api_endpoint(self.workload_api_socket).startswith("unix:///"):
            expected = "unix:///absolute/path (or /absolute/path)"
            problems.append(f"workload_api_socket: expected {expected}, got {self.workload_api_socket!r}")
        if self.clock_skew_s < 0:
            problems.append(f"clock_skew_s: must be >= 0, got {self.clock_skew_s}")
        if self.workload_api_start_timeout_s <= 0:
            problems.append(f"workload_api_start_timeout_s: must be > 0, got {self.workload_api_start_timeout_s}")
        if self.bundle_poll_interval_s <= 0:
            problems.append(f"bundle_poll_interval_s: must be > 0, got {self.bundle_poll_interval_s}")
        if self.cache_size < 1:
            problems.append(f"cache_size: must be >= 1, got {self.cache_size}")
        if self.negative_cache_ttl_s < 0:
            problems.append(f"negative_cache_ttl_s: must be >= 0, got {self.negative_cache_ttl_s}")
        return problems

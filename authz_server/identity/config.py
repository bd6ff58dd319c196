"""Configuration of the identity stage (section `identity`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TrustDomainConfig:
    bundle: str = ""
    """Path of the trust domain's bundle: PEM certificates, or a SPIFFE bundle (JWKS)."""


@dataclass(frozen=True)
class IdentityConfig:
    trust_domains: dict[str, TrustDomainConfig] = field(default_factory=dict)
    """Trust domains this server accepts callers from, each with its own bundle."""
    sources: tuple[str, ...] = ("certificate",)
    """Where to read the caller's identity from, strongest first: certificate, xfcc, jwt, principal."""
    trust_proxy_principal: bool = False
    """Accept attributes.source.principal without a certificate ("trust the proxy's mTLS")."""
    clock_skew_s: float = 60.0

    def validate(self) -> list[str]:
        problems = []
        known = {"certificate", "xfcc", "jwt", "principal"}
        for source in self.sources:
            if source not in known:
                problems.append(f"sources: unknown source {source!r} (known: {', '.join(sorted(known))})")
        if self.clock_skew_s < 0:
            problems.append(f"clock_skew_s: must be >= 0, got {self.clock_skew_s}")
        return problems

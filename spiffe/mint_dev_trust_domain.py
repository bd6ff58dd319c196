"""Mint a throwaway SPIFFE trust domain on disk, for running authz-server locally without SPIRE.

    python spiffe/mint_dev_trust_domain.py --out /tmp/td \\
        spiffe://example.org/ns/checkout/sa/checkout spiffe://example.org/ns/payments/sa/payments-api

writes, under --out:

    bundle.pem                     the trust domain's root (what the server verifies callers against)
    svids/<ns>.<sa>.pem / .key     one X.509-SVID per SPIFFE ID (leaf first; key mode 0600)
    config.yaml                    an authz-server configuration trusting bundle.pem, policies from policies/
    policies/                      empty: put AllowedCalls declarations here

It uses the same CA code (authz_server/dev/trust_domain.py) as `authz-server demo` and the end-to-end tests.
The key of the CA is never written: mint again for new SVIDs. Not for production: SVIDs there come from SPIRE.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from authz_server.dev.trust_domain import TrustDomainCA


@dataclass(frozen=True)
class MintedTrustDomain:
    trust_domain: str
    bundle: Path
    svids: dict[str, tuple[Path, Path]]
    """SPIFFE ID -> (certificate chain, private key)."""
    config: Path


def svid_file_stem(path: str) -> str:
    """`ns.sa` for Kubernetes-style SPIFFE ID paths, otherwise the path with `/` as `.`."""
    parts = path.strip("/").split("/")
    if len(parts) == 4 and parts[0] == "ns" and parts[2] == "sa":
        return f"{parts[1]}.{parts[3]}"
    return ".".join(parts) or "root"


def mint(out: Path, spiffe_ids: list[str], ttl: dt.timedelta = dt.timedelta(hours=24)) -> MintedTrustDomain:
    """Create the CA, issue one SVID per ID (all in one trust domain), write bundle and configuration."""
    from spiffe import SpiffeId

    parsed = []
    for value in spiffe_ids:
        try:
            parsed.append(SpiffeId(value))
        except Exception as exc:  # the spiffe package raises its own error types; all mean a bad ID
            raise ValueError(str(exc)) from exc
    domains = {spiffe_id.trust_domain.name for spiffe_id in parsed}
    if len(domains) != 1:
        raise ValueError(f"all SPIFFE IDs must share one trust domain, got {', '.join(sorted(domains))}")
    (trust_domain,) = domains
    ca = TrustDomainCA.create(trust_domain, ttl=ttl + dt.timedelta(hours=1))
    bundle = ca.write_bundle(out / "bundle.pem")
    svids = {}
    for spiffe_id in parsed:
        svid = ca.issue(str(spiffe_id), ttl=ttl)
        svids[str(spiffe_id)] = svid.write(out / "svids", svid_file_stem(spiffe_id.path))
    policies = out / "policies"
    policies.mkdir(parents=True, exist_ok=True)
    config = out / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": "127.0.0.1:9191",
                "workers": 1,
                "identity": {"trust_domains": {trust_domain: {"bundle": str(bundle)}}},
                "policy": {"paths": [str(policies)]},
                "metrics": {"listen": "127.0.0.1:9090"},
            },
            sort_keys=False,
        )
    )
    return MintedTrustDomain(trust_domain, bundle, svids, config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Mint a throwaway SPIFFE trust domain for local runs.")
    parser.add_argument("--out", required=True, type=Path, help="directory to write into (created if missing)")
    parser.add_argument("--ttl-hours", type=float, default=24.0, help="lifetime of the SVIDs (default 24)")
    parser.add_argument("spiffe_ids", nargs="+", metavar="SPIFFE_ID", help="one SVID is issued for each")
    args = parser.parse_args(argv)
    try:
        minted = mint(args.out, args.spiffe_ids, dt.timedelta(hours=args.ttl_hours))
    except ValueError as exc:
        print(f"mint_dev_trust_domain: {exc}", file=sys.stderr)
        return 2
    print(f"trust domain {minted.trust_domain}: bundle {minted.bundle}")
    for spiffe_id, (cert, key) in minted.svids.items():
        print(f"  {spiffe_id}: {cert} {key}")
    print(f"server: authz-server serve --config {minted.config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

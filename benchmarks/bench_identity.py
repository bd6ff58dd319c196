"""Cost of the identity stage per call, cached and uncached, for each identity source.

    .venv/bin/python benchmarks/bench_identity.py [--seconds 20]

Prints a table of p50/p99 microseconds and writes benchmarks/out/identity.json.
"Uncached" means a certificate (or token) the verifier has not seen: decode,
checks, and one ECDSA P-256 signature verification per chain link.
"""

from __future__ import annotations

import argparse
import base64
import json
import platform
import statistics
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.call import Call, parse_call
from authz_server.dev.trust_domain import TrustDomainCA
from authz_server.identity import BundleSet, IdentityFailure, IdentityVerifier, parse_bundle
from authz_server.identity.config import IdentityConfig

TRUST_DOMAIN = "example.org"
CALLEE = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/payments"
PROXY = f"spiffe://{TRUST_DOMAIN}/ns/edge/sa/gateway"
OUT = Path(__file__).parent / "out" / "identity.json"


def _call(certificate: str = "", principal: str = "", headers: dict[str, str] | None = None) -> Call:
    request = external_auth_pb2.CheckRequest()
    request.attributes.source.certificate = certificate
    request.attributes.source.principal = principal
    request.attributes.destination.principal = CALLEE
    for name, value in (headers or {}).items():
        request.attributes.request.http.headers[name] = value
    return parse_call(request)


def _quote(pem: bytes) -> str:
    return urllib.parse.quote(pem.decode(), safe="")


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000

    return {"n": len(ordered), "p50_us": pick(0.50), "p99_us": pick(0.99), "mean_us": statistics.fmean(ordered) / 1000}


def _measure(
    calls: list[Call],
    make_stage: Callable[[], IdentityVerifier],
    warm: bool,
    budget_s: float,
    limit: int,
    expect: str = "identity",
) -> dict[str, float]:
    """Time stage.verify per call; a fresh stage for every pass over `calls` when not warm.

    `expect` is "identity" or the reason code every call must be refused with.
    """
    samples: list[int] = []
    deadline = time.monotonic() + budget_s
    stage = make_stage()
    if warm:
        for c in calls:
            stage.verify(c, time.time())
    clock = time.perf_counter_ns
    while len(samples) < limit and time.monotonic() < deadline:
        if not warm:
            stage = make_stage()
        now = time.time()
        for c in calls:
            t0 = clock()
            result = stage.verify(c, now)
            samples.append(clock() - t0)
            outcome = result.reason.value if isinstance(result, IdentityFailure) else "identity"
            if outcome != expect:
                raise SystemExit(f"benchmark setup is broken: expected {expect}, got {result}")
    return _percentiles(samples)


def _tangle(ca: TrustDomainCA, count: int) -> str:
    """An XFCC element whose Chain is TrustDomainCA.tangled_chain: a leaf and `count` mutually signing CAs."""
    leaf, tangle = ca.tangled_chain(f"spiffe://{TRUST_DOMAIN}/t", count)
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, *tangle))
    return f"By={PROXY};Chain={_quote(pem)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="upper bound on the whole run")
    args = parser.parse_args()
    started = time.monotonic()

    ca = TrustDomainCA.create(TRUST_DOMAIN)
    intermediate = ca.intermediate()
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key())) | {"kid": "k1", "use": "jwt-svid"}
    root = ca.certificate.public_bytes(serialization.Encoding.DER)
    x509_key = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ca.certificate.public_key()))  # type: ignore[arg-type]
    x509_key |= {"use": "x509-svid", "x5c": [base64.b64encode(root).decode()]}
    bundle = parse_bundle(TRUST_DOMAIN, json.dumps({"keys": [x509_key, jwk]}).encode())
    bundles = BundleSet({TRUST_DOMAIN: bundle})

    distinct = 200
    svids = [ca.issue(f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/w{i}") for i in range(distinct)]
    via_intermediate = [intermediate.issue(f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/i{i}") for i in range(distinct // 2)]
    cert_calls = [
        _call(_quote(s.cert_pem), principal=f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/w{i}") for i, s in enumerate(svids)
    ]
    xfcc_calls = [
        _call(
            headers={
                "x-forwarded-client-cert": f"By={PROXY};Cert={_quote(s.cert_pem)};Chain={_quote(s.chain_pem)};"
                f'Subject="O=SPIRE";URI=spiffe://{TRUST_DOMAIN}/ns/shop/sa/i{i}'
            }
        )
        for i, s in enumerate(via_intermediate)
    ]
    issued = int(time.time())
    jwt_calls = [
        _call(
            headers={
                "authorization": "Bearer "
                + jwt.encode(
                    {
                        "sub": f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/j{i}",
                        "aud": CALLEE,
                        "exp": issued + 600,
                        "iat": issued,
                    },
                    key,
                    algorithm="ES256",
                    headers={"kid": "k1", "typ": "JWT"},
                )
            }
        )
        for i in range(distinct // 2)
    ]
    principal_calls = [_call(principal=f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/p{i}") for i in range(distinct)]
    # Refusals: forgeries in our trust domain's name (one signature check each, then a negative cache entry),
    # and the worst chain a caller can build (intermediates that all sign each other: the walk's budget).
    impostor = TrustDomainCA.create(TRUST_DOMAIN)
    forged = [impostor.issue(f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/f{i}") for i in range(50)]
    forged_calls = [_call(_quote(svid.cert_pem)) for svid in forged]
    tangle_calls = [_call(headers={"x-forwarded-client-cert": _tangle(ca, 12)}) for _ in range(5)]

    configs = {
        "certificate": IdentityConfig(),
        "xfcc (leaf + intermediate)": IdentityConfig(sources=("xfcc",), xfcc_trusted_proxies=(PROXY,)),
        "jwt": IdentityConfig(sources=("jwt",)),
        "principal": IdentityConfig(sources=("principal",), trust_proxy_principal=True),
        "certificate, forged (refused)": IdentityConfig(),
        "xfcc, tangled chain (refused)": IdentityConfig(sources=("xfcc",), xfcc_trusted_proxies=(PROXY,)),
    }
    workloads = {
        "certificate": cert_calls,
        "xfcc (leaf + intermediate)": xfcc_calls,
        "jwt": jwt_calls,
        "principal": principal_calls,
        "certificate, forged (refused)": forged_calls,
        "xfcc, tangled chain (refused)": tangle_calls,
    }
    expected = {"certificate, forged (refused)": "chain-invalid", "xfcc, tangled chain (refused)": "chain-invalid"}
    remaining = args.seconds - (time.monotonic() - started)
    per_case = max(0.2, remaining / (len(workloads) * 2) * 0.9)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, calls in workloads.items():
        config = configs[name]

        def make(config: IdentityConfig = config) -> IdentityVerifier:
            return IdentityVerifier(config, bundles)

        expect = expected.get(name, "identity")
        results[name] = {
            "cached": _measure(calls, make, warm=True, budget_s=per_case, limit=200_000, expect=expect),
            "uncached": _measure(calls, make, warm=False, budget_s=per_case, limit=5_000, expect=expect),
        }

    print(f"identity stage, per call (python {platform.python_version()}, {platform.machine()})")
    print(f"{'source':<32} {'mode':<9} {'n':>8} {'p50 µs':>9} {'p99 µs':>9} {'mean µs':>9}")
    for name, modes in results.items():
        for mode, r in modes.items():
            print(f"{name:<32} {mode:<9} {int(r['n']):>8} {r['p50_us']:>9.2f} {r['p99_us']:>9.2f} {r['mean_us']:>9.2f}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "benchmark": "identity",
                "python": platform.python_version(),
                "machine": platform.machine(),
                "seconds": round(time.monotonic() - started, 2),
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {OUT} in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

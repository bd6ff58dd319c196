"""What one worker holds in memory at the caps that bound it: the figures behind the Deployment's memory limit.

`python -m benchmarks.memory_caps` starts `authz-server serve` (aio, every stage on, one worker), reads its
resident memory from /proc after the first calls, then fills one cache at a time over gRPC and reads it again:

- identity results: `--identity` distinct certificate fields (distinct text before one valid PEM);
- identity failures: `--identity` distinct ~7 KiB fields that fail to decode;
- risk state: `--identities` distinct SVIDs of one trust domain, two calls each on its own route.

The decision-log queue and calls in flight are bounded by configuration in bytes (`log.queue_max_bytes`,
`admission.max_in_flight` x gRPC's message cap), so they are not measured here. benchmarks/RESULTS.md, "Memory at
the caps", gives the sum and tests/manifests checks the Deployment's limit against it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import yaml

from authz_server._proto.envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from authz_server.dev.mesh import ServerProcess, free_port
from authz_server.dev.trust_domain import TrustDomainCA
from benchmarks.servers import CHECK_METHOD

TRUST_DOMAIN = "example.org"
CALLEE = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/payments"
DECLARATIONS = f"""
apiVersion: authz-server.dev/v1alpha1
kind: AllowedCalls
metadata: {{name: payments, namespace: shop}}
spec:
  workload: {CALLEE}
  rules:
    - name: everyone
      from: [{{prefix: "spiffe://{TRUST_DOMAIN}/*"}}]
      to: [{{methods: [GET], paths: ["/**"]}}]
"""


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def check_request(certificate: str, path: str = "/v1/items") -> bytes:
    attributes = attribute_context_pb2.AttributeContext(
        source=attribute_context_pb2.AttributeContext.Peer(certificate=certificate),
        destination=attribute_context_pb2.AttributeContext.Peer(principal=CALLEE),
        request=attribute_context_pb2.AttributeContext.Request(
            http=attribute_context_pb2.AttributeContext.HttpRequest(method="GET", path=path, host="payments")
        ),
    )
    return external_auth_pb2.CheckRequest(attributes=attributes).SerializeToString()


def measure(workdir: Path, identity_entries: int, identities: int) -> dict[str, float]:
    ca = TrustDomainCA.create(TRUST_DOMAIN)
    (workdir / "policies").mkdir(parents=True, exist_ok=True)
    (workdir / "policies" / "declarations.yaml").write_text(DECLARATIONS)
    config = {
        "identity": {"trust_domains": {TRUST_DOMAIN: {"bundle": str(ca.write_bundle(workdir / "bundle.pem"))}}},
        "policy": {"paths": [str(workdir / "policies")]},
        "log": {"decisions": str(workdir / "decisions.jsonl")},
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    server = ServerProcess(workdir / "config.yaml", free_port(), workdir / "server.log").start()
    assert server.process is not None
    pid = server.process.pid
    found: dict[str, float] = {}
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            check = channel.unary_unary(CHECK_METHOD, request_serializer=None, response_deserializer=None)

            def send(requests: list[bytes]) -> None:
                with ThreadPoolExecutor(4) as pool:
                    list(pool.map(lambda r: check(r, timeout=30), requests))

            def settled() -> float:
                time.sleep(1.0)
                return resident_mib(pid)

            pem = urllib.parse.quote(ca.issue(f"spiffe://{TRUST_DOMAIN}/ns/a/sa/one").cert_pem.decode(), safe="")
            send([check_request(pem)] * 200)
            found["baseline_mib"] = before = settled()
            send([check_request(urllib.parse.quote(f"junk{i:06d} ", safe="") + pem) for i in range(identity_entries)])
            found["identity_results_mib"] = (after := settled()) - before
            junk = "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n"
            failing = [urllib.parse.quote(junk.format(f"{i:08d}" * 900), safe="") for i in range(identity_entries)]
            send([check_request(field) for field in failing])
            found["identity_failures_mib"] = (before := settled()) - after
            svids = [ca.issue(f"spiffe://{TRUST_DOMAIN}/ns/n{i // 100}/sa/w{i}") for i in range(identities)]
            calls = [
                check_request(urllib.parse.quote(s.cert_pem.decode(), safe=""), f"/v1/items/{i}")
                for i, s in enumerate(svids)
            ]
            send(calls)
            send(calls)
            found["identities_mib"] = settled() - before
    finally:
        server.stop()
    return {key: round(value, 1) for key, value in found.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_caps", description=__doc__.split("\n")[0])
    parser.add_argument("--identity", type=int, default=10_000, help="entries per identity cache (its cap)")
    parser.add_argument("--identities", type=int, default=10_000, help="distinct callers for the risk state")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        print(json.dumps(measure(Path(tmp), options.identity, options.identities)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

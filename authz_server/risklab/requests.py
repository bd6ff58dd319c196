"""Simulated calls through the real request path: CheckRequests with minted SVIDs, an Authorizer as `serve` builds it.

`LabServer` writes a YAML config (identity: the lab's trust bundle; policy: the site's AllowedCalls; risk: the
model under test; log: a decision-log file), loads it with `load_config`, and builds the Authorizer with the same
`StageSources` and `load_authorizer` that `authz-server serve` uses. The one difference is the clock: the lab
hands the Authorizer a simulated clock so a day of traffic replays in seconds and every stage (certificate
validity, rule lifetimes, risk windows) sees the simulated time the call carries in `request.time`.

Each event becomes the CheckRequest Envoy would send: the caller's leaf certificate (URL-encoded PEM, Envoy's
`include_peer_certificate`), its URI SAN as the principal, the pod's address and an ephemeral port, the callee's
principal, `request.time`, the method, path and host, and a `content-length` header when there is a body
(`http.size` stays 0: the project's Envoy does not buffer bodies). Certificates are real: minted by the lab's CA
with the serial and lifetime of the replica's current SVID, once per (workload, replica, rotation).
"""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.audit import DecisionLog
from authz_server.config import load_config
from authz_server.dev.trust_domain import TrustDomainCA
from authz_server.risklab.simulator import Event, SvidRef
from authz_server.risklab.sites import TRUST_DOMAIN, SiteSpec, spiffe_id
from authz_server.transport.serve import StageSources, load_authorizer

CheckRequest = external_auth_pb2.CheckRequest

LOG_BACKLOG = 20_000
"""Replay pauses while the decision-log writer has more lines than this queued (each holds a call and a decision,
a few KB): a day replays faster than the writer encodes, and an unbounded queue would hold the whole day."""


def lab_ca(valid_from: float) -> TrustDomainCA:
    """A root valid for a year from `valid_from` (simulated sites live in the past or the future)."""
    return TrustDomainCA.create(
        TRUST_DOMAIN, ttl=dt.timedelta(days=365), valid_from=dt.datetime.fromtimestamp(valid_from - 86400, dt.UTC)
    )


class CertificateCache:
    """One real leaf certificate per (workload, replica, rotation), minted on first use, URL-encoded as Envoy sends
    it. Bounded (LRU): a replay only ever needs the SVIDs of the last lifetime."""

    def __init__(self, ca: TrustDomainCA, limit: int = 20_000) -> None:
        self.ca = ca
        self.limit = limit
        self.minted = 0
        self._pems: OrderedDict[SvidRef, str] = OrderedDict()
        self.serials: dict[SvidRef, int] = {}

    def pem(self, ref: SvidRef) -> str:
        pem = self._pems.get(ref)
        if pem is not None:
            self._pems.move_to_end(ref)
            return pem
        svid = self.ca.issue(
            spiffe_id(ref.workload),
            not_before=dt.datetime.fromtimestamp(ref.not_before, dt.UTC),
            not_after=dt.datetime.fromtimestamp(ref.not_after, dt.UTC),
        )
        self.minted += 1
        pem = urllib.parse.quote(svid.cert_pem.decode(), safe="")
        self._pems[ref] = pem
        self.serials[ref] = svid.certificate.serial_number
        if len(self._pems) > self.limit:
            old, _ = self._pems.popitem(last=False)
            self.serials.pop(old, None)
        return pem


def check_request(event: Event, request_id: str, certificate: str) -> external_auth_pb2.CheckRequest:
    """The CheckRequest Envoy sends for this call."""
    request = CheckRequest()
    attributes = request.attributes
    source = attributes.source
    source.address.socket_address.address = event.address
    source.address.socket_address.port_value = event.port
    source.principal = spiffe_id(event.caller)
    source.certificate = certificate
    attributes.destination.principal = spiffe_id(event.callee)
    attributes.destination.address.socket_address.address = "10.255.0.1"
    attributes.destination.address.socket_address.port_value = 8443
    seconds = int(event.ts)
    attributes.request.time.seconds = seconds
    attributes.request.time.nanos = int((event.ts - seconds) * 1e9)
    http = attributes.request.http
    http.id = request_id
    http.method = event.method
    http.path = event.path
    namespace, name = event.callee.split("/")
    http.host = f"{name}.{namespace}.svc.cluster.local"
    http.scheme = "https"
    http.protocol = "HTTP/1.1"
    headers = http.headers
    headers[":authority"] = http.host
    headers["x-request-id"] = request_id
    headers["user-agent"] = f"{event.caller.split('/')[1]}/1.0"
    if event.size > 0:
        headers["content-length"] = str(event.size)
        headers["content-type"] = "application/json"
    return request


@dataclass(frozen=True)
class Verdict:
    """What the decision log says about one replayed call."""

    verdict: str
    reason: str
    score: float | None
    band: str | None
    top_factor: str | None

    @property
    def risk_denied(self) -> bool:
        """Denied by risk, or in the deny band while the stage is in shadow (it would have been)."""
        return self.band == "high" or (self.verdict == "deny" and self.reason == "risk")


class LabServer:
    """The Authorizer `serve` builds from a YAML config, fed simulated CheckRequests on a simulated clock."""

    def __init__(
        self,
        workdir: Path,
        site: SiteSpec,
        certificates: CertificateCache,
        model: str = "",
        risk: dict[str, Any] | None = None,
        log_name: str = "decisions.jsonl",
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.certificates = certificates
        bundle = certificates.ca.write_bundle(workdir / "bundle.pem")
        policies = workdir / "policies"
        policies.mkdir(exist_ok=True)
        (policies / "declarations.yaml").write_text(site.declarations())
        self.decision_log = workdir / log_name
        self.decision_log.unlink(missing_ok=True)
        config = {
            "identity": {"trust_domains": {TRUST_DOMAIN: {"bundle": str(bundle)}}},
            "policy": {"paths": [str(policies)]},
            # warmup_s: the warm-up shadow counts from the server's wall-clock start, which a simulated day
            # never reaches; the lab enforces from the first call, so a feedback loop would show.
            # budget_ms: generous, so a preempted core on a shared machine does not turn scores into skips;
            # the latency budget is measured in benchmarks/, not here.
            "risk": {"model": model, "warmup_s": 0, "budget_ms": 50, **(risk or {})},
            "log": {"decisions": str(self.decision_log), "max_bytes": 0, "queue_size": 4 * LOG_BACKLOG},
        }
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.config = load_config(self.config_path)
        self.sources = StageSources.from_config(self.config)
        self.sink = DecisionLog(self.config.log)
        self.sink.start()
        self._now = 0.0
        self.authorizer = load_authorizer(self.config, self.sources, self.sink, clock=lambda: self._now)
        self.replayed = 0

    def check(self, event: Event, request_id: str) -> bytes:
        self._now = event.ts
        request = check_request(event, request_id, self.certificates.pem(event.svid))
        return self.authorizer.check(request)

    def replay(self, events: Iterable[Event], prefix: str = "c") -> int:
        """Every event through the Authorizer, in order; request ids are `prefix-N`. Returns how many."""
        count = 0
        for event in events:
            count += 1
            self.check(event, f"{prefix}-{count}")
            if count % 1000 == 0:
                while self.sink.queued > LOG_BACKLOG:
                    time.sleep(0.01)
        self.replayed += count
        return count

    def close(self) -> None:
        """Stop the watchers and write out the decision log."""
        self.sources.close()
        self.sink.close(timeout_s=120)
        if self.sink.dropped:
            raise RuntimeError(f"decision log {self.decision_log}: {self.sink.dropped} lines dropped")

    def __enter__(self) -> LabServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_verdicts(path: Path) -> Iterator[tuple[str, Verdict]]:
    """(request id, verdict) of every line of a decision log the lab wrote."""
    with path.open() as handle:
        for line in handle:
            record = json.loads(line)
            risk = record.get("risk") or {}
            factors = risk.get("factors") or []
            yield record["request"]["id"], Verdict(
                record["verdict"], record["reason"], risk.get("score"), risk.get("band"),
                factors[0]["name"] if factors else None,
            )  # fmt: skip

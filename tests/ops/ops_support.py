"""A small trust domain, declarations and an in-process decision path for the ops tests.

Everything is real: certificates minted by dev/trust_domain.py, bundles and
declarations on disk, the identity and policy stages loaded from them, and the
decision log writing to a real file.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.audit.config import LogConfig
from authz_server.audit.log import DecisionLog
from authz_server.authorizer import Authorizer, Runtime
from authz_server.dev.trust_domain import TrustDomainCA
from authz_server.identity.config import IdentityConfig, TrustDomainConfig
from authz_server.identity.source import IdentitySource
from authz_server.policy import load_policies

TRUST_DOMAIN = "example.org"
PAYMENTS = f"spiffe://{TRUST_DOMAIN}/ns/payments/sa/payments-api"
CHECKOUT = f"spiffe://{TRUST_DOMAIN}/ns/checkout/sa/checkout"
BILLING = f"spiffe://{TRUST_DOMAIN}/ns/billing/sa/invoices"
REPORTS = f"spiffe://{TRUST_DOMAIN}/ns/billing/sa/reports"
INTRUDER = f"spiffe://{TRUST_DOMAIN}/ns/web/sa/storefront"
LEDGER = f"spiffe://{TRUST_DOMAIN}/ns/payments/sa/ledger"

DECLARATIONS = f"""\
apiVersion: authz-server.dev/v1alpha1
kind: AllowedCalls
metadata:
  name: payments-api
  namespace: payments
spec:
  workload: {PAYMENTS}
  mode: enforce
  rules:
    - name: checkout-charges
      from:
        - id: {CHECKOUT}
      to:
        - methods: [POST]
          paths: [/v1/charges, /v1/refunds/*]
    - name: billing-reads
      from:
        - namespace: billing
          serviceAccount: "*"
      to:
        - methods: [GET]
          paths: [/v1/charges/**]
---
apiVersion: authz-server.dev/v1alpha1
kind: AllowedCalls
metadata:
  name: ledger
  namespace: payments
spec:
  workload: {LEDGER}
  mode: dry-run
  rules:
    - name: checkout-entries
      from:
        - id: {CHECKOUT}
      to:
        - methods: [POST]
          paths: [/v1/entries]
"""


def declarations_without_reports() -> str:
    """The same set with billing reads narrowed to one service account: `reports` loses access."""
    return DECLARATIONS.replace('serviceAccount: "*"', "serviceAccount: invoices")


@dataclass
class Workspace:
    """A trust domain with one bundle file and a directory of declarations."""

    root: Path
    declarations: str = DECLARATIONS
    ca: TrustDomainCA = field(default_factory=lambda: TrustDomainCA.create(TRUST_DOMAIN))
    _certificates: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bundle = self.ca.write_bundle(self.root / "bundle.pem")
        self.policies = self.write_policies("policies", self.declarations)

    def write_policies(self, name: str, text: str) -> Path:
        directory = self.root / name
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "declarations.yaml").write_text(text)
        return directory

    @property
    def identity_config(self) -> IdentityConfig:
        return IdentityConfig(trust_domains={TRUST_DOMAIN: TrustDomainConfig(bundle=str(self.bundle))})

    def server_config(self, **sections: Any) -> dict[str, Any]:
        config: dict[str, Any] = {
            "identity": {"trust_domains": {TRUST_DOMAIN: {"bundle": str(self.bundle)}}},
            "policy": {"paths": [str(self.policies)]},
            "risk": {"enabled": False},
            "grace_period_s": 5,
            "workers": 1,
        }
        config.update(sections)
        return config

    def certificate(self, spiffe_id: str) -> str:
        """URL-encoded PEM of an SVID for spiffe_id, as Envoy forwards it (minted once per ID)."""
        if spiffe_id not in self._certificates:
            pem = self.ca.issue(spiffe_id).cert_pem.decode()
            self._certificates[spiffe_id] = urllib.parse.quote(pem, safe="")
        return self._certificates[spiffe_id]

    def request(
        self,
        caller: str | None,
        method: str = "GET",
        path: str = "/v1/charges/1",
        *,
        headers: Mapping[str, str] | None = None,
        destination: str = PAYMENTS,
        address: str = "10.0.0.7",
    ) -> external_auth_pb2.CheckRequest:
        """A CheckRequest as Envoy sends it for `caller` (None: a peer without a certificate)."""
        request = external_auth_pb2.CheckRequest()
        source = request.attributes.source
        if caller is not None:
            source.principal = caller
            source.certificate = self.certificate(caller)
        source.address.socket_address.address = address
        source.address.socket_address.port_value = 40000
        request.attributes.destination.principal = destination
        http = request.attributes.request.http
        http.method, http.path, http.host, http.id = method, path, "payments.payments.svc", f"req-{time.time_ns()}"
        for name, value in (headers or {}).items():
            http.headers[name] = value
        request.attributes.request.time.GetCurrentTime()
        return request

    def authorizer(self, log: DecisionLog) -> Authorizer:
        """The real identity and policy stages, as the server builds them (risk off)."""
        identity = IdentitySource(self.identity_config).load()
        return Authorizer(Runtime(identity=identity, policy=load_policies([str(self.policies)])), log)


def decision_id(response: bytes) -> str:
    """The x-authz-decision-id a CheckResponse carries."""
    from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2 as pb

    reply = pb.CheckResponse.FromString(response)
    options = list(reply.ok_response.headers) + list(reply.denied_response.headers)
    for option in options:
        if option.header.key == "x-authz-decision-id":
            return str(option.header.value)
    meta = reply.dynamic_metadata.fields.get("decision_id")
    if meta is not None:
        return str(meta.string_value)
    raise AssertionError(f"no decision id in {reply}")


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_log(path: Path, **config: Any) -> DecisionLog:
    log = DecisionLog(LogConfig(decisions=str(path), flush_interval_ms=20, **config))
    log.start()
    return log


def risk_authorizer(workspace: Workspace, log: DecisionLog, **risk: Any) -> Authorizer:
    """The real identity, policy and risk stages (the bundled ONNX model); `risk` overrides RiskConfig."""
    from authz_server.risk.config import RiskConfig
    from authz_server.risk.model_source import RiskSource

    identity = IdentitySource(workspace.identity_config).load()
    scorer = RiskSource(RiskConfig(**{"warmup_s": 0.0, **risk})).load()
    # A generous budget: these tests are about what is logged, not about the latency budget.
    policy = load_policies([str(workspace.policies)])
    runtime = Runtime(identity=identity, policy=policy, risk=scorer, risk_budget_s=1.0)
    return Authorizer(runtime, log)

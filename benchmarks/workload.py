"""A realistic mix of CheckRequests for one sidecar: many callers, routes, certificates and header sets.

One workload drives every measurement (in-process, direct gRPC, through Envoy),
so the numbers compare. The callee is `payments`; its routes and who may call
them are one table (`ROUTES`), rendered three ways: AllowedCalls declarations
for this server, an equivalent Envoy RBAC config (the in-process floor), and
the requests themselves.

The mix, by default: most calls are allowed; some are refused by policy (a
caller on a route it has no grant for); some fail identity (a foreign trust
domain, an expired certificate, no certificate); some are allowed but
anomalous (odd methods, long paths, unusual header sets), which the risk
stage scores higher.
"""

from __future__ import annotations

import datetime as dt
import random
import struct
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.dev.trust_domain import Svid, TrustDomainCA

TRUST_DOMAIN = "example.org"
FOREIGN_TRUST_DOMAIN = "partner.example"
CALLEE = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/payments"
CALLEE_NAMESPACE = "shop"
CALLEE_NAME = "payments"
CALLER_HEADER = "x-bench-caller"
"""Header the client-side Envoy routes on to pick which caller's SVID to present (never reaches the server)."""


class Kind(StrEnum):
    """What the server is expected to conclude for a request."""

    ALLOWED = "allowed"
    POLICY_DENIED = "policy-denied"
    IDENTITY_DENIED = "identity-denied"
    ANOMALOUS = "anomalous"
    """Allowed by policy, but unusual enough that the risk stage should score it higher."""


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    prefix: str
    """Path prefix the rule grants (every route is a collection under this prefix)."""
    callers: tuple[str, ...]
    """Service accounts (names under ns/<namespace>/sa/) allowed to call it."""


# Service accounts calling `payments`, by namespace.
CALLER_ACCOUNTS: dict[str, tuple[str, ...]] = {
    "shop": ("checkout", "cart", "frontend", "orders", "invoices"),
    "support": ("agent-console", "refund-bot"),
    "analytics": ("reporting", "fraud-scoring"),
    "edge": ("gateway",),
}

ROUTES: tuple[Route, ...] = (
    Route("create-charge", "POST", "/v1/charges", ("shop/checkout", "shop/orders")),
    Route(
        "read-charge", "GET", "/v1/charges/", ("shop/checkout", "shop/orders", "shop/invoices", "analytics/reporting")
    ),
    Route("capture-charge", "POST", "/v1/captures/", ("shop/orders",)),
    Route("create-refund", "POST", "/v1/refunds", ("support/agent-console", "support/refund-bot")),
    Route("read-refund", "GET", "/v1/refunds/", ("support/agent-console", "support/refund-bot", "analytics/reporting")),
    Route("list-methods", "GET", "/v1/customers/", ("shop/checkout", "shop/cart", "shop/frontend")),
    Route("score", "POST", "/v1/risk/score", ("analytics/fraud-scoring",)),
    Route("export", "GET", "/v1/exports/", ("analytics/reporting",)),
    Route("public-config", "GET", "/v1/config", ("shop/frontend", "edge/gateway", "shop/cart")),
)

USER_AGENTS = (
    "grpc-go/1.66.0",
    "okhttp/4.12.0",
    "python-httpx/0.27.0",
    "Go-http-client/2.0",
    "envoy/1.40.0",
)
ANOMALOUS_USER_AGENTS = ("curl/8.5.0", "sqlmap/1.8", "python-requests/2.31.0", "")


def spiffe_id(account: str, trust_domain: str = TRUST_DOMAIN) -> str:
    namespace, name = account.split("/")
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{name}"


def all_accounts() -> tuple[str, ...]:
    return tuple(f"{ns}/{name}" for ns, names in CALLER_ACCOUNTS.items() for name in names)


@dataclass(frozen=True)
class Mix:
    """Shares of each kind of request; the remainder after the others is ALLOWED."""

    policy_denied: float = 0.10
    identity_denied: float = 0.05
    anomalous: float = 0.05

    def kind(self, rng: random.Random) -> Kind:
        roll = rng.random()
        for kind, share in (
            (Kind.POLICY_DENIED, self.policy_denied),
            (Kind.IDENTITY_DENIED, self.identity_denied),
            (Kind.ANOMALOUS, self.anomalous),
        ):
            if roll < share:
                return kind
            roll -= share
        return Kind.ALLOWED


@dataclass(frozen=True)
class Sample:
    """One request of the workload, with what the server should conclude."""

    kind: Kind
    caller: str
    """The caller's account (ns/name), or a description for identity failures."""
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    request: external_auth_pb2.CheckRequest

    @property
    def serialized(self) -> bytes:
        return self.request.SerializeToString()


def _quote_pem(pem: bytes) -> str:
    """attributes.source.certificate as Envoy sends it: the URL-encoded PEM of the peer's leaf."""
    return urllib.parse.quote(pem.decode(), safe="")


@dataclass
class TrustDomainFixture:
    """The workload's certificates: one SVID per caller account, plus the bad ones identity must refuse."""

    ca: TrustDomainCA
    svids: dict[str, Svid]
    foreign: Svid
    expired: Svid
    replicas: int

    @classmethod
    def create(cls, replicas: int = 3) -> TrustDomainFixture:
        """`replicas` certificates per account: pods of one deployment hold different SVIDs of one SPIFFE ID."""
        ca = TrustDomainCA.create(TRUST_DOMAIN)
        svids = {
            f"{account}#{replica}": ca.issue(spiffe_id(account))
            for account in all_accounts()
            for replica in range(replicas)
        }
        foreign = TrustDomainCA.create(FOREIGN_TRUST_DOMAIN).issue(spiffe_id("shop/checkout", FOREIGN_TRUST_DOMAIN))
        past = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
        expired = ca.issue(spiffe_id("shop/checkout"), not_before=past, ttl=dt.timedelta(hours=1))
        return cls(ca, svids, foreign, expired, replicas)

    @property
    def foreign_id(self) -> str:
        return spiffe_id("shop/checkout", FOREIGN_TRUST_DOMAIN)

    def svid(self, account: str, replica: int = 0) -> Svid:
        return self.svids[f"{account}#{replica % self.replicas}"]

    def write_bundle(self, path: Path) -> Path:
        return self.ca.write_bundle(path)


@dataclass
class Workload:
    """Generates CheckRequests shaped like the ones Envoy 1.40 sends with include_peer_certificate."""

    certs: TrustDomainFixture
    mix: Mix = field(default_factory=Mix)
    seed: int = 7

    def __post_init__(self) -> None:
        self._quoted: dict[int, str] = {}

    # --- policy, three ways -------------------------------------------------

    def declarations_yaml(self) -> str:
        """AllowedCalls declarations granting exactly ROUTES (authz_server/policy/README.md)."""
        rules = [
            {
                "name": route.name,
                "from": [{"id": spiffe_id(caller)} for caller in route.callers],
                "to": [{"methods": [route.method], "paths": [_policy_path(route.prefix)]}],
            }
            for route in ROUTES
        ]
        document = {
            "apiVersion": "authz-server.dev/v1alpha1",
            "kind": "AllowedCalls",
            "metadata": {"name": CALLEE_NAME, "namespace": CALLEE_NAMESPACE},
            "spec": {"workload": CALLEE, "rules": rules},
        }
        return yaml.safe_dump(document, sort_keys=False)

    def rbac_config(self) -> dict[str, Any]:
        """An envoy.filters.http.rbac config enforcing the same grants in Envoy itself (default deny)."""
        policies: dict[str, Any] = {}
        for route in ROUTES:
            path: dict[str, Any] = {"prefix": route.prefix} if route.prefix.endswith("/") else {"exact": route.prefix}
            policies[route.name] = {
                "permissions": [
                    {
                        "and_rules": {
                            "rules": [
                                {"header": {"name": ":method", "string_match": {"exact": route.method}}},
                                {"url_path": {"path": path}},
                            ]
                        }
                    }
                ],
                "principals": [
                    {"authenticated": {"principal_name": {"exact": spiffe_id(caller)}}} for caller in route.callers
                ],
            }
        return {"rules": {"action": "ALLOW", "policies": policies}}

    # --- requests ---------------------------------------------------------------

    def samples(self, count: int, *, kinds: Sequence[Kind] | None = None) -> list[Sample]:
        """`count` requests in a deterministic order (same seed, same list)."""
        rng = random.Random(self.seed)
        out = []
        for i in range(count):
            kind = self.mix.kind(rng) if kinds is None else kinds[i % len(kinds)]
            out.append(self._sample(kind, rng, i))
        return out

    def _sample(self, kind: Kind, rng: random.Random, index: int) -> Sample:
        if kind is Kind.POLICY_DENIED:
            route = rng.choice(ROUTES)
            outsiders = [a for a in all_accounts() if a not in route.callers]
            caller = rng.choice(outsiders)
            method, path = route.method, _concrete_path(route, rng)
        else:
            route = rng.choice(ROUTES)
            caller = rng.choice(route.callers)
            method, path = route.method, _concrete_path(route, rng)
        headers = _headers(rng, kind)
        if kind is Kind.ANOMALOUS:
            path = path + "/" + "a" * rng.randint(200, 900) if route.prefix.endswith("/") else path
            headers += tuple((f"x-debug-{n}", "1" * rng.randint(10, 200)) for n in range(rng.randint(10, 30)))
        svid = self.certs.svid(caller, rng.randrange(self.certs.replicas))
        certificate, principal = self._quoted_cert(svid), spiffe_id(caller)
        label = caller
        if kind is Kind.IDENTITY_DENIED:
            choice = rng.randrange(3)
            if choice == 0:
                certificate, principal = self._quoted_cert(self.certs.foreign), self.certs.foreign_id
                label = "foreign trust domain"
            elif choice == 1:
                certificate = self._quoted_cert(self.certs.expired)
                label = "expired certificate"
            else:
                certificate, principal, label = "", "", "no certificate"
        request = _check_request(index, method, path, headers, certificate, principal, rng)
        return Sample(kind, label, method, path, headers, request)

    def _quoted_cert(self, svid: Svid) -> str:
        key = id(svid)
        if key not in self._quoted:
            self._quoted[key] = _quote_pem(svid.cert_pem)
        return self._quoted[key]


def _policy_path(prefix: str) -> str:
    """A collection prefix grants everything below it (`/**`), as RBAC's prefix match does."""
    return prefix + "**" if prefix.endswith("/") else prefix


def _concrete_path(route: Route, rng: random.Random) -> str:
    if route.prefix.endswith("/"):
        return f"{route.prefix}{rng.choice(('ch', 're', 'cus', 'ex'))}_{rng.getrandbits(48):012x}"
    return route.prefix


def _headers(rng: random.Random, kind: Kind) -> tuple[tuple[str, str], ...]:
    """What an application's HTTP client and the client-side proxy put on a mesh call."""
    agent = rng.choice(ANOMALOUS_USER_AGENTS if kind is Kind.ANOMALOUS else USER_AGENTS)
    headers: list[tuple[str, str]] = [
        ("user-agent", agent),
        ("accept", rng.choice(("application/json", "*/*", "application/grpc"))),
        ("x-forwarded-proto", "https"),
        ("x-b3-traceid", f"{rng.getrandbits(64):016x}"),
        ("x-b3-spanid", f"{rng.getrandbits(64):016x}"),
        ("x-b3-sampled", "0"),
    ]
    if rng.random() < 0.5:
        headers.append(("content-type", "application/json"))
    if rng.random() < 0.3:
        headers.append(("idempotency-key", f"{rng.getrandbits(128):032x}"))
    if rng.random() < 0.2:
        headers.append(("x-authz-decision", "allow"))  # a client trying to forge the annotation
    if rng.random() < 0.4:
        headers.append(("accept-encoding", "gzip, deflate, br"))
    return tuple(headers)


def _check_request(
    index: int,
    method: str,
    path: str,
    headers: tuple[tuple[str, str], ...],
    certificate: str,
    principal: str,
    rng: random.Random,
) -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    attributes = request.attributes
    source = attributes.source
    source.address.socket_address.address = f"10.0.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    source.address.socket_address.port_value = rng.randrange(32768, 61000)
    source.principal = principal
    source.certificate = certificate
    destination = attributes.destination
    destination.address.socket_address.address = "10.0.9.17"
    destination.address.socket_address.port_value = 8443
    destination.principal = CALLEE
    now = time.time()
    attributes.request.time.seconds = int(now)
    attributes.request.time.nanos = int((now % 1) * 1e9)
    http = attributes.request.http
    http.id = str(10_000_000_000 + index)
    http.method = method
    http.path = path
    http.host = "payments.shop.svc.cluster.local"
    http.scheme = "https"
    http.protocol = "HTTP/2"
    http.size = rng.choice((0, 0, 128, 512, 2048)) if method == "POST" else 0
    request_id = f"{rng.getrandbits(128):032x}"
    for name, value in (
        (":authority", http.host),
        (":method", method),
        (":path", path),
        (":scheme", "https"),
        ("x-request-id", request_id),
        *headers,
    ):
        http.headers[name] = value
    attributes.tls_session.sni = "outbound_.8443_._.payments.shop.svc.cluster.local"
    return request


def grpc_frame(message: bytes) -> bytes:
    """The gRPC length-prefixed message: no compression flag, 4-byte big-endian length, the bytes."""
    return struct.pack(">BI", 0, len(message)) + message

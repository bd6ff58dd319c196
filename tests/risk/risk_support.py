"""Helpers shared by the risk tests: CheckRequests as Envoy sends them with minted SVIDs, parsed and verified by the
real parse and identity stages; a small benign site as decision-log lines; models written to disk."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import random
import urllib.parse
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.call import Call, parse_call
from authz_server.dev.trust_domain import Svid, TrustDomainCA
from authz_server.identity import BundleSet, IdentityVerifier, parse_bundle
from authz_server.identity.config import IdentityConfig
from authz_server.identity.result import Identity
from authz_server.policy.outcome import Mode, PolicyOutcome, PolicyReason, RiskTimeoutAction
from authz_server.risk.model import bundled_model_path

TRUST_DOMAIN = "example.org"
CALLEE = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/catalog"
CA = TrustDomainCA.create(TRUST_DOMAIN)
VERIFIER = IdentityVerifier(IdentityConfig(), BundleSet({TRUST_DOMAIN: parse_bundle(TRUST_DOMAIN, CA.bundle_pem)}))
T0 = dt.datetime.now(dt.UTC).replace(microsecond=0)
"""Simulated calls happen from here on (the CA is valid from a minute ago); every SVID minted below is valid from
here for a day unless told otherwise."""


@dataclass(frozen=True)
class Workload:
    spiffe_id: str
    svid: Svid
    address: str

    @property
    def certificate(self) -> str:
        return urllib.parse.quote(self.svid.cert_pem.decode(), safe="")


def workload(
    name: str = "shop/frontend", address: str = "10.1.2.3", lifetime: dt.timedelta = dt.timedelta(days=1)
) -> Workload:
    namespace, account = name.split("/")
    spiffe_id = f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{account}"
    return Workload(spiffe_id, CA.issue(spiffe_id, not_before=T0, ttl=lifetime), address)


def check_request(
    caller: Workload,
    path: str = "/products/1",
    *,
    at: float,
    method: str = "GET",
    callee: str = CALLEE,
    address: str | None = None,
    content_length: int | None = None,
) -> external_auth_pb2.CheckRequest:
    """What Envoy sends for one call: the peer certificate, source address, request.time, headers."""
    request = external_auth_pb2.CheckRequest()
    attributes = request.attributes
    attributes.source.certificate = caller.certificate
    attributes.source.principal = caller.spiffe_id
    attributes.source.address.socket_address.address = address or caller.address
    attributes.source.address.socket_address.port_value = 40000
    attributes.destination.principal = callee
    attributes.request.time.seconds = int(at)
    attributes.request.time.nanos = int((at % 1) * 1e9)
    http = attributes.request.http
    http.id, http.method, http.path, http.host, http.protocol = "req", method, path, "catalog", "HTTP/1.1"
    if content_length is not None:
        http.headers["content-length"] = str(content_length)
    return request


def parsed(caller: Workload, path: str = "/products/1", *, at: float, **request: Any) -> tuple[Call, Identity]:
    """The call and the identity the server's own parse and identity stages make of it, `at` on both clocks."""
    call = parse_call(check_request(caller, path, at=at, **request))
    identity = VERIFIER.verify(call, at)
    assert isinstance(identity, Identity), identity
    return call, identity


def at(hours: float) -> float:
    """`hours` after T0, in Unix seconds."""
    return T0.timestamp() + hours * 3600


def granted(
    path: str = "/products/1",
    max_risk: float | None = None,
    shadow: bool = False,
    on_timeout: RiskTimeoutAction = RiskTimeoutAction.ALLOW,
    mode: Mode = Mode.ENFORCE,
) -> PolicyOutcome:
    return PolicyOutcome(
        True, PolicyReason.ALLOWED, "v1", "shop/catalog", "read", mode, path, max_risk, on_timeout, shadow
    )


# --- a small benign site as decision-log lines ---------------------------------------------------------------

SITE_START = 1772409600.0
"""2026-03-02 00:00 UTC."""


def benign_site_log(days: float = 3.0, seed: int = 5) -> Iterator[dict[str, Any]]:
    """Decision-log lines of a small site: a steady API reader, an office-hours console and a nightly batch job that
    walks ids, 1 h SVIDs rotated at half-life, every call allowed and scored low by the model of the day."""
    rng = random.Random(seed)
    habits = [
        # caller, callee, templates (method, path, body), calls a minute by UTC hour
        ("shop/frontend", "shop/catalog", [("GET", "/products/{}", 0), ("POST", "/carts/{}", 600)],
         lambda h: 20 if 7 <= h < 23 else 4),
        ("ops/console", "shop/admin", [("GET", "/admin/users/{}", 0)], lambda h: 2 if 8 <= h < 18 else 0),
        ("shop/reporting", "shop/orders", [("GET", "/orders/{}", 0)], lambda h: 30 if h == 2 else 0),
    ]  # fmt: skip
    cursor = {name: rng.randrange(10_000) for name, *_ in habits}
    n = 0
    for minute in range(int(days * 24 * 60)):
        t0 = SITE_START + minute * 60
        hour = int(t0 // 3600 % 24)
        for caller, callee, routes, rate in habits:
            for _ in range(_poisson(rng, rate(hour))):
                ts = t0 + rng.random() * 60
                method, path, body = rng.choice(routes)
                if caller == "shop/reporting":
                    cursor[caller] += 1
                    ident = cursor[caller]
                else:
                    ident = int(rng.paretovariate(1.2)) % 5000
                n += 1
                yield log_line(f"d{n}", caller, callee, method, path.format(ident), ts,
                               body and int(body * rng.lognormvariate(0, 0.3)))  # fmt: skip


def log_line(
    decision_id: str, caller: str, callee: str, method: str, path: str, ts: float, size: int = 0, **extra: Any
) -> dict[str, Any]:
    """A decision-log line as audit/record.py writes it (the fields training reads)."""
    namespace, account = caller.split("/")
    spiffe_id = f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{account}"
    issued = ts - ts % 1800
    line: dict[str, Any] = {
        "schema": 1,
        "decision_id": decision_id,
        "ts": ts,
        "verdict": "allow",
        "reason": "allowed",
        "source": {
            "spiffe_id": spiffe_id,
            "address": site_address(caller, int(ts // 86400)),
            "serial": f"{zlib.crc32(f'{caller}{issued}'.encode()):x}",
            "not_before": issued,
            "expires_at": issued + 3600,
        },
        "destination": f"spiffe://{TRUST_DOMAIN}/ns/{callee.replace('/', '/sa/')}",
        "request": {"method": method, "path": path, "content_length": size or -1, "received_at": ts},
        "risk": {"status": "scored", "score": 0.01, "band": "low", "feature_schema": "v2"},
    }
    line.update(extra)
    return line


def site_address(workload: str, replica: int = 0) -> str:
    """The address a workload of the benign site calls from: one /24 per workload, replicas come and go in it."""
    return f"10.1.{zlib.crc32(workload.encode()) % 200}.{7 + replica % 5}"


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    count, threshold, product = 0, pow(2.718281828459045, -mean), rng.random()
    while product > threshold:
        count += 1
        product *= rng.random()
    return count


def write_log(path: Path, lines: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> Path:
    with path.open("w") as handle:
        for line in lines:
            handle.write(json.dumps(line) + "\n")
    return path


# --- models on disk -------------------------------------------------------------------------------------------


def bundled_bytes() -> bytes:
    return bundled_model_path().read_bytes()


def with_metadata(data: bytes, **changes: str) -> bytes:
    """The model with some metadata_props replaced (keys with dots written as double underscores)."""
    model = onnx.load_model_from_string(data)
    wanted = {k.replace("__", "."): v for k, v in changes.items()}
    for prop in model.metadata_props:
        if prop.key in wanted:
            prop.value = wanted.pop(prop.key)
    for key, value in wanted.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    out: bytes = model.SerializeToString()
    return out


def slow_model(width: int = 1536, seed: int = 1) -> bytes:
    """A valid model (the bundled one's metadata), slow on purpose: three MatMul layers `width` wide."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from authz_server.risk.features import N_FEATURES

    rng = np.random.default_rng(seed)
    sizes = (N_FEATURES, width, width, width, N_FEATURES)
    initializers, nodes, previous = [], [], "features"
    for k, (a, b) in enumerate(itertools.pairwise(sizes)):
        weights = rng.normal(0, 1 / np.sqrt(a), (a, b)).astype(np.float32)
        initializers.append(numpy_helper.from_array(weights, f"w{k}"))
        nodes.append(helper.make_node("MatMul", [previous, f"w{k}"], [f"h{k}"]))
        previous = f"h{k}"
    nodes += [
        helper.make_node("Abs", [previous], ["surprise"]),
        helper.make_node("ReduceMax", ["surprise"], ["top"], axes=[1], keepdims=0),
        helper.make_node("Sigmoid", ["top"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", N_FEATURES])],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("surprise", TensorProto.FLOAT, ["N", N_FEATURES]),
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    bundled = onnx.load_model_from_string(bundled_bytes())
    helper.set_model_props(model, {p.key: p.value for p in bundled.metadata_props})
    out: bytes = model.SerializeToString()
    return with_metadata(out, authz__model_version="slow-test-model")


def write(path: Path, data: bytes) -> Path:
    """Write as a deploy would: a new file renamed over the old one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)
    return path

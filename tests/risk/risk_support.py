"""Helpers shared by the risk tests: calls and identities as the server builds them, models written to disk."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from types import MappingProxyType

import numpy as np
import onnx

from authz_server.call import Call, Peer
from authz_server.identity.result import Identity, Proof
from authz_server.policy.outcome import Mode, PolicyOutcome, PolicyReason, RiskTimeoutAction
from authz_server.risk.autoencoder import Autoencoder, to_onnx
from authz_server.risk.features import N_FEATURES
from authz_server.risk.model import bundled_model_path

TRUST_DOMAIN = "example.org"
CALLEE = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/catalog"
_EMPTY: MappingProxyType[str, str] = MappingProxyType({})


def identity(workload: str = "shop/frontend", lifetime_s: float = 3600.0, now: float | None = None) -> Identity:
    now = time.time() if now is None else now
    namespace, name = workload.split("/")
    path = f"/ns/{namespace}/sa/{name}"
    return Identity(f"spiffe://{TRUST_DOMAIN}{path}", TRUST_DOMAIN, path, Proof.CERTIFICATE, now + lifetime_s / 2,
                    now - lifetime_s / 2)  # fmt: skip


def call(
    caller: Identity, path: str = "/products/1", method: str = "GET", size: int = 0, callee: str = CALLEE,
    at: float | None = None,
) -> Call:  # fmt: skip
    return Call(
        "req", Peer(caller.spiffe_id, "", "10.0.0.1", 0), callee, method, path, "", "catalog", "https", "HTTP/1.1",
        _EMPTY, _EMPTY, size, "", time.time() if at is None else at,
    )  # fmt: skip


def granted(
    path: str = "/products/1", max_risk: float | None = None, shadow: bool = False,
    on_timeout: RiskTimeoutAction = RiskTimeoutAction.ALLOW, mode: Mode = Mode.ENFORCE,
) -> PolicyOutcome:  # fmt: skip
    return PolicyOutcome(True, PolicyReason.ALLOWED, "v1", "shop/catalog", "read", mode, path, max_risk, on_timeout,
                         shadow)  # fmt: skip


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
    """A valid model, slow on purpose: three hidden layers `width` wide (millions of multiply-adds a row)."""
    rng = np.random.default_rng(seed)
    sizes = (N_FEATURES, width, width, width, N_FEATURES)
    weights = [rng.normal(0, 1 / np.sqrt(a), (a, b)) for a, b in itertools.pairwise(sizes)]
    biases = [np.zeros(b) for b in sizes[1:]]
    model = Autoencoder(weights, biases, np.zeros(N_FEATURES), np.ones(N_FEATURES), error_ref=50.0)
    return to_onnx(model, {"source": "slow on purpose"}, version="slow-test-model")


def write(path: Path, data: bytes) -> Path:
    """Write as a deploy would: a new file renamed over the old one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)
    return path

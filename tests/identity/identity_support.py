"""Helpers shared by the identity tests: calls as Envoy sends them, verifiers, JWT-SVIDs."""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.call import Call, parse_call
from authz_server.dev.trust_domain import TrustDomainCA
from authz_server.identity import BundleSet, IdentityVerifier, parse_bundle
from authz_server.identity.config import IdentityConfig

TRUST_DOMAIN = "example.org"
CALLEE = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/payments"
CALLER = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/frontend"
PROXY = f"spiffe://{TRUST_DOMAIN}/ns/edge/sa/gateway"

E2E_DECLARATIONS = f"""
apiVersion: authz-server.dev/v1alpha1
kind: AllowedCalls
metadata: {{name: payments, namespace: shop}}
spec:
  workload: {CALLEE}
  rules:
    - name: frontend-reads-orders
      from: [{{id: {CALLER}}}]
      to: [{{methods: [GET], paths: [/orders, /orders/*]}}]
"""
"""What the end-to-end meshes load: CALLER may GET /orders and /orders/* on CALLEE, nothing else."""


def url_encoded(pem: bytes) -> str:
    """PEM the way Envoy puts it in attributes.source.certificate and XFCC Cert/Chain."""
    return urllib.parse.quote(pem.decode(), safe="")


def call(
    *,
    certificate: bytes | str = "",
    principal: str = "",
    headers: Mapping[str, str] | None = None,
    destination: str = CALLEE,
) -> Call:
    """A parsed CheckRequest carrying exactly what is given."""
    request = external_auth_pb2.CheckRequest()
    source = request.attributes.source
    source.certificate = url_encoded(certificate) if isinstance(certificate, bytes) else certificate
    source.principal = principal
    request.attributes.destination.principal = destination
    http = request.attributes.request.http
    http.path, http.method = "/orders", "GET"
    for name, value in (headers or {}).items():
        http.headers[name] = value
    return parse_call(request)


def bundle_set(*cas: TrustDomainCA, jwt_keys: Mapping[str, dict[str, Any]] | None = None) -> BundleSet:
    bundles = {}
    for ca in cas:
        data = ca.bundle_pem
        if jwt_keys and ca.name in jwt_keys:
            data = json.dumps(spiffe_bundle(ca, jwt_keys[ca.name])).encode()
        bundles[ca.name] = parse_bundle(ca.name, data)
    return BundleSet(bundles)


def verifier(*cas: TrustDomainCA, config: IdentityConfig | None = None, **jwt_keys: dict[str, Any]) -> IdentityVerifier:
    return IdentityVerifier(config or IdentityConfig(), bundle_set(*cas, jwt_keys=jwt_keys or None))


def now() -> float:
    return time.time()


# --- JWT-SVIDs --------------------------------------------------------------------


def jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    public: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    return {**public, "kid": kid, "use": "jwt-svid"}


def spiffe_bundle(ca: TrustDomainCA, *jwt_keys: dict[str, Any]) -> dict[str, Any]:
    """A SPIFFE bundle document: the CA as x509-svid key, plus jwt-svid keys."""
    root = ca.parents[-1] if ca.parents else ca.certificate
    x509_key: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(root.public_key()))  # type: ignore[arg-type]
    x509_key.update(use="x509-svid", x5c=[base64.b64encode(root.public_bytes(serialization.Encoding.DER)).decode()])
    return {"keys": [x509_key, *jwt_keys], "spiffe_sequence": 1}


def mint_jwt(
    key: ec.EllipticCurvePrivateKey,
    kid: str,
    subject: str,
    audience: str | list[str] = CALLEE,
    *,
    ttl: float = 300,
    **claims: Any,
) -> str:
    issued = int(time.time())
    payload = {"sub": subject, "aud": audience, "exp": issued + ttl, "iat": issued, **claims}
    return jwt.encode(payload, key, algorithm="ES256", headers={"kid": kid, "typ": "JWT"})

"""The identity stage decides, end to end, behind a real Envoy 1.40 that accepts any client certificate.

Envoy's listener is configured with `trust_chain_verification: ACCEPT_UNTRUSTED`, the loose setting the
server must survive: the TLS handshake still proves the client holds the certificate's key, but not that
anyone trusted issued it. Envoy forwards the certificate (`include_peer_certificate`), and the server's own
checks are what refuses an expired, a forged or a foreign SVID.

What Envoy 1.40 does itself with ACCEPT_UNTRUSTED (observed with these tests): it completes the handshake
for an expired client certificate, for one signed by an unknown CA and for one of a foreign trust domain
alike (and for a CA certificate presented as a client certificate), and passes each to ext_authz; the
denial, its status and its reason all come from the server.

A second mesh has Envoy append its own XFCC element (APPEND_FORWARD) and the server read identity from
XFCC only: a client-written element before Envoy's is never the one believed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from identity_support import CALLEE, CALLER, TRUST_DOMAIN
from identity_support import E2E_DECLARATIONS as DECLARATIONS

from authz_server.dev.mesh import LocalMesh, Reply
from authz_server.dev.trust_domain import TrustDomainCA

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    with LocalMesh(
        tmp_path_factory.mktemp("identity-mesh"),
        DECLARATIONS,
        callee=CALLEE,
        server_config={"risk": {"enabled": False}, "identity": {"clock_skew_s": 30}},
        accept_untrusted_clients=True,
    ) as running:
        yield running


def _denied(mesh: LocalMesh, reply: Reply, status: int, reason: str, upstream_before: int) -> dict[str, Any]:
    """Assert what the caller sees of an identity denial; return the decision log line."""
    assert reply.status == status, reply.body
    assert reply.headers["x-authz-decision"] == "deny"
    assert reply.headers["x-authz-reason"] == reason
    decision_id = reply.headers["x-authz-decision-id"]
    assert reply.json == {"decision": "deny", "reason": reason, "decision_id": decision_id}
    assert mesh.echo is not None and mesh.echo.requests == upstream_before, "a denied call reached the upstream"
    logged = mesh.logged(decision_id)
    assert logged["verdict"] == "deny" and logged["source"] is None
    assert logged["identity_error"]["reason"] == reason
    # The caller learns the reason code only; the detail is for the operator.
    assert logged["identity_error"]["detail"] and logged["identity_error"]["detail"] not in reply.body.decode()
    return logged


def _upstream_requests(mesh: LocalMesh) -> int:
    assert mesh.echo is not None
    return mesh.echo.requests


def test_a_good_svid_is_allowed_and_reaches_the_upstream_as_itself(mesh: LocalMesh) -> None:
    before = _upstream_requests(mesh)
    reply = mesh.call(CALLER, "GET", "/orders/42")

    assert reply.status == 200, reply.body
    seen = reply.upstream_headers
    assert seen["x-authz-decision"] == "allow"
    assert seen["x-authz-source"] == CALLER
    assert _upstream_requests(mesh) == before + 1
    logged = mesh.logged(seen["x-authz-decision-id"])
    assert logged["source"]["spiffe_id"] == CALLER
    assert logged["source"]["proof"] == "certificate"
    assert logged["identity_error"] is None


def test_an_expired_svid_is_denied_with_401_expired(mesh: LocalMesh) -> None:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    expired = mesh.ca.issue(CALLER, not_before=start, not_after=start + dt.timedelta(hours=1))
    before = _upstream_requests(mesh)

    reply = mesh.call(mesh.write_svid(expired), "GET", "/orders/42")

    logged = _denied(mesh, reply, 401, "expired", before)
    assert "expired at" in logged["identity_error"]["detail"]


def test_a_forged_svid_claiming_our_trust_domain_is_denied_with_401_chain_invalid(mesh: LocalMesh) -> None:
    # Same trust domain name, same CA subject, the attacker's own key: only the signature tells them apart.
    impostor = TrustDomainCA.create(TRUST_DOMAIN)
    forged = impostor.issue(CALLER)
    before = _upstream_requests(mesh)

    reply = mesh.call(mesh.write_svid(forged), "GET", "/orders/42")

    logged = _denied(mesh, reply, 401, "chain-invalid", before)
    assert "signature does not verify" in logged["identity_error"]["detail"]
    assert logged["peer"]["principal"] == CALLER, "Envoy believed the forged certificate's URI SAN"


def test_an_svid_of_a_foreign_trust_domain_is_denied_with_403_untrusted_trust_domain(mesh: LocalMesh) -> None:
    foreign = TrustDomainCA.create("evil.example").issue("spiffe://evil.example/ns/shop/sa/frontend")
    before = _upstream_requests(mesh)

    reply = mesh.call(mesh.write_svid(foreign), "GET", "/orders/42")

    logged = _denied(mesh, reply, 403, "untrusted-trust-domain", before)
    assert "evil.example" in logged["identity_error"]["detail"]


def test_a_ca_certificate_presented_as_a_client_svid_is_denied_with_401_not_a_leaf(mesh: LocalMesh) -> None:
    as_leaf = mesh.ca.issue(CALLER, is_ca=True)
    before = _upstream_requests(mesh)

    reply = mesh.call(mesh.write_svid(as_leaf), "GET", "/orders/42")

    _denied(mesh, reply, 401, "not-a-leaf", before)


# --- XFCC: the element the local Envoy appended is the one that counts ------------------------


@pytest.fixture(scope="module")
def xfcc_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    """Envoy appends its own XFCC element (APPEND_FORWARD, with Cert and Chain); the server reads only that."""
    with LocalMesh(
        tmp_path_factory.mktemp("identity-xfcc-mesh"),
        DECLARATIONS,
        callee=CALLEE,
        server_config={
            "risk": {"enabled": False},
            "identity": {"sources": ["xfcc"], "xfcc_trusted_proxies": ["destination"]},
        },
        accept_untrusted_clients=True,
        forward_client_cert="APPEND_FORWARD",
    ) as running:
        yield running


def test_xfcc_written_by_the_local_envoy_proves_the_caller(xfcc_mesh: LocalMesh) -> None:
    reply = xfcc_mesh.call(CALLER, "GET", "/orders")

    assert reply.status == 200, reply.body
    seen = reply.upstream_headers
    assert seen["x-authz-source"] == CALLER
    assert f"By={CALLEE}" in seen["x-forwarded-client-cert"]
    assert xfcc_mesh.logged(seen["x-authz-decision-id"])["source"]["proof"] == "xfcc"


def test_a_client_written_xfcc_element_replaying_a_good_certificate_is_ignored(xfcc_mesh: LocalMesh) -> None:
    # The attacker holds only a forged SVID, but has seen CALLER's (public) certificate and writes an XFCC
    # element for it, naming the local proxy as author. Envoy appends its own element after it.
    replayed = xfcc_mesh.ca.issue(CALLER).cert_pem.decode()
    claim = f"By={CALLEE};URI={CALLER};Cert=" + replayed.replace("\n", "%0A").replace(" ", "%20")
    # APPEND_FORWARD keeps the client's element: with a genuine SVID both reach the upstream, Envoy's last.
    passed = xfcc_mesh.call(CALLER, "GET", "/orders", headers={"x-forwarded-client-cert": claim})
    assert passed.status == 200, passed.body
    forwarded = passed.upstream_headers["x-forwarded-client-cert"]
    assert forwarded.startswith(claim + ",") and forwarded.count("By=") == 2

    forged = TrustDomainCA.create(TRUST_DOMAIN).issue(CALLER)
    before = _upstream_requests(xfcc_mesh)

    reply = xfcc_mesh.call(xfcc_mesh.write_svid(forged), "GET", "/orders", headers={"x-forwarded-client-cert": claim})

    logged = _denied(xfcc_mesh, reply, 401, "chain-invalid", before)
    assert logged["identity_error"]["detail"].startswith("signature does not verify")

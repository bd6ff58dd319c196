"""SVIDs issued under an intermediate CA verify through a real Envoy, as Istio's plug-in CA and nested SPIRE issue them.

Every SVID here (Envoy's own too) is signed by an intermediate below the root that is the whole bundle. The
caller presents leaf + intermediate in the TLS handshake; Envoy forwards only the leaf in
`attributes.source.certificate`, and the chain in the `Chain` of the XFCC element it appends
(`forward_client_cert_details: SANITIZE_SET`, `set_current_client_cert_details: {chain: true}`). The server
takes intermediates from that element only when its `By` is a trusted proxy (`destination`: the local Envoy).

Two Envoys: one verifying client certificates against the root itself, one with `ACCEPT_UNTRUSTED` so the
server alone has to tell a genuine chain from a forged one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from identity_support import CALLEE, CALLER, TRUST_DOMAIN
from identity_support import E2E_DECLARATIONS as DECLARATIONS

from authz_server.dev.mesh import LocalMesh, Reply
from authz_server.dev.trust_domain import TrustDomainCA

pytestmark = pytest.mark.e2e


CHAIN_FROM_LOCAL_PROXY = {
    "risk": {"enabled": False},
    "identity": {"sources": ["certificate"], "xfcc_trusted_proxies": ["destination"]},
}


def _mesh(tmp: pytest.TempPathFactory, name: str, server_config: dict[str, Any], untrusted: bool) -> LocalMesh:
    return LocalMesh(
        tmp.mktemp(name),
        DECLARATIONS,
        callee=CALLEE,
        server_config=server_config,
        accept_untrusted_clients=untrusted,
        forward_client_cert="SANITIZE_SET",
        intermediate_ca=True,
    )


@pytest.fixture(scope="module")
def verifying(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    with _mesh(tmp_path_factory, "chain-verifying", CHAIN_FROM_LOCAL_PROXY, untrusted=False) as running:
        yield running


@pytest.fixture(scope="module")
def untrusted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    with _mesh(tmp_path_factory, "chain-untrusted", CHAIN_FROM_LOCAL_PROXY, untrusted=True) as running:
        yield running


def _allowed_as_caller(mesh: LocalMesh, reply: Reply) -> None:
    assert reply.status == 200, reply.body
    seen = reply.upstream_headers
    assert seen["x-authz-decision"] == "allow"
    assert seen["x-authz-source"] == CALLER
    logged = mesh.logged(seen["x-authz-decision-id"])
    assert logged["source"]["spiffe_id"] == CALLER and logged["source"]["proof"] == "certificate"


def test_the_mesh_really_issues_under_an_intermediate(verifying: LocalMesh) -> None:
    svid = verifying.ca.issue(CALLER)
    bundle = verifying.bundle_path.read_bytes()
    assert svid.intermediates and svid.certificate.issuer == svid.intermediates[0].subject
    assert svid.intermediates[0].issuer == verifying.root.certificate.subject
    assert verifying.root.bundle_pem == bundle
    assert svid.intermediates[0].public_bytes(Encoding.PEM) not in bundle, "an intermediate in the bundle tests nothing"


def test_leaf_under_an_intermediate_is_allowed_when_envoy_verifies(verifying: LocalMesh) -> None:
    _allowed_as_caller(verifying, verifying.call(CALLER, "GET", "/orders/42"))


def test_leaf_under_an_intermediate_is_allowed_with_accept_untrusted(untrusted: LocalMesh) -> None:
    _allowed_as_caller(untrusted, untrusted.call(CALLER, "GET", "/orders/42"))
    # Cached by the leaf: the next call costs a lookup and decides the same.
    _allowed_as_caller(untrusted, untrusted.call(CALLER, "GET", "/orders"))


def test_a_forged_intermediate_chain_is_refused_with_accept_untrusted(untrusted: LocalMesh) -> None:
    # The attacker's own root and intermediate, with the genuine names: the chain Envoy forwards is complete and
    # well formed, and leads nowhere in the bundle.
    forged = TrustDomainCA.create(TRUST_DOMAIN).intermediate().issue(CALLER)
    assert untrusted.echo is not None
    before = untrusted.echo.requests

    reply = untrusted.call(untrusted.write_svid(forged), "GET", "/orders/42")

    assert reply.status == 401 and reply.headers["x-authz-reason"] == "chain-invalid", reply.body
    assert untrusted.echo.requests == before
    logged = untrusted.logged(reply.headers["x-authz-decision-id"])
    assert "signature does not verify" in logged["identity_error"]["detail"]


def test_without_a_trusted_proxy_the_chain_is_refused_and_the_log_says_how_to_fix_it(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Without a trusted proxy the server cannot take a chain from XFCC, and says why in the decision log.
    config = {"risk": {"enabled": False}, "identity": {"sources": ["certificate"]}}
    with _mesh(tmp_path_factory, "chain-not-trusted", config, untrusted=False) as mesh:
        reply = mesh.call(CALLER, "GET", "/orders/42")

        assert reply.status == 401 and reply.headers["x-authz-reason"] == "chain-invalid", reply.body
        detail = mesh.logged(reply.headers["x-authz-decision-id"])["identity_error"]["detail"]
        assert "xfcc_trusted_proxies" in detail and "chain: true" in detail

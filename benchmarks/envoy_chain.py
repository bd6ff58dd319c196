"""The end-to-end path: load generator -> client-side Envoy -> mTLS -> the sidecar Envoy under test.

wrk speaks plain HTTP/1.1 and has no client certificates, so it talks to a
client-side Envoy, as an application talks to its own sidecar in a mesh. That
Envoy holds one SVID per caller account and picks the one to present from the
`x-bench-caller` header (one cluster per caller), then opens HTTP/2 over mTLS
to the sidecar under test, which is rendered by authz_server.envoy.bootstrap
exactly as the tests and manifests render it, with the upstream replaced by a
direct response so the workload is never the bottleneck.

The client Envoy also answers requests carrying `x-bench-local: 1` itself:
that measures the generator's own ceiling (wrk + client Envoy, no sidecar).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from authz_server.dev.mesh import free_port
from authz_server.envoy.bootstrap import Endpoint, SidecarSpec, TlsFiles, UnixSocket
from authz_server.envoy.process import EnvoyProcess
from benchmarks.servers import ProcessTree, pinned
from benchmarks.workload import CALLEE, CALLER_HEADER, Workload, all_accounts

LOCAL_HEADER = "x-bench-local"
_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

Authz = Literal["none", "rbac", "ext_authz"]


def caller_cluster(account: str) -> str:
    return "caller_" + account.replace("/", "_").replace("-", "_")


def client_bootstrap(
    listen: Endpoint, admin: Endpoint, sidecar: Endpoint, svids: dict[str, tuple[Path, Path]], bundle: Path
) -> dict[str, Any]:
    """A client-side Envoy: plain HTTP in, one mTLS HTTP/2 cluster per caller identity out."""
    routes: list[dict[str, Any]] = [
        {
            "match": {"prefix": "/", "headers": [{"name": LOCAL_HEADER, "string_match": {"exact": "1"}}]},
            "direct_response": {"status": 200, "body": {"inline_string": "local"}},
        }
    ]
    clusters = []
    for account, (cert, key) in svids.items():
        name = caller_cluster(account)
        routes.append(
            {
                "match": {"prefix": "/", "headers": [{"name": CALLER_HEADER, "string_match": {"exact": account}}]},
                "route": {"cluster": name, "timeout": "15s"},
                "request_headers_to_remove": [CALLER_HEADER],
            }
        )
        clusters.append(
            {
                "name": name,
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": name,
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {"address": sidecar.host, "port_value": sidecar.port}
                                        }
                                    }
                                }
                            ]
                        }
                    ],
                },
                "circuit_breakers": {"thresholds": [{"max_requests": 100_000, "max_pending_requests": 100_000}]},
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": _HTTP_OPTIONS,
                        "explicit_http_config": {"http2_protocol_options": {}},
                    }
                },
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": _TLS,
                        "sni": "payments.shop.svc.cluster.local",
                        "common_tls_context": {
                            "tls_certificates": [
                                {"certificate_chain": {"filename": str(cert)}, "private_key": {"filename": str(key)}}
                            ],
                            "validation_context": {
                                "trusted_ca": {"filename": str(bundle)},
                                "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": CALLEE}}],
                            },
                        },
                    },
                },
            }
        )
    routes.append(
        {"match": {"prefix": "/"}, "direct_response": {"status": 421, "body": {"inline_string": "no caller"}}}
    )
    hcm = {
        "@type": _HCM,
        "stat_prefix": "outbound",
        "codec_type": "AUTO",
        "route_config": {
            "name": "outbound",
            "virtual_hosts": [{"name": "payments", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}],
    }
    return {
        "node": {"id": "bench-client", "cluster": "bench-client"},
        "admin": {"address": {"socket_address": {"address": admin.host, "port_value": admin.port}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "outbound",
                    "address": {"socket_address": {"address": listen.host, "port_value": listen.port}},
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
                    ],
                }
            ],
            "clusters": clusters,
        },
    }


@dataclass
class Chain:
    """Client Envoy + sidecar Envoy for one configuration; `url` is where the load generator points."""

    client: EnvoyProcess
    sidecar: EnvoyProcess
    url: str

    @property
    def sidecar_tree(self) -> ProcessTree:
        assert self.sidecar.process is not None
        return ProcessTree(self.sidecar.process.pid)

    @property
    def client_tree(self) -> ProcessTree:
        assert self.client.process is not None
        return ProcessTree(self.client.process.pid)

    def stop(self) -> None:
        self.client.stop()
        self.sidecar.stop()

    def __enter__(self) -> Chain:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


@dataclass(frozen=True)
class ChainSpec:
    authz: Authz
    authz_port: int | None = None
    authz_socket: str | None = None
    """The server's Unix socket instead of a port (the sidecar layout)."""
    max_concurrent_streams: int = 0
    authz_max_requests: int = SidecarSpec.authz_max_requests
    authz_max_pending_requests: int = SidecarSpec.authz_max_pending_requests
    sidecar_concurrency: int = 1
    client_concurrency: int = 1
    sidecar_cpus: str | None = None
    client_cpus: str | None = None


def start_chain(workload: Workload, workdir: Path, spec: ChainSpec) -> Chain:
    """Start the sidecar under test and the client Envoy in front of it."""
    certs_dir = workdir / "svids"
    bundle = workload.certs.write_bundle(workdir / "bundle.pem")
    callee_cert, callee_key = workload.certs.ca.issue(CALLEE).write(certs_dir, "callee")
    svids = {
        account: workload.certs.svid(account).write(certs_dir, account.replace("/", "-")) for account in all_accounts()
    }
    sidecar_listener = Endpoint("127.0.0.1", free_port())
    authz: Endpoint | UnixSocket | None = None
    if spec.authz == "ext_authz" and spec.authz_socket:
        authz = UnixSocket(spec.authz_socket)
    elif spec.authz == "ext_authz" and spec.authz_port:
        authz = Endpoint("127.0.0.1", spec.authz_port)
    if spec.authz == "ext_authz" and authz is None:
        raise ValueError("ext_authz needs the decision server's port or socket")
    sidecar_spec = SidecarSpec(
        listener=sidecar_listener,
        upstream=Endpoint("127.0.0.1", free_port()),
        authz=authz,
        tls=TlsFiles(str(callee_cert), str(callee_key), str(bundle)),
        admin=Endpoint("127.0.0.1", free_port()),
        authz_max_concurrent_streams=spec.max_concurrent_streams,
        authz_max_requests=spec.authz_max_requests,
        authz_max_pending_requests=spec.authz_max_pending_requests,
        rbac=workload.rbac_config() if spec.authz == "rbac" else None,
        access_log=False,
        upstream_direct_response='{"ok":true}',
    )
    sidecar = EnvoyProcess(sidecar_spec, workdir / f"sidecar-{spec.authz}", concurrency=spec.sidecar_concurrency)
    sidecar.start()
    if spec.sidecar_cpus and sidecar.process is not None:
        pin_threads(sidecar.process.pid, spec.sidecar_cpus)
    listen = Endpoint("127.0.0.1", free_port())
    client_config = client_bootstrap(listen, Endpoint("127.0.0.1", free_port()), sidecar_listener, svids, bundle)
    try:
        client = EnvoyProcess(
            client_config, workdir / f"client-{spec.authz}", spec.client_concurrency,
            name="client-envoy", command_prefix=pinned([], spec.client_cpus),
        ).start()  # fmt: skip
    except BaseException:
        sidecar.stop()
        raise
    return Chain(client, sidecar, f"http://{listen.host}:{listen.port}")


def pin_threads(pid: int, cpus: str) -> None:
    """Move every thread of a running process to `cpus` (taskset -a -p)."""
    subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], check=True, capture_output=True)

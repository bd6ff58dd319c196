"""Envoy configuration, generated in one place.

The end-to-end tests, the demo, the benchmarks and the plain-Envoy sidecar in
mesh_manifests/overlays/envoy are all rendered from `render_bootstrap`, so
what is tested is what is shipped.

The sidecar: an mTLS listener in front of the local workload, the ext_authz
HTTP filter calling this server (transport V3, peer certificate included,
fail closed), and a route to the workload.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"
_TYPES = "type.googleapis.com/envoy.extensions"
EXT_AUTHZ_CLUSTER = "ext_authz"
UPSTREAM_CLUSTER = "local_workload"
SPIRE_AGENT_CLUSTER = "spire_agent"

ACCESS_LOG_FORMAT = (
    "[%START_TIME%] %REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESPONSE_CODE% "
    "peer=%DOWNSTREAM_PEER_URI_SAN% "
    f"decision=%DYNAMIC_METADATA({EXT_AUTHZ_FILTER}:decision)% "
    f"reason=%DYNAMIC_METADATA({EXT_AUTHZ_FILTER}:reason)% "
    f"decision_id=%DYNAMIC_METADATA({EXT_AUTHZ_FILTER}:decision_id)%\n"
)


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int


@dataclass(frozen=True)
class UnixSocket:
    """A Unix domain socket file: the server beside Envoy in one pod (`serve --listen unix:PATH`)."""

    path: str


@dataclass(frozen=True)
class TlsFiles:
    """Envoy's own SVID and the trust bundle, from files (tests, demo)."""

    certificate_chain: str
    private_key: str
    trusted_ca: str


@dataclass(frozen=True)
class SpireSds:
    """Envoy's SVID and bundle streamed by the SPIRE agent's SDS API over its Unix socket."""

    socket_path: str
    svid_name: str
    """The SPIFFE ID of this workload (the SDS resource name of its SVID)."""
    bundle_name: str = "ROOTCA"
    """SPIRE's SDS name for the trust bundle: ROOTCA, or ALL for the federated bundles too."""


@dataclass(frozen=True)
class SidecarSpec:
    listener: Endpoint
    upstream: Endpoint
    authz: Endpoint | UnixSocket | None
    """None: no ext_authz filter (the baseline the benchmarks compare against)."""
    tls: TlsFiles | SpireSds
    admin: Endpoint | None = None
    authz_timeout_s: float = 0.25
    authz_max_concurrent_streams: int = 0
    """Cap per HTTP/2 connection to the server; > 0 makes Envoy open more connections, which
    SO_REUSEPORT spreads over the server's worker processes."""
    authz_max_requests: int = 512
    """Checks this Envoy keeps outstanding at the server (circuit breaker `max_requests` on the ext_authz cluster).
    Past it Envoy fails a new Check at once, in C++, and answers `status_on_error` (503): the server never sees
    the excess and spends no CPU refusing it. 512 is about what one server process decides within the rendered
    250 ms timeout (~2,000 checks/s x 0.25 s): a Check past it would come back too late anyway. It is a safety
    valve, not the overload control (the server's admission is): at 16, which cut the server's refusals under
    overload, a sidecar serving 64 concurrent requests had 70-80% of them refused even in front of OPA-Envoy
    (benchmarks/RESULTS.md, "Overload", quiet machine)."""
    authz_max_pending_requests: int = 512
    """Checks waiting in this Envoy for a connection or a free stream to the server (circuit breaker
    `max_pending_requests`): the server's SETTINGS_MAX_CONCURRENT_STREAMS on a busy connection, or the
    connection being opened. Past it Envoy answers `status_on_error` at once."""
    authz_dns: bool = False
    """Resolve the server's host by DNS instead of a static address. Name a headless Service: every address is
    a host Envoy balances each Check over, and the DNS refresh and the connection lifetime below bring in the
    replicas an autoscaler adds (a ClusterIP is one host, one long-lived HTTP/2 connection, one server pod)."""
    readiness: Endpoint | None = None
    """A plain-HTTP listener answering 200 on /ready. Envoy opens listeners only once initialised, and with SDS
    it waits for the SVID and bundle without a time limit, so this answers only when mTLS can work."""
    accept_untrusted_clients: bool = False
    """Let any client certificate through the handshake, so the server's own checks decide."""
    forward_client_cert: Literal["SANITIZE", "SANITIZE_SET", "APPEND_FORWARD", "FORWARD_ONLY"] = "SANITIZE"
    context_extensions: dict[str, str] = field(default_factory=dict)
    rbac: dict[str, Any] | None = None
    """An envoy.filters.http.rbac config (typed RBAC) used instead of ext_authz, for comparison."""
    access_log: bool = True
    max_request_headers_kb: int | None = None
    """Envoy's cap on a request's headers, path included (Envoy's default: 60 KiB; requests over it get 431)."""
    concurrency_hint: int = 0
    upstream_direct_response: str | None = None
    """Benchmarks: Envoy answers calls that pass the filters itself (200, this body) instead of proxying to
    `upstream`, so the upstream is never the bottleneck. None (the default): route to `upstream`."""


def _socket(endpoint: Endpoint | UnixSocket) -> dict[str, Any]:
    if isinstance(endpoint, UnixSocket):
        return {"pipe": {"path": endpoint.path}}
    return {"socket_address": {"address": endpoint.host, "port_value": endpoint.port}}


DNS_REFRESH = "5s"
"""How soon a new server replica behind a headless Service gets Checks (CoreDNS answers headless names with a 5 s
TTL by default)."""
AUTHZ_CONNECTION_LIFETIME = "300s"
"""Connections to the server are replaced this often, so the load spreads again after scaling or a restart."""


def _static_cluster(name: str, endpoint: Endpoint | UnixSocket, dns: bool = False) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STRICT_DNS" if dns else "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(endpoint)}}]}],
        },
    }
    if dns:
        cluster["dns_refresh_rate"] = DNS_REFRESH
        cluster["respect_dns_ttl"] = True
    return cluster


def _http2(max_concurrent_streams: int = 0, max_connection_duration: str = "") -> dict[str, Any]:
    options: dict[str, Any] = {}
    if max_concurrent_streams:
        options["max_concurrent_streams"] = max_concurrent_streams
    protocol: dict[str, Any] = {
        "@type": f"{_TYPES}.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": options},
    }
    if max_connection_duration:
        protocol["common_http_protocol_options"] = {"max_connection_duration": max_connection_duration}
    return {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": protocol}


def authz_circuit_breakers(max_requests: int, max_pending_requests: int) -> dict[str, Any]:
    """The ext_authz cluster's circuit breakers: how many Checks Envoy keeps at the server, and waiting for it.

    Envoy refuses a Check over either limit at once (counter upstream_rq_pending_overflow) and the ext_authz filter
    answers it with `status_on_error`: the cheapest refusal there is, in the caller's own proxy
    (benchmarks/RESULTS.md, "Overload", through Envoy). Envoy's defaults (1024 of each) let a sidecar queue far more
    Checks at the server than it can decide within the 250 ms timeout."""
    return {"thresholds": [{"max_requests": max_requests, "max_pending_requests": max_pending_requests}]}


def _tls_context(spec: SidecarSpec) -> dict[str, Any]:
    validation: dict[str, Any] = {}
    if spec.accept_untrusted_clients:
        validation["trust_chain_verification"] = "ACCEPT_UNTRUSTED"
    common: dict[str, Any] = {"tls_params": {"tls_minimum_protocol_version": "TLSv1_2"}}
    if isinstance(spec.tls, TlsFiles):
        common["tls_certificates"] = [
            {
                "certificate_chain": {"filename": spec.tls.certificate_chain},
                "private_key": {"filename": spec.tls.private_key},
            }
        ]
        validation["trusted_ca"] = {"filename": spec.tls.trusted_ca}
        common["validation_context"] = validation
    else:
        sds = {
            # Wait for the SPIRE agent however long it takes (Envoy's default gives up after 15 s and starts
            # without the SVID, refusing every handshake while reporting itself ready).
            "initial_fetch_timeout": "0s",
            "resource_api_version": "V3",
            "api_config_source": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": SPIRE_AGENT_CLUSTER}}],
            },
        }
        common["tls_certificate_sds_secret_configs"] = [{"name": spec.tls.svid_name, "sds_config": sds}]
        common["combined_validation_context"] = {
            "default_validation_context": validation,
            "validation_context_sds_secret_config": {"name": spec.tls.bundle_name, "sds_config": sds},
        }
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": f"{_TYPES}.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": common,
        },
    }


def _ext_authz_filter(spec: SidecarSpec) -> dict[str, Any]:
    return {
        "name": EXT_AUTHZ_FILTER,
        "typed_config": {
            "@type": f"{_TYPES}.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "grpc_service": {
                "envoy_grpc": {"cluster_name": EXT_AUTHZ_CLUSTER},
                "timeout": f"{spec.authz_timeout_s}s",
            },
            # The server verifies the caller's certificate itself instead of trusting Envoy's word.
            "include_peer_certificate": True,
            # Fail closed: no answer from the decision point means no access. The answer is 503, not the default
            # 403: an unreachable or overloaded server means "not now", as the server's own shed answer
            # (503, retry-after) says; a 403 would tell the client it may never.
            "failure_mode_allow": False,
            "status_on_error": {"code": "ServiceUnavailable"},
        },
    }


def _http_filters(spec: SidecarSpec) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = []
    if spec.rbac is not None:
        filters.append(
            {
                "name": "envoy.filters.http.rbac",
                "typed_config": {"@type": f"{_TYPES}.filters.http.rbac.v3.RBAC", **spec.rbac},
            }
        )
    if spec.authz is not None:
        filters.append(_ext_authz_filter(spec))
    filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": f"{_TYPES}.filters.http.router.v3.Router"},
        }
    )
    return filters


def _route(spec: SidecarSpec) -> dict[str, Any]:
    route: dict[str, Any] = {"match": {"prefix": "/"}, "route": {"cluster": UPSTREAM_CLUSTER, "timeout": "15s"}}
    if spec.upstream_direct_response is not None:
        del route["route"]
        route["direct_response"] = {"status": 200, "body": {"inline_string": spec.upstream_direct_response}}
    if spec.authz is not None and spec.context_extensions:
        route["typed_per_filter_config"] = {
            EXT_AUTHZ_FILTER: {
                "@type": f"{_TYPES}.filters.http.ext_authz.v3.ExtAuthzPerRoute",
                "check_settings": {"context_extensions": dict(spec.context_extensions)},
            }
        }
    return route


def _http_connection_manager(spec: SidecarSpec) -> dict[str, Any]:
    hcm: dict[str, Any] = {
        "@type": f"{_TYPES}.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "inbound",
        "codec_type": "AUTO",
        # Envoy's own normalisation; the server normalises again before matching.
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        # `x_authz_source` would reach a CGI/WSGI upstream as the same variable as the server's x-authz-source:
        # drop every header name with an underscore before any filter sees it (the server also removes x_authz_*).
        "common_http_protocol_options": {"headers_with_underscores_action": "DROP_HEADER"},
        "forward_client_cert_details": spec.forward_client_cert,
        "route_config": {
            "name": "inbound",
            "virtual_hosts": [{"name": "local_workload", "domains": ["*"], "routes": [_route(spec)]}],
        },
        "http_filters": _http_filters(spec),
    }
    if spec.max_request_headers_kb is not None:
        hcm["max_request_headers_kb"] = spec.max_request_headers_kb
    if spec.forward_client_cert in ("SANITIZE_SET", "APPEND_FORWARD"):
        hcm["set_current_client_cert_details"] = {"uri": True, "cert": True, "chain": True, "dns": True}
    if spec.access_log:
        hcm["access_log"] = [
            {
                "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": f"{_TYPES}.access_loggers.stream.v3.StdoutAccessLog",
                    "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}},
                },
            }
        ]
    return hcm


def render_bootstrap(spec: SidecarSpec) -> dict[str, Any]:
    """The Envoy bootstrap (v3) as plain data, ready for yaml/json dumping."""
    clusters = [_static_cluster(UPSTREAM_CLUSTER, spec.upstream)]
    if spec.authz is not None:
        cluster = _static_cluster(EXT_AUTHZ_CLUSTER, spec.authz, dns=spec.authz_dns)
        lifetime = AUTHZ_CONNECTION_LIFETIME if spec.authz_dns else ""
        cluster["typed_extension_protocol_options"] = _http2(spec.authz_max_concurrent_streams, lifetime)
        cluster["circuit_breakers"] = authz_circuit_breakers(spec.authz_max_requests, spec.authz_max_pending_requests)
        clusters.append(cluster)
    if isinstance(spec.tls, SpireSds):
        clusters.append(
            {
                "name": SPIRE_AGENT_CLUSTER,
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": SPIRE_AGENT_CLUSTER,
                    "endpoints": [
                        {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": spec.tls.socket_path}}}}]}
                    ],
                },
                "typed_extension_protocol_options": _http2(),
            }
        )
    bootstrap: dict[str, Any] = {
        "node": {"id": "authz-sidecar", "cluster": "authz-sidecar"},
        "static_resources": {
            "listeners": [
                {
                    "name": "inbound_mtls",
                    "address": _socket(spec.listener),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": _http_connection_manager(spec),
                                }
                            ],
                            "transport_socket": _tls_context(spec),
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
    }
    if spec.readiness is not None:
        bootstrap["static_resources"]["listeners"].append(_readiness_listener(spec.readiness))
    if spec.admin is not None:
        bootstrap["admin"] = {"address": _socket(spec.admin)}
    return bootstrap


def _readiness_listener(endpoint: Endpoint) -> dict[str, Any]:
    route = {"match": {"path": "/ready"}, "direct_response": {"status": 200, "body": {"inline_string": "ready\n"}}}
    hcm = {
        "@type": f"{_TYPES}.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "readiness",
        "route_config": {"virtual_hosts": [{"name": "readiness", "domains": ["*"], "routes": [route]}]},
        "http_filters": [
            {"name": "envoy.filters.http.router", "typed_config": {"@type": f"{_TYPES}.filters.http.router.v3.Router"}}
        ],
    }
    return {
        "name": "readiness",
        "address": _socket(endpoint),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }


def render_yaml(spec: SidecarSpec) -> str:
    return yaml.safe_dump(render_bootstrap(spec), sort_keys=False)

"""OPA-Envoy, the peer users compare ext_authz servers with, run beside this server in the same benchmark.

`--opa PATH` names an opa-envoy-plugin binary (not shipped, never imported: a
benchmark peer only; ../shared/peers/opa-envoy-plugin/README.md says where the
one measured came from). It gets the policy an OPA user would write for the
benchmark workload's grants: allow when the principal the sidecar Envoy
verified is among a route's callers, the method matches and the path matches
the route's prefix or exact path, with the routes as data generated from the
same table (`workload.ROUTES`) the AllowedCalls declarations and the RBAC
config come from. OPA trusts Envoy's TLS verification and does no certificate,
risk or decision-log work of its own in this setup: authz-server does more per
call, which the tables say.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from authz_server.dev.mesh import free_port
from benchmarks.servers import ServerGroup, pinned
from benchmarks.workload import ROUTES, spiffe_id

POLICY_PATH = "envoy/authz/allow"

POLICY = """\
package envoy.authz

import rego.v1

default allow := false

allow if {
	some route in data.routes
	input.attributes.request.http.method == route.method
	path_ok(route)
	input.attributes.source.principal in route.principals
}

path_ok(route) if {
	route.prefix
	startswith(input.attributes.request.http.path, route.path)
}

path_ok(route) if {
	not route.prefix
	input.attributes.request.http.path == route.path
}
"""


def routes_data() -> dict[str, Any]:
    """data.json: the workload's grants, a collection prefix where the route ends in '/', else the exact path."""
    return {
        "routes": [
            {
                "method": route.method,
                "path": route.prefix,
                "prefix": route.prefix.endswith("/"),
                "principals": [spiffe_id(caller) for caller in route.callers],
            }
            for route in ROUTES
        ]
    }


def write_policy(directory: Path) -> tuple[Path, Path]:
    """(policy.rego, data.json) for the workload."""
    directory.mkdir(parents=True, exist_ok=True)
    policy = directory / "policy.rego"
    policy.write_text(POLICY)
    data = directory / "data.json"
    data.write_text(json.dumps(routes_data(), indent=1))
    return policy, data


def opa_server(workdir: Path, binary: Path, cpus: str | None = None) -> ServerGroup:
    """OPA-Envoy serving ext_authz gRPC on a free port, decision logs off, telemetry off."""
    policy, data = write_policy(workdir / "opa-inputs")
    port = free_port()
    command = [
        str(binary), "run", "--server", "--addr", f"127.0.0.1:{free_port()}", "--disable-telemetry",
        "--log-level", "error",
        "--set", f"plugins.envoy_ext_authz_grpc.addr=127.0.0.1:{port}",
        "--set", f"plugins.envoy_ext_authz_grpc.path={POLICY_PATH}",
        "--set", "decision_logs.console=false",
        str(policy), str(data),
    ]  # fmt: skip
    return ServerGroup("opa-envoy", [pinned(command, cpus)], workdir, port)


def missing_note(binary: Path | None) -> str | None:
    """Why OPA-Envoy is left out of a run, or None when it can run."""
    if binary is None:
        return "OPA-Envoy skipped: no --opa PATH (see benchmarks/README.md, 'OPA-Envoy')"
    if not binary.is_file():
        return f"OPA-Envoy skipped: {binary} does not exist"
    return None

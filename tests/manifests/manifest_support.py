"""Shared helpers of the manifest tests: kustomize builds, schemas, and lookups in the built objects."""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

from authz_server.policy.schema import strict_schema

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "mesh_manifests"
SPIFFE_DIR = ROOT / "spiffe"
SHARED_SCHEMAS = ROOT.parent / "shared" / "schemas"
# A worktree sits one level deeper than the main checkout: ISTIO_CRDS names the schemas file from anywhere.
ISTIO_CRDS = Path(os.environ.get("ISTIO_CRDS", SHARED_SCHEMAS / "istio-crds.gen.yaml"))

KUBERNETES_VERSION = "1.32.0"
"""Schemas of this Kubernetes release (kubernetes-validate ships 1.25 onwards); the manifests need >= 1.30
(native preStop sleep, CronJob timeZone and matchLabelKeys are all GA or on by default there)."""

OVERLAYS = ("istio", "envoy")
KUSTOMIZATIONS = (
    "base",
    "crds",
    "overlays/istio",
    "overlays/istio/workload-example",
    "overlays/envoy",
)

Object = dict[str, Any]


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed: cannot run `kubectl kustomize` (install kubectl >= 1.27 to run this)")
    return path


def _kustomize(directory: Path) -> tuple[Object, ...]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


_build = functools.cache(_kustomize)


def build(kustomization: str) -> list[Object]:
    """The objects `kubectl kustomize mesh_manifests/<kustomization>` renders (fresh copies)."""
    return copy.deepcopy(list(_build(MANIFESTS / kustomization)))


def build_path(directory: Path) -> list[Object]:
    """Like `build`, for a kustomization anywhere in the repository (spiffe/, say)."""
    return copy.deepcopy(list(_build(directory.resolve())))


def build_with_components(overlay: str, *components: str) -> list[Object]:
    """An overlay plus components, the way an operator adds them (kustomize wants relative paths)."""
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        (base / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [os.path.relpath(MANIFESTS / overlay, base)],
                    "components": [os.path.relpath(MANIFESTS / c, base) for c in components],
                }
            )
        )
        return list(_kustomize(base))


def find(objects: list[Object], kind: str, name: str | None = None) -> Object:
    matches = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def find_all(objects: list[Object], kind: str) -> list[Object]:
    return [o for o in objects if o["kind"] == kind]


def container(pod_spec: Object, name: str) -> Object:
    (found,) = [c for c in pod_spec["containers"] if c["name"] == name]
    result: Object = found
    return result


def pod_templates(objects: list[Object]) -> Iterator[tuple[str, Object]]:
    """(`Kind/name`, pod template) of every workload object."""
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield name, obj["spec"]["template"]
        elif obj["kind"] == "CronJob":
            yield name, obj["spec"]["jobTemplate"]["spec"]["template"]


def labels_match(selector: Object, labels: dict[str, str]) -> bool:
    """Kubernetes label selector semantics (matchLabels and matchExpressions)."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def load_generator() -> ModuleType:
    """mesh_manifests/generate.py, which is a script rather than a package module."""
    spec = importlib.util.spec_from_file_location("mesh_manifests_generate", MANIFESTS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def load_script(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def crd_validators(crds: list[Object]) -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) -> strict validator of the CRD's openAPIV3Schema, for every served version."""
    validators: dict[tuple[str, str], jsonschema.protocols.Validator] = {}
    for crd in crds:
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served", True):
                continue
            schema = strict_schema(version["schema"]["openAPIV3Schema"])
            # The API server handles these itself, whether or not the CRD's schema lists them.
            for implicit, kind_of in (("apiVersion", "string"), ("kind", "string"), ("metadata", "object")):
                schema.setdefault("properties", {}).setdefault(implicit, {"type": kind_of})
            validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(
                schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
            )
    return validators


@functools.cache
def istio_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    if not ISTIO_CRDS.exists():
        pytest.skip(f"Istio CRD schemas not found at {ISTIO_CRDS}: cannot validate Istio objects offline")
    crds = [doc for doc in yaml.safe_load_all(ISTIO_CRDS.read_text()) if doc]
    return crd_validators(crds)


def project_crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    return crd_validators(project_crds())


def project_crds() -> list[Object]:
    """The CustomResourceDefinitions of mesh_manifests/crds (without the admission policy shipped beside them)."""
    return [o for o in build("crds") if o["kind"] == "CustomResourceDefinition"]


def errors(validator: jsonschema.protocols.Validator, obj: Object) -> list[str]:
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
        for error in validator.iter_errors(obj)
    ]


def config_show(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`authz-server config show --config FILE` exactly as the container runs it (AUTHZ_* from env only)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
    return subprocess.run(
        [sys.executable, "-m", "authz_server", "config", "show", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **(env or {})},
        check=False,
    )


def expand_container_env(env: list[Object]) -> dict[str, str]:
    """The container's environment as the kubelet sets it: $(VAR) expanded from variables defined earlier,
    downward-API fields given example values."""
    resolved: dict[str, str] = {}
    for var in env:
        if "value" in var:
            value = var["value"]
            for name, earlier in resolved.items():
                value = value.replace(f"$({name})", earlier)
            resolved[var["name"]] = value
        elif "fieldRef" in var.get("valueFrom", {}):
            resolved[var["name"]] = f"example-{var['valueFrom']['fieldRef']['fieldPath'].replace('.', '-')}"
    return resolved

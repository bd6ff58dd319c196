"""Declaring the provider keeps every other one: Helm and istioctl replace lists whole, so the values are merged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from manifest_support import MANIFESTS

SCRIPT = MANIFESTS / "istio_values.py"
CURRENT: dict[str, Any] = {
    "global": {"hub": "docker.io/istio"},
    "meshConfig": {
        "accessLogFile": "/dev/stdout",
        "extensionProviders": [
            {
                "name": "otel-tracing",
                "opentelemetry": {"service": "otel.observability.svc.cluster.local", "port": 4317},
            },
            {
                "name": "oauth2-proxy",
                "envoyExtAuthzHttp": {"service": "oauth2-proxy.auth.svc.cluster.local", "port": 4180},
            },
            {"name": "authz-server", "envoyExtAuthzGrpc": {"service": "old.example", "port": 1, "timeout": "600s"}},
        ],
        "defaultConfig": {"holdApplicationUntilProxyStarts": True, "proxyStatsMatcher": {"inclusionRegexps": ["a"]}},
    },
}


def _merge(tmp_path: Path, document: dict[str, Any], *flags: str) -> dict[str, Any]:
    current = tmp_path / "current.yaml"
    current.write_text(yaml.safe_dump(document))
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(current), *flags], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    merged: dict[str, Any] = yaml.safe_load(result.stdout)
    return merged


def _ours() -> dict[str, Any]:
    mesh: dict[str, Any] = yaml.safe_load((MANIFESTS / "overlays/istio/istiod-values.yaml").read_text())["meshConfig"]
    return mesh


def test_other_providers_and_settings_survive_and_ours_is_replaced(tmp_path: Path) -> None:
    merged = _merge(tmp_path, CURRENT)
    mesh = merged["meshConfig"]
    assert isinstance(mesh, dict)
    names = [p["name"] for p in mesh["extensionProviders"]]
    assert names == ["otel-tracing", "oauth2-proxy", "authz-server"]
    assert mesh["extensionProviders"][:2] == CURRENT["meshConfig"]["extensionProviders"][:2]
    (ours,) = _ours()["extensionProviders"]
    assert mesh["extensionProviders"][2] == ours
    assert mesh["accessLogFile"] == "/dev/stdout" and merged["global"] == {"hub": "docker.io/istio"}
    default = mesh["defaultConfig"]
    assert default["holdApplicationUntilProxyStarts"] is True
    assert default["proxyStatsMatcher"]["inclusionRegexps"][0] == "a"
    assert ".*ext_authz.*" in default["proxyStatsMatcher"]["inclusionRegexps"]


def test_merging_twice_changes_nothing(tmp_path: Path) -> None:
    once = _merge(tmp_path, CURRENT)
    assert _merge(tmp_path, once) == once


def test_an_empty_install_gets_the_provider(tmp_path: Path) -> None:
    merged = _merge(tmp_path, {})
    assert merged["meshConfig"]["extensionProviders"] == _ours()["extensionProviders"]


def test_an_istio_operator_is_merged_under_spec(tmp_path: Path) -> None:
    operator = {
        "apiVersion": "install.istio.io/v1alpha1",
        "kind": "IstioOperator",
        "spec": {"meshConfig": CURRENT["meshConfig"]},
    }
    merged = _merge(tmp_path, operator, "--operator")
    names = [p["name"] for p in merged["spec"]["meshConfig"]["extensionProviders"]]
    assert names == ["otel-tracing", "oauth2-proxy", "authz-server"]

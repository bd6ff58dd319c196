"""The retraining component on a real cluster: claims that bind, a job that finishes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml
from manifest_support import MANIFESTS, Object, build_with_components, find_all, kubectl

SETTINGS = MANIFESTS / "components" / "retraining" / "settings.yaml"


def _claims(objects: list[Object]) -> dict[str, str | None]:
    return {
        c["metadata"]["name"]: c["spec"].get("storageClassName") for c in find_all(objects, "PersistentVolumeClaim")
    }


def test_both_claims_take_the_storage_class_from_the_one_setting() -> None:
    value = yaml.safe_load(SETTINGS.read_text())["data"]["storageClassName"]
    objects = build_with_components("overlays/istio", "components/retraining")
    assert _claims(objects) == {"authz-decision-logs": value, "authz-models": value}
    # The setting itself is local configuration: it never reaches the cluster.
    assert not [o for o in objects if o["metadata"]["name"] == "authz-retraining-settings"]


def test_changing_the_setting_changes_both_claims(tmp_path: Path) -> None:
    tree = tmp_path / "mesh_manifests"
    shutil.copytree(MANIFESTS, tree)
    settings = tree / "components" / "retraining" / "settings.yaml"
    document = yaml.safe_load(settings.read_text())
    document["data"]["storageClassName"] = "efs-sc"
    settings.write_text(yaml.safe_dump(document))
    overlay = tree / "overlays" / "envoy"
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    kustomization["components"] = [os.path.relpath(tree / "components" / "retraining", overlay)]
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))

    result = subprocess.run([kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, check=False)

    assert result.returncode == 0, result.stderr
    objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert _claims(objects) == {"authz-decision-logs": "efs-sc", "authz-models": "efs-sc"}

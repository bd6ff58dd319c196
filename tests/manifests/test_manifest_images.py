"""One image switch reaches every container: the operator's image, set where the guide says, runs everywhere.

The operator sets the image once (README, step 1) and applies an overlay, maybe with components. A container
left on the placeholder `ghcr.io/authz-server/authz-server` fails to pull: the retraining component's blocking
`seed-model` init container would keep every server pod from starting, and every CUSTOM-protected call in the
mesh would get 403. So: for every overlay, with and without every component, every container and init container
runs either the operator's image or one of the pinned third-party images the examples use.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from manifest_support import MANIFESTS, Object, kubectl, pod_templates

PLACEHOLDER = "ghcr.io/authz-server/authz-server"
OPERATOR_IMAGE = "registry.example.com/platform/authz-server"
OPERATOR_TAG = "1.2.3"
THIRD_PARTY = {
    "docker.io/envoyproxy/envoy:distroless-v1.40.0",  # the plain-Envoy example's sidecar
    "ghcr.io/mccutchen/go-httpbin:v2.15.0",  # the plain-Envoy example's workload
}


def _overlays() -> list[str]:
    return sorted(p.parent.name for p in (MANIFESTS / "overlays").glob("*/kustomization.yaml"))


def _components() -> list[str]:
    found = []
    for path in sorted((MANIFESTS / "components").rglob("kustomization.yaml")):
        if yaml.safe_load(path.read_text()).get("kind") == "Component":
            found.append(str(path.parent.relative_to(MANIFESTS)))
    return found


def _image_switches(tree: Path, overlay: str) -> list[Path]:
    """The kustomization files, in the overlay and everything it builds on, that rename the server's image."""
    switches, seen, pending = [], set(), [tree / "overlays" / overlay]
    while pending:
        directory = pending.pop().resolve()
        if directory in seen or not (directory / "kustomization.yaml").exists():
            continue
        seen.add(directory)
        document = yaml.safe_load((directory / "kustomization.yaml").read_text())
        if any(entry.get("name") == PLACEHOLDER for entry in document.get("images", [])):
            switches.append(directory / "kustomization.yaml")
        pending += [directory / r for r in (*document.get("resources", []), *document.get("components", []))]
    return switches


def _build(tree: Path, overlay: str, components: tuple[str, ...]) -> list[Object]:
    """The overlay with `components` added to its own kustomization.yaml, as the guide tells operators to."""
    directory = tree / "overlays" / overlay
    original = (directory / "kustomization.yaml").read_text()
    document = yaml.safe_load(original)
    document["components"] = [
        *document.get("components", []),
        *(os.path.relpath(tree / c, directory) for c in components),
    ]
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(document))
    try:
        result = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, check=False)
    finally:
        (directory / "kustomization.yaml").write_text(original)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.parametrize("overlay", _overlays())
def test_the_operators_image_reaches_every_container_of_the_overlay_and_its_components(
    overlay: str, tmp_path: Path
) -> None:
    tree = tmp_path / "mesh_manifests"
    shutil.copytree(MANIFESTS, tree)
    switches = _image_switches(tree, overlay)
    assert len(switches) == 1, f"overlays/{overlay}: expected one image switch, found {switches}"
    (switch,) = switches
    document = yaml.safe_load(switch.read_text())
    for entry in document["images"]:
        if entry["name"] == PLACEHOLDER:
            entry.update(newName=OPERATOR_IMAGE, newTag=OPERATOR_TAG)
    switch.write_text(yaml.safe_dump(document))

    wrong = []
    for components in [(), *[(c,) for c in _components() if _applies(c, overlay)]]:
        objects = _build(tree, overlay, components)
        servers = 0
        for name, template in pod_templates(objects):
            spec = template["spec"]
            for kind in ("initContainers", "containers"):
                for c in spec.get(kind, []):
                    if c["image"] == f"{OPERATOR_IMAGE}:{OPERATOR_TAG}":
                        servers += 1
                    elif c["image"] not in THIRD_PARTY:
                        wrong.append(
                            f"{'+'.join(components) or 'overlay'}: {name} {kind[:-1]} {c['name']}: {c['image']}"
                        )
        assert servers, f"no container of overlays/{overlay} {components} runs the server image"
    assert not wrong, "containers not on the operator's image:\n" + "\n".join(wrong)


CENTRAL_ONLY = {"components/retraining"}
"""Components that patch the central Deployment, which the sidecar layout (overlays/sidecar) does not run."""


def _applies(component: str, overlay: str) -> bool:
    """Components made for one mesh say so in their path (components/<mesh>-...)."""
    if overlay == "sidecar" and component in CENTRAL_ONLY:
        return False
    mesh = Path(component).parts[1].split("-", 1)[0]
    return mesh not in {o for o in _overlays() if o != overlay}

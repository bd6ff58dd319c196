"""The install guide and the image agree with the manifests: every command an operator copies points at
something that exists and builds, and the image runs the way the Deployment expects."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from manifest_support import MANIFESTS, ROOT, build, build_path, container, find, project_crds

GUIDE = MANIFESTS / "README.md"
DOCKERFILE = MANIFESTS / "image" / "Dockerfile"


def test_guide_has_the_install_section_with_numbered_steps() -> None:
    text = GUIDE.read_text()
    section = text.split("## Install on Kubernetes with Istio", 1)[1].split("\n## ", 1)[0]
    steps = [int(n) for n in re.findall(r"^\*\*(\d+)\. ", section, flags=re.MULTILINE)]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 8, steps


def test_every_path_the_guide_applies_exists_and_kustomizations_build() -> None:
    text = GUIDE.read_text() + (ROOT / "spiffe" / "README.md").read_text()
    kustomizations = set(re.findall(r"kubectl apply (?:--dry-run=server )?-k ([^\s`]+)", text))
    files = set(re.findall(r"kubectl apply (?:--dry-run=server )?-f ([^\s`]+)", text))
    assert "mesh_manifests/overlays/istio" in kustomizations and "mesh_manifests/crds" in kustomizations
    for path in kustomizations | files:
        assert (ROOT / path).exists(), f"the guide applies {path}, which does not exist"
    for path in kustomizations:
        assert build_path(ROOT / path), f"{path} renders nothing"


def test_crd_names_the_guide_waits_for_are_the_generated_ones() -> None:
    waited = set(re.findall(r"crd/(\S+)", GUIDE.read_text()))
    assert waited == {crd["metadata"]["name"] for crd in project_crds()}


def test_image_runs_as_the_user_and_command_the_deployment_expects() -> None:
    text = DOCKERFILE.read_text()
    server = container(find(build("base"), "Deployment", "authz-server")["spec"]["template"]["spec"], "authz-server")
    pod_security = find(build("base"), "Deployment", "authz-server")["spec"]["template"]["spec"]["securityContext"]
    (user,) = re.findall(r"^USER (\d+):(\d+)$", text, flags=re.MULTILINE)
    assert (int(user[0]), int(user[1])) == (pod_security["runAsUser"], pod_security["runAsGroup"])
    (cmd,) = re.findall(r"^CMD (\[.*\])$", text, flags=re.MULTILINE)
    assert json.loads(cmd) == server["command"]
    (exposed,) = re.findall(r"^EXPOSE (.+)$", text, flags=re.MULTILINE)
    assert sorted(int(p) for p in exposed.split()) == sorted(p["containerPort"] for p in server["ports"])


def test_retraining_job_command_exists_and_the_seed_model_ships_in_the_package() -> None:
    probe = subprocess.run(
        [sys.executable, "-m", "authz_server", "model", "train", "--help"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    assert "--baseline" in probe.stdout and "--out" in probe.stdout
    from importlib.resources import files

    assert (files("authz_server.risk") / "models" / "default.onnx").is_file()


def test_the_observability_readme_recommends_the_probes_the_deployment_uses() -> None:
    import yaml

    readme = (ROOT / "authz_server" / "observability" / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, flags=re.DOTALL)
    recommended = next(yaml.safe_load(b) for b in blocks if "readinessProbe" in b)
    server = container(find(build("base"), "Deployment", "authz-server")["spec"]["template"]["spec"], "authz-server")
    assert recommended == {k: server[k] for k in ("startupProbe", "readinessProbe", "livenessProbe")}


def _guide_step(number: int) -> str:
    section = GUIDE.read_text().split("## Install on Kubernetes with Istio", 1)[1].split("\n## ", 1)[0]
    return section.split(f"**{number}. ", 1)[1].split(f"**{number + 1}. ", 1)[0]


def test_the_declarations_dry_run_names_only_objects_with_a_crd_and_needs_no_namespace() -> None:
    """Step 6 runs before any workload namespace exists, and AllowedCallsTest has no CRD."""
    import yaml

    step = _guide_step(6)
    (dry_run,) = re.findall(r"^(?:cd (\S+) && )?(kubectl apply --dry-run(?:[^\n\\]|\\\n)*)", step, flags=re.MULTILINE)
    directory, command = ROOT / dry_run[0], dry_run[1].replace("\\\n", " ").split(";")[0]
    assert "--dry-run=client" in command and "--validate=strict" in command, command
    targets = re.findall(r"-f (\S+)", command)
    kinds = set()
    for target in targets:
        for path in (
            sorted((directory / target).glob("*.yaml")) if (directory / target).is_dir() else [directory / target]
        ):
            kinds |= {doc["kind"] for doc in yaml.safe_load_all(path.read_text()) if doc}
    served = {doc["spec"]["names"]["kind"] for doc in build("crds") if doc["kind"] == "CustomResourceDefinition"}
    assert kinds and kinds <= served, f"no CRD for {kinds - served}"
    shipped = re.findall(r"- declarations/(\S+)", (MANIFESTS / "base" / "kustomization.yaml").read_text())
    assert sorted(targets) == sorted(shipped)


def test_the_decision_check_execs_only_into_workloads_the_operator_names() -> None:
    """Step 9: nothing in mesh_manifests deploys the example callers, so the guide must not name them as if it did."""
    provided = {
        obj["metadata"]["name"]
        for kustomization in ("overlays/istio", "overlays/istio/workload-example")
        for obj in build(kustomization)
        if obj["kind"] == "Deployment"
    }
    for target in re.findall(r"exec deploy/(\S+)", _guide_step(9)):
        assert target.startswith("<") or target in provided, (
            f"step 9 execs into deploy/{target}, which no manifest provides"
        )

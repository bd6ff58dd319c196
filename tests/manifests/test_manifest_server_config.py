"""The configuration the manifests hand the server is one the server accepts, in every variant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from manifest_support import MANIFESTS, build_with_components, config_show, container, expand_container_env, find

BASE_CONFIG = MANIFESTS / "base" / "config" / "config.yaml"


def test_authz_server_accepts_the_base_configuration() -> None:
    result = config_show(BASE_CONFIG)
    assert result.returncode == 0, result.stderr
    effective = yaml.safe_load(result.stdout)
    assert effective["listen"] == "0.0.0.0:9191"
    assert effective["metrics"]["listen"] == "0.0.0.0:9090"
    assert effective["identity"]["workload_api_socket"] == "unix:///spiffe-workload-api/spire-agent.sock"
    assert effective["policy"]["paths"] == ["/etc/authz-server/declarations"]


def test_config_show_rejects_a_misspelt_key(tmp_path: Path) -> None:
    text = BASE_CONFIG.read_text().replace("metrics:", "metric:")
    broken = tmp_path / "config.yaml"
    broken.write_text(text)
    result = config_show(broken)
    assert result.returncode == 2
    assert "metric: unknown key" in result.stderr


def claims(volumes: list[dict[str, Any]]) -> dict[str, str]:
    return {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v}


def test_retraining_component_points_the_server_at_the_shared_model_and_log(tmp_path: Path) -> None:
    objects = build_with_components("overlays/istio", "components/retraining")
    pod = find(objects, "Deployment", "authz-server")["spec"]["template"]["spec"]
    server = container(pod, "authz-server")
    env = {k: v for k, v in expand_container_env(server["env"]).items() if k.startswith("AUTHZ_")}
    result = config_show(BASE_CONFIG, env)
    assert result.returncode == 0, result.stderr
    effective = yaml.safe_load(result.stdout)
    mounts = {m["name"]: m for m in server["volumeMounts"]}
    log_file = Path(effective["log"]["decisions"])
    assert log_file.parent == Path(mounts["decision-logs"]["mountPath"])
    assert log_file.name == "decisions-example-metadata-name.jsonl", "one decision log per pod"
    model = Path(effective["risk"]["model"])
    assert model.parent == Path(mounts["models"]["mountPath"]) and mounts["models"]["readOnly"]
    assert effective["risk"]["shadow"] is True, "a retrained model is canaried in shadow first"

    cron = find(objects, "CronJob", "authz-server-retrain")
    job = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    train = container(job, "train")
    script = train["command"][-1]
    job_mounts = {m["name"]: m["mountPath"] for m in train["volumeMounts"]}
    # The job reads the logs the servers write and swaps the model in where risk.model points.
    assert f"{job_mounts['decision-logs']}/decisions-*.jsonl" in script
    assert f"mv -f {job_mounts['models']}/.model.onnx.new {job_mounts['models']}/{model.name}" in script
    assert "authz-server model train --baseline" in script
    assert claims(job["volumes"]) == claims(pod["volumes"])
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"

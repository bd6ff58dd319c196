"""The worker supervisor reads worker exits right: a crash is restarted, a failed start stops all, SIGTERM is prompt.

The workers here are real processes standing in for `authz-server serve --workers 1`: a short script whose exits
(status 1 after serving, a crash loop) a real worker cannot be made to produce on cue.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz_server.config import Config
from authz_server.transport.workers import Supervisor

WORKER = """
import pathlib, sys, time
marks, index, behaviour = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
life = len(list(marks.glob(f"start-{index}-*")))
(marks / f"start-{index}-{life}").touch()
if index == "0" and behaviour == "crash-once-after-serving" and life == 0:
    time.sleep(0.5)
    sys.exit(1)  # an uncaught exception's status, after the worker had served
if index == "0" and behaviour == "crash-loop":
    sys.exit(3)
if index == "0" and behaviour == "cannot-start":
    sys.exit(int(sys.argv[4]))
time.sleep(120)
"""


class ScriptedSupervisor(Supervisor):
    def __init__(self, marks: Path, behaviour: str, *extra: str) -> None:
        super().__init__(Config(grace_period_s=1.0), count=2)
        self.marks, self.behaviour, self.extra = marks, behaviour, extra
        self.spawned_after_stop = 0

    def _spawn(self, config_file: Path, index: int) -> subprocess.Popen[bytes]:
        if self._stopping.is_set():
            self.spawned_after_stop += 1
        command = [sys.executable, "-c", WORKER, str(self.marks), str(index), self.behaviour, *self.extra]
        return subprocess.Popen(command)


CANCEL = threading.Event()


@pytest.fixture
def restore_signals() -> Iterator[None]:
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    CANCEL.clear()
    yield
    CANCEL.set()  # no SIGTERM may reach the test process once the supervisor's handler is gone
    time.sleep(0.1)
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _sigterm_when(path: Path, then_wait_s: float = 0.0, timeout_s: float = 30.0) -> threading.Thread:
    """SIGTERM this process (the supervisor's handler) once `path` exists, or after timeout_s."""

    def waiter() -> None:
        deadline = time.monotonic() + timeout_s
        while not path.exists() and time.monotonic() < deadline and not CANCEL.is_set():
            time.sleep(0.05)
        if not CANCEL.wait(then_wait_s):
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    return thread


@pytest.mark.usefixtures("restore_signals")
def test_a_worker_that_crashes_after_serving_is_restarted_and_the_others_keep_serving(tmp_path: Path) -> None:
    supervisor = ScriptedSupervisor(tmp_path, "crash-once-after-serving")
    _sigterm_when(tmp_path / "start-0-1", then_wait_s=0.3)
    assert supervisor.run() == 0
    assert (tmp_path / "start-0-1").exists(), "the crashed worker was not restarted: everything was stopped"
    assert sorted(p.name for p in tmp_path.glob("start-1-*")) == ["start-1-0"]


@pytest.mark.slow
@pytest.mark.usefixtures("restore_signals")
def test_sigterm_during_a_restart_backoff_stops_at_once_and_starts_nothing(tmp_path: Path) -> None:
    supervisor = ScriptedSupervisor(tmp_path, "crash-loop")
    # After three restarts the next one waits 5 s; SIGTERM lands inside that wait.
    _sigterm_when(tmp_path / "start-0-3", then_wait_s=0.6)
    assert supervisor.run() == 0
    assert supervisor.spawned_after_stop == 0
    assert not (tmp_path / "start-0-4").exists()


@pytest.mark.parametrize("status", [2, 78])  # invalid configuration; serve.EXIT_CANNOT_START (a stage cannot load)
@pytest.mark.usefixtures("restore_signals")
def test_a_worker_that_cannot_start_stops_every_worker(tmp_path: Path, status: int) -> None:
    supervisor = ScriptedSupervisor(tmp_path, "cannot-start", str(status))
    watchdog = _sigterm_when(tmp_path / "never", timeout_s=30.0)  # only if the supervisor hangs
    assert supervisor.run() == 1
    assert not (tmp_path / "start-0-1").exists()
    assert watchdog.is_alive()


def test_a_real_worker_whose_stages_cannot_load_exits_with_the_cannot_start_status(tmp_path: Path) -> None:
    from authz_server.dev.mesh import free_port

    config = tmp_path / "config.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{free_port()}\n"
        f"identity:\n  trust_domains:\n    example.org: {{bundle: {tmp_path}/none.pem}}\n"
        'risk: {enabled: false}\nlog: {decisions: "off"}\n'
    )
    command = [sys.executable, "-m", "authz_server", "serve", "--config", str(config), "--workers", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 78, result.stderr  # serve.EXIT_CANNOT_START, not 1 (an uncaught exception)
    assert "cannot start: identity.trust_domains.example.org.bundle" in result.stderr

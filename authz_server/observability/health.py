"""Readiness as Kubernetes probes see it: ready only between "stages loaded" and "shutting down"."""

from __future__ import annotations

import threading
from enum import StrEnum


class Phase(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    STOPPING = "stopping"


_WHY_NOT = {
    Phase.LOADING: "trust bundles, policies and the risk model are still loading",
    Phase.FAILED: "the stages could not be loaded",
    Phase.STOPPING: "the server is shutting down",
}


class Readiness:
    """The process's phase; serve.py moves it forward, /readyz and metrics read it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phase = Phase.LOADING
        self._detail = ""

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def ready(self) -> bool:
        return self._phase is Phase.READY

    def loaded(self) -> None:
        with self._lock:
            if self._phase is Phase.LOADING:
                self._phase = Phase.READY

    def failed(self, detail: str) -> None:
        with self._lock:
            self._phase, self._detail = Phase.FAILED, detail

    def stopping(self) -> None:
        with self._lock:
            if self._phase is not Phase.FAILED:
                self._phase = Phase.STOPPING

    def explain(self) -> str:
        """One line for the /readyz body."""
        phase = self._phase
        if phase is Phase.READY:
            return "ready"
        detail = f" ({self._detail})" if self._detail else ""
        return f"not ready: {_WHY_NOT[phase]}{detail}"

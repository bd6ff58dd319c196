"""Builds the risk stage from configuration and swaps in a new model when its file changes.

A new file is loaded and checked (onnxruntime must load it, its metadata must
name this server's feature schema, a probe run must give sane scores) before
it replaces anything; a corrupt or mismatched file is logged, counted and
refused, and the last good model keeps serving. Every model generation shares
the same behavioural state and counters, so a reload forgets no caller.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping

from authz_server.risk.config import RiskConfig
from authz_server.risk.features import FEATURE_SCHEMA, BehaviourState
from authz_server.risk.model import BUNDLED_MODEL, AnomalyModel, ModelError
from authz_server.risk.scorer import RiskCounters, RiskScorer

log = logging.getLogger("authz_server.risk")

_Signature = tuple[str, int, int, int, int] | None


def _signature(path: str) -> _Signature:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return os.path.realpath(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


class RiskLoadError(RuntimeError):
    """The risk stage cannot be built at all; the message says what to fix."""


class RiskSource:
    """`StageSource[RiskStage]` for the ONNX anomaly model named by `risk.model` (empty: the bundled one)."""

    def __init__(self, config: RiskConfig) -> None:
        self._config = config
        self.state = BehaviourState(config)
        self.counters = RiskCounters()
        self._lock = threading.Lock()
        self._current: RiskScorer | None = None
        self._apply: Callable[[RiskScorer], None] | None = None
        self._seen: _Signature = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reloads = 0
        self.reload_failures = 0
        self.last_error = ""

    @property
    def current(self) -> RiskScorer | None:
        return self._current

    def _scorer(self, model: AnomalyModel) -> RiskScorer:
        return RiskScorer(model, self._config, self.state, self.counters)

    def load(self) -> RiskScorer:
        path = self._config.model
        if path:
            self._seen = _signature(path)
        try:
            model = AnomalyModel.load(path)
        except ModelError as exc:
            raise RiskLoadError(f"risk.model: {exc}") from exc
        scorer = self._scorer(model)
        with self._lock:
            self._current = scorer
        log.info(
            "risk model %s loaded from %s (feature schema %s, p99 %.0f µs a call)",
            model.version, model.card.origin, FEATURE_SCHEMA, model.cost_s * 1e6,
        )  # fmt: skip
        return scorer

    def start(self, apply: Callable[[RiskScorer], None]) -> None:
        with self._lock:
            self._apply = apply
        # The bundled model only changes with the package, so only a configured file is watched.
        if self._config.model and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="risk-model-file", daemon=True)
            self._thread.start()
            self.poll_model()  # a change between load() and now would otherwise wait for the next one

    def _run(self) -> None:
        while not self._stop.wait(self._config.model_poll_interval_s):
            try:
                self.poll_model()
            except Exception:  # a watcher that dies silently would pin the model forever
                log.exception("risk model watcher: unexpected error")

    def poll_model(self) -> bool:
        """Look at the model file now; returns True when a new model was applied."""
        path = self._config.model
        if not path:
            return False
        signature = _signature(path)
        if signature == self._seen:
            return False
        self._seen = signature
        try:
            model = AnomalyModel.load(path)
        except ModelError as exc:
            with self._lock:
                self.reload_failures += 1
                self.last_error = str(exc)
            log.error("risk model not reloaded, %s keeps serving: %s", self.status()["version"], exc)
            return False
        scorer = self._scorer(model)
        with self._lock:
            self._current = scorer
            self.reloads += 1
            self.last_error = ""
            apply = self._apply
        log.info("risk model %s loaded from %s", model.version, path)
        if apply is not None:
            apply(scorer)
        return True

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def status(self) -> Mapping[str, str]:
        with self._lock:
            current, reloads, failures, last_error = self._current, self.reloads, self.reload_failures, self.last_error
        counters = self.counters
        sizes = self.state.sizes()
        facts = {
            "model": self._config.model or BUNDLED_MODEL,
            "version": current.version if current else "",
            "feature_schema": FEATURE_SCHEMA,
            "state": "loading" if current is None else "degraded" if last_error else "ok",
            "reloads": str(reloads),
            "reload_failures": str(failures),
            "last_error": last_error,
            "skipped": str(counters.skipped),
            "scored": str(counters.scored),
            "annotated": str(counters.annotated),
            "denied": str(counters.denied),
            "shadow": "on" if self._config.shadow else "off",
            "shadow_scored": str(counters.shadow),
            "model_cost_us": f"{current.model.cost_s * 1e6:.1f}" if current else "",
            "identities": str(sizes["identities"]),
            "edges": str(sizes["edges"]),
        }
        return facts

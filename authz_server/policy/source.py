"""Keeps the policy set current: loads it, watches its files, swaps in valid changes.

A poll compares a cheap fingerprint (resolved path, inode, size, mtime of each
file); only when that changes (or a file was modified in the last two
seconds, when the fingerprint cannot be trusted) are the files read, and only
when their bytes changed is the set recompiled. An invalid set is logged and counted and the
last good set keeps serving. Expiry needs no reload: rules carry their expiry
and stop matching on their own.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Mapping

from authz_server.policy.config import PolicyConfig
from authz_server.policy.documents import fingerprint, read_files
from authz_server.policy.loader import CompileCache, compile_snapshot
from authz_server.policy.policyset import PolicySet
from authz_server.policy.problems import PolicyError
from authz_server.policy.reload import describe_changes

log = logging.getLogger("authz_server.policy")


class PolicySource:
    """`StageSource[PolicyStage]` over the files and directories in `config.paths`."""

    def __init__(self, config: PolicyConfig) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._apply: Callable[[PolicySet], None] | None = None
        self._current: PolicySet | None = None
        self._fingerprint: object = None
        self._digest = ""
        self._cache = CompileCache()
        self.reloads = 0
        self.reload_failures = 0
        self.last_error = ""

    @property
    def current(self) -> PolicySet | None:
        return self._current

    def load(self) -> PolicySet:
        paths = self._config.paths
        if not paths:
            log.warning("policy.paths is empty: no declarations, every call is denied (default deny)")
        self._fingerprint = fingerprint(paths)
        snapshot = read_files(paths)
        compiled = compile_snapshot(snapshot, workload_key=self._config.workload_key, cache=self._cache)
        if compiled.policy_set is None:
            error = PolicyError(compiled.problems)
            self.last_error = str(error)
            raise error
        self._digest = snapshot.digest
        self._current = compiled.policy_set
        for warning in compiled.problems:
            log.warning("policy: %s", warning)
        self._settle_heap()
        summary = compiled.policy_set.summary
        log.info(
            "policy set %s loaded: %d documents, %d rules, %d quarantine entries",
            compiled.policy_set.version, summary.documents, summary.rules, summary.quarantined,
        )  # fmt: skip
        return compiled.policy_set

    def start(self, apply: Callable[[PolicySet], None]) -> None:
        self._apply = apply
        if not self._config.paths or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="policy-watch", daemon=True)
        self._thread.start()
        # A change between load() and start() would otherwise wait for the next one.
        self.poll()

    def close(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._config.poll_interval_s):
            try:
                self.poll()
            except Exception:  # the watcher must outlive any one bad poll
                log.exception("policy: checking for changes failed")

    def poll(self) -> bool:
        """Look at the files now; True when a new set was applied."""
        with self._lock:
            paths = self._config.paths
            current_fingerprint = fingerprint(paths)
            if current_fingerprint == self._fingerprint and not _recently_modified(current_fingerprint):
                return False
            snapshot = read_files(paths)
            self._fingerprint = current_fingerprint
            if snapshot.digest == self._digest:
                return False
            self._digest = snapshot.digest
            compiled = compile_snapshot(snapshot, workload_key=self._config.workload_key, cache=self._cache)
            if compiled.policy_set is None:
                self.reload_failures += 1
                error = PolicyError(compiled.problems)
                self.last_error = str(error)
                log.error("policy: change rejected, still serving %s: %s", self._version(), error)
                return False
            new, old = compiled.policy_set, self._current
            self.last_error = ""
            if old is not None and new.version == old.version:
                return False  # only comments, layout or file names changed
            self._current = new
            self.reloads += 1
            for warning in compiled.problems:
                log.warning("policy: %s", warning)
            log.info("policy set %s -> %s: %s", self._version(old), new.version, describe_changes(old, new))
            if self._apply is not None:
                self._apply(new)
            self._settle_heap()
            return True

    def _settle_heap(self) -> None:
        """Move everything alive now, the new set included, out of the cyclic collector's view (gc.freeze).

        A large set is a million long-lived objects; an automatic full collection walks them all while calls
        wait (1.5 s at 100,000 rules, benchmarks/bench_policy.py). No collection is forced here, for the same
        reason. A replaced set is still freed by reference counting: it holds no reference cycles.
        """
        if self._config.gc_freeze:
            gc.freeze()

    def _version(self, policy_set: PolicySet | None = None) -> str:
        policy_set = policy_set if policy_set is not None else self._current
        return policy_set.version if policy_set is not None else "none"

    def status(self) -> Mapping[str, str]:
        current = self._current
        summary = current.summary if current is not None else None
        state = "ok" if current is not None and not self.last_error else "degraded"
        facts = {
            "version": current.version if current is not None else "",
            "state": state,
            "reloads": str(self.reloads),
            "reload_failures": str(self.reload_failures),
            "last_error": self.last_error,
            "documents": str(summary.documents if summary else 0),
            "rules": str(summary.rules if summary else 0),
            "quarantined": str(summary.quarantined if summary else 0),
            "warnings": str(len(current.warnings) if current is not None else 0),
            "paths": ",".join(self._config.paths),
        }
        if not self._config.paths:
            facts["problems"] = "no policy paths configured: every call is denied"
        return facts


RACY_WINDOW_NS = 2_000_000_000


def _recently_modified(files: tuple[tuple[str, int, int, int], ...]) -> bool:
    """A file modified in the last two seconds may change again within the same mtime tick with the same size
    (the "racy" case git knows), so its unchanged fingerprint proves nothing: compare contents instead."""
    horizon = time.time_ns() - RACY_WINDOW_NS
    return any(mtime > horizon for _, _, _, mtime in files)


def source(config: PolicyConfig) -> PolicySource:
    return PolicySource(config)

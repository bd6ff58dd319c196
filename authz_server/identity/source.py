"""Builds identity verifiers from configuration and replaces them when a trust bundle changes."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Mapping

from authz_server.identity.bundles import BundleError, BundleSet, TrustBundle
from authz_server.identity.config import IdentityConfig
from authz_server.identity.files import BundleFileWatcher
from authz_server.identity.verifier import IdentityVerifier
from authz_server.identity.workload_api import WorkloadApiWatcher

log = logging.getLogger("authz_server.identity")


class IdentityLoadError(RuntimeError):
    """The identity stage cannot be built at all; the message says what to fix."""


class IdentitySource:
    """`StageSource[IdentityStage]`: bundles from files and/or the Workload API, one verifier per bundle set.

    File bundles win over Workload API bundles for the same trust domain. When
    `trust_domains` is configured, only those trust domains are trusted, whatever
    the Workload API hands out.
    """

    def __init__(self, config: IdentityConfig) -> None:
        self._config = config
        self._lock = threading.RLock()
        self._file_bundles: dict[str, TrustBundle] = {}
        self._api_bundles: dict[str, TrustBundle] = {}
        self._file_errors: dict[str, str] = {}
        self._files = BundleFileWatcher(
            config.trust_domains, config.bundle_poll_interval_s, self._on_file_bundle, self._on_file_error
        )
        self._api = (
            WorkloadApiWatcher(config.workload_api_socket, self._on_api_bundles, want_jwt="jwt" in config.sources)
            if config.workload_api_socket
            else None
        )
        self._apply: Callable[[IdentityVerifier], None] | None = None
        self._current: IdentityVerifier | None = None
        self._delivered: IdentityVerifier | None = None
        """The verifier the server last received (from load() or apply): what is serving."""
        self.reloads = 0
        self.reload_failures = 0

    @property
    def current(self) -> IdentityVerifier | None:
        return self._current

    def load(self) -> IdentityVerifier:
        try:
            file_bundles = self._files.load_all()
        except BundleError as exc:
            raise IdentityLoadError(str(exc)) from exc
        with self._lock:
            self._file_bundles = file_bundles
        if self._api is not None:
            self._api.start()
            timeout = self._config.workload_api_start_timeout_s
            if not self._api.wait_first(timeout) and not file_bundles:
                self._api.stop()
                raise IdentityLoadError(
                    f"identity.workload_api_socket: no bundles from {self._api.socket} within {timeout:g}s "
                    f"({self._api.last_error or 'no answer'})"
                )
        verifier = self._rebuild(force=True)
        assert verifier is not None
        with self._lock:
            self._delivered = verifier
        if not verifier.bundles.bundles:
            raise IdentityLoadError(
                "identity: no trust domain is trusted; configure identity.trust_domains or identity.workload_api_socket"
            )
        return verifier

    def start(self, apply: Callable[[IdentityVerifier], None]) -> None:
        with self._lock:
            self._apply = apply
            # Bundles that changed between load() and now (the other stages load in between) built a verifier
            # nobody received yet; without this the server would trust the old bundles until the next change.
            if self._current is not None and self._current is not self._delivered:
                self._delivered = self._current
                apply(self._current)
        if self._api is not None:
            self._api.start()
        self._files.start()

    def close(self) -> None:
        self._files.stop()
        if self._api is not None:
            self._api.stop()

    def poll_files(self) -> None:
        """Look at the bundle files now (the watcher thread does this every bundle_poll_interval_s)."""
        self._files.poll()

    def status(self) -> Mapping[str, str]:
        with self._lock:
            current = self._current
            file_errors = dict(self._file_errors)
        sources = [name for name, on in (("files", bool(self._files)), ("workload-api", self._api is not None)) if on]
        problems = [f"{name}: {error}" for name, error in sorted(file_errors.items())]
        facts = {
            "source": "+".join(sources) or "none",
            "version": current.version if current else "",
            "trust_domains": ",".join(sorted(current.bundles.bundles)) if current else "",
            "bundle_reloads": str(self.reloads),
            "bundle_reload_failures": str(self.reload_failures),
        }
        facts["workload_api"] = "off"
        if self._api is not None:
            facts["workload_api"] = self._api.state
            facts["workload_api_disconnects"] = str(self._api.disconnects)
            facts["workload_api_updates"] = str(self._api.updates)
            if self._api.state != "ok":
                problems.append(f"workload API {self._api.socket}: {self._api.last_error or self._api.state}")
        if current is not None:
            missing = sorted(set(self._config.trust_domains) - set(current.bundles.bundles))
            if missing:
                problems.append(f"no bundle yet for trust domain(s) {', '.join(missing)}: their callers are refused")
            expiries = [e for b in current.bundles.bundles.values() if (e := b.earliest_expiry) is not None]
            if expiries:
                first = min(expiries)
                facts["bundles_expire_at"] = dt.datetime.fromtimestamp(first, dt.UTC).isoformat()
                if first < time.time():
                    problems.append("a trust bundle authority has expired")
            stats = current.cache_stats()
            facts["cache_hits"], facts["cache_misses"] = str(stats.hits), str(stats.misses)
        facts["state"] = "degraded" if problems else "ok"
        if problems:
            facts["problems"] = "; ".join(problems)
        return facts

    # --- bundle updates ------------------------------------------------------

    def _on_file_bundle(self, name: str, bundle: TrustBundle) -> None:
        with self._lock:
            self._file_bundles[name] = bundle
            self._file_errors.pop(name, None)
            self._rebuild()

    def _on_file_error(self, name: str, error: str) -> None:
        with self._lock:
            self._file_errors[name] = error
            self.reload_failures += 1

    def _on_api_bundles(self, bundles: dict[str, TrustBundle]) -> None:
        wanted = self._config.trust_domains
        with self._lock:
            self._api_bundles = {n: b for n, b in bundles.items() if not wanted or n in wanted}
            self._rebuild()

    def _rebuild(self, force: bool = False) -> IdentityVerifier | None:
        """A new verifier when the bundles in force changed; applied in the order the changes happened."""
        with self._lock:
            bundle_set = BundleSet({**self._api_bundles, **self._file_bundles})
            if not force and self._current is not None and bundle_set.version == self._current.version:
                return None
            verifier = IdentityVerifier(self._config, bundle_set)
            if self._current is not None and bundle_set.version != self._current.version:
                self.reloads += 1
                log.info("trust bundles changed (version %s): identity cache starts afresh", bundle_set.version)
            self._current = verifier
            if self._apply is not None:
                self._delivered = verifier
                self._apply(verifier)
            return verifier


def source(config: IdentityConfig) -> IdentitySource:
    return IdentitySource(config)

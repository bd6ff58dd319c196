"""Trust bundles from files, re-read when they change.

Change detection polls each path's resolved target, inode, size and mtime:
Kubernetes updates a mounted ConfigMap by swapping the `..data` symlink, which
changes the resolved path while the path itself stays the same, and editors
and `cp` change inode or mtime. Polling (rather than inotify) works the same
on every filesystem, including the overlay and network ones pods often see.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from authz_server.identity.bundles import BundleError, TrustBundle, parse_bundle, parse_jwt_bundle
from authz_server.identity.config import TrustDomainConfig

log = logging.getLogger("authz_server.identity")

Signature = tuple[tuple[str, int, int, int, int] | None, ...]


def _file_signature(path: str) -> tuple[str, int, int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return os.path.realpath(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise BundleError(f"{path}: cannot read: {exc.strerror}") from exc


def load_trust_domain(name: str, config: TrustDomainConfig) -> TrustBundle:
    """The bundle of one trust domain from its file(s); raises BundleError naming the file."""
    data = _read(config.bundle)
    try:
        bundle = parse_bundle(name, data, origin=config.bundle)
    except BundleError as exc:
        raise BundleError(f"{config.bundle}: {exc}") from exc
    if config.jwt_bundle:
        data = _read(config.jwt_bundle)
        try:
            bundle = replace(bundle, jwt_authorities=parse_jwt_bundle(name, data))
        except BundleError as exc:
            raise BundleError(f"{config.jwt_bundle}: {exc}") from exc
    return bundle


class BundleFileWatcher:
    """Loads the file bundles of the trust domains that have one, and reloads them on change."""

    def __init__(
        self,
        trust_domains: Mapping[str, TrustDomainConfig],
        interval_s: float,
        on_change: Callable[[str, TrustBundle], None],
        on_error: Callable[[str, str], None],
    ) -> None:
        self._domains = {name: tdc for name, tdc in trust_domains.items() if tdc.bundle}
        self._interval = interval_s
        self._on_change = on_change
        self._on_error = on_error
        self._seen: dict[str, Signature] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __bool__(self) -> bool:
        return bool(self._domains)

    def _signature(self, config: TrustDomainConfig) -> Signature:
        return (_file_signature(config.bundle), _file_signature(config.jwt_bundle) if config.jwt_bundle else None)

    def load_all(self) -> dict[str, TrustBundle]:
        """Every file bundle, or BundleError listing every one that cannot be used."""
        bundles, problems = {}, []
        for name, config in self._domains.items():
            self._seen[name] = self._signature(config)
            try:
                bundles[name] = load_trust_domain(name, config)
            except BundleError as exc:
                problems.append(f"identity.trust_domains.{name}.bundle: {exc}")
        if problems:
            raise BundleError("\n".join(problems))
        return bundles

    def poll(self) -> None:
        """Reload every trust domain whose files changed since the last look."""
        for name, config in self._domains.items():
            signature = self._signature(config)
            if signature == self._seen.get(name):
                continue
            self._seen[name] = signature
            try:
                bundle = load_trust_domain(name, config)
            except BundleError as exc:
                log.error("trust bundle of %s not reloaded, the last good one keeps serving: %s", name, exc)
                self._on_error(name, str(exc))
                continue
            log.info("trust bundle of %s reloaded from %s", name, config.bundle)
            self._on_change(name, bundle)

    def start(self) -> None:
        if self._thread is None and self._domains:
            self._thread = threading.Thread(target=self._run, name="identity-bundle-files", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.poll()
            except Exception:  # a watcher that dies silently would freeze the bundles forever
                log.exception("polling trust bundle files failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

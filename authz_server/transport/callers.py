"""Only the proxies may ask: who sent a Check, and whether it may ask about this call.

Any meshed pod can reach the server's gRPC port. Without this check it could send Checks carrying someone
else's (public) certificate: poisoning the behavioural baseline and the decision log that retraining reads, and
querying the policy as an oracle. A sidecar asks only about calls to itself, so the identity of whoever sent
the Check must be the call's `attributes.destination.principal`, or a configured gateway identity (a gateway
asks about calls to the services behind it).

Where the caller's identity comes from (`callers.mode`):
- `xfcc`: the Istio layout. The server's own sidecar terminates the caller's mTLS and appends an element to
  `x-forwarded-client-cert` (Istio's sidecar inbound uses APPEND_FORWARD with URI), so the last element's
  `URI` is the SPIFFE ID of the sidecar that sent the Check. Only the last element counts: earlier ones are
  whatever the client wrote.
- `off`: no caller identity reaches the server (plain Envoy calling over plaintext, protected by the
  NetworkPolicy; or the sidecar layout over localhost / a Unix socket, where only the pod itself can connect).
  The server says so in its log at start.

A refused Check gets gRPC PERMISSION_DENIED (Envoy, failing closed, answers 403) and is counted in
`authz_check_callers_refused_total{reason}`; it never reaches the decision path, the decision log or the
baseline.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.identity.xfcc import XfccError, parse_xfcc
from authz_server.transport.config import CallersConfig

log = logging.getLogger("authz_server.transport.callers")

XFCC_METADATA = "x-forwarded-client-cert"
_SENDERS_CACHED = 512
_SENDERS_MAX_HEADER = 16 * 1024
"""Parsing an XFCC header with a Chain costs about 250 µs (a 1.6 KB header, measured), more than a whole
decision; a sidecar sends the same header on every Check, so the senders are remembered by header text (then about
5 µs a Check, timeit on the shared 2-core machine):
at most 512 headers of at most 16 KiB, 8 MiB, and the memory is dropped whole when full."""
REFUSAL_REASONS = ("no-caller-identity", "malformed-xfcc", "not-the-destination")


class CheckCallers:
    """Refuses Checks whose sender may not ask about the call's destination; counts each refusal by reason."""

    def __init__(self, config: CallersConfig, registry: CollectorRegistry | None) -> None:
        self._gateways = frozenset(config.gateways)
        self.refused = Counter(
            "authz_check_callers_refused",
            "Checks refused before any decision because their sender may not ask about the call's destination.",
            ("reason",),
            registry=registry,
        )
        for reason in REFUSAL_REASONS:
            self.refused.labels(reason)
        self._seen: dict[str, int] = {}
        # Plain dict operations are atomic under the GIL, so the sync transport's threads may share it.
        self._senders: dict[str, tuple[str, ...] | str] = {}

    @classmethod
    def from_config(cls, config: CallersConfig, registry: CollectorRegistry | None) -> CheckCallers | None:
        if config.mode == "off":
            log.warning(
                "callers.mode is off: any client that reaches the gRPC port may send Checks about any workload. "
                "Right for the sidecar layout (localhost or Unix socket) and for plain Envoy behind the "
                "NetworkPolicy; in an Istio mesh set callers.mode: xfcc"
            )
            return None
        log.info("only proxies may ask: Checks must come from the destination's sidecar or %s", sorted(config.gateways))
        return cls(config, registry)

    def refusal(self, request: external_auth_pb2.CheckRequest, metadata: Iterable[Any] | None) -> str | None:
        """Why this Check is refused, or None when its sender may ask about its destination."""
        header = ""
        for key, value in metadata or ():
            if key == XFCC_METADATA:
                header = value  # Envoy sends one (it coalesces repeats); of several, the last is the nearest
        if not header:
            return self._refuse("no-caller-identity", "no x-forwarded-client-cert from the server's own sidecar")
        senders = self._senders.get(header)
        if senders is None:
            senders = self._parse_senders(header)
            if len(header) <= _SENDERS_MAX_HEADER:
                if len(self._senders) >= _SENDERS_CACHED:
                    self._senders.clear()
                self._senders[header] = senders
        if isinstance(senders, str):
            return self._refuse("malformed-xfcc", f"x-forwarded-client-cert does not parse: {senders}")
        destination = request.attributes.destination.principal
        if any(sender == destination or sender in self._gateways for sender in senders):
            return None
        return self._refuse(
            "not-the-destination",
            f"sender {', '.join(senders) or '(no URI)'} may not ask about calls to {destination or '(no principal)'}",
        )

    @staticmethod
    def _parse_senders(header: str) -> tuple[str, ...] | str:
        """The URIs of the header's last element (the server's own sidecar's), or why it does not parse."""
        try:
            return tuple(parse_xfcc(header)[-1].get("uri", ()))
        except XfccError as exc:
            return str(exc)

    def _refuse(self, reason: str, detail: str) -> str:
        self.refused.labels(reason).inc()
        # The first refusal of each kind, then one in 1,000: a pod flooding the port cannot flood the log.
        seen = self._seen[reason] = self._seen.get(reason, 0) + 1
        if seen == 1 or seen % 1000 == 0:
            log.warning("Check refused (%s, %d so far): %s", reason, seen, detail)
        return f"{reason}: {detail}"

"""`authz-server demo`: the whole decision point on one machine, in about half a minute.

It mints a throwaway trust domain, starts the server (bundled model, the
declarations below) and a real Envoy with mTLS in front of a toy upstream, then
calls through Envoy as several workloads: allowed calls, calls the policy
denies, identities that cannot be verified, and a caller that suddenly starts
enumerating paths. Envoy is set to accept any client certificate in the
handshake, so that the server's own identity checks are what decides.
"""

from __future__ import annotations

import datetime as dt
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

from authz_server.dev.mesh import TRUST_DOMAIN, LocalMesh, Reply
from authz_server.dev.trust_domain import TrustDomainCA

PAYMENTS = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/payments"
CHECKOUT = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/checkout"
FRONTEND = f"spiffe://{TRUST_DOMAIN}/ns/web/sa/frontend"
REPORTING = f"spiffe://{TRUST_DOMAIN}/ns/finance/sa/reporting"

DECLARATIONS = f"""\
apiVersion: authz-server.dev/v1alpha1
kind: AllowedCalls
metadata: {{name: payments-api, namespace: shop}}
spec:
  workload: {PAYMENTS}
  mode: enforce
  rules:
    - name: no-admin-from-the-mesh
      action: deny
      from: [{{prefix: "spiffe://{TRUST_DOMAIN}/*"}}]
      to: [{{methods: ["*"], paths: [/v1/admin/**]}}]
    - name: checkout-charges
      from: [{{id: {CHECKOUT}}}]
      to: [{{methods: [GET, POST], paths: [/v1/charges, /v1/charges/*]}}]
      maxRisk: 0.9
    - name: frontend-prices
      from: [{{namespace: web, serviceAccount: frontend}}]
      to: [{{methods: [GET], paths: [/v1/prices, /v1/prices/*]}}]
    - name: reporting-reads-charges
      from: [{{namespace: finance}}]
      to: [{{methods: [GET], paths: [/v1/charges/*]}}]
      maxRisk: 0.6
"""

ENUMERATION_CALLS = 60
WARMUP_S = 8.0
"""The risk stage's warm-up for the demo (600 s by default): scores are learned from, not enforced."""
LEARN_S = 5.0
CHARGE = b'{"amount": 1250, "currency": "eur", "customer": "cus_1001"}'
"""The body of an ordinary charge: the risk stage learns the size it usually has."""
EXPORT_BYTES = 400_000
"""The body of the exfiltration scene: thousands of times an ordinary charge."""


@dataclass(frozen=True)
class Row:
    caller: str
    request: str
    status: str
    verdict: str
    reason: str
    risk: str


def _short(spiffe_id: str) -> str:
    return spiffe_id.removeprefix("spiffe://")


def _row(caller: str, method: str, path: str, reply: Reply) -> Row:
    if reply.status == 200:
        seen = reply.upstream_headers
        decision, reason, risk = (
            seen.get("x-authz-decision", "?"),
            seen.get("x-authz-reason", ""),
            seen.get("x-authz-risk", ""),
        )
        factors = seen.get("x-authz-risk-factors")
        if factors:
            risk = f"{risk} ({factors})"
    else:
        decision, reason, risk = reply.headers.get("x-authz-decision", "?"), reply.headers.get("x-authz-reason", ""), ""
    return Row(caller, f"{method} {path}", str(reply.status), decision, reason, risk)


def _band(row: Row) -> tuple[str, str, bool]:
    """What a reader should notice change: the verdict, its reason, and whether risk factors were annotated."""
    return row.verdict, row.reason, "(" in row.risk


def _print_table(rows: list[Row], out: TextIO) -> None:
    header = Row("caller", "request", "status", "verdict", "reason", "risk (top factors)")
    widths = [max(len(getattr(r, f)) for r in [header, *rows]) for f in Row.__dataclass_fields__]
    for row in [header, *rows]:
        cells = [getattr(row, f).ljust(w) for f, w in zip(Row.__dataclass_fields__, widths, strict=True)]
        out.write("  ".join(cells).rstrip() + "\n")
        if row is header:
            out.write("  ".join("-" * w for w in widths) + "\n")


def _learn(mesh: LocalMesh, until: float) -> int:
    """Ordinary traffic while the risk stage is still in its warm-up (scores computed, never enforced)."""
    calls = 0
    while time.monotonic() < until:
        i = calls
        mesh.call(CHECKOUT, "POST", "/v1/charges", body=CHARGE)
        mesh.call(CHECKOUT, "GET", f"/v1/charges/ch_{1001 + i % 3}")
        mesh.call(FRONTEND, "GET", "/v1/prices/eur")
        mesh.call(REPORTING, "GET", f"/v1/charges/ch_{1001 + i % 5}")
        calls += 4
        time.sleep(0.05)
    return calls


def _scripted_calls(mesh: LocalMesh, started: float, rows: list[Row], out: TextIO) -> None:
    def call(
        caller: str | tuple[Path, Path], label: str, method: str, path: str, body: bytes | None = None
    ) -> Reply | None:
        try:
            reply = mesh.call(caller, method, path, body=body)
        except OSError as exc:
            rows.append(Row(label, f"{method} {path}", "-", "refused by Envoy's TLS handshake", type(exc).__name__, ""))
            return None
        rows.append(_row(label, method, path, reply))
        return reply

    out.write(f"ordinary traffic for {LEARN_S:g}s while the risk stage learns each caller's habits (shadow mode)...\n")
    learned = _learn(mesh, started + LEARN_S)
    out.write(f"  {learned} calls; risk scores are enforced from {WARMUP_S:g}s after start\n")
    time.sleep(max(0.0, started + WARMUP_S + 0.5 - time.monotonic()))

    out.write("allowed and denied by policy...\n")
    call(CHECKOUT, _short(CHECKOUT), "POST", "/v1/charges", CHARGE)
    call(CHECKOUT, _short(CHECKOUT), "GET", "/v1/charges/ch_1002?expand=refunds")
    call(FRONTEND, _short(FRONTEND), "GET", "/v1/prices/eur")
    call(FRONTEND, _short(FRONTEND), "POST", "/v1/charges")
    call(CHECKOUT, _short(CHECKOUT), "DELETE", "/v1/charges/ch_1001")
    call(CHECKOUT, _short(CHECKOUT), "GET", "/v1/admin/export")
    call(CHECKOUT, _short(CHECKOUT), "GET", "/v1/charges/..%2F..%2Fadmin/export")

    out.write("identities the server cannot verify...\n")
    forger = TrustDomainCA.create(TRUST_DOMAIN)  # claims our trust domain, signed by someone else's key
    call(mesh.write_svid(forger.issue(CHECKOUT)), "forged " + _short(CHECKOUT), "POST", "/v1/charges")
    now = dt.datetime.now(dt.UTC)
    expired = mesh.ca.issue(CHECKOUT, not_before=now - dt.timedelta(hours=3), not_after=now - dt.timedelta(hours=2))
    call(mesh.write_svid(expired), "expired " + _short(CHECKOUT), "POST", "/v1/charges")
    partner = TrustDomainCA.create("partner.example")
    foreign = "spiffe://partner.example/ns/shop/sa/checkout"
    call(mesh.write_svid(partner.issue(foreign)), _short(foreign), "POST", "/v1/charges")

    out.write("the checkout service suddenly posts a body of 400 kB (an exfiltration), allowed by policy...\n")
    call(CHECKOUT, _short(CHECKOUT), "POST", "/v1/charges", b"x" * EXPORT_BYTES)

    out.write(
        f"the reporting job suddenly walks through charge ids, probing an admin route now and then "
        f"({ENUMERATION_CALLS} calls; the bundled model has no baseline of its pace yet, so at most "
        f"annotated: `authz-server model train --baseline` learns it)...\n"
    )
    call(REPORTING, _short(REPORTING), "GET", "/v1/charges/ch_1003")
    enumeration: list[Row] = []
    for i in range(ENUMERATION_CALLS):
        path = "/v1/admin/export" if i % 6 == 3 else f"/v1/charges/ch_{5000 + i * 7}"
        enumeration.append(_row(_short(REPORTING), "GET", path, mesh.call(REPORTING, "GET", path)))
    # Show the first probe and every change of verdict, reason or annotation of the walk, not sixty lines.
    shown: list[Row] = []
    walk: list[Row] = []
    for index, row in enumerate(enumeration):
        labelled = replace(row, request=f"{row.request}  [call {index + 1} of {ENUMERATION_CALLS}]")
        if "/admin/" in row.request:
            if not any("/admin/" in r.request for r in shown):
                shown.append(labelled)
        elif not walk or _band(row) != _band(walk[-1]):
            walk.append(row)
            shown.append(labelled)
    rows.extend(shown)


def run_demo(keep: bool = False, out: TextIO = sys.stdout, on_mesh: Callable[[LocalMesh], None] | None = None) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="authz-demo-"))
    rows: list[Row] = []
    out.write(f"starting a trust domain ({TRUST_DOMAIN}), the server and Envoy in {workdir}...\n")
    mesh = LocalMesh(
        workdir, DECLARATIONS, callee=PAYMENTS, accept_untrusted_clients=True,
        # The demo, Envoy and the server share this machine's cores: a roomier budget than production's 2 ms
        # keeps the story about scores rather than about a busy laptop.
        server_config={"risk": {"warmup_s": WARMUP_S, "budget_ms": 20}},
    )  # fmt: skip
    try:
        with mesh:
            # The server's warm-up began before it was ready, so counting from now errs on the safe side.
            started = time.monotonic()
            if on_mesh is not None:
                on_mesh(mesh)
            _scripted_calls(mesh, started, rows, out)
    finally:
        if not keep:
            for entry in workdir.iterdir():
                if entry != mesh.decision_log:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    out.write("\n")
    _print_table(rows, out)
    out.write(f"\ndecision log: {mesh.decision_log}\n")
    out.write(
        "(one JSON line per decision: caller, route, verdict, reason, rule, risk score and factors, stage latencies)\n"
    )
    if keep:
        out.write(f"kept: certificates, configuration, server and Envoy logs in {workdir}\n")
    return 0

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
        decision, reason, risk = seen.get("x-authz-decision", "?"), seen.get("x-authz-reason", ""), seen.get(
            "x-authz-risk", ""
        )
        factors = seen.get("x-authz-risk-factors")
        if factors:
            risk = f"{risk} ({factors})"
    else:
        decision, reason, risk = reply.headers.get("x-authz-decision", "?"), reply.headers.get("x-authz-reason", ""), ""
    return Row(caller, f"{method} {path}", str(reply.status), decision, reason, risk)


def _print_table(rows: list[Row], out: TextIO) -> None:
    header = Row("caller", "request", "status", "verdict", "reason", "risk (top factors)")
    widths = [max(len(getattr(r, f)) for r in [header, *rows]) for f in Row.__dataclass_fields__]
    for row in [header, *rows]:
        cells = [getattr(row, f).ljust(w) for f, w in zip(Row.__dataclass_fields__, widths, strict=True)]
        out.write("  ".join(cells).rstrip() + "\n")
        if row is header:
            out.write("  ".join("-" * w for w in widths) + "\n")


def _scripted_calls(mesh: LocalMesh, rows: list[Row], out: TextIO) -> None:
    def call(caller: str | tuple[Path, Path], label: str, method: str, path: str) -> Reply | None:
        try:
            reply = mesh.call(caller, method, path)
        except OSError as exc:
            rows.append(Row(label, f"{method} {path}", "-", "refused by Envoy's TLS handshake", type(exc).__name__, ""))
            return None
        rows.append(_row(label, method, path, reply))
        return reply

    out.write("allowed and denied by policy...\n")
    call(CHECKOUT, _short(CHECKOUT), "POST", "/v1/charges")
    call(CHECKOUT, _short(CHECKOUT), "GET", "/v1/charges/ch_1001?expand=refunds")
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

    out.write(f"a steady caller, then a caller that suddenly enumerates {ENUMERATION_CALLS} charges...\n")
    for i in range(3):
        call(REPORTING, _short(REPORTING), "GET", f"/v1/charges/ch_{1001 + i}")
    enumeration: list[Row] = []
    for i in range(ENUMERATION_CALLS):
        reply = mesh.call(REPORTING, "GET", f"/v1/charges/ch_{5000 + i * 7}")
        enumeration.append(_row(_short(REPORTING), "GET", f"/v1/charges/ch_{5000 + i * 7}", reply))
    # Show the first call and every change of verdict, not sixty lines.
    shown: list[Row] = []
    for index, row in enumerate(enumeration):
        if not shown or (row.verdict, row.reason) != (shown[-1].verdict, shown[-1].reason):
            shown.append(replace(row, request=f"{row.request}  [call {index + 1} of {ENUMERATION_CALLS}]"))
    rows.extend(shown)


def run_demo(keep: bool = False, out: TextIO = sys.stdout, on_mesh: Callable[[LocalMesh], None] | None = None) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="authz-demo-"))
    rows: list[Row] = []
    out.write(f"starting a trust domain ({TRUST_DOMAIN}), the server and Envoy in {workdir}...\n")
    mesh = LocalMesh(workdir, DECLARATIONS, callee=PAYMENTS, accept_untrusted_clients=True)
    try:
        with mesh:
            if on_mesh is not None:
                on_mesh(mesh)
            _scripted_calls(mesh, rows, out)
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

"""Helpers shared by the policy tests: declarations on disk, calls as Envoy sends them."""

from __future__ import annotations

import contextlib
import io
import subprocess
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path

from spiffe import SpiffeId

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.call import Call, parse_call
from authz_server.cli import main
from authz_server.identity.result import Identity, Proof
from authz_server.policy import PolicySet, load_policies
from authz_server.policy.outcome import PolicyOutcome

TD = "example.org"
PAYMENTS = f"spiffe://{TD}/ns/payments/sa/payments-api"
CHECKOUT = f"spiffe://{TD}/ns/checkout/sa/checkout"
BILLING = f"spiffe://{TD}/ns/billing/sa/invoicer"
STRANGER = f"spiffe://{TD}/ns/web/sa/frontend"
EXAMPLES = Path(__file__).parents[2] / "authz_server" / "policy" / "examples"

HEADER = "apiVersion: authz-server.dev/v1alpha1\n"


def allowed_calls(name: str, spec: str, namespace: str = "payments") -> str:
    """An AllowedCalls document; `spec` is the YAML body of spec (unindented)."""
    body = textwrap.indent(textwrap.dedent(spec).strip(), "  ")
    return f"{HEADER}kind: AllowedCalls\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{body}\n"


def quarantine(name: str, entries: str) -> str:
    body = textwrap.indent(textwrap.dedent(entries).strip(), "    ")
    return f"{HEADER}kind: Quarantine\nmetadata:\n  name: {name}\n  namespace: security\nspec:\n  entries:\n{body}\n"


def write(directory: Path, name: str, *documents: str) -> Path:
    path = directory / name
    path.write_text("---\n".join(documents))
    return path


def compile_text(tmp_path: Path, *documents: str, now: float | None = None) -> PolicySet:
    directory = tmp_path / "policies"
    directory.mkdir(exist_ok=True)
    write(directory, "declarations.yaml", *documents)
    return load_policies([str(directory)], now=now)


def check(
    caller: str,
    method: str,
    path: str,
    *,
    callee: str = PAYMENTS,
    headers: Mapping[str, str] | None = None,
    context_extensions: Mapping[str, str] | None = None,
) -> tuple[Call, Identity]:
    """A CheckRequest as Envoy sends it, parsed by the server's own parser, and its caller's identity."""
    request = external_auth_pb2.CheckRequest()
    request.attributes.source.principal = caller
    request.attributes.destination.principal = callee
    for key, value in (context_extensions or {}).items():
        request.attributes.context_extensions[key] = value
    http = request.attributes.request.http
    http.method, http.path = method, path
    for name, value in (headers or {}).items():
        http.headers[name] = value
    parsed = SpiffeId(caller)
    return parse_call(request), Identity(caller, parsed.trust_domain.name, parsed.path, Proof.PRINCIPAL, None)


def decide(
    policies: PolicySet, caller: str, method: str, path: str, *, now: float | None = None, **kwargs: object
) -> PolicyOutcome:
    call, identity = check(caller, method, path, **kwargs)  # type: ignore[arg-type]
    return policies.evaluate(call, identity, time.time() if now is None else now)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`authz-server ARGS...`: the exit status, stdout and stderr a user gets from the command.

    Runs the console script's own `main` in this process: a process of its own spent ~1 s of a busy CI core
    importing, for each of the suite's calls, and these commands neither serve nor read AUTHZ_* variables."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's usage errors, which end a process with status 2
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    return subprocess.CompletedProcess(["authz-server", *args], code, out.getvalue(), err.getvalue())

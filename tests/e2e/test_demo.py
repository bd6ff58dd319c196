"""`authz-server demo` is the newcomer's first contact: it must work and tell the truth."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from authz_server.dev.demo import ENUMERATION_CALLS, run_demo
from authz_server.dev.mesh import LocalMesh

pytestmark = pytest.mark.e2e


def test_the_demo_shows_each_kind_of_decision_and_cleans_up() -> None:
    out = io.StringIO()
    meshes: list[LocalMesh] = []

    assert run_demo(out=out, on_mesh=meshes.append) == 0

    text = out.getvalue()
    table = text[text.index("caller") :]
    rows = [line.split() for line in table.splitlines()[2:] if line.strip() and not line.startswith("decision log")]
    by_request = {" ".join(r[1:3]): r for r in rows if len(r) > 4}
    assert by_request["POST /v1/charges"][3:5] == ["200", "allow"]
    assert by_request["POST /v1/charges"][0] == "example.org/ns/shop/sa/checkout"
    assert "no-matching-rule" in table and "denied-by-rule" in table
    assert "invalid-path" in table, "an encoded slash never reaches a route"
    for reason in ("chain-invalid", "untrusted-trust-domain"):
        assert reason in table

    # The enumeration: the steady calls pass, the enumerating caller ends up denied for risk.
    assert f"of {ENUMERATION_CALLS}]" in table
    assert any(r[-1] == "risk" or "risk" in r for r in rows), table

    log_path = Path(text.split("decision log: ", 1)[1].split()[0])
    decisions = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(decisions) >= 10 + ENUMERATION_CALLS
    workdir = log_path.parent
    assert [p.name for p in workdir.iterdir()] == [log_path.name], "certificates and keys are removed"
    assert meshes[0].server is not None and meshes[0].server.process is not None
    assert meshes[0].server.process.poll() is not None, "the server was stopped"
    log_path.unlink()
    workdir.rmdir()

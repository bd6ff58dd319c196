"""Validation: every problem with file, line and a plain message; the published schemas stay structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_support import CHECKOUT, PAYMENTS, allowed_calls, compile_text, quarantine, write

from authz_server.policy import PolicyError, Severity, compile_snapshot, load_policies
from authz_server.policy.documents import FileSnapshot
from authz_server.policy.schema import (
    API_GROUP,
    API_VERSION,
    allowed_calls_openapi_schema,
    quarantine_openapi_schema,
)


def problems_of(tmp_path: Path, text: str) -> list[str]:
    directory = tmp_path / "p"
    directory.mkdir(exist_ok=True)
    path = write(directory, "bad.yaml", text)
    with pytest.raises(PolicyError) as caught:
        load_policies([str(directory)])
    return [str(p).replace(str(path), "bad.yaml") for p in caught.value.problems]


def test_schema_problems_name_file_line_and_key(tmp_path: Path) -> None:
    text = allowed_calls(
        "bad",
        f"""
        workload: {PAYMENTS}
        mode: enforced
        rules:
          - name: one
            from:
              - id: {CHECKOUT}
              - prefix: spiffe://example.org/ns/billing
              - namespace: billing
                sevriceAccount: x
            to:
              - methods: [get]
                paths: [/v1/charges]
            maxRisk: 2
        """,
    )
    assert problems_of(tmp_path, text) == [
        "bad.yaml:8: spec.mode: must be one of enforce, dry-run, got 'enforced'",
        "bad.yaml:13: spec.rules[0].from[1].prefix: 'spiffe://example.org/ns/billing': a prefix is written "
        "spiffe://TRUST-DOMAIN/* or spiffe://TRUST-DOMAIN/PATH/*",
        "bad.yaml:15: unknown key 'sevriceAccount' in spec.rules[0].from[2] "
        "(known: id, namespace, prefix, serviceAccount, trustDomain)",
        "bad.yaml:17: spec.rules[0].to[0].methods[0]: 'get': methods are written in upper case (GET, POST), "
        "or * for any",
        "bad.yaml:19: spec.rules[0].maxRisk: 2 is out of range (maximum 1)",
    ]


def test_semantic_problems(tmp_path: Path) -> None:
    text = allowed_calls(
        "bad",
        f"""
        workload: {PAYMENTS}
        rules:
          - name: one
            from:
              - id: spiffe://example.org/ns//x
              - id: spiffe://Example.org/x
              - namespace: billing
                prefix: spiffe://example.org/*
            to:
              - methods: [GET]
                paths:
                  - /v1/charges/../x
                  - /v1/a*b
                  - /v1/**/x
                  - "/v1/x?y=1"
          - name: one
            action: deny
            maxRisk: 0.5
            from: [{{id: {CHECKOUT}}}]
            to: [{{methods: [GET], paths: [/a]}}]
            expires: 2020-01-01
        """,
    )
    assert problems_of(tmp_path, text) == [
        "bad.yaml:11: spec.rules[0].from[0].id: Invalid SPIFFE ID 'spiffe://example.org/ns//x': "
        "path cannot contain empty segments",
        "bad.yaml:12: spec.rules[0].from[1].id: write the SPIFFE ID as spiffe://example.org/x "
        "(trust domains are lower case)",
        "bad.yaml:13: spec.rules[0].from[2]: give exactly one of id, prefix or namespace",
        "bad.yaml:18: path '/v1/charges/../x' is not in normalised form, so no request could match it; write /v1/x",
        "bad.yaml:19: path '/v1/a*b': * and ** must be a whole segment, as in /v1/*/items",
        "bad.yaml:20: path '/v1/**/x': ** may only be the last segment",
        "bad.yaml:21: path '/v1/x?y=1': the query string never takes part in matching; remove it",
        "bad.yaml:22: rule 'one': maxRisk and onRiskTimeout only apply to allow rules",
        "bad.yaml:22: rule name 'one' is already used at line 9",
        "bad.yaml:27: spec.rules[1].expires: '2020-01-01' is not an RFC 3339 time with a UTC offset, "
        "e.g. 2030-01-01T00:00:00Z",
    ]


def test_envelope_problems_and_duplicates(tmp_path: Path) -> None:
    ok = allowed_calls("same", f"workload: {PAYMENTS}\nrules: []")
    text = "\n---\n".join(
        [
            ok,
            ok,
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
            "apiVersion: authz-server.dev/v1alpha1\nkind: AllowedCalls\nmetadata: {name: Bad_Name}\nspec: {rules: []}",
            f"apiVersion: authz-server.dev/v1alpha1\nkind: AllowedCalls\nmetadata: {{name: x}}\nspec:\n"
            f"  workload: {PAYMENTS}\n  workloadKey: k\n  rules: []\n",
        ]
    )
    problems = problems_of(tmp_path, text)
    assert "bad.yaml:11: AllowedCalls payments/same is already declared at bad.yaml:1" in problems
    assert "bad.yaml:21: apiVersion must be authz-server.dev/v1alpha1, got 'v1'" in problems
    assert "bad.yaml:22: kind must be one of AllowedCalls, Quarantine, AllowedCallsTest, got 'ConfigMap'" in problems
    assert "bad.yaml:28: metadata.name must be a DNS label (a-z, 0-9, -), got 'Bad_Name'" in problems
    assert "bad.yaml:34: spec: give exactly one of workload (a SPIFFE ID) or workloadKey" in problems
    assert "bad.yaml:8: warning: no rules: every call to this workload is denied" in problems


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "apiVersion: x\nkind: [AllowedCalls\nmetadata: {}\n")
    assert problems[0].startswith("bad.yaml:3: not valid YAML")


def test_quarantine_entries_need_reason_expiry_and_one_target(tmp_path: Path) -> None:
    text = quarantine(
        "q",
        f"""
        - id: {CHECKOUT}
          expires: 2099-01-01T00:00:00Z
        - id: {CHECKOUT}
          prefix: spiffe://example.org/*
          reason: x
          expires: 2099-01-01T00:00:00Z
        """,
    )
    assert problems_of(tmp_path, text) == ["bad.yaml:8: spec.entries[0]: missing required key 'reason'"]


def test_warnings_do_not_block_loading(tmp_path: Path) -> None:
    spec = f"""
        workload: {PAYMENTS}
        rules:
          - name: expired
            from: [{{id: {CHECKOUT}}}]
            to: [{{methods: [GET], paths: ["/a/*"]}}]
            expires: 2020-01-01T00:00:00Z
          - name: broad
            from: [{{prefix: "spiffe://example.org/*"}}]
            to: [{{methods: [GET], paths: ["/a/**"]}}]
          - name: narrow
            from: [{{prefix: "spiffe://example.org/*"}}]
            to: [{{methods: [GET], paths: [/a/c]}}]
          - name: hidden
            from: [{{id: {CHECKOUT}}}]
            to: [{{methods: [GET], paths: [/a/b/c]}}]
          - name: block
            action: deny
            from: [{{prefix: "spiffe://example.org/*"}}]
            to: [{{methods: ["*"], paths: ["/a/b/**"]}}]
        """
    policies = compile_text(tmp_path, allowed_calls("w", spec))
    assert all(p.severity is Severity.WARNING for p in policies.warnings)
    messages = [f"{p.line}: {p.message}" for p in policies.warnings]
    assert messages[0] == "12: rule 'expired' expired at 2020-01-01T00:00:00Z: it no longer matches anything; remove it"
    assert messages[1].startswith("16: rule 'narrow' is shadowed: rule 'broad' of payments/w (")
    assert messages[2].startswith("19: rule 'hidden' can never allow anything: rule 'block' of payments/w (")
    assert len(messages) == 3


def test_version_is_a_content_hash(tmp_path: Path) -> None:
    doc = allowed_calls("a", f"workload: {PAYMENTS}\nrules: []")
    for name in ("one", "two", "three"):
        (tmp_path / name).mkdir()
    first = compile_text(tmp_path / "one", doc)
    second = compile_text(tmp_path / "two", "# a comment\n" + doc)
    third = compile_text(tmp_path / "three", doc.replace("rules: []", "mode: dry-run\n  rules: []"))
    assert first.version == second.version != third.version
    assert len(first.version) == 12


# --- the published schemas ------------------------------------------------------


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if isinstance(node, dict):
        if "type" in node:
            out.append((path, node))
        for key, value in node.items():
            out.extend(_walk(value, f"{path}/{key}"))
    return out


@pytest.mark.parametrize("make_schema", [allowed_calls_openapi_schema, quarantine_openapi_schema])
def test_schemas_are_structural(make_schema: Any) -> None:
    allowed = {"type", "properties", "required", "items", "enum", "pattern", "format", "minimum", "maximum",
               "description", "minItems", "minLength"}  # fmt: skip
    for path, node in _walk(make_schema()):
        assert isinstance(node["type"], str), path
        assert set(node) <= allowed, (path, set(node) - allowed)
        if node["type"] == "object":
            assert "properties" in node, path
        if node["type"] == "array":
            assert isinstance(node.get("items"), dict), path
    assert (API_GROUP, API_VERSION) == ("authz-server.dev", "v1alpha1")
    assert make_schema() == make_schema()  # a fresh copy each time, safe to mutate


# --- hostile input ----------------------------------------------------------------

EXAMPLE_TEXT = (Path(__file__).parents[2] / "authz_server/policy/examples/payments-api.yaml").read_text()


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_any_edit_of_a_declaration_is_either_loaded_or_reported(data: st.DataObject) -> None:
    text = EXAMPLE_TEXT
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 12))
        insert = data.draw(st.sampled_from(["", ":", "- ", "[", "]", "{", "}", "\n", "  ", "*", "&a ", "!!binary ",
                                            "<<: *a\n", "0x1", "~", "'", '"', "\t", "\x00", "é"]))  # fmt: skip
        text = text[:at] + insert + text[at + cut :]
    compiled = compile_snapshot(FileSnapshot((("edited.yaml", text.encode()),), ()))
    if compiled.policy_set is None:
        assert compiled.errors and all(p.file == "edited.yaml" and p.message for p in compiled.errors)


def test_the_readme_quarantine_example_is_live_for_a_while_yet(tmp_path: Path) -> None:
    """A copied example that has already lapsed quarantines nobody. When this fails, move the date forward."""
    import re
    import time

    readme = (Path(__file__).parents[2] / "authz_server" / "policy" / "README.md").read_text()
    (example,) = [b for b in re.findall(r"```yaml\n(.*?)```", readme, flags=re.DOTALL) if "kind: Quarantine" in b]
    month_from_now = time.time() + 30 * 86400
    policies = compile_text(tmp_path, example, now=month_from_now)
    assert policies.summary.quarantined == 2
    assert not [p for p in policies.warnings if "expired" in p.message], policies.warnings

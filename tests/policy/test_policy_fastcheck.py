"""The fast schema check never accepts what jsonschema, applying the same strict schema, refuses."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_support import EXAMPLES

from authz_server.policy import schema
from authz_server.policy.fastcheck import compile_check

SPECS = [
    (doc["kind"], doc["spec"])
    for path in sorted(EXAMPLES.glob("*.yaml"))
    for doc in yaml.load_all(path.read_text(), Loader=yaml.BaseLoader)  # every scalar a string, like timestamps
    if doc
]
STRICT = {kind: schema.strict_schema(build()) for kind, build in schema.SPEC_SCHEMAS.items()}
FAST = {kind: compile_check(strict) for kind, strict in STRICT.items()}
VALIDATORS = {kind: jsonschema.Draft202012Validator(strict) for kind, strict in STRICT.items()}

replacement_values = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 2), st.floats(-1, 2, allow_nan=False), st.text(max_size=8),
    st.sampled_from(["GET", "get", "*", "/x", "x", "spiffe://example.org/a", "spiffe://example.org/*", "deny",
                     "dry-run", "2026-01-01T00:00:00Z", ""]),
    st.lists(st.text(max_size=3), max_size=2),
    st.dictionaries(st.sampled_from(["id", "zz", "name"]), st.text(max_size=3)),
)  # fmt: skip


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out.extend(_paths(value, (*prefix, key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out.extend(_paths(value, (*prefix, index)))
    return out


@st.composite
def mutated_specs(draw: st.DrawFn) -> tuple[str, Any]:
    kind, spec = draw(st.sampled_from(SPECS))
    spec = copy.deepcopy(spec)
    # BaseLoader keeps numbers and booleans as strings; restore the few the schema types.
    for rule in spec.get("rules", []) if isinstance(spec, dict) else []:
        if "maxRisk" in rule:
            rule["maxRisk"] = float(rule["maxRisk"])
    if kind == "AllowedCalls" and "riskShadow" in spec:
        spec["riskShadow"] = spec["riskShadow"] == "true"
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(_paths(spec)))
        if not path:
            continue
        parent = spec
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(replacement_values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(["extra", "name", "from", "paths", "values"]))] = draw(replacement_values)
    return kind, spec


@settings(max_examples=200, deadline=None)
@given(mutated_specs())
def test_fast_check_accepts_only_what_jsonschema_accepts(case: tuple[str, Any]) -> None:
    kind, spec = case
    if FAST[kind](spec):
        assert VALIDATORS[kind].is_valid(spec), list(VALIDATORS[kind].iter_errors(spec))


def test_fast_check_accepts_the_examples() -> None:
    for kind, spec in SPECS:
        if kind == "AllowedCallsTest":
            continue
        for rule in spec.get("rules", []):
            if "maxRisk" in rule:
                rule["maxRisk"] = float(rule["maxRisk"])
        if "riskShadow" in spec:
            spec["riskShadow"] = spec["riskShadow"] == "true"
        assert FAST[kind](spec) and VALIDATORS[kind].is_valid(spec)


def test_unknown_keywords_fall_back_to_jsonschema() -> None:
    assert not compile_check({"type": "string", "oneOf": []})("x")
    assert not compile_check({"type": "string", "format": "uri"})("x")

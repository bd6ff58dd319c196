"""A fast yes/no check of a document against a schema of the subset schema.py uses.

jsonschema takes milliseconds per declaration; at ten thousand declarations
that is most of a reload. This answers only "valid or not" for the keywords
schema.py emits; when it answers "not", or meets any keyword it does not know,
jsonschema runs and its answer (and messages) stand. So it can only ever save
time, never accept what jsonschema would refuse (tests/policy compares the two).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_KNOWN = frozenset(
    {"type", "description", "properties", "required", "items", "enum", "pattern", "format", "minimum", "maximum",
     "minItems", "minLength", "additionalProperties"}
)  # fmt: skip

Check = Callable[[Any], bool]


def _never(_: Any) -> bool:
    return False


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def compile_check(schema: dict[str, Any]) -> Check:
    """A predicate that is True only when `schema` certainly accepts the value."""
    if not set(schema) <= _KNOWN:
        return _never
    kind = schema.get("type")
    checks: list[Check] = []
    if kind == "object":
        properties = {name: compile_check(sub) for name, sub in schema.get("properties", {}).items()}
        required = tuple(schema.get("required", ()))
        extra = schema.get("additionalProperties", True)
        if extra not in (True, False):
            extra_check = compile_check(extra)
        closed = extra is False

        def check_object(value: Any) -> bool:
            if not isinstance(value, dict):
                return False
            for name in required:
                if name not in value:
                    return False
            for name, item in value.items():
                sub = properties.get(name)
                if sub is None:
                    if closed or (extra is not True and not extra_check(item)):
                        return False
                elif not sub(item):
                    return False
            return True

        return check_object
    if kind == "array":
        item_check = compile_check(schema["items"]) if "items" in schema else None
        min_items = schema.get("minItems", 0)

        def check_array(value: Any) -> bool:
            if not isinstance(value, list) or len(value) < min_items:
                return False
            return item_check is None or all(item_check(item) for item in value)

        return check_array
    if kind == "string":
        if "format" in schema and schema["format"] != "date-time":
            return _never
        pattern = re.compile(schema["pattern"]) if "pattern" in schema else None
        enum = frozenset(schema["enum"]) if "enum" in schema else None
        min_length = schema.get("minLength", 0)

        def check_string(value: Any) -> bool:
            # jsonschema checks "format" only with a format checker, which the validator does not use.
            if not isinstance(value, str) or len(value) < min_length:
                return False
            if enum is not None and value not in enum:
                return False
            return pattern is None or pattern.search(value) is not None

        return check_string
    if kind == "number":
        low, high = schema.get("minimum"), schema.get("maximum")
        checks.append(_is_number)
        if low is not None:
            checks.append(lambda v: v >= low)
        if high is not None:
            checks.append(lambda v: v <= high)
        return lambda value: all(c(value) for c in checks)
    if kind == "boolean":
        return lambda value: isinstance(value, bool)
    return _never

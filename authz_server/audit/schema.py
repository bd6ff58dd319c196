"""The JSON Schemas of decision log lines: decisions (decision-log.schema.json) and the counted lines of calls shed
without a decision (shed-line.schema.json)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


def _load(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(resources.files("authz_server.audit").joinpath(name).read_text("utf-8"))
    return schema


@cache
def decision_log_schema() -> dict[str, Any]:
    return _load("decision-log.schema.json")


@cache
def shed_line_schema() -> dict[str, Any]:
    return _load("shed-line.schema.json")

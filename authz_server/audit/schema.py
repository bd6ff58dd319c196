"""The JSON Schema every decision log line follows (shipped as decision-log.schema.json)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def decision_log_schema() -> dict[str, Any]:
    text = resources.files("authz_server.audit").joinpath("decision-log.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema

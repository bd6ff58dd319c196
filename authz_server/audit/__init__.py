"""The decision log: one JSON line per decision, written off the request path.

Attributes are imported on first use: `authz_server.config` imports this
package's `config` module, and that must not pull in the whole decision path.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from authz_server.audit.config import LogConfig
    from authz_server.audit.log import DecisionLog, DecisionObserver
    from authz_server.audit.record import SCHEMA_VERSION

_EXPORTS = {
    "LogConfig": "authz_server.audit.config",
    "DecisionLog": "authz_server.audit.log",
    "DecisionObserver": "authz_server.audit.log",
    "SCHEMA_VERSION": "authz_server.audit.record",
}

__all__ = ["SCHEMA_VERSION", "DecisionLog", "DecisionObserver", "LogConfig"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

"""Stage 3, policy: per-route AllowedCalls declarations, default deny (see README.md here)."""

from __future__ import annotations

from authz_server.policy.config import PolicyConfig
from authz_server.policy.loader import Compiled, compile_snapshot, load_policies
from authz_server.policy.outcome import Mode, PolicyOutcome, PolicyReason, RiskTimeoutAction
from authz_server.policy.paths import normalize_path
from authz_server.policy.policyset import PolicySet
from authz_server.policy.problems import PolicyError, Problem, Severity
from authz_server.policy.schema import API_GROUP, API_VERSION
from authz_server.policy.source import PolicySource, source

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "Compiled",
    "Mode",
    "PolicyConfig",
    "PolicyError",
    "PolicyOutcome",
    "PolicyReason",
    "PolicySet",
    "PolicySource",
    "Problem",
    "RiskTimeoutAction",
    "Severity",
    "compile_snapshot",
    "load_policies",
    "normalize_path",
    "source",
]

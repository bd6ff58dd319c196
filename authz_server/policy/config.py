"""Configuration of the policy stage (section `policy`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PolicyConfig:
    paths: tuple[str, ...] = ()
    """Files or directories of AllowedCalls declarations (watched and reloaded on change)."""

"""Configuration of the policy stage (section `policy`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PolicyConfig:
    paths: tuple[str, ...] = ()
    """Files or directories of AllowedCalls and Quarantine declarations (watched and reloaded on change).
    Empty: no declarations, so every call is denied."""
    poll_interval_s: float = 2.0
    """How often the paths are checked for changes (Kubernetes swaps a ConfigMap's `..data` symlink)."""
    workload_key: str = "workload"
    """context_extensions key naming the callee for proxies without a SPIFFE ID (AllowedCalls spec.workloadKey)."""

    gc_freeze: bool = True
    """After each load, move the objects alive (the policy set among them) out of the cyclic garbage collector's
    view with gc.freeze(), so its full collections do not walk the whole set while calls wait."""

    def validate(self) -> list[str]:
        problems = []
        if self.poll_interval_s <= 0:
            problems.append(f"poll_interval_s: must be > 0, got {self.poll_interval_s}")
        if not self.workload_key:
            problems.append("workload_key: must not be empty")
        return problems

"""What a reload changed, in words for the log: documents added, removed and changed."""

from __future__ import annotations

from authz_server.policy.policyset import PolicySet


def _documents(policy_set: PolicySet | None) -> dict[str, str]:
    if policy_set is None:
        return {}
    out = {f"AllowedCalls {d.id}": d.digest for d in policy_set.declarations}
    out.update({f"Quarantine {q.id}": q.digest for q in policy_set.quarantines})
    return out


def changes(old: PolicySet | None, new: PolicySet) -> tuple[list[str], list[str], list[str]]:
    """(added, removed, changed) document names."""
    before, after = _documents(old), _documents(new)
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return added, removed, changed


def describe_changes(old: PolicySet | None, new: PolicySet) -> str:
    added, removed, changed = changes(old, new)
    parts = [f"{label} {', '.join(names)}" for label, names in (("added", added), ("removed", removed),
                                                                ("changed", changed)) if names]  # fmt: skip
    return "; ".join(parts) or "no document changed"

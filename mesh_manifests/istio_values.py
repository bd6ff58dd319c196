"""Merge authz-server's extension provider into istiod's current Helm values, keeping every other provider.

Helm merges values maps key by key but replaces lists whole: `helm upgrade --reuse-values -f istiod-values.yaml`
alone would replace meshConfig.extensionProviders with authz-server's single entry, wiping the tracing,
oauth2-proxy or other ext_authz providers already there (and their CUSTOM policies would then deny everything).
This reads the current values, replaces the entry named authz-server (or appends it), keeps the others in order,
and adds the proxy statistics the alerts need without dropping existing ones:

    helm get values istiod -n istio-system -o yaml > current.yaml
    python mesh_manifests/istio_values.py current.yaml > merged.yaml
    helm upgrade istiod istio/istiod -n istio-system --reuse-values -f merged.yaml

The same merge applies to an IstioOperator (`--operator`): its spec.meshConfig is the values' meshConfig.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
VALUES = HERE / "overlays" / "istio" / "istiod-values.yaml"


def merge_mesh_config(current: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """`current` meshConfig with our providers replacing same-named ones and our stats regexps added."""
    merged = dict(current)
    providers = list(current.get("extensionProviders") or [])
    for provider in ours.get("extensionProviders", []):
        names = [p.get("name") for p in providers]
        if provider["name"] in names:
            providers[names.index(provider["name"])] = provider
        else:
            providers.append(provider)
    merged["extensionProviders"] = providers
    our_stats = ours.get("defaultConfig", {}).get("proxyStatsMatcher", {}).get("inclusionRegexps", [])
    if our_stats:
        default_config = dict(current.get("defaultConfig") or {})
        matcher = dict(default_config.get("proxyStatsMatcher") or {})
        regexps = list(matcher.get("inclusionRegexps") or [])
        matcher["inclusionRegexps"] = regexps + [r for r in our_stats if r not in regexps]
        default_config["proxyStatsMatcher"] = matcher
        merged["defaultConfig"] = default_config
    return merged


def merge(document: dict[str, Any], operator: bool = False) -> dict[str, Any]:
    ours = yaml.safe_load(VALUES.read_text())["meshConfig"]
    merged = dict(document or {})
    if operator:
        spec = dict(merged.get("spec") or {})
        spec["meshConfig"] = merge_mesh_config(spec.get("meshConfig") or {}, ours)
        merged["spec"] = spec
    else:
        merged["meshConfig"] = merge_mesh_config(merged.get("meshConfig") or {}, ours)
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("current", help="current values (helm get values istiod -o yaml) or IstioOperator; - for stdin")
    parser.add_argument("--operator", action="store_true", help="the input is an IstioOperator")
    args = parser.parse_args(argv)
    text = sys.stdin.read() if args.current == "-" else Path(args.current).read_text()
    document = yaml.safe_load(text) or {}
    if not isinstance(document, dict):
        print(f"{args.current}: expected a YAML mapping of Helm values", file=sys.stderr)
        return 2
    sys.stdout.write(yaml.safe_dump(merge(document, args.operator), sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

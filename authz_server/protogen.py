"""Regenerate authz_server/_proto from the .proto sources in proto/.

    python -m authz_server.protogen           # rewrite the generated code
    python -m authz_server.protogen --check   # exit 1 when it is stale

protoc writes imports such as ``from envoy.config.core.v3 import base_pb2``;
those are rewritten to live under ``authz_server._proto`` so that they never
collide with other distributions that own a top-level ``envoy`` or
``google.rpc`` package.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

PACKAGE = "authz_server._proto"
REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "proto"
OUTPUT_ROOT = Path(__file__).resolve().parent / "_proto"


def _proto_sources(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.proto"))


def _rewrite_imports(text: str, local_roots: set[str]) -> str:
    def fix(match: re.Match[str]) -> str:
        module = match.group(2)
        if module.split(".")[0] in local_roots and not module.startswith("google.protobuf"):
            return f"{match.group(1)}{PACKAGE}.{module}"
        return match.group(0)

    return re.sub(r"^(\s*from )([\w.]+)(?= import )", fix, text, flags=re.MULTILINE)


def generate(proto_root: Path, out_dir: Path) -> None:
    """Run protoc over every .proto under proto_root into out_dir."""
    from grpc_tools import protoc  # build-time only: not needed to serve

    sources = _proto_sources(proto_root)
    include = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    local_roots = {s.split("/")[0] for s in sources}
    for path in out_dir.rglob("*.py*"):
        path.write_text(_rewrite_imports(path.read_text(), local_roots))
    for directory in [out_dir, *(d for d in out_dir.rglob("*") if d.is_dir())]:
        (directory / "__init__.py").touch()


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def stale_files(proto_root: Path = PROTO_ROOT, generated: Path = OUTPUT_ROOT) -> list[str]:
    """Files whose committed content differs from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(proto_root, fresh)
        expected, actual = _tree(fresh), _tree(generated)
        differing = sorted(expected ^ actual)
        for name in sorted(expected & actual):
            if not filecmp.cmp(fresh / name, generated / name, shallow=False):
                differing.append(name)
        return differing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m authz_server.protogen", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether the generated code is stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for name in stale:
            print(f"stale: authz_server/_proto/{name}")
        return 1 if stale else 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(PROTO_ROOT, Path(tmp))
        if OUTPUT_ROOT.exists():
            shutil.rmtree(OUTPUT_ROOT)
        shutil.copytree(tmp, OUTPUT_ROOT)
    print(f"generated {len(_tree(OUTPUT_ROOT))} files in {OUTPUT_ROOT.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

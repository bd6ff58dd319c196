"""`authz-server` command line: serve, demo, config, and each subsystem's own commands."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from authz_server.config import Config, ConfigError, add_config_flags, dump_config, flag_overrides, load_config


def config_from_args(args: argparse.Namespace) -> Config:
    """The effective configuration: file, then AUTHZ_* variables, then flags."""
    return load_config(getattr(args, "config", None), os.environ, flag_overrides(args))


def _serve(args: argparse.Namespace) -> int:
    from authz_server.transport.workers import serve

    return serve(config_from_args(args))


def _config_show(args: argparse.Namespace) -> int:
    sys.stdout.write(dump_config(config_from_args(args)))
    return 0


def _config_reference(args: argparse.Namespace) -> int:
    from pathlib import Path

    from authz_server.config_reference import markdown, update_readme

    if args.readme:
        readme = Path(args.readme)
        readme.write_text(update_readme(readme.read_text()))
    else:
        sys.stdout.write(markdown())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from authz_server.dev.demo import run_demo

    return run_demo(keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    from authz_server.dev.check import add_commands as add_check_commands
    from authz_server.ops.cli import add_commands as add_ops_commands
    from authz_server.policy.cli import add_commands as add_policy_commands
    from authz_server.risklab.cli import add_commands as add_risk_commands

    parser = argparse.ArgumentParser(prog="authz-server", description="Envoy ext_authz decision point")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the ext_authz gRPC server")
    add_config_flags(serve)
    serve.set_defaults(handler=_serve)

    config = commands.add_parser("config", help="inspect the configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    show = config_commands.add_parser("show", help="print the effective configuration")
    add_config_flags(show)
    show.set_defaults(handler=_config_show)
    reference = config_commands.add_parser("reference", help="print every configuration key as a Markdown table")
    reference.add_argument("--readme", metavar="FILE", help="rewrite the reference section of this README instead")
    reference.set_defaults(handler=_config_reference)

    demo = commands.add_parser("demo", help="run the server behind a real Envoy and send scripted calls")
    demo.add_argument("--keep", action="store_true", help="keep the temporary directory (certificates, logs)")
    demo.set_defaults(handler=_demo)

    add_check_commands(commands)
    add_policy_commands(commands)
    add_risk_commands(commands)
    add_ops_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.handler(args)
    except ConfigError as exc:
        print("authz-server: invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_went_away()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return _reader_went_away()
    return result


def _reader_went_away() -> int:
    """`authz-server incidents --json | head`: the reader closed the pipe. Stop quietly, as a SIGPIPE would."""
    # Python flushes stdout again at exit; pointing it at /dev/null keeps that flush from raising too.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + 13  # the shell's status for a process ended by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())

"""`authz-server model ...`: build, train, evaluate and inspect risk models."""

from __future__ import annotations

import argparse
from typing import Any

from authz_server.risklab.train_commands import add_train_commands


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    model = commands.add_parser("model", help="train, evaluate and inspect the risk model")
    sub = model.add_subparsers(dest="model_command", required=True, metavar="COMMAND")
    # --- risk-core: train, info ---
    add_train_commands(sub)

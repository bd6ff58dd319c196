"""Command-line commands of this subsystem, registered on `authz-server`."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    pass

"""README.md is the front door: its commands are the ones CI runs, its reference is the code's."""

from __future__ import annotations

import re
from pathlib import Path

from authz_server.config_reference import README_BEGIN, README_END, markdown

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_test_command_the_readme_gives() -> None:
    commands = re.findall(r"^(python3 -m venv .*pytest.*)$", README, flags=re.MULTILINE)
    assert len(commands) == 1, "README must give exactly one test command"
    assert commands[0] in (ROOT / ".ci/run").read_text()


def test_configuration_reference_matches_the_code() -> None:
    section = README.split(README_BEGIN, 1)[1].split(README_END, 1)[0]
    assert section.strip() == markdown().strip(), "run `authz-server config reference --readme README.md`"


def test_every_linked_file_exists() -> None:
    for target in re.findall(r"\]\(([^)#:]+)\)", README):
        assert (ROOT / target).exists(), f"README links to a missing file: {target}"

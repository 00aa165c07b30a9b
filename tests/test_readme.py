"""What the README shows is valid: every complete team file in it parses and passes the tool checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from actors.agent.tools.catalog import check_team_tools
from schemas.team import parse_team

README = Path(__file__).resolve().parents[1] / "README.md"
TEAM_FILES = [
    block
    for block in re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.DOTALL)
    if "[lead]" in block
]


def test_the_readme_shows_team_files() -> None:
    assert TEAM_FILES, "no complete team file (with [lead]) in README.md"


@pytest.mark.parametrize("text", TEAM_FILES)
def test_a_team_file_in_the_readme_is_valid(text: str) -> None:
    team = parse_team(text, source="README.md")
    check_team_tools(team)

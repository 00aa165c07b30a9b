"""What the README shows is valid: every complete team file in it parses and passes the tool checks."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import get_args

import msgspec
import pytest

from actors.agent.tools.catalog import check_team_tools
from schemas import PUBLIC_MESSAGES, TRACE_EVENTS, tag_of
from schemas.team import parse_team
from schemas.trace import event_kind
from schemas.webhooks import WebhookEventType

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


API_DOC = README.parent / "docs" / "api.md"


def test_the_event_table_names_every_event_and_webhook() -> None:
    """docs/api.md's table maps every trace event kind to its wire type and webhook name."""
    rows = {
        cells[0].strip("` "): [cell.strip() for cell in cells[1:]]
        for line in API_DOC.read_text().splitlines()
        if line.startswith("| `") and len(cells := line.strip("|").split("|")) == 4
    }
    kinds = {event_kind(cls) for cls in TRACE_EVENTS}
    assert set(rows) >= kinds, f"missing from docs/api.md: {sorted(kinds - set(rows))}"
    for kind in kinds:
        assert rows[kind][0] == f"`{kind}.v1`"
    documented_hooks = {row[1].strip("`") for row in rows.values() if row[1]}
    assert documented_hooks == set(get_args(WebhookEventType))


MESSAGES = {tag_of(cls): cls for cls in PUBLIC_MESSAGES}
JSON_MESSAGES = [
    block
    for block in re.findall(r"```json\n(.*?)```", README.read_text(), flags=re.DOTALL)
    if '"type"' in block
]


def test_the_readme_shows_messages() -> None:
    assert len(JSON_MESSAGES) >= 3


@pytest.mark.parametrize("text", JSON_MESSAGES)
def test_a_message_in_the_readme_is_valid(text: str) -> None:
    """Each JSON message the README shows decodes as the type its ``type`` names."""
    tag = json.loads(text)["type"]
    msgspec.json.decode(text, type=MESSAGES[tag])


TEAM_FRAGMENTS = [
    block
    for block in re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.DOTALL)
    if "[lead]" not in block
]


@pytest.mark.parametrize("text", TEAM_FRAGMENTS)
def test_a_team_file_fragment_in_the_readme_is_valid(text: str) -> None:
    """A part of a team file the README shows (outcome, webhooks, prices) is valid in a team."""
    team = parse_team(f'name = "fragment"\n{text}\n[lead]\nname = "lead"\n', source="README.md")
    check_team_tools(team)

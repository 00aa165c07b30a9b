"""The incident example end to end: generated data, the example team, the offline model, the report."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from actors.agent.tools.catalog import check_team_tools
from bus.connection import Bus
from examples.incident import TASK
from examples.incident.generate import FILES, GroundTruth, generate
from schemas import TeamSpec
from schemas.team import parse_team
from tests.helpers import run_example

TEAM_FILE = Path(__file__).parent.parent / "examples" / "incident" / "team.toml"
SECTION = re.compile(r"^## From thread (\S+) · agent (\S+) · (\w+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    directory = tmp_path_factory.mktemp("incident")
    return directory, generate(directory)


@pytest.fixture(scope="module")
def team() -> TeamSpec:
    spec = parse_team(TEAM_FILE.read_text(), source=str(TEAM_FILE))
    check_team_tools(spec, source=str(TEAM_FILE))
    return spec


def sections(report: str) -> dict[str, str]:
    """Each roster agent's section of the lead's report, by agent name."""
    heads = list(SECTION.finditer(report))
    assert heads, report
    found: dict[str, str] = {}
    for head, following in zip(heads, [*heads[1:], None], strict=True):
        assert head.group(3) == "completed", head.group(0)
        found[head.group(2)] = report[head.end() : following.start() if following else len(report)]
    return found


def first_row(section: str, column: str) -> str:
    """The value under ``column`` in the first row of the first sql table of ``section`` that has it."""
    lines = section.splitlines()
    for n, line in enumerate(lines[:-1]):
        header = line.split(" | ")
        if column in header:
            return lines[n + 1].split(" | ")[header.index(column)]
    raise AssertionError(f"no table with a column {column!r} in:\n{section}")


async def test_the_offline_team_finds_what_happened(
    bus: Bus, data: tuple[Path, GroundTruth], monkeypatch: pytest.MonkeyPatch
) -> None:
    directory, truth = data
    monkeypatch.setenv("INCIDENT_DATA", str(directory))  # where the deploy API reads the deploys
    result, _ = await run_example(bus, "incident", directory, list(FILES), TASK)

    assert result.status == "idle", result.final_text
    # the outcome: every machine check passes offline (the rubric's items need a model: not graded)
    assert result.outcome is not None
    assert (result.outcome.result, len(result.outcome.iterations)) == ("satisfied", 1)
    criteria = result.outcome.iterations[0].criteria
    assert [c.status for c in criteria if c.kind != "rubric"] == ["passed"] * 4
    assert {c.status for c in criteria if c.kind == "rubric"} == {"not_graded"}
    report = result.final_text
    by_agent = sections(report)
    assert sorted(by_agent) == ["deploys", "logs", "metrics", "tickets"]

    deploys, logs, metrics, tickets = (by_agent[a] for a in ("deploys", "logs", "metrics", "tickets"))
    assert "Bad deploy:" in deploys
    # from the deploy API (an MCP server the deploys worker runs): the deploy the rollback reverted
    assert f'"reverted_deploy_id": "{truth.deploy_id}"' in deploys
    assert f'"reverted_deployed_at": "{truth.deployed_at}"' in deploys
    assert first_row(deploys, "failing_service") == truth.service
    assert first_row(deploys, "first_error_at") == truth.first_error_at
    assert "Failing service and error signature:" in logs
    assert first_row(logs, "failing_service") == truth.service
    assert first_row(logs, "error_signature") == truth.error_signature
    assert first_row(logs, "first_seen") == truth.first_error_at
    assert "Metric that moved:" in metrics
    assert first_row(metrics, "service") == truth.service
    assert first_row(metrics, "moved_metric") == truth.metric
    assert "Affected customers:" in tickets
    assert first_row(tickets, "affected_customers") == str(truth.affected_customers)
    for fact in (truth.deploy_id, truth.deployed_at, truth.service, truth.error_signature, truth.metric):
        assert fact in report


def test_the_team_file_is_valid_and_hard_codes_no_answer(
    team: TeamSpec, data: tuple[Path, GroundTruth]
) -> None:
    _, truth = data
    assert team.name == "incident"
    assert [a.name for a in team.agents] == ["deploys", "logs", "metrics", "tickets"]
    assert {a.name: a.tools for a in team.agents} == {
        "deploys": ["sql", "read_file"],
        "logs": ["grep", "sql", "read_file"],
        "metrics": ["sql"],
        "tickets": ["sql", "grep"],
    }
    for agent in team.agents:
        assert agent.system, agent.name
        assert agent.description, agent.name
        assert agent.playbook is not None, agent.name
        assert agent.playbook.calls, agent.name
    text = TEAM_FILE.read_text()
    for value in (truth.deploy_id, truth.deployed_at, truth.version, truth.error_signature, "card-gateway"):
        assert value not in text


def test_the_generator_is_deterministic(tmp_path: Path, data: tuple[Path, GroundTruth]) -> None:
    directory, truth = data
    assert generate(tmp_path / "again") == truth
    for name in FILES:
        assert (tmp_path / "again" / name).read_bytes() == (directory / name).read_bytes(), name
    other = generate(tmp_path / "other", seed=8)
    assert (tmp_path / "other" / "app.jsonl").read_bytes() != (directory / "app.jsonl").read_bytes()
    assert other.deploy_id != truth.deploy_id


def test_no_file_gives_the_answer_away(data: tuple[Path, GroundTruth]) -> None:
    directory, truth = data
    assert sorted(p.name for p in directory.iterdir()) == sorted(FILES)
    for name in FILES:
        text = (directory / name).read_text().lower()
        for words in ("root cause", "root_cause", "bad deploy", "bad_deploy", "culprit"):
            assert words not in text, (name, words)
    lines = (directory / "app.jsonl").read_text().splitlines()
    assert 45_000 <= len(lines) <= 55_000
    deploys = (directory / "deploys.csv").read_text().splitlines()
    assert 25 <= len(deploys) - 1 <= 35
    assert sum(truth.deploy_id in line for line in deploys) == 1

"""The build-triage example end to end: a generated week of CI builds, the example team, the offline
model, and the report checked against the ground truth the agents never see."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from actors.agent.models.offline import OfflineModel, table_rows
from actors.agent.tools.catalog import check_team_tools
from actors.roles import RoleConfig, running, running_agents
from bus.connection import Bus
from bus.workspace import Workspace
from examples.builds import TASK
from examples.builds.generate import GroundTruth, files, generate
from schemas import SessionSubmit
from schemas.team import parse_team
from tests.helpers import submit_and_wait

TEAM_FILE = Path(__file__).parent.parent / "examples" / "builds" / "team.toml"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    directory = tmp_path_factory.mktemp("builds")
    return directory, generate(directory)


def section(report: str, title: str) -> str:
    """The text under ``## title``, up to the next heading."""
    found = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", report, flags=re.MULTILINE | re.DOTALL)
    assert found, f"no section {title!r} in:\n{report}"
    return found.group(1)


def table(text: str) -> list[dict[str, str]]:
    """The first sql table in ``text``."""
    lines = text.strip().splitlines()
    start = next(n for n, line in enumerate(lines) if " | " in line)
    return table_rows("\n".join(lines[start:]))


def test_the_data_is_a_noisy_week_with_three_regressions(data: tuple[Path, GroundTruth]) -> None:
    directory, truth = data
    assert truth.builds == 640
    assert len(files(directory)) == 641  # the index and one log per build
    assert len(truth.regressions) == 3
    assert sum(truth.noise.values()) > 2 * sum(r.failed_builds for r in truth.regressions)  # mostly noise
    assert set(truth.noise) == {"flaky", "timeout", "dependency", "infrastructure"}
    again = generate(directory.parent / "again")
    assert again == truth
    assert (directory.parent / "again" / "builds.csv").read_bytes() == (directory / "builds.csv").read_bytes()


async def test_the_triage_reports_the_regressions_and_sets_the_noise_aside(
    bus: Bus, data: tuple[Path, GroundTruth]
) -> None:
    directory, truth = data
    team = parse_team(TEAM_FILE.read_text(), source=str(TEAM_FILE))
    check_team_tools(team, source=str(TEAM_FILE))
    names = files(directory)
    submit = SessionSubmit(task=TASK, team_spec=team, inputs=names)
    workspace = Workspace(bus)
    for name in names:
        await workspace.put(submit.session_id, name, (directory / name).read_bytes())
    model = OfflineModel()
    async with (
        running_agents(bus, model, agents=[a.name for a in team.agents]),
        running(bus, ["grader"], RoleConfig(model=model)),
    ):
        result = await submit_and_wait(bus, submit, timeout=120)
    assert result.status == "idle", result.final_text
    assert result.outcome is not None
    assert result.outcome.result == "satisfied"
    report = result.final_text

    acting = table(section(report, "Worth acting on"))
    found = {(row["pipeline"], row["signature"]): row for row in acting}
    assert set(found) == {(r.pipeline, r.signature) for r in truth.regressions}, report
    for regression in truth.regressions:
        row = found[(regression.pipeline, regression.signature)]
        assert row["source"] == regression.source
        assert int(row["failed_builds"]) == regression.failed_builds
        assert row["first_bad_commit"] == regression.first_bad_commit
        assert row["example_builds"].split(", ")[0] == regression.first_failed_build
    worth = section(report, "Worth acting on")
    for flaky in truth.flaky:  # the noise is not reported as a pattern
        assert flaky not in worth
    for word in ("timed out", "No space left", "npm ERR", "Could not install"):
        assert word not in worth

    aside = {row["set_aside"]: int(row["failed_builds"]) for row in table(section(report, "Set aside"))}
    assert aside == {
        "flaky test": truth.noise["flaky"],
        "timeout": truth.noise["timeout"],
        "dependency": truth.noise["dependency"],
        "infrastructure": truth.noise["infrastructure"],
    }
    [coverage] = table(section(report, "Coverage"))
    assert coverage == {
        "failed_builds": str(truth.failed_builds),
        "triaged": str(truth.failed_builds),
        "missing": "0",
        "unclassified": "0",
    }
    batches = table(section(report, "Batches"))
    assert len(batches) > team.max_concurrent_threads  # more batches than threads at once: they queued
    assert sum(int(b["failed_builds"]) for b in batches) == truth.failed_builds
    written = {f.path for f in await workspace.list(submit.session_id)}
    assert {f"findings/{b['source']}-{b['first_build']}.csv" for b in batches} <= written
    assert "triage-report.md" in written

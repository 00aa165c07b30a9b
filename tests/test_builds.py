"""The build-triage example end to end: a generated week of CI builds, the example team, the offline
model, and the report checked against the ground truth the agents never see."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path
from urllib.parse import quote

import pytest

from actors.agent.models.offline import table_rows
from actors.cli.common import load_team
from actors.dreamer.sessions import session_events
from actors.views.timeline import render_html, timeline
from bus.connection import Bus
from bus.workspace import Workspace
from examples.builds import TASK
from examples.builds.generate import GroundTruth, files, generate
from schemas.trace import AgentToolUse, AnyTraceEvent
from tests.helpers import EXAMPLES, run_example
from tests.test_timeline import CONSOLE, chromium, run_chromium

__all__ = ["chromium"]  # the fixture, shared with the timeline's tests

MAX_THREADS = load_team(EXAMPLES / "builds" / "team.toml").max_concurrent_threads


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
    result, session_id = await run_example(bus, "builds", directory, files(directory), TASK)
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
    assert len(batches) > MAX_THREADS  # more batches than threads at once: they queued
    assert sum(int(b["failed_builds"]) for b in batches) == truth.failed_builds
    written = {f.path for f in await Workspace(bus).list(session_id)}
    assert {f"findings/{b['source']}-{b['first_build']}.csv" for b in batches} <= written
    assert "triage-report.md" in written


async def test_the_triage_timeline_renders(
    bus: Bus, data: tuple[Path, GroundTruth], chromium: str, tmp_path: Path
) -> None:
    """The timeline page of a triage session: a lane per batch, as the README's screenshot shows it
    (``STAFFWORK_SCREENSHOT_DIR`` keeps the picture)."""
    directory, _ = data
    result, session_id = await run_example(bus, "builds", directory, files(directory), TASK)
    assert result.status == "idle", result.final_text
    events = [event async for event in session_events(bus, session_id)]
    lanes = timeline(session_id, events)["lanes"]
    batches = [e for e in events if isinstance(e, AgentToolUse) and e.name == "delegate"]
    assert len(batches) > MAX_THREADS
    assert sum(lane["agent"] == "triage" for lane in lanes) == len(batches)  # a lane per batch
    await asyncio.to_thread(screenshot, chromium, tmp_path, session_id, events)


def screenshot(chromium: str, folder: Path, session_id: str, events: list[AnyTraceEvent]) -> None:
    """The page in Chromium, opened on the lead's query that finds the regressions in the findings."""
    page = folder / "timeline.html"
    page.write_text(render_html(session_id, events), encoding="utf-8")
    reduce = next(
        e for e in events if isinstance(e, AgentToolUse) and "main_builds_since" in str(e.input.get("query"))
    )
    url = page.as_uri() + f"#span=tool-{quote(reduce.tool_use_id)}"
    shot = folder / "builds-timeline.png"
    _, err = run_chromium(
        chromium, folder / "profile", f"--screenshot={shot}", "--window-size=1400,1000", url
    )
    assert [m["message"] for m in CONSOLE.finditer(err)] == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    target = os.environ.get("STAFFWORK_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(target) / "builds-timeline.png")

"""The lead-qualification example end to end: generated leads, the company-data provider as a real MCP
server process, the example team on the offline model, and the ranking and drafts checked against
the ground truth and the provider's own records."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from bus.connection import Bus
from bus.workspace import Workspace
from examples.leads import INPUTS, TASK
from examples.leads.generate import GroundTruth, generate
from tests.helpers import run_example


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    directory = tmp_path_factory.mktemp("leads")
    return directory, generate(directory)


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


async def test_the_team_ranks_by_the_rubric_and_drafts_cite_real_facts(
    bus: Bus, data: tuple[Path, GroundTruth], monkeypatch: pytest.MonkeyPatch
) -> None:
    directory, truth = data
    monkeypatch.setenv("LEADS_DATA", str(directory))  # where the provider (the MCP server) reads
    result, session_id = await run_example(bus, "leads", directory / INPUTS, ["leads.csv"], TASK)
    workspace = Workspace(bus)
    assert result.status == "idle", result.final_text
    assert result.outcome is not None
    assert result.outcome.result == "satisfied"

    ranked = rows((await workspace.get(session_id, "qualified.csv")).decode())
    assert [(r["lead_id"], int(r["score"])) for r in ranked] == [(t.lead_id, t.score) for t in truth.ranking]
    assert sorted(r["lead_id"] for r in ranked if r["note"]) == truth.unknown
    report = result.final_text
    for place in truth.ranking[:10]:
        assert f"{place.rank} | {place.lead_id} | {place.company} |" in report
    for lead in truth.unknown:
        assert lead in report.split("## Companies the provider does not know")[1]

    companies = json.loads((directory / "provider" / "companies.json").read_text())
    drafts = rows((await workspace.get(session_id, "outreach.csv")).decode())
    assert [d["lead_id"] for d in drafts] == [t.lead_id for t in truth.ranking[:5]]
    by_lead = {r["lead_id"]: r for r in ranked}
    for draft in drafts:
        record = companies[by_lead[draft["lead_id"]]["domain"]]
        facts = dict(fact.split("=", 1) for fact in draft["cited_facts"].split("; "))
        assert int(facts["employees"]) == record["profile"]["employees"]
        assert float(facts["revenue_growth_pct"]) == record["financials"]["revenue_growth_pct"]
        assert facts["employees"] in draft["body"]
        if "news" in facts:
            date, headline = facts["news"].split(" ", 1)
            assert {"date": date, "headline": headline} in [
                {"date": n["date"], "headline": n["headline"]} for n in record["news"]
            ]
            assert headline in draft["body"]
        assert draft["contact"].split()[0] in draft["body"]

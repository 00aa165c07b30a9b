"""The board-report example end to end: four departments' data in four shapes, the example team on the
offline model, every figure of the report against the ground truth, and the outcome's sql_number
checks, which verify each figure against the sources themselves."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

import pytest

from bus.connection import Bus
from examples.board import TASK
from examples.board.generate import GroundTruth, generate
from tests.helpers import run_example

METRICS = {
    "Revenue": "revenue",
    "Gross margin": "gross_margin_pct",
    "Operating expenses": "operating_expenses",
    "Operating income": "operating_income",
    "Bookings": "bookings",
    "Deals won": "deals_won",
    "Win rate": "win_rate_pct",
    "Top region": "top_region",
    "Shipments": "shipments",
    "On-time delivery": "on_time_pct",
    "Headcount": "headcount",
    "Hires": "hires",
    "Departures": "departures",
    "Attrition": "attrition_pct",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    directory = tmp_path_factory.mktemp("board")
    return directory, generate(directory)


def shown(value: float | int | str, metric: str) -> str:
    """A figure as the report writes it."""
    if isinstance(value, str):
        return value
    if metric.endswith("_pct"):
        return f"{value:.1f}%"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{'-' if value < 0 else ''}${round(abs(value)):,}"


async def test_every_figure_is_the_sources_and_the_checks_say_so(
    bus: Bus, data: tuple[Path, GroundTruth]
) -> None:
    directory, truth = data
    names = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
    assert {n.split("/")[0] for n in names} == {"finance", "sales", "operations", "hr"}
    result, _ = await run_example(bus, "board", directory, names, TASK)
    assert result.status == "idle", result.final_text
    report = result.final_text

    rows = {
        cells[1]: cells[2:4]
        for line in report.splitlines()
        if line.startswith("| ") and len(cells := [c.strip() for c in line.strip("|").split("|")]) == 5
    }
    q2, q3 = asdict(truth.q2), asdict(truth.q3)
    for metric, field in METRICS.items():
        assert rows[metric] == [shown(q2[field], field), shown(q3[field], field)], metric
    narrative = report.split("## Figures")[0]
    growth = (truth.q3.revenue / truth.q2.revenue - 1) * 100
    assert f"Revenue grew {growth:.1f}% to {shown(truth.q3.revenue, '')}" in narrative
    assert f"led by {truth.q3.top_region}" in narrative
    assert re.search(rf"ended the quarter with {truth.q3.headcount} people", narrative)

    assert result.outcome is not None
    assert result.outcome.result == "satisfied"
    [attempt] = result.outcome.iterations
    checks = [c for c in attempt.criteria if c.kind == "sql_number"]
    assert len(checks) == 13
    assert all(c.status == "passed" for c in checks), [c.explanation for c in checks if c.status != "passed"]
    assert any("the data says" in c.explanation for c in checks)

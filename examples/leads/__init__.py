"""The lead-qualification example: 50 inbound leads, a company-data provider served as an MCP server,
and a team that researches, scores, ranks and writes outreach for the best ones."""

from __future__ import annotations

from pathlib import Path

from examples import ensure_generated

#: the data folder's part that is the session's input (provider/ is the company-data service's)
INPUTS = "inbox"
TASK = (
    "Qualify this week's 50 inbound leads: research each company, score and rank them by our rubric, "
    "and draft outreach for the top five, citing only facts you found."
)


def standard_data() -> Path:
    """Where ``staffwork run --example leads`` keeps its data: ``data_dir()/examples/leads``."""
    from bus.paths import data_dir

    return data_dir() / "examples" / "leads"


def ensure_data(folder: Path) -> Path:
    """``folder``, with the example's data (the default seed) generated into it if it does not exist."""
    from examples.leads.generate import generate

    return ensure_generated(folder, generate)

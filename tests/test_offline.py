"""The offline model: a whole session without a network, with real tool calls from playbooks."""

from __future__ import annotations

import pytest

from actors.agent.models import default_model
from actors.agent.models.offline import MARK, OfflineModel
from actors.roles import running_agents
from bus.connection import Bus
from bus.workspace import Workspace
from schemas import AgentSpec, SessionSubmit, TeamSpec
from schemas.team import Playbook, PlaybookCall
from tests.helpers import submit_and_wait, team

CSV = "\n".join(
    [
        "service,status,latency_ms",
        "api,200,40",
        "payments,502,900",
        "payments,503,1200",
        "api,500,80",
        "payments,200,60",
    ]
)


async def test_lead_without_playbook_delegates_to_everyone_and_reports(bus: Bus) -> None:
    async with running_agents(bus, OfflineModel(), agents=["logs", "metrics"]):
        result = await submit_and_wait(
            bus, SessionSubmit(task="what broke?", team_spec=team("logs", "metrics"))
        )
    assert result.status == "idle", result.final_text
    assert result.final_text.startswith("# Report\n\nTask: what broke?")
    for agent in ("logs", "metrics"):
        assert f"{MARK} {agent} has no offline playbook; it was asked: what broke?" in result.final_text
    assert result.final_text.rstrip().endswith("The lead compiled its team's answers as they are.")


async def test_playbooks_make_real_tool_calls_and_fill_the_answer(bus: Bus) -> None:
    metrics = AgentSpec(
        name="metrics",
        description="queries request metrics",
        tools=["sql", "grep"],
        playbook=Playbook(
            calls=[
                PlaybookCall(
                    tool="sql",
                    input={
                        "query": "SELECT service, COUNT(*) AS errors FROM requests WHERE status >= 500 "
                        "GROUP BY service ORDER BY errors DESC LIMIT 1"
                    },
                ),
                PlaybookCall(tool="grep", input={"pattern": "50[23]"}),
            ],
            answer="Asked: {task}\nworst service\n{result[0]}\n\nmatches:\n{result[1]}",
        ),
    )
    spec = TeamSpec(name="incident", lead=AgentSpec(name="lead"), agents=[metrics])
    submit = SessionSubmit(task="which service fails?", team_spec=spec, inputs=["requests.csv"])
    await Workspace(bus).put(submit.session_id, "requests.csv", CSV)
    async with running_agents(bus, OfflineModel(), agents=["metrics"]):
        result = await submit_and_wait(bus, submit)
    assert result.status == "idle", result.final_text
    assert "Asked: which service fails?" in result.final_text
    assert "payments | 2" in result.final_text  # computed by SQLite over the CSV
    assert "2 matches in 1 file" in result.final_text  # counted by grep


async def test_a_broken_answer_template_says_so(bus: Bus) -> None:
    agent = AgentSpec(
        name="logs",
        tools=["list_files"],
        playbook=Playbook(calls=[PlaybookCall(tool="list_files")], answer="{result[5]}"),
    )
    spec = TeamSpec(name="t", lead=AgentSpec(name="lead"), agents=[agent])
    async with running_agents(bus, OfflineModel(), agents=["logs"]):
        result = await submit_and_wait(bus, SessionSubmit(task="x", team_spec=spec))
    assert "the playbook's answer template failed (IndexError" in result.final_text


def test_default_model_is_offline_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert default_model().name == "offline"
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-not-real")
    assert default_model().name == "anthropic"

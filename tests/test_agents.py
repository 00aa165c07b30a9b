"""Lead and subagents in one process with the scripted model: fan-out, caps, follow-ups, tools,
cancel and budget."""

from __future__ import annotations

from actors.models.base import ModelRequest, ModelResponse
from actors.models.scripted import ScriptedModel, text
from actors.workers import running_agents
from bus.connection import Bus
from bus.workspace import Workspace
from schemas import SessionSubmit
from tests.agents import fan_out_lead, submit_and_wait, team

AGENTS = ["deploys", "logs", "metrics", "tickets", "traces"]


def echo(request: ModelRequest) -> ModelResponse:
    task = request.messages[0].text
    return text(f"{request.agent} did: {task}")


async def test_lead_fans_out_to_five_subagents_in_parallel(bus: Bus) -> None:
    model = ScriptedModel({"lead": fan_out_lead(AGENTS)}, responder=echo, latency=0.3)
    async with running_agents(bus, model, agents=AGENTS):
        result = await submit_and_wait(bus, SessionSubmit(task="investigate", team_spec=team(*AGENTS)))
    assert result.status == "idle", result.final_text
    for agent in AGENTS:
        assert f"{agent} did: task for {agent}" in result.final_text
    sub_calls = [c for c in model.calls if c.agent != "lead"]
    assert len(sub_calls) == 5
    assert max(c.started for c in sub_calls) < min(c.ended for c in sub_calls)  # all five overlapped
    assert result.report_path == "report.md"
    report = await Workspace(bus).read_text(result.session_id, "report.md")
    assert report == result.final_text
    model.assert_done()

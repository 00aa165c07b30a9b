"""The offline model: a whole session without a network, with real tool calls from playbooks."""

from __future__ import annotations

import pytest

from actors.agent.models import default_model
from actors.agent.models.offline import MARK, OfflineModel
from actors.roles import running_agents
from bus.connection import Bus
from bus.workspace import Workspace
from schemas import AgentSpec, SessionSubmit, TeamSpec
from schemas.team import Playbook, PlaybookCall, PlaybookStep
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


async def test_a_playbook_in_turns_fans_out_over_a_results_rows(bus: Bus) -> None:
    """A lead's playbook of three turns: a query, one delegation per row of its result (the subagent
    reads its parameter from the task with ``task_pattern``), then a query that uses what came back;
    the answer sees every turn's results, a for_each call's joined as one."""
    probe = AgentSpec(
        name="probe",
        tools=["sql"],
        playbook=Playbook(
            task_pattern=r"service (?P<service>\w+)",
            calls=[
                PlaybookCall(
                    tool="sql",
                    input={
                        "query": "SELECT COUNT(*) AS failed FROM requests "
                        "WHERE service = '{service}' AND status >= 500"
                    },
                )
            ],
            answer="{service} failed {result[0]}",
        ),
    )
    lead = AgentSpec(
        name="lead",
        tools=["sql"],
        playbook=Playbook(
            calls=[
                PlaybookCall(
                    tool="sql", input={"query": "SELECT DISTINCT service FROM requests ORDER BY service"}
                )
            ],
            then=[
                PlaybookStep(
                    calls=[
                        PlaybookCall(
                            tool="delegate",
                            for_each=0,
                            input={"agent": "probe", "task": "Count the failures of service {row[service]}."},
                        )
                    ]
                ),
                PlaybookStep(
                    calls=[
                        PlaybookCall(
                            tool="sql", input={"query": "SELECT COUNT(*) AS rows_seen FROM requests"}
                        )
                    ]
                ),
            ],
            answer="services:\n{result[0]}\nprobes:\n{result[1]}\ntotal:\n{result[2]}",
        ),
    )
    spec = TeamSpec(name="fan", lead=lead, agents=[probe])
    submit = SessionSubmit(task="where do requests fail?", team_spec=spec, inputs=["requests.csv"])
    await Workspace(bus).put(submit.session_id, "requests.csv", CSV)
    async with running_agents(bus, OfflineModel(), agents=["probe"]):
        result = await submit_and_wait(bus, submit)
    assert result.status == "idle", result.final_text
    text = result.final_text
    assert text.index("api\npayments") < text.index("probes:")
    assert "api failed failed\n1\n" in text  # one delegation per row, each with its own service
    assert "payments failed failed\n2\n" in text
    assert "rows_seen\n5" in text  # the third turn ran after the delegations came back
    assert text.count(MARK) == 3  # the lead's answer and the two probes' quoted in it


async def test_a_playbook_stops_at_a_failed_call_instead_of_using_its_error(bus: Bus) -> None:
    agent = AgentSpec(
        name="logs",
        tools=["sql", "write_file"],
        playbook=Playbook(
            calls=[PlaybookCall(tool="sql", input={"query": "SELECT * FROM nowhere"})],
            then=[
                PlaybookStep(
                    calls=[
                        PlaybookCall(tool="write_file", input={"path": "out.csv", "content": "{result[0]}"})
                    ]
                )
            ],
        ),
    )
    spec = TeamSpec(name="t", lead=AgentSpec(name="lead"), agents=[agent])
    submit = SessionSubmit(task="x", team_spec=spec)
    async with running_agents(bus, OfflineModel(), agents=["logs"]):
        result = await submit_and_wait(bus, submit)
    assert "The playbook stopped after turn 1 of 2: a call failed" in result.final_text
    assert "SQL error: no such table: nowhere" in result.final_text
    assert "out.csv" not in [f.path for f in await Workspace(bus).list(submit.session_id)]


def test_a_playbook_step_may_only_loop_over_a_result_before_it() -> None:
    with pytest.raises(ValueError, match=r"then\[0\]: call 'delegate' has for_each = 1, but only 1 results"):
        Playbook(
            calls=[PlaybookCall(tool="sql")],
            then=[PlaybookStep(calls=[PlaybookCall(tool="delegate", for_each=1)])],
        )
    with pytest.raises(ValueError, match="task_pattern '\\(' is not a regular expression"):
        Playbook(task_pattern="(")


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

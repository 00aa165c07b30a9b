"""Custom tools: the session's caller answers them. A call idles its thread (``requires_action``) until
a ``user.custom_tool_result`` arrives, from the client, the CLI or hand-written JSON on NATS; the
answer is kept by the log, so a worker killed while waiting loses nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec
import pytest

from actors.agent.models.offline import OfflineModel
from actors.agent.tools.catalog import check_team_tools
from actors.client import Client
from actors.roles import running_agents
from bus.connection import Bus
from bus.errors import StaffworkError
from schemas.errors import SpecError
from schemas.session import SessionSubmit
from schemas.team import AgentSpec, CustomTool, Playbook, PlaybookCall, TeamSpec, parse_team
from schemas.trace import AnyTraceEvent, CustomToolUse, MessageRejected, ThreadStatusIdle
from tests.helpers import NatsServer, ready_process, staffwork, submit, wait_result

APPROVE = CustomTool(
    name="approve",
    description="Ask the on-call engineer to approve a change; the answer is their decision.",
    input_schema={"type": "object", "properties": {"change": {"type": "string"}}, "required": ["change"]},
)


def ops_team(*, timeout_s: float | None = None) -> TeamSpec:
    tool = msgspec.structs.replace(APPROVE, timeout_s=timeout_s)
    ops = AgentSpec(
        name="ops",
        description="makes changes, with approval",
        tools=["list_files"],
        custom_tools=[tool],
        playbook=Playbook(
            calls=[
                PlaybookCall(tool="approve", input={"change": "roll back {task}"}),
                PlaybookCall(tool="list_files", input={}),
            ],
            answer="approval: {result[0]}",
        ),
    )
    return TeamSpec(name="ops", lead=AgentSpec(name="lead"), agents=[ops])


async def first_call(client: Client, session_id: str, timeout: float = 30.0) -> CustomToolUse:
    async with asyncio.timeout(timeout):
        async for event in client.events(session_id):
            if isinstance(event, CustomToolUse):
                return event
    raise AssertionError("the session ended without a custom tool call")


async def events_of(client: Client, session_id: str) -> list[AnyTraceEvent]:
    events: list[AnyTraceEvent] = []
    async with asyncio.timeout(30):
        async for event in client.events(session_id):
            events.append(event)
    return events


async def test_a_subagent_waits_for_the_callers_answer_and_goes_on_with_it(bus: Bus) -> None:
    client = Client(bus)
    async with running_agents(bus, OfflineModel(), agents=["ops"]):
        session_id = await submit(bus, SessionSubmit(task="payments v2.4.0", team_spec=ops_team()))
        call = await first_call(client, session_id)
        assert call.name == "approve"
        assert call.input == {"change": "roll back payments v2.4.0"}
        assert call.result_subject == bus.subjects.tool_result(session_id, call.tool_use_id)
        assert [c.tool_use_id for c in await client.custom_tool_calls(session_id)] == [call.tool_use_id]

        with pytest.raises(StaffworkError, match="has no custom tool call 'toolu_nope'"):
            await client.answer_tool(session_id, "toolu_nope", "yes")
        # garbage and a stray on the answer subject are reported, and the thread keeps waiting
        await bus.publish_bytes(call.result_subject, b"{not json")
        await bus.publish_bytes(
            call.result_subject,
            json.dumps(
                {"type": "user.custom_tool_result.v1", "session_id": "ses_other", "custom_tool_use_id": "x"}
            ).encode(),
        )
        await client.answer_tool(session_id, call.tool_use_id, "approved by dana")
        result = await wait_result(bus, session_id, timeout=30)
        with pytest.raises(StaffworkError, match="is already answered"):
            await client.answer_tool(session_id, call.tool_use_id, "approved twice")

    assert result.status == "idle"
    assert "approval: approved by dana" in result.final_text
    assert await client.custom_tool_calls(session_id) == []
    events = await events_of(client, session_id)
    idle = [e for e in events if isinstance(e, ThreadStatusIdle) and e.thread_id == call.thread_id]
    assert [e.stop_reason for e in idle][:1] == ["requires_action"]
    rejected = [e for e in events if isinstance(e, MessageRejected) and e.subject == call.result_subject]
    assert len(rejected) == 2, rejected
    assert any("ses_other" in e.reason for e in rejected)


async def test_hand_written_json_on_nats_answers_a_call_and_an_error_answer_reaches_the_agent(
    bus: Bus,
) -> None:
    client = Client(bus)
    async with running_agents(bus, OfflineModel(), agents=["ops"]):
        session_id = await submit(bus, SessionSubmit(task="search", team_spec=ops_team()))
        call = await first_call(client, session_id)
        answer = {
            "type": "user.custom_tool_result.v1",
            "session_id": session_id,
            "custom_tool_use_id": call.tool_use_id,
            "content": "denied: change freeze",
            "is_error": True,
        }
        await bus.publish_bytes(call.result_subject, json.dumps(answer).encode())
        result = await wait_result(bus, session_id, timeout=30)
    assert "approval: denied: change freeze" in result.final_text
    events = await events_of(client, session_id)
    results = [e for e in events if getattr(e, "tool_use_id", "") == call.tool_use_id]
    assert any(getattr(e, "is_error", False) and getattr(e, "kind", "") == "custom" for e in results)


async def test_the_leads_own_custom_tool(bus: Bus) -> None:
    lead = AgentSpec(
        name="lead",
        custom_tools=[APPROVE],
        playbook=Playbook(
            calls=[PlaybookCall(tool="approve", input={"change": "{task}"})], answer="{result[0]}"
        ),
    )
    spec = TeamSpec(name="solo", lead=lead)
    client = Client(bus)
    async with running_agents(bus, OfflineModel()):
        session_id = await submit(bus, SessionSubmit(task="ship it", team_spec=spec))
        call = await first_call(client, session_id)
        assert call.thread_id == "lead"
        await client.answer_tool(session_id, call.tool_use_id, "shipped")
        result = await wait_result(bus, session_id, timeout=30)
    assert result.final_text.startswith("shipped")


async def test_a_call_nobody_answers_in_time_is_an_error_and_the_thread_goes_on(bus: Bus) -> None:
    async with running_agents(bus, OfflineModel(), agents=["ops"]):
        session_id = await submit(bus, SessionSubmit(task="x", team_spec=ops_team(timeout_s=0.5)))
        result = await wait_result(bus, session_id, timeout=30)
    assert result.status == "idle"
    assert "the caller did not answer within 0.5s" in result.final_text


@pytest.mark.slow
async def test_a_worker_killed_while_waiting_loses_nothing(nats_server: NatsServer, bus: Bus) -> None:
    """kill -9 the worker whose thread waits; answer while no worker runs; a new worker finds the
    answer in the stream and the session completes with it."""
    client = Client(bus)
    worker: tuple[str, ...] = ("tests.agents_proc", nats_server.url, bus.subjects.root, "--agents", "ops")
    async with running_agents(bus, OfflineModel()):  # the lead, in this process
        async with ready_process(*worker, "--offline") as doomed:
            session_id = await submit(bus, SessionSubmit(task="checkout", team_spec=ops_team()))
            call = await first_call(client, session_id)
            doomed.kill()
            await doomed.wait()
        await client.answer_tool(session_id, call.tool_use_id, "approved after the crash")
        async with ready_process(*worker, "--offline"):
            result = await wait_result(bus, session_id, timeout=60)
    assert result.status == "idle"
    assert "approval: approved after the crash" in result.final_text


def test_a_custom_tool_cannot_take_a_builtin_name_and_the_error_names_the_line() -> None:
    text = """
name = "t"
[lead]
name = "lead"

[[agents]]
name = "ops"

[[agents.custom_tools]]
name = "read_file"
description = "shadowing a built-in"
"""
    spec = parse_team(text, source="team.toml")
    with pytest.raises(SpecError) as raised:
        check_team_tools(spec)
    assert str(raised.value).startswith("team.toml:9: agents[0].custom_tools[0]: custom tool 'read_file'")


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('command = ["x"]\nenv = { TOKEN = "abc123" }', "env.TOKEN = 'abc123' does not name an environment"),
        ('url = "http://h/mcp"\nheaders = { Authorization = "${USER} ${TOK" }', "malformed"),
        ('command = ["x"]\nurl = "http://h/mcp"', "exactly one of command (stdio) or url (HTTP)"),
        ('url = "ftp://h"', "is not an http(s) URL"),
        ('url = "http://h/mcp"\ntools = ["a", "a"]', "tool 'a' is listed twice"),
    ],
)
def test_mcp_server_mistakes_in_a_team_file_are_one_line_with_the_line(snippet: str, expected: str) -> None:
    text = f'name = "t"\n[lead]\nname = "lead"\n[[lead.mcp_servers]]\nname = "api"\n{snippet}\n'
    with pytest.raises(SpecError) as raised:
        parse_team(text, source="team.toml")
    message = str(raised.value)
    assert message.startswith("team.toml:4: lead.mcp_servers[0]"), message
    assert expected in message, message
    assert "\n" not in message


def test_a_source_name_cannot_hold_a_double_underscore() -> None:
    text = 'name = "t"\n[lead]\nname = "lead"\n[[lead.services]]\nname = "led__ger"\n'
    with pytest.raises(SpecError, match=r"team.toml:5: lead.services\[0\].name"):
        parse_team(text, source="team.toml")


async def test_the_cli_lists_the_calls_waiting_and_answers_one(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    client = Client(bus)
    where = ("--nats", nats_server.url, "--root", bus.subjects.root)
    async with running_agents(bus, OfflineModel(), agents=["ops"]):
        session_id = await submit(bus, SessionSubmit(task="search", team_spec=ops_team()))
        call = await first_call(client, session_id)
        listed = await asyncio.to_thread(staffwork, "answer", session_id, *where, home=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert call.tool_use_id in listed.stdout
        assert "approve" in listed.stdout
        status = await asyncio.to_thread(staffwork, "status", session_id, *where, home=tmp_path)
        assert f"staffwork answer {session_id} {call.tool_use_id} TEXT" in status.stdout

        wrong = await asyncio.to_thread(
            staffwork, "answer", session_id, "toolu_x", "ok", *where, home=tmp_path
        )
        assert wrong.returncode == 1
        assert wrong.stderr.strip().startswith("error: session")
        assert "'toolu_x'" in wrong.stderr
        done = await asyncio.to_thread(
            staffwork, "answer", session_id, call.tool_use_id, "approved on the CLI", *where, home=tmp_path
        )
        assert done.returncode == 0, done.stderr
        result = await wait_result(bus, session_id, timeout=30)
    assert "approval: approved on the CLI" in result.final_text

"""Tool calls that wait for a person's confirmation (the agent's permission policy asks for the tool):
the thread idles with ``requires_action`` until a ``user.tool_confirmation`` comes from the client,
the CLI or hand-written JSON on NATS. Parallel calls each resume exactly their own call, once; a
denial reaches the model; the timeout denies; the answer survives a killed worker."""

from __future__ import annotations

import asyncio
import getpass
import json
from collections import Counter
from collections.abc import Callable

import pytest
from nats.aio.client import Client as NATS

from actors.agent.models.base import ModelRequest, ModelResponse
from actors.agent.models.offline import OfflineModel
from actors.agent.models.scripted import ScriptedModel, calls, text
from actors.agent.tools.catalog import check_team_tools
from actors.client import Client
from actors.roles import running_agents
from bus.connection import Bus
from bus.errors import StaffworkError
from schemas.conversation import ToolResultBlock
from schemas.errors import SpecError
from schemas.session import SessionSubmit
from schemas.team import AgentSpec, PermissionPolicy, Playbook, PlaybookCall, TeamSpec, parse_team
from schemas.trace import (
    AgentToolResult,
    AgentToolUse,
    AnyTraceEvent,
    MessageRejected,
    ThreadStatusIdle,
    ToolConfirmationAnswered,
    ToolConfirmationRequested,
)
from tests.helpers import NatsServer, delegate, ready_process, run_cli, submit, tool_results, wait_result


def asking(name: str, *, timeout_s: float = 60.0, playbook: Playbook | None = None) -> AgentSpec:
    """An agent that may list files, and whose every ``list_files`` call waits for a person."""
    policy = PermissionPolicy(always_ask=["list_files"], timeout_s=timeout_s)
    return AgentSpec(
        name=name,
        description=f"the {name} agent",
        tools=["list_files"],
        permissions=policy,
        playbook=playbook,
    )


def subagent(request: ModelRequest) -> ModelResponse:
    """List the files (a call id of its own for each request of the thread), then say what came back."""
    results = tool_results(request)
    if not results:
        return calls((f"ls_{request.agent}_{len(request.messages)}", "list_files", {}))
    return text(f"{request.agent} saw ({'error' if results[0].is_error else 'ok'}): {results[0].content}")


def fan_out(request: ModelRequest) -> ModelResponse:
    if request.agent != "lead":
        return subagent(request)
    results = tool_results(request)
    if not results:
        return calls(delegate("toolu_alpha", "alpha", "look"), delegate("toolu_beta", "beta", "look"))
    return text("REPORT\n" + "\n".join(r.content for r in results))


async def until(client: Client, session_id: str, check: Callable[[list[AnyTraceEvent]], bool]) -> None:
    """Follow the session's events until ``check`` holds for those seen so far (bounded)."""
    seen: list[AnyTraceEvent] = []
    async with asyncio.timeout(15):
        async for event in client.events(session_id):
            seen.append(event)
            if check(seen):
                return
    raise AssertionError("the turn ended first")


def requested(count: int) -> Callable[[list[AnyTraceEvent]], bool]:
    return lambda seen: sum(isinstance(e, ToolConfirmationRequested) for e in seen) >= count


def last_line(output: str) -> str:
    """The CLI's own line (the client's log lines, if any, come before it)."""
    return output.strip().splitlines()[-1]


async def events_of(client: Client, session_id: str) -> list[AnyTraceEvent]:
    async with asyncio.timeout(15):
        return [event async for event in client.events(session_id)]


async def test_two_subagents_ask_at_once_and_each_resumes_its_own_call_once(bus: Bus, nc: NATS) -> None:
    client = Client(bus)
    team = TeamSpec(name="pair", lead=AgentSpec(name="lead"), agents=[asking("alpha"), asking("beta")])
    async with running_agents(bus, ScriptedModel(responder=fan_out), agents=["alpha", "beta"]):
        session_id = await submit(bus, SessionSubmit(task="look", team_spec=team))
        await until(client, session_id, requested(2))
        waiting = {r.agent: r for r in await client.confirmations(session_id)}
        assert sorted(waiting) == ["alpha", "beta"]
        alpha, beta = waiting["alpha"], waiting["beta"]
        assert alpha.answer_subject == bus.subjects.confirmation(session_id, alpha.tool_use_id)

        # garbage and a stray on beta's subject are reported; beta keeps waiting
        await bus.publish_bytes(beta.answer_subject, b"{not json")
        stray = {"type": "user.tool_confirmation.v1", "session_id": "ses_other", "tool_use_id": "x"}
        await bus.publish_bytes(beta.answer_subject, json.dumps(stray | {"result": "allow"}).encode())
        await client.approve(session_id, beta.tool_use_id, by="dana")

        def beta_ran(seen: list[AnyTraceEvent]) -> bool:
            return any(isinstance(e, AgentToolResult) and e.tool_use_id == beta.tool_use_id for e in seen)

        await until(client, session_id, beta_ran)
        assert [r.tool_use_id for r in await client.confirmations(session_id)] == [alpha.tool_use_id]
        # a plain NATS client answers alpha with the documented JSON
        answer = {
            "type": "user.tool_confirmation.v1",
            "session_id": session_id,
            "tool_use_id": alpha.tool_use_id,
            "result": "allow",
            "by": "raw-nats",
        }
        await nc.jetstream().publish(alpha.answer_subject, json.dumps(answer).encode())
        result = await wait_result(bus, session_id, timeout=15)

        with pytest.raises(StaffworkError, match=r"is already answered \(allow by raw-nats\)"):
            await client.approve(session_id, alpha.tool_use_id)
        with pytest.raises(StaffworkError, match=r"has no tool call 'toolu_nope' .*waiting: none"):
            await client.deny(session_id, "toolu_nope", "no")

    assert result.status == "idle"
    assert "alpha saw (ok)" in result.final_text
    assert "beta saw (ok)" in result.final_text
    events = await events_of(client, session_id)
    calls_made = {alpha.tool_use_id, beta.tool_use_id}
    runs = Counter(
        e.tool_use_id for e in events if isinstance(e, AgentToolResult) and e.tool_use_id in calls_made
    )
    assert runs == {alpha.tool_use_id: 1, beta.tool_use_id: 1}
    answered = {e.tool_use_id: (e.result, e.by) for e in events if isinstance(e, ToolConfirmationAnswered)}
    assert answered == {alpha.tool_use_id: ("allow", "raw-nats"), beta.tool_use_id: ("allow", "dana")}
    permissions = {e.name: e.evaluated_permission for e in events if isinstance(e, AgentToolUse)}
    assert permissions == {"list_files": "ask", "delegate": "allow"}
    idles = [e for e in events if isinstance(e, ThreadStatusIdle) and e.stop_reason == "requires_action"]
    assert sorted(e.agent for e in idles) == ["alpha", "beta"]
    rejected = [e for e in events if isinstance(e, MessageRejected) and e.subject == beta.answer_subject]
    assert len(rejected) == 2, rejected
    assert any("ses_other" in e.reason for e in rejected), rejected


async def test_a_denied_call_reaches_the_model_and_a_follow_up_continues_the_thread(bus: Bus) -> None:
    client = Client(bus)
    model = ScriptedModel(
        {
            "lead": [
                calls(delegate("toolu_a", "alpha", "look")),
                calls(("toolu_fu", "message_agent", {"thread_id": "t-toolu_a", "message": "try again"})),
                lambda request: text("REPORT\n" + tool_results(request)[0].content),
            ]
        },
        responder=subagent,
    )
    team = TeamSpec(name="one", lead=AgentSpec(name="lead"), agents=[asking("alpha")])
    async with running_agents(bus, model, agents=["alpha"]):
        session_id = await submit(bus, SessionSubmit(task="look", team_spec=team))
        await until(client, session_id, requested(1))
        (first,) = await client.confirmations(session_id)
        root, url = bus.subjects.root, bus.url
        where = ("--nats", url, "--root", root)
        listed, status = await asyncio.gather(
            run_cli("deny", session_id, *where, timeout=20), run_cli("status", session_id, *where, timeout=20)
        )
        assert listed[0] == 0, listed
        assert f"{first.tool_use_id}  alpha  list_files" in listed[1], listed
        assert f"staffwork approve {session_id} {first.tool_use_id}" in status[1], status
        code, out, err = await run_cli(
            "deny", session_id, first.tool_use_id, "--reason", "not on prod", *where
        )
        assert (code, out.strip()) == (0, f"{session_id}: denied {first.tool_use_id}"), err
        (again, _, again_err), (unknown, _, unknown_err) = await asyncio.gather(
            run_cli("deny", session_id, first.tool_use_id, *where),
            run_cli("approve", session_id, "toolu_x", *where),
        )
        assert again == 1
        assert last_line(again_err).startswith(f"error: tool call {first.tool_use_id!r}"), again_err
        assert f"is already answered (deny by {getpass.getuser()})" in again_err
        assert unknown == 1
        unknown_line = f"error: session {session_id!r} has no tool call 'toolu_x' asking for a confirmation"
        assert last_line(unknown_err).startswith(unknown_line), unknown_err

        await until(client, session_id, requested(2))  # the follow-up lists the files again: it asks again
        (second,) = await client.confirmations(session_id)
        await client.approve(session_id, second.tool_use_id, by="dana")
        result = await wait_result(bus, session_id, timeout=15)

    denied = next(c for c in model.calls_by("alpha") if tool_results(c.request))
    (block,) = tool_results(denied.request)
    assert isinstance(block, ToolResultBlock)
    assert block.is_error
    assert block.content == (
        f"[denied by {getpass.getuser()}; the call of 'list_files' did not run: not on prod]"
    )
    assert "alpha saw (ok)" in result.final_text, result.final_text
    model.assert_done()


async def test_nobody_answers_in_time_the_call_is_denied(bus: Bus) -> None:
    client = Client(bus)
    team = TeamSpec(name="late", lead=AgentSpec(name="lead"), agents=[asking("alpha", timeout_s=0.3)])
    async with running_agents(bus, ScriptedModel(responder=fan_out_one), agents=["alpha"]):
        session_id = await submit(bus, SessionSubmit(task="look", team_spec=team))
        result = await wait_result(bus, session_id, timeout=15)
        (call,) = await client.confirmations(session_id, pending=False)
        assert await client.confirmations(session_id) == []
        with pytest.raises(StaffworkError, match=r"is already answered \(denied: nobody confirmed"):
            await client.approve(session_id, call.tool_use_id)
    assert (
        "alpha saw (error): [denied: nobody confirmed this call of 'list_files' within 0.3s"
        in result.final_text
    )
    events = await events_of(client, session_id)
    assert [(e.result, e.by) for e in events if isinstance(e, ToolConfirmationAnswered)] == [("timeout", "")]


def fan_out_one(request: ModelRequest) -> ModelResponse:
    if request.agent != "lead":
        return subagent(request)
    results = tool_results(request)
    return text(results[0].content) if results else calls(delegate("toolu_alpha", "alpha", "look"))


@pytest.mark.slow
async def test_an_approval_given_while_the_worker_is_dead_runs_the_call_once(
    nats_server: NatsServer, bus: Bus
) -> None:
    """kill -9 the worker whose call waits; approve while no worker runs; a new worker finds the
    answer in the stream, runs the call once, and the session completes."""
    client = Client(bus)
    playbook = Playbook(calls=[PlaybookCall(tool="list_files", input={})], answer="listed: {result[0]}")
    team = TeamSpec(name="crash", lead=AgentSpec(name="lead"), agents=[asking("ops", playbook=playbook)])
    worker = ("tests.agents_proc", nats_server.url, bus.subjects.root, "--agents", "ops", "--offline")
    async with running_agents(bus, OfflineModel()):  # the lead, in this process
        async with ready_process(*worker, "--ack-wait", "1") as doomed:
            session_id = await submit(bus, SessionSubmit(task="look", team_spec=team))
            await until(client, session_id, requested(1))
            doomed.kill()
            await doomed.wait()
        (call,) = await client.confirmations(session_id)
        await client.approve(session_id, call.tool_use_id, by="dana")
        async with ready_process(*worker, "--ack-wait", "1"):
            result = await wait_result(bus, session_id, timeout=20)
    assert result.status == "idle"
    assert "listed:" in result.final_text
    events = await events_of(client, session_id)
    runs = [e for e in events if isinstance(e, AgentToolResult) and e.tool_use_id == call.tool_use_id]
    assert [e.is_error for e in runs] == [False]
    assert [e.by for e in events if isinstance(e, ToolConfirmationAnswered)] == ["dana"]
    assert len([e for e in events if isinstance(e, ToolConfirmationRequested)]) == 1  # found, not asked again


TEAM = """name = "t"
[lead]
name = "lead"

[[agents]]
name = "ops"
tools = ["list_files", "write_file"]

[agents.permissions]
always_ask = ["write_file", "{typo}"]

[[agents.mcp_servers]]
name = "deploy"
command = ["deploy-mcp"]
tools = ["rollback"]
"""


@pytest.mark.parametrize(
    ("typo", "message"),
    [
        (
            "write_fle",
            "agent 'ops' has no tool 'write_fle' for its permission policy (did you mean 'write_file'?)",
        ),
        (
            "deploy__restart",
            "tool 'deploy__restart' in the permission policy of agent 'ops' is not in the allowlist",
        ),
        ("delegate", "agent 'ops' has no tool 'delegate'"),
    ],
)
def test_a_policy_naming_a_tool_the_agent_lacks_is_one_line_with_the_file_and_line(
    typo: str, message: str
) -> None:
    spec = parse_team(TEAM.replace("{typo}", typo), source="team.toml")
    with pytest.raises(SpecError) as raised:
        check_team_tools(spec)
    text_ = str(raised.value)
    assert text_.startswith(f"team.toml:10: agents[0].permissions.always_ask[1]: {message}"), text_
    assert "\n" not in text_
    assert raised.value.value == typo


def test_a_policy_may_name_a_tool_of_its_own_sources() -> None:
    check_team_tools(parse_team(TEAM.replace("{typo}", "deploy__rollback"), source="team.toml"))
    lead = AgentSpec(name="lead", permissions=PermissionPolicy(always_ask=["delegate"]))
    check_team_tools(TeamSpec(name="t", lead=lead))

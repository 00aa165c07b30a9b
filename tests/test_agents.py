"""Lead and subagents in one process with the scripted model: fan-out, caps, follow-ups, tools,
cancel and budget."""

from __future__ import annotations

import asyncio
import json

import msgspec
import pytest

from actors.agent.loop import answer_for
from actors.agent.models.base import ModelRequest, ModelResponse
from actors.agent.models.scripted import ScriptedModel, calls, text
from actors.roles import running_agents
from actors.sessions.cancel import cancel_session
from actors.sessions.directory import SessionDirectory
from bus.connection import Bus
from bus.direct import read_subject
from bus.history import ThreadHistory
from bus.workspace import Workspace
from schemas import Delegation, SessionResult, SessionSubmit, ThreadReply, Usage
from schemas.conversation import TextBlock, ThreadTurn, Turn
from schemas.trace import ModelRequestStart, ToolDenied
from tests.helpers import delegate, fan_out_lead, inbox, submit_and_wait, team, tool_results

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


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    points = sorted(
        [(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda p: (p[0], p[1])
    )
    best = current = 0
    for _, step in points:
        current += step
        best = max(best, current)
    return best


@pytest.mark.parametrize("cap", [20, 4])
async def test_twenty_parallel_delegations_respect_the_thread_cap(bus: Bus, cap: int) -> None:
    delegations = calls(*[delegate(f"toolu_{i}", "worker", f"part {i}") for i in range(20)])
    model = ScriptedModel({"lead": [delegations, text("done")]}, responder=echo, latency=0.2)
    async with running_agents(bus, model, agents=["worker"]):
        result = await submit_and_wait(
            bus, SessionSubmit(task="split it", team_spec=team("worker", max_concurrent_threads=cap))
        )
    assert result.status == "idle", result.final_text
    worker_calls = model.calls_by("worker")
    assert len(worker_calls) == 20  # none dropped
    assert max_overlap([(c.started, c.ended) for c in worker_calls]) == cap


async def test_follow_up_continues_the_same_thread_with_its_history(bus: Bus) -> None:
    def follow_up(request: ModelRequest) -> ModelResponse:
        [result] = tool_results(request)
        thread_id = result.content.split()[1]  # "[thread <id> · agent ..."
        return calls(("toolu_fu", "message_agent", {"thread_id": thread_id, "message": "and the p99?"}))

    model = ScriptedModel(
        {
            "lead": [
                calls(("toolu_d", "delegate", {"agent": "metrics", "task": "p50 latency?"})),
                follow_up,
                text("ok"),
            ],
            "metrics": [text("p50 is 120 ms"), text("p99 is 900 ms")],
        }
    )
    async with running_agents(bus, model, agents=["metrics"]):
        result = await submit_and_wait(bus, SessionSubmit(task="latency", team_spec=team("metrics")))
    assert result.status == "idle", result.final_text
    first, second = model.calls_by("metrics")
    assert first.thread_id == second.thread_id
    assert [t.text for t in second.request.messages] == ["p50 latency?", "p50 is 120 ms", "and the p99?"]
    lead_calls = model.calls_by("lead")
    assert "p99 is 900 ms" in tool_results(lead_calls[2].request)[0].content
    model.assert_done()


async def test_a_tool_the_agent_does_not_have_is_refused_and_recorded(bus: Bus) -> None:
    every_session = bus.subjects.events("*").replace(".evt.>", ".evt.agent.tool_denied")
    denied = await inbox(bus, every_session, ToolDenied)
    model = ScriptedModel(
        {
            "lead": fan_out_lead(["logs"]),
            "logs": [calls(("toolu_sql", "sql", {"query": "SELECT 1"})), text("could not query")],
        }
    )
    async with running_agents(bus, model, agents=["logs"]):
        result = await submit_and_wait(bus, SessionSubmit(task="x", team_spec=team("logs", tools=("grep",))))
    assert result.status == "idle"
    [refused] = tool_results(model.calls_by("logs")[1].request)
    assert refused.is_error
    assert refused.content == "tool 'sql' is not available to agent 'logs' (its tools: grep)"
    event = await denied.next(timeout=5)
    assert (event.name, event.agent, event.allowed) == ("sql", "logs", ["grep"])
    await denied.close()


async def test_bad_tool_arguments_and_tool_errors_go_back_to_the_model(bus: Bus) -> None:
    model = ScriptedModel(
        {
            "lead": fan_out_lead(["logs"]),
            "logs": [
                calls(
                    ("toolu_a", "read_file", {"path": "x.txt", "offset": "ten"}),
                    ("toolu_b", "read_file", {"path": "missing.txt"}),
                    ("toolu_c", "read_file", {"path": "../../etc/passwd"}),
                ),
                text("I could not read them"),
            ],
        }
    )
    async with running_agents(bus, model, agents=["logs"]):
        result = await submit_and_wait(
            bus, SessionSubmit(task="x", team_spec=team("logs", tools=("read_file",)))
        )
    assert result.status == "idle"
    bad_type, missing, escape = tool_results(model.calls_by("logs")[1].request)
    assert bad_type.is_error
    assert "Expected `int`, got `str` - at `$.offset`" in bad_type.content
    assert missing.is_error
    assert "no file 'missing.txt'" in missing.content
    assert escape.is_error
    assert "escapes the workspace" in escape.content


async def test_cancel_stops_the_lead_and_every_thread(bus: Bus) -> None:
    model = ScriptedModel({"lead": fan_out_lead(AGENTS)}, responder=echo, latency=dict.fromkeys(AGENTS, 30.0))
    submit = SessionSubmit(task="slow", team_spec=team(*AGENTS))
    async with running_agents(bus, model, agents=AGENTS):
        started = await inbox(
            bus, bus.subjects.event(submit.session_id, "span.model_request_start"), ModelRequestStart
        )
        results = await inbox(bus, bus.subjects.out(submit.session_id, "result"), SessionResult)
        # Straight on <root>.submit (the lead pool's durable inbox, past the gateway): a session that
        # only its lead recorded is canceled as well.
        await bus.publish(bus.subjects.submit, submit)
        await started.take(6)  # the lead's first call, then the five subagents' calls are under way
        calls_before = len(model.calls)
        async with asyncio.timeout(5):  # within seconds, not after the 30 s model calls
            await cancel_session(bus, submit.session_id, "user")
            result = await results.next(timeout=5)
    assert result.status == "canceled"
    assert len(model.calls) == calls_before  # no model call was made after the cancel
    for box in (started, results):
        await box.close()


async def test_budget_reached_stops_cleanly(bus: Bus) -> None:
    expensive = Usage(input_tokens=800, output_tokens=400)
    delegations = calls(
        ("toolu_1", "delegate", {"agent": "logs", "task": "a"}), usage=Usage(input_tokens=100)
    )
    model = ScriptedModel({"lead": [delegations]}, responder=lambda r: text("spent a lot", usage=expensive))
    async with running_agents(bus, model, agents=["logs"]):
        result = await submit_and_wait(
            bus, SessionSubmit(task="x", team_spec=team("logs", budget_tokens=1000))
        )
    assert result.status == "budget_reached"
    assert result.usage.input_tokens + result.usage.output_tokens >= 1000
    assert len(model.calls_by("lead")) == 1  # no lead turn after the budget was spent
    terminated = bus.subjects.event(result.session_id, "session.status_terminated")
    [ended] = [json.loads(m.data) async for m in read_subject(bus, bus.subjects.log_stream, terminated)]
    assert ended["reason"] == "budget_reached"  # the session ended for good (a webhook can announce it)


async def test_a_duplicate_delegation_never_makes_a_second_thread(bus: Bus) -> None:
    spec = team("logs")
    await SessionDirectory(bus).start("ses_dup", spec, "x")
    model = ScriptedModel({"logs": [text("the answer")]}, latency=0.3)
    replies = await inbox(bus, bus.subjects.reply("ses_dup", "t-dup"), ThreadReply)
    request = Delegation(
        session_id="ses_dup", msg_id="dlg-dup", thread_id="t-dup", agent="logs", task="find it"
    )
    async with running_agents(bus, model, lead=False, agents=["logs"]):
        for copy in range(2):  # the same message twice, as two stream entries (past JetStream's dedup)
            await bus.publish(bus.subjects.task("ses_dup", "logs"), request, msg_id=f"copy-{copy}")
        answers = await replies.take(2)
    assert [a.text for a in answers] == ["the answer", "the answer"]
    assert len(model.calls) == 1  # the duplicate found the finished answer in the thread's log
    created = bus.subjects.event("ses_dup", "session.thread_created")
    assert len([m async for m in read_subject(bus, bus.subjects.log_stream, created)]) == 1  # one thread
    await replies.close()


async def test_sessions_reusing_tool_use_ids_do_not_collide(bus: Bus) -> None:
    """Message ids are unique per session, so JetStream's dedup never drops another session's work."""
    model = ScriptedModel({"lead": fan_out_lead(["logs"]) + fan_out_lead(["logs"])}, responder=echo)
    async with running_agents(bus, model, agents=["logs"]):
        for _ in range(2):
            result = await submit_and_wait(
                bus, SessionSubmit(task="again", team_spec=team("logs")), timeout=20
            )
            assert result.status == "idle"
            assert "logs did: task for logs" in result.final_text


async def test_deadline_reached_stops_the_session(bus: Bus) -> None:
    model = ScriptedModel({"lead": fan_out_lead(["logs"])}, responder=echo, latency={"logs": 30.0})
    async with running_agents(bus, model, agents=["logs"]):
        async with asyncio.timeout(10):  # long before the 30 s model call would end
            result = await submit_and_wait(
                bus, SessionSubmit(task="x", team_spec=team("logs"), deadline_s=0.5)
            )
    assert result.status == "deadline_reached"
    assert result.final_text == "the session stopped: deadline reached"


def thread_of(request: ModelRequest) -> str:
    return tool_results(request)[0].content.split()[1]  # "[thread <id> · agent ..."


async def test_two_follow_ups_to_one_thread_in_one_turn_each_get_their_answer(bus: Bus) -> None:
    def two_follow_ups(request: ModelRequest) -> ModelResponse:
        thread = thread_of(request)
        return calls(
            ("toolu_a", "message_agent", {"thread_id": thread, "message": "question A"}),
            ("toolu_b", "message_agent", {"thread_id": thread, "message": "question B"}),
        )

    def answer(request: ModelRequest) -> ModelResponse:
        return text(f"answer to {request.messages[-1].text}")

    model = ScriptedModel(
        {
            "lead": [
                calls(("toolu_d", "delegate", {"agent": "logs", "task": "start"})),
                two_follow_ups,
                text("ok"),
            ]
        },
        responder=answer,
    )
    async with running_agents(bus, model, agents=["logs"]):
        result = await submit_and_wait(bus, SessionSubmit(task="x", team_spec=team("logs")))
    assert result.status == "idle"
    first, second = tool_results(model.calls_by("lead")[2].request)
    assert "answer to question A" in first.content
    assert "answer to question B" in second.content


async def test_a_huge_answer_goes_to_the_workspace(bus: Bus) -> None:
    big = "x" * 300_000
    model = ScriptedModel({"lead": fan_out_lead(["logs"])}, responder=lambda r: text(big))
    async with running_agents(bus, model, agents=["logs"]):
        result = await submit_and_wait(bus, SessionSubmit(task="x", team_spec=team("logs")), timeout=20)
    assert result.status == "idle"
    [spilled] = [f for f in result.files if f.startswith("replies/")]
    assert await Workspace(bus).read_text(result.session_id, spilled) == big
    assert f"all 300000 characters are in the workspace at {spilled}" in result.final_text


async def test_a_stopped_session_keeps_its_reason_in_the_directory(bus: Bus) -> None:
    model = ScriptedModel(
        {
            "lead": [
                calls(("toolu_1", "delegate", {"agent": "logs", "task": "a"}), usage=Usage(input_tokens=5000))
            ]
        }
    )
    submit = SessionSubmit(task="x", team_spec=team("logs", budget_tokens=1000))
    async with running_agents(bus, model, agents=["logs"]):
        # straight on <root>.submit: with no record from the gateway, the lead's own record keeps it
        result = await submit_and_wait(bus, submit, direct=True)
    assert result.status == "budget_reached"
    record = await SessionDirectory(bus).get(submit.session_id)
    assert record is not None
    assert record.status == "budget_reached"


async def test_a_follow_up_continues_a_thread_that_hit_its_turn_limit(bus: Bus) -> None:
    def follow_up(request: ModelRequest) -> ModelResponse:
        return calls(("toolu_f", "message_agent", {"thread_id": thread_of(request), "message": "now answer"}))

    spec = team("logs", tools=("list_files",))
    spec = msgspec.structs.replace(spec, agents=[msgspec.structs.replace(spec.agents[0], max_turns=1)])
    model = ScriptedModel(
        {
            "lead": [
                calls(("toolu_d", "delegate", {"agent": "logs", "task": "look"})),
                follow_up,
                text("ok"),
            ],
            "logs": [calls(("toolu_l", "list_files", {})), text("here is my answer")],
        }
    )
    async with running_agents(bus, model, agents=["logs"]):
        result = await submit_and_wait(bus, SessionSubmit(task="x", team_spec=spec))
    assert result.status == "idle"
    lead_calls = model.calls_by("lead")
    assert "max_turns_reached" in tool_results(lead_calls[1].request)[0].content
    assert "here is my answer" in tool_results(lead_calls[2].request)[0].content
    model.assert_done()


async def test_an_empty_model_answer_does_not_break_follow_ups(bus: Bus) -> None:
    def follow_up(request: ModelRequest) -> ModelResponse:
        return calls(("toolu_f", "message_agent", {"thread_id": thread_of(request), "message": "again?"}))

    model = ScriptedModel(
        {
            "lead": [calls(("toolu_d", "delegate", {"agent": "logs", "task": "q"})), follow_up, text("ok")],
            "logs": [ModelResponse(content=[], stop_reason="end_turn"), text("second answer")],
        }
    )
    async with running_agents(bus, model, agents=["logs"]):
        result = await submit_and_wait(bus, SessionSubmit(task="x", team_spec=team("logs")))
    assert result.status == "idle"
    second = model.calls_by("logs")[1].request
    assert [t.text for t in second.messages] == ["q", "(no answer)", "again?"]  # no empty turn sent back


def test_answer_for_finds_the_turn_that_answered_each_request() -> None:
    def entry(index: int, role: str, words: str, trigger: str = "", stop: str = "") -> ThreadTurn:
        turn = Turn(role=role, content=[TextBlock(text=words)])  # type: ignore[arg-type]
        return ThreadTurn(
            session_id="s",
            thread_id="t",
            agent="a",
            index=index,
            turn=turn,
            trigger=trigger,
            stop_reason=stop,
        )

    history = ThreadHistory(session_id="s", thread_id="t")
    history.entries = [
        entry(0, "user", "task", trigger="dlg"),
        entry(1, "assistant", "answer 1", stop="end_turn"),
        entry(2, "user", "question A", trigger="fup-a"),
        entry(3, "assistant", "[stopped: limit]", stop="max_turns"),
        entry(4, "user", "question B", trigger="fup-b"),
    ]
    assert answer_for(history, "dlg") is history.entries[1]
    assert answer_for(history, "fup-a") is history.entries[3]
    assert answer_for(history, "fup-b") is None  # still running
    assert answer_for(history, "unknown") is None


async def test_stop_reasons_pause_turn_refusal_and_max_tokens_are_handled(bus: Bus) -> None:
    lead = calls(*[delegate(f"toolu_{a}", a, "go") for a in ("pauser", "refuser", "rambler")])
    model = ScriptedModel(
        {
            "lead": [lead, text("done")],
            "pauser": [
                ModelResponse(content=[TextBlock(text="part one")], stop_reason="pause_turn"),
                text("part two"),
            ],
            "refuser": [
                ModelResponse(content=[TextBlock(text="I can't help with that")], stop_reason="refusal")
            ],
            "rambler": [
                ModelResponse(content=[TextBlock(text="a long answer that")], stop_reason="max_tokens")
            ],
        }
    )
    async with running_agents(bus, model, agents=["pauser", "refuser", "rambler"]):
        result = await submit_and_wait(
            bus, SessionSubmit(task="x", team_spec=team("pauser", "refuser", "rambler"))
        )
    assert result.status == "idle"
    paused, refused, cut = tool_results(model.calls_by("lead")[1].request)
    assert "part two" in paused.content  # pause_turn: the model was asked to continue
    assert len(model.calls_by("pauser")) == 2
    assert refused.is_error  # refusal: the thread failed, and the lead is told so
    assert "failed" in refused.content
    assert "[answer cut short: the model reached max_tokens (4096)]" in cut.content
    model.assert_done()

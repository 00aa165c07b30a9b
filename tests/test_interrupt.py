"""Interrupting one subagent thread: it stops its work in progress, closes its pending tool calls,
idles and answers ``interrupted`` (the lead's tool result says how to continue it); the session and
the other threads go on, a redelivered request is not run again, a follow-up continues the thread
with its whole history, and an interrupt of a thread with no work in progress changes nothing. Then
``staffwork interrupt`` against a live session of real lead and worker processes."""

from __future__ import annotations

import asyncio
from collections import Counter

import msgspec

from actors.agent.models.base import ModelRequest, ModelResponse
from actors.agent.models.scripted import ScriptedModel, calls, text
from actors.roles import AgentSettings, running_agents
from actors.sessions.cancel import interrupt
from actors.sessions.directory import SessionDirectory
from bus.connection import Bus
from bus.history import ThreadLog
from schemas import Delegation, SessionSubmit, ThreadReply
from schemas.conversation import ToolResultBlock, ToolUseBlock, Turn
from schemas.team import CustomTool
from schemas.thread import FollowUp
from schemas.trace import CustomToolUse, ModelRequestStart, ThreadStatusIdle
from tests.helpers import (
    NatsServer,
    delegate,
    inbox,
    ready_process,
    round_trip,
    run_cli,
    submit,
    team,
    tool_results,
    wait_result,
)


class HeldModel:
    """The scripted model, but the calls of an agent in ``hold`` wait until its gate is open (an
    interrupt cancels the wait). ``entered`` counts every call, ``waiting`` is set once one waits."""

    name = "scripted"

    def __init__(self, scripted: ScriptedModel, hold: dict[str, asyncio.Event]) -> None:
        self.scripted = scripted
        self.hold = hold
        self.entered: Counter[str] = Counter()
        self.waiting = {agent: asyncio.Event() for agent in hold}

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.entered[request.agent] += 1
        gate = self.hold.get(request.agent)
        if gate is not None and not gate.is_set():
            self.waiting[request.agent].set()
            await gate.wait()
        return await self.scripted.complete(request)


def unpaired_tool_uses(messages: list[Turn]) -> list[str]:
    """The ids of tool calls with no result in the turn right after theirs (the API refuses them)."""
    missing: list[str] = []
    for turn, after in zip(messages, [*messages[1:], None], strict=True):
        results = after.content if after else []
        answered = {b.tool_use_id for b in results if isinstance(b, ToolResultBlock)}
        missing += [b.id for b in turn.content if isinstance(b, ToolUseBlock) and b.id not in answered]
    return missing


#: a failing test stops its workers at once, not after the default 30 s grace
QUICK_STOP = AgentSettings(grace=2.0)
SLOW = "t-toolu_slow"
FAST = "t-toolu_fast"


async def test_an_interrupted_thread_idles_while_the_other_finishes_and_a_follow_up_continues_it(
    bus: Bus,
) -> None:
    """``slow`` waits in a custom tool call (the caller never answers), ``fast`` in a model call.
    Interrupting ``slow`` ends its request; ``fast`` then answers, the lead sees both and sends
    ``slow`` a follow-up, which its model gets with the whole history, every tool call answered."""

    def follow_up(request: ModelRequest) -> ModelResponse:
        return calls(("toolu_fu", "message_agent", {"thread_id": SLOW, "message": "go on"}))

    scripted = ScriptedModel(
        {
            "lead": [
                calls(delegate("toolu_fast", "fast", "count"), delegate("toolu_slow", "slow", "approve it")),
                follow_up,
                text("done"),
            ],
            "fast": [text("fast answer")],
            "slow": [calls(("toolu_ap", "approve", {"change": "x"})), text("slow answer")],
        }
    )
    released = asyncio.Event()
    model = HeldModel(scripted, hold={"fast": released})
    spec = team("fast", "slow")
    slow_agent = msgspec.structs.replace(
        spec.agents[1], custom_tools=[CustomTool(name="approve", description="Ask for approval.")]
    )
    spec = msgspec.structs.replace(spec, agents=[spec.agents[0], slow_agent])
    request = SessionSubmit(task="x", team_spec=spec)
    sid = request.session_id
    waiting = await inbox(bus, bus.subjects.event(sid, "agent.custom_tool_use"), CustomToolUse)
    idled = await inbox(bus, bus.subjects.event(sid, "session.thread_status_idle"), ThreadStatusIdle)
    replies = await inbox(bus, bus.subjects.reply(sid, SLOW), ThreadReply)
    async with running_agents(bus, model, agents=["fast", "slow"], settings=QUICK_STOP):
        await submit(bus, request)
        async with asyncio.timeout(10):
            await waiting.next()  # slow waits for the caller's answer
            await model.waiting["fast"].wait()  # fast is in its model call
        await interrupt(bus, sid, SLOW, "wrong direction")
        reply = await replies.next()
        assert (reply.status, reply.in_reply_to) == ("interrupted", f"dlg-{sid}-{SLOW}")
        assert "interrupted by the user: wrong direction" in reply.text
        async with asyncio.timeout(10):
            while (event := await idled.next()).stop_reason != "interrupted":
                pass
        assert event.thread_id == SLOW
        assert not released.is_set()  # fast is still working: only slow was stopped
        released.set()
        result = await wait_result(bus, sid, timeout=20)
    assert (result.status, result.final_text) == ("idle", "done")

    fast_result, slow_result = tool_results(scripted.calls_by("lead")[1].request)
    assert fast_result.content.startswith(f"[thread {FAST} · agent fast · completed]\nfast answer")
    assert not slow_result.is_error  # an interrupt is not a failure
    assert slow_result.content.startswith(f"[thread {SLOW} · agent slow · interrupted]\n")
    assert "interrupted by the user: wrong direction" in slow_result.content
    assert f"call message_agent with thread_id {SLOW!r}" in slow_result.content

    first, second = scripted.calls_by("slow")
    assert first.thread_id == second.thread_id == SLOW
    messages = second.request.messages
    assert [t.role for t in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert (messages[0].text, messages[-1].text) == ("approve it", "go on")
    [closed] = [b for b in messages[2].content if isinstance(b, ToolResultBlock)]
    assert (closed.tool_use_id, closed.is_error) == ("toolu_ap", True)
    assert "interrupted by the user: wrong direction" in closed.content
    assert unpaired_tool_uses(messages) == []
    [answer] = tool_results(scripted.calls_by("lead")[2].request)
    assert f"[thread {SLOW} · agent slow · completed]\nslow answer" in answer.content
    scripted.assert_done()
    for box in (waiting, idled, replies):
        await box.close()


async def test_a_redelivered_request_is_not_run_again_and_an_idle_thread_ignores_interrupts(
    bus: Bus,
) -> None:
    """A worker alone, its model blocked until released: the delegation and then a follow-up are
    interrupted; a copy of the delegation is answered from the log; later follow-ups continue."""
    sid, thread = "ses_int", "t-int"
    await SessionDirectory(bus).start(sid, team("logs"), "x")
    released = asyncio.Event()
    scripted = ScriptedModel({"logs": [text("resumed"), text("third")]})
    model = HeldModel(scripted, hold={"logs": released})
    replies = await inbox(bus, bus.subjects.reply(sid, thread), ThreadReply)
    task = bus.subjects.task(sid, "logs")
    request = Delegation(session_id=sid, msg_id="dlg-int", thread_id=thread, agent="logs", task="find it")

    def follow_up(msg_id: str, message: str) -> FollowUp:
        return FollowUp(session_id=sid, msg_id=msg_id, thread_id=thread, agent="logs", message=message)

    async with running_agents(bus, model, lead=False, agents=["logs"], settings=QUICK_STOP):
        await bus.publish(task, request)
        async with asyncio.timeout(10):
            await model.waiting["logs"].wait()  # blocked in its model call
        await interrupt(bus, sid, thread, "enough")
        first = await replies.next()
        assert first.status == "interrupted"
        assert first.text.startswith("[stopped: interrupted by the user: enough]")

        # the same delegation again (past JetStream's dedup): answered from the log, not run again
        await bus.publish(task, request, msg_id="copy-1")
        again = await replies.next()
        assert (again.status, again.text, again.in_reply_to) == ("interrupted", first.text, "dlg-int")
        assert model.entered["logs"] == 1

        # a follow-up is interrupted the same way (here by an interrupt of every thread)
        model.waiting["logs"].clear()
        await bus.publish(task, follow_up("fup-1", "try again"))
        async with asyncio.timeout(10):
            await model.waiting["logs"].wait()
        await interrupt(bus, sid)
        second = await replies.next()
        assert (second.status, second.in_reply_to) == ("interrupted", "fup-1")
        assert second.text.startswith("[stopped: interrupted by the user]\n")

        released.set()
        await bus.publish(task, follow_up("fup-2", "go on"))
        resumed = await replies.next()
        assert (resumed.status, resumed.text) == ("completed", "resumed")
        [call] = scripted.calls_by("logs")
        assert [t.text for t in call.request.messages] == [
            "find it",
            "[stopped: interrupted by the user: enough]",
            "try again",
            "[stopped: interrupted by the user]",
            "go on",
        ]

        # no work in progress: the interrupt changes nothing, the next follow-up goes on as usual
        before = await ThreadLog(bus).load(sid, thread)
        await interrupt(bus, sid, thread, "too late")
        await round_trip(bus)  # the worker's watch has it before the follow-up below arrives
        await bus.publish(task, follow_up("fup-3", "more"))
        third = await replies.next()
        assert (third.status, third.text) == ("completed", "third")
    after = await ThreadLog(bus).load(sid, thread)
    assert after.entries[: len(before.entries)] == before.entries
    assert [(e.turn.role, e.turn.text, e.stop_reason) for e in after.entries[len(before.entries) :]] == [
        ("user", "more", ""),
        ("assistant", "third", "end_turn"),
    ]
    assert model.entered["logs"] == 4
    scripted.assert_done()
    await replies.close()


async def test_staffwork_interrupt_stops_one_thread_of_a_live_session(
    bus: Bus, nats_server: NatsServer, root: str
) -> None:
    """The lead and the workers are processes (``tests/agents_proc.py``: ``slow`` takes a minute per
    model call); the CLI interrupts ``slow`` and the session ends with its interrupted reply."""
    connect = ("--nats", nats_server.url, "--root", root)
    request = SessionSubmit(task="look", team_spec=team("fast", "slow"))
    sid = request.session_id
    started = await inbox(bus, bus.subjects.event(sid, "span.model_request_start"), ModelRequestStart)
    args = (nats_server.url, root, "--lead", "--agents", "fast,slow", "--slow", "slow=60")
    async with ready_process("tests.agents_proc", *args):
        await submit(bus, request)
        async with asyncio.timeout(10):
            while (await started.next()).thread_id != SLOW:
                pass
        # while slow works: a thread or a session that does not exist is one line and exit 1
        (no_thread, _, why_thread), (no_session, _, why_session) = await asyncio.gather(
            run_cli("interrupt", sid, "--thread", "t-nope", *connect),
            run_cli("interrupt", "ses_nope", *connect),
        )
        code, out, err = await run_cli("interrupt", sid, "--thread", SLOW, "--reason", "too slow", *connect)
        assert (code, out, err) == (0, f"{sid}: interrupted thread {SLOW}\n", "")
        result = await wait_result(bus, sid, timeout=10)  # long before slow's minute is up
        idle = await run_cli("interrupt", sid, *connect)
    assert result.status == "idle"
    assert "fast found look at fast" in result.final_text
    assert f"[thread {SLOW} · agent slow · interrupted]" in result.final_text
    assert "interrupted by the user: too slow" in result.final_text
    assert idle == (0, f"{sid}: not running (idle); nothing to interrupt\n", "")
    assert no_thread == no_session == 1
    assert why_thread.startswith(f"error: no thread 't-nope' in session {sid!r}")
    assert why_session.strip() == f"error: no session 'ses_nope' (under root {root!r})"
    await started.close()

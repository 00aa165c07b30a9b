"""Follow-up turns of a session (``session.message.v1`` through the gateway) and interrupting the
lead's turn: the lead continues with its whole history and its specialists' threads, each turn ends
with a result of its own, and a follow-up the session cannot take is refused with a clear kind."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from actors.agent.models.base import ModelRequest, ModelResponse
from actors.agent.models.scripted import ScriptedModel, calls, text
from actors.client import Client, SubmitRefused
from actors.roles import running_agents
from actors.sessions.cancel import cancel_session
from actors.sessions.directory import SessionDirectory
from bus.connection import Bus
from bus.history import ThreadLog
from schemas.conversation import ToolResultBlock, ToolUseBlock
from schemas.thread import LEAD_THREAD
from schemas.trace import SessionStatusIdle, SessionStatusTerminated, ThreadInterrupted, event_kind
from tests.helpers import NatsServer, run_cli, team, tool_results


class Gated:
    """The scripted model, except that the lead's ``block_at``-th call blocks until it is canceled."""

    name = "scripted"

    def __init__(self, inner: ScriptedModel, block_at: int) -> None:
        self.inner = inner
        self.block_at = block_at
        self.blocked = asyncio.Event()
        self._lead_calls = 0

    async def complete(self, request: ModelRequest) -> ModelResponse:
        if request.agent == "lead":
            self._lead_calls += 1
            if self._lead_calls == self.block_at:
                self.blocked.set()
                await asyncio.Event().wait()
        return await self.inner.complete(request)


def reuse_thread(request: ModelRequest) -> ModelResponse:
    """The lead's first call of turn 1: a follow-up to the thread it started in turn 0."""
    starts = [b for t in request.messages for b in t.content if isinstance(b, ToolResultBlock)]
    thread_id = starts[0].content.split()[1]  # "[thread <id> · agent ..."
    return calls(("toolu_fu", "message_agent", {"thread_id": thread_id, "message": "and the p99?"}))


async def test_a_follow_up_turn_keeps_the_leads_history_and_its_threads(bus: Bus) -> None:
    model = ScriptedModel(
        {
            "lead": [
                calls(("toolu_d", "delegate", {"agent": "metrics", "task": "p50 latency?"})),
                text("p50 is 120 ms"),
                reuse_thread,
                text("p99 is 900 ms"),
            ],
            "metrics": [text("p50: 120 ms"), text("p99: 900 ms")],
        }
    )
    client = Client(bus)
    async with running_agents(bus, model, agents=["metrics"]):
        sid = await client.submit("latency?", team=team("metrics"))
        first = await client.wait(sid, timeout=30)
        turn = await client.send(sid, "What about the tail?")
        second = await client.wait(sid, timeout=30, turn=turn)
    assert (first.turn, first.status, first.final_text) == (0, "idle", "p50 is 120 ms")
    assert (turn, second.turn, second.status, second.final_text) == (1, 1, "idle", "p99 is 900 ms")
    lead_turn_1 = model.calls_by("lead")[2].request.messages
    assert [t.text for t in lead_turn_1 if t.text][:2] == ["latency?", "p50 is 120 ms"]
    assert lead_turn_1[-1].text == "What about the tail?"
    first_call, second_call = model.calls_by("metrics")
    assert first_call.thread_id == second_call.thread_id  # the specialist's thread went on
    assert [t.text for t in second_call.request.messages] == ["p50 latency?", "p50: 120 ms", "and the p99?"]
    assert "p99: 900 ms" in tool_results(model.calls_by("lead")[3].request)[0].content
    record = await SessionDirectory(bus).get(sid)
    assert record is not None
    assert (record.turn, record.status, record.turn_text) == (
        1,
        "idle",
        "What about the tail?",
    )
    assert record.usage.input_tokens == second.usage.input_tokens  # the session's totals, all turns
    through_turn_1 = [e async for e in client.events(sid, turn=1)]
    idles = [e for e in through_turn_1 if isinstance(e, SessionStatusIdle) and e.thread_id == LEAD_THREAD]
    assert len(idles) == 2
    assert through_turn_1[-1] is idles[-1]
    model.assert_done()


async def test_follow_ups_the_session_cannot_take_are_refused_by_kind(bus: Bus) -> None:
    model = Gated(ScriptedModel({"lead": [text("first"), text("second")]}), block_at=3)
    client = Client(bus)

    async def refused(session_id: str, text_: str, turn: int | None = None) -> str:
        with pytest.raises(SubmitRefused) as caught:
            await client.send(session_id, text_, turn=turn)
        return f"{caught.value.kind}: {caught.value}"

    async with running_agents(bus, model, agents=[]):
        assert (await refused("ses_nothing", "hello")).startswith("unknown_session: no session 'ses_nothing'")
        sid = await client.submit("start", team=team())
        await client.wait(sid, timeout=30)
        assert "is on turn 0: its next follow-up is turn 1, not 3" in await refused(sid, "skip", turn=3)
        assert await client.send(sid, "again") == 1
        assert await client.send(sid, "again", turn=1) == 1  # the same follow-up twice: one turn
        conflict = await refused(sid, "other", turn=1)
        assert conflict.startswith("conflict: turn 1 of session")
        assert "'again'" in conflict
        assert (await client.wait(sid, timeout=30, turn=1)).final_text == "second"
        assert await client.send(sid, "third") == 2
        await asyncio.wait_for(model.blocked.wait(), 30)  # turn 2 is working
        assert (await refused(sid, "meanwhile")).startswith(f"busy: session {sid!r} is running (turn 2)")
        await cancel_session(bus, sid, "enough")
        ended = await client.wait(sid, timeout=30, turn=2)
        assert ended.status == "canceled"
        assert "takes no follow-ups" in await refused(sid, "after the end")
    assert len(model.inner.calls_by("lead")) == 2  # the duplicate ran no turn of its own


async def test_interrupting_the_lead_ends_its_turn_and_the_next_follow_up_goes_on(bus: Bus) -> None:
    model = Gated(
        ScriptedModel(
            {
                "lead": [
                    text("first answer"),
                    calls(("toolu_a", "delegate", {"agent": "metrics", "task": "look"})),
                    text("after the interrupt"),
                ],
                "metrics": [text("found it")],
            }
        ),
        block_at=3,  # turn 1: after the delegation's reply, the lead's model call hangs
    )
    client = Client(bus)
    async with running_agents(bus, model, agents=["metrics"]):
        sid = await client.submit("start", team=team("metrics"))
        await client.wait(sid, timeout=30)
        turn = await client.send(sid, "dig deeper")
        await asyncio.wait_for(model.blocked.wait(), 30)
        await client.interrupt(sid, reason="wrong direction", by="ana")
        interrupted = await client.wait(sid, timeout=30, turn=turn)
        assert (interrupted.status, interrupted.final_text) == (
            "idle",
            "[interrupted by the user: wrong direction]",
        )
        record = await SessionDirectory(bus).get(sid)
        assert record is not None
        assert (record.status, record.stop_reason) == ("idle", "interrupted")
        after = await client.wait(sid, timeout=30, turn=await client.send(sid, "summarise"))
    assert (after.status, after.final_text) == ("idle", "after the interrupt")
    history = await ThreadLog(bus).load(sid, LEAD_THREAD)
    uses = {b.id for e in history.entries for b in e.turn.content if isinstance(b, ToolUseBlock)}
    answered = {
        b.tool_use_id for e in history.entries for b in e.turn.content if isinstance(b, ToolResultBlock)
    }
    assert uses == answered  # every tool call has its result: a valid conversation to go on from
    stored = await bus.last(bus.subjects.event(sid, event_kind(ThreadInterrupted)))
    assert stored is not None
    who = msgspec.json.decode(stored, type=ThreadInterrupted)
    assert (who.thread_id, who.reason, who.by) == (LEAD_THREAD, "wrong direction", "ana")
    last_call = model.inner.calls_by("lead")[-1].request.messages
    assert last_call[-2].text == "[stopped: interrupted by the user: wrong direction]"
    assert last_call[-1].text == "summarise"


async def test_canceling_an_idle_session_ends_it(bus: Bus) -> None:
    model = ScriptedModel({"lead": [text("done")]})
    client = Client(bus)
    async with running_agents(bus, model, agents=[]):
        sid = await client.submit("start", team=team())
        await client.wait(sid, timeout=30)
        await client.cancel(sid, "no more")
        with pytest.raises(SubmitRefused, match=r"ended \(canceled: no more\): it takes no follow-ups"):
            await client.send(sid, "one more thing")
    stored = await bus.last(bus.subjects.event(sid, event_kind(SessionStatusTerminated)))
    assert stored is not None
    terminated = msgspec.json.decode(stored, type=SessionStatusTerminated)
    assert (terminated.thread_id, terminated.reason) == ("lead", "no more")


async def test_staffwork_send_takes_a_turn_and_prints_its_result(
    bus: Bus, nats_server: NatsServer, root: str
) -> None:
    model = ScriptedModel({"lead": [text("first"), text("the second answer")]})
    connect = ("--nats", nats_server.url, "--root", root)
    client = Client(bus)
    async with running_agents(bus, model, agents=[]):
        sid = await client.submit("start", team=team())
        await client.wait(sid, timeout=30)
        code, out, err = await run_cli("send", sid, "and then?", *connect)
        unknown = await run_cli("send", "ses_nope", "hello", *connect)
    assert (code, err) == (0, ""), err
    assert out.splitlines() == ["the second answer", f"status: idle   session: {sid}   turn: 1"]
    assert unknown[0] == 1
    assert unknown[2].strip() == f"error: no session 'ses_nope' (under root {root!r})"

"""Sessions, their events and threads through the HTTP API, with the official SDK as the client: a
coordinator agent with a specialist, a session with an outcome graded and revised, the stream
followed live and replayed after a reconnect, the list, the threads, and the errors the SDK types.

The SDK validates every answer strictly here (``_strict_response_validation``): an event or session
shape it does not model fails the test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic._models import validate_type
from anthropic.types.beta.sessions import BetaManagedAgentsSessionEvent

from actors.agent.models.base import ModelRequest, ModelResponse
from actors.agent.models.scripted import ScriptedModel, calls, text
from actors.api import threads
from actors.api.actor import ApiActor
from actors.api.events import Translator, event_id
from actors.roles import RoleConfig, running
from bus.connection import Bus
from schemas.base import ErrorInfo, Usage
from schemas.conversation import ToolResultBlock
from schemas.files import Provenance
from schemas.outcome import CriterionVerdict
from schemas.trace import (
    AgentMessage,
    AgentThinking,
    AgentToolResult,
    AgentToolUse,
    AnyTraceEvent,
    CustomToolUse,
    FileWritten,
    MessageRejected,
    ModelRequestEnd,
    ModelRequestStart,
    OutcomeEvaluationEnd,
    OutcomeEvaluationStart,
    SessionErrorEvent,
    SessionStatusIdle,
    SessionStatusRunning,
    SessionStatusTerminated,
    ThreadCreated,
    ThreadInterrupted,
    ThreadMessageReceived,
    ThreadMessageSent,
    ThreadStatusIdle,
    ThreadStatusRunning,
    ThreadStatusTerminated,
    ToolConfirmationAnswered,
    ToolConfirmationRequested,
    ToolDenied,
    ToolSourceFailed,
    UserEvent,
    WebhookDelivered,
)
from tests.helpers import API_KEY, NatsServer, eventually, fan_out_lead, nats_client

SID = "sesn_test"
NOW = datetime(2026, 12, 2, 10, 11, 12, 345000, tzinfo=UTC)
RUBRIC = "- The report names the failing build.\n- It cites a log line."


def strict(api: ApiActor) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=api.url, api_key=API_KEY, max_retries=0, _strict_response_validation=True
    )


# --- translation ------------------------------------------------------------------------------------


def trace() -> list[AnyTraceEvent]:
    """One of every trace event a session's log holds, in a plausible order."""
    lead: dict[str, Any] = {"session_id": SID, "time": NOW, "thread_id": "lead", "agent": "lead"}
    sub: dict[str, Any] = {"session_id": SID, "time": NOW, "thread_id": "t-toolu_1", "agent": "logs"}
    usage = Usage(input_tokens=10, output_tokens=5, cache_read_input_tokens=2, cost_usd=0.01)
    message = {"content": [{"type": "text", "text": "Why?"}]}
    return [
        UserEvent(**lead, event_type="user.message", payload=message),
        SessionStatusRunning(**lead),
        ModelRequestStart(**lead, model="claude-sonnet-4-6"),
        ModelRequestEnd(**lead, model="claude-sonnet-4-6", usage=usage, stop_reason="tool_use"),
        AgentThinking(**lead, text="hmm"),
        AgentToolUse(**lead, tool_use_id="toolu_1", name="delegate", input={"agent": "logs"}),
        ThreadMessageSent(**lead, to_thread_id="t-toolu_1", to_agent="logs", content="read it"),
        ThreadCreated(**sub, parent_thread_id="lead", task="read it"),
        ThreadStatusRunning(**sub),
        AgentToolUse(**sub, tool_use_id="toolu_2", name="fetch", input={}, kind="mcp", source="logs-mcp"),
        AgentToolResult(**sub, tool_use_id="toolu_2", content="line 3", kind="mcp"),
        ToolDenied(**sub, tool_use_id="toolu_3", name="bash"),
        ToolSourceFailed(**sub, kind="mcp", source="logs-mcp", message="it did not start"),
        CustomToolUse(**sub, tool_use_id="toolu_4", name="approve", input={"change": 1}),
        ThreadStatusIdle(**sub, stop_reason="requires_action"),
        UserEvent(**sub, event_type="user.custom_tool_result", payload={"custom_tool_use_id": "x"}),
        ThreadStatusRunning(**sub),
        AgentToolUse(
            **sub, tool_use_id="toolu_5", name="rollback", input={"d": 1}, evaluated_permission="ask"
        ),
        ToolConfirmationRequested(
            **sub, tool_use_id="toolu_5", name="rollback", answer_subject="x", timeout_s=9
        ),
        ThreadStatusIdle(**sub, stop_reason="requires_action"),
        ToolConfirmationAnswered(
            **sub, tool_use_id="toolu_5", result="deny", deny_message="not today", by="ana"
        ),
        ThreadInterrupted(**sub, reason="enough", by="ana"),
        ThreadStatusIdle(**sub, stop_reason="end_turn"),
        ThreadStatusTerminated(**sub, reason="done"),
        AgentMessage(**sub, text="build 2 failed"),
        AgentToolResult(**lead, tool_use_id="toolu_1", content="build 2 failed"),
        ThreadMessageReceived(**lead, from_thread_id="t-toolu_1", from_agent="logs", content="ok"),
        FileWritten(
            **lead, path="report.md", size=3, digest="SHA-256=x", provenance=Provenance(session_id=SID)
        ),
        AgentMessage(**lead, text="REPORT"),
        OutcomeEvaluationStart(**lead, outcome_id="outc_x", iteration=1),
        OutcomeEvaluationEnd(
            **lead,
            outcome_id="outc_x",
            iteration=1,
            result="satisfied",
            explanation="all met",
            criteria=[CriterionVerdict(criterion="names", kind="rubric", status="passed")],
        ),
        SessionErrorEvent(**lead, error=ErrorInfo(kind="model_error", message="overloaded", retryable=True)),
        WebhookDelivered(**lead, url="https://x", event_id="e", event_type="t", attempt=1, status_code=200),
        MessageRejected(**lead, subject="s", actor="a", reason="r", size=1),
        SessionStatusIdle(**lead, stop_reason="end_turn", usage=usage),
        SessionStatusIdle(**lead, stop_reason="deadline_reached"),
        SessionStatusTerminated(**lead, reason="deadline_reached"),
    ]


def test_every_trace_event_is_an_sdk_session_event_or_is_left_out() -> None:
    events = trace()
    translator = Translator()
    shown = [(event, api) for event in events for api in translator(event)]
    for _, api in shown:
        parsed: Any = validate_type(type_=BetaManagedAgentsSessionEvent, value=api.data)  # type: ignore[arg-type]
        assert parsed.type == api.type, api.data
        assert api.data["processed_at"] == "2026-12-02T10:11:12.345Z"
    kinds = {type(event).__name__ for event, _ in shown}
    assert kinds.isdisjoint({"FileWritten", "WebhookDelivered", "MessageRejected", "ToolDenied"})
    by_type = {api.type: api.data for _, api in shown}
    # ids come from the trace event: stable everywhere it is shown
    assert by_type["agent.message"]["id"] == event_id(events[-9].msg_id)
    use = next(api.data for e, api in shown if isinstance(e, AgentToolUse) and e.kind == "builtin")
    assert by_type["agent.tool_result"]["tool_use_id"] == use["id"]  # a result names its call's event
    assert by_type["agent.mcp_tool_use"]["mcp_server_name"] == "logs-mcp"
    assert by_type["agent.mcp_tool_result"]["mcp_tool_use_id"] == by_type["agent.mcp_tool_use"]["id"]
    assert by_type["agent.custom_tool_use"]["session_thread_id"] == "t-toolu_1"
    start = by_type["span.model_request_start"]["id"]
    assert by_type["span.model_request_end"]["model_request_start_id"] == start
    assert by_type["span.model_request_end"]["model_usage"]["input_tokens"] == 10
    assert by_type["session.thread_created"] == by_type["session.thread_created"] | {
        "session_thread_id": "t-toolu_1",
        "agent_name": "logs",
    }
    waiting = [a.data for _, a in shown if a.data.get("stop_reason", {}).get("type") == "requires_action"]
    assert [w["type"] for w in waiting] == ["session.thread_status_idle", "session.status_idle"] * 2
    assert waiting[0]["stop_reason"]["event_ids"] == [by_type["agent.custom_tool_use"]["id"]]
    # a call that waits for a confirmation: its tool_use (on the primary view too) is what is answered
    [ask] = [a for e, a in shown if isinstance(e, AgentToolUse) and e.evaluated_permission == "ask"]
    assert ask.primary
    assert (ask.data["evaluated_permission"], ask.data["evaluation"]) == ("ask", {"type": "always_ask"})
    assert waiting[2]["stop_reason"]["event_ids"] == [ask.data["id"]]
    confirmed = by_type["user.tool_confirmation"]
    assert (confirmed["tool_use_id"], confirmed["result"]) == (ask.data["id"], "deny")
    assert (confirmed["deny_message"], confirmed["session_thread_id"]) == ("not today", "t-toolu_1")
    assert "ThreadInterrupted" not in kinds
    assert by_type["session.error"]["error"]["type"] == "unknown_error"
    errors = [a.data["error"] for _, a in shown if a.type == "session.error"]
    assert errors[0] == errors[0] | {"type": "mcp_connection_failed_error", "mcp_server_name": "logs-mcp"}
    assert (
        by_type["span.outcome_evaluation_end"]["outcome_evaluation_start_id"]
        == (by_type["span.outcome_evaluation_start"]["id"])
    )
    idles = [a.data for _, a in shown if a.type == "session.status_idle" and not a.thread_id.startswith("t-")]
    assert idles[-1]["stop_reason"] == {
        "type": "retries_exhausted",
        "staffwork_stop_reason": "deadline_reached",
    }
    # the primary view: a subagent's own messages and calls are on its thread only
    primary = {a.type for _, a in shown if a.primary}
    assert "agent.mcp_tool_use" not in primary
    assert {"session.thread_created", "agent.custom_tool_use", "session.thread_status_idle"} <= primary
    assert len({a.data["id"] for _, a in shown}) == len(shown)  # no two share an id


# --- a session end to end ---------------------------------------------------------------------------


def specialist(request: ModelRequest) -> ModelResponse:
    return text(f"{request.agent}: build 2 failed at line 3")


def grades(passed: bool, explanation: str) -> ModelResponse:
    criteria = [{"index": i, "passed": passed, "explanation": explanation} for i in (1, 2)]
    usage = Usage(input_tokens=900, output_tokens=60, cost_usd=0.0036)
    return calls(("toolu_g", "submit_grades", {"criteria": criteria, "contradiction": ""}), usage=usage)


@asynccontextmanager
async def team_running(bus: Bus, model: ScriptedModel) -> AsyncIterator[None]:
    async with running(bus, ["lead", "subagent", "grader"], RoleConfig(model=model, agents=("log-reader",))):
        yield


async def coordinator(sdk: anthropic.AsyncAnthropic) -> tuple[str, str]:
    """An environment and a coordinator agent with one specialist: their ids."""
    b = sdk.beta
    env = await b.environments.create(
        name="demo", config={"type": "cloud", "networking": {"type": "unrestricted"}}
    )
    tools: Any = [{"type": "agent_toolset_20260401"}]
    worker = await b.agents.create(
        name="log-reader", model="claude-sonnet-4-6", system="Read logs.", tools=tools
    )
    lead = await b.agents.create(
        name="lead",
        model="claude-sonnet-4-6",
        system="Delegate, merge.",
        tools=tools,
        multiagent={"type": "coordinator", "agents": [worker.id]},
    )
    return env.id, lead.id


async def read_until_idle(stream: Any) -> list[Any]:
    seen = []
    async with asyncio.timeout(20):
        async for event in stream:
            seen.append(event)
            if event.type == "session.status_idle" and event.stop_reason.type != "requires_action":
                return seen
    raise AssertionError(f"the stream ended before the session went idle: {[e.type for e in seen]}")


async def test_a_coordinator_session_with_an_outcome_streams_replays_and_lists(
    bus: Bus, api: ApiActor
) -> None:
    lead_steps = [
        *fan_out_lead(["log-reader"]),
        text("REPORT v2: build 2, line 3"),
        text("Build 3 failed on the same line"),
    ]
    model = ScriptedModel(
        {"lead": lead_steps, "grader": [grades(False, "no log line"), grades(True, "cites line 3")]},
        responder=specialist,
    )
    async with strict(api) as sdk, team_running(bus, model):
        b = sdk.beta
        env_id, agent_id = await coordinator(sdk)
        session = await b.sessions.create(agent=agent_id, environment_id=env_id, title="builds")
        assert (session.status, session.agent.id, session.title) == ("idle", agent_id, "builds")
        assert session.agent.multiagent is not None
        async with await b.sessions.events.stream(session.id) as stream:  # open first, as hosted
            sent = await b.sessions.events.send(
                session.id,
                events=[
                    {"type": "user.message", "content": [{"type": "text", "text": "Why did build 2 fail?"}]},
                    {
                        "type": "user.define_outcome",
                        "description": "a root-cause report",
                        "rubric": {"type": "text", "content": RUBRIC},
                        "max_iterations": 3,
                    },
                ],
            )
            live = await read_until_idle(stream)
        assert sent.data is not None
        message, outcome = sent.data
        assert message.type == "user.message"
        assert outcome.type == "user.define_outcome"
        assert outcome.outcome_id == f"outc_{session.id}"
        types = [e.type for e in live]
        assert types[0] == "user.message"
        assert live[0].id == message.id
        assert {"session.status_running", "session.thread_created", "agent.thread_message_received"} <= set(
            types
        )
        ends = [e for e in live if e.type == "span.outcome_evaluation_end"]
        assert [(e.result, e.outcome_id) for e in ends] == [
            ("needs_revision", outcome.outcome_id),
            ("satisfied", outcome.outcome_id),
        ]
        assert "agent.message" in types
        assert types[-1] == "session.status_idle"

        listed = [e async for e in b.sessions.events.list(session.id, limit=1000)]
        assert [e.id for e in listed] == [e.id for e in live]
        only = [e async for e in b.sessions.events.list(session.id, types=["agent.message"], order="desc")]
        assert [e.id for e in only] == [e.id for e in reversed(live) if e.type == "agent.message"]
        paged = b.sessions.events.list(session.id, limit=3)
        assert [e.id async for e in paged] == [e.id for e in live]

        replay_all = {"replay": "all"}
        async with await b.sessions.events.stream(session.id, extra_query=replay_all) as again:
            replayed = await read_until_idle(again)  # after the end, asked for: everything stored
        assert [e.id for e in replayed] == [e.id for e in live]

        done = await b.sessions.retrieve(session.id)
        assert done.status == "idle"
        assert (done.usage.input_tokens, done.usage.output_tokens) == (1800, 120)  # the grader's two calls
        assert done.usage.list_cost is not None
        assert done.usage.list_cost.amount == "1"
        [evaluation] = done.outcome_evaluations
        assert (evaluation.result, evaluation.iteration) == ("satisfied", 2)

        thread_list = [t async for t in b.sessions.threads.list(session.id)]
        primary, worker = thread_list
        assert (primary.parent_thread_id, worker.parent_thread_id) == (None, primary.id)
        assert worker.agent.type == "agent"
        assert worker.agent.name == "log-reader"
        assert worker.status in ("idle", "terminated")
        created = next(e for e in live if e.type == "session.thread_created")
        assert created.session_thread_id == worker.id
        own = [e async for e in b.sessions.threads.events.list(worker.id, session_id=session.id)]
        assert "agent.message" in {e.type for e in own}
        assert (await b.sessions.threads.retrieve(worker.id, session_id=session.id)).id == worker.id

        async with await b.sessions.events.stream(session.id) as follow:  # idle: from now on
            more: Any = [{"type": "user.message", "content": [{"type": "text", "text": "And build 3?"}]}]
            [asked] = (await b.sessions.events.send(session.id, events=more)).data or []
            turn = await read_until_idle(follow)
        assert turn[0].id == asked.id  # not the first turn's events again
        assert [e.content[0].text for e in turn if e.type == "agent.message"] == [
            "Build 3 failed on the same line"
        ]
        history = [t.text for t in model.calls_by("lead")[-1].request.messages]
        assert history[0] == "Why did build 2 fail?"
        assert history[-1] == "And build 3?"
        assert "REPORT v2: build 2, line 3" in history
        assert (await b.sessions.retrieve(session.id)).status == "idle"
        listed_sessions = [s.id async for s in b.sessions.list()]
        assert session.id in listed_sessions
        archived = await b.sessions.archive(session.id)
        assert archived.archived_at is not None
        assert session.id not in [s.id async for s in b.sessions.list()]
    model.assert_done()


class HoldFirst:
    """The scripted model, except that ``agent``'s first call waits until it is canceled."""

    name = "scripted"

    def __init__(self, inner: ScriptedModel, agent: str) -> None:
        self.inner, self.agent = inner, agent
        self.held = asyncio.Event()

    async def complete(self, request: ModelRequest) -> ModelResponse:
        if request.agent == self.agent and not self.held.is_set():
            self.held.set()
            await asyncio.Event().wait()
        return await self.inner.complete(request)


def ask_again(request: ModelRequest) -> ModelResponse:
    """The lead's first call of a follow-up turn: a follow-up to the thread it started before."""
    first = next(b for t in request.messages for b in t.content if isinstance(b, ToolResultBlock))
    thread_id = first.content.split()[1]  # "[thread <id> · agent ..."
    return calls(("toolu_again", "message_agent", {"thread_id": thread_id, "message": "Now read the log."}))


async def test_one_thread_interrupted_then_continued_by_a_follow_up(bus: Bus, api: ApiActor) -> None:
    """A specialist stuck in its work is interrupted alone: the lead hears it was and ends its turn;
    a stream opened in the middle of the turn replays it from its start; the follow-up turn continues
    the interrupted thread with its history."""
    model = HoldFirst(
        ScriptedModel(
            {
                "lead": [
                    *fan_out_lead(["log-reader"]),
                    ask_again,
                    text("line 3 of build 2"),
                ],
                "log-reader": [text("build 2 failed at line 3")],
            }
        ),
        "log-reader",
    )
    async with strict(api) as sdk, team_running(bus, model):  # type: ignore[arg-type]
        b = sdk.beta
        env_id, agent_id = await coordinator(sdk)
        session = await b.sessions.create(agent=agent_id, environment_id=env_id)
        message: Any = {
            "type": "user.message",
            "content": [{"type": "text", "text": "Why did build 2 fail?"}],
        }
        await b.sessions.events.send(session.id, events=[message])
        await asyncio.wait_for(model.held.wait(), 20)  # the specialist is stuck
        async with await b.sessions.events.stream(session.id) as late:  # opened mid-turn: replayed
            seen = [await anext(aiter(late)) for _ in range(3)]
            assert [e.type for e in seen][:1] == ["user.message"]
            [thread] = [t async for t in b.sessions.threads.list(session.id) if t.parent_thread_id]
            stop: Any = {"type": "user.interrupt", "session_thread_id": thread.id}
            [echo] = (await b.sessions.events.send(session.id, events=[stop])).data or []
            assert echo.type == "user.interrupt"
            rest = await read_until_idle(late)
        types = [e.type for e in seen + rest]
        assert "session.thread_status_idle" in types
        assert types[-1] == "session.status_idle"
        received = [e for e in rest if e.type == "agent.thread_message_received"]
        assert "interrupted" in received[0].content[0].text
        assert (await b.sessions.threads.retrieve(thread.id, session_id=session.id)).status == "idle"
        assert (await b.sessions.retrieve(session.id)).status == "idle"

        async with await b.sessions.events.stream(session.id) as follow:
            more: Any = {"type": "user.message", "content": [{"type": "text", "text": "Try again."}]}
            await b.sessions.events.send(session.id, events=[more])
            turn = await read_until_idle(follow)
        said = [e.content[0].text for e in turn if e.type == "agent.message"]
        assert said == ["line 3 of build 2"]
        [continued] = model.inner.calls_by("log-reader")
        assert continued.thread_id == thread.id
        history = [t.text for t in continued.request.messages]
        assert history[0] == "task for log-reader"
        assert history[-1] == "Now read the log."
        assert any("interrupted by the user" in line for line in history)


async def test_unknown_ids_and_bad_events_are_the_sdks_errors(sdk: anthropic.AsyncAnthropic) -> None:
    b = sdk.beta
    with pytest.raises(anthropic.NotFoundError, match="session 'sesn_nope' not found"):
        await b.sessions.retrieve("sesn_nope")
    with pytest.raises(anthropic.NotFoundError):
        await b.sessions.events.list("sesn_nope")
    env = await b.environments.create(name="e")
    with pytest.raises(anthropic.NotFoundError, match="agent 'agent_nope' not found"):
        await b.sessions.create(agent="agent_nope", environment_id=env.id)
    env_id, agent_id = await coordinator(sdk)
    session = await b.sessions.create(agent=agent_id, environment_id=env_id)
    with pytest.raises(anthropic.BadRequestError, match=r"events\[0\]"):
        await b.sessions.events.send(session.id, events=[{"type": "user.message"}])  # type: ignore[typeddict-item]
    image: Any = {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}
    with pytest.raises(anthropic.BadRequestError, match=r"events\[0\].content\[0\]: only text blocks"):
        await b.sessions.events.send(session.id, events=[{"type": "user.message", "content": [image]}])
    with pytest.raises(
        anthropic.BadRequestError, match=r"events\[0\]: session .* has not started: no tool call"
    ):
        await b.sessions.events.send(
            session.id, events=[{"type": "user.tool_confirmation", "tool_use_id": "x", "result": "allow"}]
        )
    with pytest.raises(anthropic.BadRequestError, match="only memory_store resources"):
        await b.sessions.create(
            agent=agent_id, environment_id=env_id, resources=[{"type": "file", "file_id": "file_1"}]
        )
    with pytest.raises(anthropic.NotFoundError, match="thread 'nope'"):
        await b.sessions.threads.retrieve("nope", session_id=session.id)
    assert [t async for t in b.sessions.threads.list(session.id)] == []  # not started: no thread yet
    assert [e async for e in b.sessions.events.list(session.id)] == []


async def consumers(server: NatsServer, bus: Bus) -> int:
    async with nats_client(server.url) as nc:
        info = await nc.jetstream().stream_info(bus.subjects.log_stream)
    return int(info.state.consumer_count or 0)


async def test_a_stream_leaves_nothing_behind_when_the_client_goes_away(
    nats_server: NatsServer, bus: Bus, api: ApiActor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pings while nothing happens; on disconnect the consumer and every task of the stream end."""
    monkeypatch.setattr(threads, "PING_SECONDS", 0.05)
    async with strict(api) as sdk:
        idle_consumers = await consumers(nats_server, bus)
        env_id, agent_id = await coordinator(sdk)
        session = await sdk.beta.sessions.create(agent=agent_id, environment_id=env_id)
        await asyncio.sleep(0)
        before = len(asyncio.all_tasks())
        url = f"{api.url}/v1/sessions/{session.id}/events/stream"
        chunks = []
        async with (
            httpx2.AsyncClient(headers={"x-api-key": API_KEY}) as http,
            http.stream("GET", url) as response,
        ):
            assert response.headers["content-type"].startswith("text/event-stream")
            async with asyncio.timeout(5):
                async for chunk in response.aiter_text():
                    chunks.append(chunk)
                    if "".join(chunks).count("event: ping") >= 3:
                        break
            assert await consumers(nats_server, bus) == idle_consumers + 1  # the stream's own
        assert "".join(chunks).startswith("event: ping\n")
        await eventually(lambda: len(asyncio.all_tasks()) <= before, timeout=5)  # the stream's tasks end
        # its subscription is gone at once; the server drops the ordered consumer ~5 s after that
        async with asyncio.timeout(15):
            while await consumers(nats_server, bus) > idle_consumers:  # noqa: ASYNC110 - server state
                await asyncio.sleep(0.2)


async def test_a_specialists_call_waits_for_a_confirmation_and_a_denial_reaches_its_model(
    bus: Bus, api: ApiActor
) -> None:
    """A specialist whose ``read`` tool is ``always_ask``: its call shows on the primary stream as an
    ``agent.tool_use`` with ``evaluated_permission: ask``, the session idles ``requires_action`` naming
    it, and the SDK's ``user.tool_confirmation`` deny reaches the specialist's model as the call's
    error result, with the reason."""
    model = ScriptedModel(
        {
            "lead": fan_out_lead(["log-reader"]),
            "log-reader": [
                calls(("toolu_read", "read_file", {"path": "build-2.log"})),
                text("I was not allowed to read the log"),
            ],
        }
    )
    async with strict(api) as sdk, team_running(bus, model):
        b = sdk.beta
        env = await b.environments.create(name="demo")
        ask: Any = [
            {
                "type": "agent_toolset_20260401",
                "configs": [{"name": "read", "permission_policy": {"type": "always_ask"}}],
            }
        ]
        worker = await b.agents.create(name="log-reader", model="claude-sonnet-4-6", tools=ask)
        lead = await b.agents.create(
            name="lead", model="claude-sonnet-4-6", multiagent={"type": "coordinator", "agents": [worker.id]}
        )
        session = await b.sessions.create(agent=lead.id, environment_id=env.id)
        async with await b.sessions.events.stream(session.id) as stream:
            message: Any = {"type": "user.message", "content": [{"type": "text", "text": "Read build 2."}]}
            await b.sessions.events.send(session.id, events=[message])
            waiting: list[Any] = []
            async with asyncio.timeout(20):
                async for event in stream:
                    waiting.append(event)
                    if event.type == "session.status_idle":
                        break
            idle = waiting[-1]
            assert idle.stop_reason.type == "requires_action"
            [use] = [e for e in waiting if e.type == "agent.tool_use" and e.evaluated_permission == "ask"]
            assert use.name == "read"  # as hosted: the toolset's name of the staffwork read_file
            assert idle.stop_reason.event_ids == [use.id]
            assert use.session_thread_id is not None
            no: Any = {
                "type": "user.tool_confirmation",
                "tool_use_id": use.id,
                "result": "deny",
                "deny_message": "not that log",
            }
            [echo] = (await b.sessions.events.send(session.id, events=[no])).data or []
            assert echo.type == "user.tool_confirmation"
            assert echo.result == "deny"
            rest = await read_until_idle(stream)
        assert [e.type for e in rest][:3] == [
            "user.tool_confirmation",
            "session.thread_status_running",
            "session.status_running",
        ]
        assert rest[0].id == echo.id
        with pytest.raises(anthropic.ConflictError):  # answered already: nothing waits
            await b.sessions.events.send(session.id, events=[no])
        said = [e.content[0].text for e in rest if e.type == "agent.message"]
        assert said[-1].startswith("REPORT")
        [_, after] = model.calls_by("log-reader")
        [result] = [b for t in after.request.messages for b in t.content if isinstance(b, ToolResultBlock)]
        assert result.is_error
        assert "not that log" in result.content
    model.assert_done()

"""OTLP export: a recorded session as GenAI spans, posted to a local OTLP/HTTP receiver; end to end
through the collector on a real NATS server; a dead or silent receiver never stops the collector."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import subprocess
import sys
import tracemalloc
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec
import pytest
import structlog

from actors.collector.otlp import OtlpExporter, SpanBuilder, trace_id, traces_url
from bus.connection import Bus
from schemas.base import ErrorInfo, Usage
from schemas.trace import (
    AgentMessage,
    AgentToolResult,
    AgentToolUse,
    AnyTraceEvent,
    ModelRequestEnd,
    ModelRequestStart,
    SessionErrorEvent,
    SessionStatusIdle,
    SessionStatusRunning,
    ThreadCreated,
    ThreadMessageReceived,
    ThreadMessageSent,
    ThreadStatusIdle,
    ThreadStatusRunning,
)
from tests.helpers import (
    ROOT_DIR,
    NatsServer,
    collector,
    eventually,
    free_port,
    incident_trace,
    ready_process,
)

SESSION = "ses_06gvsfov1j4bu4cg8u176c2npo"
LEAD_SPAN = "aaaa6b95450b8c70"
SUBAGENTS = {"deploys", "logs", "metrics", "tickets"}
SPANS = 28  # 5 invoke_agent + 10 chat + 13 execute_tool


# --- a local OTLP/HTTP receiver ----------------------------------------------------------------------


@dataclass
class Post:
    path: str
    headers: dict[str, str]
    raw: bytes
    status: int
    at: float  # the event loop's time when it arrived

    @property
    def spans(self) -> list[dict[str, Any]]:
        body = json.loads(self.raw)
        return [
            span
            for resource in body["resourceSpans"]
            for scope in resource["scopeSpans"]
            for span in scope["spans"]
        ]


class Receiver:
    """Records every POST; answers the ``statuses`` given in turn (a status, or a status and headers),
    then 200 ``{}``."""

    def __init__(self, statuses: Iterable[int | tuple[int, dict[str, str]]] = ()) -> None:
        self.posts: list[Post] = []
        self.statuses = list(statuses)
        self.changed = asyncio.Condition()
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Receiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def spans(self) -> list[dict[str, Any]]:
        """The spans of the posts answered 200."""
        return [span for post in self.posts if post.status == 200 for span in post.spans]

    async def wait_for_spans(self, count: int, timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(lambda: len(self.spans()) >= count)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            _, path, _ = head[0].split(" ", 2)
            headers = {}
            for line in head[1:]:
                if line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            raw = await reader.readexactly(int(headers.get("content-length", "0")))
            at = asyncio.get_running_loop().time()
            answer = self.statuses.pop(0) if self.statuses else 200
            status, extra = answer if isinstance(answer, tuple) else (answer, {})
            lines = "".join(f"{name}: {value}\r\n" for name, value in extra.items())
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
                f"{lines}Connection: close\r\n\r\n{{}}".encode()
            )
            await writer.drain()
            async with self.changed:
                self.posts.append(Post(path=path, headers=headers, raw=raw, status=status, at=at))
                self.changed.notify_all()
        except asyncio.IncompleteReadError:
            pass  # the client hung up
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


# --- helpers -----------------------------------------------------------------------------------------


def attributes(item: dict[str, Any]) -> dict[str, Any]:
    """An OTLP/JSON attribute list as a dict of plain values (checking the JSON mapping on the way)."""

    def plain(value: dict[str, Any]) -> Any:
        [(kind, inner)] = value.items()
        if kind == "intValue":
            assert isinstance(inner, str), "int64 values are strings in OTLP/JSON"
            return int(inner)
        if kind == "arrayValue":
            return [plain(v) for v in inner["values"]]
        assert kind in ("stringValue", "doubleValue", "boolValue"), kind
        return inner

    return {attribute["key"]: plain(attribute["value"]) for attribute in item["attributes"]}


def nanos(time: datetime) -> int:
    return (time - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


def by_kind(spans: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        found.setdefault(span["name"].split(" ", 1)[0], []).append(span)
    return found


def check_session_spans(spans: list[dict[str, Any]], session_id: str) -> None:
    """The fixture session's spans: the tree, the GenAI attributes, times."""
    kinds = by_kind(spans)
    assert {kind: len(found) for kind, found in kinds.items()} == {
        "invoke_agent": 5,
        "chat": 10,
        "execute_tool": 13,
    }
    expected_trace = hashlib.sha256(session_id.encode()).hexdigest()[:32]
    assert {span["traceId"] for span in spans} == {expected_trace}
    assert len({span["spanId"] for span in spans}) == SPANS
    for span in spans:
        assert len(span["spanId"]) == 16
        assert int(span["startTimeUnixNano"]) <= int(span["endTimeUnixNano"])
        assert attributes(span)["gen_ai.conversation.id"] == session_id

    agents = {attributes(span)["gen_ai.agent.name"]: span for span in kinds["invoke_agent"]}
    assert set(agents) == {"lead", *SUBAGENTS}
    lead = agents["lead"]
    assert lead["spanId"] == LEAD_SPAN
    assert "parentSpanId" not in lead  # its parent, the client's submit span, is not exported
    for name in SUBAGENTS:
        assert agents[name]["parentSpanId"] == LEAD_SPAN
    run_of_thread = {}
    for span in kinds["invoke_agent"]:
        values = attributes(span)
        assert span["kind"] == 1
        assert span["name"] == f"invoke_agent {values['gen_ai.agent.name']}"
        assert values["gen_ai.operation.name"] == "invoke_agent"
        run_of_thread[values["staffwork.thread_id"]] = span["spanId"]
    assert int(lead["startTimeUnixNano"]) == 1795266912106822000  # session.status_running
    assert int(lead["endTimeUnixNano"]) == 1795266919676378000  # session.status_idle

    for span in kinds["chat"]:
        values = attributes(span)
        assert span["kind"] == 3
        assert span["name"] == "chat claude-sonnet-4-6"
        assert span["parentSpanId"] == run_of_thread[values["staffwork.thread_id"]]
        assert values["gen_ai.operation.name"] == "chat"
        assert values["gen_ai.provider.name"] == "anthropic"
        assert values["gen_ai.request.model"] == "claude-sonnet-4-6"
        assert values["gen_ai.response.model"] == "offline"
        assert values["gen_ai.usage.input_tokens"] == 0
        assert values["gen_ai.usage.output_tokens"] == 0
        assert values["gen_ai.response.finish_reasons"] in (["tool_use"], ["end_turn"])
        assert "status" not in span
    assert Counter(attributes(s)["gen_ai.agent.name"] for s in kinds["chat"]) == dict.fromkeys(agents, 2)

    for span in kinds["execute_tool"]:
        values = attributes(span)
        assert span["kind"] == 1
        assert span["name"] == f"execute_tool {values['gen_ai.tool.name']}"
        assert span["parentSpanId"] == run_of_thread[values["staffwork.thread_id"]]
        assert values["gen_ai.operation.name"] == "execute_tool"
        assert values["gen_ai.tool.call.id"].startswith("toolu_off_")
        assert "status" not in span
    calls = Counter(
        (attributes(s)["gen_ai.agent.name"], attributes(s)["gen_ai.tool.name"]) for s in kinds["execute_tool"]
    )
    assert calls == {
        ("lead", "delegate"): 4,
        ("deploys", "sql"): 2,
        ("logs", "sql"): 2,
        ("logs", "grep"): 1,
        ("metrics", "sql"): 2,
        ("tickets", "sql"): 2,
    }


def content_of(events: list[AnyTraceEvent]) -> list[str]:
    """The prompts, completions, tool inputs and outputs of ``events`` (long enough to search for)."""
    texts: list[str] = []
    for event in events:
        match event:
            case ThreadCreated(task=text) | AgentMessage(text=text) | AgentToolResult(content=text):
                texts.append(text)
            case ThreadMessageSent(content=text) | ThreadMessageReceived(content=text):
                texts.append(text)
            case AgentToolUse(input=arguments):
                texts.extend(str(value) for value in arguments.values())
    return [text for text in texts if len(text) >= 20]


# --- tests -------------------------------------------------------------------------------------------


def test_the_traces_endpoint_is_appended_once() -> None:
    assert traces_url("http://otel:4318") == "http://otel:4318/v1/traces"
    assert traces_url("http://otel:4318/") == "http://otel:4318/v1/traces"
    assert traces_url("http://otel:4318/v1/traces") == "http://otel:4318/v1/traces"
    assert traces_url("https://x.example/otlp") == "https://x.example/otlp/v1/traces"
    with pytest.raises(ValueError, match="http"):
        OtlpExporter("grpc://otel:4317")


async def test_a_recorded_session_is_exported_as_genai_spans() -> None:
    events = incident_trace(SESSION)
    async with Receiver() as receiver:
        exporter = OtlpExporter(receiver.url, service_name="staffwork-test")
        await exporter.start()
        for event in events:
            exporter.add(event)
        await exporter.close()
    assert exporter.exported == SPANS
    assert exporter.dropped == 0
    assert receiver.posts
    for post in receiver.posts:
        assert post.path == "/v1/traces"
        assert post.headers["content-type"] == "application/json"
        body = json.loads(post.raw)
        [resource] = body["resourceSpans"]
        assert attributes(resource["resource"]) == {"service.name": "staffwork-test"}
        [scope] = resource["scopeSpans"]
        assert scope["scope"]["name"] == "staffwork"
    spans = receiver.spans()
    check_session_spans(spans, SESSION)
    assert {span["traceId"] for span in spans} == {trace_id(SESSION)}
    raw = b"".join(post.raw for post in receiver.posts).decode()
    texts = content_of(events)
    assert len(texts) > 20
    leaked = [text[:40] for text in texts if text in raw]
    assert not leaked, leaked  # no prompt, completion, tool input or output
    assert "Payments are failing" not in raw
    keys = {key for span in spans for key in attributes(span)}
    assert not {k for k in keys if "messages" in k or "arguments" in k or "call.result" in k}


def test_span_ids_do_not_depend_on_event_order_or_redelivery() -> None:
    events = incident_trace(SESSION)
    in_order = SpanBuilder()
    expected = {span["spanId"]: span["name"].split()[0] for event in events for span in in_order.add(event)}
    assert len(expected) == SPANS

    shuffled = [*events, *random.Random(7).sample(events, 20)]  # some delivered twice
    random.Random(11).shuffle(shuffled)
    builder = SpanBuilder()
    found = [span for event in shuffled for span in builder.add(event)]
    # (a chat span whose start came after its end names the model that answered: the request is unknown)
    assert {span["spanId"]: span["name"].split()[0] for span in found} == expected
    assert all(int(s["startTimeUnixNano"]) <= int(s["endTimeUnixNano"]) for s in found)
    assert {span["traceId"] for span in found} == {trace_id(SESSION)}


def test_errors_mark_their_spans_and_secrets_stay_out() -> None:
    t0 = datetime(2026, 11, 21, 13, 0, tzinfo=UTC)
    ms = timedelta(milliseconds=1)
    run: dict[str, Any] = {
        "session_id": "ses_err",
        "thread_id": "lead",
        "agent": "lead",
        "span_id": "1111111111111111",
        "parent_span_id": "2222222222222222",
    }
    error = ErrorInfo(kind="ModelFatal", message="the key sk-ant-api03-abcdefghijklmnopqrst was refused")
    usage = Usage(
        input_tokens=10, output_tokens=7, cache_read_input_tokens=100, cache_creation_input_tokens=5
    )
    events: list[AnyTraceEvent] = [
        SessionStatusRunning(time=t0, **run),
        ModelRequestStart(model="claude-x", time=t0 + ms, **run),
        ModelRequestEnd(model="claude-x-1", stop_reason="tool_use", usage=usage, time=t0 + 2 * ms, **run),
        AgentToolUse(tool_use_id="toolu_1", name="sql", input={"query": "SELECT 1"}, time=t0 + 3 * ms, **run),
        AgentToolResult(
            tool_use_id="toolu_1", is_error=True, content="no such table", time=t0 + 4 * ms, **run
        ),
        ModelRequestStart(model="claude-x", time=t0 + 5 * ms, **run),
        ModelRequestEnd(model="claude-x", error=error, duration_ms=1.0, time=t0 + 6 * ms, **run),
        SessionStatusIdle(stop_reason="failed", time=t0 + 7 * ms, **run),
    ]
    builder = SpanBuilder()
    spans = by_kind([span for event in events for span in builder.add(event)])
    first, failed = spans["chat"]
    values = attributes(first)
    assert values["gen_ai.usage.input_tokens"] == 115  # Anthropic's input_tokens plus cached tokens
    assert values["gen_ai.usage.cache_read.input_tokens"] == 100
    assert values["gen_ai.usage.cache_creation.input_tokens"] == 5
    assert values["gen_ai.usage.output_tokens"] == 7
    assert values["gen_ai.response.model"] == "claude-x-1"
    assert values["gen_ai.response.finish_reasons"] == ["tool_use"]
    assert int(first["endTimeUnixNano"]) - int(first["startTimeUnixNano"]) == 1_000_000
    assert "status" not in first
    assert failed["status"]["code"] == 2
    assert failed["status"]["message"].startswith("ModelFatal: the key [redacted]")
    assert attributes(failed)["error.type"] == "ModelFatal"
    assert "gen_ai.response.finish_reasons" not in attributes(failed)
    [tool] = spans["execute_tool"]
    assert tool["status"]["code"] == 2
    assert attributes(tool)["error.type"] == "tool_error"
    [lead] = spans["invoke_agent"]
    assert "parentSpanId" not in lead
    assert attributes(lead)["staffwork.stop_reason"] == "failed"
    raw = json.dumps(spans)
    assert "sk-ant" not in raw
    assert "no such table" not in raw
    assert "SELECT 1" not in raw


def test_a_run_that_never_finished_ends_when_its_thread_starts_again() -> None:
    t0 = datetime(2026, 11, 21, 13, 0, tzinfo=UTC)
    ms = timedelta(milliseconds=1)
    common: dict[str, Any] = {
        "session_id": "ses_retry",
        "thread_id": "t-1",
        "agent": "logs",
        "parent_span_id": LEAD_SPAN,
    }
    first = {**common, "span_id": "3333333333333333"}
    second = {**common, "span_id": "4444444444444444"}
    overloaded = ErrorInfo(kind="ModelRetryable", message="overloaded", retryable=True)
    events: list[AnyTraceEvent] = [
        ThreadCreated(time=t0, **first),
        ModelRequestStart(model="m", time=t0 + ms, **first),
        ModelRequestEnd(model="m", error=overloaded, time=t0 + 2 * ms, **first),
        ThreadStatusRunning(time=t0 + 9 * ms, **second),  # the handler was retried: a new run
    ]
    builder = SpanBuilder()
    spans = by_kind([span for event in events for span in builder.add(event)])
    [chat] = spans["chat"]
    assert chat["parentSpanId"] == "3333333333333333"
    [stale] = spans["invoke_agent"]
    assert stale["spanId"] == "3333333333333333"
    assert stale["parentSpanId"] == LEAD_SPAN
    assert stale["status"]["code"] == 2
    assert int(stale["endTimeUnixNano"]) == int(stale["startTimeUnixNano"]) + 2_000_000
    assert builder.add(ThreadStatusIdle(time=t0 + 3 * ms, **first)) == []  # late: that span is out already
    [done] = builder.add(ThreadStatusIdle(time=t0 + 20 * ms, **second))
    assert done["spanId"] == "4444444444444444"
    assert done["parentSpanId"] == LEAD_SPAN
    assert "status" not in done
    assert int(done["endTimeUnixNano"]) - int(done["startTimeUnixNano"]) == 11_000_000


def test_a_handler_that_fails_for_good_ends_its_run_with_an_error() -> None:
    secret = "sk-ant-api03-abcdefghijklmnopqrst"
    for agent in ("lead", "logs"):
        # As the runtime reports a failure for good: a session.error stamped with the handler's span,
        # no idle event. The lead's message (a submit) names no thread or agent.
        events = [
            event
            for event in incident_trace(SESSION)
            if not (isinstance(event, SessionStatusIdle | ThreadStatusIdle) and event.agent == agent)
        ]
        last = next(event for event in reversed(events) if event.agent == agent)
        error = SessionErrorEvent(
            session_id=SESSION,
            thread_id="" if agent == "lead" else last.thread_id,
            agent="" if agent == "lead" else agent,
            span_id=last.span_id,
            parent_span_id=last.parent_span_id,
            error=ErrorInfo(kind="RuntimeError", message=f"the key {secret} was refused"),
            time=last.time + timedelta(milliseconds=1),
        )
        events.insert(events.index(last) + 1, error)
        builder = SpanBuilder()
        spans = [span for event in events for span in builder.add(event)]
        ids = {span["spanId"] for span in spans}
        assert len(spans) == len(ids) == SPANS, agent
        assert [span["spanId"] for span in spans if "parentSpanId" not in span] == [LEAD_SPAN]
        assert all(span["parentSpanId"] in ids for span in spans if "parentSpanId" in span), agent
        [failed] = [span for span in spans if span["spanId"] == last.span_id]
        assert failed["name"] == f"invoke_agent {agent}"
        assert failed["status"] == {"code": 2, "message": "RuntimeError: the key [redacted] was refused"}
        assert attributes(failed)["error.type"] == "RuntimeError"
        assert int(failed["endTimeUnixNano"]) == nanos(error.time)
        assert secret not in json.dumps(spans)


@pytest.mark.parametrize("cut", [20, 40])
def test_a_collector_restart_loses_no_span_and_orphans_none(cut: int) -> None:
    events = incident_trace(SESSION)
    whole = SpanBuilder()
    expected = {span["spanId"]: span for event in events for span in whole.add(event)}
    # The collector is killed after `cut` events (its state is lost); the next process gets the rest.
    before, after = SpanBuilder(), SpanBuilder()
    spans = [span for event in events[:cut] for span in before.add(event)]
    spans += [span for event in events[cut:] for span in after.add(event)]
    assert sorted(span["spanId"] for span in spans) == sorted(expected)  # each once
    ids = set(expected)
    assert [span["spanId"] for span in spans if "parentSpanId" not in span] == [LEAD_SPAN]
    assert all(span["parentSpanId"] in ids for span in spans if "parentSpanId" in span)
    inferred: Counter[str] = Counter()
    for span in spans:
        full = expected[span["spanId"]]
        assert span.get("parentSpanId") == full.get("parentSpanId")
        assert span["endTimeUnixNano"] == full["endTimeUnixNano"]
        assert "status" not in span
        if attributes(span).get("staffwork.start_unknown"):
            inferred[span["name"].split()[0]] += 1
            if span["name"].startswith("execute_tool"):  # its use went to the earlier process
                assert span["startTimeUnixNano"] == span["endTimeUnixNano"]
    assert inferred["invoke_agent"] >= 1  # the lead's session.status_running went to the earlier process
    assert inferred["execute_tool"] >= 4  # the lead's delegate calls, at least


def test_an_event_fed_twice_exports_no_span_twice() -> None:
    events = incident_trace(SESSION)
    once = SpanBuilder()
    expected = {span["spanId"]: span for event in events for span in once.add(event)}
    builder = SpanBuilder()
    twice = [span for event in events for span in builder.add(event) + builder.add(event)]
    assert len(twice) == SPANS
    assert {span["spanId"]: span for span in twice} == expected


def test_the_builder_holds_no_content_and_forgets_a_finished_sessions_runs() -> None:
    builder = SpanBuilder()
    for event in incident_trace(SESSION):
        builder.add(event)
    assert builder.held() == {"sessions": 1, "runs": 0, "tool_calls": 0, "model_starts": 0}

    t0 = datetime(2026, 11, 21, 13, 0, tzinfo=UTC)
    run: dict[str, Any] = {"session_id": "ses_big", "thread_id": "t-1", "agent": "coder"}
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for i in range(50):  # tool calls waiting for their results, each with a 200 kB input
            content = f"{i}" + "x" * 200_000
            use = AgentToolUse(tool_use_id=f"toolu_{i}", name="write_file", input={"content": content}, **run)
            builder.add(msgspec.structs.replace(use, span_id="5555555555555555", time=t0))
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert builder.held()["tool_calls"] == 50
    assert held - before < 1_000_000  # the inputs (10 MB) are not held


def test_span_building_does_no_io() -> None:
    code = (
        "import sys, actors.collector.spans; "
        "print(sorted({'asyncio', 'httpx2', 'socket'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT_DIR,
    )
    assert result.stdout.strip() == "[]"


async def test_a_failed_post_is_retried_and_logged_once() -> None:
    events = incident_trace(SESSION)
    async with Receiver(statuses=[503, 503]) as receiver:
        exporter = OtlpExporter(receiver.url, interval=0.02)
        with structlog.testing.capture_logs() as logs:
            await exporter.start()
            for event in events:
                exporter.add(event)
            await receiver.wait_for_spans(SPANS)
            await exporter.close()
    assert [post.status for post in receiver.posts] == [503, 503, 200]
    ids = [sorted(span["spanId"] for span in post.spans) for post in receiver.posts]
    assert ids[0] == ids[1] == ids[2]  # the same spans, sent again
    assert (exporter.exported, exporter.dropped) == (SPANS, 0)
    exports = [entry for entry in logs if entry["event"].startswith("otlp_export_")]
    assert [entry["event"] for entry in exports] == ["otlp_export_failed", "otlp_export_recovered"]
    assert exports[0]["url"] == f"{receiver.url}/v1/traces"
    assert exports[0]["log_level"] == "warning"
    assert "503" in exports[0]["error"]


async def test_retry_after_is_honoured_within_the_backoff_cap() -> None:
    answers = [(429, {"Retry-After": "1"}), (503, {"Retry-After": "3600"})]
    async with Receiver(statuses=answers) as receiver:
        exporter = OtlpExporter(receiver.url, interval=0.02, max_backoff=1.5)
        await exporter.start()
        for event in incident_trace(SESSION):
            exporter.add(event)
        await receiver.wait_for_spans(SPANS)
        await exporter.close()
    first, second, third = (post.at for post in receiver.posts)
    assert second - first >= 0.99  # Retry-After: 1, not the 0.02 s backoff
    assert 1.49 <= third - second < 5.0  # Retry-After: 3600, capped at max_backoff
    assert (exporter.exported, exporter.dropped) == (SPANS, 0)


async def test_runs_still_open_at_close_are_exported_unfinished() -> None:
    events = incident_trace(SESSION)[:40]  # the collector stops mid-session: no run has ended
    async with Receiver() as receiver:
        exporter = OtlpExporter(receiver.url)
        for event in events:
            exporter.add(event)
        await exporter.close()
    spans = receiver.spans()
    assert exporter.exported == len(spans)
    assert exporter.unfinished == 5
    last_seen: dict[str, int] = {}
    for event in events:
        last_seen[event.span_id] = max(last_seen.get(event.span_id, 0), nanos(event.time))
    runs = by_kind(spans)["invoke_agent"]
    assert {attributes(run)["gen_ai.agent.name"] for run in runs} == {"lead", *SUBAGENTS}
    for run in runs:
        assert attributes(run)["staffwork.unfinished"] is True
        assert "status" not in run  # UNSET
        assert int(run["endTimeUnixNano"]) == last_seen[run["spanId"]]
    ids = {span["spanId"] for span in spans}
    assert all(span["parentSpanId"] in ids for span in spans if "parentSpanId" in span)
    uses = {event.tool_use_id for event in events if isinstance(event, AgentToolUse)}
    tools = by_kind(spans)["execute_tool"]
    assert {attributes(tool)["gen_ai.tool.call.id"] for tool in tools} == uses  # none dropped


async def test_the_collector_exports_what_it_stores(bus: Bus, tmp_path: Path) -> None:
    session_id = f"ses_{uuid.uuid4().hex[:16]}"
    events = incident_trace(session_id)
    async with Receiver() as receiver:
        exporter = OtlpExporter(receiver.url, interval=0.05)
        async with collector(bus, tmp_path / "trace.db", exporter) as store:
            for event in events:
                await bus.emit(event)
            await eventually(lambda: store.count(session_id) == len(events))
            await receiver.wait_for_spans(SPANS)  # sent by the background flush, the collector running
    check_session_spans(receiver.spans(), session_id)
    assert (exporter.exported, exporter.dropped) == (SPANS, 0)


async def test_a_dead_receiver_neither_stops_the_collector_nor_hangs_it(bus: Bus, tmp_path: Path) -> None:
    session_id = f"ses_{uuid.uuid4().hex[:16]}"
    events = incident_trace(session_id)
    url = f"http://127.0.0.1:{free_port()}"
    exporter = OtlpExporter(url, interval=0.02, timeout=2.0, batch_size=4, max_queue=8)
    loop = asyncio.get_running_loop()
    with structlog.testing.capture_logs() as logs:
        async with collector(bus, tmp_path / "trace.db", exporter) as store:
            for event in events:
                await bus.emit(event)
            await eventually(lambda: store.count(session_id) == len(events))
            await eventually(lambda: exporter.dropped >= SPANS - 8)  # beyond the queue
            stopping = loop.time()
        stopped = loop.time()
    assert stopped - stopping < exporter.timeout + 5.0
    assert (exporter.exported, exporter.dropped) == (0, SPANS)  # the rest dropped on close
    failures = [entry for entry in logs if entry["event"] == "otlp_export_failed"]
    assert len(failures) == 1  # once per failure streak
    assert failures[0]["log_level"] == "warning"
    assert failures[0]["url"] == f"{url}/v1/traces"
    assert "ConnectError" in failures[0]["error"]
    assert [entry["event"] for entry in logs].count("otlp_queue_full") == 1


async def test_close_gives_up_within_its_timeout_when_the_receiver_never_answers() -> None:
    hung_up = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()  # never answers; returns when the client hangs up
        finally:
            writer.close()
            hung_up.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        exporter = OtlpExporter(f"http://127.0.0.1:{port}", timeout=0.5)
        for event in incident_trace(SESSION):
            exporter.add(event)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with structlog.testing.capture_logs() as logs:
            await exporter.close()
        elapsed = loop.time() - started
        await asyncio.wait_for(hung_up.wait(), 5)
    assert elapsed < exporter.timeout + 1.0
    assert (exporter.exported, exporter.dropped) == (0, SPANS)
    events = {entry["event"] for entry in logs}
    assert events & {"otlp_export_failed", "otlp_flush_timed_out"}
    assert "otlp_spans_dropped" in events


async def test_the_collector_command_exports_with_otlp(
    bus: Bus, nats_server: NatsServer, tmp_path: Path
) -> None:
    session_id = f"ses_{uuid.uuid4().hex[:16]}"
    events = incident_trace(session_id)
    async with Receiver() as receiver:
        args = ["actor", "collector", "--nats", nats_server.url, "--root", bus.subjects.root]
        async with ready_process(
            "actors.cli",
            *args,
            "--db",
            str(tmp_path / "t.db"),
            "--otlp",
            receiver.url,
            ready_word=b"collector ready",
        ):
            for event in events:
                await bus.emit(event)
            await receiver.wait_for_spans(SPANS)
    check_session_spans(receiver.spans(), session_id)


def test_a_bad_otlp_url_is_one_clear_line(nats_server: NatsServer, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "actors.cli", "actor", "collector", "--nats", nats_server.url,
         "--db", str(tmp_path / "t.db"), "--otlp", "ftp://example.com"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: --otlp: an OTLP/HTTP endpoint is an http(s) URL, not 'ftp://example.com'"
    )


def test_a_tool_served_by_another_system_is_an_extension_span() -> None:
    t0 = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
    ms = timedelta(milliseconds=1)
    run: dict[str, Any] = {"session_id": "ses_mcp", "thread_id": "t-1", "agent": "deploys"}
    served: dict[str, Any] = {"kind": "mcp", "source": "deployapi"}
    events: list[AnyTraceEvent] = [
        SessionStatusRunning(time=t0, **run),
        AgentToolUse(tool_use_id="toolu_1", name="deployapi__list_rollbacks", time=t0 + ms, **served, **run),
        AgentToolResult(
            tool_use_id="toolu_1", content="[]", time=t0 + 2 * ms, duration_ms=1.0, **served, **run
        ),
        AgentToolUse(tool_use_id="toolu_2", name="sql", time=t0 + 3 * ms, **run),
        AgentToolResult(tool_use_id="toolu_2", content="1 row", time=t0 + 4 * ms, **run),
        SessionStatusIdle(time=t0 + 5 * ms, **run),
    ]
    builder = SpanBuilder()
    spans = by_kind([span for event in events for span in builder.add(event)])
    by_tool = {attributes(s)["gen_ai.tool.name"]: attributes(s) for s in spans["execute_tool"]}
    mcp, sql = by_tool["deployapi__list_rollbacks"], by_tool["sql"]
    assert (mcp["gen_ai.tool.type"], mcp["staffwork.tool.kind"], mcp["staffwork.tool.source"]) == (
        "extension",
        "mcp",
        "deployapi",
    )
    assert sql["gen_ai.tool.type"] == "function"
    assert "staffwork.tool.kind" not in sql

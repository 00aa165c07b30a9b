"""Trace events as OpenTelemetry spans (OTLP/JSON), built without I/O; ``collector.otlp`` sends them.

One trace per session, named after the GenAI conventions: ``invoke_agent <agent>`` per run of a
thread, with ``chat <model>`` (a model call) and ``execute_tool <name>`` (a tool call) under it.
:class:`SpanBuilder` guarantees: ids derived from the events, never random (a redelivery or another
collector process exports the same ones); an event fed twice never exports a span twice; no child
without its parent (a start it did not see is inferred); bounded memory; no content (prompts,
completions, tool inputs and outputs). How: docs/architecture.md, "Trace collector".
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from actors.collector.redaction import redact
from schemas.trace import (
    AgentToolResult,
    AgentToolUse,
    AnyTraceEvent,
    ModelRequestEnd,
    ModelRequestStart,
    SessionErrorEvent,
    SessionStatusIdle,
    SessionStatusRunning,
    SessionStatusTerminated,
    ThreadCreated,
    ThreadStatusIdle,
    ThreadStatusRunning,
    ThreadStatusTerminated,
)

__all__ = ["Span", "SpanBuilder", "encode_attributes", "trace_id"]

#: One span in the OTLP/JSON encoding, ready to send.
Span = dict[str, Any]
AttributeValue = str | int | float | bool | list[str]
_Values = dict[str, AttributeValue]
V = TypeVar("V")

PROVIDER = "anthropic"
_INTERNAL, _CLIENT = 1, 3  # SpanKind
_ERROR = 2  # StatusCode
_MAX_PENDING = 4096  # per session: runs, parked tool calls, runs with model calls started
_MAX_STARTS = 64  # per run: model calls started and not yet ended
_MAX_EXPORTED = 512  # per session: the latest span ids exported (a duplicate comes soon after)
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def trace_id(session_id: str) -> str:
    """A session's trace id: the first 16 bytes of sha256(session id), in hex."""
    return hashlib.sha256(session_id.encode()).hexdigest()[:32]


def encode_attributes(values: _Values) -> list[dict[str, Any]]:
    """Attributes in the OTLP/JSON encoding."""
    return [{"key": key, "value": _value(value)} for key, value in values.items()]


def _value(value: AttributeValue) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}  # int64 is a string in the JSON mapping
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    return {"arrayValue": {"values": [_value(item) for item in value]}}


def _derived_id(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def _nanos(time: datetime) -> int:
    if time.tzinfo is None:
        time = time.replace(tzinfo=UTC)
    return (time - _EPOCH) // timedelta(microseconds=1) * 1000


def _put(mapping: OrderedDict[str, V], key: str, value: V, limit: int) -> list[tuple[str, V]]:
    """Set ``key`` as the most recent entry; forget the oldest beyond ``limit`` (returned)."""
    mapping[key] = value
    mapping.move_to_end(key)
    return [mapping.popitem(last=False) for _ in range(len(mapping) - limit)]


@dataclass(slots=True)
class _Run:
    """One run of a thread (one handler invocation): its ``invoke_agent`` span, once it ends."""

    span_id: str
    parent_span_id: str
    thread_id: str
    agent: str
    first_seen: int
    last_seen: int
    start: int | None = None
    lead: bool = False
    ended: bool = False


@dataclass(slots=True)
class _ToolEnd:
    """One end of a tool call (its use or its result): what its span needs, not its input or output."""

    is_use: bool
    run_id: str
    thread_id: str
    agent: str
    name: str
    time: int
    is_error: bool = False
    kind: str = "builtin"  # what served it: builtin, mcp, service, custom
    source: str = ""  # the MCP server or tool service


@dataclass
class _Session:
    session_id: str
    trace_id: str
    runs: OrderedDict[str, _Run] = field(default_factory=OrderedDict)
    model_starts: OrderedDict[str, list[tuple[int, str]]] = field(default_factory=OrderedDict)
    tool_calls: OrderedDict[str, _ToolEnd] = field(default_factory=OrderedDict)  # one end seen, by id
    exported: OrderedDict[str, None] = field(default_factory=OrderedDict)


class SpanBuilder:
    """Turns trace events into finished spans (no I/O). Its state is bounded: an LRU of sessions.

    ``unfinished`` counts the runs exported unfinished (by :meth:`finish` or a session's eviction).
    """

    def __init__(self, *, max_sessions: int = 1024) -> None:
        self.max_sessions = max_sessions
        self.unfinished = 0
        self._sessions: OrderedDict[str, _Session] = OrderedDict()

    def add(self, event: AnyTraceEvent) -> list[Span]:
        """The spans ``event`` finishes (usually none)."""
        spans = self._add(event)
        while len(self._sessions) > self.max_sessions:
            _, evicted = self._sessions.popitem(last=False)
            spans += self._finish_session(evicted)
        return spans

    def finish(self) -> list[Span]:
        """Spans for all that is still open (runs as unfinished, parked tool calls); then forget it."""
        spans = [span for session in self._sessions.values() for span in self._finish_session(session)]
        self._sessions.clear()
        return spans

    def held(self) -> dict[str, int]:
        """What the builder holds: sessions, and in them runs, parked tool calls, model calls started."""
        sessions = self._sessions.values()
        return {
            "sessions": len(sessions),
            "runs": sum(len(session.runs) for session in sessions),
            "tool_calls": sum(len(session.tool_calls) for session in sessions),
            "model_starts": sum(len(starts) for s in sessions for starts in s.model_starts.values()),
        }

    def _add(self, event: AnyTraceEvent) -> list[Span]:
        if not event.session_id:
            return []
        if isinstance(event, SessionErrorEvent):
            return self._failed(event)  # before the thread check: the lead's error names no thread
        if not event.thread_id:
            return []
        session = self._session(event.session_id)
        time = _nanos(event.time)
        run = self._run(session, event, time)
        match event:
            case SessionStatusRunning() | ThreadCreated() | ThreadStatusRunning():
                run.start = time if run.start is None else min(run.start, time)
                run.lead = run.lead or isinstance(event, SessionStatusRunning)
                return self._supersede(session, run)
            case SessionStatusIdle() | ThreadStatusIdle():
                run.lead = run.lead or isinstance(event, SessionStatusIdle)
                return self._end(session, run, time, {"staffwork.stop_reason": event.stop_reason})
            case SessionStatusTerminated() | ThreadStatusTerminated():
                run.lead = run.lead or isinstance(event, SessionStatusTerminated)
                return self._end(session, run, time, {"staffwork.stop_reason": event.reason or "terminated"})
            case ModelRequestStart():
                starts = session.model_starts.get(run.span_id) or []
                starts.append((time, event.model))
                del starts[:-_MAX_STARTS]
                _put(session.model_starts, run.span_id, starts, _MAX_PENDING)
            case ModelRequestEnd():
                return self._chat(session, run, event, time)
            case AgentToolUse() | AgentToolResult():
                return self._tool_end(session, run, event, time)
        return []

    def _session(self, session_id: str) -> _Session:
        session = self._sessions.get(session_id)
        if session is None:
            session = self._sessions[session_id] = _Session(session_id, trace_id(session_id))
        self._sessions.move_to_end(session_id)
        return session

    def _run(self, session: _Session, event: AnyTraceEvent, time: int) -> _Run:
        span_id = _run_id(session, event)
        run = session.runs.get(span_id)
        if run is None:
            parent = event.parent_span_id if _HEX16.match(event.parent_span_id) else ""
            run = _Run(span_id, parent, event.thread_id, event.agent, first_seen=time, last_seen=time)
            run.ended = span_id in session.exported  # a late event of a run forgotten once it ended
            _put(session.runs, span_id, run, _MAX_PENDING)
        run.first_seen = min(run.first_seen, time)
        run.last_seen = max(run.last_seen, time)
        return run

    def _failed(self, event: SessionErrorEvent) -> list[Span]:
        """A handler failed for good: its run (the span id the runtime stamped) ends with an error."""
        session = self._sessions.get(event.session_id)
        run = session.runs.get(_run_id(session, event)) if session is not None else None
        if session is None or run is None:
            return []  # nothing of that run was seen: no span to end
        time = _nanos(event.time)
        run.last_seen = max(run.last_seen, time)
        error = redact(f"{event.error.kind}: {event.error.message}")
        return self._end(session, run, time, {"error.type": event.error.kind}, error=error)

    def _supersede(self, session: _Session, started: _Run) -> list[Span]:
        """End the thread's earlier runs that never finished (their handler failed and was retried)."""
        assert started.start is not None
        stale = [
            run
            for run in session.runs.values()
            if run is not started
            and run.thread_id == started.thread_id
            and not run.ended
            and run.last_seen <= started.start
        ]
        values: _Values = {"error.type": "incomplete"}
        error = "the run did not finish (its thread started again)"
        return [span for run in stale for span in self._end(session, run, run.last_seen, values, error=error)]

    def _end(
        self, session: _Session, run: _Run, end: int, extra: _Values, *, error: str | None = None
    ) -> list[Span]:
        """The run's span (with ``extra`` attributes), its parked tool calls; after the lead's, the
        session's ended runs are forgotten."""
        if run.ended:
            return []  # a second end (a duplicate): the span is out already
        run.ended = True
        session.model_starts.pop(run.span_id, None)
        values: _Values = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.agent.name": run.agent,
            "gen_ai.conversation.id": session.session_id,
            "staffwork.thread_id": run.thread_id,
        }
        values |= {key: value for key, value in extra.items() if value}
        if run.start is None:
            values["staffwork.start_unknown"] = True
        start = run.first_seen if run.start is None else run.start
        parent = "" if run.lead else run.parent_span_id
        spans = self._emit(
            session, run.span_id, parent, f"invoke_agent {run.agent}", start, end, values, error
        )
        spans += self._flush_tools(session, {run.span_id})
        if run.lead and "staffwork.unfinished" not in values:
            ended = {span_id for span_id, other in session.runs.items() if other.ended}
            spans += self._flush_tools(session, ended)
            for span_id in ended:
                del session.runs[span_id]
                session.model_starts.pop(span_id, None)
        return spans

    def _finish_session(self, session: _Session) -> list[Span]:
        spans: list[Span] = []
        for run in [run for run in session.runs.values() if not run.ended]:
            out = self._end(session, run, run.last_seen, {"staffwork.unfinished": True})
            if out and out[0]["spanId"] == run.span_id:
                self.unfinished += 1
            spans += out
        return spans + self._flush_tools(session, None)

    def _chat(self, session: _Session, run: _Run, event: ModelRequestEnd, end: int) -> list[Span]:
        span_id = _derived_id(session.session_id, event.thread_id, "chat", event.msg_id)
        if span_id in session.exported:
            return []  # the same end twice: it must not take another call's start
        # A run's model calls are sequential: its call is the latest one started before this end.
        starts = session.model_starts.get(run.span_id) or []
        before = [started for started in starts if started[0] <= end]
        request_model = ""
        if before:
            latest = max(before)
            starts.remove(latest)
            start, request_model = latest
        else:  # its start was not seen (an earlier collector run had it, or it comes later)
            start = end - int(event.duration_ms * 1_000_000)
        usage = event.usage
        values: _Values = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.request.model": request_model,
            "gen_ai.response.model": event.model,
            "gen_ai.conversation.id": session.session_id,
            "gen_ai.agent.name": event.agent,
            "staffwork.thread_id": event.thread_id,
            # Anthropic's input_tokens leaves out cached tokens; the conventions' count includes them.
            "gen_ai.usage.input_tokens": usage.input_tokens
            + usage.cache_read_input_tokens
            + usage.cache_creation_input_tokens,
            "gen_ai.usage.output_tokens": usage.output_tokens,
            "gen_ai.usage.cache_read.input_tokens": usage.cache_read_input_tokens,
            "gen_ai.usage.cache_creation.input_tokens": usage.cache_creation_input_tokens,
            "staffwork.cost_usd": float(usage.cost_usd),
        }
        if not request_model:
            del values["gen_ai.request.model"]
        if event.stop_reason:
            values["gen_ai.response.finish_reasons"] = [event.stop_reason]
        error = None
        if event.error is not None:
            values["error.type"] = event.error.kind
            error = redact(f"{event.error.kind}: {event.error.message}")
        name = f"chat {request_model or event.model}"
        return self._emit(session, span_id, run.span_id, name, start, end, values, error)

    def _tool_end(
        self, session: _Session, run: _Run, event: AgentToolUse | AgentToolResult, time: int
    ) -> list[Span]:
        call_id = event.tool_use_id
        if _tool_span_id(session, event.thread_id, call_id) in session.exported:
            return []  # a duplicate, or the other end of a call exported without it
        is_use = isinstance(event, AgentToolUse)
        is_error = isinstance(event, AgentToolResult) and event.is_error
        end = _ToolEnd(
            is_use,
            run.span_id,
            event.thread_id,
            event.agent,
            event.name,
            time,
            is_error,
            event.kind,
            event.source,
        )
        other = session.tool_calls.pop(call_id, None)
        if other is not None and other.is_use != is_use:
            use, result = (end, other) if is_use else (other, end)
            return self._tool(session, call_id, use, result)
        evicted = _put(session.tool_calls, call_id, end, _MAX_PENDING)
        return [span for old_id, old in evicted for span in self._lone_tool(session, old_id, old)]

    def _flush_tools(self, session: _Session, run_ids: Collection[str] | None) -> list[Span]:
        """Export the parked tool calls of ``run_ids`` (all if None) with what is known of them."""
        calls = session.tool_calls
        call_ids = [key for key, call in calls.items() if run_ids is None or call.run_id in run_ids]
        return [span for key in call_ids for span in self._lone_tool(session, key, calls.pop(key))]

    def _lone_tool(self, session: _Session, call_id: str, call: _ToolEnd) -> list[Span]:
        """A tool call of which one end was seen."""
        if call.is_use:
            return self._tool(session, call_id, call, None)
        return self._tool(session, call_id, None, call)

    def _tool(
        self, session: _Session, call_id: str, use: _ToolEnd | None, result: _ToolEnd | None
    ) -> list[Span]:
        known = use or result
        assert known is not None
        name = known.name if use is None else use.name
        values: _Values = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "gen_ai.tool.call.id": call_id,
            "gen_ai.tool.type": "function",
            "gen_ai.conversation.id": session.session_id,
            "gen_ai.agent.name": known.agent,
            "staffwork.thread_id": known.thread_id,
        }
        if not name:
            del values["gen_ai.tool.name"]
        if known.kind in ("mcp", "service"):  # served by another system: an extension of the agent
            values["gen_ai.tool.type"] = "extension"
            values["staffwork.tool.kind"] = known.kind
            values["staffwork.tool.source"] = known.source
        if use is None:
            values["staffwork.start_unknown"] = True
        if result is None:  # its run ended (or the builder finished) without it
            values["staffwork.unfinished"] = True
            run = session.runs.get(known.run_id)
            end = run.last_seen if run is not None else known.time
        else:
            end = result.time
        error = None
        if result is not None and result.is_error:
            values["error.type"] = "tool_error"
            error = f"the tool {name!r} returned an error"
        span_id = _tool_span_id(session, known.thread_id, call_id)
        return self._emit(
            session, span_id, known.run_id, f"execute_tool {name}".rstrip(), known.time, end, values, error
        )

    @staticmethod
    def _emit(
        session: _Session,
        span_id: str,
        parent: str,
        name: str,
        start: int,
        end: int,
        values: _Values,
        error: str | None = None,
    ) -> list[Span]:
        """The span (a model call's kind is CLIENT), unless the session exported ``span_id`` already."""
        if span_id in session.exported:
            return []
        _put(session.exported, span_id, None, _MAX_EXPORTED)
        span: Span = {"traceId": session.trace_id, "spanId": span_id}
        if parent:
            span["parentSpanId"] = parent
        span |= {
            "name": name,
            "kind": _CLIENT if values["gen_ai.operation.name"] == "chat" else _INTERNAL,
            "startTimeUnixNano": str(start),
            "endTimeUnixNano": str(max(start, end)),
            "attributes": encode_attributes(values),
        }
        if error is not None:
            span["status"] = {"code": _ERROR, "message": error}
        return [span]


def _run_id(session: _Session, event: AnyTraceEvent) -> str:
    """The span id of the run that emitted ``event``: the span its events carry (or one per thread)."""
    if _HEX16.match(event.span_id):
        return event.span_id
    return _derived_id(session.session_id, event.thread_id, "thread")


def _tool_span_id(session: _Session, thread_id: str, tool_use_id: str) -> str:
    return _derived_id(session.session_id, thread_id, "tool", tool_use_id)

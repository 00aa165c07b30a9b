"""A session as a timeline, in one self-contained HTML page: a lane per thread on a shared time axis.

Python turns the trace events into spans (thread lifetimes, model calls, tool calls, waits for a
person's confirmation, from the request to its answer) and point markers (messages between threads,
file writes, errors, interrupts), each with the fields its details panel shows; the
page's script draws them. The data travels as JSON in a ``<script type="application/json">`` block
with ``<``, ``>`` and ``&`` escaped, and the script renders it with ``textContent`` only, so model
output in the trace cannot become markup. No external resources: the page works from ``file://``.

Span ids are stable, for deep links (``page.html#span=tool-<tool_use_id>``): ``thread-<thread_id>``,
``model-<thread_id>-<n>``, ``tool-<tool_use_id>``, ``confirm-<tool_use_id>``, and ``<kind>-<n>`` for
markers (n counts events).
"""

from __future__ import annotations

import html
import re
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import datetime
from importlib.resources import files
from typing import Any

import msgspec

from schemas.base import Usage
from schemas.thread import thread_id_for
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
    WebhookDelivered,
    WebhookEndpointDisabled,
    WebhookFailed,
)

LEAD = "lead"


@dataclass
class _Span:
    id: str
    lane: str
    kind: str  # thread | model | tool | confirm | grade | send | receive | file | error | hook | interrupt
    name: str
    start: datetime
    end: datetime | None = None
    error: bool = False
    peer: str = ""  # the other thread of a message
    fields: list[dict[str, str]] = field(default_factory=list)

    def add(self, key: str, value: object, *, pre: bool = False, link: str = "") -> None:
        entry = {"k": key, "v": str(value)}
        if pre:
            entry["pre"] = "1"
        if link:
            entry["link"] = link
        self.fields.append(entry)


@dataclass
class _Thread:
    span: _Span
    agent: str
    parent: str = ""
    task: str = ""
    status: str = "running"
    reply: str = ""
    last_text: str = ""
    models: int = 0
    tools: int = 0
    tokens: int = 0
    cost: float = 0.0
    errors: int = 0


def _json(value: object) -> str:
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def _usage(usage: Usage) -> str:
    return (
        f"input {usage.input_tokens:,} · output {usage.output_tokens:,} · "
        f"cache write {usage.cache_creation_input_tokens:,} · cache read {usage.cache_read_input_tokens:,}"
    )


def timeline(session_id: str, events: list[AnyTraceEvent]) -> dict[str, Any]:
    """The page's data: the session's summary, its lanes (lead first) and its spans and markers."""
    unique = {event.msg_id: event for event in events}  # a redelivered event counts once
    ordered = sorted(unique.values(), key=lambda e: e.time)  # ties keep their stream order
    threads: dict[str, _Thread] = {}
    spans: list[_Span] = []
    open_models: dict[tuple[str, str], deque[_Span]] = defaultdict(deque)  # by lane and run (span id)
    last_model: dict[str, _Span] = {}
    tools: dict[str, _Span] = {}
    confirms: dict[str, _Span] = {}  # by tool_use_id: the wait for a person's confirmation
    answered: set[str] = set()  # calls whose (first) answer is shown
    unanswered = {e.tool_use_id for e in ordered if isinstance(e, ToolConfirmationRequested)} - {
        e.tool_use_id for e in ordered if isinstance(e, ToolConfirmationAnswered)
    }
    grades: dict[int, _Span] = {}
    counts: dict[str, int] = defaultdict(int)
    session: dict[str, str | int | float] = {"status": "running", "tokens": 0, "cost": 0.0}

    def thread_of(event: AnyTraceEvent) -> _Thread:
        thread_id = event.thread_id or LEAD
        if thread_id not in threads:
            span = _Span(f"thread-{thread_id}", thread_id, "thread", event.agent or thread_id, event.time)
            threads[thread_id] = _Thread(span, event.agent)
        found = threads[thread_id]
        found.agent = found.agent or event.agent
        return found

    def marker(kind: str, event: AnyTraceEvent, name: str, *, error: bool = False) -> _Span:
        counts[kind] += 1
        span = _Span(f"{kind}-{counts[kind]}", event.thread_id or LEAD, kind, name, event.time, event.time)
        span.error = error
        spans.append(span)
        return span

    for event in ordered:
        thread = thread_of(event)
        lane = thread.span.lane
        match event:
            case ThreadCreated():
                thread.parent, thread.task = event.parent_thread_id, thread.task or event.task
            case SessionStatusRunning() | ThreadStatusRunning():
                thread.status = "running"
                thread.span.end = None
            case ThreadStatusIdle() | SessionStatusIdle():
                thread.span.end = event.time
                thread.status = "idle" if event.stop_reason in ("end_turn", "") else event.stop_reason
                if isinstance(event, SessionStatusIdle):
                    session["status"] = thread.status
            case ThreadStatusTerminated() | SessionStatusTerminated():
                thread.span.end = event.time
                thread.status = f"terminated ({event.reason})" if event.reason else "terminated"
                if isinstance(event, SessionStatusTerminated):
                    session["status"] = thread.status
            case ModelRequestStart():
                thread.models += 1
                span = _Span(f"model-{lane}-{thread.models}", lane, "model", event.model, event.time)
                span.add("model", event.model)
                span.add("call", f"{thread.models} in this thread")
                open_models[lane, event.span_id].append(span)
                last_model[lane] = span
                spans.append(span)
            case ModelRequestEnd():
                if open_models[lane, event.span_id]:  # a redelivered run's stale start is not this one's
                    span = open_models[lane, event.span_id].popleft()
                else:  # its start is not in the trace
                    thread.models += 1
                    span = _Span(f"model-{lane}-{thread.models}", lane, "model", event.model, event.time)
                    spans.append(span)
                span.end = event.time
                if event.model != span.name:  # the provider's name for it, or a start that is missing
                    span.add("model (reported)", event.model)
                span.add("stop reason", event.stop_reason or "-")
                ms = event.duration_ms
                span.add("duration", f"{ms:.3f} ms" if ms < 10 else f"{ms:,.0f} ms")
                span.add("usage", _usage(event.usage))
                span.add("cost", f"${event.usage.cost_usd:.4f}")
                tokens = event.usage.input_tokens + event.usage.output_tokens
                thread.tokens += tokens
                thread.cost += event.usage.cost_usd
                session["tokens"] = int(session["tokens"]) + tokens
                session["cost"] = float(session["cost"]) + event.usage.cost_usd
                if event.error is not None:
                    span.error = True
                    thread.errors += 1
                    span.add("error", f"{event.error.kind}: {event.error.message}")
            case AgentMessage() | AgentThinking():
                label = "text" if isinstance(event, AgentMessage) else "thinking"
                if lane in last_model:
                    last_model[lane].add(label, event.text, pre=True)
                if isinstance(event, AgentMessage):
                    thread.last_text = event.text
            case AgentToolUse():
                thread.tools += 1
                span = _Span(f"tool-{event.tool_use_id}", lane, "tool", event.name, event.time)
                span.add("tool", event.name)
                if event.kind != "builtin":
                    span.add("served by", f"{event.kind} {event.source}".rstrip())
                span.add("tool_use_id", event.tool_use_id)
                span.add("input", _json(event.input), pre=True)
                for key, value in event.input.items():  # multi-line text (SQL, code) as written
                    if isinstance(value, str) and "\n" in value:
                        span.add(f"input.{key}", value, pre=True)
                target = event.input.get("thread_id") if event.name == "message_agent" else None
                if event.name == "delegate":
                    target = thread_id_for(event.tool_use_id)  # the thread the lead names after the call
                if isinstance(target, str):
                    span.add("thread", target, link=f"thread-{target}")
                tools[event.tool_use_id] = span
                spans.append(span)
            case AgentToolResult():
                span = tools.get(event.tool_use_id) or _Span(
                    f"tool-{event.tool_use_id}", lane, "tool", event.name, event.time
                )
                if event.tool_use_id not in tools:  # its call is not in the trace
                    tools[event.tool_use_id] = span
                    spans.append(span)
                span.end = event.time
                span.error = span.error or event.is_error
                thread.errors += event.is_error
                span.add("is_error", str(event.is_error).lower())
                if event.ref:
                    span.add("ref", event.ref)
                span.add("result", event.content, pre=True)
                waiting = confirms.get(event.tool_use_id)
                if waiting is not None and event.tool_use_id in unanswered:  # closed without an answer
                    waiting.end = event.time
                    waiting.name = f"{event.name or waiting.name.removeprefix('confirm ')} closed unanswered"
                    waiting.add("answer", "none: the call was closed (an interrupt, say)")
                    waiting.add("result", event.content, pre=True)
            case CustomToolUse():
                waiting = tools.get(event.tool_use_id) or marker("tool", event, event.name)
                waiting.add("waits for", f"the caller's answer on {event.result_subject}")
            case ToolConfirmationRequested():
                name = f"confirm {event.name}"
                span = _Span(f"confirm-{event.tool_use_id}", lane, "confirm", name, event.time)
                span.add("tool", event.name)
                span.add("tool_use_id", event.tool_use_id, link=f"tool-{event.tool_use_id}")
                span.add("input", _json(event.input), pre=True)
                span.add("timeout", f"denied after {event.timeout_s:g} s without an answer")
                span.add("answer on", event.answer_subject)
                confirms.setdefault(event.tool_use_id, span)
                spans.append(span)
                if event.tool_use_id in tools:
                    tools[event.tool_use_id].add("confirmation", "asked", link=span.id)
            case ToolConfirmationAnswered() if event.tool_use_id not in answered:  # the first counts
                answered.add(event.tool_use_id)
                span = confirms.get(event.tool_use_id) or marker("confirm", event, f"confirm {event.name}")
                span.end = event.time
                by = f" by {event.by}" if event.by else ""
                answer = {"allow": "allowed", "deny": "denied", "timeout": "timed out"}[event.result]
                span.name = f"{event.name or span.name.removeprefix('confirm ')} {answer}{by}"
                span.add("answer", event.result)
                if event.by:
                    span.add("answered by", event.by)
                if event.deny_message:
                    span.add("deny message", event.deny_message, pre=True)
                if event.tool_use_id in tools:
                    tools[event.tool_use_id].add("confirmation", f"{answer}{by}", link=span.id)
            case ThreadInterrupted():
                span = marker("interrupt", event, f"interrupted{f' by {event.by}' if event.by else ''}")
                span.add("by", event.by or "-")
                span.add("reason", event.reason or "-", pre=True)
            case ToolSourceFailed():
                marker("error", event, f"{event.kind} {event.source} failed", error=True).add(
                    "error", event.message, pre=True
                )
            case ToolDenied():
                denied = tools.get(event.tool_use_id) or marker("error", event, f"denied {event.name}")
                denied.error = True
                denied.add("denied", f"{event.name} is not allowed (allowed: {', '.join(event.allowed)})")
            case ThreadMessageSent():
                span = marker("send", event, f"→ {event.to_agent}")
                span.peer = event.to_thread_id
                span.add("to thread", event.to_thread_id, link=f"thread-{event.to_thread_id}")
                span.add("to agent", event.to_agent)
                span.add("content", event.content, pre=True)
                if event.to_thread_id in threads:
                    threads[event.to_thread_id].task = threads[event.to_thread_id].task or event.content
            case ThreadMessageReceived():
                span = marker("receive", event, f"← {event.from_agent}")
                span.peer = event.from_thread_id
                span.add("from thread", event.from_thread_id, link=f"thread-{event.from_thread_id}")
                span.add("from agent", event.from_agent)
                span.add("content", event.content, pre=True)
                if event.from_thread_id in threads:
                    threads[event.from_thread_id].reply = event.content
            case OutcomeEvaluationStart():
                span = _Span(
                    f"grade-{event.iteration}", lane, "grade", f"grading {event.iteration}", event.time
                )
                span.add("outcome", event.outcome_id)
                span.add("iteration", str(event.iteration))
                grades[event.iteration] = span
                spans.append(span)
            case OutcomeEvaluationEnd():
                span = grades.get(event.iteration) or _Span(
                    f"grade-{event.iteration}", lane, "grade", f"grading {event.iteration}", event.time
                )
                if event.iteration not in grades:
                    grades[event.iteration] = span
                    spans.append(span)
                span.end = event.time
                span.name = f"{event.result} ({event.iteration})"
                span.error = event.result in ("failed", "max_iterations_reached")
                span.add("result", event.result)
                span.add("explanation", event.explanation, pre=True)
                for verdict in event.criteria:
                    span.add(
                        f"{verdict.status} · {verdict.kind}",
                        f"{verdict.criterion}\n{verdict.explanation}",
                        pre=True,
                    )
                span.add("usage", _usage(event.usage))
            case WebhookDelivered() | WebhookFailed() | WebhookEndpointDisabled():
                failed = not isinstance(event, WebhookDelivered)
                span = marker("hook", event, f"webhook {type(event).__name__[7:].lower()}", error=failed)
                for key, value in msgspec.structs.asdict(event).items():
                    if key in ("url", "event_id", "event_type", "attempt", "status_code", "error", "reason"):
                        span.add(key, str(value))
            case FileWritten():
                span = marker("file", event, f"wrote {event.path}")
                span.add("path", event.path)
                span.add("size", f"{event.size:,} bytes")
                span.add("digest", event.digest)
                span.add("provenance", _json(event.provenance), pre=True)
            case SessionErrorEvent():
                span = marker("error", event, f"error: {event.error.kind}", error=True)
                span.add("kind", event.error.kind)
                span.add("message", event.error.message, pre=True)
                span.add("retryable", str(event.error.retryable).lower())
                thread.errors += 1
                if thread.status == "running":  # the runtime ends a run that failed for good with this
                    thread.status, thread.span.end = "failed", event.time
                    if lane == LEAD:
                        session["status"] = "failed"
            case MessageRejected():
                span = marker("error", event, f"rejected by {event.actor}", error=True)
                for key, value in (("subject", event.subject), ("actor", event.actor)):
                    span.add(key, value)
                span.add("reason", event.reason, pre=True)
                span.add("size", f"{event.size:,} bytes")
                if event.preview:
                    span.add("preview", event.preview, pre=True)
                thread.errors += 1

    lanes = sorted(threads, key=lambda t: t != LEAD)  # the lead first, then in order of creation
    t0 = ordered[0].time if ordered else None
    last = ordered[-1].time if ordered else None

    def offset(time: datetime | None) -> float | None:
        return None if time is None or t0 is None else round((time - t0).total_seconds(), 6)

    for thread_id in lanes:
        thread = threads[thread_id]
        span = thread.span
        span.name = thread.agent or thread_id
        span.add("agent", thread.agent)
        span.add("thread", thread_id)
        if thread.parent:
            span.add("parent thread", thread.parent, link=f"thread-{thread.parent}")
        span.add("status", thread.status)
        span.add("model calls", thread.models)
        span.add("tool calls", thread.tools)
        span.add("tokens", f"{thread.tokens:,}")
        span.add("cost", f"${thread.cost:.4f}")
        if thread.errors:
            span.add("errors", thread.errors)
        if thread.task:
            span.add("task", thread.task, pre=True)
        if thread.reply or thread.last_text:
            span.add("reply", thread.reply or thread.last_text, pre=True)
    return {
        "session": {
            "id": session_id,
            "started": t0.isoformat() if t0 else "",
            "duration": offset(last) or 0.0,
            "events": len(ordered),
            "threads": len(threads),
            "errors": sum(t.errors for t in threads.values()),
            **session,
        },
        "lanes": [
            {
                "thread": t,
                "agent": threads[t].agent,
                "models": threads[t].models,
                "tools": threads[t].tools,
                "errors": threads[t].errors,
            }
            for t in lanes
        ],
        "spans": [
            {
                "id": s.id,
                "lane": s.lane,
                "kind": s.kind,
                "name": s.name,
                "start": offset(s.start),
                "end": offset(s.end),
                "error": s.error,
                "peer": s.peer,
                "fields": s.fields,
            }
            for s in [*(threads[t].span for t in lanes), *spans]
        ],
    }


def render_html(session_id: str, events: list[AnyTraceEvent]) -> str:
    """The session's timeline as a self-contained HTML page."""
    data = msgspec.json.encode(timeline(session_id, events))
    data = data.replace(b"<", b"\\u003c").replace(b">", b"\\u003e").replace(b"&", b"\\u0026")
    values = {"title": html.escape(f"session {session_id} · timeline"), "data": data.decode()}
    page = (files("actors.views") / "timeline.html").read_text(encoding="utf-8")
    return re.sub(r"\{\{(title|data)\}\}", lambda m: values[m[1]], page)

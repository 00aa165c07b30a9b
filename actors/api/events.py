"""A session's events as the SDK reads them: staffwork's trace events translated into the hosted
service's session events, listed (``GET /v1/sessions/{id}/events``) and streamed over SSE with
replay (``GET /v1/sessions/{id}/events/stream``).

Translation (:class:`Translator`) reads one session's trace events in log order; every API event's
``id`` is ``sevt_<msg_id>`` of the trace event it comes from (so the same event has the same id in
the list, the stream and after a reconnect), ``processed_at`` its time. References between events
use those ids: a tool result's ``tool_use_id`` is its call's event id, a model request's end names
its start. What the hosted service has no type for is not shown: ``workspace.file_written``,
``webhook.*`` and ``bus.message_rejected`` are staffwork's operations (in ``staffwork tail``), not
the conversation; ``agent.tool_denied`` is already told by the call's error result; a tool source
that failed is a ``session.error`` (``mcp_connection_failed_error`` for an MCP server). Skipping them
(rather than passing unknown types through) keeps every event valid for a client that validates
strictly.

The session's own list and stream are the primary thread's view, as hosted: the lead's events, the
user's, thread lifecycle and thread messages, custom tool calls (which need the caller) and outcome
evaluations; a subagent thread's own messages, tool calls and model requests are in its thread's
events (:mod:`actors.api.threads`).

The stream sends the stored events first, then live ones (one ordered consumer from the subject's
first message, so nothing is missed or repeated between the two), a ``ping`` frame every
:data:`PING_SECONDS`, and stops when the client goes away: the consumer is deleted and no task is
left waiting.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Annotated, Any, Literal

import msgspec

from actors.api.agent_shapes import TOOLSET
from actors.api.errors import bad_request
from actors.api.values import rfc3339
from bus.codec import Decoder
from bus.connection import Bus
from bus.direct import read_subject
from bus.errors import MessageRejected
from schemas.trace import (
    AgentMessage,
    AgentThinking,
    AgentToolResult,
    AgentToolUse,
    AnyTraceEvent,
    CustomToolUse,
    ModelRequestEnd,
    ModelRequestStart,
    OutcomeEvaluationEnd,
    OutcomeEvaluationStart,
    SessionErrorEvent,
    SessionStatusIdle,
    SessionStatusRunning,
    SessionStatusTerminated,
    ThreadCreated,
    ThreadMessageReceived,
    ThreadMessageSent,
    ThreadStatusIdle,
    ThreadStatusRunning,
    ThreadStatusTerminated,
    ToolConfirmationAnswered,
    ToolConfirmationRequested,
    ToolSourceFailed,
    UserEvent,
)

LEAD = "lead"
PING_SECONDS = 15.0
MAX_LIMIT = 1000
#: staffwork's stop reasons the SDK has a type for; the others are shown as the closest one, with
#: staffwork's own in ``staffwork_stop_reason``
_STOP_REASONS = {"end_turn", "requires_action", "retries_exhausted", "budget_reached", "refusal"}
_CLOSEST_STOP = {
    "canceled": "end_turn",
    "max_tokens": "end_turn",
    "max_turns": "retries_exhausted",
    "interrupted": "end_turn",
}
#: events of other threads that the primary thread's view shows too (as the hosted stream does)
_CROSS_POSTED = {
    "session.thread_created",
    "session.thread_status_running",
    "session.thread_status_idle",
    "session.thread_status_terminated",
    "agent.custom_tool_use",
    "span.outcome_evaluation_start",
    "span.outcome_evaluation_end",
}
#: the hosted toolset's name of each staffwork built-in an API agent's toolset enables, the inverse of
#: TOOLSET (write_file is both edit and write there: the later, write, is shown); sql and the memory
#: tools have none and keep theirs
HOSTED_NAME = {builtin: name for name, builtin in TOOLSET.items() if builtin}
_SESSION_STATUS = {"session.status_idle", "session.status_running"}
_events: Decoder[AnyTraceEvent] = Decoder(AnyTraceEvent, max_bytes=4 * 1024 * 1024)


def event_id(msg_id: str) -> str:
    """The API id of the event made from the trace event ``msg_id``."""
    return f"sevt_{msg_id}"


def _text(text: str) -> list[dict[str, str]]:
    return [{"type": "text", "text": text}]


def _usage(usage: Any) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens,
    }


class ApiEvent(msgspec.Struct, frozen=True):
    """One API event and the staffwork thread it belongs to (``cross``: a subagent thread's event the
    primary view shows too, as a tool call that waits for a confirmation or the user's answer)."""

    thread_id: str
    data: dict[str, Any]
    cross: bool = False

    @property
    def type(self) -> str:
        return str(self.data["type"])

    @property
    def primary(self) -> bool:
        """Whether the session's own list and stream show it (the primary thread's view)."""
        return self.thread_id in (LEAD, "") or self.cross or self.type in _CROSS_POSTED

    def in_thread(self, thread_id: str) -> bool:
        """Whether it belongs to ``thread_id``'s own events (the lead's has the session's)."""
        return self.thread_id == thread_id or (thread_id == LEAD and self.thread_id == "")


class Translator:
    """Turns one session's trace events, in log order, into API events. It remembers what later
    events refer to: each tool call's and span start's event id, the custom tool calls a thread
    waits on (a ``requires_action`` idle lists them)."""

    def __init__(self) -> None:
        self._calls: dict[str, str] = {}  # staffwork tool_use_id -> event id of the call
        self._starts: dict[tuple[str, str], str] = {}  # (thread, span) -> event id of the start
        self._waiting: dict[str, list[str]] = {}  # thread -> custom tool call event ids
        self._seen: set[str] = set()

    def __call__(self, event: AnyTraceEvent) -> list[ApiEvent]:
        id = event_id(event.msg_id)
        if id in self._seen:  # published twice (a retried emit): one event
            return []
        self._seen.add(id)
        # shown on the primary view too: a call waiting for a confirmation, and what the user sent
        # to a subagent's thread (its answer to that call, or to a custom tool call)
        cross = isinstance(event, UserEvent) or (
            isinstance(event, AgentToolUse) and event.evaluated_permission == "ask"
        )
        stamp = {"processed_at": rfc3339(event.time)}
        return [
            # a subagent thread's wait is the session's too: its session status is the primary view's
            ApiEvent(LEAD, d | stamp)
            if d["type"] in _SESSION_STATUS
            else ApiEvent(event.thread_id, d | stamp, cross)
            for d in self._data(event, id)
        ]

    def _stop(self, thread: str, reason: str) -> dict[str, Any]:
        if reason == "requires_action":
            return {"type": "requires_action", "event_ids": list(self._waiting.get(thread, []))}
        if reason in _STOP_REASONS:
            return {"type": reason}
        return {"type": _CLOSEST_STOP.get(reason, "retries_exhausted"), "staffwork_stop_reason": reason}

    def _data(self, event: AnyTraceEvent, id: str) -> list[dict[str, Any]]:
        thread = event.thread_id
        sub = {"session_thread_id": thread} if thread not in (LEAD, "") else {}
        match event:
            case UserEvent():
                return [{**event.payload, "id": id, "type": event.event_type}]
            case SessionStatusRunning():
                return [{"id": id, "type": "session.status_running"}]
            case SessionStatusIdle():
                stop = self._stop(thread, event.stop_reason)
                return [{"id": id, "type": "session.status_idle", "stop_reason": stop, "stop_details": None}]
            case SessionStatusTerminated():
                return [{"id": id, "type": "session.status_terminated"}]
            case SessionErrorEvent(error=error):
                retry = {"type": "retrying" if error.retryable else "terminal"}
                body = {
                    "type": "unknown_error",
                    "message": f"{error.kind}: {error.message}",
                    "retry_status": retry,
                }
                return [{"id": id, "type": "session.error", "error": body}]
            case ToolSourceFailed():
                retry = {"type": "exhausted"}
                if event.kind == "mcp":
                    body = {
                        "type": "mcp_connection_failed_error",
                        "mcp_server_name": event.source,
                        "message": event.message,
                        "retry_status": retry,
                    }
                else:
                    message = f"tool service {event.source!r}: {event.message}"
                    body = {"type": "unknown_error", "message": message, "retry_status": retry}
                return [{"id": id, "type": "session.error", "error": body}]
            case ThreadCreated():
                return [
                    {
                        "id": id,
                        "type": "session.thread_created",
                        "session_thread_id": thread,
                        "agent_name": event.agent,
                        "workflow_run_id": None,
                    }
                ]
            case ThreadStatusRunning():
                kind = "session.thread_status_running"
                shown: list[dict[str, Any]] = [
                    {"id": id, "type": kind, "session_thread_id": thread, "agent_name": event.agent}
                ]
                if self._waiting.pop(thread, None) and thread != LEAD:  # its wait was the session's
                    shown.append({"id": f"{id}_session", "type": "session.status_running"})
                return shown
            case ThreadStatusIdle():
                stop = self._stop(thread, event.stop_reason)
                idle: list[dict[str, Any]] = [
                    {
                        "id": id,
                        "type": "session.thread_status_idle",
                        "session_thread_id": thread,
                        "agent_name": event.agent,
                        "stop_reason": stop,
                        "stop_details": None,
                    }
                ]
                if stop["type"] == "requires_action":  # the session waits on the caller, as hosted
                    idle.append({"id": f"{id}_session", "type": "session.status_idle", "stop_reason": stop})
                return idle
            case ThreadStatusTerminated():
                kind = "session.thread_status_terminated"
                return [{"id": id, "type": kind, "session_thread_id": thread, "agent_name": event.agent}]
            case AgentMessage():
                return [{"id": id, "type": "agent.message", "content": _text(event.text)}]
            case AgentThinking():
                return [{"id": id, "type": "agent.thinking"}]  # hosted: a progress signal, no text
            case AgentToolUse():
                self._calls[event.tool_use_id] = id
                fields: dict[str, Any]
                if event.kind == "mcp":
                    fields = {"type": "agent.mcp_tool_use", "mcp_server_name": event.source}
                else:
                    fields = {"type": "agent.tool_use"}
                permission = event.evaluated_permission
                fields |= {
                    "evaluated_permission": permission,
                    "evaluation": {"type": "always_ask" if permission == "ask" else "always_allow"},
                }
                name = HOSTED_NAME.get(event.name, event.name) if event.kind == "builtin" else event.name
                return [{"id": id, **fields, "name": name, "input": event.input, **sub}]
            case AgentToolResult():
                call = self._calls.get(event.tool_use_id, event.tool_use_id)
                if event.kind == "mcp":
                    fields = {"type": "agent.mcp_tool_result", "mcp_tool_use_id": call}
                else:
                    fields = {"type": "agent.tool_result", "tool_use_id": call}
                return [{"id": id, **fields, "content": _text(event.content), "is_error": event.is_error}]
            case CustomToolUse():
                self._calls[event.tool_use_id] = id
                self._waiting.setdefault(thread, []).append(id)
                return [
                    {
                        "id": id,
                        "type": "agent.custom_tool_use",
                        "name": event.name,
                        "input": event.input,
                        **sub,
                    }
                ]
            case ToolConfirmationRequested():  # the call's own event is what the person answers
                self._waiting.setdefault(thread, []).append(self._calls.get(event.tool_use_id, id))
                return []
            case ToolConfirmationAnswered(by=by) if not by.startswith("api:"):  # (the API's are echoed)
                if event.result == "timeout":
                    return []
                answered: dict[str, Any] = {
                    "id": id,
                    "type": "user.tool_confirmation",
                    "tool_use_id": self._calls.get(event.tool_use_id, event.tool_use_id),
                    "result": event.result,
                    **sub,
                }
                return [answered | ({"deny_message": event.deny_message} if event.result == "deny" else {})]
            case ThreadMessageSent():
                return [
                    {
                        "id": id,
                        "type": "agent.thread_message_sent",
                        "to_session_thread_id": event.to_thread_id,
                        "to_agent_name": event.to_agent,
                        "content": _text(event.content),
                    }
                ]
            case ThreadMessageReceived():
                return [
                    {
                        "id": id,
                        "type": "agent.thread_message_received",
                        "from_session_thread_id": event.from_thread_id,
                        "from_agent_name": event.from_agent,
                        "content": _text(event.content),
                    }
                ]
            case ModelRequestStart():
                self._starts[(thread, "model")] = id
                return [{"id": id, "type": "span.model_request_start"}]
            case ModelRequestEnd():
                start = self._starts.pop((thread, "model"), "")
                return [
                    {
                        "id": id,
                        "type": "span.model_request_end",
                        "model_request_start_id": start,
                        "is_error": event.error is not None,
                        "model_usage": _usage(event.usage),
                    }
                ]
            case OutcomeEvaluationStart():
                self._starts[(event.outcome_id, str(event.iteration))] = id
                kind = "span.outcome_evaluation_start"
                return [
                    {"id": id, "type": kind, "outcome_id": event.outcome_id, "iteration": event.iteration}
                ]
            case OutcomeEvaluationEnd():
                start = self._starts.pop((event.outcome_id, str(event.iteration)), "")
                return [
                    {
                        "id": id,
                        "type": "span.outcome_evaluation_end",
                        "outcome_evaluation_start_id": start,
                        "outcome_id": event.outcome_id,
                        "iteration": event.iteration,
                        "result": event.result,
                        "explanation": event.explanation,
                        "usage": _usage(event.usage),
                    }
                ]
            case _:  # staffwork's operations: file writes, webhooks, rejected messages, denied tools
                return []


def translate(events: Iterable[AnyTraceEvent]) -> list[ApiEvent]:
    """``events`` (one session's, in log order) as API events."""
    translator = Translator()
    return [shown for event in events for shown in translator(event)]


async def stored_events(bus: Bus, session_id: str) -> list[AnyTraceEvent]:
    """The session's trace events stored so far, in log order (undecodable ones skipped)."""
    subject = bus.subjects.events(session_id)
    found: list[AnyTraceEvent] = []
    async for stored in read_subject(bus, bus.subjects.log_stream, subject):
        with contextlib.suppress(MessageRejected):
            found.append(_events.decode(stored.data, subject=stored.subject))
    return found


# --- the user's events, as sent -------------------------------------------------------------------

MAX_RUBRIC = 262_144


class UserMessage(msgspec.Struct, frozen=True, kw_only=True, tag="user.message", tag_field="type"):
    content: Annotated[list[dict[str, Any]], msgspec.Meta(min_length=1)]


class TextRubric(msgspec.Struct, frozen=True, tag="text", tag_field="type"):
    content: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_RUBRIC)]


class FileRubric(msgspec.Struct, frozen=True, tag="file", tag_field="type"):
    file_id: str


class DefineOutcome(msgspec.Struct, frozen=True, kw_only=True, tag="user.define_outcome", tag_field="type"):
    description: str
    rubric: TextRubric | FileRubric
    max_iterations: Annotated[int, msgspec.Meta(ge=1, le=20)] | None = None


class Interrupt(msgspec.Struct, frozen=True, kw_only=True, tag="user.interrupt", tag_field="type"):
    session_thread_id: str | None = None


class ToolAnswer(msgspec.Struct, frozen=True, kw_only=True, tag="user.custom_tool_result", tag_field="type"):
    custom_tool_use_id: str
    content: list[dict[str, Any]] | None = None
    is_error: bool | None = None


class Unsupported(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    pass


class Confirmation(msgspec.Struct, frozen=True, kw_only=True, tag="user.tool_confirmation", tag_field="type"):
    tool_use_id: str
    result: Literal["allow", "deny"]
    deny_message: str | None = None


class _UserToolResult(Unsupported, frozen=True, kw_only=True, tag="user.tool_result"):
    pass


class _SystemMessage(Unsupported, frozen=True, kw_only=True, tag="system.message"):
    pass


SentEvent = (
    UserMessage | DefineOutcome | Interrupt | ToolAnswer | Confirmation | _UserToolResult | _SystemMessage
)


class SendBody(msgspec.Struct, frozen=True):
    events: Annotated[list[SentEvent], msgspec.Meta(min_length=1)]


NOT_SUPPORTED = {
    "user.tool_result": "self-hosted tool execution is not supported",
    "system.message": "system messages to a running session are not supported",
}


def texts(blocks: list[dict[str, Any]], where: str) -> str:
    """The text of ``blocks`` (text blocks only: images and documents are not supported yet)."""
    texts = []
    for k, block in enumerate(blocks):
        if block.get("type") != "text" or not isinstance(block.get("text"), str):
            kind = block.get("type")
            raise bad_request(f"{where}.content[{k}]: only text blocks are supported (got type={kind!r})")
        texts.append(block["text"])
    return "\n\n".join(texts)


def outcome_id(session_id: str, turn: int = 0) -> str:
    """The outcome id staffwork's lead grades a turn under (``actors/lead/revision.py``), so the
    echo's id is the one the ``span.outcome_evaluation_*`` events carry."""
    base = f"outc_{session_id.removeprefix('ses_')}"
    return base if not turn else f"{base}_{turn}"

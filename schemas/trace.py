"""Trace events: typed records of what happened, published on ``<root>.s.<session>.evt.<kind>``.

Names follow Anthropic's Managed Agents vocabulary where it has one (``session.thread_created``,
``agent.tool_use``, ``span.model_request_end``), with a version suffix on the wire tag. Every event
names its session (empty for events of no session, on ``<root>.sys.evt.<kind>``), and where it
applies its thread, agent and span (``parent_span_id`` links spans across processes).

The collector answers queries on ``<root>.api.trace`` (core request/reply, JSON): a ``TraceQuery``
(``SessionsQuery``, ``EventsQuery``, ``ProvenanceQuery``) gets the matching ``TraceAnswer``
(``SessionsAnswer``, ``EventsAnswer``, ``ProvenanceAnswer``) or a ``QueryFailed``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

from schemas.base import ErrorInfo, Message, Usage
from schemas.files import Provenance
from schemas.outcome import CriterionVerdict, OutcomeResult


def _now() -> datetime:
    return datetime.now(UTC)


class TraceEvent(Message, frozen=True, kw_only=True):
    """Fields every trace event has. ``session_id`` is empty only for traffic that names none."""

    time: datetime = msgspec.field(default_factory=_now)
    thread_id: str = ""
    agent: str = ""
    span_id: str = ""
    parent_span_id: str = ""


# --- session ---------------------------------------------------------------------------------------


class SessionStatusRunning(TraceEvent, frozen=True, kw_only=True, tag="session.status_running.v1"):
    """The session started (or resumed) work."""


class SessionStatusIdle(TraceEvent, frozen=True, kw_only=True, tag="session.status_idle.v1"):
    """The session finished its work; ``stop_reason`` says how (``end_turn``, ``budget_reached``...)."""

    stop_reason: str = "end_turn"
    usage: Usage = msgspec.field(default_factory=Usage)


class SessionStatusTerminated(TraceEvent, frozen=True, kw_only=True, tag="session.status_terminated.v1"):
    """The session ended for good (canceled, failed, or finished and archived)."""

    reason: str = ""


class SessionErrorEvent(TraceEvent, frozen=True, kw_only=True, tag="session.error.v1"):
    """Something went wrong in the session; the session may continue."""

    error: ErrorInfo


# --- threads ---------------------------------------------------------------------------------------


class ThreadCreated(TraceEvent, frozen=True, kw_only=True, tag="session.thread_created.v1"):
    """A delegation created a thread of ``agent``."""

    parent_thread_id: str = ""
    task: str = ""


class ThreadStatusRunning(TraceEvent, frozen=True, kw_only=True, tag="session.thread_status_running.v1"):
    """A thread started or resumed work."""


class ThreadStatusIdle(TraceEvent, frozen=True, kw_only=True, tag="session.thread_status_idle.v1"):
    """A thread finished a turn of work and replied."""

    stop_reason: str = "end_turn"


class ThreadStatusTerminated(
    TraceEvent, frozen=True, kw_only=True, tag="session.thread_status_terminated.v1"
):
    """A thread ended for good."""

    reason: str = ""


# --- agents ----------------------------------------------------------------------------------------


class AgentMessage(TraceEvent, frozen=True, kw_only=True, tag="agent.message.v1"):
    """Text the model produced."""

    text: str


class AgentThinking(TraceEvent, frozen=True, kw_only=True, tag="agent.thinking.v1"):
    """The model's visible reasoning, when it returns any."""

    text: str


#: what served a tool call: a built-in tool, an MCP server, a NATS tool service, the session's caller
ToolKindName = str


class AgentToolUse(TraceEvent, frozen=True, kw_only=True, tag="agent.tool_use.v1"):
    """The model called a tool. ``kind`` says what serves it (``builtin``, ``mcp``, ``service``,
    ``custom``) and ``source`` which MCP server or tool service."""

    tool_use_id: str
    name: str
    input: dict[str, Any] = msgspec.field(default_factory=dict)
    kind: ToolKindName = "builtin"
    source: str = ""


class AgentToolResult(TraceEvent, frozen=True, kw_only=True, tag="agent.tool_result.v1"):
    """A tool's result as the model saw it (``ref`` points to the full output when it was too big),
    and how long the call took."""

    tool_use_id: str
    name: str = ""
    is_error: bool = False
    content: str = ""
    ref: str = ""
    kind: ToolKindName = "builtin"
    source: str = ""
    duration_ms: float = 0.0


class CustomToolUse(TraceEvent, frozen=True, kw_only=True, tag="agent.custom_tool_use.v1"):
    """A call to a tool the session's caller answers: the thread waits (``requires_action``) for a
    ``user.custom_tool_result`` naming ``tool_use_id`` on ``<root>.s.<session>.in.tool_result.<id>``."""

    tool_use_id: str
    name: str
    input: dict[str, Any] = msgspec.field(default_factory=dict)
    #: where to send the answer
    result_subject: str = ""


class ToolSourceFailed(TraceEvent, frozen=True, kw_only=True, tag="agent.tool_source_failed.v1"):
    """An agent's MCP server or tool service could not be used (it did not start, died, answered
    garbage, or does not offer a tool the team file allows): its tools answer with this error, and
    the thread goes on with the others."""

    kind: ToolKindName
    source: str
    message: str


class ToolDenied(TraceEvent, frozen=True, kw_only=True, tag="agent.tool_denied.v1"):
    """Security: the model called a tool its agent may not use; the worker refused it."""

    tool_use_id: str
    name: str
    allowed: list[str] = msgspec.field(default_factory=list)


class ThreadMessageSent(TraceEvent, frozen=True, kw_only=True, tag="agent.thread_message_sent.v1"):
    """A message to another thread: a delegation or a follow-up."""

    to_thread_id: str
    to_agent: str
    content: str


class ThreadMessageReceived(TraceEvent, frozen=True, kw_only=True, tag="agent.thread_message_received.v1"):
    """A message from another thread: a subagent's reply, as the lead received it."""

    from_thread_id: str
    from_agent: str
    content: str


# --- spans -----------------------------------------------------------------------------------------


class ModelRequestStart(TraceEvent, frozen=True, kw_only=True, tag="span.model_request_start.v1"):
    """A model call began."""

    model: str


class ModelRequestEnd(TraceEvent, frozen=True, kw_only=True, tag="span.model_request_end.v1"):
    """A model call ended, with its usage and cost."""

    model: str
    stop_reason: str = ""
    usage: Usage = msgspec.field(default_factory=Usage)
    duration_ms: float = 0.0
    error: ErrorInfo | None = None


class OutcomeEvaluationStart(TraceEvent, frozen=True, kw_only=True, tag="span.outcome_evaluation_start.v1"):
    """The grader started grading attempt ``iteration`` against the outcome."""

    outcome_id: str
    iteration: int


class OutcomeEvaluationEnd(TraceEvent, frozen=True, kw_only=True, tag="span.outcome_evaluation_end.v1"):
    """The grader's verdict on attempt ``iteration``: the result, why, each criterion, its usage."""

    outcome_id: str
    iteration: int
    result: OutcomeResult
    explanation: str = ""
    criteria: list[CriterionVerdict] = msgspec.field(default_factory=list)
    usage: Usage = msgspec.field(default_factory=Usage)
    duration_ms: float = 0.0


# --- webhooks --------------------------------------------------------------------------------------


class WebhookDelivered(TraceEvent, frozen=True, kw_only=True, tag="webhook.delivered.v1"):
    """An endpoint accepted a webhook (a 2xx answer)."""

    url: str
    event_id: str
    event_type: str
    attempt: int
    status_code: int
    duration_ms: float = 0.0


class WebhookFailed(TraceEvent, frozen=True, kw_only=True, tag="webhook.delivery_failed.v1"):
    """An attempt failed (non-2xx, redirect, timeout, connection); ``retry_in_s`` when it is retried."""

    url: str
    event_id: str
    event_type: str
    attempt: int
    error: str
    retry_in_s: float | None = None


class WebhookEndpointDisabled(TraceEvent, frozen=True, kw_only=True, tag="webhook.endpoint_disabled.v1"):
    """An endpoint is disabled: too many consecutive failures, or an address that is refused."""

    url: str
    reason: str
    failures: int = 0


# --- workspace and bus -----------------------------------------------------------------------------


class FileWritten(TraceEvent, frozen=True, kw_only=True, tag="workspace.file_written.v1"):
    """A file was written to the session's workspace."""

    path: str
    size: int
    digest: str
    provenance: Provenance


class MessageRejected(TraceEvent, frozen=True, kw_only=True, tag="bus.message_rejected.v1"):
    """An actor could not decode or validate a message; it was terminated, not redelivered."""

    subject: str
    actor: str
    reason: str
    size: int
    preview: str = ""


AnyTraceEvent = (
    SessionStatusRunning
    | SessionStatusIdle
    | SessionStatusTerminated
    | SessionErrorEvent
    | ThreadCreated
    | ThreadStatusRunning
    | ThreadStatusIdle
    | ThreadStatusTerminated
    | AgentMessage
    | AgentThinking
    | AgentToolUse
    | AgentToolResult
    | ToolDenied
    | CustomToolUse
    | ToolSourceFailed
    | ThreadMessageSent
    | ThreadMessageReceived
    | ModelRequestStart
    | ModelRequestEnd
    | OutcomeEvaluationStart
    | OutcomeEvaluationEnd
    | WebhookDelivered
    | WebhookFailed
    | WebhookEndpointDisabled
    | FileWritten
    | MessageRejected
)


def event_kind(event: TraceEvent | type[TraceEvent]) -> str:
    """The event's name without its version: ``session.thread_created``."""
    cls = type(event) if isinstance(event, TraceEvent) else event
    return str(cls.__struct_config__.tag).rsplit(".", 1)[0]


# --- queries on <root>.api.trace -------------------------------------------------------------------


class _TraceQuery(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """A request to the trace collector."""


class SessionsQuery(_TraceQuery, frozen=True, kw_only=True, tag="trace.query.sessions.v1"):
    """The most recently active sessions the collector has stored, newest first."""

    limit: Annotated[int, msgspec.Meta(ge=1)] = 50


class EventsQuery(_TraceQuery, frozen=True, kw_only=True, tag="trace.query.events.v1"):
    """One session's stored events in stream order; narrowed to a thread, an agent or a kind if given."""

    session_id: str
    thread_id: str = ""
    agent: str = ""
    kind: str = ""  # an event's name without its version: ``agent.tool_use``


class ProvenanceQuery(_TraceQuery, frozen=True, kw_only=True, tag="trace.query.provenance.v1"):
    """Where a file of a session came from (its latest write)."""

    session_id: str
    path: str


TraceQuery = SessionsQuery | EventsQuery | ProvenanceQuery


class SessionSummary(msgspec.Struct, frozen=True, kw_only=True):
    """A session as its stored events tell it (``idle`` once a ``session.status_idle`` is stored)."""

    session_id: str
    started: datetime
    last_event: datetime
    threads: int
    cost_usd: float
    status: str
    stop_reason: str = ""


class ThreadRef(msgspec.Struct, frozen=True, kw_only=True):
    thread_id: str
    agent: str


class ToolCallRef(msgspec.Struct, frozen=True, kw_only=True):
    tool_use_id: str
    name: str


class OriginSource(msgspec.Struct, frozen=True, kw_only=True):
    """A tool result a thread read; for a delegation, the ``thread`` that answered and its sources."""

    tool_use_id: str
    name: str
    input: dict[str, Any]
    called: datetime
    returned: datetime
    is_error: bool
    result: str
    thread: ThreadRef | None = None
    sources: list[OriginSource] = msgspec.field(default_factory=list)


class FileOriginReport(msgspec.Struct, frozen=True, kw_only=True):
    """A file's latest write: who wrote it, on what task, and what its thread had read before."""

    path: str
    size: int
    digest: str
    written: datetime
    thread_id: str
    agent: str
    tool_call: ToolCallRef | None  # None when the worker wrote it (the lead's report, a long answer)
    task: str
    earlier_writes: int
    sources: list[OriginSource]


class _TraceAnswer(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """The collector's answer to a ``TraceQuery``."""


class SessionsAnswer(_TraceAnswer, frozen=True, kw_only=True, tag="trace.answer.sessions.v1"):
    sessions: list[SessionSummary]


class EventsAnswer(_TraceAnswer, frozen=True, kw_only=True, tag="trace.answer.events.v1"):
    events: list[AnyTraceEvent]


class ProvenanceAnswer(_TraceAnswer, frozen=True, kw_only=True, tag="trace.answer.provenance.v1"):
    origin: FileOriginReport


class QueryFailed(_TraceAnswer, frozen=True, kw_only=True, tag="trace.answer.failed.v1"):
    """The query was malformed (``invalid_query``) or could not be answered (``query_failed``)."""

    error: ErrorInfo


TraceAnswer = SessionsAnswer | EventsAnswer | ProvenanceAnswer | QueryFailed

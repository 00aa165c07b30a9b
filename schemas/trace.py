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
from typing import Annotated, Any, Literal

import msgspec

from schemas.base import ErrorInfo, Message, Usage
from schemas.files import Provenance
from schemas.outcome import CriterionVerdict, OutcomeResult


def _now() -> datetime:
    return datetime.now(UTC)


class TraceEvent(Message, frozen=True, kw_only=True):
    """Fields every trace event has. ``session_id`` is empty only for traffic that names none."""

    #: when it happened (UTC)
    time: datetime = msgspec.field(default_factory=_now)
    #: the thread it happened in (``lead`` for the lead's; empty for the session as a whole)
    thread_id: str = ""
    #: the agent whose thread it is
    agent: str = ""
    #: the span this event opens, closes or belongs to
    span_id: str = ""
    #: the span that caused it, possibly in another process
    parent_span_id: str = ""


# --- session ---------------------------------------------------------------------------------------


class SessionStatusRunning(TraceEvent, frozen=True, kw_only=True, tag="session.status_running.v1"):
    """The session started (or resumed) work."""


class SessionStatusIdle(TraceEvent, frozen=True, kw_only=True, tag="session.status_idle.v1"):
    """The session finished its work; ``stop_reason`` says how (``end_turn``, ``budget_reached``...)."""

    #: how the session finished (``end_turn``, ``budget_reached``, ``deadline_reached``...)
    stop_reason: str = "end_turn"
    #: tokens and cost of the whole session
    usage: Usage = msgspec.field(default_factory=Usage)


class SessionStatusTerminated(TraceEvent, frozen=True, kw_only=True, tag="session.status_terminated.v1"):
    """The session ended for good (canceled, failed, or finished and archived)."""

    #: why it ended
    reason: str = ""


class SessionErrorEvent(TraceEvent, frozen=True, kw_only=True, tag="session.error.v1"):
    """Something went wrong in the session; the session may continue."""

    #: what went wrong
    error: ErrorInfo


# --- threads ---------------------------------------------------------------------------------------


class ThreadCreated(TraceEvent, frozen=True, kw_only=True, tag="session.thread_created.v1"):
    """A delegation created a thread of ``agent``."""

    #: the thread that delegated
    parent_thread_id: str = ""
    #: the task the new thread works on
    task: str = ""


class ThreadStatusRunning(TraceEvent, frozen=True, kw_only=True, tag="session.thread_status_running.v1"):
    """A thread started or resumed work."""


class ThreadStatusIdle(TraceEvent, frozen=True, kw_only=True, tag="session.thread_status_idle.v1"):
    """A thread finished a turn of work and replied."""

    #: how the turn ended (``end_turn``, ``requires_action``...)
    stop_reason: str = "end_turn"


class ThreadStatusTerminated(
    TraceEvent, frozen=True, kw_only=True, tag="session.thread_status_terminated.v1"
):
    """A thread ended for good."""

    #: why it ended
    reason: str = ""


# --- agents ----------------------------------------------------------------------------------------


class AgentMessage(TraceEvent, frozen=True, kw_only=True, tag="agent.message.v1"):
    """Text the model produced."""

    #: the text
    text: str


class AgentThinking(TraceEvent, frozen=True, kw_only=True, tag="agent.thinking.v1"):
    """The model's visible reasoning, when it returns any."""

    #: the reasoning's text
    text: str


#: what served a tool call: a built-in tool, an MCP server, a NATS tool service, the session's caller
ToolKindName = str


class AgentToolUse(TraceEvent, frozen=True, kw_only=True, tag="agent.tool_use.v1"):
    """The model called a tool. ``kind`` says what serves it (``builtin``, ``mcp``, ``service``,
    ``custom``) and ``source`` which MCP server or tool service."""

    #: the call's id, as the model gave it
    tool_use_id: str
    #: the tool's name as the model sees it
    name: str
    #: the tool's input, as the model wrote it
    input: dict[str, Any] = msgspec.field(default_factory=dict)
    #: what serves the tool: ``builtin``, ``mcp``, ``service`` or ``custom``
    kind: ToolKindName = "builtin"
    #: the MCP server or tool service that serves it (empty for built-in tools)
    source: str = ""
    #: ``allow``: the call runs; ``ask``: it waits for a person's confirmation first (the agent's
    #: permission policy)
    evaluated_permission: Literal["allow", "ask"] = "allow"


class AgentToolResult(TraceEvent, frozen=True, kw_only=True, tag="agent.tool_result.v1"):
    """A tool's result as the model saw it (``ref`` points to the full output when it was too big),
    and how long the call took."""

    #: the call's id
    tool_use_id: str
    #: the tool's name
    name: str = ""
    #: the call failed; ``content`` says why
    is_error: bool = False
    #: the result as the model saw it (possibly cut short)
    content: str = ""
    #: where the full output is in the workspace, when it was too big for the model
    ref: str = ""
    #: what served the tool: ``builtin``, ``mcp``, ``service`` or ``custom``
    kind: ToolKindName = "builtin"
    #: the MCP server or tool service that served it
    source: str = ""
    #: how long the call took, in milliseconds
    duration_ms: float = 0.0


class CustomToolUse(TraceEvent, frozen=True, kw_only=True, tag="agent.custom_tool_use.v1"):
    """A call to a tool the session's caller answers: the thread waits (``requires_action``) for a
    ``user.custom_tool_result`` naming ``tool_use_id`` on ``<root>.s.<session>.in.tool_result.<id>``."""

    #: the call's id: the answer's ``custom_tool_use_id``
    tool_use_id: str
    #: the custom tool's name
    name: str
    #: the tool's input, as the model wrote it
    input: dict[str, Any] = msgspec.field(default_factory=dict)
    #: where to send the answer
    result_subject: str = ""


class ToolConfirmationRequested(
    TraceEvent, frozen=True, kw_only=True, tag="agent.tool_confirmation_requested.v1"
):
    """A tool call waits for a person's confirmation (its agent's policy for the tool is
    ``always_ask``): its thread idles with ``requires_action`` until a ``user.tool_confirmation``
    naming ``tool_use_id`` arrives on ``answer_subject``, or ``timeout_s`` passes (then it is denied).
    Cross-posted to the session's primary view by the HTTP API."""

    #: the call's id: the answer's ``tool_use_id``
    tool_use_id: str
    #: the tool's name
    name: str
    #: the tool's input, as the model wrote it
    input: dict[str, Any] = msgspec.field(default_factory=dict)
    #: what serves the tool: ``builtin``, ``mcp``, ``service`` or ``custom``
    kind: ToolKindName = "builtin"
    #: where to send the answer
    answer_subject: str = ""
    #: how long the call waits before it is denied, in seconds
    timeout_s: float = 0.0


class ToolConfirmationAnswered(
    TraceEvent, frozen=True, kw_only=True, tag="agent.tool_confirmation_answered.v1"
):
    """The answer a waiting tool call got: ``allow`` (it runs), ``deny`` (the model reads
    ``deny_message``) or ``timeout`` (no answer in time: denied)."""

    #: the call's id
    tool_use_id: str
    #: the tool's name
    name: str = ""
    #: ``allow``, ``deny``, or ``timeout``
    result: Literal["allow", "deny", "timeout"]
    #: why it was denied, as the model reads it
    deny_message: str = ""
    #: who answered (empty for a timeout)
    by: str = ""


class ThreadInterrupted(TraceEvent, frozen=True, kw_only=True, tag="session.thread_interrupted.v1"):
    """An interrupt stopped this thread's work in progress (``session.interrupt.v1``): its pending
    tool calls were closed with an error result and it idles; a follow-up continues it."""

    #: why, as the interrupt said
    reason: str = ""
    #: who interrupted (as the interrupt said)
    by: str = ""


class ToolSourceFailed(TraceEvent, frozen=True, kw_only=True, tag="agent.tool_source_failed.v1"):
    """An agent's MCP server or tool service could not be used (it did not start, died, answered
    garbage, or does not offer a tool the team file allows): its tools answer with this error, and
    the thread goes on with the others."""

    #: ``mcp`` or ``service``
    kind: ToolKindName
    #: the MCP server's or tool service's name
    source: str
    #: what went wrong, in one line
    message: str


class ToolDenied(TraceEvent, frozen=True, kw_only=True, tag="agent.tool_denied.v1"):
    """Security: the model called a tool its agent may not use; the worker refused it."""

    #: the call's id
    tool_use_id: str
    #: the tool the model called
    name: str
    #: the tools the agent may use
    allowed: list[str] = msgspec.field(default_factory=list)


class ThreadMessageSent(TraceEvent, frozen=True, kw_only=True, tag="agent.thread_message_sent.v1"):
    """A message to another thread: a delegation or a follow-up."""

    #: the receiving thread
    to_thread_id: str
    #: the receiving thread's agent
    to_agent: str
    #: the task or follow-up sent
    content: str


class ThreadMessageReceived(TraceEvent, frozen=True, kw_only=True, tag="agent.thread_message_received.v1"):
    """A message from another thread: a subagent's reply, as the lead received it."""

    #: the thread that replied
    from_thread_id: str
    #: its agent
    from_agent: str
    #: the reply's text
    content: str


# --- users ---------------------------------------------------------------------------------------


class UserEvent(TraceEvent, frozen=True, kw_only=True, tag="user.event.v1"):
    """An event a user sent to the session through the HTTP API (a message, an outcome, an
    interrupt, a custom tool's answer), recorded as the API echoed it: the session's log then holds
    both sides, and the API lists and streams it as ``user.<...>`` with the id ``sevt_<msg_id>``."""

    #: the hosted service's event type: ``user.message``, ``user.define_outcome``...
    event_type: str
    #: the event's fields as the API echoed them (without ``id``, ``type`` and ``processed_at``)
    payload: dict[str, Any] = msgspec.field(default_factory=dict)


# --- spans -----------------------------------------------------------------------------------------


class ModelRequestStart(TraceEvent, frozen=True, kw_only=True, tag="span.model_request_start.v1"):
    """A model call began."""

    #: the model called
    model: str


class ModelRequestEnd(TraceEvent, frozen=True, kw_only=True, tag="span.model_request_end.v1"):
    """A model call ended, with its usage and cost."""

    #: the model called
    model: str
    #: why the model stopped (``end_turn``, ``tool_use``, ``max_tokens``...); empty on error
    stop_reason: str = ""
    #: tokens and cost of the call
    usage: Usage = msgspec.field(default_factory=Usage)
    #: how long the call took, in milliseconds
    duration_ms: float = 0.0
    #: why the call failed, when it did
    error: ErrorInfo | None = None


class OutcomeEvaluationStart(TraceEvent, frozen=True, kw_only=True, tag="span.outcome_evaluation_start.v1"):
    """The grader started grading attempt ``iteration`` against the outcome."""

    #: the outcome's id
    outcome_id: str
    #: the attempt graded, from 1
    iteration: int


class OutcomeEvaluationEnd(TraceEvent, frozen=True, kw_only=True, tag="span.outcome_evaluation_end.v1"):
    """The grader's verdict on attempt ``iteration``: the result, why, each criterion, its usage."""

    #: the outcome's id
    outcome_id: str
    #: the attempt graded, from 1
    iteration: int
    #: the grader's result for this attempt
    result: OutcomeResult
    #: why: the feedback the lead revises with
    explanation: str = ""
    #: each criterion's grade
    criteria: list[CriterionVerdict] = msgspec.field(default_factory=list)
    #: tokens and cost of the grader's model call
    usage: Usage = msgspec.field(default_factory=Usage)
    #: how long grading took, in milliseconds
    duration_ms: float = 0.0


# --- webhooks --------------------------------------------------------------------------------------


class WebhookDelivered(TraceEvent, frozen=True, kw_only=True, tag="webhook.delivered.v1"):
    """An endpoint accepted a webhook (a 2xx answer)."""

    #: the endpoint's URL
    url: str
    #: the webhook event's id (``whevt_...``), the same on every attempt
    event_id: str
    #: the webhook event's type (``session.status_idled``...)
    event_type: str
    #: which attempt this was, from 1
    attempt: int
    #: the endpoint's HTTP status code
    status_code: int
    #: how long the request took, in milliseconds
    duration_ms: float = 0.0


class WebhookFailed(TraceEvent, frozen=True, kw_only=True, tag="webhook.delivery_failed.v1"):
    """An attempt failed (non-2xx, redirect, timeout, connection); ``retry_in_s`` when it is retried."""

    #: the endpoint's URL
    url: str
    #: the webhook event's id (``whevt_...``)
    event_id: str
    #: the webhook event's type
    event_type: str
    #: which attempt failed, from 1
    attempt: int
    #: what went wrong, in one line
    error: str
    #: seconds until the next attempt (absent: it is not retried)
    retry_in_s: float | None = None


class WebhookEndpointDisabled(TraceEvent, frozen=True, kw_only=True, tag="webhook.endpoint_disabled.v1"):
    """An endpoint is disabled after a lasting streak of failed attempts; ``reason`` names its last error."""

    #: the endpoint's URL
    url: str
    #: why it was disabled
    reason: str
    #: consecutive failed attempts when it was disabled
    failures: int = 0


class WebhookDeliverySkipped(TraceEvent, frozen=True, kw_only=True, tag="webhook.delivery_skipped.v1"):
    """A delivery was given up without an attempt (a refused address, no secret, a disabled endpoint)."""

    #: the endpoint's URL without userinfo, query and fragment
    url: str
    #: the webhook event id (``whevt_...``) that was not sent
    event_id: str
    #: the webhook event type that was not sent (``session.status_idled``)
    event_type: str
    #: why, in one line, with the fix where there is one
    reason: str


# --- workspace and bus -----------------------------------------------------------------------------


class FileWritten(TraceEvent, frozen=True, kw_only=True, tag="workspace.file_written.v1"):
    """A file was written to the session's workspace."""

    #: the file's path in the session's workspace
    path: str
    #: its size, in bytes
    size: int
    #: its content's digest (``SHA-256=<base64url>``)
    digest: str
    #: who wrote it
    provenance: Provenance


class MessageRejected(TraceEvent, frozen=True, kw_only=True, tag="bus.message_rejected.v1"):
    """An actor could not decode or validate a message; it was terminated, not redelivered."""

    #: the subject the message came on
    subject: str
    #: the actor that rejected it
    actor: str
    #: why, in one line
    reason: str
    #: the message's size, in bytes
    size: int
    #: the message's first bytes, as text
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
    | ToolConfirmationRequested
    | ToolConfirmationAnswered
    | ThreadInterrupted
    | ToolSourceFailed
    | ThreadMessageSent
    | ThreadMessageReceived
    | UserEvent
    | ModelRequestStart
    | ModelRequestEnd
    | OutcomeEvaluationStart
    | OutcomeEvaluationEnd
    | WebhookDelivered
    | WebhookFailed
    | WebhookEndpointDisabled
    | WebhookDeliverySkipped
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

    #: the most sessions to answer
    limit: Annotated[int, msgspec.Meta(ge=1)] = 50


class EventsQuery(_TraceQuery, frozen=True, kw_only=True, tag="trace.query.events.v1"):
    """One session's stored events in stream order; narrowed to a thread, an agent or a kind if given."""

    #: the session whose events are wanted
    session_id: str
    #: only this thread's events (empty: all)
    thread_id: str = ""
    #: only this agent's events (empty: all)
    agent: str = ""
    #: only events of this kind: an event's name without its version, ``agent.tool_use`` (empty: all)
    kind: str = ""


class ProvenanceQuery(_TraceQuery, frozen=True, kw_only=True, tag="trace.query.provenance.v1"):
    """Where a file of a session came from (its latest write)."""

    #: the session the file belongs to
    session_id: str
    #: the file's path in the session's workspace
    path: str


TraceQuery = SessionsQuery | EventsQuery | ProvenanceQuery


class SessionSummary(msgspec.Struct, frozen=True, kw_only=True):
    """A session as its stored events tell it (``idle`` once a ``session.status_idle`` is stored)."""

    #: the session's id
    session_id: str
    #: its first stored event's time (UTC)
    started: datetime
    #: its latest stored event's time (UTC)
    last_event: datetime
    #: threads created, the lead's included
    threads: int
    #: the cost of its model calls so far, in US dollars
    cost_usd: float
    #: ``running``, or ``idle`` once a ``session.status_idle`` is stored
    status: str
    #: why it stopped, once it has
    stop_reason: str = ""


class ThreadRef(msgspec.Struct, frozen=True, kw_only=True):
    """A thread, by id and agent."""

    #: the thread's id
    thread_id: str
    #: its agent
    agent: str


class ToolCallRef(msgspec.Struct, frozen=True, kw_only=True):
    """A tool call, by id and tool name."""

    #: the call's id
    tool_use_id: str
    #: the tool's name
    name: str


class OriginSource(msgspec.Struct, frozen=True, kw_only=True):
    """A tool result a thread read; for a delegation, the ``thread`` that answered and its sources."""

    #: the call's id
    tool_use_id: str
    #: the tool's name
    name: str
    #: the tool's input
    input: dict[str, Any]
    #: when the call was made (UTC)
    called: datetime
    #: when its result came (UTC)
    returned: datetime
    #: the call failed
    is_error: bool
    #: the result, as the model saw it
    result: str
    #: for a delegation: the thread that answered
    thread: ThreadRef | None = None
    #: for a delegation: what that thread had read
    sources: list[OriginSource] = msgspec.field(default_factory=list)


class FileOriginReport(msgspec.Struct, frozen=True, kw_only=True):
    """A file's latest write: who wrote it, on what task, and what its thread had read before."""

    #: the file's path in the session's workspace
    path: str
    #: its size, in bytes
    size: int
    #: its content's digest
    digest: str
    #: when the latest write happened (UTC)
    written: datetime
    #: the thread that wrote it
    thread_id: str
    #: that thread's agent
    agent: str
    #: the tool call that wrote it; null when the worker wrote it (the lead's report, a long answer)
    tool_call: ToolCallRef | None
    #: the writing thread's task
    task: str
    #: how many times the file was written before
    earlier_writes: int
    #: what the writing thread had read before the write
    sources: list[OriginSource]


class _TraceAnswer(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """The collector's answer to a ``TraceQuery``."""


class SessionsAnswer(_TraceAnswer, frozen=True, kw_only=True, tag="trace.answer.sessions.v1"):
    """The collector's answer to a ``SessionsQuery``."""

    #: the sessions, most recently active first
    sessions: list[SessionSummary]


class EventsAnswer(_TraceAnswer, frozen=True, kw_only=True, tag="trace.answer.events.v1"):
    """The collector's answer to an ``EventsQuery``."""

    #: the events, in stream order
    events: list[AnyTraceEvent]


class ProvenanceAnswer(_TraceAnswer, frozen=True, kw_only=True, tag="trace.answer.provenance.v1"):
    """The collector's answer to a ``ProvenanceQuery``."""

    #: where the file came from
    origin: FileOriginReport


class QueryFailed(_TraceAnswer, frozen=True, kw_only=True, tag="trace.answer.failed.v1"):
    """The query was malformed (``invalid_query``) or could not be answered (``query_failed``)."""

    #: ``invalid_query`` or ``query_failed``, and why
    error: ErrorInfo


TraceAnswer = SessionsAnswer | EventsAnswer | ProvenanceAnswer | QueryFailed

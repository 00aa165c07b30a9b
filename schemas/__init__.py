"""staffwork's wire types: every message, spec and trace event, as msgspec Structs.

This package does no I/O and imports nothing else of staffwork, so another system can depend on it
(or on the JSON Schema that ``staffwork schema`` prints) just to publish messages.
"""

from __future__ import annotations

from schemas.base import ErrorInfo, Message, Token, Usage
from schemas.errors import SpecError, StaffworkError
from schemas.export import json_schema
from schemas.files import FileInfo, Provenance
from schemas.ids import new_id
from schemas.outcome import Check, CriterionVerdict, GradeRequest, GradeVerdict, Outcome, OutcomeReport
from schemas.session import (
    SessionAccepted,
    SessionCancel,
    SessionInterrupt,
    SessionMessage,
    SessionRecord,
    SessionResult,
    SessionState,
    SessionSubmit,
    SubmitReply,
)
from schemas.team import AgentSpec, MemoryAttachment, TeamSpec, parse_team, team_from_dict
from schemas.thread import CustomToolResult, Delegation, FollowUp, ThreadReply, ToolConfirmation
from schemas.trace import (
    AnyTraceEvent,
    EventsAnswer,
    EventsQuery,
    FileOriginReport,
    ProvenanceAnswer,
    ProvenanceQuery,
    QueryFailed,
    SessionsAnswer,
    SessionsQuery,
    SessionSummary,
    TraceAnswer,
    TraceEvent,
    TraceQuery,
    event_kind,
)
from schemas.webhooks import WebhookDelivery, WebhookSpec

#: Every message another system may publish or read (trace events are listed in ``AnyTraceEvent``).
SESSION_MESSAGES: tuple[type[Message], ...] = (
    SessionSubmit,
    SubmitReply,
    SessionAccepted,
    SessionResult,
    SessionMessage,
    SessionCancel,
    SessionInterrupt,
    Delegation,
    FollowUp,
    ThreadReply,
    CustomToolResult,
    ToolConfirmation,
    GradeRequest,
    GradeVerdict,
    WebhookDelivery,
)
TRACE_EVENTS: tuple[type[TraceEvent], ...] = tuple(AnyTraceEvent.__args__)
PUBLIC_MESSAGES: tuple[type[Message], ...] = SESSION_MESSAGES + TRACE_EVENTS


def tag_of(cls: type[Message]) -> str:
    """The wire tag of a message class: ``session.submit.v1``."""
    return str(cls.__struct_config__.tag)


__all__ = [
    "PUBLIC_MESSAGES",
    "SESSION_MESSAGES",
    "TRACE_EVENTS",
    "AgentSpec",
    "AnyTraceEvent",
    "Check",
    "CriterionVerdict",
    "CustomToolResult",
    "Delegation",
    "ErrorInfo",
    "EventsAnswer",
    "EventsQuery",
    "FileInfo",
    "FileOriginReport",
    "FollowUp",
    "GradeRequest",
    "GradeVerdict",
    "MemoryAttachment",
    "Message",
    "Outcome",
    "OutcomeReport",
    "Provenance",
    "ProvenanceAnswer",
    "ProvenanceQuery",
    "QueryFailed",
    "SessionAccepted",
    "SessionCancel",
    "SessionInterrupt",
    "SessionMessage",
    "SessionRecord",
    "SessionResult",
    "SessionState",
    "SessionSubmit",
    "SessionSummary",
    "SessionsAnswer",
    "SessionsQuery",
    "SpecError",
    "StaffworkError",
    "SubmitReply",
    "TeamSpec",
    "ThreadReply",
    "Token",
    "ToolConfirmation",
    "TraceAnswer",
    "TraceEvent",
    "TraceQuery",
    "Usage",
    "WebhookDelivery",
    "WebhookSpec",
    "event_kind",
    "json_schema",
    "new_id",
    "parse_team",
    "tag_of",
    "team_from_dict",
]

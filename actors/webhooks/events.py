"""What a webhook says: which trace event announces which webhook event, and the event's ``data`` in
the shape the anthropic SDK types it (``anthropic.types.beta.BetaWebhookEventData``).

``data`` has the SDK's fields: ``type``, ``id`` (the session's id), ``organization_id`` and
``workspace_id`` (:class:`~actors.webhooks.endpoints.WebhookSettings`: staffwork has neither), and
for thread events ``session_thread_id``. ``session.requires_action`` (a custom tool call waits for
the session's caller, or a tool call for a person's confirmation: ``action`` says which) has no
``session_thread_id`` in the SDK's type: the thread, like the call's id and name, is among
staffwork's details. Staffwork's own details (an object, maybe empty) go under one extra key,
:data:`~schemas.webhooks.DETAILS_KEY` (``"staffwork"``), which the SDK's models keep as an extra
field; docs/architecture.md, "Webhooks", lists them.
"""

from __future__ import annotations

from typing import Any, assert_never

import msgspec

from actors.webhooks.endpoints import WebhookSettings
from schemas.trace import (
    CustomToolUse,
    OutcomeEvaluationEnd,
    SessionStatusIdle,
    SessionStatusRunning,
    SessionStatusTerminated,
    ThreadCreated,
    ThreadStatusIdle,
    ToolConfirmationRequested,
)
from schemas.webhooks import DETAILS_KEY, WebhookEventType

#: The trace events a webhook can announce (``bus.provision.WEBHOOK_SOURCES`` filters the same).
WebhookSource = (
    SessionStatusRunning
    | SessionStatusIdle
    | SessionStatusTerminated
    | ThreadCreated
    | ThreadStatusIdle
    | OutcomeEvaluationEnd
    | CustomToolUse
    | ToolConfirmationRequested
)


def webhook_event(event: WebhookSource, settings: WebhookSettings) -> tuple[WebhookEventType, dict[str, Any]]:
    """The webhook event type ``event`` announces, and the payload's ``data``."""
    kind: WebhookEventType
    thread: str | None = None  # the thread of a thread event
    details: dict[str, Any]
    match event:
        case SessionStatusRunning():
            kind, details = "session.status_run_started", {}
        case SessionStatusIdle():
            kind = "session.status_idled"
            details = {"stop_reason": event.stop_reason, "usage": msgspec.to_builtins(event.usage)}
        case SessionStatusTerminated():
            kind, details = "session.status_terminated", {"reason": event.reason}
        case ThreadCreated():
            kind, thread, details = "session.thread_created", event.thread_id, {"agent": event.agent}
        case ThreadStatusIdle():
            kind, thread = "session.thread_idled", event.thread_id
            details = {"agent": event.agent, "stop_reason": event.stop_reason}
        case OutcomeEvaluationEnd():
            kind = "session.outcome_evaluation_ended"
            details = {"outcome_id": event.outcome_id, "iteration": event.iteration, "result": event.result}
        case CustomToolUse() | ToolConfirmationRequested():
            kind = "session.requires_action"
            details = {
                "session_thread_id": event.thread_id,
                "agent": event.agent,
                "tool_use_id": event.tool_use_id,
                "name": event.name,
            }
            if isinstance(event, CustomToolUse):
                details["action"] = "custom_tool_result"
            else:
                details |= {"action": "tool_confirmation", "answer_subject": event.answer_subject}
        case _:
            assert_never(event)
    data: dict[str, Any] = {
        "type": kind,
        "id": event.session_id,
        "organization_id": settings.organization_id,
        "workspace_id": settings.workspace_id,
    }
    if thread is not None:
        data["session_thread_id"] = thread
    data[DETAILS_KEY] = details
    return kind, data

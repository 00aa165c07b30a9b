"""The live table of ``staffwork run``: one row per thread (status, turns, tool calls, tokens,
elapsed), built from the session's trace events. A thread ends when it goes idle, is terminated, or
fails for good (the runtime's ``session.error`` while it runs: its model calls were exhausted, say),
as ``staffwork trace`` tells it. The webhooks actor's events are no thread: they are not rows, but a
delivery skipped or given up and an endpoint disabled are notices. How a tool call that waits for a
person's confirmation, and its answer, read (:func:`confirmation_request`, :func:`confirmation_hint`,
:func:`confirmation_answer`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from rich.table import Table

from schemas.trace import (
    AgentToolUse,
    AnyTraceEvent,
    CustomToolUse,
    ModelRequestEnd,
    OutcomeEvaluationEnd,
    OutcomeEvaluationStart,
    SessionErrorEvent,
    SessionStatusIdle,
    SessionStatusRunning,
    SessionStatusTerminated,
    ThreadCreated,
    ThreadStatusIdle,
    ThreadStatusRunning,
    ThreadStatusTerminated,
    ToolConfirmationAnswered,
    ToolConfirmationRequested,
    ToolSourceFailed,
    WebhookDelivered,
    WebhookDeliverySkipped,
    WebhookEndpointDisabled,
    WebhookFailed,
)

_WEBHOOK_EVENTS = (WebhookDelivered, WebhookDeliverySkipped, WebhookEndpointDisabled, WebhookFailed)
_COLOURS = {"running": "yellow", "idle": "green", "requires_action": "magenta"}  # else red


def _input(arguments: dict[str, Any]) -> str:
    flat = json.dumps(arguments, ensure_ascii=False)
    return flat if len(flat) <= 160 else json.dumps(arguments, ensure_ascii=False, indent=2)


def _deadline(request: ToolConfirmationRequested) -> str:
    at = (request.time + timedelta(seconds=request.timeout_s)).astimezone()
    return f"denied without an answer in {request.timeout_s:g}s (at {at:%H:%M:%S})"


def confirmation_request(request: ToolConfirmationRequested) -> str:
    """What a person reads before answering: who asks (agent, thread), the tool, its input, the timeout."""
    where = f" ({request.thread_id})" if request.thread_id else ""
    served = "" if request.kind == "builtin" else f" ({request.kind} tool)"
    return (
        f"confirm: {request.agent or 'lead'}{where} wants to call {request.name}{served} with "
        f"{_input(request.input)}\n  {_deadline(request)} · session {request.session_id} "
        f"· call {request.tool_use_id}"
    )


def confirmation_hint(request: ToolConfirmationRequested) -> str:
    """One line: a tool call waits for confirmation, and the commands that answer it."""
    call = f"{request.session_id} {request.tool_use_id}"
    return (
        f"waiting for confirmation: {request.agent or 'lead'} ({request.thread_id or 'lead'}) calls "
        f"{request.name} {json.dumps(request.input, ensure_ascii=False)}; answer with staffwork approve "
        f"{call}, or staffwork deny {call} --reason TEXT ({_deadline(request)})"
    )


def confirmation_answer(answer: ToolConfirmationAnswered) -> str:
    """One line: how a tool call waiting for confirmation was answered, and by whom."""
    call = f"{answer.name} ({answer.tool_use_id})" if answer.name else answer.tool_use_id
    if answer.result == "allow":
        return f"{call} allowed by {answer.by or '-'}"
    if answer.result == "deny":
        why = f": {answer.deny_message}" if answer.deny_message else ""
        return f"{call} denied by {answer.by or '-'}{why}"
    return f"{call} not confirmed in time: denied"


@dataclass
class ThreadRow:
    thread_id: str
    agent: str
    status: str = "created"
    turns: int = 0
    tools: int = 0
    tokens: int = 0
    cost: float = 0.0
    started: datetime | None = None
    ended: datetime | None = None

    def elapsed(self, now: datetime) -> float:
        if self.started is None:
            return 0.0
        return ((self.ended or now) - self.started).total_seconds()

    def as_json(self) -> dict[str, Any]:
        return {
            "thread_id": self.thread_id,
            "agent": self.agent,
            "status": self.status,
            "started": self.started.isoformat() if self.started else None,
            "ended": self.ended.isoformat() if self.ended else None,
            "turns": self.turns,
            "tool_calls": self.tools,
            "tokens": self.tokens,
            "cost_usd": round(self.cost, 6),
        }


@dataclass
class Progress:
    threads: dict[str, ThreadRow] = field(default_factory=dict)
    last: datetime | None = None
    models: list[str] = field(default_factory=list)  # the model ids that answered, in first-seen order
    reported: set[str] = field(default_factory=set)  # tool source problems printed already

    def row(self, thread_id: str, agent: str) -> ThreadRow:
        if thread_id not in self.threads:
            self.threads[thread_id] = ThreadRow(thread_id, agent)
        return self.threads[thread_id]

    def apply(self, event: AnyTraceEvent) -> None:
        if isinstance(event, _WEBHOOK_EVENTS):
            return
        self.last = event.time
        row = self.row(event.thread_id or "lead", event.agent)
        if isinstance(event, SessionStatusRunning | ThreadStatusRunning | ThreadCreated):
            row.status = "running"  # a follow-up runs a thread again
            row.started = row.started or event.time
            row.ended = None
        elif isinstance(event, ModelRequestEnd):
            row.turns += 1
            row.tokens += event.usage.input_tokens + event.usage.output_tokens
            row.cost += event.usage.cost_usd
            if event.error is None and event.model and event.model not in self.models:
                self.models.append(event.model)
        elif isinstance(event, AgentToolUse):
            row.tools += 1
        elif isinstance(event, ThreadStatusIdle | SessionStatusIdle):
            row.status = "idle" if event.stop_reason in ("end_turn", "") else event.stop_reason
            row.ended = event.time
        elif isinstance(event, ThreadStatusTerminated | SessionStatusTerminated):
            row.status = event.reason or "terminated"  # why: canceled, failed, budget_reached...
            row.ended = event.time
        elif isinstance(event, SessionErrorEvent):
            # The runtime ends a thread's run that failed for good with this. One without a thread
            # (the lead's, or the grader's, after which the lead goes on) leaves the result to say.
            if event.thread_id and row.status == "running":
                row.status = "failed"
                row.ended = event.time
        elif isinstance(event, OutcomeEvaluationStart):
            row.status = f"grading {event.iteration}"
            row.started = row.started or event.time
        elif isinstance(event, OutcomeEvaluationEnd):  # its usage came with the grader's model calls
            row.status = event.result
            row.ended = event.time

    def notice(self, event: AnyTraceEvent) -> str | None:
        """A line to print above the table for an event the user must see: a custom tool call
        waiting for their answer; a tool source that failed, a webhook skipped or given up, a webhook
        endpoint disabled (each message once)."""
        if isinstance(event, CustomToolUse):
            return (
                f"waiting for you: {event.agent} called {event.name} {json.dumps(event.input)}; answer with "
                f"staffwork answer {event.session_id} {event.tool_use_id} TEXT"
            )
        if isinstance(event, ToolSourceFailed) and event.message not in self.reported:
            self.reported.add(event.message)
            return f"warning: {event.agent}: {event.message}"
        line = None
        if isinstance(event, WebhookDeliverySkipped):
            line = f"warning: webhook {event.event_type} to {event.url} skipped: {event.reason}"
        elif isinstance(event, WebhookFailed) and event.retry_in_s is None:
            line = (
                f"warning: webhook {event.event_type} to {event.url} given up after {event.attempt} "
                f"attempts: {event.error}"
            )
        elif isinstance(event, WebhookEndpointDisabled):
            line = (
                f"warning: webhook endpoint {event.url} disabled: {event.reason}; "
                "staffwork webhooks enable URL turns it on again"
            )
        if line is None or line in self.reported:
            return None
        self.reported.add(line)
        return line

    def finish(self, status: str) -> None:
        """The session's result says it ended ``status``: a lead row still running ends with it (a
        lead that failed for good publishes its failed result, and no ``session.status_idle``)."""
        lead = self.threads.get("lead")
        if lead is not None and lead.status == "running":
            lead.status = status
            lead.ended = self.last

    def table(self) -> Table:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("thread", "agent", "status", "turns", "tool calls", "tokens", "elapsed"):
            table.add_column(
                column, justify="right" if column in ("turns", "tool calls", "tokens", "elapsed") else "left"
            )
        now = self.last or datetime.now().astimezone()
        for row in self.threads.values():
            colour = _COLOURS.get(row.status, "red")
            table.add_row(
                row.thread_id,
                row.agent,
                f"[{colour}]{row.status}[/]",
                str(row.turns),
                str(row.tools),
                f"{row.tokens:,}",
                f"{row.elapsed(now):.1f}s",
            )
        return table

"""The session tree: text is text (never markup), and statuses follow runs, follow-ups and failures."""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Any

from rich.console import Console

from actors.views.tree import build, render
from schemas.base import ErrorInfo
from schemas.trace import (
    AgentToolResult,
    AgentToolUse,
    AnyTraceEvent,
    CustomToolUse,
    SessionErrorEvent,
    ThreadInterrupted,
    ThreadStatusIdle,
    ThreadStatusRunning,
    ToolConfirmationAnswered,
    ToolConfirmationRequested,
    WebhookDelivered,
    WebhookFailed,
)
from tests.helpers import incident_trace


def text_of(session_id: str, events: list[AnyTraceEvent]) -> str:
    console = Console(width=240, file=io.StringIO(), record=True)
    console.print(render(session_id, events))
    return console.export_text()


def test_markup_in_tool_arguments_and_errors_is_shown_as_written() -> None:
    events = incident_trace()
    base = events[-1].time
    ids = {"session_id": events[0].session_id, "thread_id": "t-toolu_off_lead_1_1", "agent": "logs"}
    pattern = {"pattern": "[bold red]ERROR[/]"}
    failure = ErrorInfo(kind="x", message="bad [link=https://x.example]y")
    events += [
        AgentToolUse(**ids, time=base, tool_use_id="tu_m", name="grep", input=pattern),  # type: ignore[arg-type]
        AgentToolResult(**ids, time=base, tool_use_id="tu_m", name="grep", content="level=[/ERROR]"),  # type: ignore[arg-type]
        SessionErrorEvent(**ids, time=base, error=failure),
    ]
    text = text_of(events[0].session_id, events)  # "[/ERROR]" alone used to crash rich's markup parser
    assert "grep(pattern='[bold red]ERROR[/]')" in text
    assert "✗ error: bad [link=https://x.example]y" in text


def test_a_lead_that_failed_for_good_is_failed_not_running() -> None:
    events = [e for e in incident_trace() if type(e).__name__ != "SessionStatusIdle"]
    events.append(
        SessionErrorEvent(
            session_id=events[0].session_id,
            time=events[-1].time + timedelta(seconds=1),
            error=ErrorInfo(kind="RuntimeError", message="the lead crashed"),
        )
    )  # fmt: skip  (the runtime's failure event names no thread: the submit has none)
    threads, totals = build(events)
    assert totals["status"] == "failed"
    assert threads["lead"].status == "failed"
    assert threads["lead"].ended == events[-1].time


def test_a_follow_up_in_progress_shows_its_thread_running() -> None:
    events = incident_trace()
    ids = {"session_id": events[0].session_id, "thread_id": "t-toolu_off_lead_1_0", "agent": "deploys"}
    later = events[-1].time + timedelta(seconds=1)
    threads, _ = build([*events, ThreadStatusRunning(**ids, time=later)])
    assert (threads["t-toolu_off_lead_1_0"].status, threads["t-toolu_off_lead_1_0"].ended) == (
        "running",
        None,
    )
    threads, _ = build(
        [
            *events,
            ThreadStatusRunning(**ids, time=later),
            ThreadStatusIdle(**ids, time=later + timedelta(seconds=2)),
        ]
    )
    assert threads["t-toolu_off_lead_1_0"].status == "idle"


def test_the_grader_and_webhooks_show_their_state_and_are_not_counted_as_threads() -> None:
    events = incident_trace()
    sid, later = events[0].session_id, events[-1].time + timedelta(seconds=1)
    hook = {"session_id": sid, "thread_id": "webhooks", "agent": "webhooks", "url": "https://x/h"}
    kind = {"event_id": "whevt_1", "event_type": "session.status_idled"}
    events += [
        WebhookFailed(**hook, **kind, attempt=1, error="503", retry_in_s=1.5, time=later),
        WebhookDelivered(**hook, **kind, attempt=2, status_code=204, time=later),  # type: ignore[arg-type]
    ]
    threads, _ = build(events)
    assert threads["webhooks"].status == "delivered"
    assert threads["webhooks"].steps == [
        "✗ webhook session.status_idled → https://x/h · attempt 1: 503 · retry in 1.5s",
        "↗ webhook session.status_idled → https://x/h · 204",
    ]
    assert "· 5 threads" in text_of(sid, events).splitlines()[0]  # the lead and four subagents


def test_confirmations_show_the_wait_the_answer_and_who_gave_it() -> None:
    events = incident_trace()
    sid, base = events[0].session_id, events[-1].time
    logs: dict[str, Any] = {"session_id": sid, "thread_id": "t-toolu_off_lead_1_1", "agent": "logs"}
    tickets: dict[str, Any] = {"session_id": sid, "thread_id": "t-toolu_off_lead_1_3", "agent": "tickets"}

    def at(seconds: float) -> dict[str, Any]:
        return {"time": base + timedelta(seconds=seconds)}

    def asked(call: str, timeout: float = 60.0, **where: Any) -> list[AnyTraceEvent]:
        fields = {**logs, **where}
        return [
            AgentToolUse(
                **fields,
                tool_use_id=call,
                name="sql",
                input={"query": "select 1"},
                evaluated_permission="ask",
            ),
            ToolConfirmationRequested(**fields, tool_use_id=call, name="sql", timeout_s=timeout),
        ]

    events += [
        *asked("tu_allow", **at(1)),
        ToolConfirmationAnswered(**logs, **at(3.5), tool_use_id="tu_allow", name="sql", result="allow",
                                 by="run:alice"),
        AgentToolResult(**logs, **at(3.6), tool_use_id="tu_allow", name="sql", content="1"),
        *asked("tu_deny", **at(4)),
        ToolConfirmationAnswered(**logs, **at(5), tool_use_id="tu_deny", name="sql", result="deny",
                                 deny_message="not on the primary", by="api:acme"),
        AgentToolResult(**logs, **at(5), tool_use_id="tu_deny", name="sql", is_error=True, content="denied"),
        *asked("tu_late", 2, **at(6)),
        ToolConfirmationAnswered(**logs, **at(8), tool_use_id="tu_late", name="sql", result="timeout"),
        AgentToolResult(**logs, **at(8), tool_use_id="tu_late", name="sql", is_error=True, content="timeout"),
        *asked("tu_wait", **at(9)),
        *asked("tu_cut", **at(9), **tickets),
        CustomToolUse(**tickets, **at(9), tool_use_id="tu_custom", name="approve"),
        ThreadStatusIdle(**tickets, **at(9), stop_reason="requires_action"),
        AgentToolResult(**tickets, **at(10), tool_use_id="tu_cut", name="sql", is_error=True,
                        content="[interrupted by the user: wrong window]"),
        AgentToolResult(**tickets, **at(10), tool_use_id="tu_custom", name="approve", is_error=True,
                        content="[interrupted by the user: wrong window]"),
        ThreadInterrupted(**tickets, **at(10), reason="wrong window", by="bob"),
    ]  # fmt: skip
    threads, _ = build(events)
    steps = threads["t-toolu_off_lead_1_1"].steps
    assert "✓ sql allowed by run:alice after 2.50s · tu_allow" in steps
    assert "✗ sql denied by api:acme after 1.00s: not on the primary · tu_deny" in steps
    assert "✗ sql not confirmed within 2s: denied · tu_late" in steps
    assert "⏸ sql waits for confirmation (denied after 60s) · tu_wait" in steps
    cut = threads["t-toolu_off_lead_1_3"].steps
    assert "✗ sql asked for confirmation, closed by an interrupt · tu_cut" in cut
    assert "✗ approve closed by an interrupt before the caller answered · tu_custom" in cut
    assert not any("waits for" in step for step in cut)
    assert cut[-1] == "⏹ interrupted by bob: wrong window"
    text = text_of(sid, events)
    assert "✗ sql denied by api:acme after 1.00s: not on the primary · tu_deny" in text


def test_a_custom_call_the_caller_answered_no_longer_waits() -> None:
    events = incident_trace()
    ids: dict[str, Any] = {"session_id": events[0].session_id, "thread_id": "t-toolu_off_lead_1_0"}
    later = events[-1].time + timedelta(seconds=1)
    events += [
        CustomToolUse(**ids, time=later, tool_use_id="tu_c", name="approve"),
        AgentToolResult(**ids, time=later + timedelta(seconds=2), tool_use_id="tu_c", name="approve",
                        content="yes"),
    ]  # fmt: skip
    threads, _ = build(events)
    assert threads["t-toolu_off_lead_1_0"].steps[-1] == "✓ approve answered by the caller after 2.00s · tu_c"
